"""Helpers shared by the baselines: the training part of every sequence and padded top-k lists."""

from __future__ import annotations

import numpy as np

from ..splits import leave_one_out


def train_part(item_sequences) -> tuple[np.ndarray, np.ndarray]:
    """``(offsets, values)`` of every user's training part ``s[0] .. s[n-3]`` (everything before the last two items).

    Validation and test targets (``s[n-2]``, ``s[n-1]``) are never in it; users with fewer than 3 items
    contribute nothing.
    """
    loo = leave_one_out(item_sequences, "test")  # any split carries the flattened sequences
    lengths = np.diff(loo.offsets)
    kept = np.maximum(lengths - 2, 0)
    position = np.arange(len(loo.values)) - np.repeat(loo.offsets[:-1], lengths)
    offsets = np.zeros(len(kept) + 1, dtype=np.int64)
    np.cumsum(kept, out=offsets[1:])
    return offsets, loo.values[position < np.repeat(kept, lengths)]


def pad_items(items: np.ndarray, k: int) -> np.ndarray:
    """Cut or pad ``[N, m]`` item rows to ``[N, k]`` with ``-1`` (for catalogs smaller than ``k``)."""
    items = np.asarray(items, dtype=np.int64)[:, :k]
    if items.shape[1] == k:
        return items
    return np.concatenate([items, np.full((items.shape[0], k - items.shape[1]), -1, dtype=np.int64)], axis=1)
