"""Recall@K and NDCG@K on hand-computed leave-one-out cases."""

from __future__ import annotations

import math

import numpy as np
import pytest

from foundation_rec.errors import FoundationRecError
from foundation_rec.metrics import NOT_FOUND, expected_random_metrics, leave_one_out_metrics, ndcg_at_k, recall_at_k, target_ranks

# four users; targets at rank 0, rank 2, rank 6 and absent (a -1 pad never matches)
RECOMMENDED = np.array(
    [
        [7, 1, 2, 3, 4, 5, 6, 8],
        [1, 2, 7, 3, 4, 5, 6, 8],
        [1, 2, 3, 4, 5, 6, 7, 8],
        [1, 2, 3, -1, -1, -1, -1, -1],
    ]
)
TARGETS = np.array([7, 7, 7, -5])


def test_ranks():
    assert target_ranks(RECOMMENDED, TARGETS).tolist() == [0, 2, 6, NOT_FOUND]
    assert target_ranks(np.array([[3, 3, 4]]), np.array([3])).tolist() == [0]  # first occurrence counts
    assert target_ranks(np.array([[-1, -1]]), np.array([-1])).tolist() == [0]  # the protocol never has target -1


def test_hand_computed_values():
    ranks = target_ranks(RECOMMENDED, TARGETS)
    assert recall_at_k(ranks, 1) == 0.25
    assert recall_at_k(ranks, 5) == 0.5
    assert recall_at_k(ranks, 8) == 0.75
    assert ndcg_at_k(ranks, 5) == pytest.approx((1 + 1 / math.log2(4)) / 4)  # 1/log2(0+2) + 1/log2(2+2)
    assert ndcg_at_k(ranks, 8) == pytest.approx((1 + 0.5 + 1 / math.log2(8)) / 4)
    metrics = leave_one_out_metrics(RECOMMENDED, TARGETS, ks=(5,))
    assert metrics == pytest.approx({"R@5": 0.5, "N@5": 0.375})


def test_empty_and_bad_shapes():
    assert recall_at_k(np.array([], dtype=np.int64), 10) == 0.0 and ndcg_at_k(np.array([], dtype=np.int64), 10) == 0.0
    with pytest.raises(FoundationRecError, match="recommend at least 10"):
        leave_one_out_metrics(RECOMMENDED, TARGETS, ks=(5, 10))
    with pytest.raises(FoundationRecError, match=r"targets \[N\]"):
        target_ranks(RECOMMENDED, TARGETS[:2])


def test_expected_random_by_hand_and_by_simulation():
    # by hand: a 4-item list always holds the target (R@10 = 1); 100 items: R@10 = 0.1; an unreachable target scores 0
    got = expected_random_metrics(np.array([4, 100, 50]), np.array([True, True, False]), ks=(10,))
    dcg4 = 1 + 1 / math.log2(3) + 1 / 2 + 1 / math.log2(5)
    dcg10 = sum(1 / math.log2(r + 2) for r in range(10))
    assert got["R@10"] == pytest.approx((1 + 0.1 + 0) / 3)
    assert got["N@10"] == pytest.approx((dcg4 / 4 + dcg10 / 100 + 0) / 3)
    # by simulation: the mean of many random rankings of a 30-item catalog
    rng = np.random.default_rng(0)
    rankings = np.stack([rng.permutation(30)[:10] for _ in range(40_000)])
    simulated = leave_one_out_metrics(rankings, np.zeros(len(rankings), dtype=np.int64), ks=(5, 10))
    exact = expected_random_metrics(np.full(1, 30), np.ones(1, dtype=bool))
    for key in ("R@5", "R@10", "N@5", "N@10"):
        assert simulated[key] == pytest.approx(exact[key], rel=0.03), key
    with pytest.raises(FoundationRecError, match="candidate count"):
        expected_random_metrics(np.array([0]), np.array([True]))
