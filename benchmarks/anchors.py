"""Choose the practitioner anchors' two settings on the Amazon pool, never on a target.

    python -m benchmarks.anchors [--corpora all] [--users 2000]

``text-knn-recency``'s decay and ``popularity-text-knn``'s popularity weight
(:mod:`foundation_rec.baselines.text_knn`) are picked by mean N@10 over the validation users (2,000 per
corpus, full-catalog ranking) of the pool corpora the content prior's platform signals are fitted on
(:data:`foundation_rec.content_prior.SIGNAL_MAX_ITEMS`); the decay first, then the weight with that decay.
``--corpora`` names other corpora (names or bring-your-own folders; the item limit applies to them too).
Writes ``results/anchors.{json,md}``; the chosen values are the constants in ``text_knn.py``.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from foundation_rec.baselines import TextKNN
from foundation_rec.content_prior import SIGNAL_MAX_ITEMS
from foundation_rec.corpora import load_corpora
from foundation_rec.evaluate import evaluate_settings
from foundation_rec.signals import PlatformCounts

from .common import environment, provenance, write_table

DECAYS = (1.0, 0.9, 0.7, 0.5, 0.3, 0.2, 0.1, 0.0)
WEIGHTS = (0.0, 0.01, 0.02, 0.04, 0.06, 0.08)


def mean_ndcg(corpora, counts, users: int, **options) -> list[float]:
    """N@10 on each corpus's validation users (a fixed-seed sample of ``users``) of text-kNN with ``options``."""
    out = []
    for corpus, count in zip(corpora, counts, strict=True):
        rec = TextKNN.fit(corpus, popularity=count.popularity if options.get("weight") else None, **options)
        out.append(evaluate_settings(corpus, rec, "text-knn", (False,), split="valid", max_users=users, progress=False)[0]["metrics"]["N@10"])
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpora", default="all", help="the pool corpora to choose on (those of at most SIGNAL_MAX_ITEMS items are used)")
    parser.add_argument("--users", type=int, default=2000, help="validation users per corpus (a fixed-seed sample)")
    parser.add_argument("--data-dir", default=None, help="data directory (default: the package's search order)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    corpora = [c for c in load_corpora(args.corpora, args.data_dir) if len(c.items) <= SIGNAL_MAX_ITEMS]
    counts = [PlatformCounts.from_corpus(c) for c in corpora]
    rows, payload = [], {"environment": environment(), "corpora": [c.name for c in corpora], "decay": {}, "weight": {}}
    for decay in DECAYS:
        scores = mean_ndcg(corpora, counts, args.users, decay=decay)
        payload["decay"][str(decay)] = scores
        rows.append(["text-knn-recency", f"decay {decay}", *(f"{s:.4f}" for s in scores), f"{np.mean(scores):.4f}"])
        print(rows[-1], flush=True)
    decay = max(DECAYS, key=lambda d: np.mean(payload["decay"][str(d)]))
    for weight in WEIGHTS:
        scores = mean_ndcg(corpora, counts, args.users, decay=decay, weight=weight)
        payload["weight"][str(weight)] = scores
        rows.append(["popularity-text-knn", f"decay {decay}, weight {weight}", *(f"{s:.4f}" for s in scores), f"{np.mean(scores):.4f}"])
        print(rows[-1], flush=True)
    weight = max(WEIGHTS, key=lambda w: np.mean(payload["weight"][str(w)]))
    payload["chosen"] = {"decay": decay, "weight": weight}
    note = (f"{provenance(payload['environment'])} Validation N@10, {args.users:,} users per corpus, full-catalog ranking, history kept. "
            f"Chosen: decay {decay}, weight {weight} (the constants RECENCY_DECAY and BLEND_WEIGHT in foundation_rec/baselines/text_knn.py).")
    write_table("anchors", payload, "## Practitioner anchors: settings chosen on the Amazon pool", note,
                ["anchor", "setting", *(c.name for c in corpora), "mean"], rows)


if __name__ == "__main__":
    main()
