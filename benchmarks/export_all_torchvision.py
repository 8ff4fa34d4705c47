"""Export every torchvision classification architecture to ONNX (random weights, 10 classes) and verify it
against PyTorch; print which pass, with the exporter used, the relative logit difference, or the one-sentence
reason it cannot be exported. Slow (tens of minutes on 2 cores): the ViT-H class of models alone takes minutes.

    uv run python benchmarks/export_all_torchvision.py [--size 128] [ARCH ...]
"""

from __future__ import annotations

import argparse
import re
import tempfile
import time
from pathlib import Path


def natural_input_size(arch: str) -> int | None:
    """The fixed input size an architecture insists on, if any (ViT and MaxViT need 224)."""
    return 224 if re.match(r"^(vit_|maxvit)", arch) else None


def export_arch(arch: str, folder: Path, size: int = 128) -> dict:
    """Export ``arch`` at ``size`` (or the size the architecture insists on) and verify it. Returns a row:
    arch, ok, exporter, relative_diff, seconds, message (the ExportError sentence when it failed)."""
    import torch

    from cnncli.export.to_onnx import ExportError, export_onnx
    from cnncli.models.registry import create_model

    torch.manual_seed(0)
    built = create_model(arch, weights="none", num_classes=10)
    start = time.perf_counter()
    row = {"arch": arch, "ok": False, "exporter": "", "relative_diff": None, "message": ""}
    try:
        report = export_onnx(built.model, built.card, folder / f"{arch}.onnx",
                             image_size=natural_input_size(arch) or size)
        row.update(ok=True, exporter=report.exporter, relative_diff=report.fp32_verification.relative_diff)
        (folder / f"{arch}.onnx").unlink()
    except ExportError as exc:
        row["message"] = str(exc)
    row["seconds"] = time.perf_counter() - start
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("archs", nargs="*", help="default: every torchvision classification architecture")
    parser.add_argument("--size", type=int, default=128)
    opts = parser.parse_args()
    from cnncli.models.registry import torchvision_archs

    archs = opts.archs or list(torchvision_archs())
    passed = 0
    with tempfile.TemporaryDirectory() as tmp:
        print(f"{'architecture':24} {'result':6} {'exporter':12} {'rel diff':>9} {'s':>6}  reason")
        for arch in archs:
            row = export_arch(arch, Path(tmp), opts.size)
            passed += row["ok"]
            diff = f"{row['relative_diff']:.1e}" if row["relative_diff"] is not None else ""
            print(f"{arch:24} {'pass' if row['ok'] else 'FAIL':6} {row['exporter']:12} {diff:>9} "
                  f"{row['seconds']:6.1f}  {row['message']}", flush=True)
    print(f"{passed} of {len(archs)} architectures export and verify.")


if __name__ == "__main__":
    main()
