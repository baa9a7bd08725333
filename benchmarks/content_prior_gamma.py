"""Choose the content prior's weight gamma on the pre-training platforms, never on a target.

    python benchmarks/content_prior_gamma.py --checkpoint runs/minilm2/best --gammas 0,1,3,10,30

For a few pre-training corpora, the checkpoint's own training sample (the recorded
``users_per_corpus`` and seed) is indexed as a catalog, as ``zeroshot`` indexes a target (IDs from
the generator, the trie, the items' text vectors), and each gamma of
``CatalogRecommender(content_prior=gamma)`` is scored on those users' **validation** items (the
second-to-last item: held out of training, not the test item). The content scorer alone is
scored on the same users. Results: ``results/content_prior_gamma.{json,md}``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from common import environment, provenance, write_results

from foundation_rec.api import PRIOR, FoundationRec
from foundation_rec.checkpoint import read_config
from foundation_rec.content_prior import PriorRanking
from foundation_rec.corpora import load_corpus
from foundation_rec.evaluate import evaluate
from foundation_rec.pool import sample_corpus


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", default="runs/minilm2/best")
    parser.add_argument("--corpora", default="amazon2014-beauty,amazon2018-games,amazon2018-office")
    parser.add_argument("--gammas", default="0,1,3,10,30")
    parser.add_argument("--max-users", type=int, default=200)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    config = read_config(args.checkpoint)
    users, seed = config["run"]["users_per_corpus"], int(config["train"]["seed"])
    model = FoundationRec.from_pretrained(Path(args.checkpoint), device="cpu")
    rows = []
    for name in args.corpora.split(","):
        corpus = sample_corpus(load_corpus(name, config["run"].get("data_dir")), users or None, seed)
        catalog = model.index_catalog(corpus, progress=False)
        methods = {PRIOR: PriorRanking(model.recommender.scorer, catalog.vectors)}
        methods.update({f"gamma={g:g}": model.catalog_recommender(content_prior=g) for g in map(float, args.gammas.split(","))})
        for method, rec in methods.items():
            row = evaluate(corpus, rec, method, split="valid", max_users=args.max_users, seed=0, progress=False)
            rows.append(row)
            print(f"{name} {method}: N@10 {row['metrics']['N@10']:.4f} R@10 {row['metrics']['R@10']:.4f}", flush=True)
    methods = list(dict.fromkeys(r["method"] for r in rows))
    lines = ["| corpus | " + " | ".join(methods) + " |", "|---|" + "---|" * len(methods)]
    for name in args.corpora.split(","):
        cells = [next(f"{r['metrics']['N@10']:.4f}" for r in rows if r["corpus"] == name and r["method"] == m) for m in methods]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    mean = [sum(r["metrics"]["N@10"] for r in rows if r["method"] == m) / len(args.corpora.split(",")) for m in methods]
    lines.append("| mean | " + " | ".join(f"{v:.4f}" for v in mean) + " |")
    payload = {"environment": environment(), "checkpoint": args.checkpoint, "results": rows}
    markdown = (f"# Content prior weight, chosen on pre-training validation items\n\n{provenance(payload['environment'])}\n\n"
                f"N@10 on the validation item of {args.max_users} fixed-seed users of each corpus's training sample:\n\n" + "\n".join(lines) + "\n")
    write_results("content_prior_gamma", payload, markdown)
    print(markdown)


if __name__ == "__main__":
    main()
