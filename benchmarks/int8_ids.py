"""Int8 against fp32 ID generation: cold seconds, shared IDs, and zero-shot accuracy on the same users.

    python benchmarks/int8_ids.py --checkpoint runs/pretrain/best --targets movielens-100k,yelp --max-users 2000 --threads 2

For each target, the checkpoint's generator names every item from nothing twice in one process
(``precision="fp32"``, then ``"int8"``, int8.py), then each ID set is indexed (trie, MiniLM
vectors) and evaluated with the default zero-shot method (``idgenrec-zeroshot``, content prior as
``zeroshot``'s default) on the same fixed-seed test users, history kept and excluded; text-kNN
runs on those users as the reference. The question is whether int8's faster IDs cost accuracy.
Writes ``results/int8_ids.{json,md}``.
"""

from __future__ import annotations

import dataclasses
import time

from common import checkpoint_run, environment, provenance, write_table

from foundation_rec.api import DEFAULT
from foundation_rec.baselines import evaluate_methods
from foundation_rec.corpora import load_corpus
from foundation_rec.evaluate import evaluate_settings


def measure(model, target: str, users: int, seed: int, data_dir) -> list[dict]:
    corpus = load_corpus(target, data_dir)
    texts = corpus.items.data.column("text").to_pylist()
    runs = []
    for precision in ("fp32", "int8"):
        model.generator.config = dataclasses.replace(model.generator.config, precision=precision)
        start = time.perf_counter()
        assignment = model.generator.assign(texts, set(), progress=True)
        runs.append({"precision": precision, "seconds": round(time.perf_counter() - start, 2), "ids": assignment.ids,
                     "fallbacks": assignment.fallbacks, "unique": len(set(assignment.ids)) == len(texts)})
    for run in runs:
        model._catalog_ids = lambda name, texts, progress, ids=run["ids"]: ids  # index these IDs, not the cached ones
        model.index_catalog(corpus, progress=False)
        rec = model.catalog_recommender()
        run["results"] = evaluate_settings(corpus, rec, DEFAULT, max_users=users, seed=seed, progress=True)
        run["same_ids_share"] = round(sum(a == b for a, b in zip(runs[0]["ids"], run["ids"], strict=True)) / len(texts), 4)
    del model._catalog_ids
    knn = evaluate_methods(corpus, ["text-knn"], max_users=users, seed=seed, exclude_history=(False, True), progress=True)
    rows = [{"target": target, "items": len(texts), "method": f"{DEFAULT} ({r['precision']} IDs)", "precision": r["precision"],
             "id_seconds": r["seconds"], "same_ids_share": r["same_ids_share"], "fallbacks": r["fallbacks"], "unique": r["unique"],
             "metrics": [{"exclude_history": x["exclude_history"], "users": x["users_evaluated"], **x["metrics"]} for x in r["results"]]}
            for r in runs]
    rows.append({"target": target, "items": len(texts), "method": "text-knn",
                 "metrics": [{"exclude_history": x["exclude_history"], "users": x["users_evaluated"], **x["metrics"]} for x in knn]})
    return rows


def main() -> None:
    args, model = checkpoint_run(__doc__, "--max-users", 2000)
    payload = {"checkpoint": args.checkpoint, "results": []}
    table = []
    for target in args.targets.split(","):
        rows = measure(model, target, args.max_users, args.seed, args.data_dir)
        payload["results"] += rows
        for row in rows:
            kept, excluded = row["metrics"]
            table.append([target, f"{row['items']:,}", row["method"], row.get("id_seconds", ""),
                          f"{100 * row['same_ids_share']:.1f}%" if "same_ids_share" in row else "", kept["users"],
                          f"{kept['R@10']:.4f}", f"{kept['N@10']:.4f}", f"{excluded['R@10']:.4f}", f"{excluded['N@10']:.4f}"])
        payload["environment"] = environment()
        write_table("int8_ids", payload, "# Int8 against fp32 ID generation", provenance(payload["environment"]) +
                    f" Checkpoint `{args.checkpoint}`; nothing trained on the target; fixed-seed test users (seed {args.seed}), the same for every row "
                    "of a target; full ranking. ID seconds: cold generation of every item's ID; same IDs: share of items with the fp32 ID.",
                    ["target", "items", "method", "ID seconds", "same IDs", "users", "R@10 (history kept)", "N@10 (kept)",
                     "R@10 (history excluded)", "N@10 (excluded)"], table)
        print(table[-3:], flush=True)


if __name__ == "__main__":
    main()
