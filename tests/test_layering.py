"""The shape of the house (issue 18): each room imports only from the rooms below it, as declared in
pyproject.toml's import-linter contract (which reads every import statement, function-level ones included); no
circle anywhere in the module graph; a handful of modules at the top and none too long to read; export sits
below the engines and never imports them (issue 15 item 6)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import grimp

ROOT = Path(__file__).resolve().parents[1]
LINT = ("import sys\nfrom importlinter.cli import lint_imports\n"
        "sys.exit(lint_imports(config_filename='pyproject.toml', no_cache=True, no_logo=True))")


def lint_imports(cwd: Path, pythonpath: Path | None = None) -> subprocess.CompletedProcess:
    env = None
    if pythonpath is not None:
        import os

        env = {**os.environ, "PYTHONPATH": str(pythonpath)}
    return subprocess.run([sys.executable, "-c", LINT], cwd=cwd, capture_output=True, text=True, timeout=300, env=env)


def test_the_layer_contract_is_kept():
    done = lint_imports(ROOT)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "1 kept, 0 broken" in done.stdout


def test_the_layer_contract_fails_on_an_upward_import(tmp_path):
    """A copy of the package with one function-level import from core up to the CLI: the contract must break and
    name it (so the contract is not vacuous, and function-level imports are seen)."""
    shutil.copytree(ROOT / "cnncli", tmp_path / "cnncli", ignore=shutil.ignore_patterns("__pycache__", "static"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    errors = tmp_path / "cnncli" / "core" / "errors.py"
    errors.write_text(errors.read_text() + "\n\ndef _upward():\n    from cnncli.cli import app\n\n    return app\n")
    done = lint_imports(tmp_path, pythonpath=tmp_path)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "BROKEN" in done.stdout
    assert "cnncli.core.errors -> cnncli.cli.app" in done.stdout


def strongly_connected(graph) -> list[list[str]]:
    """Tarjan's algorithm over grimp's graph: every group of modules that import each other in a circle."""
    sys.setrecursionlimit(max(10_000, sys.getrecursionlimit()))
    index, low, stack, on_stack, groups, counter = {}, {}, [], set(), [], [0]

    def visit(module):
        index[module] = low[module] = counter[0]
        counter[0] += 1
        stack.append(module)
        on_stack.add(module)
        for other in graph.find_modules_directly_imported_by(module):
            if other not in index:
                visit(other)
                low[module] = min(low[module], low[other])
            elif other in on_stack:
                low[module] = min(low[module], index[other])
        if low[module] == index[module]:
            group = []
            while True:
                other = stack.pop()
                on_stack.discard(other)
                group.append(other)
                if other == module:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for module in sorted(graph.modules):
        if module not in index:
            visit(module)
    return groups


def test_no_import_circle_counting_function_level_imports():
    graph = grimp.build_graph("cnncli")  # grimp reads function-level imports too
    assert graph.find_modules_directly_imported_by("cnncli.engines.base"), "grimp saw no imports at all"
    assert strongly_connected(graph) == []


def test_few_modules_at_the_top_and_none_too_long():
    top = sorted(p.name for p in (ROOT / "cnncli").glob("*.py"))
    assert len(top) <= 6, top
    long = {str(p.relative_to(ROOT)): n for p in (ROOT / "cnncli").rglob("*.py")
            if (n := len(p.read_text(encoding="utf-8").splitlines())) > 600}
    assert long == {}


def test_export_and_quantize_do_not_import_the_engines():
    code = ("import json, sys\n"
            "import cnncli.export.to_onnx, cnncli.export.quantize, cnncli.export.calibration, cnncli.models.spec\n"
            "print(json.dumps(sorted(m for m in sys.modules if m.startswith('cnncli.engines') or m == 'torch')))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == []
