"""Token-level prefix trie over item-ID token sequences, stored as tensors for constrained decoding.

Every sequence (the tokens of one item's textual ID) ends with the EOS token, which appears nowhere
else, so the leaves are exactly the EOS nodes and each leaf carries one item. Layout:

* nodes are numbered breadth first (root = 0); the children of a node are contiguous and sorted by
  token, so edge ``e`` always leads to node ``e + 1``;
* ``offsets[n]:offsets[n + 1]`` are the edges of node ``n`` (CSR), ``edge_token[e]`` their tokens;
* ``edge_key[e] = parent(e) * vocab_size + edge_token[e]`` is ascending, so a transition
  ``(node, token)`` is one ``torch.searchsorted``;
* ``node_item[n]`` is the flat (global) item index at a leaf, ``-1`` elsewhere; item ``i`` is row
  ``item_row[i]`` of corpus ``corpora[item_corpus[i]]``.

All queries take a batch of nodes and use tensor operations only (node ``-1`` is a dead beam and
has no children).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from .errors import FoundationRecError

_TENSORS = ("offsets", "edge_token", "node_item", "item_corpus", "item_row")


class Trie:
    """A prefix trie over ID token sequences; build it with :meth:`build`."""

    def __init__(
        self,
        *,
        offsets: torch.Tensor,
        edge_token: torch.Tensor,
        node_item: torch.Tensor,
        item_corpus: torch.Tensor,
        item_row: torch.Tensor,
        corpora: Sequence[str],
        vocab_size: int,
        eos_token_id: int,
        max_depth: int,
    ) -> None:
        self.offsets = offsets
        self.edge_token = edge_token
        self.node_item = node_item
        self.item_corpus = item_corpus
        self.item_row = item_row
        self.corpora = tuple(corpora)
        self.vocab_size = int(vocab_size)
        self.eos_token_id = int(eos_token_id)
        self.max_depth = int(max_depth)
        counts = offsets[1:] - offsets[:-1]
        edge_parent = torch.repeat_interleave(torch.arange(len(counts), device=offsets.device), counts)
        self.edge_key = edge_parent * self.vocab_size + edge_token
        self._tail_length: torch.Tensor | None = None  # see tails()
        self._paths: torch.Tensor | None = None  # see best_below()

    # ----------------------------------------------------------------------------- construction

    @classmethod
    def build(
        cls,
        sequences: Sequence[Sequence[int]],
        *,
        vocab_size: int,
        eos_token_id: int,
        rows: Sequence[int] | np.ndarray | None = None,
        corpus: str = "items",
    ) -> Trie:
        """Build from one token list per item (each ending with ``eos_token_id``).

        Item ``i`` (leaf of ``sequences[i]``) is row ``rows[i]`` (default ``i``) of ``corpus``.
        """
        lengths = np.fromiter((len(s) for s in sequences), dtype=np.int64, count=len(sequences))
        flat = np.fromiter((t for s in sequences for t in s), dtype=np.int64, count=int(lengths.sum()))
        tokens = np.full((len(lengths), int(lengths.max(initial=0))), -1, dtype=np.int64)
        tokens[np.arange(tokens.shape[1]) < lengths[:, None]] = flat
        rows = np.arange(len(lengths)) if rows is None else np.asarray(rows, dtype=np.int64)
        if rows.shape != lengths.shape:
            raise FoundationRecError(f"got {len(rows)} rows for {len(lengths)} ID sequences; pass one row per sequence")
        corpus_ids = np.zeros(len(lengths), dtype=np.int64)
        return cls._from_matrix(tokens, lengths, corpus_ids, rows, [corpus], vocab_size, eos_token_id)

    @classmethod
    def _from_matrix(cls, tokens, lengths, corpus_ids, rows, corpora, vocab_size, eos_token_id) -> Trie:
        """Build level by level: one ``np.unique`` over (parent, token) keys per depth."""
        if len(lengths) == 0:
            raise FoundationRecError("empty trie: no item IDs given; generate IDs for at least one item first")
        present = tokens >= 0
        if tokens.max() >= vocab_size:
            raise FoundationRecError(f"an ID token is >= vocab_size={vocab_size}; build the trie with the model's tokenizer")
        is_eos = tokens == eos_token_id
        ends_with_eos = (lengths > 0) & is_eos[np.arange(len(lengths)), np.maximum(lengths - 1, 0)]
        if not (ends_with_eos.all() and (is_eos.sum(1) == 1).all()):
            bad = int(np.flatnonzero(~ends_with_eos | (is_eos.sum(1) != 1))[0])
            raise FoundationRecError(
                f"ID sequence {bad} must end with EOS ({eos_token_id}) and contain it only there; append the EOS token"
            )
        node = np.zeros(len(lengths), dtype=np.int64)
        keys_per_level, next_id = [], 1
        for depth in range(tokens.shape[1]):
            active = present[:, depth]
            keys, inverse = np.unique(node[active] * vocab_size + tokens[active, depth], return_inverse=True)
            node[active] = next_id + inverse
            keys_per_level.append(keys)
            next_id += len(keys)
        edge_key = np.concatenate(keys_per_level)
        leaves, counts = np.unique(node, return_counts=True)
        if (counts > 1).any():
            dup = leaves[counts > 1][0]
            a, b = np.flatnonzero(node == dup)[:2]
            raise FoundationRecError(
                f"{int((counts - 1).sum())} items share an ID with another item (e.g. items {a} and {b}); "
                "regenerate the IDs so that every item's ID is unique"
            )
        node_item = np.full(next_id, -1, dtype=np.int64)
        node_item[node] = np.arange(len(node))
        offsets = np.searchsorted(edge_key // vocab_size, np.arange(next_id + 1), side="left")
        return cls(
            offsets=torch.from_numpy(offsets.astype(np.int64)),
            edge_token=torch.from_numpy(edge_key % vocab_size),
            node_item=torch.from_numpy(node_item),
            item_corpus=torch.from_numpy(np.ascontiguousarray(corpus_ids, dtype=np.int64)),
            item_row=torch.from_numpy(np.ascontiguousarray(rows, dtype=np.int64)),
            corpora=corpora,
            vocab_size=vocab_size,
            eos_token_id=eos_token_id,
            max_depth=tokens.shape[1],
        )

    # ----------------------------------------------------------------------------- queries

    @property
    def num_nodes(self) -> int:
        return len(self.node_item)

    @property
    def num_items(self) -> int:
        return len(self.item_row)

    @property
    def device(self) -> torch.device:
        return self.offsets.device

    def children(self, nodes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """For nodes ``[N]``: child tokens ``[N, C]``, child nodes ``[N, C]`` and a validity mask ``[N, C]``.

        ``C`` is the largest child count in the batch (at least 1); padding entries are invalid, with
        token 0 and node -1. A dead node (-1) has no children.
        """
        alive = nodes >= 0
        safe = nodes.clamp(min=0)
        start = self.offsets[safe]
        count = torch.where(alive, self.offsets[safe + 1] - start, 0)
        width = max(int(count.max()), 1) if len(nodes) else 1
        slot = torch.arange(width, device=nodes.device)
        valid = slot < count[:, None]
        edge = torch.where(valid, start[:, None] + slot, 0)
        tokens = torch.where(valid, self.edge_token[edge.clamp(max=len(self.edge_token) - 1)], 0)
        return tokens, torch.where(valid, edge + 1, -1), valid

    def advance(self, nodes: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """Node reached from each of ``nodes`` by ``tokens`` (both ``[N]``); -1 where that is no edge."""
        key = nodes * self.vocab_size + tokens
        pos = torch.searchsorted(self.edge_key, key).clamp(max=max(len(self.edge_key) - 1, 0))
        found = (nodes >= 0) & (tokens >= 0) & (self.edge_key[pos] == key)
        return torch.where(found, pos + 1, -1)

    def tails(self, nodes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The rest of each node's ID when it has no choice left: tokens ``[N, D]`` (-1 padding), lengths ``[N]``.

        A node whose descendants form one path to a leaf (every node on it has a single child) has
        that path's tokens, EOS included; any other node (a branching node, a leaf, a dead node -1)
        has length 0. Once every beam is on such a path, decoding knows all remaining tokens and can
        score them in one model call (see :func:`foundation_rec.decoding.item_search`).
        """
        if self._tail_length is None:
            counts = self.offsets[1:] - self.offsets[:-1]
            only_child = torch.where(counts == 1, self.offsets[:-1] + 1, -1)
            length = torch.where(self.node_item >= 0, 0, -1)  # leaves: nothing left; -1: not (yet) a single path
            for _ in range(self.max_depth):  # children are numbered after their parents: max_depth passes settle it
                child = length[only_child.clamp(min=0)]
                length = torch.where((only_child >= 0) & (child >= 0), child + 1, length)
            self._tail_length = length.clamp(min=0)
        alive = nodes >= 0
        lengths = torch.where(alive, self._tail_length[nodes.clamp(min=0)], 0)
        width = int(lengths.max()) if len(nodes) else 0
        tokens = torch.full((len(nodes), width), -1, dtype=torch.long, device=nodes.device)
        node = nodes.clamp(min=0)
        for depth in range(width):
            edge = self.offsets[node].clamp(max=max(len(self.edge_token) - 1, 0))
            tokens[:, depth] = torch.where(depth < lengths, self.edge_token[edge], -1)
            node = torch.where(depth < lengths, edge + 1, node)
        return tokens, lengths

    def items(self, nodes: torch.Tensor) -> torch.Tensor:
        """Item index at each node (a leaf), -1 for inner and dead nodes."""
        return torch.where(nodes >= 0, self.node_item[nodes.clamp(min=0)], -1)

    def paths(self) -> torch.Tensor:
        """``[num_items, max_depth]``: the node each item's ID reaches after each of its tokens (its leaf last), -1 padded."""
        tokens, lengths = self._token_matrix()
        tokens = torch.as_tensor(tokens, dtype=torch.long).to(self.device)
        lengths = torch.as_tensor(lengths).to(self.device)
        out = torch.full(tokens.shape, -1, dtype=torch.long, device=self.device)
        nodes = torch.zeros(len(tokens), dtype=torch.long, device=self.device)
        for j in range(tokens.shape[1]):
            nodes = self.advance(nodes, torch.where(j < lengths, tokens[:, j], -1))
            out[:, j] = nodes
        return out

    def parents(self) -> torch.Tensor:
        """``[num_nodes]``: each node's parent (-1 for the root); children are numbered after their parents."""
        return torch.cat([torch.full((1,), -1, dtype=torch.long, device=self.device), self.edge_key // self.vocab_size])

    def best_below(self, item_scores: torch.Tensor) -> torch.Tensor:
        """``[B, num_nodes]``: the best score among the items below each node, from item scores
        ``[B, num_items]`` (item order); an item's leaf holds its own score. As a beam search
        ``node_prior`` it is an optimistic bound on what a prefix can still reach (A*-style), so with
        a large weight beam search finds the scores' own top items."""
        if self._paths is None:
            self._paths = self.paths()
        valid = self._paths >= 0
        index = self._paths[valid].expand(len(item_scores), -1)
        values = item_scores[:, torch.nonzero(valid)[:, 0]]
        best = torch.full((len(item_scores), self.num_nodes), -torch.inf, device=self.device).scatter_reduce(1, index, values, "amax")
        best[:, 0] = item_scores.max(1).values  # the root: every item
        return best

    def sequences(self) -> list[list[int]]:
        """The token sequence of every item, in item order (the inverse of :meth:`build`)."""
        tokens, lengths = self._token_matrix()
        return [row[:n].tolist() for row, n in zip(tokens, lengths, strict=True)]

    def _token_matrix(self) -> tuple[np.ndarray, np.ndarray]:
        """Padded ``[num_items, max_depth]`` token matrix (-1 padding) and lengths, by walking leaves up."""
        edge_token = self.edge_token.cpu().numpy()
        node_item = self.node_item.cpu().numpy()
        parent = self.parents().cpu().numpy()
        token = np.concatenate([[-1], edge_token])
        leaves = np.empty(self.num_items, dtype=np.int64)
        leaves[node_item[node_item >= 0]] = np.flatnonzero(node_item >= 0)
        reversed_tokens = np.full((self.num_items, self.max_depth), -1, dtype=np.int64)
        cur = leaves
        for depth in range(self.max_depth):
            reversed_tokens[:, depth] = np.where(cur > 0, token[np.maximum(cur, 0)], -1)
            cur = np.where(cur > 0, parent[np.maximum(cur, 0)], 0)
        lengths = (reversed_tokens >= 0).sum(1)
        # row i holds its tokens reversed in the first lengths[i] slots: un-reverse them per row
        col = lengths[:, None] - 1 - np.arange(self.max_depth)
        tokens = np.where(col >= 0, np.take_along_axis(reversed_tokens, np.maximum(col, 0), axis=1), -1)
        return tokens, lengths

    # ----------------------------------------------------------------------------- device

    def to(self, device: torch.device | str) -> Trie:
        """This trie with its tensors on ``device`` (itself when already there)."""
        device = torch.device(device)
        if self.device == device or (device.type == self.device.type and device.index is None):
            return self
        return Trie(
            **{name: getattr(self, name).to(device) for name in _TENSORS},
            corpora=self.corpora,
            vocab_size=self.vocab_size,
            eos_token_id=self.eos_token_id,
            max_depth=self.max_depth,
        )
