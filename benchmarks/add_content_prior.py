"""Train the content prior of an existing checkpoint, the way ``pretrain`` does, and add it to the checkpoint.

    python benchmarks/add_content_prior.py runs/minilm2/best [--epochs 4]

For checkpoints written before ``--content-prior-epochs`` existed (early ``minilm-t5`` runs):
the pool is rebuilt from the checkpoint's recorded corpora, ``users_per_corpus`` and seed, the scorer
is trained by :func:`foundation_rec.content_prior.train_on_pool` (the function ``pretrain`` calls),
and ``recommender/scorer.{safetensors,json}`` are written atomically (a temporary file, then
renamed). The recommender, generator and IDs are untouched, so the catalog ID cache stays valid.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch

from foundation_rec.checkpoint import read_config
from foundation_rec.content_prior import FILE, INFO, ScorerConfig, train_on_pool
from foundation_rec.pretrain import RunArguments, build_pool


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    config = read_config(args.checkpoint)
    run = RunArguments(**{k: v for k, v in config["run"].items() if k in RunArguments.__dataclass_fields__})
    seed = int(config["train"]["seed"])
    start = time.perf_counter()
    scorer = train_on_pool(build_pool(run, seed), ScorerConfig(epochs=args.epochs, seed=seed))
    folder = args.checkpoint / "recommender"
    staged = folder / ".scorer.tmp"
    staged.mkdir(exist_ok=True)
    scorer.save(staged)
    for name in (FILE, INFO):
        os.replace(staged / name, folder / name)
    staged.rmdir()
    print(json.dumps({"checkpoint": str(args.checkpoint), "seconds": round(time.perf_counter() - start, 1), **scorer.record}, indent=2))


if __name__ == "__main__":
    main()
