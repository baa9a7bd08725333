"""Leave-one-out splits: hand-checked examples and the leak-freedom guarantees."""

from __future__ import annotations

import numpy as np
import pytest

from foundation_rec.corpora import load_corpus
from foundation_rec.errors import FoundationRecError
from foundation_rec.splits import leave_one_out

SEQS = [[0, 1, 2, 3, 4], [5, 6, 7], [8, 9], [1]]


def test_hand_checked_examples():
    train = leave_one_out(SEQS, "train")
    # user 0: targets s[1], s[2]; user 1 (n=3): none; users 2, 3: none
    assert train.targets.tolist() == [1, 2]
    assert [train.history(i).tolist() for i in range(len(train))] == [[0], [0, 1]]
    valid = leave_one_out(SEQS, "valid")
    assert valid.targets.tolist() == [3, 6] and valid.rows.tolist() == [0, 1]
    assert [valid.history(i).tolist() for i in range(len(valid))] == [[0, 1, 2], [5]]
    test = leave_one_out(SEQS, "test")
    assert test.targets.tolist() == [4, 7, 9] and test.rows.tolist() == [0, 1, 2]
    assert [test.history(i).tolist() for i in range(len(test))] == [[0, 1, 2, 3], [5, 6], [8]]
    assert [test.target(i) for i in range(len(test))] == [4, 7, 9] and [valid.target(i) for i in range(len(valid))] == [3, 6]


def test_history_window_is_capped():
    seq = [list(range(30))]
    test = leave_one_out(seq, "test", max_history=20)
    assert test.history(0).tolist() == list(range(9, 29))
    assert leave_one_out(seq, "train", max_history=20).history(26).tolist() == list(range(7, 27))  # last train target s[27]


def test_bad_split_name_and_window():
    with pytest.raises(FoundationRecError, match="unknown split 'dev'"):
        leave_one_out(SEQS, "dev")
    with pytest.raises(FoundationRecError, match="max_history must be at least 1"):
        leave_one_out(SEQS, "test", max_history=0)


def _check_no_leak(sequences):
    """No held-out target is a training target of its user, and no input sees a held-out position."""
    seqs = sequences.to_pylist() if hasattr(sequences, "to_pylist") else [list(s) for s in sequences]
    train, valid, test = (leave_one_out(sequences, s) for s in ("train", "valid", "test"))
    lengths = np.array([len(s) for s in seqs])
    # every training target (and its whole history) lies strictly before the user's last two positions
    assert np.all(train.positions <= lengths[train.rows] - 3)
    assert np.all(valid.positions == lengths[valid.rows] - 2) and np.all(test.positions == lengths[test.rows] - 1)
    held_out = {(int(r), int(p)) for sp in (valid, test) for r, p in zip(sp.rows, sp.positions)}
    trained = {(int(r), int(p)) for r, p in zip(train.rows, train.positions)}
    assert not held_out & trained
    for sp in (train, valid):  # inputs: histories never reach the target's position or beyond
        for i in range(len(sp)):
            r, p = int(sp.rows[i]), int(sp.positions[i])
            assert sp.history(i).tolist() == seqs[r][max(0, p - 20) : p]
    return train, valid, test


def test_no_leak_on_fixture(fixture_data):
    corpus = load_corpus("amazon2014-beauty", fixture_data)
    train, valid, test = _check_no_leak(corpus.item_sequences)
    assert len(train) == 2 + 0 and len(valid) == 2 and len(test) == 3


@pytest.mark.corpora
def test_no_leak_on_real_corpus(real_data):
    corpus = load_corpus("amazon2014-beauty", real_data)
    train, valid, test = _check_no_leak(corpus.item_sequences)
    assert len(test) == len(valid) == len(corpus.sequences)  # 5-core: every user has a test example
    assert len(train) == 198_215 - 3 * 22_332
