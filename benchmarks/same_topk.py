"""Record, or check, a fixed checkpoint's textual IDs and top-10 lists for fixed users: a refactor must not change them.

    # before the change (e.g. from a worktree of the old commit):
    FOUNDATION_REC_CACHE=$(mktemp -d) python -m benchmarks.same_topk runs/pretrain/best --out before.json
    # after it:
    FOUNDATION_REC_CACHE=$(mktemp -d) python -m benchmarks.same_topk runs/pretrain/best --out after.json --compare before.json

An empty cache makes the ID generator run (diverse beam search), not a cached table. For each
content-prior weight in ``--content-prior`` (default: the checkpoint's default and 0, pure
generation) it records the top-10 item ids of ``--users`` fixed-seed test users of ``--target``
through the public API (``FoundationRec.from_pretrained``, ``index_catalog``,
``catalog_recommender``); ``--target`` is a corpus name or a bring-your-own folder. ``--compare`` exits 1 and
names the first difference if the IDs or any list differ.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from foundation_rec.api import FoundationRec
from foundation_rec.corpora import load_corpus
from foundation_rec.evaluate import examples


def record(args) -> dict:
    model = FoundationRec.from_pretrained(args.checkpoint, device="cpu")
    corpus = load_corpus(args.target, args.data_dir)
    start = time.perf_counter()
    catalog = model.index_catalog(corpus, progress=False)
    out = {"checkpoint": str(args.checkpoint), "target": args.target, "users": args.users, "seed": args.seed,
           "index_seconds": round(time.perf_counter() - start, 1), "ids": list(catalog.ids), "top10": {}}
    test = examples(corpus, "test", max_users=args.users, seed=args.seed)
    item_ids = corpus.items["item_id"]
    weights = args.content_prior if args.content_prior is not None else sorted({model.content_prior, 0.0}, reverse=True)
    for gamma in weights:
        rec = model.catalog_recommender(content_prior=gamma)
        start = time.perf_counter()
        rows = rec.recommend(test.histories, 10)
        out["top10"][f"{gamma:g}"] = [[item_ids[r] if r >= 0 else None for r in row] for row in rows.tolist()]
        out[f"recommend_seconds_{gamma:g}"] = round(time.perf_counter() - start, 1)
    return out


def first_difference(before: dict, after: dict) -> str | None:
    if before["ids"] != after["ids"]:
        i = next((i for i, (a, b) in enumerate(zip(before["ids"], after["ids"])) if a != b), min(len(before["ids"]), len(after["ids"])))
        return f"textual IDs differ first at item row {i}"
    for gamma, lists in before["top10"].items():
        if gamma not in after["top10"]:
            return f"content prior {gamma} was not recorded after"
        for user, (a, b) in enumerate(zip(lists, after["top10"][gamma])):
            if a != b:
                return f"content prior {gamma}: user {user}'s top-10 differs: {a} vs {b}"
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("--target", default="movielens-100k")
    parser.add_argument("--data-dir", default=None, help="data directory (default: the package's search order)")
    parser.add_argument("--users", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--content-prior", type=float, nargs="*", default=None)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--compare", type=Path, default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    out = record(args)
    args.out.write_text(json.dumps(out, indent=1))
    lists = sum(len(v) for v in out["top10"].values())
    print(f"{len(out['ids'])} IDs, {lists} top-10 lists ({', '.join(out['top10'])}) -> {args.out}")
    if args.compare is None:
        return 0
    problem = first_difference(json.loads(args.compare.read_text()), out)
    print(f"differs from {args.compare}: {problem}" if problem else f"identical to {args.compare}: every ID and every top-10 list")
    return 1 if problem else 0


if __name__ == "__main__":
    sys.exit(main())
