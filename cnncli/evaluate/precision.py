"""What int8 or bf16 costs on a user's own labelled images: the figures of :mod:`cnncli.export.judge` for
``evaluate --precision int8|bf16`` (any labelled dataset) and for ``export --int8 static`` (the validation set
that train/finetune recorded in the model file). Torch-free except where a PyTorch model is handed in.
"""

from __future__ import annotations

from pathlib import Path

from cnncli.export.judge import judge_on_samples


def evaluate_precision(model: str, data: str | Path, precision: str, split: str = "auto", batch_size: int = 32,
                       device: str = "auto", workers: int | None = None, calib: str | None = None,
                       engine: str = "auto", allow_outside: bool = False):
    """``evaluate --precision int8|bf16``: the usual evaluation of the lower-precision engine on the images
    ``evaluate`` would score (:func:`cnncli.data.eval_split.choose_eval_split`), and its figures against the fp32
    engine of the same model and runtime on the same images. Returns (EvalResult, PrecisionFigures)."""
    from cnncli.core.errors import UsageError
    from cnncli.data.eval_split import choose_eval_split
    from cnncli.engines.base import is_onnx_spec, open_engine
    from cnncli.evaluate.run import evaluate_engine

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

