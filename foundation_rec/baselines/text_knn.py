"""Text similarity, the zero-shot content anchors: item text alone (and, for the blend, the platform's counts).

Each item's ``text`` is embedded with all-MiniLM-L6-v2 (:mod:`foundation_rec.text_embeddings`:
mean pooling, L2-normalised, cached on disk); a user is the (recency-weighted) mean of their
history's embeddings, and the recommendation is the nearest items by inner product in a
``faiss.IndexFlatIP``, i.e. an exact full-catalog ranking. Three methods:

* ``text-knn``: the plain mean, ``score(j) = cos(mean_i v_i, v_j)``;
* ``text-knn-recency``: ``q = sum_i decay ** age_i * v_i`` (age 0: the latest item), with
  :data:`RECENCY_DECAY` chosen on the Amazon pool (``benchmarks/anchors.py``; 0, the latest item
  alone, came first there, tied with 0.3);
* ``popularity-text-knn`` (with platform counts): ``score(j) = cos(q, v_j) + w * log(1 + n_j)``, ``q`` as above,
  ``n_j`` the item's training-split interactions, ``w`` tuned on the platform's own validation items, as a
  practitioner with logs would (:meth:`TextKNN.fit_blend`; :data:`BLEND_WEIGHT`, chosen on the Amazon pool, where
  there are no sequences). The popularity term rides in one extra index dimension (``[v_j, w log(1 + n_j)]`` against ``[q, 1]``).
"""

from __future__ import annotations

import faiss
import numpy as np

from ..text_embeddings import item_vectors
from .common import pad_items

RECENCY_DECAY = 0.0  # chosen on the Amazon pool's validation users (benchmarks/anchors.py): the latest item alone
BLEND_WEIGHT = 0.02  # chosen on the Amazon pool's validation users (benchmarks/anchors.py), with RECENCY_DECAY; used without sequences


class TextKNN:
    """Nearest items to the (recency-weighted) mean history embedding, plus ``weight * log(1 + popularity)``."""

    def __init__(self, embeddings: np.ndarray, info: dict | None = None, decay: float = 1.0,
                 popularity: np.ndarray | None = None, weight: float = 0.0):
        self.info = info or {}
        self.decay = decay
        self.embeddings = np.ascontiguousarray(embeddings, dtype=np.float32)
        indexed = self.embeddings
        self.bias = popularity is not None and weight != 0.0
        if self.bias:
            indexed = np.concatenate([indexed, (weight * np.log1p(np.asarray(popularity, dtype=np.float32)))[:, None]], axis=1)
        self.index = faiss.IndexFlatIP(indexed.shape[1])
        self.index.add(np.ascontiguousarray(indexed, dtype=np.float32))

    @classmethod
    def fit(cls, corpus, decay: float = 1.0, popularity: np.ndarray | None = None, weight: float = 0.0) -> TextKNN:
        vectors, info = item_vectors(corpus.items.data.column("text").to_pylist(), f"{corpus.name} items")
        return cls(vectors.numpy(), info, decay=decay, popularity=popularity, weight=weight)

    @classmethod
    def fit_blend(cls, corpus) -> TextKNN:
        """``popularity-text-knn`` with its weight tuned on the corpus's validation items (:func:`foundation_rec.calibration.
        tuned_blend_weight`, the same users and grid the counts protocol's calibration uses); the latest item alone
        (``RECENCY_DECAY`` 0), which is the blend that calibration's candidate reproduces."""
        from ..calibration import tuned_blend_weight
        from ..signals import PlatformCounts

        vectors, info = item_vectors(corpus.items.data.column("text").to_pylist(), f"{corpus.name} items")
        counts = PlatformCounts.from_corpus(corpus)
        weight, grid = tuned_blend_weight(vectors, counts, BLEND_WEIGHT)
        return cls(vectors.numpy(), {**info, "blend_weight": weight, "blend_grid": grid}, decay=RECENCY_DECAY,
                   popularity=counts.popularity, weight=weight)

    def query(self, history: np.ndarray) -> np.ndarray:
        """The user's unit query: ``sum_i decay ** age_i * v_i``, normalised (zero for an empty history)."""
        history = np.asarray(history, dtype=np.int64)
        if not len(history):
            return np.zeros(self.embeddings.shape[1], np.float32)
        weights = self.decay ** np.arange(len(history) - 1, -1, -1, dtype=np.float32)
        query = (weights[:, None] * self.embeddings[history]).sum(0)
        return query / max(float(np.linalg.norm(query)), 1e-12)

    def recommend(self, histories: list[np.ndarray], k: int) -> np.ndarray:
        queries = np.stack([self.query(h) for h in histories]) if histories else np.zeros((0, self.embeddings.shape[1]), np.float32)
        if self.bias:
            queries = np.concatenate([queries, np.ones((len(queries), 1), np.float32)], axis=1)
        _, items = self.index.search(np.ascontiguousarray(queries, dtype=np.float32), min(k, self.index.ntotal))
        empty = np.asarray([len(h) == 0 for h in histories], dtype=bool)
        return np.where(empty[:, None], -1, pad_items(items, k)) if len(histories) else pad_items(items, k)
