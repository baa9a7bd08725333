"""Metadata joins that add fields to a catalog from a side file (recipe key ``enrich``)."""

from __future__ import annotations

import html
import re
from collections.abc import Callable
from pathlib import Path

from .readers import LineErrors, RawCorpus, _jsonl, _need

STEAM_MAX_TAGS = 8
_YEAR = re.compile(r"^(.*?)\s*\((\d{4})\)\s*$")


def steam_games(recipe: dict, folder: Path, raw: RawCorpus, errors: LineErrors) -> dict[str, int]:
    """Join Steam titles to the McAuley/Kang game metadata: on ``app_name`` first, else on ``title``.

    Adds genres, the first :data:`STEAM_MAX_TAGS` tags, developer, publisher, price and release date.
    """
    by_name: dict[str, dict] = {}
    by_title: dict[str, dict] = {}
    for _, game in _jsonl(folder / recipe["files"]["games"], LineErrors("skip")):
        by_name.setdefault(str(game.get("app_name", "")), game)
        by_title.setdefault(str(game.get("title", "")), game)
    counts = {"joined": 0, "unmatched": 0}
    for fields in raw.items.values():
        title = fields.get("title", "")
        game = by_name.get(title) or by_title.get(title)
        if game is None:
            counts["unmatched"] += 1
            continue
        counts["joined"] += 1
        fields["genres"] = game.get("genres") or []
        fields["tags"] = (game.get("tags") or [])[:STEAM_MAX_TAGS]
        fields["developer"] = game.get("developer") or ""
        fields["publisher"] = game.get("publisher") or ""
        fields["price"] = game.get("price", "")
        fields["release date"] = game.get("release_date") or ""
    return counts


def _loose(title: str) -> str:
    """Match key that tolerates the replacement characters the SeqRecBenchmark titles carry for accents."""
    return re.sub(r"[^\x00-\x7f]", "?", html.unescape(title)).replace(" )", ")").strip()


def movielens_movies(recipe: dict, folder: Path, raw: RawCorpus, errors: LineErrors) -> dict[str, int]:
    """Join MovieLens-1M titles to GroupLens ``movies.dat`` (``id::Title (Year)::Genre|Genre``) on the title.

    The remapped titles drop the `` (Year)`` suffix. A title naming one movie gets its year and genres;
    a title naming several (remakes, same-name films) stays title-only, as does a title with no match.
    """
    movies: dict[str, list[tuple[str, str]]] = {}
    path = _need(folder / recipe["files"]["movies"], utf8=False)  # GroupLens' file is Latin-1
    with path.open(encoding="latin-1") as fh:
        for line in fh:
            parts = line.rstrip("\n").split("::")
            if len(parts) != 3:
                continue
            match = _YEAR.match(parts[1])
            title, year = (match.group(1), match.group(2)) if match else (parts[1], "")
            movies.setdefault(_loose(title), []).append((year, parts[2].replace("|", ", ")))
    counts = {"joined": 0, "ambiguous": 0, "unmatched": 0}
    for fields in raw.items.values():
        found = movies.get(_loose(fields.get("title", "")), [])
        if len(found) == 1:
            counts["joined"] += 1
            fields["year"], fields["genres"] = found[0]
        else:
            counts["ambiguous" if found else "unmatched"] += 1
    return counts


ENRICHERS: dict[str, Callable[[dict, Path, RawCorpus, LineErrors], dict[str, int]]] = {
    "steam_games": steam_games,
    "movielens_movies": movielens_movies,
}
