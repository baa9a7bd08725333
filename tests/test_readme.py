"""The README's Python example runs as written (on the tests' tiny checkpoint) and prints what it says it prints.

The README's commands that train on the real corpora or need them (the quick start's main job, ``zeroshot``,
``baselines`` and ``demo`` on built-in corpora) are exercised by their own tests on fixtures
(tests/test_pretrain.py, test_zeroshot.py, test_baselines.py, test_demo.py), not from the README's text.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def python_blocks(text: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", text, flags=re.DOTALL)


def test_the_readme_python_example_runs_as_written(tiny_checkpoint, tmp_path):
    blocks = python_blocks((ROOT / "README.md").read_text(encoding="utf-8"))
    assert len(blocks) == 1 and 'FoundationRec.from_pretrained("runs/pretrain/best")' in blocks[0]
    code = blocks[0].replace('"runs/pretrain/best"', repr(str(tiny_checkpoint)))
    (tmp_path / "example.py").write_text(code, encoding="utf-8")
    env = {**os.environ, "FOUNDATION_REC_CACHE": str(tmp_path / "cache")}
    run = subprocess.run([sys.executable, str(tmp_path / "example.py")], check=False, cwd=ROOT, capture_output=True, text=True, timeout=600, env=env)
    assert run.returncode == 0, run.stderr.strip().splitlines()[-1] if run.stderr.strip() else run.returncode
    lines = run.stdout.strip().splitlines()
    titles = {"The Hobbit", "Dune", "Emma", "Neuromancer", "The Silmarillion"}
    assert len(lines) == 3  # five books, the two typed ones left out
    for line in lines:
        title, textual_id, method = line.split(" | ")
        assert title in titles - {"The Hobbit", "Dune"} and textual_id and method == "idgenrec-zeroshot+counts"
