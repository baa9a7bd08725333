"""``random``: k distinct catalog items drawn uniformly per user (seeded); the floor every method must beat."""

from __future__ import annotations

import numpy as np

from .common import pad_items


class RandomRecommender:
    """Uniformly random distinct items; with seed ``s`` the same calls give the same lists."""

    def __init__(self, n_items: int, seed: int = 0):
        self.n_items = n_items
        self.rng = np.random.default_rng(seed)

    @classmethod
    def fit(cls, corpus, seed: int = 0) -> RandomRecommender:
        return cls(len(corpus.items), seed)

    def recommend(self, histories: list[np.ndarray], k: int) -> np.ndarray:
        m = min(k, self.n_items)
        rows = np.stack([self.rng.choice(self.n_items, size=m, replace=False) for _ in histories]) if histories else np.zeros((0, m))
        return pad_items(rows, k)
