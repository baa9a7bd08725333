"""``history``: the user's own items again, the latest first (the repeat anchor; strict: no logs needed).

On platforms where people return (Yelp, Steam) a practitioner's first recommender is the list of
what the user already had; it recommends nothing new, so with history excluded it scores zero.
"""

from __future__ import annotations

import numpy as np


class HistoryRecommender:
    """Distinct history items, most recent first; ``-1`` after them."""

    @classmethod
    def fit(cls, corpus=None) -> HistoryRecommender:
        return cls()

    def recommend(self, histories: list[np.ndarray], k: int) -> np.ndarray:
        out = np.full((len(histories), k), -1, dtype=np.int64)
        for b, history in enumerate(histories):
            items = list(dict.fromkeys(np.asarray(history, dtype=np.int64)[::-1].tolist()))[:k]
            out[b, : len(items)] = items
        return out
