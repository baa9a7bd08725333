"""Drive the Gradio demo in a real headless browser and save a screenshot (the README's picture).

    python -m benchmarks.demo_screenshot --catalog steam --history "Portal 2" "Half-Life 2" "Left 4 Dead 2"
    python -m benchmarks.demo_screenshot --upload my-shop/items.jsonl --history "Dune" --out /tmp/shop.png -- --num-beams 16

Starts ``python -m foundation_rec.demo`` on a free port (flags after ``--`` go to it), opens it in Debian's
``chromium`` through Playwright (headless, ``--no-sandbox``, background networking off), picks the catalog (or
uploads an items file), types the history one line at a time, clicks *Recommend*, waits for the top-10 table,
and writes ``benchmarks/results/demo.png`` (``--out``); the server's log goes beside the system's temporary files.
The test ``tests/test_demo.py`` runs it on the tests' checkpoint.

    python -m benchmarks.demo_screenshot --time-first-catalog --catalog movielens-100k

``--time-first-catalog`` measures the demo's first minute instead, as on a new user's machine: the demo runs with
``FOUNDATION_REC_CACHE`` set to a fresh, empty folder (no built corpus, catalog IDs, MiniLM vectors or
``--id-precision auto`` choice cached); recorded are the seconds from the launch until the page answers, and from
the page opening until the catalog's status says it is ready (and the page's own "ready in X s"). The page opens
in chromium when it is installed; without it, the page's HTML is fetched and its ``load_catalog`` event (what the
page calls when it opens) is called through ``gradio_client``. Beside the times go the CPU, its int8-relevant flags
(``int8.cpu_features``) and what ``auto`` chose with its timings (the record the demo cached). Each run is added to
``benchmarks/results/demo_ready.{json,md}``, so runs on several CPUs sit side by side.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

from foundation_rec import int8

from .common import environment, provenance, results_dir, write_results

CHROMIUM_ARGS = ["--no-sandbox", "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-default-apps", "--no-first-run", "--disable-dev-shm-usage"]


def chromium_path() -> str:
    """Debian's chromium binary (``apt-get install chromium``)."""
    for name in ("chromium", "chromium-browser"):
        if path := shutil.which(name):
            return path
    raise RuntimeError("no chromium found; install it with: apt-get install -y chromium")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def demo_server(demo_args: list[str], timeout: float = 180.0, log: Path | None = None, pid: list | None = None):
    """Run ``python -m foundation_rec.demo`` with ``demo_args`` on a free port; yields its URL once it answers
    (and appends the server's process id to ``pid`` when given)."""
    import urllib.request

    port = free_port()
    out = open(log, "w") if log else subprocess.DEVNULL  # noqa: SIM115 (closed below)
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False"}
    proc = subprocess.Popen([sys.executable, "-m", "foundation_rec.demo", *demo_args, "--port", str(port)],
                            stdout=out, stderr=subprocess.STDOUT, env=env)
    if pid is not None:
        pid.append(proc.pid)
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                tail = log.read_text(errors="replace")[-2000:] if log else ""
                raise RuntimeError(f"the demo exited with code {proc.returncode} before serving\n{tail}")
            try:
                urllib.request.urlopen(url, timeout=2).read(1)
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the demo did not answer on {url} within {timeout:.0f} s") from None
                time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        if log:
            out.close()


def _recommend(page, timeout_ms: int, expect: str) -> tuple[str, list, list]:
    """Click Recommend, wait for the message saying ``expect`` (or an error) and the tables; return them."""
    page.locator("#recommend").click()
    page.locator("#message").get_by_text(expect).or_(page.locator("#message").get_by_text("Error:")).wait_for(timeout=timeout_ms)
    message = page.locator("#message").inner_text()
    for _ in range(40):  # the tables render just after the message
        recs, matches = _table(page, "#recs"), _table(page, "#matches")
        if "Error:" in message or (recs and recs[0][0]):
            break
        page.wait_for_timeout(250)
    return message, recs, matches


def drive_demo(url: str, history: list[str], screenshot: Path, *, catalog: str | None = None, upload: Path | None = None,
               timeout_ms: int = 600_000, then_keep_history: bool = False) -> dict:
    """Open the demo, choose the catalog, type ``history``, click Recommend; returns the tables read back from the page.

    ``{"recommendations": [[rank, title, textual ID, score], ...], "matches": [...], "message": str}``; with
    ``then_keep_history`` also ``"kept"``: the recommendations after ticking *Keep my history* and recommending again.
    """
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium_path(), headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 1100})
            page.goto(url, wait_until="domcontentloaded")
            page.locator("#history textarea").wait_for(timeout=60_000)
            if upload is not None:
                page.locator("#upload input[type=file]").set_input_files(str(upload))
            elif catalog is not None:
                box = page.locator("#catalog input")
                box.click()
                box.fill(catalog)
                page.get_by_role("option", name=catalog, exact=True).click()
            name = upload.stem if upload is not None else catalog
            page.locator("#catalog-status").get_by_text(f"Catalog {name}: ").wait_for(timeout=timeout_ms)
            history_box = page.locator("#history textarea")
            history_box.click()
            for line in history:
                history_box.type(line + "\n")
            message, recs, matches = _recommend(page, timeout_ms, "your history is left out")
            result = {"message": message, "recommendations": recs, "matches": matches}
            if then_keep_history:
                page.locator("#keep-history input").check()
                result["kept"] = _recommend(page, timeout_ms, "your history is kept")[1]
            screenshot.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(screenshot), full_page=True)
            return result
        finally:
            browser.close()


def _table(page, selector: str) -> list[list[str]]:
    """The non-empty body rows of a Gradio Dataframe, as text (its grid rows; the table's own tbody is a hidden sizing row)."""
    rows = page.locator(f"{selector} [role=row][data-index]")
    cells = [[cell.strip() for cell in rows.nth(i).locator("[role=gridcell]").all_inner_texts()] for i in range(rows.count())]
    return [row for row in cells if any(row)]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", default="runs/pretrain/best")
    parser.add_argument("--catalog", default="steam", help="built-in corpus to pick in the page")
    parser.add_argument("--upload", type=Path, default=None, help="an items.jsonl to upload instead of picking --catalog")
    parser.add_argument("--history", nargs="+", default=None, help="history lines to type (needed unless --time-first-catalog)")
    parser.add_argument("--time-first-catalog", action="store_true", help="time the page and --catalog's first readiness with an "
                                                                          "empty cache instead; adds a run to results/demo_ready.{json,md}")
    parser.add_argument("--timeout", type=float, default=900.0, help="--time-first-catalog: seconds to wait for the page and the catalog")
    parser.add_argument("--keep-history", action="store_true", help="then tick Keep my history and recommend again")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--out", type=Path, default=None, help="the screenshot (default: benchmarks/results/demo.png)")
    parser.add_argument("demo_flags", nargs="*", help="more flags for python -m foundation_rec.demo, after --")
    return parser.parse_args(argv)


def screenshot(args: argparse.Namespace, timeout_ms: int = 600_000) -> dict:
    """Serve the demo, drive it as :func:`drive_demo` does and save the screenshot to ``--out``; returns the page's tables."""
    out = args.out or results_dir() / "demo.png"
    demo_args = ["--checkpoint", args.checkpoint, "--catalog", args.catalog, *(["--data-dir", args.data_dir] if args.data_dir else []), *args.demo_flags]
    with demo_server(demo_args, log=Path(tempfile.gettempdir()) / "demo_screenshot.log") as url:
        return drive_demo(url, args.history, out, catalog=args.catalog, upload=args.upload, timeout_ms=timeout_ms, then_keep_history=args.keep_history)


READY = re.compile(r"Catalog \**(?P<name>[^*:]+)\**: (?P<items>[\d,]+) items .*\(ready in (?P<seconds>[\d.]+) s\)")


def first_catalog_status(url: str, catalog: str, timeout: float) -> tuple[str, str]:
    """Open the page and wait for its first catalog: ``(how it was opened, the catalog status once ready or failed)``."""
    try:
        chromium = chromium_path()
    except RuntimeError:
        import urllib.request

        from gradio_client import Client

        urllib.request.urlopen(url, timeout=timeout).read()
        return "gradio_client", str(Client(url, verbose=False).predict(catalog, None, api_name="/load_catalog"))
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            page.goto(url, wait_until="domcontentloaded")
            status = page.locator("#catalog-status")
            status.get_by_text("ready in").or_(status.get_by_text("Error:")).wait_for(timeout=timeout * 1000)
            return "chromium", status.inner_text()
        finally:
            browser.close()


def time_first_catalog(args: argparse.Namespace) -> dict:
    """One start of the demo with an empty cache: seconds to the page and to the catalog, the CPU's flags, auto's choice."""
    demo_args = ["--checkpoint", args.checkpoint, "--catalog", args.catalog, *(["--data-dir", args.data_dir] if args.data_dir else []), *args.demo_flags]
    from unittest import mock

    with tempfile.TemporaryDirectory(prefix="demo-first-catalog-") as scratch, mock.patch.dict(os.environ, {"FOUNDATION_REC_CACHE": scratch}):
        cache, launched = Path(scratch), time.perf_counter()  # the demo's cache: a fresh, empty folder
        with demo_server(demo_args, timeout=args.timeout, log=Path(tempfile.gettempdir()) / "demo_ready.log") as url:
            page_s, opened = time.perf_counter() - launched, time.perf_counter()
            how, status = first_catalog_status(url, args.catalog, args.timeout)
            ready_s = time.perf_counter() - opened
        choices = [json.loads(p.read_text(encoding="utf-8")) for p in sorted((cache / "id_precision").glob("*.json"))]
    found = READY.search(status.replace("\n", " "))
    return {"catalog": args.catalog, "checkpoint": args.checkpoint, "opened_with": how, "page_s": round(page_s, 1),
            "catalog_ready_after_page_s": round(ready_s, 1), "demo_says_ready_in_s": float(found["seconds"]) if found else None,
            "items": int(found["items"].replace(",", "")) if found else None, "status": status.strip(), "cpu": int8.cpu_features(),
            "auto_choice": choices[0] if choices else None, "environment": environment()}


def ready_markdown(runs: list[dict]) -> str:
    """Every recorded first-catalog run, one row each, with the CPU's flags and what auto chose there."""
    note = ("`python -m benchmarks.demo_screenshot --time-first-catalog`: seconds from launching the demo until the page answers "
            "(*page*), and from the page opening until its first catalog is ready (*ready*; *demo says*: the page's own \"ready in\"). "
            "Nothing was cached beforehand: corpus, IDs, MiniLM vectors and the `--id-precision auto` choice are all made in the run.")
    lines = ["# The demo's first catalog with an empty cache", "", note, "",
             "| date | CPU | int8-relevant flags | catalog | items | auto chose | int8 / fp32 speed | page s | ready s | demo says s | opened with |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for run in runs:
        auto = run["auto_choice"] or {}
        speed = f"{auto['int8_speedup']:.2f}x" if "int8_speedup" in auto else auto.get("reason", "")
        lines.append(f"| {run['environment']['date']} | {run['cpu']['cpu']} ({run['environment']['cpu_count']} cores) | "
                     f"{', '.join(run['cpu']['flags']) or 'none'} | {run['catalog']} | {run['items'] or ''} | {auto.get('precision', '')} | "
                     f"{speed} | {run['page_s']} | {run['catalog_ready_after_page_s']} | {run['demo_says_ready_in_s']} | {run['opened_with']} |")
    return "\n".join([*lines, "", f"Last run: {provenance(runs[-1]['environment'])}"]) + "\n"


def record_first_catalog(args: argparse.Namespace) -> dict:
    """:func:`time_first_catalog`, added to ``results/demo_ready.{json,md}``; returns the run."""
    run = time_first_catalog(args)
    path = results_dir() / "demo_ready.json"
    runs = [*(json.loads(path.read_text(encoding="utf-8"))["runs"] if path.is_file() else []), run]
    write_results("demo_ready", {"runs": runs}, ready_markdown(runs))
    print(f"page {run['page_s']} s; {run['catalog']} ready {run['catalog_ready_after_page_s']} s after the page opened "
          f"(the page says {run['demo_says_ready_in_s']} s); auto chose {(run['auto_choice'] or {}).get('precision')}")
    return run


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.time_first_catalog:
        record_first_catalog(args)
        return 0
    if not args.history:
        raise SystemExit("error: --history is needed for a screenshot (or pass --time-first-catalog)")
    result = screenshot(args)
    print(result["message"])
    for row in result["recommendations"]:
        print(" | ".join(row))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
