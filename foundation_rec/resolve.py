"""Free-text item names to catalog items: what the demo and ``FoundationRec.recommend`` do with typed histories.

A line resolves, in this order, to the item whose original id it is, to the item whose title it is
(case, accents and punctuation ignored), or to the item whose title is nearest by all-MiniLM-L6-v2
cosine similarity (an exact ``faiss.IndexFlatIP`` search over the catalog's title embeddings, cached
on disk like the text-kNN baseline's). A nearest title below ``min_similarity`` (default
:data:`MIN_SIMILARITY`) is **not** taken: the line is reported unmatched, with the closest title as a
hint, never silently guessed.

:meth:`ItemResolver.suggest` gives autocomplete suggestions for a partly typed line: titles containing
it (those starting with it first), then the nearest titles by similarity.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import faiss
import numpy as np

from .errors import FoundationRecError
from .idgen import normalize_id
from .text_embeddings import embed_texts, item_vectors

MIN_SIMILARITY = 0.6
MAX_LINE_CHARS = 300


@dataclass(frozen=True)
class Match:
    """How one history line resolved: ``row`` is ``None`` when unmatched (``title`` is then the closest one, as a hint)."""

    query: str
    row: int | None
    title: str
    similarity: float
    how: str  # "item id", "title", "similarity" or "unmatched"

    @property
    def matched(self) -> bool:
        return self.row is not None


class ItemResolver:
    """Resolves free-text lines to rows of one catalog (``item_ids`` and ``titles`` in row order)."""

    def __init__(self, item_ids: Sequence[str], titles: Sequence[str], *, label: str = "catalog",
                 min_similarity: float = MIN_SIMILARITY, progress: bool = True):
        if not 0.0 < min_similarity <= 1.0:
            raise FoundationRecError(f"min_similarity={min_similarity} is out of range; use a cosine similarity in (0, 1]")
        self.item_ids, self.titles = [str(i) for i in item_ids], [str(t) for t in titles]
        self.min_similarity = min_similarity
        self._by_id = {item: row for row, item in enumerate(self.item_ids)}
        self._by_title: dict[str, int] = {}
        for row, title in enumerate(self.titles):
            self._by_title.setdefault(normalize_id(title), row)
        self._lower = [t.lower() for t in self.titles]
        embeddings = item_vectors([t or "untitled" for t in self.titles], f"{label} titles", progress=progress)[0].numpy()
        self.index = faiss.IndexFlatIP(embeddings.shape[1])
        self.index.add(np.ascontiguousarray(embeddings, dtype=np.float32))

    def _nearest(self, queries: list[str], n: int) -> tuple[np.ndarray, np.ndarray]:
        scores, rows = self.index.search(embed_texts(queries, progress=False), min(n, self.index.ntotal))
        return scores, rows

    def resolve(self, lines: Sequence[str]) -> list[Match]:
        """One :class:`Match` per line (lines are stripped; an over-long line is a one-line error)."""
        queries = [str(line).strip() for line in lines]
        for n, query in enumerate(queries, 1):
            if len(query) > MAX_LINE_CHARS:
                raise FoundationRecError(f"history line {n} has {len(query)} characters; keep each line under {MAX_LINE_CHARS}")
        out: list[Match | None] = [None] * len(queries)
        fuzzy = []
        for n, query in enumerate(queries):
            if query in self._by_id:
                row = self._by_id[query]
                out[n] = Match(query, row, self.titles[row], 1.0, "item id")
            elif normalize_id(query) and normalize_id(query) in self._by_title:
                row = self._by_title[normalize_id(query)]
                out[n] = Match(query, row, self.titles[row], 1.0, "title")
            elif query:
                fuzzy.append(n)
            else:
                out[n] = Match(query, None, "", 0.0, "unmatched")
        if fuzzy:
            scores, rows = self._nearest([queries[n] for n in fuzzy], 1)
            for n, score, row in zip(fuzzy, scores[:, 0].tolist(), rows[:, 0].tolist(), strict=True):
                ok = score >= self.min_similarity
                out[n] = Match(queries[n], row if ok else None, self.titles[row], round(score, 4), "similarity" if ok else "unmatched")
        return [m for m in out if m is not None]

    def suggest(self, query: str, n: int = 8) -> list[str]:
        """Up to ``n`` titles for a partly typed line: titles containing it (prefix matches first), then the nearest by similarity."""
        query = query.strip()[:MAX_LINE_CHARS]
        if not query:
            return []
        needle = query.lower()
        hits = [row for row, title in enumerate(self._lower) if needle in title]
        hits.sort(key=lambda row: (not self._lower[row].startswith(needle), len(self._lower[row])))
        titles = list(dict.fromkeys(self.titles[row] for row in hits[:n]))
        if len(titles) < n:
            _, rows = self._nearest([query], n)
            titles = list(dict.fromkeys([*titles, *(self.titles[row] for row in rows[0].tolist() if row >= 0)]))
        return titles[:n]
