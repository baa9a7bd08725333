"""Cold ID generation of whole target catalogs with a checkpoint's generator: the fast path against the old one.

    python benchmarks/catalog_ids.py --checkpoint runs/minilm3/best --targets yelp --threads 2

For each target, every item's ID is generated from nothing (Algorithm 1, ``IDGenerator.assign``, no
cache), on the same items in the same process, three ways: the per-item softmax in fp32
(``softmax="text"``: each item's own tokens are its output vocabulary, one search per distinct
text; what ``index_catalog`` does by default), the same in int8 (``precision="int8"``, int8.py:
what the demo does on a CPU), and the whole-vocabulary softmax of earlier versions
(``softmax="vocab"``). Reported per setting: seconds, items/s, speed-up over the first, rounds
(items per round), fallbacks, uniqueness, mean ID words, and the share of items that get the same
ID as in the first. ``--skip-int8`` and ``--skip-vocab`` leave those out. Writes
``results/catalog_ids.{json,md}``.
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import torch
from common import environment, provenance, write_table

from foundation_rec.corpora import load_corpus
from foundation_rec.idgen import IDGenerator


def generate(generator: IDGenerator, texts: list[str], softmax: str, precision: str) -> dict:
    generator.config = dataclasses.replace(generator.config, softmax=softmax, precision=precision)
    start = time.perf_counter()
    result = generator.assign(texts, set(), progress=True)
    seconds = time.perf_counter() - start
    return {"softmax": softmax, "precision": precision, "seconds": round(seconds, 2), "items_per_s": round(len(texts) / seconds, 1),
            "fallbacks": result.fallbacks, "rounds": [r["items"] for r in result.rounds], "unique_pct": round(100 * len(set(result.ids)) / len(texts), 3),
            "words_mean": round(sum(len(i.split()) for i in result.ids) / len(texts), 3), "ids": result.ids}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", default="runs/pretrain/best", help="checkpoint directory (its generator/ is used)")
    parser.add_argument("--targets", default="yelp", help="comma-separated catalogs")
    parser.add_argument("--data-dir", default=None, help="folder holding the corpora")
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    parser.add_argument("--skip-vocab", action="store_true", help="leave out the whole-vocabulary softmax")
    parser.add_argument("--skip-int8", action="store_true", help="leave out int8 generation")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    generator = IDGenerator.load(f"{args.checkpoint}/generator", device="cpu")
    generator.backbone.hf_model.train(False)
    settings = [("text", "fp32")] + ([] if args.skip_int8 else [("text", "int8")]) + ([] if args.skip_vocab else [("vocab", "fp32")])
    payload = {"checkpoint": args.checkpoint, "results": []}
    rows = []
    for target in args.targets.split(","):
        texts = load_corpus(target, args.data_dir).items.data.column("text").to_pylist()
        runs = [generate(generator, texts, softmax, precision) for softmax, precision in settings]
        for run in runs:
            same = sum(a == b for a, b in zip(runs[0]["ids"], run["ids"], strict=True)) / len(texts)
            rows.append([target, f"{len(texts):,}", run["softmax"], run["precision"], run["seconds"], run["items_per_s"],
                         f"{runs[0]['seconds'] / run['seconds']:.2f}x", " / ".join(map(str, run["rounds"][:4])) + (" ..." if len(run["rounds"]) > 4 else ""),
                         run["fallbacks"], run["unique_pct"], run["words_mean"], f"{100 * same:.1f}%"])
            payload["results"].append({"target": target, "items": len(texts), "same_ids_share": round(same, 4),
                                       **{k: v for k, v in run.items() if k != "ids"}})
        payload["environment"] = environment()
        write_table("catalog_ids", payload, "# Cold ID generation of whole catalogs", provenance(payload["environment"]) +
                    f" Checkpoint `{args.checkpoint}`; nothing cached. Speed-up: the first row's seconds (per-item softmax, fp32: what "
                    "`index_catalog` does by default) over this row's; same IDs: share of items given the same ID as in the first row.",
                    ["target", "items", "softmax", "precision", "seconds", "items/s", "speed-up", "items per round", "fallbacks", "unique %",
                     "words (mean)", "same IDs"], rows)
        print(rows[-len(runs):], flush=True)


if __name__ == "__main__":
    main()
