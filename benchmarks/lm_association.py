"""World knowledge, conditional: does SmolLM2 know which title follows a user's history, beyond the content prior?

    python benchmarks/lm_association.py --checkpoint runs/pretrain/best [--targets movielens-100k,steam] [--max-users 300]

A pretrained language model has read lists of films, games and books that people name together. Its *association*
of a candidate title with a user's history is the pointwise mutual information

    pmi(c | h) = log p(title_c | list of h's titles) - log p(title_c | the same list, empty)

(sums over the candidate's tokens and its closing newline, SmolLM2-135M, offline, untrained). Subtracting the empty
list's likelihood removes what :mod:`lm_fame` measured (short, common words score high), leaving what the history adds.
The checkpoint's strict content prior proposes its top ``--candidates`` items; they are re-ranked by
``log prior + w * pmi`` for each ``w`` of ``--weights`` (``w = 0`` is the prior alone), on the transfer benchmark's
fixed-seed users. This is a diagnostic: the weights are swept on the targets (an upper bound on what the signal
gives); a shipped weight would be fitted on the Amazon pool. Writes ``results/<--name>.{json,md}``.
"""

from __future__ import annotations

import time

import numpy as np
import torch
from common import FixedRanking, smollm2_diagnostic

from foundation_rec.corpora import load_corpus
from foundation_rec.evaluate import evaluate_examples, examples

PROMPT = "A list of {domain} that one person liked, in the order they found them:\n"


class Association:
    """SmolLM2 log-likelihoods of candidate titles after a user's list of titles, with the prompt's keys cached."""

    def __init__(self, backbone, titles: list[str], domain: str, max_title_tokens: int = 24):
        self.tok, self.model = backbone.tokenizer, backbone.hf_model
        self.header = self.tok(PROMPT.format(domain=domain or "items"), add_special_tokens=False)["input_ids"]
        self.titles = [self.tok("- " + (t or "untitled").strip(), add_special_tokens=False)["input_ids"][:max_title_tokens] for t in titles]
        self.newline = self.tok("\n", add_special_tokens=False)["input_ids"]
        self.empty: dict[int, float] = {}

    @torch.no_grad()
    def loglik(self, items: list[int], candidates: list[int]) -> np.ndarray:
        """Sum of log p(candidate's title tokens and newline | header, the items' titles one per line)."""
        prompt = list(self.header)
        for i in items:
            prompt += self.titles[i] + self.newline
        out = self.model(input_ids=torch.tensor([prompt]), use_cache=True)
        first = torch.log_softmax(out.logits[0, -1].float(), -1)
        rows = [self.titles[c] + self.newline for c in candidates]
        width = max(map(len, rows))
        ids = torch.full((len(rows), width), self.tok.pad_token_id or 0)
        real = torch.zeros((len(rows), width), dtype=torch.bool)
        for r, row in enumerate(rows):
            ids[r, : len(row)], real[r, : len(row)] = torch.tensor(row), True
        cache = out.past_key_values
        cache.batch_repeat_interleave(len(rows))
        mask = torch.cat([torch.ones(len(rows), len(prompt), dtype=torch.long), real.long()], 1)
        logits = self.model(input_ids=ids, attention_mask=mask, past_key_values=cache, use_cache=False).logits.float()
        logp = torch.log_softmax(logits[:, :-1], -1).gather(2, ids[:, 1:, None])[..., 0]
        total = first[ids[:, 0]] + (logp * real[:, 1:]).sum(1)
        return total.numpy()

    def pmi(self, history: list[int], candidates: list[int]) -> np.ndarray:
        missing = [c for c in candidates if c not in self.empty]
        if missing:
            self.empty.update(zip(missing, self.loglik([], missing).tolist()))
        return self.loglik(history, candidates) - np.array([self.empty[c] for c in candidates])


def score_users(model, assoc: Association, ex, catalog, name: str, args) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per user: the prior's top ``max(--candidates, 30)`` items (30 fill a top 10 after dropping 20 history items),
    their log prior, and the pmi of the first ``--candidates``."""
    orders, priors, pmis, start = [], [], [], time.perf_counter()
    for u, h in enumerate(ex.histories):
        prior = model.recommender.scorer.log_prior([h], catalog.vectors)[0]
        order = torch.argsort(prior, descending=True)[: max(args.candidates, 30)].numpy()
        orders.append(order)
        priors.append(prior[order].numpy())
        pmis.append(assoc.pmi(np.asarray(h)[-args.history_items :].tolist(), order[: args.candidates].tolist()))
        if (u + 1) % 50 == 0:
            rate = (u + 1) / (time.perf_counter() - start)
            print(f"  {name}: {u + 1}/{len(ex)} users, {rate:.2f} users/s, ETA {(len(ex) - u - 1) / rate / 60:.1f} min", flush=True)
    return np.stack(orders), np.stack(priors), np.stack(pmis)


def run(model, backbone, target: str, args) -> list[list]:
    corpus = load_corpus(target, args.data_dir)
    catalog = model.index_catalog(corpus, progress=False)
    ex = examples(corpus, "test", args.max_users, args.seed)
    start = time.perf_counter()
    assoc = Association(backbone, catalog.titles, corpus.meta.get("domain", ""))
    order, prior, pmi = score_users(model, assoc, ex, catalog, corpus.name, args)
    seconds = time.perf_counter() - start
    head = pmi.shape[1]
    rows, base = [], None
    for w in args.weights:
        name = "prior alone" if w == 0 else f"prior + {w:g} pmi"
        top = np.take_along_axis(order[:, :head], np.argsort(-(prior[:, :head] + w * pmi), axis=1, kind="stable"), axis=1)
        ranking = FixedRanking(ex.histories, np.concatenate([top, order[:, head:]], axis=1))
        kept, excluded = (r["N@10"] for r in evaluate_examples(ex, ranking, name, len(catalog.ids), (False, True)))
        base = base or (kept, excluded)
        rows.append([target, name, f"{kept:.4f}", f"{kept / max(base[0], 1e-9):.2f}x", f"{excluded:.4f}", f"{excluded / max(base[1], 1e-9):.2f}x",
                     f"{len(ex)}", f"{seconds / max(len(ex), 1):.2f}"])
        print(" | ".join(rows[-1]), flush=True)
    return rows


def flags(parser) -> None:
    parser.add_argument("--candidates", type=int, default=30, help="the prior's top items that SmolLM2 re-ranks")
    parser.add_argument("--history-items", type=int, default=10, help="the user's latest items listed in the prompt")
    parser.add_argument("--weights", type=float, nargs="+", default=[0.0, 0.05, 0.1, 0.2, 0.5, 1.0])
    parser.add_argument("--name", default="lm_association")
    parser.set_defaults(targets="movielens-100k,steam", max_users=300, threads=1)


TITLE = "# World knowledge, conditional: SmolLM2-135M's association of a title with the user's history"
HEADER = ["target", "ranking", "N@10 kept", "vs prior", "N@10 excluded", "vs prior", "users", "s/user"]


def note(args) -> str:
    return (f"Checkpoint `{args.checkpoint}`; the strict prior's top {args.candidates} re-ranked by log prior + w x pmi, "
            f"pmi = log p(title | the user's latest {args.history_items} titles) - log p(title | no titles) under SmolLM2-135M "
            "(untrained); N@10 on the transfer benchmark's users (weights swept on the targets: a diagnostic, not a shipped setting).")


def main() -> None:
    smollm2_diagnostic(__doc__, 300, flags, run, TITLE, note, HEADER)


if __name__ == "__main__":
    main()
