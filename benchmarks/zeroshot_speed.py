"""Speed of the zero-shot command on a whole target: ``python -m foundation_rec.zeroshot --target yelp`` on every test user.

    python -m benchmarks.zeroshot_speed --target yelp                       # every test user (30,431 on Yelp), cold cache
    python -m benchmarks.zeroshot_speed --target yelp --max-users 2000      # a sample, to see the rate quickly
    python -m benchmarks.zeroshot_speed --target ./my-shop -- --protocol strict   # a bring-your-own folder, more zeroshot flags

Runs the command as a user would (a subprocess, the README's checkpoint, the default protocols and methods) with an
empty cache, so the catalog's text vectors and IDs are computed inside the measured time. Reports the wall time of
the whole command, the indexing time (text vectors, IDs, trie) and each ranking pass, and users per second.
Writes ``results/zeroshot_speed.{json,md}``; one row per (target, users, command, checkpoint build), a rerun replaces its row.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .common import environment, provenance, results_dir, write_results


def measure(args) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        command = [sys.executable, "-m", "foundation_rec.zeroshot", "--target", args.target, "--checkpoint", args.checkpoint, "--out", tmp,
                   "--progress", "false", *(["--max-users", str(args.max_users)] if args.max_users else []), *args.extra]
        start = time.perf_counter()
        subprocess.run(command, check=True, env={**os.environ, "FOUNDATION_REC_CACHE": str(Path(tmp) / "cache"),
                                                  "OMP_NUM_THREADS": str(args.threads)})
        wall = time.perf_counter() - start
        results = json.loads((Path(tmp) / f"{Path(args.target).name}.json").read_text())["results"]  # zeroshot's file: the folder's name
    label = lambda r: f"{r['method']} ({'excluded' if r['exclude_history'] else 'kept'})"
    users = results[0]["users_evaluated"]
    index = results[0]["index_seconds"]
    return {"target": args.target, "users": users, "users_total": results[0]["users_total"], "catalog": results[0]["catalog_size"],
            "command": "python -m foundation_rec.zeroshot " + " ".join(command[3:]).replace(tmp, "<tmp>"), "wall_seconds": round(wall, 1), "index_seconds": index,
            "ranking_seconds": {label(r): r["seconds"] for r in results}, "users_per_second": round(users / max(wall - index, 1e-9), 2),
            "N@10": {label(r): r["metrics"]["N@10"] for r in results}}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", default="yelp", help="one target: a corpus name or a bring-your-own folder")
    parser.add_argument("--checkpoint", default="runs/pretrain/best")
    parser.add_argument("--max-users", type=int, default=0, help="0: every test user")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("extra", nargs="*", help="more zeroshot flags, after --")
    args = parser.parse_args(argv)
    row, env = measure(args), environment()
    row["date"] = env["date"][:10]
    built = Path(args.checkpoint) / "foundation_rec.json"
    row["checkpoint_built"] = time.strftime("%Y-%m-%d %H:%M", time.gmtime(built.stat().st_mtime)) if built.is_file() else ""
    file = results_dir() / "zeroshot_speed.json"
    rows = json.loads(file.read_text())["rows"] if file.is_file() else []
    key = lambda r: (r["target"], r["users"], r["command"], r.get("checkpoint_built"))
    rows = [r for r in rows if key(r) != key(row)] + [row]
    payload = {"environment": env, "rows": rows}
    lines = ["| date | checkpoint built | target | users | catalog | whole command (min) | indexing (s) | users/s (all ranking passes) | ranking passes | N@10 | command |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r.get('date', '')} | {r.get('checkpoint_built', '')} | {r['target']} | {r['users']:,} of {r['users_total']:,} | {r['catalog']:,} | {r['wall_seconds'] / 60:.1f} | {r['index_seconds']:.0f} | "
              f"{r['users_per_second']:.1f} | {len(r['N@10'])} | {', '.join(f'{k} {v:.4f}' for k, v in r['N@10'].items())} | `{r['command']}` |" for r in rows]
    write_results("zeroshot_speed", payload, "# Zero-shot speed on a whole target\n\n" + provenance(payload["environment"]) + "\n\n" + "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
