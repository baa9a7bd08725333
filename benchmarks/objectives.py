"""Training targets per second of the recommender objectives, on the same users, in one run.

    python benchmarks/objectives.py [--corpora amazon2014-beauty] [--users-per-corpus 2000] [--batches 20]

Three recommenders train ``--batches`` steps of 16 examples with the trainer's own loop, on the same
pool and the same extractive keyword IDs:

* ``t5-cpu``, objective ``next`` (the CPU default): one target per example (a training prefix);
* ``causal-cpu``, objective ``next``: the same examples, decoder-only;
* ``causal-cpu``, objective ``sequence``: one example is a window of up to 20 items of a user's
  sequence, and every item of it after the first is a target.

A *target* is one training item whose ID the loss teaches; an epoch of either objective covers each
training target once. Each configuration is timed twice and the faster is kept; the ratio is against
``t5-cpu``/``next`` measured in the same run. Results: ``benchmarks/results/objectives.{json,md}``.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import environment, write_table
from train_throughput import keyword_table, timed_trainer

from foundation_rec.backbones import BackboneConfig, load_backbone
from foundation_rec.bundle import ModelBundle
from foundation_rec.idgen import IDGenConfig, IDGenerator
from foundation_rec.pretrain import RunArguments, build_pool
from foundation_rec.train import TrainConfig, Trainer

CONFIGS = (("t5-cpu", "next"), ("causal-cpu", "next"), ("causal-cpu", "sequence"))
COLUMNS = {  # markdown column: cell format
    "recommender": "{recommender}",
    "objective": "{objective}",
    "examples per epoch": "{examples_per_epoch:,}",
    "targets per step": "{targets_per_step:.1f}",
    "s per step": "{seconds_per_step:.3f}",
    "targets/s": "{targets_per_s:.1f}",
    "ratio vs t5-cpu next": "{ratio:.2f}",
}


def targets_per_step(trainer: Trainer, steps: int) -> float:
    """Mean targets in the first ``steps`` batches of the recommender phase (the batches the timed loop runs)."""
    phase = trainer.phase("rec")
    examples, batch_size = phase.examples, phase.batch_size
    trainer.stage = trainer.epoch = 0
    order, _ = trainer.epoch_order(len(examples))
    chosen = order[: steps * batch_size]
    if trainer.config.rec_objective == "next":
        return len(chosen) / steps
    return sum(len(trainer.prompts.build(examples.history(i)).items) for i in chosen) / steps


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpora", default="amazon2014-beauty")
    parser.add_argument("--users-per-corpus", type=int, default=2000)
    parser.add_argument("--batches", type=int, default=20)
    parser.add_argument("--data-dir", default=None)
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    pool = build_pool(RunArguments(corpora=args.corpora, users_per_corpus=args.users_per_corpus, data_dir=args.data_dir), seed=0)
    texts = pool.texts()
    generator = IDGenerator(load_backbone(BackboneConfig(preset="t5-cpu", device="cpu", seed=1), tokenizer_texts=texts), IDGenConfig())
    table = keyword_table(pool)
    rows = []
    for preset, objective in CONFIGS:
        backbone = load_backbone(BackboneConfig(preset=preset, device="cpu", seed=0), tokenizer_texts=texts)
        config = TrainConfig(rec_objective=objective, rec_batch_size=16, checkpoint_every=10**9, warmup_epochs=0)
        trainer = Trainer(config, pool, ModelBundle(backbone, generator), Path(tempfile.mkdtemp()), run_config={}, progress=False)
        trainer.set_ids(table)
        timed_trainer(trainer, "rec", 1)  # warm-up step (allocator, kernels)
        seconds = min(timed_trainer(trainer, "rec", args.batches)[0] for _ in range(2))
        targets = targets_per_step(trainer, args.batches) * args.batches
        examples = trainer.phase("rec").examples
        rows.append({
            "recommender": preset,
            "objective": objective,
            "examples_per_epoch": len(examples),
            "targets_per_step": targets / args.batches,
            "seconds_per_step": seconds / args.batches,
            "targets_per_s": targets / seconds,
        })
        print(rows[-1])
    for row in rows:
        row["ratio"] = row["targets_per_s"] / rows[0]["targets_per_s"]
    payload = {**environment(), "corpora": args.corpora, "users_per_corpus": args.users_per_corpus, "items": pool.num_items, "results": rows}
    title = f"Recommender objectives, {payload['cpu']} ({payload['torch_threads']} threads), torch {payload['torch']}"
    note = f"Command: `{payload['command']}`; {args.corpora}, {args.users_per_corpus} users, {pool.num_items:,} items, batches of 16 examples."
    write_table("objectives", payload, title, note, list(COLUMNS), [[cell.format(**r) for cell in COLUMNS.values()] for r in rows])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
