"""``evaluate --precision int8|bf16`` for a multi-label model: the multi-label evaluation of the lower-precision
engine, and its figures against the fp32 engine of the same model and runtime on the same images: mAP, per-class
agreement of the decisions at the thresholds, speed (:mod:`cnncli.export.multilabel_judge`). Torch-free except where
a PyTorch model is handed in."""

from __future__ import annotations

from cnncli.export.multilabel_judge import judge_multilabel_on_samples


def evaluate_multilabel_precision(model: str, data: str, card, precision: str, split: str = "auto",
                                  batch_size: int = 32, device: str = "auto", workers: int | None = None,
                                  calib: str | None = None, engine: str = "auto", n_errors: int | None = None,
                                  allow_outside: bool = False, threshold: float | None = None):
    """Returns (MultiLabelResult of the lower precision, MultiLabelPrecisionFigures)."""
    from cnncli.core.errors import UsageError
    from cnncli.engines.base import is_onnx_spec, open_engine
    from cnncli.evaluate.multilabel import choose_multilabel_samples, score_multilabel_engine

    if is_onnx_spec(model):
        raise UsageError(f"--precision {precision} applies to a cnncli model file or a registry name; {model} runs at "
                         "the precision it was exported with.")
    samples, description = choose_multilabel_samples(data, card, split, allow_outside)
    low = open_engine(model, device=device, precision=precision, calib=calib, engine=engine)
    runtime = "openvino" if low.name.startswith("openvino") else "onnx"  # fp32 on the same runtime
    fp32 = open_engine(model, device=device, engine=runtime)
    result = score_multilabel_engine(low, samples, card, split, description, batch_size, workers, n_errors,
                                     threshold, model=model)
    figures = judge_multilabel_on_samples(fp32.predict_logits, low.predict_logits, samples, card, precision)
    return result, figures
