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


def private_uses(tree: ast.AST) -> list[tuple[int, str]]:
    """``(line, name)`` of every private name (``_x``, not dunder) imported from ``foundation_rec`` or read as an
    attribute of a name imported from it (a module, class or function of the package)."""
    package_names, uses = set(), []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("foundation_rec"):
            for alias in node.names:
                package_names.add(alias.asname or alias.name)
                if alias.name.startswith("_"):
                    uses.append((node.lineno, alias.name))
        elif isinstance(node, ast.Import):
            package_names |= {(a.asname or a.name).split(".")[0] for a in node.names if a.name.startswith("foundation_rec")}
    for node in ast.walk(tree):
        if (isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.endswith("__")
                and isinstance(node.value, ast.Name) and node.value.id in package_names):
            uses.append((node.lineno, f"{node.value.id}.{node.attr}"))
    return uses


def test_tests_and_benchmarks_use_no_private_name_of_the_package():
    assert private_uses(ast.parse("from foundation_rec.idgen import _x\nfrom foundation_rec import decoding\ndecoding._y")) == [
        (1, "_x"), (3, "decoding._y")]  # the rule finds both forms
    paths = sorted([*(PACKAGE.parent / "tests").glob("*.py"), *(PACKAGE.parent / "benchmarks").glob("*.py")])
    assert any(p.parent.name == "benchmarks" for p in paths)  # the rule reads the benchmarks too
    found = [f"{path.parent.name}/{path.name}:{line} {name}" for path in paths
             for line, name in private_uses(ast.parse(path.read_text(), filename=str(path)))]
    assert not found, "tests or benchmarks reach into private names: " + "; ".join(found)


def test_glibc_allocator_settings_apply_on_import_unless_opted_out():
    import os
    import platform
    import subprocess

    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        pytest.skip("the allocator settings are for glibc")
    code = "import foundation_rec, foundation_rec.allocator as a; print(a.keep_freed_memory())"
    env = {k: v for k, v in os.environ.items() if k != "FOUNDATION_REC_MALLOC"}
    on = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout.strip()
    off = subprocess.run([sys.executable, "-c", code], env={**env, "FOUNDATION_REC_MALLOC": "system"}, capture_output=True, text=True, check=True).stdout.strip()
    assert (on, off) == ("True", "False")
