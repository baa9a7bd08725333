"""Drive the Gradio demo in a real headless browser and save a screenshot (the README's picture).

    python benchmarks/demo_screenshot.py --catalog steam --history "Portal 2" "Half-Life 2" "Left 4 Dead 2"

Starts ``python -m foundation_rec.demo`` on a free port, opens it in Debian's ``chromium`` through
Playwright (headless, ``--no-sandbox``, background networking off), picks the catalog (or uploads an
items file), types the history one line at a time, clicks *Recommend*, waits for the top-10 table,
and writes ``benchmarks/results/demo.png``. The test ``tests/test_demo.py`` uses the same functions.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

RESULTS = Path(__file__).parent / "results"
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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", default="runs/pretrain/best")
    parser.add_argument("--catalog", default="steam", help="built-in corpus to pick in the page")
    parser.add_argument("--history", nargs="+", required=True, help="history lines to type")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--out", type=Path, default=RESULTS / "demo.png")
    args = parser.parse_args()
    demo_args = ["--checkpoint", args.checkpoint, "--catalog", args.catalog, *(["--data-dir", args.data_dir] if args.data_dir else [])]
    with demo_server(demo_args, log=args.out.with_suffix(".log")) as url:
        result = drive_demo(url, args.history, args.out, catalog=args.catalog)
    print(result["message"])
    for row in result["recommendations"]:
        print(" | ".join(row))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
