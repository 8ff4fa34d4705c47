"""Slow: every torchvision classification architecture either exports and verifies, or fails with one clear
sentence (ExportError), never a traceback. Run with `uv run pytest -m slow` (tens of minutes on 2 cores)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "export_all_torchvision.py"


@pytest.mark.slow
def test_every_torchvision_arch_exports_or_fails_clearly(tmp_path):
    from cnncli.models.registry import torchvision_archs

    spec = importlib.util.spec_from_file_location("export_all_torchvision", SCRIPT)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    rows = [script.export_arch(arch, tmp_path, size=128) for arch in torchvision_archs()]
    for row in rows:
        print(f"{row['arch']:24} {'pass' if row['ok'] else 'FAIL'} {row['message']}")
        if row["ok"]:
            assert row["relative_diff"] <= 1e-4, row
        else:
            assert "\n" not in row["message"] and "Traceback" not in row["message"], row
            assert any(s in row["message"] for s in ("cannot be exported", "does not match PyTorch", "2 GB limit")), row
    assert sum(row["ok"] for row in rows) >= len(rows) // 2  # most of torchvision exports
