"""Free-text history resolution, the API's free-text path, the demo's handlers, and the demo in a real headless browser."""

from __future__ import annotations

import json
import os
import shutil
import sys
import threading
import time
from pathlib import Path

import pytest

from foundation_rec import int8
from foundation_rec.api import FoundationRec
from foundation_rec.demo import UPLOAD_CHOICE, DemoApp, DemoArguments, read_items_file
from foundation_rec.errors import FoundationRecError
from foundation_rec.paths import cache_dir
from foundation_rec.resolve import ItemResolver

BOOKS = [
    ("b01", "The Hobbit", "J. R. R. Tolkien", "fantasy"),
    ("b02", "Dune", "Frank Herbert", "science fiction"),
    ("b03", "Emma", "Jane Austen", "romance"),
    ("b04", "Pride and Prejudice", "Jane Austen", "romance"),
    ("b05", "The Fellowship of the Ring", "J. R. R. Tolkien", "fantasy"),
    ("b06", "Foundation", "Isaac Asimov", "science fiction"),
    ("b07", "I, Robot", "Isaac Asimov", "science fiction"),
    ("b08", "Moby-Dick", "Herman Melville", "adventure"),
    ("b09", "Treasure Island", "Robert Louis Stevenson", "adventure"),
    ("b10", "Frankenstein", "Mary Shelley", "horror"),
    ("b11", "Dracula", "Bram Stoker", "horror"),
    ("b12", "The Time Machine", "H. G. Wells", "science fiction"),
    ("b13", "Sense and Sensibility", "Jane Austen", "romance"),
    ("b14", "The War of the Worlds", "H. G. Wells", "science fiction"),
]
RECORDS = [{"item_id": i, "title": t, "author": a, "genre": [g]} for i, t, a, g in BOOKS]


@pytest.fixture
def items_file(tmp_path) -> Path:
    path = tmp_path / "bookshop.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in RECORDS), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def model(tiny_checkpoint) -> FoundationRec:
    return FoundationRec.from_pretrained(tiny_checkpoint, device="cpu", num_beams=16)


def test_resolver_takes_ids_titles_and_near_names_and_flags_the_rest():
    resolver = ItemResolver([r["item_id"] for r in RECORDS], [r["title"] for r in RECORDS], progress=False)
    by_id, by_title, near, nonsense, empty = resolver.resolve(["b06", "the  HOBBIT!", "war of worlds wells", "quarterly tax form 1099", ""])
    assert (by_id.row, by_id.how, by_id.similarity) == (5, "item id", 1.0)
    assert (by_title.row, by_title.how) == (0, "title")
    assert near.matched and near.how == "similarity" and RECORDS[near.row]["item_id"] == "b14" and 0.6 <= near.similarity < 1.0
    assert not nonsense.matched and nonsense.how == "unmatched" and nonsense.similarity < 0.6 and nonsense.title  # a hint, not a guess
    assert not empty.matched
    assert resolver.suggest("the") [:1] == ["The Hobbit"]  # titles starting with the text come first, shortest first
    assert "Pride and Prejudice" in resolver.suggest("prejudice")
    assert resolver.suggest("   ") == []
    with pytest.raises(FoundationRecError, match="keep each line under 300"):
        resolver.resolve(["x" * 301])


def test_api_recommends_from_free_text_history(model):
    catalog = model.index_catalog(RECORDS, name="bookshop", progress=False)
    matches = model.resolve_history(["The Hobbit", "b02", "fellowship of the ring tolkien"])
    assert [m.row for m in matches] == [0, 1, 4]
    recs = model.recommend(["The Hobbit", "b02", "fellowship of the ring tolkien"], k=10)
    assert len(recs) == 10 and len({r["item_id"] for r in recs}) == 10
    assert {r["item_id"] for r in recs} <= set(catalog.item_ids)
    with pytest.raises(FoundationRecError, match=r"history entry 2, 'quarterly tax form 1099', matches no item .* \(closest: "):
        model.recommend(["b01", "quarterly tax form 1099"], k=5)
    with pytest.raises(FoundationRecError, match="give at most 50"):
        model.recommend(["b01"] * 51, k=5)


def test_demo_handlers_explain_bad_input_in_the_page(tiny_checkpoint, items_file, tmp_path):
    app = DemoApp(DemoArguments(checkpoint=str(tiny_checkpoint), device="cpu", num_beams=16))
    assert "pre-trained on amazon2014-beauty, amazon2018-office" in app.status()
    chosen = app.model.id_precision_choice["precision"]  # --id-precision auto: the faster arithmetic as timed on this CPU
    assert app.model.generator.config.precision == chosen and f"new catalogs get {chosen} IDs (auto: " in app.status()
    assert chosen == "fp32" or int8.available()
    assert "14 items with unique textual IDs" in app.load_catalog(UPLOAD_CHOICE, str(items_file))
    matches, recs, message = app.recommend(UPLOAD_CHOICE, str(items_file), "The Hobbit\nquarterly tax form 1099\nDune\n")
    assert len(recs) == 10 and message.startswith("10 recommendations from **bookshop**") and "1 unmatched line(s) left out" in message
    assert [m[4] for m in matches] == ["title", "unmatched: left out", "title"]
    assert all(rec[1] in {r["title"] for r in RECORDS} for rec in recs)
    for history, expected in [("", "the history is empty"), ("\n".join(["Dune"] * 51), "at most 50"),
                              ("quarterly tax form 1099", "no history line matches")]:
        assert expected in app.recommend(UPLOAD_CHOICE, str(items_file), history)[2]
    assert "unknown catalog 'nowhere'" in app.load_catalog("nowhere", None)
    assert "no items file uploaded" in app.load_catalog(UPLOAD_CHOICE, None)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"item_id": "a", "title": "A"}\n{"item_id": "b", "title": \n', encoding="utf-8")
    assert "items file line 2 is not JSON" in app.load_catalog(UPLOAD_CHOICE, str(bad))
    latin = tmp_path / "latin.jsonl"
    latin.write_bytes('{"item_id": "a", "title": "A"}\n{"item_id": "b", "title": "Caf\u00e9"}\n'.encode("latin-1"))
    message = app.load_catalog(UPLOAD_CHOICE, str(latin))
    assert "the items file latin.jsonl:2: byte 61 (0xe9) is not UTF-8; save the file as UTF-8" in message and "\n" not in message.strip()
    assert app.suggest(UPLOAD_CHOICE, str(items_file), "Dune\npride")["choices"][0] == "Pride and Prejudice"
    assert app.apply_suggestion("Dune\npride", "Pride and Prejudice") == "Dune\nPride and Prejudice\n"

    missing = DemoApp(DemoArguments(checkpoint=str(tmp_path / "none"), device="cpu"))
    assert missing.status().startswith("**No model:**") and "--checkpoint DIR" in missing.status()
    assert "**Error:**" in missing.recommend("yelp", None, "Dune")[2]


def test_the_typed_history_is_left_out_unless_kept(tiny_checkpoint, items_file, model):
    """A person who typed three books wants three others; ticking "keep my history" gives the plain ranking back."""
    app = DemoApp(DemoArguments(checkpoint=str(tiny_checkpoint), device="cpu", num_beams=16))
    typed = ["The Hobbit", "Dune", "Frankenstein"]
    _, recs, message = app.recommend(UPLOAD_CHOICE, str(items_file), "\n".join(typed))
    assert len(recs) == 10 and not {r[1] for r in recs} & set(typed)
    assert "Ranked by idgenrec-zeroshot" in message and "your history is left out" in message
    assert recs[0][3] == "100%" and all(r[3].endswith("%") for r in recs)  # scores relative to the first
    _, kept, message = app.recommend(UPLOAD_CHOICE, str(items_file), "\n".join(typed), True)
    assert "your history is kept" in message
    model.index_catalog(read_items_file(items_file), name="bookshop", progress=False)
    plain = model.recommend(typed, k=10)
    assert [r[1] for r in kept] == [r["title"] for r in plain] and {r[1] for r in kept} & set(typed)


def test_a_catalog_that_is_indexing_does_not_hold_up_recommendations_on_another(tiny_checkpoint, items_file, fixture_data):
    """While a large catalog gets its IDs (here: held until the recommendation is done), an indexed one still recommends."""
    app = DemoApp(DemoArguments(checkpoint=str(tiny_checkpoint), device="cpu", num_beams=16, data_dir=str(fixture_data)))
    assert "14 items" in app.load_catalog(UPLOAD_CHOICE, str(items_file))
    started, release, index = threading.Event(), threading.Event(), app.model.index_catalog

    def slow_index(*args, **kwargs):
        started.set()
        assert release.wait(60), "the recommendation never finished while the catalog indexed"
        return index(*args, **kwargs)

    app.model.index_catalog = slow_index
    loading = threading.Thread(target=lambda: app.load_catalog("steam", None))
    loading.start()
    try:
        assert started.wait(30)
        _, recs, message = app.recommend(UPLOAD_CHOICE, str(items_file), "The Hobbit\nDune\n")
        assert len(recs) == 10 and message.startswith("10 recommendations from **bookshop**")
        assert loading.is_alive()  # the other catalog was still indexing
    finally:
        release.set()
        loading.join(120)
    assert "steam" in app.catalogs and not loading.is_alive()


def test_read_items_file_rejects_records_without_title(tmp_path):
    path = tmp_path / "items.jsonl"
    path.write_text('{"item_id": "a"}\n', encoding="utf-8")
    with pytest.raises(FoundationRecError, match="line 1 needs an object with item_id and title"):
        read_items_file(path)


@pytest.mark.skipif(shutil.which("chromium") is None and shutil.which("chromium-browser") is None, reason="needs chromium (apt-get install chromium)")
def test_demo_in_a_headless_browser(tiny_checkpoint, items_file, tmp_path, fixture_data):
    """The screenshot benchmark (``python -m benchmarks.demo_screenshot``) drives the page: upload, history, both settings."""
    from benchmarks import demo_screenshot

    screenshot = tmp_path / "demo-test.png"
    args = demo_screenshot.parse_args(["--checkpoint", str(tiny_checkpoint), "--data-dir", str(fixture_data), "--catalog", "steam", "--upload",
                                       str(items_file), "--keep-history", "--out", str(screenshot), "--history", "The Hobbit", "Dune",
                                       "frankenstein shelley", "--", "--device", "cpu", "--num-beams", "16"])
    result = demo_screenshot.screenshot(args, timeout_ms=120_000)
    titles, typed = {r["title"] for r in RECORDS}, {"The Hobbit", "Dune", "Frankenstein"}
    assert result["message"].startswith("10 recommendations from bookshop"), result["message"]
    assert len(result["recommendations"]) == 10
    assert all(row[1] in titles for row in result["recommendations"])
    assert not {row[1] for row in result["recommendations"]} & typed  # the typed history is left out by default
    assert {row[1] for row in result["kept"]} & typed  # and the checkbox brings it back
    assert [row[1] for row in result["matches"]] == ["The Hobbit", "Dune", "Frankenstein"]
    assert screenshot.is_file() and screenshot.stat().st_size > 10_000


def test_demo_server_answers_20_concurrent_requests_without_mixing_catalogs(tiny_checkpoint, tmp_path, fixture_data):
    """20 requests at once against a local server, alternating two catalogs: each answer is complete and from its own catalog."""
    from concurrent.futures import ThreadPoolExecutor

    from gradio_client import Client

    from benchmarks.demo_screenshot import demo_server
    from foundation_rec.corpora import load_corpus

    catalogs = {name: load_corpus(name, fixture_data).items["title"] for name in ("steam", "yelp")}
    histories = {name: "\n".join(titles[:3]) for name, titles in catalogs.items()}
    args = ["--checkpoint", str(tiny_checkpoint), "--device", "cpu", "--num-beams", "16", "--data-dir", str(fixture_data), "--catalog", "steam"]
    with demo_server(args, log=tmp_path / "demo.log") as url:
        client = Client(url, verbose=False)
        names = [("steam", "yelp")[i % 2] for i in range(20)]
        with ThreadPoolExecutor(max_workers=20) as pool:
            jobs = [pool.submit(lambda n: client.predict(n, None, histories[n], api_name="/recommend"), name) for name in names]
            answers = [job.result(timeout=300) for job in jobs]
    for name, (matches, recs, message) in zip(names, answers, strict=True):
        rows = recs["data"] if isinstance(recs, dict) else recs
        assert f"recommendations from **{name}**" in message, message
        typed = min(3, len(catalogs[name]))  # the typed items are left out of the list by default
        assert len(rows) == min(10, len(catalogs[name]) - typed) and all(row[1] in set(catalogs[name]) for row in rows), (name, rows)
        assert [row[1] for row in (matches["data"] if isinstance(matches, dict) else matches)] == list(catalogs[name][:3])


def test_an_idle_demo_server_uses_almost_no_cpu(tiny_checkpoint, tmp_path, fixture_data):
    """Nobody on the page: the server process uses under 3% of a core (about 1.7% measured; gradio's default 1 ms polling used 4.2%)."""
    from benchmarks.demo_screenshot import demo_server

    def cpu_seconds(pid: int) -> float:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    pid: list[int] = []
    args = ["--checkpoint", str(tiny_checkpoint), "--device", "cpu", "--num-beams", "16", "--data-dir", str(fixture_data), "--catalog", "steam"]
    with demo_server(args, log=tmp_path / "demo.log", pid=pid):
        if not Path(f"/proc/{pid[0]}/stat").is_file():
            pytest.skip("needs /proc to read a process's CPU time")
        time.sleep(3)  # start-up work done
        before, start = cpu_seconds(pid[0]), time.monotonic()
        time.sleep(6)
        used = (cpu_seconds(pid[0]) - before) / (time.monotonic() - start)
    assert used < 0.03, f"idle demo used {used:.1%} of a core"


def test_ctrl_c_while_indexing_a_catalog_leaves_no_partial_cache_entry(tiny_checkpoint, tmp_path, monkeypatch):
    """Ctrl-C during ID generation, or while the cache file is being written: nothing is left that a later run would read."""
    import os

    from foundation_rec.idgen import IDGenerator

    monkeypatch.setenv("FOUNDATION_REC_CACHE", str(tmp_path / "cache"))
    model = FoundationRec.from_pretrained(tiny_checkpoint, device="cpu", num_beams=16)
    cache = tmp_path / "cache" / "catalog_ids"
    real_assign, real_fsync = IDGenerator.assign, os.fsync

    def interrupted(self, texts, *args, **kwargs):
        real_assign(self, texts[:3], *args, **kwargs)  # part of the work is done ...
        raise KeyboardInterrupt  # ... when the user presses Ctrl-C

    def interrupted_write(fd):
        raise KeyboardInterrupt  # Ctrl-C while the cache file is half written

    for patch in ((IDGenerator, "assign", interrupted), (os, "fsync", interrupted_write)):
        monkeypatch.setattr(*patch)
        with pytest.raises(KeyboardInterrupt):
            model.index_catalog(RECORDS, name="bookshop", progress=False)
        monkeypatch.setattr(IDGenerator, "assign", real_assign)
        monkeypatch.setattr(os, "fsync", real_fsync)
        assert not cache.is_dir() or list(cache.iterdir()) == []  # no entry, complete or partial
    catalog = model.index_catalog(RECORDS, name="bookshop", progress=False)  # the next run builds a complete entry
    assert [p.suffix for p in cache.iterdir()] == [".json"] and len(set(catalog.ids)) == len(RECORDS)
    assert model.catalog_id_record(catalog)["items"] == len(RECORDS)


def test_an_unknown_id_precision_stops_the_demo_with_one_line(tiny_checkpoint, capsys):
    from foundation_rec.demo import main as demo_main

    with pytest.raises(SystemExit):
        demo_main(["--checkpoint", str(tiny_checkpoint), "--id-precision", "half"])
    assert capsys.readouterr().err.strip().splitlines() == ["error: --id-precision 'half' is not one of fp32, int8, auto"]


def test_an_unknown_or_unreadable_catalog_stops_the_demo_before_the_server(tiny_checkpoint, fixture_data, tmp_path, capsys, monkeypatch):
    """One line listing the readable catalogs, exit 2, and neither the model nor the server is started."""
    from foundation_rec import demo

    monkeypatch.setattr(demo, "DemoApp", lambda args: pytest.fail("the demo loaded its model before checking --catalog"))
    readable = "amazon2014-beauty, amazon2018-office, goodreads, movielens-100k, movielens-1m, steam, yelp"
    data = tmp_path / "data"
    shutil.copytree(fixture_data, data)
    (data / "steam" / "user2item.jsonl").unlink()  # a catalog whose folder lacks a file it needs
    (data / "yelp").rename(data / "yelp-moved")
    (data / "yelp").write_text("not a folder")
    cases = [("nosuch", f"error: --catalog 'nosuch' is not a built-in catalog; use one of {readable}"),
             ("steam", f"error: --catalog 'steam' cannot be read: {data / 'steam' / 'user2item.jsonl'} (No such file or directory); use one of"),
             ("yelp", f"error: --catalog 'yelp' cannot be read: {data / 'yelp'} (Not a directory); use one of")]
    for name, message in cases:
        with pytest.raises(SystemExit) as info:
            demo.main(["--checkpoint", str(tiny_checkpoint), "--data-dir", str(data if name != "nosuch" else fixture_data), "--catalog", name])
        err = capsys.readouterr().err.strip().splitlines()
        assert info.value.code == 2 and len(err) == 1 and err[0].startswith(message), err
    assert ", steam" not in err[0] and ", yelp" not in err[0] and "movielens-100k" in err[0]  # only readable catalogs are offered


def test_demo_with_an_unknown_catalog_exits_at_once_without_a_traceback(fixture_data):
    """The command a new user types: one line on stderr, exit 2, no server; its CPU time (imports included) is under
    15 s (CPU time, not wall time: other work on the machine does not count)."""
    import resource
    import subprocess

    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    done = subprocess.run([sys.executable, "-m", "foundation_rec.demo", "--catalog", "nosuch", "--data-dir", str(fixture_data)],
                          check=False, capture_output=True, text=True, timeout=120)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    assert done.returncode == 2 and done.stdout == "" and "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines() == [done.stderr.strip()] and "is not a built-in catalog; use one of" in done.stderr
    assert cpu < 15, f"{cpu:.1f} s of CPU before exiting"


def test_a_catalog_record_without_a_title_is_one_line(model):
    with pytest.raises(FoundationRecError, match=r"catalog 'shop', record 2 \(item 'b'\): empty or missing title; give every record a non-empty title"):
        model.index_catalog([{"item_id": "a", "title": "Hat"}, {"item_id": "b", "title": " ", "colour": "red"}], name="shop", progress=False)


def test_the_first_catalog_timing_records_the_times_the_cpu_flags_and_autos_choice(tiny_checkpoint, fixture_data, tmp_path, monkeypatch):
    """``python -m benchmarks.demo_screenshot --time-first-catalog`` on the tests' checkpoint: one run is added to
    results/demo_ready.{json,md}, with an empty cache (auto timed afresh) and this CPU's flags."""
    from benchmarks import demo_screenshot

    monkeypatch.setenv("FOUNDATION_REC_RESULTS", str(tmp_path))
    args = ["--time-first-catalog", "--checkpoint", str(tiny_checkpoint), "--catalog", "steam", "--data-dir", str(fixture_data),
            "--", "--device", "cpu", "--num-beams", "16"]
    assert demo_screenshot.main(args) == 0
    (run,) = json.loads((tmp_path / "demo_ready.json").read_text())["runs"]
    assert run["items"] == 2 and run["demo_says_ready_in_s"] is not None and run["page_s"] > 0
    assert run["cpu"] == int8.cpu_features() and run["auto_choice"]["precision"] in ("fp32", "int8")
    assert not (cache_dir() / "id_precision").exists()  # the demo had a cache of its own, empty when it started
    assert "| steam | 2 |" in (tmp_path / "demo_ready.md").read_text()
