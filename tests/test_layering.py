"""The dependency direction between export and the engines (issue 15 item 6): export and quantize sit below the
engines and never import them, so nothing can go round in a circle (engines -> cache -> export -> engines).
Fails on the old main, where cnncli.export.to_onnx imported cnncli.engines.onnx_engine at the top."""

from __future__ import annotations

import json
import subprocess
import sys


def test_export_and_quantize_do_not_import_the_engines():
    code = ("import json, sys\n"
            "import cnncli.export.to_onnx, cnncli.export.quantize, cnncli.export.calibration, cnncli.models.spec\n"
            "print(json.dumps(sorted(m for m in sys.modules if m.startswith('cnncli.engines') or m == 'torch')))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == []
