"""Recall@K and NDCG@K on hand-computed leave-one-out cases."""

from __future__ import annotations

import math

import numpy as np
import pytest

from foundation_rec.errors import FoundationRecError
from foundation_rec.metrics import NOT_FOUND, leave_one_out_metrics, ndcg_at_k, recall_at_k, target_ranks

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
