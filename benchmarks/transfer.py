"""Zero-shot transfer benchmark: pre-trained variants on the five unseen targets, next to the baselines, same users.

    python -m benchmarks.transfer --variant default=runs/pretrain/best [--max-users 2000] [--targets yelp,./my-shop]

Each ``--variant NAME=CHECKPOINT`` is a checkpoint of ``python -m foundation_rec.pretrain`` trained
on the Amazon pool; for every target it does what ``python -m foundation_rec.zeroshot`` does (IDs for
the target's items from the checkpoint's generator, the target's trie, nothing trained on the
target; the same function, :func:`foundation_rec.zeroshot.run_target`) and scores the model's methods, each its own row:

* ``idgenrec`` (pure generation): trie-constrained beam search, no prior;
* ``idgenrec-zeroshot``: ``zeroshot``'s default, generation with the checkpoint's content prior, gamma =
  ``--content-prior``, strict protocol; ``idgenrec-zeroshot+counts`` the same with the target's
  training-split counts (:mod:`foundation_rec.signals`);
* ``content-prior`` / ``content-prior+counts``: the checkpoint's prior alone ranking the whole catalog
  (what the prior gives without the language model), in each protocol.

Random and the practitioner anchors (popularity, text-kNN, recency-weighted text-kNN, popularity x
text-kNN, the user's own history) run in the same process on the **same users** (and
``random-expected``, the exact expectation of a random ranking on them, since one random draw on
2,000 users is noisy) (a fixed-seed sample
of ``--max-users`` test users per target; MovieLens-100k has 943, all used); SASRec is read from
``results/<--sasrec-from>.json`` (``python -m benchmarks.baselines --converged``, same users and seed; checked). One
ranking pass per method gives both tables: history kept (top 10 of the list) and history excluded
(history items dropped, then top 10). The summary table (the README's) puts the first variant's
methods in both protocols next to the practitioner anchors.

Results are written after every (variant, target), and a rerun skips the pairs already in
``results/<--name>.json`` (delete it to start over): ``results/<--name>.{json,md,png}``. A target is a corpus name
or a bring-your-own folder (``--targets ./my-shop``), as for ``zeroshot``; rows are keyed by the corpus's name.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from foundation_rec import api, defaults
from foundation_rec.api import DEFAULT, GENERATION, FoundationRec, method_label, parse_label
from foundation_rec.backbones import PRETRAINED_SPACE_PRESETS
from foundation_rec.baselines import evaluate_methods
from foundation_rec.checkpoint import read_config
from foundation_rec.corpora import load_corpus
from foundation_rec.evaluate import expected_random
from foundation_rec.signals import COUNTS
from foundation_rec.zeroshot import ZeroShotArguments, run_target

from .common import TARGETS, environment, provenance, results_dir, write_results

GENERATE, PRIOR, SCORER = GENERATION, DEFAULT, api.PRIOR
PRIOR_COUNTS, SCORER_COUNTS = method_label(PRIOR, COUNTS), method_label(SCORER, COUNTS)
MODEL_METHODS = (GENERATE, PRIOR, PRIOR_COUNTS, SCORER, SCORER_COUNTS)
ANCHORS = ["popularity", "text-knn", "text-knn-recency", "popularity-text-knn", "history"]
BASELINES = ["random", "random-expected", *ANCHORS, "sasrec"]
SETTINGS = {False: "history kept", True: "history excluded"}


def switches(checkpoint: Path) -> dict:
    """Which parts a checkpoint has on, read from its recorded configuration."""
    config = read_config(checkpoint)
    run = config.get("run", {})
    rec_preset = run.get("rec_preset") or config.get("preset")
    return {
        "pretrained_space": rec_preset in PRETRAINED_SPACE_PRESETS,
        "content_vectors": bool(run.get("content_vectors")),
        "pretrained_recommender": rec_preset == "smollm2-135m" or bool(run.get("backbone")),
        "preset": config.get("preset"),
        "rec_preset": rec_preset,
        "users_per_corpus": run.get("users_per_corpus"),
    }


def training_record(checkpoint: Path) -> dict:
    """The run's recorded wall time and validation history (``results.json`` beside the checkpoint), if any."""
    file = checkpoint.parent / "results.json"
    if not file.is_file():
        return {}
    payload = json.loads(file.read_text(encoding="utf-8"))
    return {k: payload[k] for k in ("seconds", "best_valid", "stages_seconds") if k in payload}


def sasrec_rows(name: str, target: str, users: int, seed: int) -> list[dict]:
    if not name:  # --sasrec-from '': no SASRec reference (e.g. on fewer users than the references were measured on)
        return []
    file = results_dir() / f"{name}.json"
    if not file.is_file():
        raise SystemExit(f"no results/{name}.json with SASRec on the same users; run python -m benchmarks.baselines --converged --name {name} "
                         "(see its docstring) or pass --sasrec-from ''")
    rows = [r for r in json.loads(file.read_text(encoding="utf-8"))["results"] if r["corpus"] == target and r["method"] == "sasrec"]
    for row in rows:
        if row["users_evaluated"] != users or (row["sampled"] and row["sample_seed"] != seed):
            raise SystemExit(f"{name}.json has other users for {target}; rerun python -m benchmarks.baselines with --max-users {users} --seed {seed}")
        row["measured"] = f"{name}.json"
    return rows


def expected_random_rows(target: str, max_users: int, args) -> list[dict]:
    """The exact expectation of random ranking on the same users (both settings): one random draw is noisy."""
    return expected_random(load_corpus(target, args.data_dir), max_users=None if max_users == 0 else max_users, seed=args.seed)


def run_variant(name: str, checkpoint: Path, target: str, users: int | None, methods: list[str], args) -> list[dict]:
    """The model's rows on one target through :func:`foundation_rec.zeroshot.run_target`, both history settings."""
    model = FoundationRec.from_pretrained(checkpoint, device="cpu", num_beams=args.num_beams)
    rows = []
    for label in methods:
        method, protocol = parse_label(label)
        zs = ZeroShotArguments(target=target, data_dir=args.data_dir, max_users=users, seed=args.seed, num_beams=args.num_beams,
                               batch_size=args.batch_size, methods=method, protocol=protocol, history="both",
                               content_prior=args.content_prior, progress=False)
        part = run_target(model, target, zs)
        for row in part:
            row.update(variant=name)
        rows += part
        print(f"  {name} {label} on {target}: N@10 {part[0]['metrics']['N@10']:.4f} kept / {part[1]['metrics']['N@10']:.4f} excluded "
              f"({part[1]['seconds']:.0f} s)", flush=True)
    return rows


def cell(rows: list[dict], target: str, method: str, exclude: bool, variant: str | None = None) -> dict | None:
    return next((r for r in rows if r["corpus"] == target and r["method"] == method and r["exclude_history"] == exclude
                 and r.get("variant") == variant), None)


def fmt(row: dict | None) -> str:
    return "-" if row is None else f"{row['metrics']['R@10']:.4f} / {row['metrics']['N@10']:.4f}"


def tables(payload: dict) -> str:
    rows, variants = payload["results"], payload["variants"]
    targets = [t for t in payload["targets"] if any(r["corpus"] == t for r in rows)]
    out = []
    for exclude, title in SETTINGS.items():
        methods = [m for m in MODEL_METHODS if any(r["method"] == m for r in rows)]
        header = ["target", "users", *BASELINES] + [f"{v} {m}" for v in variants for m in methods]
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for t in targets:
            knn = cell(rows, t, "text-knn", exclude)
            users = knn["users_evaluated"] if knn else "-"
            cells = [fmt(cell(rows, t, b, exclude)) for b in BASELINES]
            for v in variants:
                for m in methods:
                    row = cell(rows, t, m, exclude, v)
                    ratio = f" ({row['metrics']['N@10'] / knn['metrics']['N@10']:.2f}x)" if row and knn and knn["metrics"]["N@10"] else ""
                    cells.append(fmt(row) + ratio)
            lines.append("| " + " | ".join([t, f"{users:,}" if isinstance(users, int) else users, *cells]) + " |")
        out += [f"### Zero-shot, {title} (R@10 / N@10; in brackets N@10 as a multiple of text-kNN's)", "", *lines, ""]
    out = summary(payload, targets) + out
    return "\n".join(out)


def calibrated_as(row: dict | None) -> str:
    """Which candidate the counts protocol's calibration chose on the target's held-out items (``-`` when none)."""
    return "-" if row is None or "calibration" not in row else row["calibration"]["choice"]


def summary(payload: dict, targets: list[str]) -> list[str]:
    """The README's table: N@10 of the anchors and of the first variant's methods, both protocols, both settings."""
    rows, variant = payload["results"], next(iter(payload["variants"]), None)
    header = ["target", "history", "text-kNN", "popularity [c]", "pop x text-kNN [c]", "SASRec (trained)", "generation", "prior [s]", "**default [s]**",
              "prior [c]", "**default [c]**", "default [c] / best anchor [c]", "default [c] / prior [c]", "default [s] / text-kNN", "counts calibrated as"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for exclude, title in SETTINGS.items():
        for t in targets:
            n = {m: (cell(rows, t, m, exclude) or cell(rows, t, m, exclude, variant) or {"metrics": {"N@10": float("nan")}})["metrics"]["N@10"]
                 for m in [*ANCHORS, "sasrec", GENERATE, PRIOR, PRIOR_COUNTS, SCORER, SCORER_COUNTS]}
            best = max(n["popularity"], n["popularity-text-knn"])
            cells = [f"{t}, {title}", *(f"{n[m]:.4f}" for m in ("history", "text-knn", "popularity", "popularity-text-knn", "sasrec", GENERATE, SCORER)),
                     f"**{n[PRIOR]:.4f}**", f"{n[SCORER_COUNTS]:.4f}", f"**{n[PRIOR_COUNTS]:.4f}**",
                     f"{n[PRIOR_COUNTS] / best:.2f}x" if best else "-", f"{n[PRIOR_COUNTS] / n[SCORER_COUNTS]:.2f}x" if n[SCORER_COUNTS] else "-",
                     f"{n[PRIOR] / n['text-knn']:.2f}x" if n["text-knn"] else "-", calibrated_as(cell(rows, t, PRIOR_COUNTS, exclude, variant))]
            lines.append("| " + " | ".join(cells) + " |")
    return [("### Summary (N@10; [s] strict: texts and the user's history; [c] with the target's training-split counts, signal weights "
            "calibrated on its validation items; pop x text-kNN's weight tuned on the same items)"), "", *lines, ""]


def plot(payload: dict, name: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = payload["results"]
    targets = [t for t in payload["targets"] if any(r["corpus"] == t for r in rows)]
    series = [(b, None) for b in BASELINES] + [(m, v) for v in payload["variants"] for m in MODEL_METHODS
                                               if any(r["method"] == m and r.get("variant") == v for r in rows)]
    fig, axes = plt.subplots(1, 2, figsize=(13, 3.8))
    width = 0.85 / len(series)
    for ax, exclude in zip(axes, SETTINGS, strict=True):
        for j, (method, variant) in enumerate(series):
            values = [(cell(rows, t, method, exclude, variant) or {"metrics": {"N@10": 0.0}})["metrics"]["N@10"] for t in targets]
            ax.bar([i + (j - (len(series) - 1) / 2) * width for i in range(len(targets))], values, width,
                   label=method if variant is None else f"{variant}: {method}")
        ax.set_xticks(range(len(targets)), targets, fontsize=8)
        ax.set_title(f"zero-shot N@10, {SETTINGS[exclude]}, same sampled users", fontsize=9)
    axes[1].legend(fontsize=6, ncol=2)
    fig.tight_layout()
    fig.savefig(results_dir() / f"{name}.png", dpi=110)
    plt.close(fig)


def merge(args) -> None:
    """Combine result files of runs on the same users (e.g. two processes, one method each) into one table."""
    payload = {"results": [], "variants": {}, "merged_from": []}
    key = lambda r: (r["corpus"], r["method"], r["exclude_history"], r.get("variant"))
    for name in args.merge.split(","):
        part = json.loads((results_dir() / f"{name}.json").read_text(encoding="utf-8"))
        if part["seed"] != args.seed or part["max_users"] != payload.get("max_users", part["max_users"]):
            raise SystemExit(f"{name}.json sampled other users (seed or --max-users); merge only runs on the same users")
        seen = {key(r) for r in payload["results"]}
        payload["results"] += [r for r in part["results"] if key(r) not in seen and r["method"] != "sasrec"]
        for v, info in part["variants"].items():
            payload["variants"].setdefault(v, info)
        payload["merged_from"].append({"name": name, "command": part["environment"]["command"], "date": part["environment"]["date"]})
        for k in ("max_users", "seed", "num_beams"):
            payload.setdefault(k, part[k])
        known = payload.get("targets", [])
        payload["targets"] = sorted([*known, *(t for t in part["targets"] if t not in known)], key=lambda t: TARGETS.index(t) if t in TARGETS else len(TARGETS))
    for target in payload["targets"]:
        knn = cell(payload["results"], target, "text-knn", False)
        if knn is not None:
            payload["results"] += sasrec_rows(args.sasrec_from, target, knn["users_evaluated"], args.seed)
            if cell(payload["results"], target, "random-expected", False) is None:
                payload["results"] += expected_random_rows(target, payload["max_users"], args)
    payload["environment"] = environment()
    sources = "\n".join(f"* `{m['command']}` ({m['date']})" for m in payload["merged_from"])
    markdown = f"# Zero-shot transfer\n\n{provenance(payload['environment'])}, combining:\n\n{sources}\n\n{tables(payload)}"
    write_results(args.name, payload, markdown)
    plot(payload, args.name)
    print(tables(payload))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", action="append", default=[], help="NAME=CHECKPOINT (repeat for each variant)")
    parser.add_argument("--targets", default=",".join(TARGETS), help="comma list of target corpora: names or bring-your-own folders")
    parser.add_argument("--max-users", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--num-beams", type=int, default=defaults.NUM_BEAMS)
    parser.add_argument("--methods", default=f"{GENERATE},{PRIOR},{PRIOR_COUNTS},{SCORER},{SCORER_COUNTS}", help=f"the model's methods to run, a comma list of {', '.join(MODEL_METHODS)}")
    parser.add_argument("--content-prior", type=float, default=None, help=f"gamma of {PRIOR} (default: the checkpoint's, as zeroshot: "
                        "chosen on pool validation, or 30 for a checkpoint that records none)")
    parser.add_argument("--batch-size", type=int, default=defaults.BATCH_SIZE)
    parser.add_argument("--sasrec-from", default="baselines_converged", help="results/<NAME>.json holding SASRec on the same users "
                        "(python -m benchmarks.baselines --converged: trained until early stopping); '' for none")
    parser.add_argument("--name", default="transfer")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--merge", default="", help="comma list of results/<NAME>.json to combine into --name (runs nothing; adds SASRec from --sasrec-from)")
    return parser.parse_args(argv)


def anchors(payload: dict, spec: str, target: str, users: int | None, args) -> None:
    """Random and the practitioner anchors on ``target`` (corpus name; ``spec`` as given: a name or a folder), SASRec
    from ``--sasrec-from`` and the expected random ranking, each added once, on the same users as the model's rows."""
    if cell(payload["results"], target, "text-knn", False) is None:
        payload["results"] += evaluate_methods(load_corpus(spec, args.data_dir), ["random", *ANCHORS], max_users=users, seed=args.seed,
                                               exclude_history=(False, True), progress=False)
    users_evaluated = cell(payload["results"], target, "text-knn", False)["users_evaluated"]
    payload["results"] = [r for r in payload["results"] if not (r["corpus"] == target and r["method"] == "sasrec")]
    payload["results"] += sasrec_rows(args.sasrec_from, target, users_evaluated, args.seed)  # refreshed on every run
    if cell(payload["results"], target, "random-expected", False) is None:
        payload["results"] += expected_random_rows(spec, args.max_users, args)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.merge:
        return merge(args)
    torch.set_num_threads(args.threads)
    variants = dict(v.split("=", 1) for v in args.variant)
    specs = {load_corpus(spec, args.data_dir).name: spec for spec in args.targets.split(",")}  # rows are keyed by the corpus's name
    file = results_dir() / f"{args.name}.json"
    payload = json.loads(file.read_text(encoding="utf-8")) if file.is_file() else {"results": [], "variants": {}}
    payload.update(environment=environment(), targets=list(specs), max_users=args.max_users, seed=args.seed,
                   num_beams=args.num_beams, content_prior=args.content_prior)
    for name, ckpt in variants.items():
        payload["variants"][name] = {"checkpoint": ckpt, "switches": switches(Path(ckpt)), "training": training_record(Path(ckpt))}
    users = None if args.max_users == 0 else args.max_users
    for target, spec in specs.items():
        anchors(payload, spec, target, users, args)
        for name, ckpt in variants.items():
            missing = [m for m in args.methods.split(",") if cell(payload["results"], target, m, False, name) is None]
            if missing:
                payload["results"] += run_variant(name, Path(ckpt), spec, users, missing, args)
        markdown = f"# Zero-shot transfer\n\n{provenance(payload['environment'])}\n\n{tables(payload)}"
        write_results(args.name, payload, markdown)
    plot(payload, args.name)
    print(tables(payload))


if __name__ == "__main__":
    main()
