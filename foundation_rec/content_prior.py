"""The content prior: which item comes next, judged from item texts alone, learned on the pre-training pool.

A :class:`ContentScorer` reads the frozen all-MiniLM-L6-v2 vectors of a user's history (the same
cached vectors as :mod:`foundation_rec.content` and text-kNN) and scores every catalog item::

    q      = a * sum_i w_i v_i           w = softmax(position logits), recency-aware
    s(j)   = (cos(q, b * v_j) + c * cos(v_j, m)) / T
             v_j: item j's text vector, * per dimension; m: the mean of the ranked catalog's vectors

``a`` and ``b`` (one weight per MiniLM dimension) start at one, the position logits and ``c`` at
zero and ``T`` at 0.05, so an untrained scorer ranks exactly as text-kNN does (cosine to the mean
history vector). ``cos(v_j, m)`` is how typical of its catalog an item's text is, computed from the
catalog's own item texts (so still zero-shot). On the pool ``c`` comes out negative (-0.45 in the
default run): it is a hubness correction, as CSLS is for cross-lingual word retrieval. Items near
the catalog's centre have a high cosine to every history and crowd every user's list; discounting
them lifted zero-shot N@10 on all five targets, and pool validation chose it
(FINDINGS.md, *Typicality term in the prior*). It has ``2 * 384 + 20 + 2``
parameters: a reweighting of the text space, a recency profile and a typicality weight, too few
to memorise the pre-training catalogues. (Full ``384 x 384`` maps, and rank-16
updates of the identity, fit the pool better but transferred worse in an earlier probe:
Steam N@10 .0016-.0026 against text-kNN's .0060; see benchmarks/RESULTS.md.) :func:`train_scorer`
fits them on the pool's training examples with a full softmax over the example's own corpus (the
next item against every other item of that platform), keeping the epoch with the best in-pool
validation NDCG@10. It reads only item texts, so it applies unchanged to a platform it never saw.

Zero-shot, ``log_softmax(s)`` over the target catalog is a per-user prior over its items;
:meth:`foundation_rec.trie.Trie.best_below` gives the best prior below each trie node, so
constrained generation scores ``sum log p(token) / length + gamma * log prior(item)``
(:class:`foundation_rec.recommender.CatalogRecommender`, ``content_prior=gamma``).

Saved next to the recommender as ``scorer.safetensors`` + ``scorer.json`` (with how it was trained).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

from .baselines.common import pad_items
from .checkpoint import load_module
from .errors import FoundationRecError
from .metrics import ndcg_at_k
from .signals import PlatformCounts, PlatformSignals, latest_similarity, repeat_mixture, signal_logits

FILE, INFO = "scorer.safetensors", "scorer.json"


SELECT_STATISTICS = ("N@10", "loss")  # what may pick a scorer's epoch on validation (ScorerConfig.select)


@dataclass
class ScorerConfig:
    """How a :class:`ContentScorer` is trained (recorded in ``scorer.json``)."""

    epochs: int = 4
    lr: float = 1e-2
    batch_size: int = 256
    seed: int = 42
    select: str = "N@10"  # what picks the epoch on validation (SELECT_STATISTICS): N@10, or loss (mean cross-entropy, steadier on few users)


def catalog_digest(name: str, item_ids: Sequence[str]) -> str:
    """A short key of one catalog: its name and its item ids in row order."""
    digest = hashlib.blake2b(name.encode("utf-8") + b"\0", digest_size=8)
    for item in item_ids:
        digest.update(str(item).encode("utf-8") + b"\0")
    return digest.hexdigest()


class CatalogOffsets(torch.nn.Module):
    """Per-item offsets to the text vectors of the one catalog a scorer was fine-tuned on (``foundation_rec.finetune``):
    the prior reads ``v_j + E_j`` there, where the platform's logs moved item j, and ``v_j`` on every other catalog.
    ``E`` starts at zero, so an unfitted offset table changes nothing."""

    def __init__(self, name: str, digest: str, items: int, dim: int):
        super().__init__()
        self.name, self.digest = name, digest
        self.offsets = torch.nn.Parameter(torch.zeros(items, dim))

    def forward(self, vectors: torch.Tensor) -> torch.Tensor:
        return vectors + self.offsets

    def info(self) -> dict:
        return {"name": self.name, "digest": self.digest, "items": int(self.offsets.shape[0])}


class ContentScorer(torch.nn.Module):
    """History text vectors -> a score for every item's text vector (see the module docstring)."""

    def __init__(self, dim: int, max_history: int, typicality: bool = True, signals: bool = True, catalog: dict | None = None):
        super().__init__()
        self.dim, self.max_history = dim, max_history
        self.query_scale = torch.nn.Parameter(torch.ones(dim))
        self.item_scale = torch.nn.Parameter(torch.ones(dim))
        self.position = torch.nn.Parameter(torch.zeros(max_history))
        self.log_temperature = torch.nn.Parameter(torch.tensor(math.log(0.05)))
        if typicality:
            self.typicality = torch.nn.Parameter(torch.tensor(0.0))
        else:  # scorers saved before the term existed: it stays off, and their files load unchanged
            self.register_buffer("typicality", torch.tensor(0.0), persistent=False)
        # the platform's popularity with counts (foundation_rec.signals); None in scorers saved before it
        self.signals = PlatformSignals() if signals else None
        # the fine-tuned catalog's item offsets (CatalogOffsets); None: a scorer that reads item texts only
        self.catalog = CatalogOffsets(catalog["name"], catalog["digest"], int(catalog["items"]), dim) if catalog else None
        self.record: dict = {}

    def fit_catalog(self, name: str, item_ids: Sequence[str]) -> None:
        """Give the scorer zero offsets for catalog ``name`` (rows ``item_ids``), to be learned on its logs."""
        self.catalog = CatalogOffsets(name, catalog_digest(name, item_ids), len(item_ids), self.dim)

    def prior_vectors(self, name: str, item_ids: Sequence[str], vectors: torch.Tensor) -> torch.Tensor:
        """The vectors the prior reads for a catalog: ``vectors`` moved by the offsets when it is the fine-tuned
        catalog (same name and item ids), else ``vectors`` unchanged."""
        if self.catalog is None or self.catalog.name != name or len(item_ids) != self.catalog.offsets.shape[0]:
            return vectors
        if catalog_digest(name, item_ids) != self.catalog.digest:
            return vectors
        with torch.no_grad():
            return self.catalog(vectors.float())

    def query(self, histories: torch.Tensor, vectors: torch.Tensor) -> torch.Tensor:
        """``[B, dim]`` unit queries of right-aligned histories ``[B, L]`` (item rows of ``vectors``, -1 padded)."""
        length = histories.shape[1]
        weights = torch.where(histories >= 0, self.position[-length:], -torch.inf).softmax(-1).nan_to_num(0.0)
        pooled = (weights.unsqueeze(-1) * vectors[histories.clamp(min=0)]).sum(1)
        return torch.nn.functional.normalize(pooled * self.query_scale, dim=-1)

    def forward(self, histories: torch.Tensor, vectors: torch.Tensor) -> torch.Tensor:
        """``[B, items]`` scores of every row of ``vectors`` (the whole catalog: its mean is ``m``) for each history."""
        items = torch.nn.functional.normalize(vectors * self.item_scale, dim=-1)
        unit = torch.nn.functional.normalize(vectors, dim=-1)
        typical = unit @ torch.nn.functional.normalize(unit.mean(0), dim=0)
        return (self.query(histories, vectors) @ items.T + self.typicality * typical) / self.log_temperature.exp()

    def explore_logits(self, histories: torch.Tensor, vectors: torch.Tensor, counts: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        """:meth:`forward`, plus the platform's popularity when ``counts`` ``(popularity, recent)`` are given and the scorer has signals."""
        logits = self(histories, vectors)
        return logits if counts is None or self.signals is None else self.signals(logits, *counts)

    def log_prior(self, histories: list[np.ndarray], vectors: torch.Tensor, counts: PlatformCounts | None = None) -> torch.Tensor:
        """``[B, items]`` log-probabilities over the catalog (the rows of ``vectors``) for item-row histories:
        the explore prior (with the platform's popularity under ``counts``, by the weights calibrated on the platform's
        held-out items when it has them, :mod:`foundation_rec.calibration`, else the pool's) mixed with repeats of the
        history (:func:`foundation_rec.signals.repeat_mixture`; strict without ``counts``)."""
        features = None if counts is None else tuple(torch.from_numpy(c).float() for c in (counts.popularity, counts.recent))
        with torch.no_grad():
            if counts is not None and counts.calibration is not None:  # weights chosen on the platform's held-out items
                logits = signal_logits(counts.calibration.weights, self(right_aligned(histories, self.max_history), vectors.float()),
                                       latest_similarity(histories, vectors), *(torch.log1p(f) for f in features))
            else:
                logits = self.explore_logits(right_aligned(histories, self.max_history), vectors.float(), features)
            return repeat_mixture(logits, histories, counts)

    def save(self, folder: Path) -> None:
        """Write ``scorer.safetensors`` and ``scorer.json`` into ``folder`` (an already staged directory)."""
        save_file({k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}, str(folder / FILE))
        # "signals": the platform-signal fit (weights, corpora, rank calibration), true before the fit, false without signals
        info = {"dim": self.dim, "max_history": self.max_history, "typicality": isinstance(self.typicality, torch.nn.Parameter),
                **self.record, "signals": self.record.get("signals") or self.signals is not None}
        if self.catalog is not None:
            info["catalog"] = self.catalog.info()
        (folder / INFO).write_text(json.dumps(info, indent=2), encoding="utf-8")


def load_scorer(folder: str | Path) -> ContentScorer | None:
    """The scorer saved in a recommender folder, or None when the checkpoint has none."""
    loaded = load_module(Path(folder), FILE, INFO, lambda info: ContentScorer(int(info["dim"]), int(info["max_history"]), bool(info.get("typicality", False)),
                                                                             bool(info.get("signals", False)), info.get("catalog")))
    if loaded is None:
        return None
    scorer, info = loaded
    scorer.record = {k: v for k, v in info.items() if k not in ("dim", "max_history", "typicality", "signals", "catalog")}
    if isinstance(info.get("signals"), dict):  # the platform-signal fit's record
        scorer.record["signals"] = info["signals"]
    scorer.train(False)
    return scorer


class PriorRanking:
    """The content scorer alone, in the evaluation harness's protocol: the catalog (rows of ``vectors``) ranked by
    its prior (strict, or with the platform's ``counts``)."""

    def __init__(self, scorer: ContentScorer | None, vectors: torch.Tensor | None, counts: PlatformCounts | None = None):
        if scorer is None or vectors is None:
            raise FoundationRecError("ranking by the content prior needs a checkpoint with a content scorer and the catalog's text vectors")
        self.scorer, self.vectors, self.counts = scorer, vectors, counts

    def recommend(self, histories: list[np.ndarray], k: int) -> np.ndarray:
        top = [self.scorer.log_prior(histories[lo : lo + 256], self.vectors, self.counts).topk(min(k, len(self.vectors))).indices.numpy()
               for lo in range(0, len(histories), 256)]
        return pad_items(np.concatenate(top), k)  # a catalog under k items: -1 after its last


def right_aligned(histories: list[np.ndarray], length: int) -> torch.Tensor:
    """``[B, length]`` long: each history's last ``length`` items at the right end, -1 before them."""
    out = torch.full((len(histories), length), -1, dtype=torch.long)
    for b, history in enumerate(histories):
        history = np.asarray(history, dtype=np.int64)[-length:]
        if len(history):
            out[b, length - len(history) :] = torch.from_numpy(history)
    return out


def own_corpus_logits(scorer: ContentScorer, examples, idx: np.ndarray, vectors: torch.Tensor, owner: torch.Tensor, counts=None):
    """For each corpus among examples ``idx``: ``(logits [n, corpus items], target rows [n])`` of its examples,
    scored against that corpus's items only (the next item competes with its own platform's catalog).

    ``owner`` ``[items]`` is each item's corpus, in contiguous blocks; histories never leave their corpus.
    Scoring one corpus's slice gives the same logits as scoring the whole pool and masking the rest.
    ``counts``, ``(popularity, recent)`` ``[items]`` each, adds the platform signals (:func:`corpus_counts`).
    """
    histories = right_aligned([examples.history(int(i)) for i in idx], scorer.max_history)
    targets = torch.tensor([examples.target(int(i)) for i in idx])
    corpus = owner[targets]
    for c in corpus.unique():
        lo, hi = (int(torch.searchsorted(owner, c, right=right)) for right in (False, True))
        mine = corpus == c
        local = torch.where(histories[mine] >= 0, histories[mine] - lo, -1)
        features = None if counts is None else tuple(f[lo:hi] for f in counts)
        yield scorer.explore_logits(local, vectors[lo:hi], features), targets[mine] - lo


def _batch_loss(scorer: ContentScorer, examples, idx: np.ndarray, vectors: torch.Tensor, owner: torch.Tensor, counts=None) -> torch.Tensor:
    """Mean cross-entropy of each example's next item against every item of its own corpus."""
    losses = [torch.nn.functional.cross_entropy(logits, targets, reduction="sum")
              for logits, targets in own_corpus_logits(scorer, examples, idx, vectors, owner, counts)]
    return torch.stack(losses).sum() / len(idx)


def _ranks_and_loss(scorer: ContentScorer, examples, vectors: torch.Tensor, owner: torch.Tensor, counts=None) -> tuple[np.ndarray, float]:
    """One pass over ``examples``: each next item's 0-based rank within its own corpus (the number of items scored
    strictly higher, so ties count in its favour) and the mean cross-entropy of the next items."""
    ranks, total = [], 0.0
    with torch.no_grad():
        for lo in range(0, len(examples), 512):
            idx = np.arange(lo, min(lo + 512, len(examples)))
            for logits, targets in own_corpus_logits(scorer, examples, idx, vectors, owner, counts):
                ranks.append((logits > logits.gather(1, targets[:, None])).sum(1).numpy())
                total += torch.nn.functional.cross_entropy(logits, targets, reduction="sum").item()
    return (np.concatenate(ranks) if ranks else np.zeros(0, np.int64)), total / max(len(examples), 1)


def scorer_ndcg(scorer: ContentScorer, examples, vectors: torch.Tensor, owner: torch.Tensor, k: int = 10, counts=None) -> float:
    """NDCG@k (:func:`foundation_rec.metrics.ndcg_at_k`) of the next item within its own corpus, full ranking; its
    0-based rank is the number of items scored strictly higher (ties count in the item's favour)."""
    return ndcg_at_k(_ranks_and_loss(scorer, examples, vectors, owner, counts)[0], k)


def scorer_loss(scorer: ContentScorer, examples, vectors: torch.Tensor, owner: torch.Tensor, counts=None) -> float:
    """Mean cross-entropy ``-1/n sum_u log p(next_u | history_u)`` of each example's next item over its own corpus's
    items: a validation statistic that reads every target's full score, steadier than N@10 on a few hundred users."""
    return _ranks_and_loss(scorer, examples, vectors, owner, counts)[1]


def _validate(scorer: ContentScorer, valid, vectors: torch.Tensor, owner: torch.Tensor, config: ScorerConfig, counts) -> tuple[float, dict]:
    """``(score, record)`` of one validation pass: the score that picks the epoch (higher is better) and what to log."""
    ranks, loss = _ranks_and_loss(scorer, valid, vectors, owner, counts)
    ndcg = ndcg_at_k(ranks, 10)
    if config.select == "N@10":
        return ndcg, {"valid_N@10": round(ndcg, 5)}
    return -loss, {"valid_N@10": round(ndcg, 5), "valid_loss": round(loss, 5)}


def train_scorer(vectors: torch.Tensor | Callable[[], torch.Tensor], owner: torch.Tensor, train, valid, config: ScorerConfig, max_history: int,
                 log=print, model: ContentScorer | None = None, counts=None, parameters=None) -> ContentScorer:
    """Fit a :class:`ContentScorer` (or go on training ``model``) on ``train`` examples (pool
    :class:`~foundation_rec.pool.PoolExamples`), items ``vectors`` ``[items, dim]`` of corpus
    ``owner`` ``[items]``; keep the epoch best on ``valid``. With ``counts`` (:func:`corpus_counts`)
    the platform signals take part; ``parameters`` limits what is trained (default: all). ``vectors`` may be a function
    returning them, called at every step (the fine-tuned catalog's offset vectors, :class:`CatalogOffsets`)."""
    read = vectors if callable(vectors) else (lambda: vectors)

    def fixed() -> torch.Tensor:
        with torch.no_grad():
            return read()

    generator = torch.Generator().manual_seed(config.seed)
    scorer = model if model is not None else ContentScorer(read().shape[1], max_history)
    optimizer = torch.optim.AdamW(scorer.parameters() if parameters is None else parameters, lr=config.lr, weight_decay=0.0)
    if config.select not in SELECT_STATISTICS:
        raise FoundationRecError(f"unknown validation statistic {config.select!r}; use {' or '.join(SELECT_STATISTICS)}")
    best, first = _validate(scorer, valid, fixed(), owner, config, counts)
    history = [{"epoch": 0, **first}]
    chosen = history[0]
    state = {k: v.clone() for k, v in scorer.state_dict().items()}
    start = time.perf_counter()
    for epoch in range(1, config.epochs + 1):
        scorer.train(True)
        order = torch.randperm(len(train), generator=generator).numpy()
        for lo in range(0, len(order), config.batch_size):
            loss = _batch_loss(scorer, train, order[lo : lo + config.batch_size], read(), owner, counts)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        scorer.train(False)
        score, found = _validate(scorer, valid, fixed(), owner, config, counts)
        history.append({"epoch": epoch, **found, "loss": round(loss.item(), 4)})
        elapsed = time.perf_counter() - start
        shown = ", ".join(f"{k.removeprefix('valid_')} {v:.4f}" for k, v in found.items())
        log(f"content prior: epoch {epoch}/{config.epochs}, valid {shown} (at the start: N@10 {history[0]['valid_N@10']:.4f}), "
            f"ETA {elapsed / epoch * (config.epochs - epoch):.0f} s")
        if score > best:
            best, chosen, state = score, history[-1], {k: v.clone() for k, v in scorer.state_dict().items()}
    scorer.load_state_dict(state)
    scorer.record = {"config": asdict(config), "history": history, "best_valid_N@10": chosen["valid_N@10"], "best_epoch": chosen["epoch"],
                     "examples": len(train), "seconds": round(time.perf_counter() - start, 1)}
    return scorer


SIGNALS_CONFIG = ScorerConfig(epochs=8, lr=2e-2, batch_size=1024)
SIGNAL_MAX_ITEMS = 15_000  # the platform signals are fitted on the pool corpora with at most this many items, ranked against their whole catalogs
SIGNAL_USERS = 2_000  # validation users per such corpus


def corpus_counts(corpora) -> tuple[torch.Tensor, torch.Tensor]:
    """``(popularity, recent)`` over the concatenated catalogs of ``corpora``: each corpus's training-split counts."""
    counts = [PlatformCounts.from_corpus(c) for c in corpora]
    return tuple(torch.from_numpy(np.concatenate([getattr(c, f) for c in counts])).float() for f in ("popularity", "recent"))


def fit_signals(scorer: ContentScorer, pool, progress: bool = True, seed: int = 42) -> None:
    """Fit the scorer's platform-signal weights (content frozen) on the pool's corpora
    with at most :data:`SIGNAL_MAX_ITEMS` items: :data:`SIGNAL_USERS` validation users each, ranked against the whole
    catalog with the corpus's training-split counts (a validation target is never in a training split)."""
    from .pool import Pool
    from .text_embeddings import item_vectors

    log = print if progress else (lambda _: None)
    corpora = [c for c in (pool.sources or pool.corpora) if len(c.items) <= SIGNAL_MAX_ITEMS] or list(pool.sources or pool.corpora)
    whole = Pool(corpora, pool.max_history)
    vectors, _ = item_vectors(whole.texts(), "platform-signal corpora", progress)
    owner = torch.from_numpy(np.repeat(np.arange(len(corpora)), np.diff(whole.offsets)))
    counts = corpus_counts(corpora)
    valid = whole.examples("valid", SIGNAL_USERS, seed)
    log(f"platform signals: popularity weights on {len(valid):,} validation users of {', '.join(c.name for c in corpora)}")
    record = scorer.record
    train_scorer(vectors, owner, valid, valid, dataclasses.replace(SIGNALS_CONFIG, seed=seed), pool.max_history, log,
                 model=scorer, counts=counts, parameters=[scorer.signals.weights])
    record["signals"] = {**scorer.record, "weights": [round(w, 4) for w in scorer.signals.weights.tolist()],
                         "corpora": [c.name for c in corpora]}
    scorer.record = record


def train_on_pool(pool, config: ScorerConfig, progress: bool = True) -> ContentScorer:
    """:func:`train_scorer` on a pre-training :class:`~foundation_rec.pool.Pool`: its items' cached MiniLM
    vectors, every training example, and every validation example for the choice of epoch; then
    :func:`fit_signals`."""
    from .text_embeddings import item_vectors

    vectors, _ = item_vectors(pool.texts(), "pre-training pool", progress)
    owner = torch.from_numpy(np.repeat(np.arange(len(pool.corpora)), np.diff(pool.offsets)))
    log = print if progress else (lambda _: None)
    scorer = train_scorer(vectors, owner, pool.examples("train"), pool.examples("valid"), config, pool.max_history, log)
    if scorer.signals is not None:
        fit_signals(scorer, pool, progress, config.seed)
    return scorer
