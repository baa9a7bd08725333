"""Zero-shot results of a pre-trained checkpoint on the five targets, next to the baselines, with a bar chart.

    python benchmarks/zeroshot.py [--checkpoint runs/pretrain/best] [--max-users 2000] [--targets ...]

For each target it runs what ``python -m foundation_rec.zeroshot --target NAME --max-users N`` runs
(IDs for the target's items, its trie, constrained beam search for a fixed-seed sample of N test users)
and puts the result next to the four baselines of ``results/baselines.json`` (random, popularity,
text-kNN, SASRec), which ``benchmarks/baselines.py`` measured on the **same sampled users** (same
seed and sample size; checked here) and the same split. The baselines are read, not re-run: the
table says when each was measured. Protocol: leave-one-out test split, full ranking over the whole
catalog, history items kept in the ranking, Recall/NDCG@5/10.

Writes ``results/zeroshot.{json,md}`` and ``results/zeroshot.png`` (R@10 and N@10 per target and method).
"""

from __future__ import annotations

import json
import time

from common import RESULTS, checkpoint_run, environment, provenance, write_results

from foundation_rec.evaluate import markdown_table
from foundation_rec.zeroshot import METHOD, ZeroShotArguments, run_target

ORDER = ["random", "popularity", "text-knn", "sasrec", METHOD]


def baseline_rows(target: str, users: int, seed: int) -> tuple[list[dict], str]:
    """The target's baselines (history kept) from ``results/baselines.json``, and when they were measured."""
    file = RESULTS / "baselines.json"
    if not file.is_file():
        return [], "no baselines.json (run benchmarks/baselines.py)"
    payload = json.loads(file.read_text(encoding="utf-8"))
    rows = [r for r in payload["results"] if r["corpus"] == target and not r["exclude_history"]]
    for row in rows:
        if row["users_evaluated"] != users or (row["sampled"] and row["sample_seed"] != seed):
            raise SystemExit(f"baselines.json has {row['users_evaluated']} users (seed {row['sample_seed']}) for {target}, "
                             f"not {users} (seed {seed}); rerun benchmarks/baselines.py with the same --max-users and --seed")
    return rows, payload["environment"]["date"]


def plot(results: list[dict]) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    targets = list(dict.fromkeys(r["corpus"] for r in results))
    methods = [m for m in ORDER if any(r["method"] == m for r in results)]
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.6))
    width = 0.8 / len(methods)
    for ax, key in zip(axes, ("R@10", "N@10"), strict=True):
        for j, method in enumerate(methods):
            values = [next((r["metrics"][key] for r in results if r["corpus"] == t and r["method"] == method), 0.0) for t in targets]
            ax.bar([i + (j - (len(methods) - 1) / 2) * width for i in range(len(targets))], values, width, label=method)
        ax.set_xticks(range(len(targets)), targets, fontsize=8)
        ax.set_title(f"{key}, full ranking, sampled test users", fontsize=9)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(RESULTS / "zeroshot.png", dpi=110)
    plt.close(fig)
    return "zeroshot.png"


def report(payload: dict) -> str:
    env = payload["environment"]
    lines = [
        "# Zero-shot on unseen platforms, next to the baselines",
        "",
        (f"{provenance(env)} Checkpoint `{payload['checkpoint']}` "
         f"(pre-trained on {', '.join(payload['pretrained_corpora'])}). Wall time {payload['wall_seconds'] / 60:.1f} min."),
        "",
        (f"Leave-one-out test split, full ranking over the whole catalog, history items kept, at most 20 history items; "
         f"a fixed-seed sample of {payload['max_users']:,} test users per target (seed {payload['seed']}; movielens-100k has "
         f"943 users: all of them). `{METHOD}` was measured in this run; the baselines come from `results/baselines.json` "
         f"(measured {payload['baselines_measured']}) on the same users."),
        "",
        markdown_table(payload["results"]),
        "ID generation for each target catalog (part of `index_seconds`):",
        "",
        *(f"* {r['corpus']}: {r['catalog_size']:,} items indexed in {r['index_seconds']:.0f} s, IDs unique: {r['unique_ids']}"
          for r in payload["results"] if r["method"] == METHOD),
        "",
        f"![zero-shot chart]({payload['chart']})",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    start = time.perf_counter()
    args, model = checkpoint_run(__doc__, "--max-users", 2000)
    payload = {"checkpoint": args.checkpoint, "pretrained_corpora": model.pretrained_corpora, "max_users": args.max_users,
               "seed": args.seed, "results": [], "baselines_measured": ""}
    for target in args.targets.split(","):
        zs = ZeroShotArguments(target=target, checkpoint=args.checkpoint, data_dir=args.data_dir, max_users=args.max_users,
                               seed=args.seed, num_beams=args.num_beams)
        ours = run_target(model, target, zs)[0]
        baselines, measured = baseline_rows(target, ours["users_evaluated"], args.seed)
        payload["baselines_measured"] = measured
        payload["results"] += sorted([*baselines, ours], key=lambda r: ORDER.index(r["method"]) if r["method"] in ORDER else 99)
        payload.update(environment=environment(), wall_seconds=time.perf_counter() - start, chart=plot(payload["results"]))
        write_results("zeroshot", payload, report(payload))
        print(markdown_table([r for r in payload["results"] if r["corpus"] == target]), flush=True)


if __name__ == "__main__":
    main()
