"""``cnncli evaluate MODEL DATA``: accuracy, per-class metrics, confusion matrix, confident errors, calibration."""

from __future__ import annotations

import sys

import typer

from cnncli.cli.common import (
    PRECISIONS,
    TableOrJson,
    batch_size_option,
    choices,
    device_option,
    engine_option,
    workers_option,
)

LEFT_OUT_NAMED = 5  # images identical to a training image named on stderr (all of them in JSON)


def register(app: typer.Typer) -> None:
    @app.command("evaluate", short_help="Accuracy, per-class metrics and confusion matrix on a dataset.")
    def command(
        model: str = typer.Argument(..., metavar="MODEL",
                                    help="A cnncli model file (.safetensors, or .onnx where supported) or a "
                                         "registry name."),
        data: str = typer.Argument(..., metavar="DATA", help="A dataset folder or CSV manifest."),
        split: str = typer.Option("auto", "--split", metavar="[auto|test|val|train|all]",
                                  help="Which images to score. auto (default): test/ if present, else val/, else the "
                                       "seeded hold-out that train used (rebuilt from the model file's record), or, "
                                       "in any other folder, every image; images identical to a training image are "
                                       "left out. all: every image, including any the model trained on."),
        errors: str = typer.Option("default", "--errors", metavar="N|all",
                                   help="How many misclassified images to list, most confident first (default: all "
                                        "in JSON, 12 in the table)."),
        fmt: TableOrJson = typer.Option("table", "--format", "-f", metavar=choices("table", "json"),
                                        help="Output format."),
        batch_size: int = batch_size_option(),
        device: str = device_option(),
        plots: str | None = typer.Option(None, "--plots", metavar="DIR",
                                         help="Write confusion_matrix.png, reliability.png and errors.png here."),
        workers: int | None = workers_option("Worker processes (default: one per core; 0: everything in this "
                                             "process)."),
        engine: str = engine_option(),
        precision: str = typer.Option("fp32", "--precision", metavar=choices(*PRECISIONS),
                                      help="int8 or bf16: score that precision and judge it against fp32 on the "
                                           "same images (top-1 accuracy and agreement where fp32 is decisive; "
                                           "multi-label: mAP and per-class agreement at the thresholds; speed)."),
        calib: str | None = typer.Option(None, "--calib", metavar="DIR",
                                         help="Folder of calibration images for --precision int8 (default: the set "
                                              "the model file records)."),
        allow_outside: bool = typer.Option(False, "--allow-outside",
                                           help="A CSV manifest may name files outside its own folder (.. or "
                                                "absolute paths)."),
    ) -> None:
        """Accuracy, per-class metrics and the confusion matrix of a model on a dataset."""
        from cnncli.core.console import info, to_text, warn
        from cnncli.core.errors import UsageError
        from cnncli.evaluate.run import (
            TABLE_ERRORS,
            evaluate_model,
            render_evaluation,
            render_precision_figures,
            save_plots,
        )

        if errors == "default":
            n_errors = None if fmt == "json" else TABLE_ERRORS
        elif errors == "all":
            n_errors = None
        elif errors.isdigit():
            n_errors = int(errors)
        else:
            raise UsageError(f"--errors takes a number of images or 'all', not {errors!r}.")
        if plots:
            from cnncli.core.paths import check_output_location

            check_output_location(plots, "--plots", folder=True)
        from cnncli.evaluate.multilabel import multilabel_card_of

        multilabel = multilabel_card_of(model)
        if multilabel is not None:  # a multi-label model: mAP, F1 at the thresholds, exact match (its own module)
            from cnncli.evaluate.multilabel_run import run_multilabel_evaluation

            run_multilabel_evaluation(model, data, multilabel, split=split, fmt=fmt, n_errors=n_errors, plots=plots,
                                      batch_size=batch_size, device=device, workers=workers, engine=engine,
                                      precision=precision, calib=calib, allow_outside=allow_outside)
            return
        figures = None
        if precision == "fp32":
            result = evaluate_model(model, data, split=split, batch_size=batch_size, device=device, workers=workers,
                                    engine=engine, allow_outside=allow_outside)
        else:
            from cnncli.evaluate.precision import evaluate_precision

            result, figures = evaluate_precision(model, data, precision, split=split, batch_size=batch_size,
                                                 device=device, workers=workers, calib=calib, engine=engine,
                                                 allow_outside=allow_outside)
        if fmt == "json":
            info(f"scored {result.n_images} images: {result.split['description']}")
        for bad in result.unreadable[:5]:
            warn(f"skipped: {bad['error']}")
        left_out = result.split.get("left_out") or []
        for path in left_out[:LEFT_OUT_NAMED]:
            warn(f"left out, identical to a training image: {path}")
        if len(left_out) > LEFT_OUT_NAMED:
            warn(f"... and {len(left_out) - LEFT_OUT_NAMED} more identical to training images (--format json lists "
                 "them all under split.left_out)")
        if fmt == "json":
            report = result.to_dict()
            report["errors"] = report["errors"][:n_errors]
            if figures is not None:
                report["precision"] = figures.to_dict()
            sys.stdout.write(to_text(report) + "\n")
        else:
            render_evaluation(result, sys.stdout, errors_shown=n_errors, root=data)
            if figures is not None:
                render_precision_figures(figures, sys.stdout)
        if plots:
            made = save_plots(result, plots)
            info("plots: " + ", ".join(str(p) for p in made))
