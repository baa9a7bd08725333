"""Gradio demo: pick a catalog, type a history as free text, get the top-10 recommendations.

    python -m foundation_rec.demo [--checkpoint runs/pretrain/best] [--host 127.0.0.1] [--port 7860]

1. Pick a catalog: any built-in corpus (its data must be in the data directory), or upload a
   bring-your-own ``items.jsonl`` (one JSON object per line with ``item_id``, ``title`` and any
   metadata fields). The first use of a catalog generates its textual IDs (cached afterwards).
2. Type a history, one item per line, oldest first: titles, approximate names, or item ids. While a
   line is typed, suggestions for it appear; picking one replaces the line. Each line resolves to a
   catalog item (:mod:`foundation_rec.resolve`); the match, its textual ID and similarity are shown,
   and a line that matches nothing is flagged and left out, never guessed.
3. Recommend: the top 10 with title, textual ID and score (relative to the first), the latency and the method;
   the typed history is left out unless "Keep my history" is ticked.

Caps: at most :data:`~foundation_rec.api.MAX_HISTORY_LINES` lines of at most
:data:`~foundation_rec.resolve.MAX_LINE_CHARS` characters, and uploads of at most
:data:`MAX_UPLOAD_ITEMS` items. Every problem (no checkpoint, an unknown or missing corpus, a
malformed upload, an empty or over-long history) is a message in the page; the server keeps serving.
"""

from __future__ import annotations

import json
import math
import os
import sys
import threading
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import gradio as gr
from transformers import HfArgumentParser

from . import defaults, int8
from .api import DEFAULT, MAX_HISTORY_LINES, Catalog, FoundationRec
from .corpora import load_recipe, recipe_names
from .corpora.readers import check_utf8
from .errors import FoundationRecError, cli_errors, parse_flags
from .idgen import PRECISIONS
from .paths import resolve_data_dir
from .resolve import MAX_LINE_CHARS

TOP_K = 10
MAX_UPLOAD_ITEMS = 200_000
UPLOAD_CHOICE = "(uploaded items file)"
MATCH_HEADERS = ["line", "matched item", "textual ID", "similarity", "status"]
REC_HEADERS = ["rank", "title", "textual ID", "score vs #1"]  # exp(score - best score): how the model weighs it against the first


@dataclass
class DemoArguments:
    """Where the model is and where the server listens."""

    checkpoint: str = field(default="runs/pretrain/best", metadata={"help": "checkpoint directory written by foundation_rec.pretrain"})
    data_dir: str | None = field(default=None, metadata={"help": "folder holding the corpora (default: see the README's Data section)"})
    host: str = field(default="127.0.0.1", metadata={"help": "address to listen on (0.0.0.0 for every interface)"})
    port: int = field(default=7860, metadata={"help": "port to listen on"})
    device: str = field(default="auto", metadata={"help": "auto, cpu, cuda or cuda:N"})
    num_beams: int = field(default=defaults.NUM_BEAMS, metadata={"help": f"beams of the constrained beam search (at least {defaults.MIN_BEAMS})"})
    id_precision: str = field(default="auto", metadata={"help": "arithmetic of a new catalog's ID generation: fp32, int8 (CPU only; about 1.5x "
                                                                "faster with AVX-512 VNNI, several times slower without AVX-512) or auto "
                                                                "(the faster of the two as timed once on this machine, cached; fp32 off a CPU)"})
    catalog: str = field(default="movielens-100k", metadata={"help": "built-in catalog selected when the page opens (a small one: its first "
                                                               "indexing takes seconds); checked before the server starts"})


def read_items_file(path: str | Path) -> list[dict]:
    """Records of an uploaded ``items.jsonl``; a malformed file is a one-line error naming the line (and the byte of
    a file that is not UTF-8)."""
    data = Path(path).read_bytes()
    check_utf8(data, f"the items file {Path(path).name}")
    records = []
    for n, line in enumerate(data.decode("utf-8").split("\n"), 1):
        if not line.strip():
            continue
        if len(records) >= MAX_UPLOAD_ITEMS:
            raise FoundationRecError(f"the items file has more than {MAX_UPLOAD_ITEMS:,} items; upload a smaller catalog")
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise FoundationRecError(f"items file line {n} is not JSON ({err.msg}); upload one JSON object per line") from None
        if not isinstance(record, dict) or "item_id" not in record or not str(record.get("title", "")).strip():
            raise FoundationRecError(f"items file line {n} needs an object with item_id and title; fix that line")
        records.append(record)
    if not records:
        raise FoundationRecError("the items file has no items; upload one JSON object per line")
    return records


def unreadable(name: str, data_dir: str | Path | None) -> str | None:
    """Why built-in catalog ``name`` cannot be read from the data directory (its folder, or a file its recipe
    reads, with the reason), or ``None`` when it can."""
    recipe = load_recipe(name)[1]
    folder = resolve_data_dir(data_dir) / recipe["folder"]
    files = [folder / f for f in recipe.get("files", {}).values()]
    if recipe.get("format") == "seqrec":
        files += [folder / "item2title.jsonl", folder / "user2item.jsonl"]
    path = folder
    try:
        with os.scandir(folder) as entries:
            next(entries, None)
        for path in files:
            with open(path, "rb") as fh:
                fh.read(1)
    except OSError as err:
        return f"{path} ({err.strerror or type(err).__name__})"
    return None


def check_catalog(name: str, data_dir: str | Path | None) -> None:
    """Before the server starts: ``--catalog`` names a built-in catalog whose folder and files can be read, else a
    one-line error listing the catalogs that can."""
    usable = [n for n in recipe_names() if unreadable(n, data_dir) is None]
    where = f"in {resolve_data_dir(data_dir)}"
    listing = (f"use one of {', '.join(usable)} (the built-in catalogs readable {where})" if usable else
               f"no built-in catalog is readable {where}; pass --data-dir with the folder that holds the corpora (see the README's Data section)")
    if name not in recipe_names():
        raise FoundationRecError(f"--catalog {name!r} is not a built-in catalog; {listing}")
    problem = unreadable(name, data_dir)
    if problem:
        raise FoundationRecError(f"--catalog {name!r} cannot be read: {problem}; {listing}")


def page_error(err: Exception) -> str:
    """The one-line message the page shows for an error; an unexpected one also goes to the server log with its traceback."""
    if isinstance(err, FoundationRecError):
        return f"**Error:** {err}"
    traceback.print_exception(err, file=sys.stderr)
    first = str(err).splitlines()[0] if str(err) else ""
    return f"**Error:** unexpected {type(err).__name__}: {first}"


class DemoApp:
    """The model, the catalogs indexed so far, and the handlers of the page's events (plain methods, testable without a browser)."""

    def __init__(self, args: DemoArguments):
        self.args = args
        self.model: FoundationRec | None = None
        self.load_error = ""
        self.catalogs: dict[str, Catalog] = {}
        # recommendations take turns on the recommender; a catalog indexes on the generator meanwhile, one at a time,
        # so a newcomer can use a small catalog while a large one gets its IDs
        self.lock = threading.Lock()
        self.index_lock = threading.Lock()
        try:
            self.model = FoundationRec.from_pretrained(args.checkpoint, device=args.device, num_beams=max(args.num_beams, TOP_K),
                                                    id_precision=args.id_precision)
        except FoundationRecError as err:
            self.load_error = str(err)

    def status(self) -> str:
        if self.model is None:
            return f"**No model:** {self.load_error}. Start the demo with `--checkpoint DIR` (train one with `python -m foundation_rec.pretrain`)."
        corpora = ", ".join(self.model.pretrained_corpora) or "nothing (randomly initialised)"
        choice = self.model.id_precision_choice
        how = f" ({int8.describe(choice)})" if choice else ""
        tuned = self.model.fine_tuned_on
        tuned = f", then fine-tuned on {tuned['users']:,} users' logs of {tuned['target']} (its own catalog is not zero-shot)" if tuned else ""
        return f"Model `{self.args.checkpoint}`, pre-trained on {corpora}{tuned}; new catalogs get {self.model.generator.config.precision} IDs{how}."

    def _model(self) -> FoundationRec:
        if self.model is None:
            raise FoundationRecError(self.status().removeprefix("**No model:** "))
        return self.model

    def catalog(self, choice: str, upload: str | None) -> Catalog:
        """The catalog picked in the page, indexed on first use."""
        model = self._model()
        if choice == UPLOAD_CHOICE:
            if not upload:
                raise FoundationRecError("no items file uploaded; upload a .jsonl file or pick a built-in catalog")
            key = f"upload:{Path(upload).name}:{os.path.getsize(upload)}:{os.path.getmtime(upload)}"
            name = Path(upload).stem.replace(" ", "_")[:40] or "upload"
        else:
            if choice not in recipe_names():
                raise FoundationRecError(f"unknown catalog {choice!r}; pick one of the list or upload an items file")
            key, name = choice, choice
        if key not in self.catalogs:  # read and index once; suggestions call this on every keystroke
            source = read_items_file(upload) if choice == UPLOAD_CHOICE else choice
            with self.index_lock:
                if key not in self.catalogs:  # not indexed by a request that held the lock before this one
                    self.catalogs[key] = model.index_catalog(source, name=name, data_dir=self.args.data_dir, progress=True)
        return self.catalogs[key]

    def load_catalog(self, choice: str, upload: str | None, progress=gr.Progress(track_tqdm=True)) -> str:  # noqa: B008 (Gradio's API)
        """Index the picked catalog (first use generates its IDs) and say how it went."""
        try:
            start = time.perf_counter()
            catalog = self.catalog(choice, upload)
            return f"Catalog **{catalog.name}**: {len(catalog.item_ids):,} items with unique textual IDs (ready in {time.perf_counter() - start:.1f} s)."
        except Exception as err:  # noqa: BLE001 (the page shows one line, never a traceback)
            return page_error(err)

    def suggest(self, choice: str, upload: str | None, history: str):
        """Autocomplete: suggestions for the line being typed (the last one)."""
        try:
            line = (history or "").splitlines()[-1] if (history or "").strip() else ""
            titles = self.catalog(choice, upload).resolver().suggest(line) if len(line.strip()) >= 2 else []
        except FoundationRecError:
            titles = []
        return gr.update(choices=titles, value=None)

    @staticmethod
    def apply_suggestion(history: str, picked: str | None) -> str:
        """Replace the line being typed with the picked suggestion."""
        if not picked:
            return history
        lines = (history or "").splitlines() or [""]
        return "\n".join([*lines[:-1], picked]) + "\n"

    def recommend(self, choice: str, upload: str | None, history: str, keep_history: bool = False):
        """Resolve the history lines, recommend the top 10; returns (matches table, recommendations table, message)."""
        try:
            model = self._model()
            lines = [line.strip() for line in (history or "").splitlines() if line.strip()]
            if not lines:
                raise FoundationRecError("the history is empty; type at least one item, one per line")
            if len(lines) > MAX_HISTORY_LINES:
                raise FoundationRecError(f"the history has {len(lines)} lines; type at most {MAX_HISTORY_LINES}")
            catalog = self.catalog(choice, upload)
            with self.lock:  # one model: requests take turns (each names its own catalog)
                matches = model.resolve_history(lines, catalog)
                rows = [[m.query, m.title if m.matched else f"(closest: {m.title})" if m.title else "",
                         catalog.ids[m.row] if m.matched else "", round(m.similarity, 3), m.how if m.matched else "unmatched: left out"]
                        for m in matches]
                known = [catalog.item_ids[m.row] for m in matches if m.matched]
                if not known:
                    raise FoundationRecError("no history line matches an item of this catalog; use titles from the suggestions")
                start = time.perf_counter()
                recs = model.recommend(known, k=TOP_K, catalog=catalog, exclude_history=not keep_history)
                latency = time.perf_counter() - start
            table = [[rank, r["title"], r["textual_id"], f"{math.exp(r['score'] - recs[0]['score']):.0%}"] for rank, r in enumerate(recs, 1)]
            flagged = sum(not m.matched for m in matches)
            note = f" {flagged} unmatched line(s) left out." if flagged else ""
            how = (f" Ranked by {recs[0]['method'] if recs else DEFAULT}: generation over the catalog's textual IDs guided by the "
                   f"content prior{' and the catalog counts' if catalog.counts is not None else ''}; "
                   f"{'your history is kept' if keep_history else 'your history is left out'}.")
            return rows, table, f"{len(table)} recommendations from **{catalog.name}** in {latency * 1000:.0f} ms.{note}{how}"
        except Exception as err:  # noqa: BLE001 (the page shows one line, never a traceback)
            return [], [], page_error(err)

    def build(self) -> gr.Blocks:
        """The page."""
        choices = [*recipe_names(), UPLOAD_CHOICE]
        with gr.Blocks(title="foundation_rec demo") as page:
            gr.Markdown("# foundation_rec: zero-shot generative recommendation\n" + self.status())
            with gr.Row():
                with gr.Column(scale=1):
                    choice = gr.Dropdown(choices, value=self.args.catalog if self.args.catalog in choices else choices[0],
                                         label="Catalog", elem_id="catalog")
                    upload = gr.File(label="Or upload items.jsonl (item_id, title, any fields)", file_types=[".jsonl", ".json"],
                                     type="filepath", elem_id="upload")
                    catalog_status = gr.Markdown(elem_id="catalog-status")
                with gr.Column(scale=2):
                    history = gr.Textbox(label=f"History, one item per line, oldest first (at most {MAX_HISTORY_LINES} lines, "
                                         f"{MAX_LINE_CHARS} characters each)", lines=6, elem_id="history")
                    suggestions = gr.Dropdown([], label="Suggestions for the line you are typing", interactive=True, elem_id="suggestions")
                    keep = gr.Checkbox(False, label="Keep my history in the list (for repeat-visit catalogs: restaurants, games)", elem_id="keep-history")
                    button = gr.Button("Recommend", variant="primary", elem_id="recommend")
            message = gr.Markdown(elem_id="message")
            matches = gr.Dataframe(headers=MATCH_HEADERS, label="History as resolved", interactive=False, elem_id="matches")
            recs = gr.Dataframe(headers=REC_HEADERS, label=f"Top {TOP_K} recommendations", interactive=False, elem_id="recs")

            choice.change(self.load_catalog, [choice, upload], catalog_status)
            upload.upload(lambda f: (UPLOAD_CHOICE, self.load_catalog(UPLOAD_CHOICE, f)), upload, [choice, catalog_status])
            history.input(self.suggest, [choice, upload, history], suggestions, trigger_mode="always_last", show_progress="hidden")
            suggestions.select(self.apply_suggestion, [history, suggestions], history)
            button.click(self.recommend, [choice, upload, history, keep], [matches, recs, message])
            page.load(self.load_catalog, [choice, upload], catalog_status)
        return quiet_queue(page)


QUEUE_POLL_S = 0.02  # how often an idle queue looks for work; a recommendation takes seconds, so 20 ms is not felt


def quiet_queue(page: gr.Blocks) -> gr.Blocks:
    """An idle page that costs little CPU. On Linux, gradio's queue polls for work every 1 ms and for
    progress every 10 ms: with nobody on the page the demo used 4.2% of a core (measured from /proc on
    the 2-core machine). Polling every 20 ms and 100 ms instead brings it to about 1.7%; the rest is
    gradio's and uvicorn's own event loop. Gradio exposes no setting for this; a test checks the idle CPU."""
    queue = page._queue
    queue.sleep_when_free = max(queue.sleep_when_free, QUEUE_POLL_S)
    queue.progress_update_sleep_when_free = max(queue.progress_update_sleep_when_free, 5 * QUEUE_POLL_S)
    return page


@cli_errors
def main(argv: list[str] | None = None) -> int:
    parser = HfArgumentParser(DemoArguments, description=__doc__.splitlines()[0])
    (args,) = parse_flags(parser, sys.argv[1:] if argv is None else argv)
    if not 0 < args.port < 65536:
        raise FoundationRecError(f"--port {args.port} is out of range; use 1 to 65535")
    if args.num_beams < TOP_K:
        raise FoundationRecError(f"--num-beams {args.num_beams} is below {TOP_K}; use at least {TOP_K} beams for a top-{TOP_K} list")
    if args.id_precision not in (*PRECISIONS, "auto"):
        raise FoundationRecError(f"--id-precision {args.id_precision!r} is not one of fp32, int8, auto")
    check_catalog(args.catalog, args.data_dir)
    app = DemoApp(args)
    print(app.status().replace("**", ""), file=sys.stderr)
    # system fonts: the page makes no request outside this server (works offline)
    theme = gr.themes.Default(font=["ui-sans-serif", "system-ui", "sans-serif"], font_mono=["ui-monospace", "monospace"])
    app.build().launch(server_name=args.host, server_port=args.port, show_error=False, footer_links=[], theme=theme)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
