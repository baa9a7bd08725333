"""Platform signals: what a platform's own interaction logs say, read at inference, never trained on.

Two protocols, each its own labelled result everywhere (``zeroshot``, the API, the demo, the benchmarks):

* **strict**: item texts and the user's own history only (a platform without logs);
* **counts** (*with platform counts*): a :class:`PlatformCounts` counted on the target's training
  split (or a bring-your-own interactions file or count column); nothing is trained on it.

The content prior (:mod:`foundation_rec.content_prior`) gives explore logits ``s_j`` over the catalog.
With counts, :class:`PlatformSignals` adds the platform's popularity, overall and recent::

    e_j = a * s_j + b * log(1 + n_j) + c * log(1 + r_j)

``n_j``: item j's interactions in the training split; ``r_j``: those in its latest tenth by time
(``n_j`` when the logs have no timestamps). ``a``, ``b``, ``c`` are learned on the Amazon pool
(:func:`train_signals`) with the content scorer frozen, so the strict prior is unchanged.

**Repeats.** Users of some platforms return to what they had (6.5% of Yelp's test targets are in
the user's 20-item history; 0% on Amazon, so the pool cannot teach it). The next item is modelled as
a mixture of *repeat* and *explore* (as RepeatNet, Ren et al. AAAI 2019)::

    p(j) = rho * p_rep(j) + (1 - rho) * softmax(e over the items not in the history)_j

``p_rep`` spreads over the distinct history items by how recently each was last seen; the explore
part ranks only new items (the content prior ranks a user's own items high, since their texts are
what the history is made of). A history item then ranks among the new ones by its probability: the
explore softmax's temperature was learned on the pool with cross-entropy, so its probabilities are
what the pool calibrated. ``rho`` and
that recency profile are frequencies, counted, never fitted:

* counts: ``rho`` is the share of the training split's next items that were in their history,
  counted separately for histories with and without a repeat of their own; the recency profile is
  the histogram of how many steps back those repeated items were last seen;
* strict: ``rho`` is the user's own repeat share, ``repeats / len(history)`` (a history without
  repeats gives ``rho = 0``: the explore prior alone, as before); recency is ``1 / steps back``.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .errors import FoundationRecError
from .splits import MAX_HISTORY, drop_last, train_part_mask

STRICT, COUNTS = "strict", "counts"
PROTOCOLS = (STRICT, COUNTS)
RECENT_FRACTION = 0.1  # "recent" popularity: the latest tenth of the training split's interactions by time
MAX_RHO = 0.95


@dataclass(frozen=True)
class PlatformCounts:
    """A platform's interaction counts over its catalog rows (see the module docstring)."""

    popularity: np.ndarray  # [items] interactions
    recent: np.ndarray  # [items] interactions in the latest RECENT_FRACTION by time (popularity without timestamps)
    repeat_rate: tuple[float, float] | None = None  # P(next in history | history without, with a repeat); None: strict's per-user rate
    repeat_age: np.ndarray | None = None  # [MAX_HISTORY] P(repeated item last seen d steps back), d = 1..; None: 1/d
    source: str = ""
    # the logs calibration reads (foundation_rec.calibration): (offsets, values, timestamps or None) of per-user sequences
    # whose last item is that user's held-out next item; None: no sequences (a count column), nothing to calibrate on
    held_out: tuple | None = None
    calibration: Calibration | None = None  # signal weights chosen on the held-out items; None: the pool's

    @classmethod
    def from_sequences(cls, offsets: np.ndarray, values: np.ndarray, n_items: int, timestamps: np.ndarray | None = None,
                       source: str = "") -> PlatformCounts:
        """Counts over flattened per-user sequences ``values[offsets[u]:offsets[u+1]]`` (chronological item rows)."""
        popularity = np.bincount(values, minlength=n_items).astype(np.float64)
        recent = popularity
        if timestamps is not None and len(timestamps) and np.isfinite(timestamps).all():
            cut = np.quantile(timestamps, 1.0 - RECENT_FRACTION)
            recent = np.bincount(values[timestamps >= cut], minlength=n_items).astype(np.float64)
        rate, age = repeat_statistics(offsets, values)
        return cls(popularity, recent, rate, age, source)

    @classmethod
    def from_logs(cls, offsets: np.ndarray, values: np.ndarray, n_items: int, timestamps: np.ndarray | None = None,
                  source: str = "") -> PlatformCounts:
        """Counts over every interaction of the logs, which are also what calibration holds each user's last item out of."""
        counts = cls.from_sequences(offsets, values, n_items, timestamps, source)
        return dataclasses.replace(counts, held_out=(offsets, values, timestamps))

    @classmethod
    def from_corpus(cls, corpus) -> PlatformCounts:
        """Counts of a corpus's training split (every user's items before their last two), as popularity counts them.
        Calibration holds out the validation items (each user's second-to-last); the test items are not kept."""
        offsets, values, mask = train_part_mask(corpus.item_sequences)
        counts = cls.from_sequences(offsets, values, len(corpus.items), _timestamps(corpus, mask), f"{corpus.name} training split")
        v_offsets, v_values, v_mask = train_part_mask(corpus.item_sequences, drop=1)
        return dataclasses.replace(counts, held_out=(v_offsets, v_values, _timestamps(corpus, v_mask)))

    def without_last(self, n_items: int) -> tuple[PlatformCounts, np.ndarray, np.ndarray]:
        """``(counts, offsets, values)`` of :attr:`held_out` without each user's last item: what calibration counts
        and what its histories come from (for a corpus, exactly its training split)."""
        offsets, values, stamps = self.held_out
        rest, kept, mask = drop_last(offsets, values, 1)
        return PlatformCounts.from_sequences(rest, kept, n_items, None if stamps is None else stamps[mask], self.source), rest, kept

    @classmethod
    def from_popularity(cls, counts: np.ndarray, source: str = "") -> PlatformCounts:
        """Counts from a per-item count column alone: no trend, and strict's per-user repeat rate."""
        counts = np.asarray(counts, dtype=np.float64)
        return cls(counts, counts, None, None, source)

    def rho(self, history: np.ndarray) -> float:
        """The probability that the next item repeats one of ``history`` (see the module docstring)."""
        if len(history) == 0:
            return 0.0
        repeats = len(history) - len(np.unique(history))
        if self.repeat_rate is None:
            return min(repeats / len(history), MAX_RHO)
        return min(self.repeat_rate[int(repeats > 0)], MAX_RHO)

    def age_weights(self, length: int) -> np.ndarray:
        """``[length]`` weight of a history item last seen ``d = 1 .. length`` steps back."""
        if self.repeat_age is None:
            return 1.0 / np.arange(1, length + 1)
        return np.resize(self.repeat_age, length) if length > len(self.repeat_age) else self.repeat_age[:length]


def _timestamps(corpus, mask: np.ndarray) -> np.ndarray | None:
    """Flattened timestamps of the corpus's sequences under ``mask``, or None when any is missing."""
    if "timestamps" not in corpus.sequences.column_names:
        return None
    column = corpus.sequences.data.column("timestamps").combine_chunks()
    if column.null_count:
        return None
    flat = column.flatten()
    if flat.null_count or len(flat) != len(mask):
        return None
    return np.asarray(flat, dtype=np.float64)[mask]


def repeat_statistics(offsets: np.ndarray, values: np.ndarray, max_history: int = MAX_HISTORY) -> tuple[tuple[float, float], np.ndarray]:
    """Over every next item of every sequence (history = the at most ``max_history`` items before it):
    ``((P(repeat | no repeat in history), P(repeat | a repeat in history)), recency histogram)``.

    The histogram counts how many steps back a repeated next item was last seen (1: the item just
    before), with one added to every bin, normalised."""
    hits, totals = np.zeros(2), np.zeros(2)
    age = np.ones(max_history)
    for u in range(len(offsets) - 1):
        seq = values[offsets[u] : offsets[u + 1]].tolist()
        if len(set(seq)) == len(seq):  # no repeats: every next item is new and every history repeat-free
            totals[0] += max(len(seq) - 1, 0)
            continue
        last: dict[int, int] = {}
        for t, item in enumerate(seq):
            if t:
                start = max(0, t - max_history)
                has = int(len(set(seq[start:t])) < t - start)
                totals[has] += 1
                if last.get(item, -1) >= start:
                    hits[has] += 1
                    age[min(t - last[item], max_history) - 1] += 1
            last[item] = t
    rate = tuple(float(h / t) if t else 0.0 for h, t in zip(hits, totals, strict=True))
    return rate, age / age.sum()


@dataclass(frozen=True)
class Calibration:
    """Signal weights chosen on a platform's held-out next items (:mod:`foundation_rec.calibration`).

    ``weights``: ``(content, popularity, recent, latest)`` in ``e = a s + b log(1 + n) + c log(1 + r) + d cos(v_last, v_j)``;
    ``repeat_shift``: added to the log-odds of the counted repeat rate rho, or None for no repeat mixture (the
    user's own items ranked by ``e`` like any other, as popularity and text-kNN rank them)."""

    weights: tuple[float, float, float, float]
    repeat_shift: float | None
    choice: str
    record: dict = dataclasses.field(default_factory=dict)


def signal_logits(weights, content: torch.Tensor | None, latest: torch.Tensor, log_popularity: torch.Tensor,
                  log_recent: torch.Tensor) -> torch.Tensor:
    """``a * s + b * log(1 + n) + c * log(1 + r) + d * cos(v_last, v_j)`` for ``weights`` ``(a, b, c, d)`` (:class:`Calibration`);
    ``content`` None: without the content term."""
    logits = weights[3] * latest + (weights[1] * log_popularity + weights[2] * log_recent)
    return logits if content is None else logits + weights[0] * content


def latest_similarity(histories: list[np.ndarray], vectors: torch.Tensor) -> torch.Tensor:
    """``[B, items]`` cosine of each history's latest item's text vector to every item's (text-kNN of the latest item)."""
    unit = torch.nn.functional.normalize(vectors.float(), dim=-1)
    latest = torch.tensor([int(h[-1]) if len(h) else 0 for h in histories])
    empty = torch.tensor([len(h) == 0 for h in histories])
    return (unit[latest] @ unit.T).masked_fill(empty[:, None], 0.0)


class PlatformSignals(torch.nn.Module):
    """``e = a * s + b * log(1 + n) + c * log(1 + r)``: the content logits ``s`` with the platform's popularity (learned on the pool)."""

    def __init__(self):
        super().__init__()
        self.weights = torch.nn.Parameter(torch.tensor([1.0, 0.0, 0.0]))  # a (content), b (popularity), c (recent)

    def forward(self, logits: torch.Tensor, popularity: torch.Tensor, recent: torch.Tensor) -> torch.Tensor:
        a, b, c = self.weights
        return a * logits + b * torch.log1p(popularity) + c * torch.log1p(recent)


def repeat_parts(histories: list[np.ndarray], counts: PlatformCounts | None, n_items: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(log_rep [B, items], rho [B])``: ``log p_rep`` of each history's items (``-inf`` off the history; recency
    weights by how many steps back each was last seen) and the counted repeat probability rho (strict without ``counts``)."""
    source = counts if counts is not None else _STRICT
    log_rep = torch.full((len(histories), n_items), -torch.inf)
    for b, history in enumerate(histories):
        steps_back: dict[int, int] = {}
        for d, item in enumerate(np.asarray(history, dtype=np.int64)[::-1].tolist(), 1):
            steps_back.setdefault(item, d)
        if steps_back:
            weights = source.age_weights(len(history))
            rep = torch.tensor([weights[d - 1] for d in steps_back.values()], dtype=torch.float32)
            log_rep[b, torch.tensor(list(steps_back))] = torch.log(rep / rep.sum())
    rho = torch.tensor([source.rho(np.asarray(h, dtype=np.int64)) for h in histories], dtype=torch.float32)
    return log_rep, rho


def mixture(logits: torch.Tensor, log_rep: torch.Tensor, rho: torch.Tensor, shift: float | torch.Tensor | None = 0.0) -> torch.Tensor:
    """``[B, items]`` log of ``rho' * p_rep + (1 - rho') * softmax(logits over the items off the history)``.

    ``rho' = sigmoid(logit(rho) + shift)`` (``rho`` itself at shift 0; a zero rho stays zero, and its history items
    score :data:`NEVER`). ``shift`` None: no mixture, ``log_softmax(logits)`` over every item."""
    if shift is None:
        return logits.log_softmax(-1)
    history = log_rep > -torch.inf
    rho = rho.to(logits.dtype)
    if not (isinstance(shift, float) and shift == 0.0):
        rho = torch.where(rho > 0, torch.sigmoid(torch.logit(rho.clamp(max=MAX_RHO)) + shift), rho)
    explore = logits.masked_fill(history, -torch.inf).log_softmax(-1) + torch.log1p(-rho)[:, None]
    repeat = torch.where(rho[:, None] > 0, log_rep + torch.log(rho.clamp(min=1e-30))[:, None], torch.full_like(log_rep, NEVER))
    return torch.where(history, repeat, explore)


def repeat_mixture(logits: torch.Tensor, histories: list[np.ndarray], counts: PlatformCounts | None) -> torch.Tensor:
    """``[B, items]`` log of ``rho * p_rep + (1 - rho) * p_explore`` for each history (rows of the catalog).

    ``p_explore`` is the softmax of the explore ``logits`` over the items *not* in the history (a new item);
    ``p_rep`` spreads over the history's items. With ``rho = 0`` a history item scores :data:`NEVER`. A calibrated
    ``counts`` applies its repeat shift (:func:`mixture`)."""
    log_rep, rho = repeat_parts(histories, counts, logits.shape[-1])
    shift = counts.calibration.repeat_shift if counts is not None and counts.calibration is not None else 0.0
    return mixture(logits, log_rep, rho, shift)


NEVER = -1e4  # the log prior of a history item when no repeat is expected (finite: beam search adds and subtracts it)
_STRICT = PlatformCounts(np.zeros(0), np.zeros(0), None, None, STRICT)


def read_counts_file(path: str | Path, item_ids: list[str]) -> PlatformCounts:
    """Counts for a catalog from a file: an interactions file (``user_id,item_id[,timestamp]`` CSV or
    JSON lines, chronological per user) or a count file (``item_id,count`` CSV or JSON lines with a
    ``count`` field). Every line counts (a live platform's logs are all history). Bad input is a
    one-line :class:`FoundationRecError` naming the file, the line and the fix; nothing is kept from a bad file."""
    from .corpora.readers import check_utf8

    path = Path(path)
    if not path.is_file():
        raise FoundationRecError(f"{path}: no such counts file; pass an interactions file (user_id,item_id[,timestamp]) or a count file (item_id,count)")
    data = path.read_bytes()
    check_utf8(data, str(path))
    rows = _rows(path, data.decode("utf-8"))
    row_of = {item: r for r, item in enumerate(item_ids)}
    if rows and "count" in rows[0][1]:
        counts = np.zeros(len(item_ids))
        for line, row in rows:
            item = _known(path, line, row, row_of)
            try:
                value = float(row["count"])
            except (TypeError, ValueError):
                value = float("nan")
            if not math.isfinite(value) or value < 0:
                raise FoundationRecError(f"{path}:{line}: count {row['count']!r} is not a non-negative number; write a count of 0 or more")
            counts[item] += value
        return PlatformCounts.from_popularity(counts, str(path))
    users: dict[str, list[tuple[float, int, int]]] = {}
    for n, (line, row) in enumerate(rows):
        if "user_id" not in row:
            raise FoundationRecError(f"{path}:{line}: no user_id; an interactions file has user_id,item_id[,timestamp] (a count file has item_id,count)")
        item = _known(path, line, row, row_of)
        stamp = row.get("timestamp")
        try:
            stamp = float(stamp) if stamp not in (None, "") else float("nan")
        except (TypeError, ValueError):
            raise FoundationRecError(f"{path}:{line}: timestamp {stamp!r} is not a number; write unix seconds or leave it empty") from None
        users.setdefault(str(row["user_id"]), []).append((stamp, n, item))
    ordered = [sorted(events, key=lambda e: (e[0] if math.isfinite(e[0]) else 0.0, e[1])) for events in users.values()]  # by time, then line
    stamps = np.asarray([stamp for events in ordered for stamp, _, _ in events])
    offsets = np.concatenate([[0], np.cumsum([len(events) for events in ordered])]).astype(np.int64)
    values = np.asarray([item for events in ordered for _, _, item in events], dtype=np.int64)
    return PlatformCounts.from_logs(offsets, values, len(item_ids), stamps if len(stamps) else None, str(path))


def _known(path: Path, line: int, row: dict, row_of: dict[str, int]) -> int:
    item = row.get("item_id")
    if item is None or str(item) not in row_of:
        raise FoundationRecError(f"{path}:{line}: item {item!r} is not in the catalog; drop the line or add the item to the catalog")
    return row_of[str(item)]


def _rows(path: Path, text: str) -> list[tuple[int, dict]]:
    """``(line number, fields)`` of a CSV (with a header) or JSON-lines file."""
    import csv
    import io

    if path.suffix == ".jsonl":
        rows = []
        for line, raw in enumerate(text.splitlines(), 1):
            if raw.strip():
                try:
                    value = json.loads(raw)
                except ValueError:
                    raise FoundationRecError(f"{path}:{line}: not valid JSON; write one JSON object per line") from None
                if not isinstance(value, dict):
                    raise FoundationRecError(f"{path}:{line}: not a JSON object; write one object per line")
                rows.append((line, value))
        return rows
    reader = csv.DictReader(io.StringIO(text))
    if not reader.fieldnames or "item_id" not in reader.fieldnames:
        raise FoundationRecError(f"{path}:1: no item_id column in the header; start the file with user_id,item_id[,timestamp] or item_id,count")
    return [(n + 2, row) for n, row in enumerate(reader)]
