"""Does the recommender carry any signal the prior lacks? Exact product of experts over the prior's top candidates.

    python benchmarks/poe_exact.py --checkpoint runs/pretrain/best [--targets movielens-100k,steam] [--max-users 2000]

The shipped method adds gamma times the prior's log-probability to generation's score inside a 20-beam search, so
a weak language model can also lose good items to pruning. This removes the search from the question: for each
test user the content prior proposes its top ``--pool`` items, the recommender scores each exactly
(:meth:`GenerativeRecommender.score`: the length-normalised log-probability of the item's ID + EOS after the
history), and the items are ranked by ``log prior + lam * lm score`` for every ``lam`` of ``--lams``. ``lam = 0``
is the prior alone; if no ``lam > 0`` beats it, the language model's scores hold nothing the prior does not
already have for these users, whatever the search. Strict protocol, history kept and excluded, the same users
as ``benchmarks/transfer.py`` (same seed and sample size). Writes ``results/<--name>.{json,md}``.

``--pmi-histories N`` scores association instead of likelihood: the lm score becomes
``log p(c | history) - mean_j log p(c | h_j)`` over N fixed-seed histories ``h_j`` of other test users of the
same target, so what an item's ID scores under any history (the words the recommender learned to like on the
Amazon pool) cancels, and only what this user's history adds to it is left (pointwise mutual information).
"""

from __future__ import annotations

import time

import numpy as np
import torch
from common import FixedRanking, checkpoint_run, environment, provenance, write_table

from foundation_rec.api import FoundationRec
from foundation_rec.corpora import load_corpus
from foundation_rec.evaluate import evaluate_examples, examples
from foundation_rec.prompts import EVAL_TEMPLATE, PromptBuilder


def lm_scores(model: FoundationRec, catalog, histories: list[np.ndarray], candidates: np.ndarray, batch: int = 16) -> np.ndarray:
    """``[users, pool]``: the recommender's exact length-normalised log-probability of each candidate's ID."""
    prompts = PromptBuilder.for_training(model.recommender.tokenizer, model.config.get("train", {}), catalog.id_tokens)
    out = []
    for lo in range(0, len(histories), batch):
        built = [prompts.build(np.asarray(h, dtype=np.int64), EVAL_TEMPLATE) for h in histories[lo : lo + batch]]
        tokens = [[catalog.id_tokens[int(r)] for r in row] for row in candidates[lo : lo + batch]]
        out += model.recommender.score(built, tokens, catalog.vectors)
    return np.stack(out)


def background(model: FoundationRec, catalog, histories: list[np.ndarray], candidates: np.ndarray, n: int, seed: int) -> np.ndarray:
    """``[users, pool]``: each candidate's mean lm score over ``n`` fixed-seed histories of the same users (the marginal)."""
    items = np.unique(candidates)
    picks = np.random.default_rng(seed + 1).choice(len(histories), size=min(n, len(histories)), replace=False)
    per_item = np.mean([lm_scores(model, catalog, [histories[j]], items[None, :])[0] for j in picks], axis=0)
    return per_item[np.searchsorted(items, candidates)]


def run(model: FoundationRec, target: str, args) -> list[list]:
    corpus = load_corpus(target, args.data_dir)
    catalog = model.index_catalog(corpus, progress=False)
    ex = examples(corpus, "test", max_users=args.max_users, seed=args.seed)
    histories, targets = list(ex.histories), np.asarray(ex.targets)
    start = time.perf_counter()
    prior = torch.cat([model.recommender.scorer.log_prior(histories[lo : lo + 256], catalog.vectors) for lo in range(0, len(histories), 256)])
    top_prior, candidates = (x.numpy() for x in prior.topk(args.pool, dim=1))
    lm = lm_scores(model, catalog, histories, candidates)
    if args.pmi_histories:
        lm = lm - background(model, catalog, histories, candidates, args.pmi_histories, args.seed)
    seconds = time.perf_counter() - start
    rows = []
    base = {}
    for lam in args.lams:
        order = np.take_along_axis(candidates, np.argsort(-(top_prior + lam * lm), axis=1, kind="stable"), axis=1)
        kept, excluded = (r["N@10"] for r in evaluate_examples(ex, FixedRanking(histories, order), f"poe {lam:g}", len(catalog.ids), (False, True)))
        base.setdefault("kept", kept)
        base.setdefault("excluded", excluded)
        rows.append([target, f"{len(histories):,}", f"{lam:g}", f"{kept:.4f}", f"{kept / base['kept']:.2f}x" if base["kept"] else "-",
                     f"{excluded:.4f}", f"{excluded / base['excluded']:.2f}x" if base["excluded"] else "-", f"{seconds:.0f}"])
        print(" | ".join(rows[-1]), flush=True)
    hit = float(np.mean([t in c for t, c in zip(targets, candidates, strict=True)]))
    rows.append([target, "", f"(true item in the prior's top {args.pool}: {hit:.1%} of users)", "", "", "", "", ""])
    return rows


def flags(parser) -> None:
    parser.add_argument("--pool", type=int, default=100, help="the prior's top items the recommender scores")
    parser.add_argument("--lams", type=float, nargs="+", default=[0.0, 0.01, 0.03, 0.1, 0.3, 1.0])
    parser.add_argument("--pmi-histories", type=int, default=0, help="score association: subtract each item's mean score under this many other users' histories")
    parser.add_argument("--name", default="poe_exact")
    parser.set_defaults(targets="movielens-100k,steam", max_users=2000, threads=1)


def main() -> None:
    args, model = checkpoint_run(__doc__, "--max-users", 2000, extra=flags)
    rows = [row for target in args.targets.split(",") for row in run(model, target, args)]
    env = environment()
    pmi = f", minus its mean over {args.pmi_histories} other users' histories" if args.pmi_histories else ""
    write_table(args.name, {"environment": env, "rows": rows, "args": vars(args)},
                "# Exact product of experts: the prior's top candidates re-ranked with the recommender's exact scores",
                f"{provenance(env)} Checkpoint `{args.checkpoint}`; strict protocol; score = log prior + lam x (length-normalised "
                f"log p of the ID after the history{pmi}) over the prior's top {args.pool}; lam 0 is the prior alone. N@10.",
                ["target", "users", "lam", "N@10 kept", "vs prior", "N@10 excluded", "vs prior", "scoring s"], rows)


if __name__ == "__main__":
    main()
