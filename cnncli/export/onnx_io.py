"""The ONNX contract every cnncli file keeps, and running such a file on onnxruntime: the input and output names,
session options, and feeding batches to static- or dynamic-batch graphs.

The bottom of the dependency order: :mod:`cnncli.export.to_onnx`, :mod:`cnncli.export.quantize` and the engines
(:mod:`cnncli.engines`) import this module; it imports none of them. Torch-free.
"""

from __future__ import annotations

import numpy as np

INPUT_NAME = "input"  # (N, C, H, W) float32: the input of every ONNX file cnncli writes
OUTPUT_NAME = "logits"  # (N, classes)
CPU = "CPUExecutionProvider"
MISSING_ONNXRUNTIME = ("onnxruntime is not installed: install cnncli[cpu] (its CPU build), or cnncli[gpu] "
                       "(onnxruntime-gpu) on a machine with an NVIDIA GPU; with uv, `uv sync` installs the CPU build.")
BOTH_BUILDS = ("onnxruntime and onnxruntime-gpu are both installed and ship the same module, so which one runs is "
               "undefined: keep one (uv: `uv sync --extra gpu` with UV_NO_GROUP=cpu set, or plain `uv sync`)")


def onnxruntime_module():
    """``import onnxruntime``, or one sentence saying how to install it (cnncli's extras ``cpu`` / ``gpu``)."""
    try:
        import onnxruntime
    except ImportError:
        from cnncli.core.errors import CnncliError

        raise CnncliError(MISSING_ONNXRUNTIME) from None
    return onnxruntime


def onnxruntime_installed() -> bool:
    """Whether some build of onnxruntime can be imported (found without importing it)."""
    import importlib.util

    return importlib.util.find_spec("onnxruntime") is not None


def both_builds_installed() -> bool:
    """Whether the CPU and the CUDA build of onnxruntime are both installed (they overwrite each other's files)."""
    from importlib.metadata import PackageNotFoundError, distribution

    try:
        distribution("onnxruntime")
        distribution("onnxruntime-gpu")
    except PackageNotFoundError:
        return False
    return True
CUDA = "CUDAExecutionProvider"


def session_options(threads: int | None = None, allow_spinning: bool | None = None):
    """intra-op threads (None: onnxruntime's default, one per physical core) and whether idle worker threads
    spin (faster alone, wasteful when image decoders share the cores)."""
    ort = onnxruntime_module()

    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.inter_op_num_threads = 1
    if threads:
        options.intra_op_num_threads = int(threads)
    if allow_spinning is not None:
        options.add_session_config_entry("session.intra_op.allow_spinning", "1" if allow_spinning else "0")
    return options


def cpu_session(path, threads: int | None = None):
    """An onnxruntime CPU session over ``path`` with :func:`session_options`."""
    ort = onnxruntime_module()

    return ort.InferenceSession(str(path), session_options(threads), providers=[CPU])


def run_onnx(session, batch: np.ndarray) -> np.ndarray:
    """Logits from an onnxruntime session, feeding batches of the size a static-batch graph needs."""
    inp = session.get_inputs()[0]
    dtype = np.float16 if inp.type == "tensor(float16)" else np.float32
    fixed = inp.shape[0] if isinstance(inp.shape[0], int) else None
    if fixed is None or fixed == len(batch):
        return np.asarray(session.run(None, {inp.name: batch.astype(dtype, copy=False)})[0], dtype=np.float32)
    outs = []
    for start in range(0, len(batch), fixed):
        chunk = batch[start : start + fixed]
        n = len(chunk)
        if n < fixed:
            chunk = np.concatenate([chunk, np.zeros((fixed - n, *chunk.shape[1:]), chunk.dtype)])
        outs.append(np.asarray(session.run(None, {inp.name: chunk.astype(dtype, copy=False)})[0][:n], np.float32))
    return np.concatenate(outs)
