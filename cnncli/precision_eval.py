"""What int8 or bf16 costs on a user's own labelled images: the figures of :mod:`cnncli.precision_judge` for
``evaluate --precision int8|bf16`` (any labelled dataset) and for ``export --int8 static`` (the validation set
that train/finetune recorded in the model file). Torch-free except where a PyTorch model is handed in.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from cnncli.numeric import softmax
from cnncli.precision_judge import PrecisionFigures, judge_precision

SPEED_BATCH = 32  # (c) is measured on one batch of the images, repeated
SPEED_REPEATS = 3


def recorded_validation(card) -> tuple[list, str] | None:
    """The labelled validation images that train/finetune held out for ``card``'s model, rebuilt from the split
    the card records (:mod:`cnncli.data.eval_split`), with a phrase saying what they are; None when the card
    records no split or the dataset no longer gives the recorded one."""
    record = (card.training or {}).get("split")
    if not record or not record.get("dataset"):
        return None
    from cnncli.data.eval_split import choose_eval_split
    from cnncli.errors import UsageError

    try:
        chosen = choose_eval_split(record["dataset"], split="val", classes=list(card.classes), record=record)
    except (UsageError, OSError, ValueError):
        return None
    if not chosen.samples:
        return None
    return list(chosen.samples), f"the model's recorded validation set ({len(chosen.samples)} images: {chosen.description})"


def _load(samples, pre) -> tuple[np.ndarray, np.ndarray]:
    from cnncli.errors import ImageError
    from cnncli.images import load_and_preprocess

    arrays, labels = [], []
    for sample in samples:
        try:
            arrays.append(load_and_preprocess(sample.path, pre))
            labels.append(sample.label)
        except ImageError:
            continue
    h, w = pre.input_size
    x = np.stack(arrays) if arrays else np.zeros((0, pre.channels, h, w), np.float32)
    return x, np.asarray(labels, dtype=np.int64)


def _throughput(predict, batch: np.ndarray) -> float:
    predict(batch)  # warm-up
    start = time.perf_counter()
    for _ in range(SPEED_REPEATS):
        predict(batch)
    return SPEED_REPEATS * len(batch) / (time.perf_counter() - start)


def judge_on_samples(fp32_predict, low_predict, samples, pre, precision: str, chunk: int = 64,
                     measure_speed: bool = True) -> PrecisionFigures:
    """Figures (a), (b) and, with ``measure_speed``, (c) for two logit functions (batch -> logits) over labelled
    ``samples``."""
    fp32_parts, low_parts, label_parts, speed_batch = [], [], [], None
    for start in range(0, len(samples), chunk):
        x, labels = _load(samples[start : start + chunk], pre)
        if not len(x):
            continue
        speed_batch = x[:SPEED_BATCH] if speed_batch is None else speed_batch
        fp32_parts.append(softmax(fp32_predict(x)))
        low_parts.append(softmax(low_predict(x)))
        label_parts.append(labels)
    if not fp32_parts:
        from cnncli.errors import UsageError

        raise UsageError("none of the labelled images could be read to judge the lower precision.")
    figures = judge_precision(np.concatenate(fp32_parts), np.concatenate(low_parts), np.concatenate(label_parts),
                              precision=precision)
    if measure_speed:
        figures.speedup = _throughput(low_predict, speed_batch) / _throughput(fp32_predict, speed_batch)
    return figures


def judge_int8_export(model, card, int8_path: str | Path) -> tuple[PrecisionFigures, str] | None:
    """``export --int8 static``: the int8 file against the PyTorch fp32 model on the recorded validation set."""
    found = recorded_validation(card)
    if found is None:
        return None
    samples, description = found
    import torch

    from cnncli.onnx_io import cpu_session, run_onnx

    session = cpu_session(int8_path)
    model = model.cpu().eval()

    def fp32(x):
        with torch.inference_mode():
            return model(torch.from_numpy(x)).float().numpy()

    # (c) is not measured here: the fp32 reference is PyTorch eager, not the fp32 ONNX file int8 replaces
    return judge_on_samples(fp32, lambda x: run_onnx(session, x), samples, card.preprocessing, "int8",
                            measure_speed=False), description


def evaluate_precision(model: str, data: str | Path, precision: str, split: str = "auto", batch_size: int = 32,
                       device: str = "auto", workers: int | None = None, calib: str | None = None,
                       engine: str = "auto", allow_outside: bool = False):
    """``evaluate --precision int8|bf16``: the usual evaluation of the lower-precision engine on the images
    ``evaluate`` would score (:func:`cnncli.data.eval_split.choose_eval_split`), and its figures against the fp32
    engine of the same model and runtime on the same images. Returns (EvalResult, PrecisionFigures)."""
    from cnncli.data.eval_split import choose_eval_split
    from cnncli.engines import is_onnx_spec, open_engine
    from cnncli.errors import UsageError
    from cnncli.evaluate import evaluate_engine

    if is_onnx_spec(model):
        raise UsageError(f"--precision {precision} applies to a cnncli model file or a registry name; {model} runs at "
                         "the precision it was exported with.")
    low = open_engine(model, device=device, precision=precision, calib=calib, engine=engine)
    runtime = "openvino" if low.name.startswith("openvino") else "onnx"  # fp32 on the same runtime
    fp32 = open_engine(model, device=device, engine=runtime)
    card = low.card
    chosen = choose_eval_split(data, split=split, classes=list(card.classes), record=(card.training or {}).get("split"),
                               allow_outside=allow_outside)
    result = evaluate_engine(low, chosen.samples, chosen.classes, batch_size=batch_size, workers=workers)
    result.model = str(model)
    result.split = chosen.to_dict()
    result.split["n_images"] = result.n_images
    figures = judge_on_samples(fp32.predict_logits, low.predict_logits, chosen.samples, card.preprocessing, precision)
    return result, figures
