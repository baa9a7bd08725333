"""Top-K metrics for leave-one-out evaluation: exactly one true item per user.

Following RecBole, with ``rank`` the 0-based position of the user's true item in the
recommended list (``rank = inf`` when it is not in the list):

* ``Recall@K = 1[rank < K]`` (equal to HitRate@K when there is one true item);
* ``NDCG@K = 1 / log2(rank + 2)  if rank < K  else 0`` (the ideal DCG of one relevant item is 1).

Both are averaged over users. Input is a ``[N, K']`` matrix of recommended item rows (``-1``
for "no item", which never matches) and the ``[N]`` vector of true item rows; ``K <= K'``.
"""

from __future__ import annotations

import numpy as np

from .errors import FoundationRecError

NOT_FOUND = np.iinfo(np.int64).max


def target_ranks(recommended: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """0-based position of each user's target in its recommended row, :data:`NOT_FOUND` when absent.

    When an item appears twice in a row the first position counts.
    """
    recommended = np.asarray(recommended)
    targets = np.asarray(targets)
    if recommended.ndim != 2 or targets.shape != (recommended.shape[0],):
        raise FoundationRecError(f"need recommendations [N, K] and targets [N], got {recommended.shape} and {targets.shape}")
    hits = recommended == targets[:, None]
    found = hits.any(axis=1)
    return np.where(found, hits.argmax(axis=1), NOT_FOUND).astype(np.int64)


def recall_at_k(ranks: np.ndarray, k: int) -> float:
    """Mean of ``1[rank < k]`` over users."""
    return float(np.mean(ranks < k)) if len(ranks) else 0.0


def ndcg_at_k(ranks: np.ndarray, k: int) -> float:
    """The one NDCG: ``NDCG@k = mean_u 1[r_u < k] / log2(r_u + 2)``, with ``r_u`` user u's 0-based rank of the true item.

    One relevant item per user, so the ideal DCG is 1 and NDCG is the DCG of that item:
    rank 0 gives 1, rank 1 gives 1/log2(3) = 0.631, ranks at or past ``k`` give 0.
    """
    return float(ndcg_gains(ranks, k).mean()) if len(ranks) else 0.0


def ndcg_gains(ranks: np.ndarray, k: int) -> np.ndarray:
    """Each user's NDCG@k, ``1[r_u < k] / log2(r_u + 2)`` (:func:`ndcg_at_k` is their mean)."""
    ranks = np.asarray(ranks)
    hit = ranks < k
    gains = np.zeros(len(ranks))
    gains[hit] = 1.0 / np.log2(ranks[hit] + 2.0)
    return gains


def leave_one_out_metrics(recommended: np.ndarray, targets: np.ndarray, ks: tuple[int, ...] = (5, 10)) -> dict[str, float]:
    """``{"R@K": ..., "N@K": ...}`` for every ``K`` in ``ks``, from recommended rows and true items."""
    if ks and max(ks) > np.shape(recommended)[1]:
        raise FoundationRecError(f"cannot score @{max(ks)} from {np.shape(recommended)[1]} recommendations per user; recommend at least {max(ks)}")
    ranks = target_ranks(recommended, targets)
    out = {f"R@{k}": recall_at_k(ranks, k) for k in ks}
    out.update({f"N@{k}": ndcg_at_k(ranks, k) for k in ks})
    return out


def expected_random_metrics(candidates: np.ndarray, reachable: np.ndarray, ks: tuple[int, ...] = (5, 10)) -> dict[str, float]:
    """The exact expectation of ``Recall@K`` and ``NDCG@K`` under a uniformly random ranking.

    User ``u`` ranks ``n = candidates[u]`` items at random; when its target is among them
    (``reachable[u]``) it lands at each position ``r = 0 .. n-1`` with probability ``1 / n``, so

    * ``E[Recall@K] = min(K, n) / n``;
    * ``E[NDCG@K] = (1 / n) * sum_{r < min(K, n)} 1 / log2(r + 2)``;

    and both are 0 when the target cannot be ranked. Averaged over users. This is what a random
    recommender scores on average: one random draw on a few thousand users is noisy (on a
    3,706-item catalog, 2,000 users expect about 5 hits in the top 10).
    """
    n = np.asarray(candidates, dtype=np.float64)
    reachable = np.asarray(reachable, dtype=bool)
    if n.shape != reachable.shape or (n[reachable] < 1).any():
        raise FoundationRecError("need one candidate count >= 1 per user whose target is reachable")
    out = {}
    for k in ks:
        top = np.minimum(k, n)
        gains = np.cumsum(1.0 / np.log2(np.arange(k) + 2.0))  # gains[j]: DCG of a hit anywhere in the first j + 1 positions, summed
        dcg = gains[np.maximum(top.astype(np.int64) - 1, 0)]
        out[f"R@{k}"] = float(np.mean(np.where(reachable, top / np.maximum(n, 1), 0.0))) if len(n) else 0.0
        out[f"N@{k}"] = float(np.mean(np.where(reachable, dcg / np.maximum(n, 1), 0.0))) if len(n) else 0.0
    return dict(sorted(out.items(), key=lambda kv: (kv[0][0] != "R", int(kv[0].split("@")[1]))))
