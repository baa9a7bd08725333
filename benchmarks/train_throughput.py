"""Training throughput of each phase against a plain forward+backward loop of the same models on the same batches.

    python benchmarks/train_throughput.py [--preset t5-cpu] [--batches 8] [--users-per-corpus 20]

For the recommender phase and the ID-generator phase, the trainer's own loop (prompt building,
collation, soft-ID insertion, optimizer, logging) runs ``--batches`` steps; the reference runs the
same steps on batches built beforehand, with only the models' forward, backward and AdamW step
in the timed loop. Both are timed twice, interleaved, and the faster of each is kept. Target: the
trainer reaches at least 0.85 of the reference's samples/s. Peak memory is the process's peak RSS
(CPU) or ``torch.cuda.max_memory_allocated`` (GPU). Results: ``benchmarks/results/train_throughput.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import environment, write_table

from foundation_rec.idgen import IDTable, keyword_id
from foundation_rec.pretrain import RunArguments, build_models, build_pool
from foundation_rec.train import TrainConfig, Trainer

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


def reference(trainer: Trainer, kind: str, steps: int) -> float:
    """Seconds for the same ``steps`` batches, prepared beforehand, through a bare forward/backward/step loop."""
    phase = trainer.phase(kind)
    module, examples, batch_size, lr = phase.module, phase.examples, phase.batch_size, phase.lr
    trainer.stage = trainer.epoch = 0
    order, templates = trainer.epoch_order(len(examples))
    chunks = [order[b * batch_size : (b + 1) * batch_size] for b in range(steps)]
    batches = [trainer.rec_batch(examples, c, templates[c]).to(trainer.dist.device) for c in chunks]
    params = [p for p in module.parameters() if p.requires_grad]
    frozen = trainer.gen_model if kind == "rec" else trainer.rec.model
    flags = [(p, p.requires_grad) for p in frozen.parameters()]
    for p, _ in flags:
        p.requires_grad_(False)
    optimizer = torch.optim.AdamW(params, lr=lr)
    eos = [trainer.rec.eos_token_id]
    prepared = []
    for batch in batches:  # everything that is not a model computation happens here, untimed
        items = sorted({item for row in batch.spans for item, _ in row})
        slot = {item: k for k, item in enumerate(items)}
        rows = [(b, pos, slot[item], off) for b, row in enumerate(batch.spans) for item, (s, e) in row for off, pos in enumerate(range(s, e))]
        index = torch.tensor(rows, device=trainer.dist.device).T if rows else None
        texts = [trainer.texts[i] for i in items]
        prepared.append((batch, texts, [trainer.prompts.id_tokens[i] + eos for i in items], index))
    start = time.perf_counter()
    for batch, texts, ids, index in prepared:
        if kind == "rec":
            loss = trainer.rec.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, labels=batch.labels).loss
        else:
            table = trainer.rec.model.get_input_embeddings().weight.detach()
            soft = trainer.gen.token_distributions(texts, ids)[..., : table.shape[0]] @ table
            embeds = trainer.rec.input_embeddings(batch.input_ids).detach().index_put((index[0], index[1]), soft[index[2], index[3]])
            loss = trainer.rec.model(inputs_embeds=embeds, attention_mask=batch.attention_mask, labels=batch.labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    seconds = time.perf_counter() - start
    for p, flag in flags:
        p.requires_grad_(flag)
    return seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="t5-cpu")
    parser.add_argument("--corpora", default="all")
    parser.add_argument("--users-per-corpus", type=int, default=20)
    parser.add_argument("--batches", type=int, default=8)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    run = RunArguments(corpora=args.corpora, preset=args.preset, users_per_corpus=args.users_per_corpus, device=args.device, id_input_tokens=64)
    pool = build_pool(run, seed=0)
    from foundation_rec.backbones import resolve_device

    device = resolve_device(args.device)
    bundle = build_models(run, args.preset, device, pool, 0, None)
    config = TrainConfig(rec_batch_size=16, id_batch_size=8, checkpoint_every=10**9, id_examples="last", warmup_epochs=0)
    out = Path(tempfile.mkdtemp())
    trainer = Trainer(config, pool, bundle, out, run_config={}, progress=False)
    trainer.set_ids(keyword_table(pool))
    rows = []
    for kind, batch_size in (("rec", config.rec_batch_size), ("id", config.id_batch_size)):
        timed_trainer(trainer, kind, 1)  # warm-up step (allocator, kernels)
        ours, ref, tokens = [], [], 0
        for _ in range(2):
            seconds, tokens = timed_trainer(trainer, kind, args.batches)
            ours.append(seconds)
            ref.append(reference(trainer, kind, args.batches))
        samples = args.batches * batch_size
        row = {
            "phase": kind,
            "batch_size": batch_size,
            "batches": args.batches,
            "trainer_samples_per_s": samples / min(ours),
            "reference_samples_per_s": samples / min(ref),
            "trainer_tokens_per_s": tokens / min(ours),
            "peak_memory_mib": peak_memory_mib(device),
        }
        row["ratio"] = row["trainer_samples_per_s"] / row["reference_samples_per_s"]
        rows.append(row)
        print(row)
    payload = {
        **environment(),
        "preset": args.preset,
        "corpora": args.corpora,
        "users_per_corpus": args.users_per_corpus,
        "items": pool.num_items,
        "mean_prompt_tokens": float(np.mean([len(trainer.prompts.build(trainer.train_examples.history(i)).tokens) for i in range(len(trainer.train_examples))])),
        "target_ratio": TARGET,
        "results": rows,
    }
    title = f"Training throughput, preset `{args.preset}`, {payload['cpu']} ({payload['torch_threads']} threads), torch {payload['torch']}"
    note = f"Command: `{payload['command']}`; {pool.num_items:,} items, mean prompt {payload['mean_prompt_tokens']:.0f} tokens."
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
