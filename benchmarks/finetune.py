"""Fine-tuning on a platform's logs against training from scratch, at several amounts of logs.

    python -m benchmarks.finetune --targets movielens-100k,steam --users 100,all --max-users 2000 --name finetune
    python -m benchmarks.finetune --targets steam --users 1000 --finetune-args "--rec-epochs 1" --name finetune-steam
    python -m benchmarks.finetune --merge finetune-ml100k,finetune-steam --name finetune   # parts run in parallel, one table

For each target and each N (``all``: every user), the logs are N fixed-seed users' training sequences (the users
``python -m foundation_rec.finetune --users N`` keeps), and every method reads only them; all are scored on the
same fixed-seed test users of the whole target (``--max-users``, seed 0: the README table's), history kept and
excluded. Rows (``results`` in the JSON), each with ``corpus``, ``train_users``, ``method``, ``init``,
``exclude_history``, ``metrics`` and ``fit_seconds``:

* ``idgenrec-zeroshot`` with ``init`` ``none``: the checkpoint untouched, with the logs' counts (the zero-shot default);
* ``idgenrec-zeroshot`` / ``content-prior`` / ``idgenrec`` with ``init`` ``foundation``: ``finetune`` from the
  checkpoint: its chosen default, its fine-tuned prior alone (with counts), its fine-tuned generation alone;
* the same three with ``init`` ``random``: ``finetune --init random`` (the same recipe from nothing);
* ``sasrec``: SASRec trained from scratch on the N users until its validation score stops improving;
* ``popularity``: counted on the N users.

Each ``finetune`` run goes to ``--runs``/``<target>-u<N>-<init>`` and is resumed when it is there. Writes
``results/NAME.{json,md,png}`` (the plot: N@10, history kept, against N on a log axis, one panel per target).
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

from foundation_rec.api import DEFAULT, GENERATION, PRIOR, FoundationRec
from foundation_rec.baselines import Popularity, SASRec
from foundation_rec.corpora import load_corpus, resolve_names
from foundation_rec.evaluate import evaluate_settings
from foundation_rec.pool import users_of
from foundation_rec.signals import COUNTS, STRICT, PlatformCounts

from .common import environment, provenance, results_dir, write_results

SEED = 42  # finetune's default --seed: the users it keeps


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--targets", default="movielens-100k,steam", help="comma list of targets (names or bring-your-own folders)")
    parser.add_argument("--users", default="100,1000,all", help="comma list of N (users whose logs are read), 'all' for every user")
    parser.add_argument("--max-users", type=int, default=2000, help="fixed-seed test users per target (seed 0)")
    parser.add_argument("--checkpoint", default="runs/pretrain/best", help="the foundation checkpoint")
    parser.add_argument("--runs", default="runs/finetune-bench", help="folder of the finetune runs (resumed when present)")
    parser.add_argument("--finetune-args", default="", help="extra flags for every finetune run, e.g. \"--rec-epochs 1\"")
    parser.add_argument("--inits", default="foundation,random", help="which finetune starts to run")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--name", default="finetune")
    parser.add_argument("--merge", default="", help="comma list of earlier result names (e.g. runs of targets in parallel) to combine into --name")
    return parser.parse_args(argv)


def merge(args, env: dict) -> int:
    """Write ``--name`` from the rows of the results named by ``--merge``, in their order (each part's environment kept)."""
    rows, parts = [], {}
    for name in args.merge.split(","):
        payload = json.loads((results_dir() / f"{name}.json").read_text(encoding="utf-8"))
        rows += payload["results"]
        parts[name] = payload["environment"]
    write_results(args.name, {"environment": env, "parts": parts, "results": rows}, markdown(rows, env, parts))
    plot(rows, results_dir() / f"{args.name}.png")
    return 0


def finetune(args, target: str, users: int, init: str) -> tuple[Path, float]:
    """Run (or resume) ``python -m foundation_rec.finetune``; its output folder and wall seconds."""
    out = Path(args.runs) / f"{Path(target).name}-u{users or 'all'}-{init}"
    command = [sys.executable, "-m", "foundation_rec.finetune", "--target", target, "--users", str(users), "--init", init, "--checkpoint",
               args.checkpoint, "--output-dir", str(out), "--test-users", str(args.max_users), "--no-progress", *shlex.split(args.finetune_args)]
    if args.data_dir:
        command += ["--data-dir", args.data_dir]
    if (out / "finetune.json").is_file():
        command.append("--resume")
    print("$", " ".join(command[1:]), flush=True)
    start = time.perf_counter()
    subprocess.run(command, check=True)
    seconds = time.perf_counter() - start
    recorded = json.loads((out / "results.json").read_text(encoding="utf-8"))
    return out, recorded.get("fit_seconds") or recorded.get("seconds", seconds)


def rows_of(corpus, users, method: str, init: str, results: list[dict], fit_seconds: float) -> list[dict]:
    return [{"corpus": corpus.name, "train_users": users or "all", "method": method, "init": init, "exclude_history": r["exclude_history"],
             "metrics": r["metrics"], "fit_seconds": round(fit_seconds, 1), "users_evaluated": r["users_evaluated"]} for r in results]


def test_rows(corpus, users, folder: Path, init: str, fit_seconds: float) -> list[dict]:
    """The default's rows from the finetune run's own test (``results.json``): fine-tuned, and zero-shot beside it."""
    test = json.loads((folder / "results.json").read_text(encoding="utf-8"))["test"]
    rows = []
    for arm, arm_init, seconds in (("fine-tuned", init, fit_seconds), ("zero-shot", "none", 0.0)):
        if arm in test:
            results = [{"exclude_history": setting == "excluded", "metrics": test[arm][setting], "users_evaluated": test[arm]["users"]}
                       for setting in ("kept", "excluded")]
            rows += rows_of(corpus, users, DEFAULT, arm_init, results, seconds)
    return rows


def model_rows(args, corpus, logs, users, folder: Path, init: str, fit_seconds: float) -> list[dict]:
    """The default (and, from the foundation, the zero-shot default) from the run's test; the prior alone and generation
    alone of ``folder/train/best`` (the fine-tuned models), on the same test users."""
    counts, rows = PlatformCounts.from_corpus(logs), test_rows(corpus, users, folder, init, fit_seconds)
    for method, part, protocol in ((PRIOR, "train/best", COUNTS), (GENERATION, "train/best", STRICT)):
        model = FoundationRec.from_pretrained(folder / part)
        model.index_catalog(corpus, progress=False, counts=counts)
        rec = model.method_recommender(method, protocol)
        results = evaluate_settings(corpus, rec, method, (False, True), max_users=args.max_users, progress=False)
        rows += rows_of(corpus, users, method, init, results, fit_seconds)
    return rows


def baseline_rows(args, corpus, logs, users) -> list[dict]:
    """SASRec from scratch and popularity, each reading the N users' logs (and the zero-shot default when no finetune run
    from the foundation gives it)."""
    counts, rows = PlatformCounts.from_corpus(logs), []
    if "foundation" not in args.inits.split(","):
        model = FoundationRec.from_pretrained(args.checkpoint)
        model.index_catalog(corpus, progress=False, counts=counts)
        rows += rows_of(corpus, users, DEFAULT, "none", evaluate_settings(corpus, model.method_recommender(DEFAULT, COUNTS), DEFAULT, (False, True),
                                                                          max_users=args.max_users, progress=False), 0.0)
    start = time.perf_counter()
    sasrec = SASRec.fit(logs, valid_users=None, progress=False)
    fit = time.perf_counter() - start
    rows += rows_of(corpus, users, "sasrec", "random", evaluate_settings(corpus, sasrec, "sasrec", (False, True), max_users=args.max_users,
                                                                        progress=False), fit)
    popularity = Popularity(counts.popularity)
    rows += rows_of(corpus, users, "popularity", "none", evaluate_settings(corpus, popularity, "popularity", (False, True),
                                                                           max_users=args.max_users, progress=False), 0.0)
    return rows


def label(row: dict) -> str:
    return {"none": row["method"] + (" (zero-shot)" if row["method"] == DEFAULT else ""), "foundation": f"{row['method']} fine-tuned",
            "random": row["method"] if row["method"] == "sasrec" else f"{row['method']} from random init"}[row["init"]]


def markdown(rows: list[dict], env: dict, parts: dict | None = None) -> str:
    made = "".join(f"\n- `{name}`: {provenance(part)}" for name, part in (parts or {}).items())
    lines = [f"# Fine-tuning on a platform's logs against training from scratch\n\n{provenance(env)}{made}\n",
             ("N@10 on the same fixed-seed test users of each target; every method reads only the logs of the N fixed-seed users "
              "(counts, training, selection). Fit time: the whole finetune run (with its selection and test), or SASRec's training.\n"),
             "| target | N | method | N@10 kept | N@10 excluded | fit s |", "|---|---|---|---|---|---|"]
    keyed = {}
    for r in rows:
        keyed.setdefault((r["corpus"], str(r["train_users"]), label(r)), {})[r["exclude_history"]] = r
    for (corpus, users, name), pair in keyed.items():
        kept, excluded = pair.get(False), pair.get(True)
        fit = (kept or excluded)["fit_seconds"]
        lines.append(f"| {corpus} | {users} | {name} | {kept['metrics']['N@10']:.4f} | {excluded['metrics']['N@10']:.4f} | {fit:.0f} |")
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], file: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    targets = list(dict.fromkeys(r["corpus"] for r in rows))
    fig, axes = plt.subplots(1, len(targets), figsize=(5 * len(targets), 4), squeeze=False)
    for ax, target in zip(axes[0], targets, strict=True):
        mine = [r for r in rows if r["corpus"] == target and not r["exclude_history"]]
        total = max((r["users_total"] for r in mine if "users_total" in r), default=None)
        for name in dict.fromkeys(label(r) for r in mine):
            points = sorted((total if r["train_users"] == "all" else r["train_users"], r["metrics"]["N@10"]) for r in mine if label(r) == name)
            ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=name)
        ax.set_xscale("log")
        ax.set_title(target)
        ax.set_xlabel("users whose logs are read (N)")
        ax.set_ylabel("N@10, history kept")
    axes[0][-1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(file, dpi=110)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    env = {**environment(), "command": " ".join(["python -m benchmarks.finetune", *(argv if argv is not None else sys.argv[1:])])}
    if args.merge:
        return merge(args, env)
    rows: list[dict] = []
    for target in resolve_names(args.targets):
        corpus = load_corpus(target, args.data_dir)
        for spec in args.users.split(","):
            users = 0 if spec.strip() == "all" else int(spec)
            logs = users_of(corpus, users or None, SEED)
            found = baseline_rows(args, corpus, logs, users)
            for init in args.inits.split(","):
                folder, seconds = finetune(args, target, users, init)
                found += model_rows(args, corpus, logs, users, folder, init, seconds)
            for r in found:
                r["users_total"] = len(corpus.sequences)
            rows += found
            write_results(args.name, {"environment": env, "results": rows}, markdown(rows, env))  # after every (target, N)
    plot(rows, results_dir() / f"{args.name}.png")
    print(markdown(rows, env))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
