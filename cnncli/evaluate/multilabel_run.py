"""``cnncli evaluate`` for a multi-label model: the fp32 evaluation (:mod:`.multilabel`) or, with ``--precision
int8|bf16``, that precision's evaluation and its figures against fp32 (:mod:`.multilabel_precision`); the table or
JSON on stdout, the plots. Torch-free except where a PyTorch model is handed in."""

from __future__ import annotations

import sys
from pathlib import Path

from cnncli.core.console import info, to_text, warn
from cnncli.evaluate.multilabel import evaluate_multilabel_model, render_multilabel, save_multilabel_plots
from cnncli.evaluate.run import render_precision_figures


def run_multilabel_evaluation(model: str, data: str, card, split: str, fmt: str, n_errors: int | None,
                              plots: str | None, precision: str = "fp32", calib: str | None = None,
                              **options) -> None:
    """``cnncli evaluate`` for a multi-label model: the table or JSON on stdout, the plots in ``plots``; with
    ``precision`` int8 / bf16, that precision's figures against fp32 (:mod:`.multilabel_precision`)."""
    figures = None
    if precision == "fp32":
        result = evaluate_multilabel_model(model, data, card, split=split, n_errors=n_errors, **options)
    else:
        from cnncli.evaluate.multilabel_precision import evaluate_multilabel_precision

        result, figures = evaluate_multilabel_precision(model, data, card, precision, split=split, calib=calib,
                                                        n_errors=n_errors, **options)
    for bad in result.unreadable[:5]:
        warn(f"skipped: {bad['error']}")
    if fmt == "json":
        info(f"scored {result.n_images} images: {result.split['description']}")
        report = result.to_dict()
        if figures is not None:
            report["precision"] = figures.to_dict()
        sys.stdout.write(to_text(report) + "\n")
    else:
        render_multilabel(result, sys.stdout, errors_shown=n_errors, root=str(Path(data).parent))
        if figures is not None:
            render_precision_figures(figures, sys.stdout)
    if plots:
        made = save_multilabel_plots(result, plots)
        info("plots: " + ", ".join(str(p) for p in made))
