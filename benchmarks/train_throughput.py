"""Training throughput of each phase against a plain forward+backward loop of the same models on the same batches.

    python -m benchmarks.train_throughput [--preset minilm-t5] [--batches 8] [--users-per-corpus 20]

The models and the training settings are those of ``python -m foundation_rec.pretrain --preset PRESET`` (the preset's
recipe: objective, content vectors, batch sizes; ``auto`` is the shipped ``minilm-t5``), on ``--users-per-corpus``
seeded users per pool corpus and extractive keyword IDs. For the recommender phase and the ID-generator phase, the
trainer's own loop (prompt building, collation, soft-ID insertion, optimizer, logging) runs ``--batches`` steps; the
reference runs the same steps on batches built beforehand, with only the models' forward (content vectors included),
backward and AdamW step in the timed loop. Both are timed twice, interleaved, and the faster of each is kept. Target: the
trainer reaches at least 0.85 of the reference's samples/s. Peak memory is the process's peak RSS
(CPU) or ``torch.cuda.max_memory_allocated`` (GPU). Results: ``benchmarks/results/train_throughput.{json,md}``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import resource
import tempfile
import time

import numpy as np
import torch

from foundation_rec.backbones import resolve_device
from foundation_rec.idgen import IDTable, keyword_id
from foundation_rec.pretrain import build_models, build_pool
from foundation_rec.pretrain import parse_args as pretrain_args
from foundation_rec.train import Trainer

from .common import environment, write_table

TARGET = 0.85


def keyword_table(pool) -> IDTable:
    """Unique extractive IDs for the pool (no generation needed to time training steps)."""
    table, taken = IDTable(), set()
    for corpus in pool.corpora:
        ids = []
        for text in corpus.items.data.column("text").to_pylist():
            base = candidate = keyword_id(text) or "item"
            n = 1
            while candidate in taken:
                n += 1
                candidate = f"{base} {n}"
            taken.add(candidate)
            ids.append(candidate)
        table.add(corpus.name, ids, corpus.items.data.column("item_id").to_pylist(), "pool")
    return table


def peak_memory_mib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def timed_trainer(trainer: Trainer, kind: str, steps: int) -> tuple[float, int]:
    """Seconds for ``steps`` optimizer steps of the trainer's own loop for phase ``kind``, and the tokens it read."""
    trainer.config.max_steps, trainer.step, trainer.epoch, trainer.batch = steps, 0, 0, 0
    trainer.config.log_every = steps
    start = time.perf_counter()
    trainer.train_phase(kind, 0)
    seconds = time.perf_counter() - start
    with (trainer.output_dir / "metrics.jsonl").open() as fh:
        last = [line for line in fh if f'"phase": "{kind}"' in line][-1]
    tokens = int(json.loads(last)["tokens_per_s"] * seconds)
    return seconds, tokens


def prepared_batches(trainer: Trainer, kind: str, steps: int) -> list[tuple]:
    """The first ``steps`` batches of phase ``kind``'s first epoch, built as the trainer builds them, each with what
    its soft IDs need (items, texts, target IDs, positions): everything that is not a model computation."""
    phase = trainer.phase(kind)
    trainer.stage = trainer.epoch = 0
    order, templates = trainer.epoch_order(len(phase.examples))
    chunks = [c for c in (order[b * phase.batch_size : (b + 1) * phase.batch_size] for b in range(steps)) if len(c)]
    sequence = kind == "rec" and trainer.config.rec_objective == "sequence"
    eos, prepared = [trainer.rec.eos_token_id], []
    for chunk in chunks:
        batch = trainer.rec_batch(phase.examples, chunk, templates[chunk], sequence).to(trainer.dist.device)
        items = sorted({item for row in batch.spans for item, _ in row})
        slot = {item: k for k, item in enumerate(items)}
        rows = [(b, pos, slot[item], off) for b, row in enumerate(batch.spans) for item, (s, e) in row for off, pos in enumerate(range(s, e))]
        index = torch.tensor(rows, device=trainer.dist.device).T if rows else None
        prepared.append((batch, [trainer.texts[i] for i in items], [trainer.prompts.id_tokens[i] + eos for i in items], index))
    return prepared


def reference_loss(trainer: Trainer, kind: str, batch, texts, ids, index) -> torch.Tensor:
    """The phase's loss as a bare model computation: teacher forcing, with soft IDs in the ID phase."""
    if kind == "rec":
        return trainer.rec.loss(batch)
    table = trainer.rec.model.get_input_embeddings().weight.detach()
    probs = trainer.gen.token_distributions(texts, ids)
    vocab = min(table.shape[0], probs.shape[-1])
    soft = probs[..., :vocab].to(table.dtype) @ table[:vocab]
    embeds = trainer.rec.input_embeddings(batch.input_ids).detach()
    if index is not None:
        embeds = embeds.index_put((index[0], index[1]), soft[index[2], index[3]])
    return trainer.rec.loss_from_embeds(embeds, batch)


def reference(trainer: Trainer, kind: str, steps: int) -> float:
    """Seconds for the same ``steps`` batches, prepared beforehand, through a bare forward/backward/step loop."""
    phase = trainer.phase(kind)
    prepared = prepared_batches(trainer, kind, steps)
    params = [p for p in phase.module.parameters() if p.requires_grad]
    frozen = trainer.gen_model if kind == "rec" else trainer.rec.modules
    flags = [(p, p.requires_grad) for p in frozen.parameters()]
    for p, _ in flags:
        p.requires_grad_(False)
    optimizer = torch.optim.AdamW(params, lr=phase.lr)
    start = time.perf_counter()
    for batch, texts, ids, index in prepared:
        reference_loss(trainer, kind, batch, texts, ids, index).backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    seconds = time.perf_counter() - start
    for p, flag in flags:
        p.requires_grad_(flag)
    return seconds


def build_trainer(args, out: str) -> tuple[Trainer, str]:
    """The preset's models and recipe as ``pretrain`` builds them, on keyword IDs, with no warm-up and no checkpoints."""
    flags = ["--preset", args.preset, "--corpora", args.corpora, "--users-per-corpus", str(args.users_per_corpus), "--device", args.device,
             "--progress", "false", *(["--data-dir", args.data_dir] if args.data_dir else [])]
    run, train, preset = pretrain_args(flags)
    train = dataclasses.replace(train, checkpoint_every=10**9, warmup_epochs=0)
    pool = build_pool(run, seed=0)
    bundle = build_models(run, preset, resolve_device(run.device), pool, 0, None)
    trainer = Trainer(train, pool, bundle, out, run_config={}, progress=False)
    trainer.set_ids(keyword_table(pool))
    return trainer, preset


def measure(trainer: Trainer, kind: str, batches: int, device: torch.device) -> dict:
    """The trainer's samples/s against the reference's for phase ``kind`` (each timed twice, interleaved, the faster kept)."""
    batch_size = trainer.config.rec_batch_size if kind == "rec" else trainer.config.id_batch_size
    timed_trainer(trainer, kind, 1)  # warm-up step (allocator, kernels)
    ours, ref, tokens = [], [], 0
    for _ in range(2):
        seconds, tokens = timed_trainer(trainer, kind, batches)
        ours.append(seconds)
        ref.append(reference(trainer, kind, batches))
    samples = batches * batch_size
    row = {"phase": kind, "batch_size": batch_size, "batches": batches, "trainer_samples_per_s": samples / min(ours),
           "reference_samples_per_s": samples / min(ref), "trainer_tokens_per_s": tokens / min(ours), "peak_memory_mib": peak_memory_mib(device)}
    row["ratio"] = row["trainer_samples_per_s"] / row["reference_samples_per_s"]
    print(row)
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="auto", help="pretrain's --preset (auto: minilm-t5, the shipped recipe)")
    parser.add_argument("--corpora", default="all", help="pretrain's --corpora")
    parser.add_argument("--users-per-corpus", type=int, default=20)
    parser.add_argument("--batches", type=int, default=8)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--data-dir", default=None, help="data directory (default: the package's search order)")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as out:
        trainer, preset = build_trainer(args, out)
        rows = [measure(trainer, kind, args.batches, trainer.dist.device) for kind in ("rec", "id")]
    payload = {
        **environment(),
        "preset": preset,
        "corpora": args.corpora,
        "users_per_corpus": args.users_per_corpus,
        "items": trainer.pool.num_items,
        "mean_prompt_tokens": float(np.mean([len(trainer.prompts.build(trainer.train_examples.history(i)).tokens) for i in range(len(trainer.train_examples))])),
        "target_ratio": TARGET,
        "results": rows,
    }
    title = f"Training throughput, preset `{preset}`, {payload['cpu']} ({payload['torch_threads']} threads), torch {payload['torch']}"
    note = f"Command: `{payload['command']}`; {trainer.pool.num_items:,} items, mean prompt {payload['mean_prompt_tokens']:.0f} tokens."
    header = ["phase", "batch", "trainer samples/s", "reference samples/s", "ratio (target >= 0.85)", "trainer tokens/s", "peak memory MiB"]
    cells = [
        [r["phase"], r["batch_size"], f"{r['trainer_samples_per_s']:.2f}", f"{r['reference_samples_per_s']:.2f}", f"{r['ratio']:.2f}"]
        + [f"{r['trainer_tokens_per_s']:.0f}", f"{r['peak_memory_mib']:.0f}"]
        for r in rows
    ]
    write_table("train_throughput", payload, title, note, header, cells)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
