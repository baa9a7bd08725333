"""Helpers shared by the baselines: padded top-k lists."""

from __future__ import annotations

import numpy as np


def pad_items(items: np.ndarray, k: int) -> np.ndarray:
    """Cut or pad ``[N, m]`` item rows to ``[N, k]`` with ``-1`` (for catalogs smaller than ``k``)."""
    items = np.asarray(items, dtype=np.int64)[:, :k]
    if items.shape[1] == k:
        return items
    return np.concatenate([items, np.full((items.shape[0], k - items.shape[1]), -1, dtype=np.int64)], axis=1)
