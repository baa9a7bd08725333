"""The prior alone, in the variants that led to the shipped platform signals, on the five targets' test users.

    python benchmarks/signal_variants.py --checkpoint runs/pretrain/best --max-users 2000

Every variant uses the checkpoint's content scorer and ranks the whole catalog (no language model):

* ``all items, no repeats``: the prior before platform signals, a softmax over every item, the user's own included;
* ``strict``: new items only, the user's own repeat share as ``rho`` (shipped);
* ``counts, no popularity``: counts with the popularity weights at 0, what fitting them on the sampled
  sub-catalogs of the pool gave (see ``results/signal_variants.md``);
* ``counts``: shipped.

Written to ``results/signal_variants.{json,md}`` with popularity, text-kNN and history on the same users.
"""

from __future__ import annotations

import argparse

import torch
from common import TARGETS, environment, provenance, write_table

from foundation_rec.baselines import fit
from foundation_rec.content_prior import PriorRanking, load_scorer, right_aligned
from foundation_rec.corpora import load_corpus
from foundation_rec.evaluate import evaluate_settings
from foundation_rec.signals import PlatformCounts
from foundation_rec.text_embeddings import item_vectors


class EveryItem:
    """The explore logits' softmax over every item, the user's own included (the prior before platform signals)."""

    def __init__(self, scorer, vectors):
        self.scorer, self.vectors = scorer, vectors

    def recommend(self, histories, k):
        with torch.no_grad():
            return self.scorer(right_aligned(histories, self.scorer.max_history), self.vectors).topk(k).indices.numpy()


def variants(scorer, vectors, counts) -> dict:
    weights = scorer.signals.weights.data.clone()

    def shipped_then(change):
        def make():
            scorer.signals.weights.data = weights.clone()
            change()
            return PriorRanking(scorer, vectors, counts)
        return make

    return {
        "all items, no repeats": lambda: EveryItem(scorer, vectors),
        "strict": lambda: PriorRanking(scorer, vectors),
        "counts, no popularity": shipped_then(lambda: scorer.signals.weights.data.copy_(torch.tensor([1.0, 0.0, 0.0]))),
        "counts": shipped_then(lambda: None),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", default="runs/pretrain/best")
    parser.add_argument("--targets", default=",".join(TARGETS))
    parser.add_argument("--max-users", type=int, default=2000)
    args = parser.parse_args()
    torch.set_num_threads(1)
    scorer = load_scorer(f"{args.checkpoint}/recommender")
    rows, payload = [], {"environment": environment(), "checkpoint": args.checkpoint, "results": []}
    for target in args.targets.split(","):
        corpus = load_corpus(target)
        vectors, _ = item_vectors(corpus.items.data.column("text").to_pylist(), f"{corpus.name} items", False)
        counts = PlatformCounts.from_corpus(corpus)
        methods = {**variants(scorer, vectors, counts), **{m: (lambda m=m, corpus=corpus: fit(m, corpus)) for m in ("popularity", "text-knn", "history")}}
        for name, make in methods.items():
            result = evaluate_settings(corpus, make(), name, (False, True), max_users=args.max_users, progress=False)
            payload["results"] += result
            rows.append([target, name, *(f"{r['metrics']['N@10']:.4f}" for r in result)])
            print(rows[-1], flush=True)
    note = (f"{provenance(payload['environment'])} Checkpoint `{args.checkpoint}`; {args.max_users:,} fixed-seed test users per target "
            "(all 943 on MovieLens-100k); N@10, full ranking.")
    write_table("signal_variants", payload, "## The prior alone: platform-signal variants", note,
                ["target", "variant", "N@10 history kept", "N@10 history excluded"], rows)


if __name__ == "__main__":
    main()
