"""``python -m foundation_rec.corpora build|stats``: build the unified corpus cache or print its statistics."""

from __future__ import annotations

import argparse
import json
import sys
import time

from tqdm.auto import tqdm

from ..errors import cli_errors
from . import load_corpus, resolve_names
from .readers import ON_BAD_LINE

COLUMNS = ("corpus", "role", "users", "items", "interactions", "avg_history", "avg_text_chars", "avg_text_words")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m foundation_rec.corpora", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for name, default, text in (
        ("build", "all", "build (or refresh) the cached Arrow tables"),
        ("stats", "everything", "print users, items, interactions, average history and text length per corpus"),
    ):
        cmd = sub.add_parser(name, help=text, description=text)
        cmd.add_argument("--corpora", default=default,
                         help="'all' (pre-training pool), 'targets', 'everything', a name, a comma list, or a bring-your-own folder "
                              f"(default: {default})")
        cmd.add_argument("--data-dir", default=None, help="folder holding one sub-folder per corpus (default: $FOUNDATION_REC_DATA, ../shared/corpora, ...)")
        cmd.add_argument("--on-bad-line", choices=ON_BAD_LINE, default="error", help="stop at the first bad line (error) or count and skip bad lines (skip)")
        cmd.add_argument("--rebuild", action="store_true", help="rebuild even when a complete cache entry exists")
        if name == "stats":
            cmd.add_argument("--json", action="store_true", help="print JSON lines instead of a table")
    return parser.parse_args(argv)


def _table(rows: list[dict]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for row in rows:
        lines.append("| " + " | ".join(f"{row[c]:,}" if isinstance(row[c], int) else str(row[c]) for c in COLUMNS) + " |")
    return "\n".join(lines)


@cli_errors
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    names = resolve_names(args.corpora)
    rows = []
    bar = tqdm(names, desc=f"corpora {args.command}", unit="corpus")
    for name in bar:
        bar.set_postfix_str(name)
        start = time.perf_counter()
        corpus = load_corpus(name, args.data_dir, on_bad_line=args.on_bad_line, rebuild=args.rebuild)
        row = corpus.stats()
        row["seconds"] = round(time.perf_counter() - start, 2)
        rows.append(row)
        for what, count in corpus.meta.get("skipped_lines", {}).items():
            tqdm.write(f"{name}: skipped {count} bad line(s) [{what}]", file=sys.stderr)
    if args.command == "stats" and args.json:
        for row in rows:
            print(json.dumps(row))
    elif args.command == "stats":
        print(_table(rows))
    else:
        for row in rows:
            print(f"{row['corpus']}: {row['users']:,} users, {row['items']:,} items, {row['interactions']:,} interactions ({row['seconds']} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
