"""The pre-training pool: several corpora behind one global item index, with leak-free examples.

Item ``r`` of corpus ``c`` is global item ``offsets[c] + r``; the ID table, the prompt builder
and the ID generator all work on global items. Per-corpus user sampling
(:func:`sample_corpus`) keeps a seeded sample of users and the sub-catalog of the items in their
sequences, re-indexed, so everything downstream (splits, tries, the evaluation harness) treats a
sampled corpus like any other corpus.

Training examples come from :func:`foundation_rec.splits.leave_one_out` (``train``: every prefix
of ``s[0] .. s[n-3]``), so a history never contains a validation or test item; validation and test
examples are the ``valid`` / ``test`` splits of the same corpora.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import datasets
import numpy as np

from .corpora import Corpus
from .splits import MAX_HISTORY, Split, leave_one_out, train_part


def sampled_users(corpus: Corpus, max_users: int, seed: int) -> np.ndarray:
    """Sorted rows of a seeded sample of ``max_users`` of the corpus's users (fewer than its users)."""
    return np.sort(np.random.default_rng([seed, len(corpus.sequences)]).choice(len(corpus.sequences), max_users, replace=False))


def users_of(corpus: Corpus, max_users: int | None, seed: int) -> Corpus:
    """The corpus with only a seeded sample of ``max_users`` users' sequences (the users :func:`sample_corpus` picks),
    and its whole catalog: a platform whose logs are those users'."""
    if not max_users or max_users >= len(corpus.sequences):
        return corpus
    sequences = corpus.sequences.select(sampled_users(corpus, max_users, seed)).flatten_indices()
    meta = {**corpus.meta, "sampled_users": max_users, "users_total": len(corpus.sequences)}
    return Corpus(corpus.name, corpus.platform, corpus.role, corpus.items, sequences, meta)


def sample_corpus(corpus: Corpus, max_users: int | None, seed: int) -> Corpus:
    """A seeded sample of ``max_users`` users and the catalog of their items (the corpus itself when it has fewer users)."""
    if not max_users or max_users >= len(corpus.sequences):
        return corpus
    sequences = corpus.sequences.select(sampled_users(corpus, max_users, seed)).flatten_indices()
    columns = sequences.data.to_pydict()
    old_items = [np.asarray(s, dtype=np.int64) for s in columns["items"]]
    keep = np.unique(np.concatenate(old_items))
    new_row = np.full(len(corpus.items), -1, dtype=np.int64)
    new_row[keep] = np.arange(len(keep))
    remapped = datasets.Dataset.from_dict(
        {**columns, "items": [new_row[s].tolist() for s in old_items]},
        features=corpus.sequences.features,
    )
    meta = {**corpus.meta, "sampled_users": max_users, "users_total": len(corpus.sequences), "items_total": len(corpus.items)}
    return Corpus(corpus.name, corpus.platform, corpus.role, corpus.items.select(keep).flatten_indices(), remapped, meta)


@dataclass
class PoolExamples:
    """The examples of one split over the pool: ``corpus[i]`` and ``index[i]`` into that corpus's :class:`Split`."""

    splits: list[Split]
    offsets: np.ndarray
    user_offsets: np.ndarray
    corpus: np.ndarray
    index: np.ndarray

    def __len__(self) -> int:
        return len(self.corpus)

    def history(self, i: int) -> np.ndarray:
        """Global items before example ``i``'s target, oldest first."""
        c = int(self.corpus[i])
        return self.splits[c].history(int(self.index[i])) + self.offsets[c]

    def target(self, i: int) -> int:
        c = int(self.corpus[i])
        return self.splits[c].target(int(self.index[i])) + int(self.offsets[c])

    def user(self, i: int) -> int:
        """Global user index (``user_offsets[c] + sequence row``)."""
        c = int(self.corpus[i])
        return int(self.user_offsets[c] + self.splits[c].rows[int(self.index[i])])

    def last_per_user(self, stride: int | None = None) -> PoolExamples:
        """Only each user's latest example (the longest training prefix) and, with ``stride``, every
        ``stride``-th example before it (counting back from the latest).

        With ``stride`` equal to the history length, the kept examples' histories and targets cover
        every target of the split once: the windows a sequence objective trains on.
        """
        keep = []
        for c, split in enumerate(self.splits):
            mine = np.flatnonzero(self.corpus == c)
            rows = split.rows[self.index[mine]]  # examples are grouped by row, in order
            last = np.flatnonzero(np.r_[rows[1:] != rows[:-1], True]) if len(rows) else np.zeros(0, np.int64)
            from_end = np.repeat(last, np.diff(np.r_[-1, last])) - np.arange(len(rows))
            keep.append(mine[from_end % stride == 0 if stride else from_end == 0])
        keep = np.sort(np.concatenate(keep)) if keep else np.zeros(0, np.int64)
        return PoolExamples(self.splits, self.offsets, self.user_offsets, self.corpus[keep], self.index[keep])


@dataclass
class Pool:
    """The corpora of one pre-training run and their global item / user indices."""

    corpora: list[Corpus]
    max_history: int = MAX_HISTORY
    sources: list[Corpus] | None = field(default=None, repr=False)  # the whole corpora a sampled pool was cut from (platform counts)
    offsets: np.ndarray = field(init=False)
    user_offsets: np.ndarray = field(init=False)

    def __post_init__(self):
        self.offsets = np.concatenate([[0], np.cumsum([len(c.items) for c in self.corpora])]).astype(np.int64)
        self.user_offsets = np.concatenate([[0], np.cumsum([len(c.sequences) for c in self.corpora])]).astype(np.int64)

    @property
    def num_items(self) -> int:
        return int(self.offsets[-1])

    def texts(self) -> list[str]:
        """Every item's text, in global item order (what the ID generator reads)."""
        return [t for c in self.corpora for t in c.items.data.column("text").to_pylist()]

    def examples(self, split: str, max_users: int | None = None, seed: int = 0) -> PoolExamples:
        """PoolExamples of ``split`` over all corpora; with ``max_users``, a seeded sample of that many per corpus."""
        splits = [leave_one_out(c.item_sequences, split, self.max_history) for c in self.corpora]
        corpus, index = [], []
        for c, s in enumerate(splits):
            chosen = np.arange(len(s))
            if max_users is not None and max_users < len(s):
                chosen = np.sort(np.random.default_rng([seed, c]).choice(len(s), max_users, replace=False))
            corpus.append(np.full(len(chosen), c, dtype=np.int64))
            index.append(chosen)
        return PoolExamples(splits, self.offsets, self.user_offsets, np.concatenate(corpus), np.concatenate(index))

    def training_prefixes(self) -> tuple[np.ndarray, np.ndarray]:
        """``(offsets, global items)`` of every user's training part ``s[0] .. s[n-3]``, users in global order."""
        offsets, values = [0], []
        for c, corpus in enumerate(self.corpora):
            o, v = train_part(corpus.item_sequences)
            offsets.extend((o[1:] + offsets[-1]).tolist())
            values.append(v + self.offsets[c])
        return np.asarray(offsets, dtype=np.int64), np.concatenate(values) if values else np.zeros(0, np.int64)

    def names(self) -> Sequence[str]:
        return [c.name for c in self.corpora]
