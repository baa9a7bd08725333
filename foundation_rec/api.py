"""Python API: load a pre-trained foundation model, index any catalog, recommend.

    from foundation_rec import FoundationRec
    model = FoundationRec.from_pretrained("runs/pretrain/best")
    model.index_catalog("yelp")                       # a built-in corpus, a bring-your-own folder, or records
    model.recommend(["1", "Lucky Dragon noodles"], k=10)  # a history, oldest first: item ids or free-text names

Indexing a catalog generates a unique textual ID for each of its items with the shared ID generator
(unique within the catalog), and builds its prefix trie. The IDs are cached on disk, keyed by the
checkpoint and the catalog's texts, so a second indexing of the same catalog is instant. A history
entry that is not an item id of the catalog is resolved as free text (:mod:`foundation_rec.resolve`:
exact title, else the nearest title by MiniLM similarity above a threshold); an entry that matches
nothing is a one-line error, never a guess.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from . import atomic, calibration, checkpoint, defaults, int8
from .bundle import ModelBundle
from .content_prior import PriorRanking
from .corpora import Corpus, load_corpus, load_recipe
from .errors import FoundationRecError
from .idgen import PRECISIONS, IDGenerator
from .paths import cache_dir
from .prompts import PromptBuilder
from .recommender import CatalogRecommender, GenerativeRecommender
from .resolve import ItemResolver, Match
from .signals import COUNTS, PROTOCOLS, STRICT, PlatformCounts, read_counts_file
from .splits import MAX_HISTORY
from .text_embeddings import item_vectors
from .trie import Trie

MAX_HISTORY_LINES = 50  # longest history accepted

# The model's methods, one name each everywhere (rows of zeroshot, transfer and the demo); a method run with the
# platform's counts is labelled ``<method>+counts`` (:func:`method_label`).
DEFAULT = "idgenrec-zeroshot"  # what ships: trie-constrained generation plus gamma times the content prior
GENERATION = "idgenrec"  # generation alone (gamma 0): the language model without the prior
PRIOR = "content-prior"  # the content prior alone ranking the whole catalog: no language model
METHODS = (DEFAULT, GENERATION, PRIOR)


def method_label(method: str, protocol: str) -> str:
    """The row name of ``method`` run under ``protocol``: the name itself when strict, ``<method>+counts`` with counts."""
    return method if protocol == STRICT else f"{method}+{COUNTS}"


def parse_label(label: str) -> tuple[str, str]:
    """``(method, protocol)`` of a row name from :func:`method_label`, or a one-line error naming the choices."""
    method, counts = (label[: -len(COUNTS) - 1], COUNTS) if label.endswith(f"+{COUNTS}") else (label, STRICT)
    if method not in METHODS or (method == GENERATION and counts == COUNTS):
        choices = [method_label(m, p) for m in METHODS for p in PROTOCOLS if not (m == GENERATION and p == COUNTS)]
        raise FoundationRecError(f"unknown method {label!r}; use one of {', '.join(choices)}")
    return method, counts


@dataclass
class Catalog:
    """An indexed catalog: its items (``item_id``, ``title``, ``text``), their textual IDs, and its trie."""

    name: str
    platform: str
    item_ids: list[str]
    titles: list[str]
    texts: list[str]
    ids: list[str]
    trie: Trie
    id_tokens: list[list[int]]
    corpus: Corpus | None = None
    seconds: float = 0.0
    vectors: torch.Tensor | None = None  # frozen MiniLM vectors of the items (content-aware recommenders)
    counts: PlatformCounts | None = None  # the platform's counts (the "counts" protocol); None: strict only
    prior_vectors: torch.Tensor | None = None  # what the content prior reads: ``vectors``, moved by a fine-tuned scorer's offsets on its own catalog
    _row_of: dict[str, int] = field(default_factory=dict, repr=False)
    _resolver: ItemResolver | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self._row_of = {item: row for row, item in enumerate(self.item_ids)}

    def row(self, item_id: str) -> int | None:
        """Row of an original item id, or ``None`` when the catalog has no such item."""
        return self._row_of.get(str(item_id))

    def resolver(self, progress: bool = False) -> ItemResolver:
        """The free-text resolver of this catalog (title embeddings computed, or loaded from the cache, on first use)."""
        if self._resolver is None:
            self._resolver = ItemResolver(self.item_ids, self.titles, label=self.name, progress=progress)
        return self._resolver


def _records_corpus(records: Sequence[dict], name: str) -> tuple[list[str], list[str], list[str]]:
    """``(item_ids, titles, texts)`` of records ``{"item_id", "title", ...}``, rendered like a corpus."""
    from .corpora.text import clean, render

    if not records:
        raise FoundationRecError(f"catalog {name!r} is empty; give at least one item record")
    ids, titles, texts, seen = [], [], [], set()
    for n, rec in enumerate(records, 1):
        if not isinstance(rec, dict) or "item_id" not in rec:
            raise FoundationRecError(f"catalog {name!r}, record {n}: no item_id; give every record an item_id and metadata fields")
        item = str(rec["item_id"])
        if item in seen:
            raise FoundationRecError(f"catalog {name!r}, record {n}: duplicate item id {item!r}; keep one record per item")
        seen.add(item)
        fields = {k: v for k, v in rec.items() if k not in ("item_id", "count")}  # a count is a platform signal, not item text
        title = clean(fields.get("title", ""))
        if not title:
            raise FoundationRecError(f"catalog {name!r}, record {n} (item {item!r}): empty or missing title; give every record a non-empty title")
        ids.append(item)
        titles.append(title)
        texts.append(render(fields, ["title"]))
    return ids, titles, texts


def auto_precision(generator: IDGenerator) -> dict:
    """:func:`foundation_rec.int8.choose` for ``generator`` on the CPU: its model's linear layers timed on the rows
    of one batch of ID generation (items per batch times beams), in fp32 and in int8."""
    return int8.choose(generator.backbone.hf_model, generator.config.batch_size * generator.config.num_beams)


class FoundationRec:
    """A pre-trained ID generator and base recommender, ready to index catalogs and recommend."""

    def __init__(self, path: Path, config: dict, recommender: GenerativeRecommender, generator: IDGenerator, *, num_beams: int = defaults.NUM_BEAMS):
        self.path = path
        self.config = config
        self.recommender = recommender
        self.generator = generator
        self.num_beams = num_beams
        # gamma of generation's content prior (see CatalogRecommender): the one pre-training chose on pool validation
        self.content_prior = float(config.get("content_prior", defaults.CONTENT_PRIOR)) if recommender.scorer is not None else 0.0
        self.catalog: Catalog | None = None
        self.id_precision_choice: dict | None = None  # how id_precision="auto" chose (int8.choose's record); None when named
        # the generator's files (name, size, mtime) too: a run retrained into the same directory gets new IDs;
        # and its generation settings as used (they have defaults a saved idgen.json may predate, e.g. softmax)
        weights = sorted((f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in (path / "generator").glob("*") if f.is_file())
        settings = {k: v for k, v in dataclasses.asdict(generator.config).items() if k != "precision"}  # read per lookup: _ids_file
        settings = json.dumps(settings, sort_keys=True)
        self._fingerprint = hashlib.blake2b(
            (json.dumps(config, sort_keys=True) + str(path.resolve()) + repr(weights) + settings).encode(), digest_size=8
        ).hexdigest()

    @classmethod
    def from_pretrained(cls, path: str | Path, *, device: str = "auto", num_beams: int = defaults.NUM_BEAMS, id_precision: str = defaults.ID_PRECISION) -> FoundationRec:
        """Load a checkpoint directory written by ``python -m foundation_rec.pretrain`` (``best/`` or ``checkpoint/``).

        ``id_precision`` is the arithmetic of catalog ID generation (:attr:`IDGenConfig.precision
        <foundation_rec.idgen.IDGenConfig.precision>`): ``"int8"`` (CPU only) generates a cold catalog's
        IDs about 1.5x faster on a CPU with AVX-512 VNNI (and several times slower on one without AVX-512), and keys
        its own ID cache; a few near-tied IDs differ from ``"fp32"``'s. ``"auto"`` (the demo's default): whichever
        of the two runs the generator's layers faster on this machine, timed once per CPU and torch build and
        cached (:func:`foundation_rec.int8.choose`; how it chose is :attr:`id_precision_choice`); fp32 off a CPU."""
        if id_precision not in (*PRECISIONS, "auto"):
            raise FoundationRecError(f"id_precision {id_precision!r} is not one of 'fp32', 'int8', 'auto'")
        path = Path(path)
        config = checkpoint.read_config(path)
        bundle = ModelBundle.from_pretrained(path, device)
        for model in (bundle.rec.hf_model, bundle.generator.backbone.hf_model):
            model.train(False)  # inference mode (dropout off)
        on_cpu = bundle.generator.backbone.device.type == "cpu"
        choice = None
        if id_precision == "auto":
            choice = auto_precision(bundle.generator) if on_cpu else {"precision": "fp32", "reason": f"the model is on {bundle.generator.backbone.device}"}
            id_precision = choice["precision"]
        if id_precision == "int8" and not on_cpu:
            raise FoundationRecError(f"id_precision 'int8' runs on a CPU, and the model is on {bundle.generator.backbone.device}; use 'fp32' or --device cpu")
        bundle.generator.config = dataclasses.replace(bundle.generator.config, precision=id_precision)
        model = cls(path, config, bundle.recommender, bundle.generator, num_beams=num_beams)
        model.id_precision_choice = choice
        return model

    @property
    def pretrained_corpora(self) -> list[str]:
        """The corpora the checkpoint was pre-trained on."""
        return list(self.config.get("corpora", []))

    @property
    def fine_tuned_on(self) -> dict | None:
        """What ``foundation_rec.finetune`` recorded when this checkpoint was fine-tuned on a platform's logs
        (``target``, ``platform``, ``users``, ...), or None for a foundation checkpoint."""
        return self.config.get("finetune")

    @property
    def pretrained_platforms(self) -> set[str]:
        """Platforms of the pre-training corpora (a zero-shot target must not be one of them)."""
        platforms = set()
        for name in self.pretrained_corpora:
            try:
                platforms.add(load_recipe(name)[1]["platform"])
            except FoundationRecError:  # a bring-your-own folder that has moved: its platform is its name
                platforms.add(Path(name).name)
        return platforms

    def index_catalog(self, items: str | Path | Corpus | Sequence[dict], *, name: str | None = None, data_dir=None, progress: bool = True,
                      counts: str | Path | PlatformCounts | None = "auto") -> Catalog:
        """Generate (or load cached) unique textual IDs for a catalog and build its trie; it becomes the current catalog.

        ``items`` is a built-in corpus name, a bring-your-own folder, a :class:`Corpus`, or a list of
        records ``{"item_id": ..., "title": ..., <any fields>}``.

        ``counts`` (the *with platform counts* protocol, :mod:`foundation_rec.signals`): ``"auto"`` counts a
        corpus's training split, or a ``count`` field of the records; a path reads an interactions file
        (``user_id,item_id[,timestamp]``) or a count file (``item_id,count``); ``None``: strict only.
        """
        corpus = None
        if isinstance(items, Corpus):
            corpus = items
        elif isinstance(items, (str, Path)):
            corpus = load_corpus(str(items), data_dir)
        if corpus is not None:
            name, platform = corpus.name, corpus.platform
            item_ids = corpus.items.data.column("item_id").to_pylist()
            titles = corpus.items.data.column("title").to_pylist()
            texts = corpus.items.data.column("text").to_pylist()
        else:
            name = name or "catalog"
            platform = name
            item_ids, titles, texts = _records_corpus(list(items), name)
        counts = _catalog_counts(counts, corpus, items, item_ids)
        start = time.perf_counter()
        ids = self._catalog_ids(name, texts, progress)
        id_tokens, trie = self.recommender.index_ids(ids, name)
        reads_text = self.recommender.content is not None or self.recommender.scorer is not None
        vectors = item_vectors(texts, f"{name} items", progress)[0] if reads_text else None
        scorer = self.recommender.scorer
        prior_vectors = scorer.prior_vectors(name, item_ids, vectors) if scorer is not None and vectors is not None else vectors
        if counts is not None and vectors is not None and scorer is not None:
            counts = self._calibrated(counts, name, texts, prior_vectors, progress)
        self.catalog = Catalog(name, platform, item_ids, titles, texts, ids, trie, id_tokens, corpus,
                               round(time.perf_counter() - start, 3), vectors, counts, prior_vectors)
        return self.catalog

    def _ids_file(self, name: str, texts: list[str]) -> Path:
        """Cache file of a catalog's IDs, keyed by this checkpoint and every item text."""
        precision = self.generator.config.precision  # fp32 keys as before the setting existed
        digest = hashlib.blake2b((self._fingerprint + ("" if precision == "fp32" else f":{precision}")).encode(), digest_size=8)
        for text in texts:
            digest.update(text.encode("utf-8") + b"\0")
        return cache_dir() / "catalog_ids" / f"{name}-{digest.hexdigest()}.json"

    def _catalog_ids(self, name: str, texts: list[str], progress: bool) -> list[str]:
        file = self._ids_file(name, texts)
        if file.is_file():
            return json.loads(file.read_text(encoding="utf-8"))["ids"]
        start = time.perf_counter()
        assignment = self.generator.assign(texts, set(), progress=progress)
        atomic.write_json(file, {"catalog": name, "checkpoint": str(self.path), "items": len(texts), "ids": assignment.ids,
                                 "fallbacks": assignment.fallbacks, "seconds": round(time.perf_counter() - start, 2),
                                 "device": str(self.generator.backbone.device), "torch_threads": torch.get_num_threads(),
                                 "precision": self.generator.config.precision})
        return assignment.ids

    def _calibrated(self, counts: PlatformCounts, name: str, texts: list[str], vectors: torch.Tensor, progress: bool) -> PlatformCounts:
        """``counts`` with signal weights calibrated on the platform's held-out items (:mod:`foundation_rec.calibration`),
        cached beside the catalog's IDs and keyed by them and the logs; a count column keeps the pool's weights."""
        log = print if progress else (lambda _: None)
        if counts.held_out is None:
            log(f"{name}: counts without sequences ({counts.source or 'a count column'}) keep the pool's signal weights; "
                "give an interactions file (user_id,item_id[,timestamp]) to calibrate them on the platform")
            return counts
        digest = hashlib.blake2b(self._ids_file(name, texts).name.encode(), digest_size=8)
        for array in counts.held_out:
            digest.update(b"-" if array is None else np.ascontiguousarray(array).tobytes())
        if self.recommender.scorer.catalog is not None:  # a fine-tuned prior: its weights decide what calibration finds
            for tensor in self.recommender.scorer.state_dict().values():
                digest.update(tensor.detach().cpu().numpy().tobytes())
        file = cache_dir() / "catalog_ids" / f"{name}-{digest.hexdigest()}.calibration.json"
        found = calibration.from_json(json.loads(file.read_text(encoding="utf-8"))) if file.is_file() else None
        if found is None:
            found = calibration.calibrate(self.recommender.scorer, vectors, counts, log)
            if found is None:
                log(f"{name}: no user has two logged items; the pool's signal weights stay")
                return counts
            atomic.write_json(file, calibration.to_json(found))
        else:
            log(f"{name}: signal weights calibrated before ({found.choice}; held-out N@10 "
                f"{np.mean([found.record['candidates'][found.choice][k] for k in ('N@10 kept', 'N@10 excluded')]):.4f}), from {file}")
        return dataclasses.replace(counts, calibration=found)

    def catalog_id_record(self, catalog: Catalog | None = None) -> dict:
        """The cache record of a catalog's generated IDs: ``items``, ``fallbacks``, and the ``seconds`` generation took when it ran."""
        catalog = self._require_catalog(catalog)
        return json.loads(self._ids_file(catalog.name, catalog.texts).read_text(encoding="utf-8"))

    def _require_catalog(self, catalog: Catalog | None = None) -> Catalog:
        """``catalog`` when given (e.g. one demo user's), else the current one (the last indexed)."""
        if catalog is not None:
            return catalog
        if self.catalog is None:
            raise FoundationRecError("no catalog is indexed; call index_catalog(...) first")
        return self.catalog

    def catalog_recommender(self, num_beams: int | None = None, batch_size: int = defaults.BATCH_SIZE,
                            content_prior: float | None = None, catalog: Catalog | None = None, protocol: str = STRICT) -> CatalogRecommender:
        """A catalog (default: the current one) in the evaluation harness's protocol (``recommend(histories, k)`` over item
        rows); ``content_prior`` None: :attr:`content_prior`; ``protocol`` ``"counts"`` reads the catalog's counts."""
        catalog = self._require_catalog(catalog)
        content_prior = self.content_prior if content_prior is None else content_prior
        counts = _protocol_counts(protocol, catalog)
        prompts = PromptBuilder.for_training(self.recommender.tokenizer, self.config.get("train", {}), catalog.id_tokens)
        return CatalogRecommender(self.recommender, prompts, catalog.trie, 0, num_beams=num_beams or self.num_beams, batch_size=batch_size,
                                  vectors=catalog.vectors, content_prior=content_prior, counts=counts, prior_vectors=catalog.prior_vectors)

    def method_recommender(self, method: str = DEFAULT, protocol: str = STRICT, *, num_beams: int | None = None,
                           batch_size: int = defaults.BATCH_SIZE, content_prior: float | None = None, catalog: Catalog | None = None):
        """One of :data:`METHODS` on a catalog (default: the current one) in the harness's protocol: ``DEFAULT`` and
        ``GENERATION`` are :meth:`catalog_recommender` with gamma ``content_prior`` (None: :attr:`content_prior`) and 0,
        ``PRIOR`` the checkpoint's content prior alone (:class:`~foundation_rec.content_prior.PriorRanking`)."""
        parse_label(method_label(method, protocol))
        if method == PRIOR:
            catalog = self._require_catalog(catalog)
            return PriorRanking(self.recommender.scorer, catalog.prior_vectors, _protocol_counts(protocol, catalog))
        gamma = 0.0 if method == GENERATION else content_prior
        return self.catalog_recommender(num_beams, batch_size, content_prior=gamma, catalog=catalog, protocol=protocol)

    def resolve_history(self, history: Sequence[str | int], catalog: Catalog | None = None) -> list[Match]:
        """How each history entry resolves in a catalog (default: the current one): item id, exact title, or nearest title
        (see :mod:`foundation_rec.resolve`)."""
        catalog = self._require_catalog(catalog)
        entries = [str(item).strip() for item in history]
        if not any(entries):
            raise FoundationRecError("the history is empty; give at least one item")
        if len(entries) > MAX_HISTORY_LINES:
            raise FoundationRecError(f"the history has {len(entries)} entries; give at most {MAX_HISTORY_LINES} (the last {MAX_HISTORY} are used)")
        if all(catalog.row(e) is not None for e in entries):  # plain item ids: no text model needed
            return [Match(e, catalog.row(e), catalog.titles[catalog.row(e)], 1.0, "item id") for e in entries]
        return catalog.resolver().resolve(entries)

    def history_rows(self, history: Sequence[str | int], catalog: Catalog | None = None) -> np.ndarray:
        """Catalog rows of a history of item ids or free-text names; an entry that matches no item is a one-line error."""
        catalog = self._require_catalog(catalog)
        matches = self.resolve_history(history, catalog)
        for n, match in enumerate(matches, 1):
            if not match.matched:
                hint = f" (closest: {match.title!r}, similarity {match.similarity:.2f})" if match.title else ""
                raise FoundationRecError(
                    f"history entry {n}, {match.query!r}, matches no item of catalog {catalog.name!r}{hint}; use an item_id or a closer title"
                )
        return np.asarray([m.row for m in matches][-MAX_HISTORY:], dtype=np.int64)

    def recommend(self, history: Sequence[str | int], k: int = 10, catalog: Catalog | None = None, protocol: str | None = None,
                  exclude_history: bool = False) -> list[dict]:
        """Top ``k`` items of a catalog (default: the current one) after ``history`` (item ids or free-text names, oldest first).

        ``protocol``: ``"counts"`` (the default when the catalog has counts) or ``"strict"``; ``exclude_history``
        leaves the history's own items out (a person who typed five films wants five others; keep them for
        repeat-visit catalogs). Returns dicts with ``item_id``, ``title``, ``textual_id``, ``score`` (the generation
        score: the mean token log-probability of the ID plus gamma times the prior's log-probability) and
        ``method``, best first.
        """
        if not 1 <= k <= 100:
            raise FoundationRecError(f"k={k} is out of range; ask for 1 to 100 recommendations")
        catalog = self._require_catalog(catalog)
        protocol = protocol or (COUNTS if catalog.counts is not None else STRICT)
        rows_in = self.history_rows(history, catalog)
        extra = len(set(rows_in.tolist())) if exclude_history else 0
        rec = self.catalog_recommender(num_beams=max(self.num_beams, k + extra), catalog=catalog, protocol=protocol)
        rows, scores = (x[0] for x in rec.rank([rows_in], k + extra))
        method = method_label(DEFAULT, protocol)
        picked = [(r, s) for r, s in zip(rows, scores, strict=True) if r >= 0 and not (exclude_history and r in rows_in)][:k]
        return [{"item_id": catalog.item_ids[r], "title": catalog.titles[r], "textual_id": catalog.ids[r], "score": float(s), "method": method}
                for r, s in picked]

def _catalog_counts(counts, corpus: Corpus | None, records, item_ids: list[str]) -> PlatformCounts | None:
    """A catalog's platform counts from ``index_catalog``'s ``counts`` argument (see there)."""
    if counts is None or isinstance(counts, PlatformCounts):
        return counts
    if isinstance(counts, str) and counts == "auto":
        if corpus is not None:
            return PlatformCounts.from_corpus(corpus)
        values = [rec.get("count") for rec in records]
        if all(v is None for v in values):
            return None
        for n, value in enumerate(values, 1):
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not value >= 0 or value == float("inf"):
                raise FoundationRecError(f"record {n}: count {value!r} is not a non-negative number; give every record a count of 0 or more, or none")
        return PlatformCounts.from_popularity(np.asarray(values, dtype=np.float64), "count field")
    return read_counts_file(counts, item_ids)


def _protocol_counts(protocol: str, catalog: Catalog) -> PlatformCounts | None:
    if protocol not in PROTOCOLS:
        raise FoundationRecError(f"protocol {protocol!r} is not one of {', '.join(PROTOCOLS)}")
    if protocol == COUNTS and catalog.counts is None:
        raise FoundationRecError(f"catalog {catalog.name!r} has no platform counts; index it with counts (an interactions or count file) or use protocol 'strict'")
    return catalog.counts if protocol == COUNTS else None
