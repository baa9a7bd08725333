"""Counts that calibrate themselves: the platform-signal weights chosen on the platform's own held-out next items.

The pool teaches the content prior which item follows from the texts, but not how strongly a given platform
rewards popularity, trends or repeats (the pool's popularity weight fits Amazon, not Steam or Yelp). The counts
protocol reads the platform's logs, and the logs say it themselves: every user's last logged item (for a corpus,
the validation item; its test item is never kept) is a next item that the counts below never saw. With counts
and a history from everything before it, one family of priors is scored on a fixed-seed sample of those users::

    e_j = a * s_j + b * log(1 + n_j) + c * log(1 + r_j) + d * cos(v_last, v_j)
    p(j) = rho' * p_rep(j) + (1 - rho') * softmax(e over the items off the history)_j,  rho' = sigmoid(logit(rho) + t)

(``s``: the content prior's logits; ``n``, ``r``: popularity and recent popularity; ``v_last``: the latest history
item's text vector; ``rho`` and ``p_rep``: the counted repeat rate and recency, :mod:`foundation_rec.signals`).
Candidates, one selection:

* ``pool``: the weights learned on the Amazon pool, ``d = t = 0`` (the prior before calibration);
* ``fitted``: ``a, b, c, d, t`` fitted by maximum likelihood of the held-out items, starting from ``pool``;
* ``fitted+refined``: ``fitted`` after one round of coordinate ascent on held-out N@10 over ``d``, ``b`` and ``c``
  (likelihood and a top-10 ranking disagree most on the latest item's weight);
* ``popularity``: ``b`` alone and no repeat mixture: the popularity baseline's ranking;
* ``popularity-text-knn``: ``(0, w, 0, 1)`` and no repeat mixture: the popularity x text-kNN blend's ranking, with
  ``w`` tuned on the same users (:func:`blend_weight`, which the baseline of that name also uses);
* ``popularity+repeats``, ``popularity-text-knn+repeats``: the two anchors' explore logits with the counted repeat
  mixture (``t = 0``): on a platform without repeats they rank as the anchors do once the user's own items are left
  out, and leave those items out of the list in the first place.

The chosen candidate has the best N@10 on the held-out items, averaged over history kept and excluded, so on those
items the prior is never chosen below popularity or the blend (in that mean of the two settings). The anchors' overall scale, which their ranking does
not fix but the default's guidance (``gamma * log prior``) reads, is fitted by likelihood too. Strict never
calibrates: without logs there is nothing to calibrate on.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass

import numpy as np
import torch

from .content_prior import ContentScorer, right_aligned
from .metrics import ndcg_at_k
from .signals import Calibration, PlatformCounts, latest_similarity, mixture, repeat_parts, signal_logits
from .splits import MAX_HISTORY

USERS = 2000  # held-out users sampled per platform (fixed seed)
SEED = 0
CHUNK = 250  # users per feature block
BLEND_WEIGHTS = (0.0, 0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64)  # w of popularity x text-kNN, tuned on the held-out items
FIT_STEPS = 12
LATEST_GRID = (-4.0, -2.0, -1.0, -0.5, 0.0, 0.5, 1.0, 2.0, 4.0)  # the latest item's weight, searched from the fitted weights
SCALE_GRID = (0.0, 0.5, 2.0, 4.0)  # multiples of the fitted popularity weights searched
VERSION = 3  # of the calibration's choices (keys the cache)


@dataclass
class HeldOut:
    """A sample of held-out next items: histories (item rows, oldest first), targets, and the counts without them."""

    histories: list[np.ndarray]
    targets: np.ndarray
    counts: PlatformCounts

    def __len__(self) -> int:
        return len(self.targets)


def held_out(counts: PlatformCounts, n_items: int, users: int = USERS, seed: int = SEED) -> HeldOut | None:
    """Up to ``users`` fixed-seed users with at least two logged items: each one's last item and the (at most
    :data:`~foundation_rec.splits.MAX_HISTORY`) items before it. None when ``counts`` has no sequences or no such user."""
    if counts.held_out is None:
        return None
    offsets, values, _ = counts.held_out
    eligible = np.nonzero(np.diff(offsets) >= 2)[0]
    if not len(eligible):
        return None
    chosen = np.sort(np.random.default_rng(seed).choice(eligible, size=min(users, len(eligible)), replace=False))
    base, rest_offsets, rest = counts.without_last(n_items)
    histories = [rest[rest_offsets[u] : rest_offsets[u + 1]][-MAX_HISTORY:] for u in chosen]
    return HeldOut(histories, values[offsets[chosen + 1] - 1], base)


@dataclass
class Block:
    """Features of a block of held-out users: content logits (None without a scorer), latest-item similarity,
    the repeat parts and the targets."""

    content: torch.Tensor | None
    latest: torch.Tensor
    log_rep: torch.Tensor
    rho: torch.Tensor
    targets: torch.Tensor


def blocks(data: HeldOut, vectors: torch.Tensor, scorer: ContentScorer | None) -> list[Block]:
    """The held-out users' features in blocks of :data:`CHUNK`."""
    out = []
    with torch.no_grad():
        for lo in range(0, len(data), CHUNK):
            histories = data.histories[lo : lo + CHUNK]
            content = None if scorer is None else scorer(right_aligned(histories, scorer.max_history), vectors.float())
            latest = latest_similarity(histories, vectors)
            log_rep, rho = repeat_parts(histories, data.counts, len(vectors))
            out.append(Block(content, latest, log_rep, rho, torch.from_numpy(data.targets[lo : lo + CHUNK]).long()))
    return out


def log_probs(block: Block, weights: torch.Tensor, shift, popularity: torch.Tensor, recent: torch.Tensor) -> torch.Tensor:
    """``[B, items]`` log prior of the family (module docstring) for one block."""
    return mixture(signal_logits(weights, block.content, block.latest, popularity, recent), block.log_rep, block.rho, shift)


def ndcg(parts: list[Block], weights, shift, features) -> tuple[float, float]:
    """Held-out N@10 ``(history kept, history excluded)``; a target's rank counts the items scored strictly higher."""
    kept, excluded = [], []
    with torch.no_grad():
        for block in parts:
            scores = log_probs(block, torch.as_tensor(weights, dtype=torch.float32), shift, *features)
            target = scores.gather(1, block.targets[:, None])
            higher = scores > target
            history = block.log_rep > -torch.inf
            kept.append(higher.sum(1).numpy())
            mine = history.gather(1, block.targets[:, None])[:, 0]
            excluded.append(np.where(mine.numpy(), 10**9, (higher & ~history).sum(1).numpy()))
    return ndcg_at_k(np.concatenate(kept), 10), ndcg_at_k(np.concatenate(excluded), 10)


def fit(parts: list[Block], direction, shift, features, free_direction: bool) -> tuple[list[float], float | None]:
    """Maximum likelihood of the held-out items: the weights and the repeat shift (``free_direction``), or only the
    overall scale of a fixed ``direction`` (shift None stays None)."""
    n = sum(len(b.targets) for b in parts)
    weights = torch.tensor(direction, dtype=torch.float32, requires_grad=free_direction)
    log_scale = torch.zeros((), requires_grad=not free_direction)
    t = None if shift is None else torch.tensor(float(shift), requires_grad=free_direction)
    params = [p for p in (weights, log_scale, t) if p is not None and p.requires_grad]
    optimizer = torch.optim.LBFGS(params, lr=1.0, max_iter=FIT_STEPS, line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        total = 0.0
        for block in parts:
            lp = log_probs(block, weights * log_scale.exp(), t, *features).gather(1, block.targets[:, None])
            loss = -lp.clamp(min=-50.0).sum() / n  # a target scored NEVER (a repeat where none was counted) adds a constant
            loss.backward()
            total += loss.item()
        return total

    optimizer.step(closure)
    return [round(float(w), 5) for w in (weights * log_scale.exp()).detach()], None if t is None else round(float(t.detach()), 5)


def refine(parts: list[Block], weights: list[float], shift, features) -> tuple[list[float], float | None]:
    """One round of coordinate ascent on held-out N@10 (mean of history kept and excluded) from ``weights``: the
    latest item's weight over :data:`LATEST_GRID`, then popularity's and recent popularity's over multiples of their
    own; a move is kept only when it scores strictly higher."""
    best, score = list(weights), np.mean(ndcg(parts, weights, shift, features))
    for index, grid in ((3, LATEST_GRID), (1, [best[1] * m for m in SCALE_GRID]), (2, [best[2] * m for m in SCALE_GRID])):
        for value in grid:
            trial = [*best[:index], value, *best[index + 1 :]]
            trial_score = np.mean(ndcg(parts, trial, shift, features))
            if trial_score > score:
                best, score = trial, trial_score
    return [round(w, 5) for w in best], shift


def blend_weight(parts: list[Block], features) -> tuple[float, dict]:
    """The popularity x text-kNN blend's ``w`` with the best held-out N@10 (mean of history kept and excluded)."""
    scores = {w: ndcg(parts, [0.0, w, 0.0, 1.0], None, features) for w in BLEND_WEIGHTS}
    best = max(BLEND_WEIGHTS, key=lambda w: (np.mean(scores[w]), -w))
    return best, {str(w): [round(s, 5) for s in v] for w, v in scores.items()}


def tuned_blend_weight(vectors: torch.Tensor, counts: PlatformCounts, default: float) -> tuple[float, dict]:
    """The popularity x text-kNN baseline's ``w``, tuned on the same held-out users as :func:`calibrate`
    (``default``, the pool's, when the counts have no sequences)."""
    data = held_out(counts, len(vectors))
    if data is None:
        return default, {}
    features = tuple(torch.log1p(torch.from_numpy(c).float()) for c in (data.counts.popularity, data.counts.recent))
    return blend_weight(blocks(data, vectors, None), features)


def calibrate(scorer: ContentScorer, vectors: torch.Tensor, counts: PlatformCounts, log=print) -> Calibration | None:
    """Choose the signal weights of ``counts``'s platform on its held-out items (module docstring); None when the
    counts have no sequences with two items (a count column), and the pool's weights stay."""
    start = time.perf_counter()
    data = held_out(counts, len(vectors))
    if data is None or scorer.signals is None:
        return None
    parts = blocks(data, vectors, scorer)
    features = tuple(torch.log1p(torch.from_numpy(c).float()) for c in (data.counts.popularity, data.counts.recent))
    a, b, c = scorer.signals.weights.tolist()
    w, table = blend_weight(parts, features)
    candidates = {"pool": ([a, b, c, 0.0], 0.0), "fitted": fit(parts, [a, b, c, 0.0], 0.0, features, True)}
    candidates["fitted+refined"] = refine(parts, *candidates["fitted"], features)
    for name, direction in (("popularity-text-knn", [0.0, w, 0.0, 1.0]), ("popularity", [0.0, 1.0, 0.0, 0.0])):
        candidates[name] = fit(parts, direction, None, features, False)  # the anchor's own ranking
        candidates[f"{name}+repeats"] = fit(parts, direction, 0.0, features, False)  # the same, new items apart from repeats
    scores = {name: ndcg(parts, weights, shift, features) for name, (weights, shift) in candidates.items()}
    choice = max(candidates, key=lambda name: np.mean(scores[name]))  # ties keep the earlier (pool first)
    record = {"users": len(data), "seconds": round(time.perf_counter() - start, 2), "blend_weight": w, "blend_grid": table,
              "candidates": {name: {"weights": list(weights), "repeat_shift": shift, "N@10 kept": round(scores[name][0], 5),
                                    "N@10 excluded": round(scores[name][1], 5)} for name, (weights, shift) in candidates.items()}}
    weights, shift = candidates[choice]
    log(f"calibrated on {len(data):,} held-out users in {record['seconds']:.1f} s: {choice} (content {weights[0]:.3g}, popularity {weights[1]:.3g}, "
        f"recent {weights[2]:.3g}, latest item {weights[3]:.3g}, repeats {'off' if shift is None else f'{shift:+.2f}'}); held-out N@10 "
        + ", ".join(f"{name} {np.mean(s):.4f}" for name, s in scores.items()))
    return Calibration(tuple(weights), shift, choice, record)


def to_json(calibration: Calibration) -> dict:
    return {"version": VERSION, **dataclasses.asdict(calibration)}


def from_json(payload: dict) -> Calibration | None:
    """A saved calibration, or None when it was made by another version of the choices."""
    if payload.get("version") != VERSION:
        return None
    return Calibration(tuple(payload["weights"]), payload["repeat_shift"], payload["choice"], payload.get("record", {}))
