"""Zero-shot results of a pre-trained checkpoint on the five targets, next to the baselines, with a bar chart.

    python benchmarks/zeroshot.py [--checkpoint runs/pretrain/best] [--max-users 2000] [--targets ...]
    python benchmarks/zeroshot.py --device cuda --max-users 0 --batch-size 128 --baselines baselines_allusers --name zeroshot_gpu

For each target it runs what ``python -m foundation_rec.zeroshot --target NAME --max-users N`` runs
(IDs for the target's items, its trie, constrained beam search for a fixed-seed sample of N test users)
and puts the result next to the four baselines of ``results/<--baselines>.json`` (random, popularity,
text-kNN, SASRec), which ``benchmarks/baselines.py`` measured on the **same users** (same seed and
sample size, or all users with ``--max-users 0``; checked here) and the same split. The baselines are read, not re-run: the
table says when each was measured. Protocol: leave-one-out test split, full ranking over the whole
catalog, history items kept in the ranking, Recall/NDCG@5/10.

Writes ``results/<--name>.{json,md}`` and ``results/<--name>.png`` (R@10 and N@10 per target and method).
"""

from __future__ import annotations

import json
import time

from common import RESULTS, checkpoint_run, environment, provenance, write_results

from foundation_rec.evaluate import markdown_table
from foundation_rec.zeroshot import METHOD, ZeroShotArguments, run_target

ORDER = ["random", "popularity", "text-knn", "sasrec", METHOD]


def baseline_rows(name: str, target: str, users: int, seed: int) -> tuple[list[dict], str]:
    """The target's baselines (history kept) from ``results/<name>.json``, and when they were measured."""
    file = RESULTS / f"{name}.json"
    if not file.is_file():
        return [], f"no {name}.json (run benchmarks/baselines.py)"
    payload = json.loads(file.read_text(encoding="utf-8"))
    rows = [r for r in payload["results"] if r["corpus"] == target and not r["exclude_history"]]
    for row in rows:
        if row["users_evaluated"] != users or (row["sampled"] and row["sample_seed"] != seed):
            raise SystemExit(f"{name}.json has {row['users_evaluated']} users (seed {row['sample_seed']}) for {target}, "
                             f"not {users} (seed {seed}); rerun benchmarks/baselines.py with the same --max-users and --seed")
    return rows, payload["environment"]["date"]


def plot(results: list[dict], name: str) -> str:
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
        users = "sampled" if any(r["sampled"] for r in results) else "all"
        ax.set_title(f"{key}, full ranking, {users} test users", fontsize=9)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(RESULTS / f"{name}.png", dpi=110)
    plt.close(fig)
    return f"{name}.png"


def report(payload: dict) -> str:
    env = payload["environment"]
    users = ("every test user of each target" if not payload["max_users"] else
             f"a fixed-seed sample of {payload['max_users']:,} test users per target (seed {payload['seed']}; movielens-100k has "
             f"943 users: all of them)")
    lines = [
        "# Zero-shot on unseen platforms, next to the baselines",
        "",
        *(f"Earlier run kept by `--append`: {provenance(e)}" for e in payload.get("earlier_runs", [])),
        *([""] if payload.get("earlier_runs") else []),
        (f"{provenance(env)} Checkpoint `{payload['checkpoint']}` "
         f"(pre-trained on {', '.join(payload['pretrained_corpora'])}). Wall time {(payload['wall_seconds'] + payload.get('wall_seconds_before', 0)) / 60:.1f} min"
         f"{' over several runs (--append)' if payload.get('wall_seconds_before') else ''}."),
        "",
        (f"Leave-one-out test split, full ranking over the whole catalog, history items kept, at most 20 history items; "
         f"{users}. `{METHOD}` was measured by this script ({payload['num_beams']} beams; machine per target below); the baselines come from "
         f"`results/{payload['baselines']}.json` (measured {payload['baselines_measured']}) on the same users."),
        "",
        markdown_table(payload["results"]),
        "ID generation for each target catalog (part of `index_seconds`):",
        "",
        *(f"* {r['corpus']}: {r['catalog_size']:,} items indexed in {r['index_seconds']:.0f} s, IDs unique: {r['unique_ids']}; "
          f"measured on {r.get('measured_on', env['cpu'])}"
          for r in payload["results"] if r["method"] == METHOD),
        "",
        f"![zero-shot chart]({payload['chart']})",
    ]
    return "\n".join(lines) + "\n"


def flags(parser) -> None:
    parser.add_argument("--batch-size", type=int, default=16, help="users per beam-search batch (a GPU takes 128 or more)")
    parser.add_argument("--baselines", default="baselines", help="results/<NAME>.json of benchmarks/baselines.py to compare with")
    parser.add_argument("--name", default="zeroshot", help="write results/<NAME>.{json,md,png}; --max-users 0 means every user")
    parser.add_argument("--append", action="store_true",
                        help=f"keep the {METHOD} rows of results/<NAME>.json for targets not run now (their baselines are re-read); "
                             "with --targets '' only the baselines are refreshed")


def ordered(rows: list[dict]) -> list[dict]:
    return sorted(rows, key=lambda r: ORDER.index(r["method"]) if r["method"] in ORDER else 99)


def main() -> None:
    start = time.perf_counter()
    args, model = checkpoint_run(__doc__, "--max-users", 2000, extra=flags)
    payload = {"checkpoint": args.checkpoint, "pretrained_corpora": model.pretrained_corpora, "max_users": args.max_users,
               "seed": args.seed, "num_beams": args.num_beams, "results": [], "baselines": args.baselines, "baselines_measured": ""}
    targets = [t for t in args.targets.split(",") if t]
    kept = []
    if args.append and (RESULTS / f"{args.name}.json").is_file():
        old = json.loads((RESULTS / f"{args.name}.json").read_text(encoding="utf-8"))
        if (old["checkpoint"], old["max_users"], old["seed"], old["num_beams"]) != (args.checkpoint, args.max_users, args.seed, args.num_beams):
            raise SystemExit(f"--append: results/{args.name}.json holds another checkpoint, --max-users, --seed or --num-beams; drop --append")
        kept = [r for r in old["results"] if r["method"] == METHOD and r["corpus"] not in targets]
        payload["wall_seconds_before"] = old.get("wall_seconds", 0) + old.get("wall_seconds_before", 0)
        payload["earlier_runs"] = [*old.get("earlier_runs", []), old["environment"]]
    for ours in kept:
        baselines, payload["baselines_measured"] = baseline_rows(args.baselines, ours["corpus"], ours["users_evaluated"], args.seed)
        payload["results"] += ordered([*baselines, ours])
    for target in targets:
        zs = ZeroShotArguments(target=target, checkpoint=args.checkpoint, data_dir=args.data_dir, max_users=args.max_users or None,
                               seed=args.seed, num_beams=args.num_beams, batch_size=args.batch_size, device=args.device)
        ours = run_target(model, target, zs)[0]
        env = environment()
        ours["measured_on"] = env.get("gpu") or env["cpu"]
        baselines, payload["baselines_measured"] = baseline_rows(args.baselines, target, ours["users_evaluated"], args.seed)
        payload["results"] += ordered([*baselines, ours])
        payload.update(environment=env, wall_seconds=time.perf_counter() - start, chart=plot(payload["results"], args.name))
        write_results(args.name, payload, report(payload))
        print(markdown_table([r for r in payload["results"] if r["corpus"] == target]), flush=True)
    if not targets:
        if not payload["results"]:
            raise SystemExit(f"nothing to refresh: results/{args.name}.json has no {METHOD} rows; pass --targets")
        payload.update(environment=environment(), wall_seconds=0.0, chart=plot(payload["results"], args.name))
        write_results(args.name, payload, report(payload))


if __name__ == "__main__":
    main()
