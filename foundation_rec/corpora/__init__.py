"""The unified natural-language corpus: every platform's catalog and user sequences in one schema.

A corpus is described by a recipe, ``corpora/<name>.toml`` at the top of the repository (or
``recipe.toml`` inside a bring-your-own folder), and built into two Arrow tables with ``datasets``:

* ``items``: ``corpus``, ``platform``, ``item_id`` (original id, string), ``title``, ``text``
  (rendered ``key: value; ...``, see :mod:`foundation_rec.corpora.text`);
* ``sequences``: ``user_id`` (string), ``items`` (row indices into ``items``, chronological),
  ``timestamps`` (unix seconds, or null when the source has only an order).

Built tables are cached under ``<cache>/corpora/<name>/<hash>/``, where the hash covers the
input files' contents, the recipe and the code version. A cache entry is written in a temporary
folder and renamed into place only when complete, so a killed build is never read.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import datasets
import numpy as np
import pyarrow as pa

from .. import atomic
from ..errors import FoundationRecError
from ..paths import cache_dir, resolve_data_dir
from .enrich import ENRICHERS
from .readers import READERS, LineErrors, RawCorpus, input_files
from .text import clean, render

SCHEMA_VERSION = 1
RECIPES_DIR = Path(__file__).resolve().parent.parent / "recipes"  # a link to the top-level corpora/ folder
ROLES = ("pretrain", "target")
_SOURCE_DIR = Path(__file__).resolve().parent


def _code_version() -> str:
    """Hash of this package's corpus code: a change to a reader invalidates every cache built by the old one."""
    digest = hashlib.blake2b(str(SCHEMA_VERSION).encode(), digest_size=8)
    for path in sorted(_SOURCE_DIR.glob("*.py")):
        digest.update(path.read_bytes())
    return digest.hexdigest()


def recipe_names() -> list[str]:
    """Every built-in corpus name, sorted."""
    return sorted(p.stem for p in RECIPES_DIR.glob("*.toml"))


def load_recipe(name_or_path: str) -> tuple[str, dict]:
    """Return ``(name, recipe)`` for a built-in name or a bring-your-own folder."""
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        recipe = {"format": "byo", "platform": path.name, "role": "target", "domain": "", "folder": str(path.resolve())}
        if (path / "recipe.toml").is_file():
            recipe.update(_read_toml(path / "recipe.toml"))
            recipe["folder"] = str(path.resolve())
        return recipe.get("name", path.name), recipe
    file = RECIPES_DIR / f"{name_or_path}.toml"
    if not file.is_file():
        raise FoundationRecError(
            f"unknown corpus {name_or_path!r}; use one of {', '.join(recipe_names())}, 'all', 'targets', or a bring-your-own folder"
        )
    return name_or_path, _read_toml(file)


def _read_toml(path: Path) -> dict:
    try:
        recipe = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as err:
        raise FoundationRecError(f"{path}: malformed recipe ({err}); fix the TOML") from None
    if recipe.get("format", "byo") not in READERS:
        raise FoundationRecError(f"{path}: unknown format {recipe.get('format')!r}; use one of {', '.join(READERS)}")
    if recipe.get("role", "target") not in ROLES:
        raise FoundationRecError(f"{path}: unknown role {recipe.get('role')!r}; use 'pretrain' or 'target'")
    if recipe.get("enrich") and recipe["enrich"] not in ENRICHERS:
        raise FoundationRecError(f"{path}: unknown enrich {recipe['enrich']!r}; use one of {', '.join(ENRICHERS)}")
    return recipe


def resolve_names(spec: str) -> list[str]:
    """Expand a ``--corpora`` value.

    ``all`` is the pre-training pool (every ``role = "pretrain"`` recipe), ``targets`` the zero-shot
    targets, ``everything`` both; otherwise a comma-separated list of names or bring-your-own folders.
    """
    spec = spec.strip()
    if spec in ("all", "targets", "everything"):
        wanted = {"all": ("pretrain",), "targets": ("target",), "everything": ROLES}[spec]
        return [n for n in recipe_names() if load_recipe(n)[1].get("role") in wanted]
    names = [s.strip() for s in spec.split(",") if s.strip()]
    if not names:
        raise FoundationRecError("--corpora is empty; name a corpus, a comma list, 'all' or 'targets'")
    for name in names:
        load_recipe(name)
    return list(dict.fromkeys(names))


@dataclass
class Corpus:
    """One built corpus: its catalog (``items``) and user sequences (``sequences``), memory-mapped Arrow."""

    name: str
    platform: str
    role: str
    items: datasets.Dataset
    sequences: datasets.Dataset
    meta: dict = field(default_factory=dict)

    @property
    def item_sequences(self) -> pa.ChunkedArray:
        """The ``items`` list column of ``sequences`` (item row indices), for :func:`foundation_rec.splits.leave_one_out`."""
        return self.sequences.data.column("items")

    def stats(self) -> dict:
        """Users, items, interactions, average history length and average text length (characters and words)."""
        lengths = np.diff(np.asarray(self.item_sequences.combine_chunks().offsets))
        texts = self.items.data.column("text").to_pylist()
        users, interactions = len(lengths), int(lengths.sum())
        return {
            "corpus": self.name,
            "platform": self.platform,
            "role": self.role,
            "users": users,
            "items": len(self.items),
            "interactions": interactions,
            "avg_history": round(interactions / max(users, 1), 3),
            "avg_text_chars": round(float(np.mean([len(t) for t in texts])), 1),
            "avg_text_words": round(float(np.mean([len(t.split()) for t in texts])), 1),
        }


def _content_hash(name: str, recipe: dict, folder: Path, on_bad_line: str) -> str:
    digest = hashlib.blake2b(digest_size=8)
    digest.update(f"{_code_version()}:{on_bad_line}".encode())
    digest.update(json.dumps(recipe, sort_keys=True).encode())
    files = input_files(recipe, folder)
    if not files:
        raise FoundationRecError(f"corpus {name!r}: no input files in {folder}; check --data-dir (see the README's data layout)")
    for path in files:
        digest.update(path.name.encode())
        with path.open("rb") as fh:
            while chunk := fh.read(1 << 22):
                digest.update(chunk)
    return digest.hexdigest()


def _tables(name: str, recipe: dict, raw: RawCorpus) -> tuple[pa.Table, pa.Table]:
    order = recipe.get("fields", ["title"])
    for key, sep in recipe.get("split", {}).items():  # e.g. RecBole token_seq genres: "Animation Comedy"
        for fields in raw.items.values():
            if isinstance(fields.get(key), str):
                fields[key] = fields[key].split(sep)
    ids = list(raw.items)
    row_of = {item_id: row for row, item_id in enumerate(ids)}
    texts = [render(raw.items[i], order) for i in ids]
    titles = [clean(raw.items[i].get("title", "")) for i in ids]
    n = len(ids)
    items = pa.table(
        {
            "corpus": pa.array([name] * n, pa.string()),
            "platform": pa.array([recipe["platform"]] * n, pa.string()),
            "item_id": pa.array(ids, pa.string()),
            "title": pa.array(titles, pa.string()),
            "text": pa.array(texts, pa.string()),
        }
    )
    sequences = pa.table(
        {
            "user_id": pa.array([u for u, _, _ in raw.users], pa.string()),
            "items": pa.array([[row_of[i] for i in seq] for _, seq, _ in raw.users], pa.list_(pa.int32())),
            "timestamps": pa.array([ts for _, _, ts in raw.users], pa.list_(pa.int64())),
        }
    )
    return items, sequences


def _build(name: str, recipe: dict, folder: Path, target: Path, content_hash: str, on_bad_line: str) -> None:
    start = time.perf_counter()
    errors = LineErrors(on_bad_line)
    raw = READERS[recipe.get("format", "byo")](recipe, folder, errors)
    enrich_counts = ENRICHERS[recipe["enrich"]](recipe, folder, raw, errors) if recipe.get("enrich") else {}
    if not raw.items:
        raise FoundationRecError(f"corpus {name!r} in {folder} has no items; check the items file")
    if not raw.users:
        raise FoundationRecError(f"corpus {name!r} in {folder} has no interactions; check the interactions file")
    items, sequences = _tables(name, recipe, raw)
    datasets.disable_progress_bars()
    with atomic.staged_dir(target) as tmp:
        datasets.Dataset(items).save_to_disk(str(tmp / "items"))
        datasets.Dataset(sequences).save_to_disk(str(tmp / "sequences"))
        atomic.write_json(
            tmp / "meta.json",
            {
                "name": name,
                "platform": recipe["platform"],
                "role": recipe.get("role", "target"),
                "domain": recipe.get("domain", ""),
                "content_hash": content_hash,
                "schema_version": SCHEMA_VERSION,
                "source": str(folder),
                "skipped_lines": errors.skipped,
                "enrich": enrich_counts,
                "build_seconds": round(time.perf_counter() - start, 2),
            },
        )


def load_corpus(name_or_path: str, data_dir: str | Path | None = None, *, on_bad_line: str = "error", rebuild: bool = False) -> Corpus:
    """Load a corpus from the cache, building it first when its inputs, recipe or code changed.

    ``name_or_path`` is a built-in name (see :func:`recipe_names`) or a bring-your-own folder.
    """
    name, recipe = load_recipe(name_or_path)
    folder = Path(recipe["folder"]) if recipe.get("format") == "byo" else resolve_data_dir(data_dir) / recipe["folder"]
    if not folder.is_dir():
        raise FoundationRecError(f"corpus {name!r}: folder {folder} does not exist; check --data-dir (see the README's data layout)")
    content_hash = _content_hash(name, recipe, folder, on_bad_line)
    root = cache_dir() / "corpora" / name
    target = root / content_hash
    if rebuild or not (target / "meta.json").is_file():
        _build(name, recipe, folder, target, content_hash, on_bad_line)
        for stale in root.iterdir():  # older builds of this corpus (and leftovers of killed builds)
            if stale != target and stale.is_dir():
                shutil.rmtree(stale, ignore_errors=True)
    meta = json.loads((target / "meta.json").read_text(encoding="utf-8"))
    return Corpus(
        name=name,
        platform=meta["platform"],
        role=meta["role"],
        items=datasets.load_from_disk(str(target / "items")),
        sequences=datasets.load_from_disk(str(target / "sequences")),
        meta=meta,
    )


def load_corpora(spec: str, data_dir: str | Path | None = None, **kwargs) -> list[Corpus]:
    """Load every corpus named by a ``--corpora`` value (see :func:`resolve_names`)."""
    return [load_corpus(name, data_dir, **kwargs) for name in resolve_names(spec)]
