"""ID generation: throughput, uniqueness and length over the pre-training pool and a target, and cold IDs of whole catalogs.

    python -m benchmarks.ids pool --preset minilm-t5 --sample 2000 --threads 2      # results/ids.{json,md}
    python -m benchmarks.ids pool --preset smollm2-135m --sample 200 --threads 2
    python -m benchmarks.ids catalog --checkpoint runs/pretrain/best --targets yelp --threads 2   # results/catalog_ids.{json,md}

``pool``: the generator is built and warmed up exactly as ``python -m foundation_rec.pretrain --preset PRESET`` builds
and warms it (the preset's recipe: the pool's seeded users, the generator's ID settings, the trainer's own keyword
warm-up phase, timed separately; a prompted preset such as ``smollm2-135m`` has none), then names ``--sample`` items of
that pool and of ``--target`` with :func:`foundation_rec.idgen.build_table` (Algorithm 1, unique over the whole pool,
then unique within the target), timed per catalog. Each run is stored under its preset in ``results/ids.json``;
``results/ids.md`` tabulates every stored run.

``catalog``: a checkpoint's generator names every item of each target from nothing (``IDGenerator.assign``, no cache),
in fp32 (what ``index_catalog`` does by default) and in int8 (``precision="int8"``, int8.py: what the demo does on a
CPU; ``--skip-int8`` leaves it out), on the same items in the same process. Reported per setting: seconds, items/s,
speed-up over fp32, rounds (items per round), fallbacks, uniqueness, mean ID words and the share of items that get the
same ID as in fp32. A target is a corpus name or a bring-your-own folder. Whether int8 pays depends on the CPU, so
every row records the CPU and its int8-relevant flags (``int8.cpu_features``: AVX-512 VNNI, AVX2, AMX, ...) beside
its timing, and the file records what ``--id-precision auto`` chooses on this machine (``int8.choose``, timed afresh).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import random
import tempfile
import time

import torch

from foundation_rec import int8
from foundation_rec.backbones import resolve_device
from foundation_rec.corpora import load_corpus
from foundation_rec.errors import cli_errors
from foundation_rec.idgen import IDGenerator, IDTable, build_table, id_report
from foundation_rec.pretrain import build_models, build_pool
from foundation_rec.pretrain import parse_args as pretrain_args
from foundation_rec.train import Trainer

from .common import environment, provenance, results_dir, write_results, write_table


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    modes = parser.add_subparsers(dest="mode", required=True)
    pool = modes.add_parser("pool", help="the pool and a target, with a preset's generator as pretrain builds it")
    pool.add_argument("--preset", default="auto", help="pretrain's --preset (auto: minilm-t5, the shipped recipe)")
    pool.add_argument("--corpora", default="all", help="pretrain's --corpora: the pool")
    pool.add_argument("--sample", type=int, default=0, help="items drawn (seeded) from the pool and from the target; 0 = all")
    pool.add_argument("--target", default="yelp", help="target catalog: a name or a bring-your-own folder")
    pool.add_argument("--device", default="auto", help="cpu, cuda or auto")
    pool.add_argument("--warmup-items", type=int, default=None, help="pool items of the keyword warm-up (default: the recipe's)")
    catalog = modes.add_parser("catalog", help="cold IDs of whole catalogs with a checkpoint's generator, fp32 and int8")
    catalog.add_argument("--checkpoint", default="runs/pretrain/best", help="checkpoint directory (its generator/ is used)")
    catalog.add_argument("--targets", default="yelp", help="comma list of catalogs: names or bring-your-own folders")
    catalog.add_argument("--skip-int8", action="store_true", help="leave out int8 generation")
    for mode in (pool, catalog):
        mode.add_argument("--data-dir", default=None, help="data directory (default: the package's search order)")
        mode.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    return parser.parse_args(argv)


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
            counts = rounds.setdefault((r["penalty"], r["min_tokens"], r["max_tokens"]), [0, 0])
            counts[0] += r["items"]
            counts[1] += r["resolved"]
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


def trainer_warmup(trainer: Trainer) -> str:
    """The keyword warm-up exactly as ``pretrain`` runs it (``Trainer.train_phase("warmup")``: a seeded sample of the
    recipe's warm-up items, keyword targets, AdamW with its schedule and clip)."""
    start = time.perf_counter()
    trainer.train_phase("warmup", 0)
    seconds = time.perf_counter() - start
    losses = [json.loads(line)["loss"] for line in (trainer.output_dir / "metrics.jsonl").read_text().splitlines()]
    items, epochs = len(trainer.keyword_targets().items), trainer.config.warmup_epochs
    return f"{items:,} items x {epochs} epoch(s) in {seconds:.1f} s (the trainer's warm-up), loss {losses[0]:.2f} -> {losses[-1]:.2f}"


def pool_run(args) -> None:
    """``pool``: build and warm up the preset's generator as pretrain does, then name the sampled pool and target items."""
    flags = ["--preset", args.preset, "--corpora", args.corpora, "--device", args.device, "--progress", "false",
             *(["--data-dir", args.data_dir] if args.data_dir else []), *(["--warmup-items", str(args.warmup_items)] if args.warmup_items is not None else [])]
    run, train, preset = pretrain_args(flags)
    start = time.perf_counter()
    pool = build_pool(run, train.seed)
    bundle = build_models(run, preset, resolve_device(run.device), pool, train.seed, None)
    generator = bundle.generator
    record = {"environment": environment(), "preset": preset, "device": str(generator.backbone.device), "threads": torch.get_num_threads(),
              "load_seconds": round(time.perf_counter() - start, 2), "config": dataclasses.asdict(generator.config)}
    if train.warmup_epochs:
        with tempfile.TemporaryDirectory() as out:
            record["warmup"] = trainer_warmup(Trainer(train, pool, bundle, out, run_config={}, progress=False))
    target = sample_rows([load_corpus(args.target, args.data_dir)], args.sample)
    sampled = sample_rows(pool.corpora, args.sample)
    start = time.perf_counter()
    table = build_table(generator, sampled, progress=False)
    record["pool"] = summary(table, sampled, generator.tokenizer, time.perf_counter() - start)
    start = time.perf_counter()
    table = build_table(generator, target, table=table, progress=False)
    record["target"] = summary(table, target, generator.tokenizer, time.perf_counter() - start)
    for name in ("pool", "target"):
        print(json.dumps({name: {k: v for k, v in record[name].items() if k not in ("rounds", "examples", "words_hist", "tokens_hist")}}))
    path = results_dir() / "ids.json"
    runs = json.loads(path.read_text(encoding="utf-8"))["runs"] if path.is_file() else {}
    runs[preset] = record
    write_results("ids", {"runs": runs}, markdown(runs))


def generate(generator: IDGenerator, texts: list[str], precision: str) -> dict:
    """Every item's ID from nothing at ``precision``, timed, with the statistics the catalog table reports."""
    generator.config = dataclasses.replace(generator.config, precision=precision)
    start = time.perf_counter()
    result = generator.assign(texts, set(), progress=False)
    seconds = time.perf_counter() - start
    return {"precision": precision, "seconds": round(seconds, 2), "items_per_s": round(len(texts) / seconds, 1),
            "fallbacks": result.fallbacks, "rounds": [r["items"] for r in result.rounds], "unique_pct": round(100 * len(set(result.ids)) / len(texts), 3),
            "words_mean": round(sum(len(i.split()) for i in result.ids) / len(texts), 3), "ids": result.ids}


def catalog_run(args) -> None:
    """``catalog``: cold IDs of each target's whole catalog with the checkpoint's generator, fp32 then int8."""
    generator = IDGenerator.load(f"{args.checkpoint}/generator", device="cpu")
    generator.backbone.hf_model.train(False)
    precisions = ["fp32"] + ([] if args.skip_int8 else ["int8"])
    cpu = int8.cpu_features()
    auto = int8.choose(generator.backbone.hf_model, generator.config.batch_size * generator.config.num_beams, refresh=True)
    payload, rows = {"checkpoint": args.checkpoint, "cpu": cpu, "auto": auto, "results": []}, []
    for spec in args.targets.split(","):
        corpus = load_corpus(spec, args.data_dir)
        texts = corpus.items.data.column("text").to_pylist()
        runs = [generate(generator, texts, precision) for precision in precisions]
        for run in runs:
            same = sum(a == b for a, b in zip(runs[0]["ids"], run["ids"], strict=True)) / len(texts)
            rows.append([corpus.name, f"{len(texts):,}", run["precision"], run["seconds"], run["items_per_s"], f"{runs[0]['seconds'] / run['seconds']:.2f}x",
                         " / ".join(map(str, run["rounds"][:4])) + (" ..." if len(run["rounds"]) > 4 else ""),
                         run["fallbacks"], run["unique_pct"], run["words_mean"], f"{100 * same:.1f}%"])
            payload["results"].append({"target": corpus.name, "items": len(texts), "same_ids_share": round(same, 4), **{k: v for k, v in run.items() if k != "ids"},
                                       "cpu": cpu["cpu"], "cpu_flags": cpu["flags"]})
        payload["environment"] = environment()
        write_table("catalog_ids", payload, "# Cold ID generation of whole catalogs", provenance(payload["environment"]) +
                    f" Checkpoint `{args.checkpoint}`; nothing cached. Speed-up: the fp32 row's seconds (what `index_catalog` does by default) "
                    "over this row's; same IDs: share of items given the same ID as in fp32. "
                    f"CPU flags that decide int8's speed, present on this CPU: {', '.join(cpu['flags']) or 'none'}; `--id-precision auto` "
                    f"chooses {auto['precision']} ({int8.describe(auto)}).",
                    ["target", "items", "precision", "seconds", "items/s", "speed-up", "items per round", "fallbacks", "unique %",
                     "words (mean)", "same IDs"], rows)
        print(rows[-len(runs):], flush=True)


@cli_errors
def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    (pool_run if args.mode == "pool" else catalog_run)(args)


if __name__ == "__main__":
    main()
