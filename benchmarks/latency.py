"""Recommendation latency for one user (p50/p95) and catalog indexing time per target, on CPU.

    python -m benchmarks.latency [--checkpoint runs/pretrain/best] [--users 50] [--threads 2] [--id-precision fp32|int8] [--targets ./my-shop]

For each target: index the catalog through the Python API (``FoundationRec.index_catalog``) and time
it. The first indexing of a catalog generates its IDs (Algorithm 1 over every item); later ones load
them from the cache. Both are reported: ``cold`` is the generation time this machine recorded in
the cache when the IDs were generated (in this run, or an earlier one such as
``python -m benchmarks.transfer``; the record says which), ``warm`` the time of a second indexing in this
run, with the IDs cached (trie build included), and ``first`` the whole first indexing of this
run (ID generation and MiniLM item vectors when they are not cached). With a fresh ``FOUNDATION_REC_CACHE`` every cold
figure is this run's. Then ``--users`` fixed-seed test users are recommended one at
a time (``FoundationRec.recommend(history, k=10)``, the demo's call) after one untimed warm-up call;
p50/p95/mean are over those calls.

Writes ``results/<--name>.{json,md}`` (``latency``; the int8 run of RESULTS.md is ``--id-precision int8 --name latency_int8``).
"""

from __future__ import annotations

import time

import numpy as np

from foundation_rec.api import FoundationRec
from foundation_rec.evaluate import examples

from .common import checkpoint_run, environment, provenance, write_results


def measure(model: FoundationRec, target: str, users: int, seed: int, data_dir) -> dict:
    start = time.perf_counter()
    model.index_catalog(target, data_dir=data_dir, progress=True)  # generates the IDs (and MiniLM vectors) when they are not cached
    first = time.perf_counter() - start
    start = time.perf_counter()
    catalog = model.index_catalog(target, data_dir=data_dir, progress=True)
    warm = time.perf_counter() - start
    record = model.catalog_id_record(catalog)
    ex = examples(catalog.corpus, "test", users, seed, 20)
    histories = [[catalog.item_ids[r] for r in h] for h in ex.histories]
    model.recommend(histories[0], k=10)  # warm-up call, not timed
    times = []
    for history in histories:
        t0 = time.perf_counter()
        model.recommend(history, k=10)
        times.append(time.perf_counter() - t0)
    ms = np.asarray(times) * 1000
    return {
        "target": target,
        "items": len(catalog.item_ids),
        "index_cold_seconds": record.get("seconds"),
        "index_cold_items_per_s": round(len(catalog.item_ids) / record["seconds"], 1) if record.get("seconds") else None,
        "index_cold_threads": record.get("torch_threads"),
        "index_first_seconds": round(first, 2),
        "index_warm_seconds": round(warm, 2),
        "id_precision": model.generator.config.precision,
        "users": len(times),
        "p50_ms": round(float(np.percentile(ms, 50)), 1),
        "p95_ms": round(float(np.percentile(ms, 95)), 1),
        "mean_ms": round(float(ms.mean()), 1),
        "mean_history": round(float(np.mean([len(h) for h in histories])), 1),
    }


def report(payload: dict) -> str:
    env = payload["environment"]
    rows = [
        f"| {r['target']} | {r['items']:,} | {r.get('id_precision', 'fp32')} | {r['index_cold_seconds']} | {r['index_cold_items_per_s']} | "
        f"{r.get('index_first_seconds', '')} | {r['index_warm_seconds']} | "
        f"{r['users']} | {r['mean_history']} | {r['p50_ms']} | {r['p95_ms']} | {r['mean_ms']} |"
        for r in payload["results"]
    ]
    return "\n".join([
        "# Latency: one user's top-10, and catalog indexing",
        "",
        (f"{provenance(env)} Checkpoint `{payload['checkpoint']}`, "
         f"{payload['num_beams']} beams, k = 10."),
        "",
        ("| target | items | ID precision | index cold (s) | cold items/s | first indexing in this run (s) | index warm (s) | users | mean history | "
         "p50 (ms) | p95 (ms) | mean (ms) |"),
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
        *rows,
        "",
        ("Cold: ID generation for the whole catalog as recorded in the cache when it ran (see the script's docstring); "
         "first indexing: this run's first `index_catalog` call (with a fresh cache: IDs, MiniLM item vectors and trie); "
         "warm: indexing with cached IDs, trie included."),
    ]) + "\n"


def main(argv: list[str] | None = None) -> None:
    extra = lambda parser: parser.add_argument("--name", default="latency", help="write results/<NAME>.{json,md}")
    args, model = checkpoint_run(__doc__, "--users", 50, extra=extra, argv=argv)
    payload = {"checkpoint": args.checkpoint, "num_beams": args.num_beams, "results": []}
    for target in args.targets.split(","):
        payload["results"].append(measure(model, target, args.users, args.seed, args.data_dir))
        payload["environment"] = environment()
        write_results(args.name, payload, report(payload))
        print(payload["results"][-1], flush=True)


if __name__ == "__main__":
    main()
