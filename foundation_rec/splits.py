"""Leave-one-out splits over user sequences, leak-free by construction.

For a user with the ordered items ``s[0] .. s[n-1]``:

* **train** targets are ``s[t]`` for ``1 <= t <= n-3`` (every prefix of the training part
  ``s[0] .. s[n-3]`` predicts its next item);
* **valid** target is ``s[n-2]``, **test** target is ``s[n-1]``;
* the history of target ``s[t]`` is ``s[max(0, t-H) : t]`` with ``H = max_history`` (20).

An example is stored as ``(sequence row, target position)``; its history is always sliced to
*before* the target, so no input can contain the target or anything after it. Users with fewer
than 3 items have no validation example, users with fewer than 2 have no test example.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from .errors import FoundationRecError

SPLITS = ("train", "valid", "test")
MAX_HISTORY = 20


def _flatten(sequences) -> tuple[np.ndarray, np.ndarray]:
    """Return ``(offsets, values)`` for a list of item lists or an Arrow list column."""
    if isinstance(sequences, pa.ChunkedArray):
        sequences = sequences.combine_chunks()
    if isinstance(sequences, (pa.ListArray, pa.LargeListArray)):
        offsets = np.asarray(sequences.offsets, dtype=np.int64)
        values = np.asarray(sequences.flatten(), dtype=np.int64)
        return offsets - offsets[0], values
    lengths = np.fromiter((len(s) for s in sequences), dtype=np.int64, count=len(sequences))
    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    values = np.fromiter((x for s in sequences for x in s), dtype=np.int64, count=int(offsets[-1]))
    return offsets, values


@dataclass(frozen=True)
class Split:
    """The examples of one split: ``rows[i]`` is the user's sequence row, ``positions[i]`` the target's index."""

    name: str
    offsets: np.ndarray
    values: np.ndarray
    rows: np.ndarray
    positions: np.ndarray
    max_history: int

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def targets(self) -> np.ndarray:
        """Target item of every example (item row indices into the corpus's item table)."""
        return self.values[self.offsets[self.rows] + self.positions]

    def target(self, i: int) -> int:
        """Example ``i``'s target item (``targets[i]`` without building the whole array)."""
        return int(self.values[self.offsets[self.rows[i]] + self.positions[i]])

    def history(self, i: int) -> np.ndarray:
        """Items before example ``i``'s target, oldest first, at most ``max_history``."""
        start = self.offsets[self.rows[i]]
        pos = int(self.positions[i])
        return self.values[start + max(0, pos - self.max_history) : start + pos]


def leave_one_out(sequences, split: str, max_history: int = MAX_HISTORY) -> Split:
    """Build one split (``train``, ``valid`` or ``test``) from per-user item sequences.

    ``sequences`` is a list of item-index lists or an Arrow list column (``corpus.sequences.data.column("items")``).
    """
    if split not in SPLITS:
        raise FoundationRecError(f"unknown split {split!r}; use one of {', '.join(SPLITS)}")
    if max_history < 1:
        raise FoundationRecError(f"max_history must be at least 1, got {max_history}")
    offsets, values = _flatten(sequences)
    lengths = np.diff(offsets)
    if split == "train":
        per_user = np.maximum(lengths - 3, 0)  # targets s[1] .. s[n-3]
        rows = np.repeat(np.arange(len(lengths)), per_user)
        firsts = np.cumsum(per_user) - per_user
        positions = np.arange(len(rows)) - np.repeat(firsts, per_user) + 1
    else:
        back = 2 if split == "valid" else 1
        rows = np.nonzero(lengths >= back + 1)[0]
        positions = lengths[rows] - back
    return Split(split, offsets, values, rows.astype(np.int64), positions.astype(np.int64), max_history)


def train_part(item_sequences) -> tuple[np.ndarray, np.ndarray]:
    """``(offsets, values)`` of every user's training part ``s[0] .. s[n-3]`` (everything before the last two items).

    Validation and test targets (``s[n-2]``, ``s[n-1]``) are never in it; users with fewer than 3 items
    contribute nothing.
    """
    offsets, values, _ = train_part_mask(item_sequences)
    return offsets, values


def train_part_mask(item_sequences, drop: int = 2) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`train_part` plus the boolean mask over the flattened sequences that selects it (to pick, e.g., the
    same interactions' timestamps). ``drop=1`` keeps the validation items (every user's items but the last)."""
    loo = leave_one_out(item_sequences, "test")  # any split carries the flattened sequences
    return drop_last(loo.offsets, loo.values, drop)


def drop_last(offsets: np.ndarray, values: np.ndarray, drop: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(offsets, values, mask)`` of every sequence without its last ``drop`` items; ``mask`` selects them in ``values``."""
    lengths = np.diff(offsets)
    kept = np.maximum(lengths - drop, 0)
    mask = (np.arange(len(values)) - np.repeat(offsets[:-1], lengths)) < np.repeat(kept, lengths)
    out = np.zeros(len(kept) + 1, dtype=np.int64)
    np.cumsum(kept, out=out[1:])
    return out, values[mask], mask
