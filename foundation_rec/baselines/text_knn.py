"""``text-knn``: zero-shot content baseline from item text alone, no training on the corpus.

Each item's ``text`` is embedded with all-MiniLM-L6-v2 (:mod:`foundation_rec.text_embeddings`:
mean pooling, L2-normalised, cached on disk); a user is the mean of their history's embeddings,
and the recommendation is the nearest items by inner product (cosine) in a ``faiss.IndexFlatIP``,
i.e. an exact full-catalog ranking.
"""

from __future__ import annotations

import faiss
import numpy as np

from ..text_embeddings import item_embeddings
from .common import pad_items


class TextKNN:
    """Nearest items to the mean history embedding, by cosine similarity over the whole catalog."""

    def __init__(self, embeddings: np.ndarray, info: dict | None = None):
        self.info = info or {}
        self.embeddings = np.ascontiguousarray(embeddings, dtype=np.float32)
        self.index = faiss.IndexFlatIP(self.embeddings.shape[1])
        self.index.add(self.embeddings)

    @classmethod
    def fit(cls, corpus) -> TextKNN:
        return cls(*item_embeddings(corpus))

    def recommend(self, histories: list[np.ndarray], k: int) -> np.ndarray:
        queries = np.stack([self.embeddings[h].mean(0) if len(h) else np.zeros(self.embeddings.shape[1], np.float32) for h in histories])
        queries /= np.maximum(np.linalg.norm(queries, axis=1, keepdims=True), 1e-12)
        _, items = self.index.search(np.ascontiguousarray(queries, dtype=np.float32), min(k, self.index.ntotal))
        return pad_items(items, k)
