"""In-domain IDGenRec on Amazon Beauty and Toys: train on one corpus, test on its held-out last items.

    python -m benchmarks.indomain [--corpora amazon2014-beauty,amazon2014-toys] [--users-per-corpus 2000]
                                  [--max-users 2000] [--runs runs/indomain] [--skip-training]
                                  [--pretrain-args "--id-epochs 0"] [--baselines all] [--name indomain]

For each corpus it runs the two commands a user would run:

1. ``python -m foundation_rec.pretrain --corpora NAME --users-per-corpus U --output-dir RUNS/NAME``
   (the CPU preset's recipe, on a seeded sample of U users of that corpus and their items, plus
   any ``--pretrain-args``);
2. the evaluation of ``python -m foundation_rec.zeroshot --target NAME --allow-seen-platform
   --max-users N --baselines all``: IDs for the whole catalog from the trained generator, its trie,
   constrained beam search for a fixed-seed sample of N test users, and random, popularity, text-kNN
   and SASRec (trained on the whole corpus until its validation score stops improving: about 30 min
   a corpus on 2 CPU cores) on the same users.

Protocol: leave-one-out (train targets s[1..n-3], valid s[n-2], test s[n-1]), history capped at 20
items, full ranking over the whole catalog, history items kept, Recall/NDCG@5/10; the literature
reference points (full ranking, leave-one-out, Beauty) are printed next to the table. A corpus is a name or a
bring-your-own folder (its checkpoint goes to ``RUNS/<folder name>``). Writes ``results/NAME.{json,md}``
(``--name``, default ``indomain``).
"""

from __future__ import annotations

import argparse
import json
import resource
import shlex
import subprocess
import sys
import time
from pathlib import Path

from foundation_rec import defaults
from foundation_rec.api import DEFAULT as METHOD
from foundation_rec.api import FoundationRec
from foundation_rec.evaluate import markdown_table
from foundation_rec.zeroshot import ZeroShotArguments, run_target

from .common import environment, provenance, write_results

# Full-ranking leave-one-out results on Amazon Beauty from the literature (the reference points).
LITERATURE = [
    {"corpus": "amazon2014-beauty", "method": "SASRec, cross-entropy loss (literature)", "R@10": 0.082, "N@10": 0.041},
    {"corpus": "amazon2014-beauty", "method": "TIGER (literature)", "R@10": 0.065, "N@10": 0.038},
]


def train(corpus: str, users: int, out: Path, data_dir: str | None, extra: list[str]) -> dict:
    """Run the pre-training CLI on one corpus; its wall time, the command, and the peak RSS of the
    training processes so far (``RUSAGE_CHILDREN`` is a maximum over every child this script ran)."""
    command = [sys.executable, "-m", "foundation_rec.pretrain", "--corpora", corpus, "--users-per-corpus", str(users),
               "--output-dir", str(out), "--progress", "false", *extra]
    if data_dir:
        command += ["--data-dir", data_dir]
    print("$", " ".join(command[1:]), flush=True)
    start = time.perf_counter()
    subprocess.run(command, check=True)
    return {
        "command": " ".join(["python", *command[1:]]),
        "wall_s": round(time.perf_counter() - start, 1),
        "peak_rss_gib_children": round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20, 2),
    }


def markdown(payload: dict) -> str:
    env = payload["environment"]
    users = f"a seeded sample of {payload['users_per_corpus']:,} users" if payload["users_per_corpus"] else "all users"
    lines = [
        "# In-domain IDGenRec (train and test on one Amazon corpus)",
        "",
        provenance(env),
        "",
        ("Leave-one-out test split, full ranking over the whole catalog, history items kept, history capped at 20 items. "
        f"Our model is trained on {users} per corpus (the CPU preset's recipe otherwise; the exact command is below); "
        "every method is scored on the same fixed-seed sample of test users."),
        "",
    ]
    for corpus, block in payload["corpora"].items():
        training = block.get("training")
        lines += [f"## {corpus}", ""]
        if training:
            lines += [f"Training: `{training['command']}`, {training['wall_s'] / 60:.1f} min wall, peak RSS of the training runs so far {training['peak_rss_gib_children']} GiB.", ""]
        lines += [markdown_table(block["results"]), ""]
    lines += ["## Literature (full ranking, leave-one-out, Amazon Beauty, all users, GPU-trained)", "", "| method | R@10 | N@10 |", "|---|---|---|"]
    lines += [f"| {r['method']} | {r['R@10']:.3f} | {r['N@10']:.3f} |" for r in LITERATURE]
    return "\n".join(lines) + "\n"


def evaluate(corpus: str, out: Path, args) -> dict:
    """The checkpoint in ``out`` on ``corpus``'s test users, as ``zeroshot --allow-seen-platform`` scores it, with the baselines."""
    model = FoundationRec.from_pretrained(out / "best", device="cpu", num_beams=args.num_beams)
    zs = ZeroShotArguments(target=corpus, data_dir=args.data_dir, max_users=args.max_users, seed=args.seed,
                           num_beams=args.num_beams, baselines=args.baselines, allow_seen_platform=True, progress=False)
    start = time.perf_counter()
    results = run_target(model, corpus, zs)
    for r in results:
        if r["method"].split("+")[0] == METHOD:  # trained on this corpus: in-domain, not zero-shot (either protocol)
            r["method"], r["setting"] = r["method"].replace(METHOD, "idgenrec (in-domain)", 1), "in-domain"
    return {"results": results, "evaluation_s": round(time.perf_counter() - start, 1),
            "training_results": json.loads((out / "results.json").read_text(encoding="utf-8"))}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpora", default="amazon2014-beauty,amazon2014-toys", help="comma list of corpora")
    parser.add_argument("--users-per-corpus", type=int, default=2000, help="users our model is trained on (seeded sample; 0: all)")
    parser.add_argument("--max-users", type=int, default=2000, help="fixed-seed sample of test users per corpus")
    parser.add_argument("--seed", type=int, default=0, help="seed of the test-user sample")
    parser.add_argument("--num-beams", type=int, default=defaults.NUM_BEAMS, help="beams of the constrained beam search")
    parser.add_argument("--runs", type=Path, default=Path("runs/indomain"), help="folder for the trained checkpoints")
    parser.add_argument("--skip-training", action="store_true", help="evaluate the checkpoints already in --runs")
    parser.add_argument("--data-dir", default=None, help="data directory (default: the package's search order)")
    parser.add_argument("--pretrain-args", default="", help="extra flags for the pre-training command, e.g. '--id-epochs 0'")
    parser.add_argument("--baselines", default="all", help="baselines run on the same users (comma list or all; '' for none)")
    parser.add_argument("--name", default="indomain", help="results file stem under benchmarks/results")
    args = parser.parse_args(argv)
    payload = {"environment": environment(), "users_per_corpus": args.users_per_corpus, "literature": LITERATURE, "corpora": {}}
    extra = shlex.split(args.pretrain_args)
    for corpus in [c.strip() for c in args.corpora.split(",") if c.strip()]:
        out = args.runs / Path(corpus).name
        block = {} if args.skip_training else {"training": train(corpus, args.users_per_corpus, out, args.data_dir, extra)}
        block.update(evaluate(corpus, out, args))
        payload["corpora"][corpus] = block
        print(f"\n{corpus}\n{markdown_table(block['results'])}", flush=True)
    write_results(args.name, payload, markdown(payload))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
