"""The one evaluation harness every recommender goes through (baselines and the zero-shot model).

Protocol (leave-one-out, full ranking):

* **examples**: for the ``test`` split, each user's last item is the truth and the history is
  everything before it, capped at the last ``max_history`` (20) items; users with fewer than 2
  items have no test example and are excluded and counted (``valid``: second-to-last item, users
  with fewer than 3 items excluded). See :mod:`foundation_rec.splits`.
* **ranking**: a recommender ranks the whole catalog (no negative sampling) and returns its top
  items; :mod:`foundation_rec.metrics` scores Recall@K and NDCG@K for K in 5, 10.
* **history items are not excluded** by default: a recommender may recommend an item the user
  already has, and a hit on it counts. This follows the usual full-ranking leave-one-out
  protocol for Amazon (RecBole's sequential evaluation, SASRec-style papers) and keeps repeat
  consumption scorable: 6.5% of Yelp and 0.5% of Steam test targets are in the user's 20-item
  history (0% on Amazon, MovieLens, Goodreads). ``exclude_history=True`` instead removes the
  history items from every method's list, in this harness, identically for every method (it asks
  for ``max_history`` extra items and drops the history ones).
* **sampling**: ``max_users=N`` evaluates a fixed-seed sample of N users (the same users for
  every method on the same corpus, split and seed) and the result says ``sampled: true``.

A recommender is any object with ``recommend(histories, k) -> np.ndarray [N, k]``: histories
are arrays of item rows (oldest first), the result holds item rows, best first, ``-1`` for none.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
from tqdm.auto import tqdm

from . import atomic
from .errors import FoundationRecError
from .metrics import expected_random_metrics, leave_one_out_metrics
from .splits import MAX_HISTORY, leave_one_out

KS = (5, 10)


class Recommender(Protocol):
    """What the harness calls: rank the catalog for a batch of histories."""

    def recommend(self, histories: list[np.ndarray], k: int) -> np.ndarray:
        """Top ``k`` item rows for each history, best first; ``-1`` pads a row with fewer items."""
        ...


@dataclass(frozen=True)
class Examples:
    """The evaluated examples of one split: histories, true items and how users were selected."""

    split: str
    histories: list[np.ndarray]
    targets: np.ndarray
    users_total: int
    users_excluded: int
    sampled: bool
    users: list | None = None  # per-example user text for recommenders that take it (the Trainer's user-ID prompts)

    def __len__(self) -> int:
        return len(self.targets)


def examples(corpus, split: str = "test", max_users: int | None = None, seed: int = 0, max_history: int = MAX_HISTORY) -> Examples:
    """Build the examples of ``split``; with ``max_users`` a fixed-seed sample of that many users."""
    if max_users is not None and max_users < 1:
        raise FoundationRecError(f"--max-users must be at least 1, got {max_users}")
    loo = leave_one_out(corpus.item_sequences, split, max_history=max_history)
    users_total = len(corpus.sequences)
    if len(loo) == 0:
        raise FoundationRecError(f"corpus {corpus.name!r} has no {split} examples (every user is too short); use a corpus with longer sequences")
    chosen = np.arange(len(loo))
    sampled = max_users is not None and max_users < len(loo)
    if sampled:
        chosen = np.sort(np.random.default_rng(seed).choice(len(loo), size=max_users, replace=False))
    return Examples(
        split=split,
        histories=[loo.history(int(i)) for i in chosen],
        targets=loo.targets[chosen],
        users_total=users_total,
        users_excluded=users_total - len(loo),
        sampled=bool(sampled),
    )


def drop_history(recommended: np.ndarray, histories: list[np.ndarray]) -> np.ndarray:
    """Replace history items by ``-1`` and move the remaining items to the front, order kept."""
    mask = np.stack([np.isin(row, hist) for row, hist in zip(recommended, histories)])
    kept = np.where(mask, -1, recommended)
    return np.take_along_axis(kept, np.argsort(mask, axis=1, kind="stable"), axis=1)


def _check(recommended, n: int, k: int, n_items: int, method: str) -> np.ndarray:
    recommended = np.asarray(recommended)
    if recommended.shape != (n, k) or not np.issubdtype(recommended.dtype, np.integer):
        raise FoundationRecError(f"{method}.recommend returned {recommended.dtype} {recommended.shape}, expected integers ({n}, {k}); fix the recommender")
    if recommended.size and (recommended.min() < -1 or recommended.max() >= n_items):
        raise FoundationRecError(f"{method}.recommend returned item rows outside the catalog [0, {n_items}); return catalog rows or -1")
    return recommended.astype(np.int64)


def evaluate(
    corpus,
    recommender: Recommender,
    method: str,
    *,
    split: str = "test",
    max_users: int | None = None,
    seed: int = 0,
    max_history: int = MAX_HISTORY,
    ks: tuple[int, ...] = KS,
    exclude_history: bool = False,
    batch_size: int = 512,
    progress: bool = True,
) -> dict:
    """Evaluate ``recommender`` on ``corpus`` and return the result dict (metrics, users, catalog, timing)."""
    return evaluate_settings(corpus, recommender, method, (exclude_history,), split=split, max_users=max_users, seed=seed,
                             max_history=max_history, ks=ks, batch_size=batch_size, progress=progress)[0]


def evaluate_settings(
    corpus,
    recommender: Recommender,
    method: str,
    exclude_history: tuple[bool, ...] = (False, True),
    *,
    split: str = "test",
    max_users: int | None = None,
    seed: int = 0,
    max_history: int = MAX_HISTORY,
    ks: tuple[int, ...] = KS,
    batch_size: int = 512,
    progress: bool = True,
) -> list[dict]:
    """One result per ``exclude_history`` setting from **one** ranking pass: the recommender ranks
    ``max(ks)`` items (plus ``max_history`` when any setting excludes history); history kept scores
    the first ``max(ks)``, history excluded drops the history items first."""
    start = time.perf_counter()
    ex = examples(corpus, split, max_users, seed, max_history)
    n_items = len(corpus.items)
    desc = f"eval {method} on {corpus.name} ({split})"
    metrics = evaluate_examples(ex, recommender, method, n_items, exclude_history, max_history=max_history, ks=ks,
                                batch_size=batch_size, progress=progress, desc=desc)
    seconds = round(time.perf_counter() - start, 2)
    return [{
        "corpus": corpus.name,
        "platform": corpus.platform,
        "method": method,
        "split": split,
        "metrics": m,
        "users_evaluated": len(ex),
        "users_total": ex.users_total,
        "users_excluded": ex.users_excluded,
        "sampled": ex.sampled,
        "sample_seed": seed if ex.sampled else None,
        "catalog_size": n_items,
        "max_history": max_history,
        "exclude_history": exclude,
        "seconds": seconds,
    } for exclude, m in zip(exclude_history, metrics, strict=True)]  # fmt: skip


def evaluate_examples(ex: Examples, recommender: Recommender, method: str, n_items: int, exclude_history: tuple[bool, ...] = (False,), *,
                      max_history: int = MAX_HISTORY, ks: tuple[int, ...] = KS, batch_size: int = 512, progress: bool = False,
                      desc: str = "eval", gather=None) -> list[dict]:
    """The metrics of pre-built examples ``ex`` (one dict per ``exclude_history`` setting), from one ranking pass.

    With ``ex.users`` the recommender is called as ``recommend(histories, k, users)``. ``gather`` (a
    function concatenating per-process lists, e.g. the Trainer's DDP ``gather``) combines examples
    sharded over processes before scoring; every process then returns the metrics of all of them.
    """
    k = max(ks) + (max_history if any(exclude_history) else 0)
    parts = []
    with tqdm(total=len(ex), unit="user", desc=desc, disable=not progress, leave=False) as bar:
        for lo in range(0, len(ex), batch_size):
            batch = ex.histories[lo : lo + batch_size]
            extra = (ex.users[lo : lo + batch_size],) if ex.users is not None else ()
            parts.append(_check(recommender.recommend(batch, k, *extra), len(batch), k, n_items, method))
            bar.update(len(batch))
    ranked = np.concatenate(parts) if parts else np.zeros((0, k), np.int64)
    histories, targets = ex.histories, np.asarray(ex.targets)
    if gather is not None:  # histories travel only when a setting drops them
        sent = [np.asarray(h).tolist() for h in histories] if any(exclude_history) else [None] * len(targets)
        rows = gather(list(zip(ranked.tolist(), targets.tolist(), sent, strict=True)))
        ranked = np.asarray([r[0] for r in rows], dtype=np.int64).reshape(len(rows), k)
        targets = np.asarray([r[1] for r in rows], dtype=np.int64)
        histories = [np.asarray(r[2], dtype=np.int64) for r in rows] if any(exclude_history) else []
    return [leave_one_out_metrics((drop_history(ranked, histories) if exclude else ranked)[:, : max(ks)], targets, ks) for exclude in exclude_history]


def expected_random(corpus, exclude_history: tuple[bool, ...] = (False, True), *, split: str = "test", max_users: int | None = None,
                    seed: int = 0, max_history: int = MAX_HISTORY, ks: tuple[int, ...] = KS) -> list[dict]:
    """``random-expected``: the exact expected metrics of a uniformly random ranking on the same users as
    :func:`evaluate_settings` (:func:`~foundation_rec.metrics.expected_random_metrics`). History kept,
    a user ranks the whole catalog; history excluded, the catalog less its history items, and a
    target inside the history cannot be hit."""
    ex = examples(corpus, split, max_users, seed, max_history)
    n_items = len(corpus.items)
    results = []
    for exclude in exclude_history:
        if exclude:
            candidates = np.asarray([n_items - len(np.unique(h)) for h in ex.histories])
            reachable = np.asarray([t not in h for h, t in zip(ex.histories, ex.targets, strict=True)], dtype=bool)
        else:
            candidates, reachable = np.full(len(ex), n_items), np.ones(len(ex), dtype=bool)
        results.append({
            "corpus": corpus.name, "platform": corpus.platform, "method": "random-expected", "split": split,
            "metrics": expected_random_metrics(candidates, reachable, ks), "users_evaluated": len(ex), "users_total": ex.users_total,
            "users_excluded": ex.users_excluded, "sampled": ex.sampled, "sample_seed": seed if ex.sampled else None,
            "catalog_size": n_items, "max_history": max_history, "exclude_history": exclude, "seconds": 0.0,
        })  # fmt: skip
    return results


def history_setting(result: dict) -> str:
    """``kept`` or ``excluded``: whether the user's own items stayed rankable in ``result`` (its ``exclude_history``)."""
    return "excluded" if result.get("exclude_history") else "kept"


def markdown_table(results: list[dict]) -> str:
    """One row per result: corpus, method, history (the user's own items kept or excluded), users (sampled or full),
    catalog, metrics, seconds."""
    keys = sorted(results[0]["metrics"], key=lambda m: (m[0] != "R", int(m.split("@")[1]))) if results else []  # R@5 R@10 N@5 N@10
    lines = [
        "| corpus | method | history | users | catalog | " + " | ".join(keys) + " | fit s | eval s |",
        "|---|---|---|---|---|" + "---|" * len(keys) + "---|---|",
    ]
    for r in results:
        users = f"{r['users_evaluated']:,} " + ("sampled" if r["sampled"] else "all")
        cells = " | ".join(f"{r['metrics'][key]:.4f}" for key in keys)
        lines.append(f"| {r['corpus']} | {r['method']} | {history_setting(r)} | {users} | {r['catalog_size']:,} | {cells} | "
                     f"{r.get('fit_seconds', 0):.1f} | {r['seconds']:.1f} |")
    return "\n".join(lines) + "\n"


def write_report(results: list[dict], out_dir: str | os.PathLike, stem: str, extra: dict | None = None) -> tuple[Path, Path]:
    """Atomically write ``<out_dir>/<stem>.json`` (``results`` plus ``extra``) and ``<stem>.md``; return both paths."""
    out = Path(out_dir)
    json_path, md_path = out / f"{stem}.json", out / f"{stem}.md"
    atomic.write_json(json_path, {**(extra or {}), "results": results})
    atomic.write_text(md_path, markdown_table(results))
    return json_path, md_path
