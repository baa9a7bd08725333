"""File-format readers: each turns one corpus folder into a :class:`RawCorpus`.

A recipe (``corpora/<name>.toml``) names its ``format``; :data:`READERS` maps that name to a
function ``reader(recipe, folder, errors) -> RawCorpus``. Adding a platform whose files follow one
of these formats needs only a recipe; a new file layout needs one reader here.

Every reader reports problems through :class:`LineErrors`, which raises a one-line error naming the
file and line (``--on-bad-line error``, the default) or counts and skips the line (``skip``). An item
with no text at all (every field empty) is such a line in every format, since its ID would be written
from nothing; a bring-your-own item with an empty or missing title is one too. A built-in corpus may
hold items whose title is empty and whose other fields are not (amazon2018-office has 3): they are
kept, and their rendered text is those fields.
"""

from __future__ import annotations

import csv
import json
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import FoundationRecError
from .text import clean

csv.field_size_limit(sys.maxsize)

ON_BAD_LINE = ("error", "skip")


@dataclass
class LineErrors:
    """Collects or raises per-line problems, depending on ``mode`` (``error`` or ``skip``)."""

    mode: str = "error"
    skipped: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.mode not in ON_BAD_LINE:
            raise FoundationRecError(f"unknown --on-bad-line {self.mode!r}; use 'error' or 'skip'")

    def bad(self, path: Path, line: int | None, problem: str, fix: str) -> None:
        """Raise (mode ``error``) or count (mode ``skip``) one bad line."""
        where = f"{path}:{line}" if line else str(path)
        if self.mode == "error":
            raise FoundationRecError(f"{where}: {problem}; {fix} (or pass --on-bad-line skip)")
        key = f"{path.name}: {problem.split(':')[0]}"
        self.skipped[key] = self.skipped.get(key, 0) + 1


@dataclass
class RawCorpus:
    """What a reader returns: the catalog and the per-user sequences, keyed by original ids.

    ``items`` maps item id -> ordered metadata fields; ``users`` holds ``(user id, item ids, timestamps or None)``
    in chronological order.
    """

    items: dict[str, dict[str, Any]] = field(default_factory=dict)
    users: list[tuple[str, list[str], list[int] | None]] = field(default_factory=list)

    def add_item(self, item_id: Any, fields: dict[str, Any], errors: LineErrors, path: Path, line: int | None) -> None:
        key = str(item_id).strip()
        if not key:
            errors.bad(path, line, "empty item id", "give every item a non-empty id")
        elif key in self.items:
            errors.bad(path, line, f"duplicate item id {key!r}", "keep one record per item id")
        elif not any(clean(value) for value in fields.values()):
            errors.bad(path, line, f"no text: item {key!r} has no non-empty field", "give the item a title or other metadata")
        else:
            self.items[key] = fields

    def add_user(self, user_id: Any, item_ids: list, timestamps: list | None, errors: LineErrors, path: Path, line: int | None) -> None:
        """Append one user's sequence after checking every item against the catalog."""
        ids = [str(i).strip() for i in item_ids]
        if timestamps is not None and len(timestamps) != len(ids):
            errors.bad(path, line, f"{len(ids)} items but {len(timestamps)} timestamps", "give one timestamp per item")
            return
        unknown = [i for i in ids if i not in self.items]
        if unknown:
            errors.bad(path, line, f"interaction names unknown item {unknown[0]!r}", "add the item to the items file or drop the interaction")
            return
        if ids:
            self.users.append((str(user_id), ids, None if timestamps is None else [int(t) for t in timestamps]))


def _need(path: Path, utf8: bool = True) -> Path:
    """``path`` if it is a readable (UTF-8, unless ``utf8`` is off) file, else a one-line error naming the file
    (and the line of a bad byte)."""
    if not path.is_file():
        raise FoundationRecError(f"missing file {path}; check --data-dir (see the README's data layout)")
    if utf8:
        check_utf8(path.read_bytes(), str(path))
    return path


def check_utf8(data: bytes, name: str) -> None:
    """A one-line error naming ``name``, the line and the byte offset where ``data`` stops being UTF-8."""
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        raise FoundationRecError(
            f"{name}:{line}: byte {err.start} (0x{data[err.start]:02x}) is not UTF-8; save the file as UTF-8 (e.g. iconv -f latin1 -t utf-8)"
        ) from None


def _jsonl(path: Path, errors: LineErrors) -> Iterator[tuple[int, dict]]:
    """Yield ``(line number, object)`` for each non-empty line of a JSON-lines file."""
    with _need(path).open(encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as err:
                errors.bad(path, n, f"malformed JSON ({err.msg})", "fix or remove the line")
                continue
            if not isinstance(obj, dict):
                errors.bad(path, n, "malformed record: expected a JSON object", "fix or remove the line")
                continue
            yield n, obj


def _no_duplicate_keys(path: Path) -> Callable[[list[tuple[str, Any]]], dict]:
    def hook(pairs: list[tuple[str, Any]]) -> dict:
        out: dict = {}
        for k, v in pairs:
            if k in out:
                raise FoundationRecError(f"{path}: duplicate key {k!r}; keep one entry per id")
            out[k] = v
        return out

    return hook


def _json_doc(path: Path) -> dict:
    """Load a whole-file JSON object (duplicate keys are an error, not silently merged)."""
    try:
        with _need(path).open(encoding="utf-8") as fh:
            doc = json.load(fh, object_pairs_hook=_no_duplicate_keys(path))
    except json.JSONDecodeError as err:
        raise FoundationRecError(f"{path}:{err.lineno}: malformed JSON ({err.msg}); fix the file") from None
    if not isinstance(doc, dict):
        raise FoundationRecError(f"{path}: expected a JSON object keyed by id; fix the file")
    return doc


def _rows(path: Path, delimiter: str, errors: LineErrors, required: tuple[str, ...]) -> Iterator[tuple[int, dict[str, str]]]:
    """Yield ``(line number, row)`` of a delimited file with a header, checking the required columns."""
    with _need(path).open(encoding="utf-8", newline="") as fh:
        reader = csv.reader(fh, delimiter=delimiter)
        header = next(reader, None)
        if header is None:
            raise FoundationRecError(f"{path}: empty file; it needs a header line with {', '.join(required)}")
        header = [h.split(":")[0].strip() for h in header]  # RecBole headers are typed: "item_id:token"
        missing = [c for c in required if c not in header]
        if missing:
            raise FoundationRecError(f"{path}:1: header lacks column {missing[0]!r}; add it (columns: {', '.join(header)})")
        for row in reader:
            if not row or not any(cell.strip() for cell in row):
                continue
            if len(row) != len(header):
                errors.bad(path, reader.line_num, f"malformed row: {len(row)} fields, header has {len(header)}", "fix the quoting or delimiter")
                continue
            yield reader.line_num, dict(zip(header, row))


def _rename(fields: dict[str, Any], recipe: dict) -> dict[str, Any]:
    names = recipe.get("rename", {})
    return {names.get(k, k): v for k, v in fields.items()}


def read_seqrec(recipe: dict, folder: Path, errors: LineErrors) -> RawCorpus:
    """SeqRecBenchmark: ``item2title.jsonl`` ({item_id, title}) and ``user2item.jsonl`` ({user_id, item_ids, timestamps})."""
    raw = RawCorpus()
    path = folder / "item2title.jsonl"
    for n, obj in _jsonl(path, errors):
        if "item_id" not in obj or "title" not in obj:
            errors.bad(path, n, "malformed record: needs item_id and title", "fix or remove the line")
            continue
        raw.add_item(obj["item_id"], {"title": obj["title"]}, errors, path, n)
    path = folder / "user2item.jsonl"
    for n, obj in _jsonl(path, errors):
        if not isinstance(obj.get("item_ids"), list) or "user_id" not in obj:
            errors.bad(path, n, "malformed record: needs user_id and an item_ids list", "fix or remove the line")
            continue
        raw.add_user(obj["user_id"], obj["item_ids"], obj.get("timestamps"), errors, path, n)
    return raw


def read_lcrec(recipe: dict, folder: Path, errors: LineErrors) -> RawCorpus:
    """LC-Rec/LETTER: ``*.item.json`` ({index: {fields}}) and ``*.inter.json`` ({user: [index, ...]}), chronological."""
    raw = RawCorpus()
    path = folder / recipe["files"]["items"]
    for key, fields in _json_doc(path).items():
        raw.add_item(key, _rename(fields if isinstance(fields, dict) else {"title": fields}, recipe), errors, path, None)
    path = folder / recipe["files"]["interactions"]
    for user, items in _json_doc(path).items():
        raw.add_user(user, items if isinstance(items, list) else [], None, errors, path, None)
    return raw


def read_p5(recipe: dict, folder: Path, errors: LineErrors) -> RawCorpus:
    """P5/S3-Rec: ``sequential_data.txt`` (``user item item ...``) and an item JSON keyed ``item_index - item_offset``."""
    raw = RawCorpus()
    offset = int(recipe.get("item_offset", 0))
    path = folder / recipe["files"]["items"]
    for key, fields in _json_doc(path).items():
        try:
            item_id = int(key) + offset
        except ValueError:
            errors.bad(path, None, f"item key {key!r} is not an integer", "use integer item keys")
            continue
        raw.add_item(item_id, _rename(fields, recipe), errors, path, None)
    path = _need(folder / recipe["files"]["sequences"])
    with path.open(encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            parts = line.split()
            if len(parts) < 2:
                if parts:
                    errors.bad(path, n, "malformed line: a user with no items", "write 'user item item ...'")
                continue
            raw.add_user(parts[0], parts[1:], None, errors, path, n)
    return raw


def _group_interactions(raw: RawCorpus, rows: Iterator[tuple[int, dict[str, str]]], path: Path, errors: LineErrors,
                        user_col: str, item_col: str, time_col: str | None) -> None:
    """Group (user, item[, time]) rows into per-user sequences, stably sorted by time when given."""
    seqs: dict[str, list[tuple[float, int, str]]] = {}
    first_line: dict[str, int] = {}
    for n, row in rows:
        item = row[item_col].strip()
        if item not in raw.items:
            errors.bad(path, n, f"interaction names unknown item {item!r}", "add the item to the items file or drop the interaction")
            continue
        t = 0.0
        if time_col and row.get(time_col, "").strip():
            try:
                t = float(row[time_col])
            except ValueError:
                errors.bad(path, n, f"malformed timestamp {row[time_col]!r}", "use unix seconds")
                continue
        user = row[user_col].strip()
        first_line.setdefault(user, n)
        seqs.setdefault(user, []).append((t, n, item))
    for user, events in seqs.items():
        events.sort()
        stamps = [int(t) for t, _, _ in events] if time_col else None
        raw.users.append((user, [i for _, _, i in events], stamps))


def read_recbole(recipe: dict, folder: Path, errors: LineErrors) -> RawCorpus:
    """RecBole atomic files: tab-separated ``.item`` and ``.inter`` with typed headers; sorted by timestamp."""
    raw = RawCorpus()
    path = folder / recipe["files"]["items"]
    for n, row in _rows(path, "\t", errors, ("item_id",)):
        item = row.pop("item_id")
        raw.add_item(item, _rename(row, recipe), errors, path, n)
    path = folder / recipe["files"]["interactions"]
    _group_interactions(raw, _rows(path, "\t", errors, ("user_id", "item_id", "timestamp")), path, errors, "user_id", "item_id", "timestamp")
    return raw


def read_goodreads(recipe: dict, folder: Path, errors: LineErrors) -> RawCorpus:
    """ONCE Goodreads: ``book.csv`` (tab: bid, title), ``book-desc.csv`` (comma: bid, desc), ``user_history.jsonl``."""
    raw = RawCorpus()
    files = recipe["files"]
    desc_path = folder / files["descriptions"]
    descriptions = {row["bid"].strip(): row["desc"] for _, row in _rows(desc_path, ",", errors, ("bid", "desc"))}
    path = folder / files["titles"]
    for n, row in _rows(path, "\t", errors, ("bid", "title")):
        bid = row["bid"].strip()
        raw.add_item(bid, {"title": row["title"], "description": descriptions.get(bid, "")}, errors, path, n)
    path = folder / files["sequences"]
    for n, obj in _jsonl(path, errors):
        if not isinstance(obj.get("book_ids"), list) or "user" not in obj:
            errors.bad(path, n, "malformed record: needs user and a book_ids list", "fix or remove the line")
            continue
        raw.add_user(obj["user"], obj["book_ids"], None, errors, path, n)
    return raw


def read_byo(recipe: dict, folder: Path, errors: LineErrors) -> RawCorpus:
    """Bring-your-own platform: ``items.jsonl`` or ``items.csv`` (item_id, title + any fields) and
    ``interactions.csv`` or ``interactions.jsonl`` (user_id, item_id, optional timestamp).

    An item with an empty or missing title is a bad line. Without timestamps a user's interactions keep file order.
    """
    raw = RawCorpus()
    if (folder / "items.jsonl").is_file():
        path = folder / "items.jsonl"
        records = ((n, dict(obj)) for n, obj in _jsonl(path, errors))
    else:
        path = folder / "items.csv"
        records = _rows(path, ",", errors, ("item_id",))
    for n, obj in records:
        if "item_id" not in obj:
            errors.bad(path, n, "malformed record: no item_id", "give every item an item_id")
            continue
        item = obj.pop("item_id")
        fields = _rename(obj, recipe)
        if not clean(fields.get("title")):
            errors.bad(path, n, f"no title: item {str(item).strip()!r} has an empty or missing title",
                       "give every item a non-empty title (or map its name field to title under [rename] in recipe.toml)")
            continue
        raw.add_item(item, fields, errors, path, n)
    if (folder / "interactions.jsonl").is_file():
        path = folder / "interactions.jsonl"
        rows = ((n, {k: str(v) for k, v in obj.items()}) for n, obj in _jsonl(path, errors))
    else:
        path = folder / "interactions.csv"
        rows = _rows(path, ",", errors, ("user_id", "item_id"))
    kept = []
    for n, row in rows:
        if "user_id" in row and "item_id" in row:
            kept.append((n, row))
        else:
            errors.bad(path, n, "malformed record: needs user_id and item_id", "fix or remove the line")
    rows = kept
    has_time = any("timestamp" in row for _, row in rows)
    _group_interactions(raw, iter(rows), path, errors, "user_id", "item_id", "timestamp" if has_time else None)
    return raw


READERS: dict[str, Callable[[dict, Path, LineErrors], RawCorpus]] = {
    "seqrec": read_seqrec,
    "lcrec": read_lcrec,
    "p5": read_p5,
    "recbole": read_recbole,
    "goodreads": read_goodreads,
    "byo": read_byo,
}


def input_files(recipe: dict, folder: Path) -> list[Path]:
    """The files a recipe reads (for the cache's content hash); missing ones are reported by the reader."""
    fmt = recipe["format"]
    named = [folder / f for f in recipe.get("files", {}).values()]
    if fmt == "seqrec":
        named += [folder / "item2title.jsonl", folder / "user2item.jsonl"]
    elif fmt == "byo":
        named += [folder / n for n in ("items.jsonl", "items.csv", "interactions.jsonl", "interactions.csv", "recipe.toml")]
    return sorted({p for p in named if p.is_file()})
