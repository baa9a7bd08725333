"""The tensor prefix trie against a plain dict trie: allowed tokens, transitions, leaves, tails."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from foundation_rec.errors import FoundationRecError
from foundation_rec.trie import Trie

EOS, V = 1, 50


def random_ids(n: int, seed: int, vocab: int = 12) -> list[list[int]]:
    """``n`` distinct ID sequences of 2-6 tokens + EOS over a small alphabet (so prefixes are shared)."""
    rng = np.random.default_rng(seed)
    seen: dict[tuple[int, ...], None] = {}
    while len(seen) < n:
        seen[tuple(int(t) for t in rng.integers(2, 2 + vocab, rng.integers(2, 7))) + (EOS,)] = None
    return [list(s) for s in seen]


def prefixes(sequences):
    """Every proper prefix of every sequence -> the set of tokens that may follow it."""
    follow: dict[tuple[int, ...], set[int]] = {}
    for seq in sequences:
        for i in range(len(seq)):
            follow.setdefault(tuple(seq[:i]), set()).add(seq[i])
    return follow


def walk(trie: Trie, prefix) -> int:
    node = torch.zeros(1, dtype=torch.long)
    for token in prefix:
        node = trie.advance(node, torch.tensor([token]))
    return int(node)


def test_children_and_advance_match_a_dict_trie():
    seqs = random_ids(300, seed=0)
    trie = Trie.build(seqs, vocab_size=V, eos_token_id=EOS)
    follow = prefixes(seqs)
    assert trie.num_nodes == len(follow) + len(seqs)  # inner nodes + one leaf per item
    nodes = torch.tensor([walk(trie, p) for p in follow])
    assert (nodes >= 0).all() and len(set(nodes.tolist())) == len(follow)
    tokens, children, valid = trie.children(nodes)
    for i, allowed in enumerate(follow.values()):
        assert tokens[i][valid[i]].tolist() == sorted(allowed)
        assert children[i][valid[i]].tolist() == trie.advance(nodes[i].repeat(len(allowed)), tokens[i][valid[i]]).tolist()
    # tokens that are not edges, and dead nodes, lead nowhere
    assert trie.advance(torch.tensor([0, 0, -1]), torch.tensor([0, 2 + 12, 2])).tolist() == [-1, -1, -1]
    _dead_tokens, dead_nodes, dead_valid = trie.children(torch.tensor([-1]))
    assert not dead_valid.any() and (dead_nodes == -1).all()


def test_leaves_name_items_and_sequences_round_trip():
    seqs = random_ids(200, seed=1)
    rows = np.arange(len(seqs)) * 7 + 3
    trie = Trie.build(seqs, vocab_size=V, eos_token_id=EOS, rows=rows, corpus="beauty")
    leaves = torch.tensor([walk(trie, s) for s in seqs])
    assert trie.items(leaves).tolist() == list(range(len(seqs)))
    inner = torch.tensor([walk(trie, s[:-1]) for s in seqs])
    assert (trie.items(inner) == -1).all() and trie.items(torch.tensor([-1])).tolist() == [-1]
    assert trie.sequences() == seqs
    assert trie.item_row[[0, 5]].tolist() == [3, 38] and trie.corpora == ("beauty",)
    assert trie.max_depth == max(map(len, seqs))


def test_tails_are_the_single_paths_left():
    """By hand: 'a b c', 'a b d', 'e', 'f g' -> after 'a b c' only EOS; after 'f' 'g EOS'; 'a' still branches."""
    a, b, c, d, e, f, g = range(2, 9)
    trie = Trie.build([[a, b, c, EOS], [a, b, d, EOS], [e, EOS], [f, g, EOS]], vocab_size=V, eos_token_id=EOS)
    cases = {(): [], (a,): [], (a, b): [], (a, b, c): [EOS], (e,): [EOS], (f,): [g, EOS], (f, g): [EOS], (f, g, EOS): []}
    nodes = torch.tensor([walk(trie, p) for p in cases] + [-1])
    tokens, lengths = trie.tails(nodes)
    assert lengths.tolist() == [len(t) for t in cases.values()] + [0]
    assert [row[:n].tolist() for row, n in zip(tokens, lengths, strict=True)] == [*cases.values(), []]
    assert all((row[n:] == -1).all() for row, n in zip(tokens, lengths, strict=True))  # padded with -1
    # on a random catalog: a node's tail is its only continuation, and following it reaches a leaf
    seqs = random_ids(300, seed=4)
    trie = Trie.build(seqs, vocab_size=V, eos_token_id=EOS)
    follow = prefixes(seqs)
    nodes = torch.tensor([walk(trie, p) for p in follow])
    tokens, lengths = trie.tails(nodes)
    for (prefix, _), row, n in zip(follow.items(), tokens.tolist(), lengths.tolist(), strict=True):
        rest = {tuple(s[len(prefix) :]) for s in seqs if tuple(s[: len(prefix)]) == prefix}
        assert (n > 0) == (len(rest) == 1)
        if n:
            assert tuple(row[:n]) == next(iter(rest))


@pytest.mark.parametrize(
    ("sequences", "message"),
    [
        ([], "empty trie"),
        ([[3, 4]], "must end with EOS"),
        ([[3, EOS, 4, EOS]], "must end with EOS"),
        ([[3, V, EOS]], "vocab_size"),
        ([[3, 4, EOS], [5, EOS], [3, 4, EOS]], "items 0 and 2"),
    ],
)
def test_bad_input_raises_one_line_errors(sequences, message):
    with pytest.raises(FoundationRecError, match=message):
        Trie.build(sequences, vocab_size=V, eos_token_id=EOS)


def test_builds_250k_items_in_seconds():
    rng = np.random.default_rng(5)
    vocab = 32000
    lengths = rng.integers(3, 9, 260_000)
    tokens = rng.integers(2, vocab, (len(lengths), 8))
    unique = {tuple(row[: n - 1].tolist()) + (EOS,): None for row, n in zip(tokens, lengths, strict=True)}
    seqs = [list(s) for s in list(unique)[:250_000]]
    start = time.perf_counter()
    trie = Trie.build(seqs, vocab_size=vocab, eos_token_id=EOS)
    assert time.perf_counter() - start < 15
    assert trie.num_items == 250_000
    picks = [0, 123_456, 249_999]
    assert [trie.items(torch.tensor([walk(trie, seqs[i])])).item() for i in picks] == picks
