"""Cold ID generation of whole target catalogs with a checkpoint's generator: the fast path against the old one.

    python benchmarks/catalog_ids.py --checkpoint runs/minilm3/best --targets yelp --threads 2

For each target, every item's ID is generated from nothing (Algorithm 1, ``IDGenerator.assign``, no
cache), first with the per-item softmax (``softmax="text"``: each item's own tokens are its output
vocabulary, one search per distinct text; what ``index_catalog`` does now) and then with the
whole-vocabulary softmax of earlier versions (``softmax="vocab"``), on the same items in the same
process. Reported per setting: seconds, items/s, rounds (items per round), fallbacks, uniqueness,
mean ID words, and the share of items that get the same ID under both. ``--skip-vocab`` times the
fast path only. Writes ``results/catalog_ids.{json,md}``.
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import torch
from common import environment, provenance, write_table

from foundation_rec.corpora import load_corpus
from foundation_rec.idgen import IDGenerator


def generate(generator: IDGenerator, texts: list[str], softmax: str) -> dict:
    generator.config = dataclasses.replace(generator.config, softmax=softmax)
    start = time.perf_counter()
    result = generator.assign(texts, set(), progress=True)
    seconds = time.perf_counter() - start
    return {"softmax": softmax, "seconds": round(seconds, 2), "items_per_s": round(len(texts) / seconds, 1), "fallbacks": result.fallbacks,
            "rounds": [r["items"] for r in result.rounds], "unique_pct": round(100 * len(set(result.ids)) / len(texts), 3),
            "words_mean": round(sum(len(i.split()) for i in result.ids) / len(texts), 3), "ids": result.ids}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", default="runs/pretrain/best", help="checkpoint directory (its generator/ is used)")
    parser.add_argument("--targets", default="yelp", help="comma-separated catalogs")
    parser.add_argument("--data-dir", default=None, help="folder holding the corpora")
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    parser.add_argument("--skip-vocab", action="store_true", help="time the per-item softmax only")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    generator = IDGenerator.load(f"{args.checkpoint}/generator", device="cpu")
    generator.backbone.hf_model.train(False)
    payload = {"checkpoint": args.checkpoint, "results": []}
    rows = []
    for target in args.targets.split(","):
        texts = load_corpus(target, args.data_dir).items.data.column("text").to_pylist()
        runs = [generate(generator, texts, "text")] + ([] if args.skip_vocab else [generate(generator, texts, "vocab")])
        same = sum(a == b for a, b in zip(runs[0]["ids"], runs[-1]["ids"], strict=True)) / len(texts)
        for run in runs:
            ratio = runs[-1]["seconds"] / run["seconds"]
            rows.append([target, f"{len(texts):,}", run["softmax"], run["seconds"], run["items_per_s"], f"{ratio:.2f}x",
                         " / ".join(map(str, run["rounds"][:4])) + (" ..." if len(run["rounds"]) > 4 else ""), run["fallbacks"],
                         run["unique_pct"], run["words_mean"], f"{100 * same:.1f}%"])
            payload["results"].append({"target": target, "items": len(texts), "same_ids_share": round(same, 4),
                                       **{k: v for k, v in run.items() if k != "ids"}})
        payload["environment"] = environment()
        write_table("catalog_ids", payload, "# Cold ID generation of whole catalogs", provenance(payload["environment"]) +
                    f" Checkpoint `{args.checkpoint}`; nothing cached. Speed-up: the whole-vocabulary softmax's seconds over this row's; "
                    "same IDs: share of items given the same ID by both.",
                    ["target", "items", "softmax", "seconds", "items/s", "speed-up", "items per round", "fallbacks", "unique %",
                     "words (mean)", "same IDs"], rows)
        print(rows[-len(runs):], flush=True)


if __name__ == "__main__":
    main()
