"""Scaling curve of the recommender: N@10 against recommender training examples, on pool validation and two targets.

    python benchmarks/scaling.py train --points u25e1,u100e1,u300e1,u300e3   # one core each; resumes where it stopped
    python benchmarks/scaling.py train --points u1000e3
    python benchmarks/scaling.py evaluate [--variant poe=runs/poe/best]   # the finished points (and others) on the targets
    python benchmarks/scaling.py report                                   # results/scaling.{md,json,png}

Each point is ``python -m foundation_rec.pretrain`` with the README's recipe (``--preset auto``: the
MiniLM-space generator and recommender, the content prior) except for what the curve varies: users per
corpus and recommender epochs. The ID-generator phase is left out (``--id-epochs 0``) so the points
differ only in the recommender's training; every point warms the generator on the same 3,000 items.
Each run validates the shipped setting (content prior, gamma 30, ``defaults.NUM_BEAMS`` beams; the committed points used 20) and pure generation
(``--valid-generation``) on 50 validation users per corpus and stores the prior alone and text-kNN on
the same users (``results.json``'s ``valid_anchors``). The pool's catalog grows with the users sampled,
so pool-validation N@10 is compared through its ratio to the prior alone on the same users; the
targets are fixed catalogs and users (``benchmarks/transfer.py`` on all 943 MovieLens-100k test users and 500
fixed-seed Steam ones, for CPU time), so their N@10 compare directly.

Runs go to ``runs/scaling/<point>/``; ``train`` resumes a stopped run from its ``checkpoint/`` and skips a finished one.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

from common import RESULTS, environment, provenance, write_results

POINTS = {"u25e1": (25, 1), "u100e1": (100, 1), "u300e1": (300, 1), "u300e3": (300, 3), "u1000e3": (1000, 3)}  # users per corpus, recommender epochs
COMMON = ["--id-epochs", "0", "--valid-generation", "true", "--valid-users", "50", "--test-users", "5", "--progress", "false"]
TARGET_USERS = {"movielens-100k": 2000, "steam": 500}  # all 943 MovieLens-100k test users; Steam's first 500 fixed-seed ones (CPU time)
METHODS = "idgenrec,idgenrec-zeroshot,content-prior"


def run_dir(point: str, root: str) -> Path:
    return Path(root) / point


def train(point: str, root: str, threads: int) -> None:
    """Train (or resume, or skip) one point; one torch thread each so two points can share the two cores."""
    out = run_dir(point, root)
    if (out / "results.json").is_file():
        print(f"{point}: finished ({out})", flush=True)
        return
    users, epochs = POINTS[point]
    args = ["--resume", str(out / "checkpoint")] if (out / "checkpoint").is_dir() else []
    args += ["--corpora", "all", "--output-dir", str(out), "--users-per-corpus", str(users), "--rec-epochs", str(epochs), *COMMON]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    print(f"{point}: {'resuming' if args[0] == '--resume' else 'training'} ({users} users per corpus, {epochs} recommender epochs) -> {out}", flush=True)
    subprocess.run([sys.executable, "-m", "foundation_rec.pretrain", *args], check=True, env=env)


def pool_point(out: Path) -> dict:
    """Pool-validation N@10 of the shipped setting, pure generation and the anchors, and the recommender's examples."""
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    valid = max((r for r in records if r["phase"] == "valid"), key=lambda r: r["N@10"])
    start = next(r["step"] for r in records if r["phase"] == "regen")
    batch = json.loads((out / "best" / "foundation_rec.json").read_text())["train"]["rec_batch_size"]
    anchors = json.loads((out / "results.json").read_text()).get("valid_anchors", {})
    return {"rec_examples": (valid["step"] - start) * batch, "users": valid["users"], "default": valid["N@10"], "generation": valid["generation_N@10"],
            "prior": anchors.get("the content prior alone"), "text_knn": anchors.get("text-kNN")}


def finished(root: str) -> list[str]:
    return [p for p in POINTS if (run_dir(p, root) / "results.json").is_file()]


def evaluate(root: str, threads: int, extra: list[str]) -> None:
    """The finished points (and ``extra`` NAME=CHECKPOINT variants) on the targets, into ``results/recommender_training_<target>``."""
    variants = [f"--variant={p}={run_dir(p, root) / 'best'}" for p in finished(root)] + [f"--variant={v}" for v in extra]
    for target, users in TARGET_USERS.items():
        subprocess.run([sys.executable, str(Path(__file__).with_name("transfer.py")), *variants, "--targets", target, "--methods", METHODS,
                        "--max-users", str(users), "--sasrec-from", "", "--name", f"recommender_training_{target}", "--threads", str(threads)], check=True)


def target_rows() -> list[dict]:
    """Every target's rows from its ``results/recommender_training_<target>.json`` (that target's rows only)."""
    files = {t: RESULTS / f"recommender_training_{t}.json" for t in TARGET_USERS}
    return [r for t, f in files.items() if f.is_file() for r in json.loads(f.read_text())["results"] if r["corpus"] == t]


def target_cells(point: str, rows: list[dict]) -> dict:
    out = {}
    for r in rows:
        if r.get("variant") == point and not r["exclude_history"]:
            out.setdefault(r["corpus"], {})[r["method"]] = r["metrics"]["N@10"]
    base = {r["corpus"]: r["metrics"]["N@10"] for r in rows if r["method"] == "text-knn" and not r["exclude_history"]}
    return {t: {**m, "text-knn": base.get(t)} for t, m in out.items()}


def report(root: str) -> None:
    rows = target_rows()
    points = {p: {**pool_point(run_dir(p, root)), "targets": target_cells(p, rows)} for p in finished(root)}
    payload = {"environment": environment(), "points": points, "recipe": COMMON}
    lines = ["| point | recommender examples | pool: default | pool: generation | pool: prior alone | default / prior | generation / text-kNN |",
             "|---|---|---|---|---|---|---|"]
    for p, v in points.items():
        lines.append(f"| {p} | {v['rec_examples']:,} | {v['default']:.4f} | {v['generation']:.4f} | {v['prior']:.4f} | {v['default'] / v['prior']:.2f}x | "
                     f"{v['generation'] / v['text_knn']:.2f}x |")
    for t, users in TARGET_USERS.items():
        lines += ["", f"**{t}** ({'all test users' if t == 'movielens-100k' else f'{users:,} fixed-seed test users'}; history kept; N@10)", "",
                  "| point | generation | default | prior alone | text-kNN | default / prior | generation / text-kNN |", "|---|---|---|---|---|---|---|"]
        for p, v in points.items():
            c = v["targets"].get(t)
            if c and "idgenrec" in c:
                lines.append(f"| {p} | {c['idgenrec']:.4f} | {c['idgenrec-zeroshot']:.4f} | {c['content-prior']:.4f} | {c['text-knn']:.4f} | "
                             f"{c['idgenrec-zeroshot'] / c['content-prior']:.2f}x | {c['idgenrec'] / c['text-knn']:.2f}x |")
    write_results("scaling", payload, "# Recommender scaling curve\n\n" + provenance(payload["environment"]) + "\n\n" + "\n".join(lines) + "\n")
    plot(points)
    print("\n".join(lines))


def plot(points: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 1 + len(TARGET_USERS), figsize=(13, 3.6))
    xs = [v["rec_examples"] for v in points.values()]
    panels = [("pool validation", [(v["generation"], v["default"], v["prior"]) for v in points.values()])]
    for t in TARGET_USERS:
        cells = [v["targets"].get(t, {}) for v in points.values()]
        panels.append((t, [(c.get("idgenrec"), c.get("idgenrec-zeroshot"), c.get("content-prior")) for c in cells]))
    for ax, (title, ys) in zip(axes, panels, strict=True):
        for k, label in enumerate(["pure generation", "default (generation + prior)", "prior alone"]):
            pairs = [(x, y[k]) for x, y in zip(xs, ys, strict=True) if y[k] is not None]
            ax.plot([a for a, _ in pairs], [b for _, b in pairs], marker="o", label=label)
        ax.set_xscale("log")
        ax.set_title(title)
        ax.set_xlabel("recommender training examples")
    axes[0].set_ylabel("N@10")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(RESULTS / "scaling.png", dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("step", choices=("train", "evaluate", "report"))
    parser.add_argument("--points", default="u25e1,u100e1,u300e1,u300e3", help=f"comma list of {', '.join(POINTS)}")
    parser.add_argument("--root", default="runs/scaling")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--variant", action="append", default=[], help="evaluate: another NAME=CHECKPOINT on the same targets and users")
    args = parser.parse_args()
    if args.step == "train":
        for point in args.points.split(","):
            train(point, args.root, args.threads)
    elif args.step == "evaluate":
        evaluate(args.root, args.threads, args.variant)
    else:
        report(args.root)


if __name__ == "__main__":
    main()
