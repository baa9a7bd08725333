"""Time and peak memory of a cold and a warm build of the unified corpus (all 15 corpora).

Each measurement runs in a fresh Python process, so imports and peak RSS are counted honestly:
``cold`` starts from an empty cache directory, ``warm`` loads the cache the cold run left.
Targets: cold under 120 s, warm under 5 s, on the 2-core development machine.

    python -m benchmarks.corpus_build [--corpora everything] [--data-dir DIR]

``--corpora`` takes what ``--corpora`` takes everywhere: a name, a comma list, ``all``, ``targets``, ``everything`` or a
bring-your-own folder.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

from .common import environment, write_results

CHILD = r"""
import json, resource, sys, time
start = time.perf_counter()
from foundation_rec.corpora import load_corpora
corpora = load_corpora(sys.argv[1], sys.argv[2] or None)
rows = sum(len(c.items) + len(c.sequences) for c in corpora)
print(json.dumps({"seconds": round(time.perf_counter() - start, 2), "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
                  "corpora": len(corpora), "rows": rows}))
"""


def measure(spec: str, data_dir: str, cache: str) -> dict:
    env = {**os.environ, "FOUNDATION_REC_CACHE": cache}
    out = subprocess.run([sys.executable, "-c", CHILD, spec, data_dir], env=env, check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpora", default="everything", help="what to build (default: all 15 corpora)")
    parser.add_argument("--data-dir", default="", help="data directory (default: the package's search order)")
    parser.add_argument("--repeats", type=int, default=2, help="cold/warm pairs to run; the fastest of each phase is reported")
    args = parser.parse_args(argv)
    runs = []
    for _ in range(args.repeats):
        with tempfile.TemporaryDirectory() as cache:
            cold = measure(args.corpora, args.data_dir, cache)
            warm = measure(args.corpora, args.data_dir, cache)
        runs.append({"cold": cold, "warm": warm})
        print(json.dumps(runs[-1]))
    best = {phase: min((r[phase] for r in runs), key=lambda m: m["seconds"]) for phase in ("cold", "warm")}
    payload = {"environment": environment(), "corpora": args.corpora, "runs": runs, "best": best,
               "targets": {"cold_seconds": 120, "warm_seconds": 5}}
    md = [
        "# Corpus build benchmark",
        "",
        (
            f"`{payload['environment']['command']}` on {payload['environment']['cpu']} ({payload['environment']['cpu_count']} cores), "
            f"{payload['environment']['date']}; {best['cold']['corpora']} corpora, {best['cold']['rows']:,} item + user rows."
        ),
        "",
        f"| phase | seconds (best of {args.repeats}) | target | peak RSS (MiB) |",
        "|---|---|---|---|",
        f"| cold build (empty cache) | {best['cold']['seconds']} | < 120 | {best['cold']['peak_rss_mib']} |",
        f"| warm load (cached Arrow) | {best['warm']['seconds']} | < 5 | {best['warm']['peak_rss_mib']} |",
        "",
        "Each phase runs in a fresh process and includes the package imports.",
    ]
    write_results("corpus_build", payload, "\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
