"""Slow: every torchvision classification architecture either exports and verifies, or fails with one clear
sentence (ExportError), never a traceback. Run with `uv run pytest -m slow`."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "export_all_torchvision.py"


def _archs() -> list[str]:
    import torchvision.models

    return sorted(torchvision.models.list_models(module=torchvision.models))


@pytest.fixture(scope="module")
def export_arch():
    spec = importlib.util.spec_from_file_location("export_all_torchvision", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.export_arch


@pytest.mark.slow
@pytest.mark.parametrize("arch", _archs())
def test_torchvision_arch_exports_or_fails_clearly(arch, export_arch, tmp_path):
    row = export_arch(arch, tmp_path, size=128)
    if row["ok"]:
        assert row["relative_diff"] <= 1e-4
    else:
        assert row["message"] and "\n" not in row["message"] and "Traceback" not in row["message"]
        assert "cannot be exported" in row["message"] or "does not match PyTorch" in row["message"]
