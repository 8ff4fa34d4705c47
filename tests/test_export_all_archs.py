"""Every torchvision classification architecture exports to ONNX and verifies against PyTorch (relative logit
difference <= 1e-4), except the few named in CANNOT_EXPORT, which must fail with their stated reason in one
sentence. Any other failure fails the test.

The default suite exports three small architectures whose graphs use different operators (Fire modules and
concatenation; hard-swish and squeeze-excitation; channel shuffle and chunking); the whole list is slow: run it
with `uv run pytest -m slow` (about 12 minutes on 2 cores; see benchmarks/README.md).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "export_all_torchvision.py"
RELATIVE_TOLERANCE = 1e-4  # cnncli's own fp32 verification bound

REPRESENTATIVE = ("squeezenet1_1", "mobilenet_v3_small", "shufflenet_v2_x0_5")

# architecture -> (what its one-sentence refusal must say, why it cannot be exported)
CANNOT_EXPORT = {
    "regnet_y_128gf": ("2 GB limit", "2.5 GB of float32 weights, over the 2 GB protobuf limit of one "
                                     "self-contained ONNX file"),
    "vit_h_14": ("2 GB limit", "2.5 GB of float32 weights, over the 2 GB protobuf limit of one self-contained "
                               "ONNX file"),
}


def export_script():
    spec = importlib.util.spec_from_file_location("export_all_torchvision", SCRIPT)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    return script


def export_problem(script, arch: str, folder: Path) -> str | None:
    """None when ``arch`` exports and verifies (or fails exactly as CANNOT_EXPORT says), else what went wrong."""
    row = script.export_arch(arch, folder, size=128)
    print(f"{arch:24} {'pass' if row['ok'] else 'FAIL'} {row['exporter']} {row['relative_diff']} {row['message']}")
    if not row["ok"]:
        expected = CANNOT_EXPORT.get(arch)
        if expected is None:
            return f"{arch} failed to export: {row['message']}"
        if expected[0] not in row["message"] or "\n" in row["message"]:
            return f"{arch} should be refused in one sentence naming the {expected[0]!r}, not: {row['message']}"
        return None
    if not (row["relative_diff"] is not None and row["relative_diff"] <= RELATIVE_TOLERANCE):
        return f"{arch} exported but differs from PyTorch by {row['relative_diff']} (allowed {RELATIVE_TOLERANCE})"
    if not row["exporter"]:
        return f"{arch} exported without saying which exporter worked"
    return None


@pytest.mark.parametrize("arch", REPRESENTATIVE)
def test_representative_architectures_export_and_verify(arch, tmp_path):
    assert export_problem(export_script(), arch, tmp_path) is None


def test_the_architectures_that_cannot_export_are_real_names():
    """A renamed or removed architecture must not keep an exemption alive."""
    from cnncli.models.registry import torchvision_archs

    assert set(CANNOT_EXPORT) <= set(torchvision_archs())
    assert not set(CANNOT_EXPORT) & set(REPRESENTATIVE)


@pytest.mark.slow
def test_every_torchvision_arch_exports_and_verifies(tmp_path):
    from cnncli.models.registry import torchvision_archs

    script = export_script()
    problems = [problem for arch in torchvision_archs() if arch not in REPRESENTATIVE
                if (problem := export_problem(script, arch, tmp_path)) is not None]
    assert not problems, f"{len(problems)} unexpected export failure(s):\n" + "\n".join(problems)
