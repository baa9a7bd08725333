"""ID generation throughput, uniqueness and length: the whole Amazon pre-training pool and one target catalog.

For a from-scratch preset (``tiny``, ``t5-cpu``) the tokenizer is counted from the pool's texts, the
generator runs in extractive mode (IDs from each item's own words, as ``pretrain`` sets it) and is
first warmed up on extractive keyword IDs by the trainer's own warm-up phase (timed separately); ``smollm2-135m`` is prompted as is. IDs are then generated with :func:`foundation_rec.idgen.build_table` (Algorithm 1, unique over
the whole pool, then unique within the target), timed per catalog. Each run is stored under its preset
in ``results/ids.json``; ``results/ids.md`` tabulates every stored run.

    python benchmarks/ids.py --preset tiny --sample 2000 --threads 1
    python benchmarks/ids.py --preset t5-cpu --sample 2000 --threads 1
    python benchmarks/ids.py --preset smollm2-135m --sample 200 --threads 1
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import random
import tempfile
import time
from pathlib import Path

import torch
from common import RESULTS, environment, write_results

from foundation_rec.backbones import BackboneConfig, load_backbone
from foundation_rec.bundle import ModelBundle, share_tokenizer
from foundation_rec.corpora import load_corpora, load_corpus
from foundation_rec.errors import cli_errors
from foundation_rec.idgen import IDGenConfig, IDGenerator, IDTable, build_table, id_report
from foundation_rec.pool import Pool
from foundation_rec.train import TrainConfig, Trainer

SCRATCH = ("tiny", "t5-cpu")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", choices=["tiny", "smollm2-135m", "t5-cpu"], default="tiny", help="ID generator backbone")
    parser.add_argument("--device", default="auto", help="cpu, cuda or auto")
    parser.add_argument("--sample", type=int, default=0, help="items drawn (seeded) from the pool and from the target; 0 = all")
    parser.add_argument("--target", default="yelp", help="target catalog")
    parser.add_argument("--data-dir", default=None, help="data directory (default: the package's search order)")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    parser.add_argument("--batch-size", type=int, default=64, help="items per forward pass")
    parser.add_argument("--input-tokens", type=int, default=IDGenConfig.max_input_tokens, help="item text is cut to this many tokens")
    parser.add_argument("--warmup-items", type=int, default=4096, help="pool items for the keyword warm-up (from-scratch presets)")
    parser.add_argument("--warmup-epochs", type=int, default=1, help="keyword warm-up epochs (from-scratch presets)")
    parser.add_argument("--warmup-lr", type=float, default=2e-3, help="keyword warm-up learning rate")
    return parser.parse_args()


def sample_rows(corpora, n: int, seed: int = 0) -> list:
    """The corpora restricted to ``n`` rows drawn uniformly (seeded) from all their items; all rows when ``n`` is 0."""
    sizes = [len(c.items) for c in corpora]
    if not n or n >= sum(sizes):
        return list(corpora)
    picked = sorted(random.Random(seed).sample(range(sum(sizes)), n))
    out, start = [], 0
    for corpus, size in zip(corpora, sizes, strict=True):
        rows = [p - start for p in picked if start <= p < start + size]
        start += size
        if rows:
            out.append(dataclasses.replace(corpus, items=corpus.items.select(rows)))
    return out


def summary(table: IDTable, corpora, tokenizer, seconds: float) -> dict:
    """Throughput and the :func:`id_report` statistics of ``corpora`` taken together."""
    merged = IDTable()
    merged.add("all", [i for c in corpora for i in table.ids[c.name]], [str(i) for i in range(sum(len(c.items) for c in corpora))], "all")
    stats = id_report(merged, {"all": [t for c in corpora for t in c.items["text"]]}, tokenizer)["corpora"]["all"]
    rounds: dict[tuple, list[int]] = {}
    for c in corpora:
        for r in table.generation[c.name]["rounds"]:
            rounds.setdefault((r["penalty"], r["min_tokens"], r["max_tokens"]), [0, 0])
            rounds[(r["penalty"], r["min_tokens"], r["max_tokens"])][0] += r["items"]
            rounds[(r["penalty"], r["min_tokens"], r["max_tokens"])][1] += r["resolved"]
    return {
        "corpora": [c.name for c in corpora],
        "seconds": round(seconds, 2),
        "items_per_s": round(stats["items"] / seconds, 2),
        **{k: stats[k] for k in ("items", "unique_pct", "words_mean", "words_hist", "tokens_mean", "tokens_max", "tokens_hist", "text_word_share")},
        "fallbacks": sum(table.generation[c.name]["fallbacks"] for c in corpora),
        "rounds": [{"penalty": k[0], "min_tokens": k[1], "max_tokens": k[2], "items": v[0], "resolved": v[1]} for k, v in rounds.items()],
        "examples": [[c.items[row]["title"], table.ids[c.name][row]] for c in corpora[:3] for row in range(min(3, len(c.items)))],
    }


def markdown(runs: dict) -> str:
    lines = [
        "# ID generation benchmark",
        "",
        "Algorithm 1 (diverse beam search, lambda escalation, then longer IDs, then the fallback) over the Amazon",
        "pre-training pool (IDs unique across the whole pool) and a target catalog (unique within it).",
        "",
        "| preset | catalog | items | seconds | items/s | unique % | words (mean) | tokens (mean / max) | ID words in item text | re-run items | fallbacks |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for preset, run in runs.items():
        for name in ("pool", "target"):
            r = run[name]
            rerun = sum(x["items"] for x in r["rounds"][1:])
            catalog = f"{name}: {r['corpora'][0]}" if name == "target" else f"pool ({len(r['corpora'])} corpora)"
            lines.append(
                f"| {preset} | {catalog} | {r['items']:,} | {r['seconds']} | {r['items_per_s']} | {r['unique_pct']} | {r['words_mean']} | "
                f"{r['tokens_mean']} / {r['tokens_max']} | {100 * r['text_word_share']:.1f}% | {rerun:,} | {r['fallbacks']} |"
            )
    lines += ["", "Re-run items: item generations after the first round (collisions re-generated with a raised lambda or a longer ID).", ""]
    for preset, run in runs.items():
        env = run["environment"]
        lines += [
            f"## {preset}",
            "",
            (
                f"`{env['command']}` on {env['cpu']} ({env['cpu_count']} cores, {run['threads']} torch threads, device {run['device']}), "
                f"{env['date']}; torch {env['torch']}, transformers {env['transformers']}."
            ),
            f"Load {run['load_seconds']} s" + (f"; keyword warm-up {run['warmup']}" if run.get("warmup") else "; no warm-up (prompted)") + ".",
            "",
            "| catalog | title | ID |",
            "|---|---|---|",
        ]
        for name in ("pool", "target"):
            lines += [f"| {name} | {title[:70]} | {textual_id} |" for title, textual_id in run[name]["examples"]]
        lines.append("")
    return "\n".join(lines)


def trainer_warmup(generator: IDGenerator, corpora, args) -> str:
    """The keyword warm-up exactly as ``pretrain`` runs it (``Trainer.train_phase("warmup")``: a seeded sample of
    ``--warmup-items`` pool items, keyword targets, AdamW with its schedule and clip), with a throw-away recommender."""
    config = TrainConfig(warmup_epochs=args.warmup_epochs, warmup_lr=args.warmup_lr, warmup_items=args.warmup_items, checkpoint_every=10**9)
    recommender = load_backbone(BackboneConfig(preset=args.preset, device=args.device), tokenizer_texts=[t for c in corpora for t in c.items["text"]])
    share_tokenizer(generator.backbone, recommender)
    with tempfile.TemporaryDirectory() as out:
        trainer = Trainer(config, Pool(list(corpora)), ModelBundle(recommender, generator), out, run_config={}, progress=True)
        start = time.perf_counter()
        trainer.train_phase("warmup", 0)
        seconds = time.perf_counter() - start
        losses = [json.loads(line)["loss"] for line in (Path(out) / "metrics.jsonl").read_text().splitlines()]
    items = min(args.warmup_items or 10**12, len(trainer.texts))
    return f"{items:,} items x {args.warmup_epochs} epoch(s) in {seconds:.1f} s (the trainer's warm-up), loss {losses[0]:.2f} -> {losses[-1]:.2f}"


@cli_errors
def main() -> None:
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    pool_all = load_corpora("all", args.data_dir)
    pool = sample_rows(pool_all, args.sample)
    target = sample_rows([load_corpus(args.target, args.data_dir)], args.sample)
    start = time.perf_counter()
    texts = [t for c in pool_all for t in c.items["text"]] if args.preset in SCRATCH else None
    backbone = load_backbone(BackboneConfig(preset=args.preset, device=args.device), tokenizer_texts=texts)
    # from-scratch presets generate extractively (IDs from the item's own words), as pretrain's auto setting does
    config = IDGenConfig(batch_size=args.batch_size, max_input_tokens=args.input_tokens, extractive=args.preset in SCRATCH)
    generator = IDGenerator(backbone, config)
    run = {"environment": environment(), "preset": args.preset, "device": str(backbone.device), "threads": torch.get_num_threads()}
    run["load_seconds"] = round(time.perf_counter() - start, 2)
    run["config"] = dataclasses.asdict(generator.config)
    if args.preset in SCRATCH and args.warmup_epochs:
        run["warmup"] = trainer_warmup(generator, pool_all, args)
    start = time.perf_counter()
    table = build_table(generator, pool)
    run["pool"] = summary(table, pool, backbone.tokenizer, time.perf_counter() - start)
    start = time.perf_counter()
    table = build_table(generator, target, table=table)
    run["target"] = summary(table, target, backbone.tokenizer, time.perf_counter() - start)
    for name in ("pool", "target"):
        print(json.dumps({name: {k: v for k, v in run[name].items() if k not in ("rounds", "examples", "words_hist", "tokens_hist")}}))
    path = RESULTS / "ids.json"
    runs = json.loads(path.read_text(encoding="utf-8"))["runs"] if path.is_file() else {}
    runs[args.preset] = run
    write_results("ids", {"runs": runs}, markdown(runs))


if __name__ == "__main__":
    main()
