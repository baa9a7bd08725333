"""Content-prior variants: which scorer design transfers best, chosen on the pool, reported on the targets.

    python benchmarks/scorer_variants.py [--variants base,typicality,multi,bias,more-users] [--max-users 2000]

Every variant is trained on the same pre-training pool as ``pretrain --corpora all`` (300 seeded
users per Amazon corpus, seed 42) with the same recipe (4 epochs, lr 1e-2, the best epoch on the
pool's validation items), then ranks each target's whole catalog on the same fixed-seed test users
as ``benchmarks/transfer.py`` (text-kNN in the same run). The variants:

* ``base``: :class:`foundation_rec.content_prior.ContentScorer` without its typicality term (mean
  of the history's reweighted vectors, cosine to each item): the scorer of sessions 9-10;
* ``typicality``: the scorer as shipped now, ``base`` plus a learned weight on each item's cosine to
  its catalog's mean text vector (how typical of the catalog the item's text is);
* ``multi``: plus a multi-interest term, a soft maximum over the history items of each item's
  cosine to them (``tau * logsumexp(cos / tau)``), mixed with the mean by a learned weight;
* ``bias``: plus a learned item term ``u . v_j`` (a direction of "likely next" items in text space);
* ``more-users``: ``base`` trained also on every other user of each Amazon corpus, their sequences
  cut to the pool's items (more examples, no new item texts to encode), selected on the same
  validation users.

Results: ``results/scorer_variants.{json,md}``.
"""

from __future__ import annotations

import argparse
import functools
import math
import time

import datasets
import numpy as np
import torch
from common import TARGETS, environment, provenance, write_results

from foundation_rec.baselines import evaluate_methods
from foundation_rec.content_prior import ContentScorer, PriorRanking, ScorerConfig, train_scorer
from foundation_rec.corpora import Corpus, load_corpus
from foundation_rec.evaluate import evaluate_settings
from foundation_rec.pool import Pool
from foundation_rec.pretrain import build_pool, parse_args
from foundation_rec.text_embeddings import item_vectors


class MultiInterestScorer(ContentScorer):
    """ContentScorer plus a soft maximum over the history items' cosines to each item."""

    def __init__(self, dim: int, max_history: int):
        super().__init__(dim, max_history, typicality=False)
        self.mix_logit = torch.nn.Parameter(torch.tensor(-2.0))
        self.log_tau = torch.nn.Parameter(torch.tensor(math.log(0.1)))

    def forward(self, histories, vectors):
        items = torch.nn.functional.normalize(vectors * self.item_scale, dim=-1)
        mean = self.query(histories, vectors) @ items.T
        hist = torch.nn.functional.normalize(vectors[histories.clamp(min=0)] * self.query_scale, dim=-1)
        tau = self.log_tau.exp()
        position = torch.where(histories >= 0, self.position[-histories.shape[1]:], -torch.inf).log_softmax(-1)
        sims = torch.einsum("bld,nd->bnl", hist, items) / tau + position[:, None, :]
        soft_max = tau * sims.logsumexp(-1).nan_to_num(0.0, neginf=0.0)
        mix = torch.sigmoid(self.mix_logit)
        return ((1 - mix) * mean + mix * soft_max) / self.log_temperature.exp()


class BiasScorer(ContentScorer):
    """ContentScorer plus a learned linear item term ``u . v_j``."""

    def __init__(self, dim: int, max_history: int):
        super().__init__(dim, max_history, typicality=False)
        self.item_bias = torch.nn.Parameter(torch.zeros(dim))

    def forward(self, histories, vectors):
        return super().forward(histories, vectors) + vectors @ self.item_bias


def with_other_users(sampled: Corpus, full: Corpus) -> Corpus:
    """``sampled`` plus every other user of ``full``, their sequences cut to ``sampled``'s items (length >= 3 kept)."""
    id_to_row = {i: r for r, i in enumerate(sampled.items.data.column("item_id").to_pylist())}
    full_ids = full.items.data.column("item_id").to_pylist()
    new_row = np.asarray([id_to_row.get(i, -1) for i in full_ids], dtype=np.int64)
    mine = set(sampled.sequences.data.column("user_id").to_pylist())
    columns = full.sequences.data.to_pydict()
    keep = {k: [] for k in columns}
    for i, items in enumerate(columns["items"]):
        if columns["user_id"][i] in mine:
            continue
        rows = new_row[np.asarray(items, dtype=np.int64)]
        chosen = np.flatnonzero(rows >= 0)
        if len(chosen) >= 3:
            for k in columns:
                value = columns[k][i]
                keep[k].append(rows[chosen].tolist() if k == "items" else
                               [value[j] for j in chosen] if isinstance(value, list) and len(value) == len(items) else value)
    extra = datasets.Dataset.from_dict(keep, features=full.sequences.features)
    both = datasets.concatenate_datasets([sampled.sequences, extra]).flatten_indices()
    return Corpus(sampled.name, sampled.platform, sampled.role, sampled.items, both, sampled.meta)


def train_variant(name: str, pool: Pool, vectors, owner, config: ScorerConfig, data_dir):
    without = functools.partial(ContentScorer, typicality=False)
    factories = {"base": without, "multi": MultiInterestScorer, "bias": BiasScorer, "more-users": without, "typicality": ContentScorer}
    train = pool.examples("train")
    if name == "more-users":
        bigger = Pool([with_other_users(c, load_corpus(c.name, data_dir)) for c in pool.corpora], pool.max_history)
        train = bigger.examples("train")
    model = factories[name](vectors.shape[1], pool.max_history)
    return train_scorer(vectors, owner, train, pool.examples("valid"), config, pool.max_history, model=model)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", default="base,typicality,multi,bias,more-users")
    parser.add_argument("--targets", default=",".join(TARGETS))
    parser.add_argument("--max-users", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0, help="seed of the target users' sample (transfer.py's)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--data-dir", default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    run, train_args, _ = parse_args(["--corpora", "all"] + (["--data-dir", args.data_dir] if args.data_dir else []))
    pool = build_pool(run, train_args.seed)
    vectors, _ = item_vectors(pool.texts(), "pre-training pool", False)
    owner = torch.from_numpy(np.repeat(np.arange(len(pool.corpora)), np.diff(pool.offsets)))
    config = ScorerConfig(epochs=run.content_prior_epochs, seed=train_args.seed)
    rows, trained = [], {}
    for name in args.variants.split(","):
        start = time.perf_counter()
        trained[name] = train_variant(name, pool, vectors, owner, config, args.data_dir)
        record = trained[name].record
        print(f"{name}: pool valid N@10 {record['best_valid_N@10']:.4f} ({record['examples']} examples, {time.perf_counter() - start:.0f} s)", flush=True)
    for target in args.targets.split(","):
        corpus = load_corpus(target, args.data_dir)
        users = None if args.max_users == 0 else args.max_users
        target_vectors, _ = item_vectors(corpus.items.data.column("text").to_pylist(), f"{target} items", False)
        rows.extend(evaluate_methods(corpus, ["text-knn"], max_users=users, seed=args.seed, exclude_history=(False, True), progress=False))
        for name, scorer in trained.items():
            for row in evaluate_settings(corpus, PriorRanking(scorer, target_vectors), name, (False, True), max_users=users, seed=args.seed, progress=False):
                row["pool_valid_N@10"] = scorer.record["best_valid_N@10"]
                rows.append(row)
        print(target, {r["method"]: round(r["metrics"]["N@10"], 4) for r in rows if r["corpus"] == target and not r["exclude_history"]}, flush=True)
    payload = {"environment": environment(), "command": "python benchmarks/scorer_variants.py " + " ".join(
        f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if v is not None), "results": rows,
        "pool_valid": {n: s.record for n, s in trained.items()}}
    write_results("scorer_variants", payload, markdown(payload, args.targets.split(","), list(trained)))


def markdown(payload: dict, targets: list[str], variants: list[str]) -> str:
    lines = [f"# Content-prior variants\n\n`{payload['command']}`\n\n{provenance(payload['environment'])}\n",
             "N@10, history kept (in brackets: as a multiple of text-kNN's on the same users); pool valid N@10 (the choice of the variant to ship) next to each.\n",
             "| variant | pool valid N@10 | " + " | ".join(targets) + " | geo-mean / text-kNN |", "|---|---|" + "---|" * (len(targets) + 1)]
    rows = payload["results"]

    def n10(target, method):
        return next(r["metrics"]["N@10"] for r in rows if r["corpus"] == target and r["method"] == method and not r["exclude_history"])
    lines.append("| text-knn | | " + " | ".join(f"{n10(t, 'text-knn'):.4f}" for t in targets) + " | 1.00 |")
    for v in variants:
        ratios = [n10(t, v) / max(n10(t, "text-knn"), 1e-9) for t in targets]
        geo = math.exp(sum(math.log(max(r, 1e-9)) for r in ratios) / len(ratios))
        cells = [f"{n10(t, v):.4f} ({r:.2f}x)" for t, r in zip(targets, ratios)]
        lines.append(f"| {v} | {payload['pool_valid'][v]['best_valid_N@10']:.4f} | " + " | ".join(cells) + f" | {geo:.2f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
