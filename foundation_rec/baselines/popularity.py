"""``popularity``: the items most often interacted with in the corpus's training part, the same list for everyone.

Counts come from every user's items before their last two (:func:`~foundation_rec.splits.train_part`),
so no validation or test target is ever counted. Ties go to the lower item row.
"""

from __future__ import annotations

import numpy as np

from ..signals import PlatformCounts
from .common import pad_items


class Popularity:
    """Most-popular items by training-interaction count."""

    def __init__(self, counts: np.ndarray):
        self.counts = np.asarray(counts)
        self.ranking = np.argsort(-self.counts, kind="stable")

    @classmethod
    def fit(cls, corpus) -> Popularity:
        return cls(PlatformCounts.from_corpus(corpus).popularity)

    def recommend(self, histories: list[np.ndarray], k: int) -> np.ndarray:
        return pad_items(np.tile(self.ranking[:k], (len(histories), 1)), k)
