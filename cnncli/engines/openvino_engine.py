"""The OpenVINO engine: compiles the same exported ONNX file that onnxruntime runs (a user's ``.onnx`` or the
cached export) for the CPU, and keeps OpenVINO's compiled model in the cnncli cache (``<cache>/openvino``).

f32 by default (latency hint, ``INFERENCE_PRECISION_HINT`` f32), so its logits stay within the export tolerance
of onnxruntime's; ``bf16`` is an explicit lower precision (OpenVINO's own default on CPUs with AVX-512 BF16 or
AMX), judged like int8 (:mod:`cnncli.export.judge`); ``int8`` compiles the static-int8 (QDQ) export, which
OpenVINO runs with its int8 kernels (VNNI where the CPU has it), the rest in f32. Torch-free; OpenVINO is imported
only when this engine is opened (it costs a few tenths of a second at start).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cnncli.core.errors import ModelFileError, UsageError
from cnncli.core.numeric import to_probabilities
from cnncli.models.card import ModelCard

PRECISIONS = {"fp32": "f32", "bf16": "bf16", "int8": "f32"}  # --precision -> OpenVINO's inference precision


def openvino_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("openvino") is not None


def openvino_cache_dir() -> Path:
    from cnncli.engines.cache import writable_cache_dir

    return writable_cache_dir() / "openvino"


class OpenVinoEngine:
    """An exported ONNX model compiled by OpenVINO for the CPU: ``predict_proba`` takes (N, C, H, W) float32."""

    compiles_in_each_replica = True  # a worker process imports OpenVINO and compiles the model again

    def __init__(self, path: str | Path, threads: int | None = None, precision: str = "fp32",
                 card: ModelCard | None = None) -> None:
        if precision not in PRECISIONS:
            raise UsageError(f"--engine openvino runs fp32, bf16 or int8, not {precision!r}.")
        if not openvino_available():
            raise UsageError("--engine openvino needs the openvino package: pip install 'cnncli[openvino]'.")
        import openvino as ov

        self.path = Path(path)
        if not self.path.is_file() or self.path.stat().st_size == 0:
            raise ModelFileError(f"model file {self.path} does not exist or is empty; check the path.")
        core = ov.Core()
        cache = openvino_cache_dir()
        cache.mkdir(parents=True, exist_ok=True)
        core.set_property({"CACHE_DIR": str(cache)})
        try:
            model = core.read_model(str(self.path))
        except Exception as exc:  # OpenVINO raises its own exception types
            first = " ".join(str(exc).split())[:160]
            raise ModelFileError(f"{self.path} is not an ONNX model OpenVINO can read ({first}); "
                                 "re-export it with `cnncli export`.") from None
        self.card = card or _card_from_model(model, self.path)
        config = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": PRECISIONS[precision]}
        if threads:
            config["INFERENCE_NUM_THREADS"] = int(threads)
        self.compiled = core.compile_model(model, "CPU", config)
        actual = str(self.compiled.get_property("INFERENCE_PRECISION_HINT"))
        self.precision = "bf16" if "bf16" in actual or "bfloat16" in actual else "fp32"
        if precision == "int8":
            self.precision = "int8"  # a quantized graph; what is not quantized runs in f32
        if precision == "bf16" and self.precision != "bf16":
            raise UsageError("--precision bf16: this CPU has no bf16 support (AVX-512 BF16 or AMX), so OpenVINO "
                             "would run f32; drop --precision bf16.")
        self.request = self.compiled.create_infer_request()
        self.output = self.compiled.output(0)
        shape = self.compiled.input(0).get_partial_shape()
        self.fixed_batch = shape[0].get_length() if shape.rank.is_static and shape[0].is_static else None
        self.name = f"openvino (CPU, {self.precision})"
        self.threads = threads

    def replica_recipe(self) -> tuple:
        """How a worker process re-opens this engine (:mod:`cnncli.predict.replicas`)."""
        return ("openvino", str(self.path), self.precision)

    def predict_logits(self, batch: np.ndarray) -> np.ndarray:
        batch = np.ascontiguousarray(batch, dtype=np.float32)
        step = self.fixed_batch or len(batch)
        outs = []
        for start in range(0, len(batch), max(1, step)):
            chunk = batch[start : start + step]
            n = len(chunk)
            if self.fixed_batch and n < self.fixed_batch:
                chunk = np.concatenate([chunk, np.zeros((self.fixed_batch - n, *chunk.shape[1:]), np.float32)])
            result = self.request.infer({0: chunk}, share_inputs=True)
            outs.append(np.array(result[self.output][:n], dtype=np.float32))  # a copy: the request reuses its buffer
        return np.concatenate(outs) if outs else np.zeros((0, self.card.num_classes), np.float32)

    def predict_proba(self, batch: np.ndarray) -> np.ndarray:
        return to_probabilities(self.predict_logits(batch), self.card.task)


def _card_from_model(model, path: Path) -> ModelCard:
    """The cnncli card that export stored in the ONNX metadata (OpenVINO keeps it in the model's rt_info)."""
    from cnncli.models.card import METADATA_KEY

    try:
        text = model.get_rt_info(["framework", METADATA_KEY]).astype(str)
    except Exception:  # OpenVINO raises when there is no such entry
        text = None
    if text:
        return ModelCard.from_json(text)
    from cnncli.engines.onnx_engine import read_onnx_card_or_default

    return read_onnx_card_or_default(path)
