"""House rules on the package's shape, checked on its source."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "foundation_rec"
MAX_FUNCTION_LINES = 80


def test_no_function_in_the_package_or_benchmarks_is_longer_than_80_lines():
    long = []
    for path in sorted([*PACKAGE.rglob("*.py"), *(PACKAGE.parent / "benchmarks").rglob("*.py")]):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                first = min([node.lineno, *(d.lineno for d in node.decorator_list)])
                if node.end_lineno - first + 1 > MAX_FUNCTION_LINES:
                    long.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno} {node.name} ({node.end_lineno - first + 1} lines)")
    assert len(list(PACKAGE.rglob("*.py"))) > 20  # the walk found the package
    assert not long, "functions over 80 lines: " + "; ".join(long)


def test_no_test_or_benchmark_calls_a_private_method_of_the_trainer():
    tree = ast.parse((PACKAGE / "train.py").read_text())
    trainer = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "Trainer")
    private = {f.name for f in trainer.body if isinstance(f, ast.FunctionDef) and f.name.startswith("_") and not f.name.endswith("__")}
    assert "_epoch" in private  # the rule has something to check
    calls = []
    for folder in ("tests", "benchmarks"):
        for path in sorted((PACKAGE.parent / folder).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
                if isinstance(node, ast.Attribute) and node.attr in private:
                    calls.append(f"{folder}/{path.name}:{node.lineno} .{node.attr}")
    assert not calls, "private Trainer methods used outside the package: " + "; ".join(calls)


def test_glibc_allocator_settings_apply_on_import_unless_opted_out():
    import os
    import platform
    import subprocess

    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        pytest.skip("the allocator settings are for glibc")
    code = "import foundation_rec, foundation_rec.allocator as a; print(a._done)"
    env = {k: v for k, v in os.environ.items() if k != "FOUNDATION_REC_MALLOC"}
    on = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout.strip()
    off = subprocess.run([sys.executable, "-c", code], env={**env, "FOUNDATION_REC_MALLOC": "system"}, capture_output=True, text=True, check=True).stdout.strip()
    assert (on, off) == ("True", "False")
