"""``cnncli export``: a cnncli model (file or registry name) to one verified, self-describing ONNX file."""

from __future__ import annotations

from pathlib import Path

import typer

from cnncli.cli import validate as v
from cnncli.cli.common import choices, image_size_option, output_option

OPSET = v.number(int, ge=7, le=30)


def register(app: typer.Typer) -> None:
    @app.command("export", short_help="Export a model to a verified ONNX file.")
    def export(
        model: str | None = typer.Argument(None, metavar="[MODEL]",
                                           help="A cnncli .safetensors file or a registry name (default: "
                                                "efficientnet_lite0)."),
        output: Path | None = output_option("The .onnx file to write (default: next to a model file, "
                                            "runs/x/best.safetensors -> runs/x/best[.fp16|.int8].onnx; NAME.onnx "
                                            "here for a registry name)."),
        force: bool = typer.Option(False, "--force", help="Replace the output file if it exists (otherwise refused)."),
        weights: str | None = typer.Option(None, "--weights", metavar="WEIGHTS",
                                           help="Weights for a registry name: default, an enum name or a file."),
        opset: int = typer.Option(17, "--opset", parser=OPSET, metavar="N", help="ONNX opset version."),
        dynamic_batch: bool = typer.Option(True, "--dynamic-batch/--static-batch",
                                           help="Batch axis dynamic (default) or fixed at 1."),
        fp16: bool = typer.Option(False, "--fp16",
                                  help="fp16 weights and compute (for CUDA); input and output stay float32."),
        int8: str | None = typer.Option(None, "--int8", metavar=choices("static", "dynamic"),
                                        help="int8 quantization: static (QDQ, calibrated on --calib or the set a "
                                             "trained model file records; fast on CPU) or dynamic (weights only; "
                                             "slow for CNNs)."),
        calib: Path | None = typer.Option(None, "--calib", metavar="DIR",
                                          help="Folder of calibration images for --int8 static (also used to "
                                               "verify; default: the set the model file records)."),
        verify_images: Path | None = typer.Option(None, "--verify-images", metavar="DIR",
                                                  help="Folder of real images to verify on, besides random inputs."),
        simplify: bool = typer.Option(False, "--simplify",
                                      help="Simplify the graph with onnxslim (verified the same way)."),
        verify: bool = typer.Option(True, "--verify/--no-verify",
                                    help="Compare onnxruntime with PyTorch and refuse a file that differs."),
        image_size: int | None = image_size_option("Input size (square) to export at, instead of the model's own."),
    ) -> None:
        """Export a model to ONNX for onnxruntime, verified against PyTorch.

        Exit 1 if it cannot be exported or does not match."""
        from cnncli.core.errors import UsageError

        if fp16 and int8:
            raise UsageError("--fp16 and --int8 exclude each other; pick one.")
        if int8 not in (None, "static", "dynamic"):
            raise UsageError(f"unknown --int8 {int8!r}; use static or dynamic.")
        if output is not None and output.suffix.lower() != ".onnx":
            raise UsageError(f"{output}: the output file must end in .onnx.")
        if output is not None:
            from cnncli.core.paths import check_output_location

            check_output_location(output, "--output")
        precision = "fp16" if fp16 else f"int8-{int8}" if int8 else "fp32"
        from cnncli.core.console import warn
        from cnncli.export.to_onnx import export_model

        if int8 == "dynamic":
            warn("dynamic int8 runs CNN convolutions 5-25x slower than fp32 on CPU; prefer --int8 static --calib DIR.")
        report = export_model(model, output, force=force, weights=weights, calib_dir=calib, verify_dir=verify_images,
                              opset=opset, dynamic_batch=dynamic_batch, precision=precision, simplify=simplify,
                              verify=verify, image_size=image_size)
        render_export_report(report)


def render_export_report(report) -> None:
    from cnncli.core.console import info, warn

    h, w = report.input_size
    size = f"{report.size_bytes / 1e6:.1f} MB"
    if report.precision != "fp32":
        size += f" ({report.size_bytes / report.fp32_size_bytes:.0%} of fp32's {report.fp32_size_bytes / 1e6:.1f} MB)"
    info(f"wrote {report.path}: {report.precision}, {size}, input 'input' "
         f"(N,{'' if report.dynamic_batch else '1,'}C,{h},{w})"
         f"{' batch dynamic' if report.dynamic_batch else ''}, output 'logits', opset {report.opset}, "
         f"{report.exporter} exporter{', simplified' if report.simplified else ''}, {report.seconds:.1f} s.")
    checks = [("fp32 vs PyTorch", report.fp32_verification)]
    if report.precision != "fp32":
        checks.append((f"{report.precision} vs PyTorch fp32", report.verification))
    for label, check in checks:
        if check is None:
            continue
        if check.class_agreement is not None:  # a multi-label file: its decisions at the thresholds
            measured = check.class_agreement
            name, worst = measured.worst_decisive or measured.worst
            info(f"verified {label} on {check.inputs} inputs: max |diff| of probabilities "
                 f"{measured.max_prob_diff:.3g}; decisions at the thresholds agree with fp32's for {worst:.1%} of the "
                 f"{'real images' if check.real_images else 'inputs'} in the worst class {name!r} (mean over the "
                 f"classes {measured.mean:.1%}).")
            continue
        real = (f", {check.real_top1_agreement:.1%} on {check.real_images} real images"
                if check.real_top1_agreement is not None else "")
        if check.confident_top1_agreement is not None:
            real += f", {check.confident_top1_agreement:.1%} on the {check.confident_images} where fp32 is confident"
        info(f"verified {label} on {check.inputs} inputs: max |diff| of logits {check.max_abs_diff:.3g} "
             f"({check.relative_diff:.2g} of the range), top-1 agreement {check.top1_agreement:.1%}{real}.")
    if report.judged is not None and report.judged[0] is not None:
        figures, images = report.judged
        info(f"{figures.precision} against fp32 on {images}:")
        for line in figures.lines("them"):
            info("  " + line)
        if report.precision == "int8-static":
            info("  (c) speed against fp32 onnxruntime: `cnncli evaluate MODEL DATA --precision int8`")
    elif report.judged is not None:  # recorded, but not usable now: say why, not that there is none
        warn(f"{report.precision.split('-')[0]} not judged on the validation set the model file records: "
             f"{report.judged[1]}; "
             "`cnncli evaluate MODEL DATA --precision int8` shows what int8 costs on your labelled images.")
    elif report.precision == "int8-static":
        info("(no labelled validation set recorded in the model file: `cnncli evaluate MODEL DATA --precision int8` "
             "shows what int8 costs on your labelled images)")
    if report.fp32_verification is None:
        warn("not verified (--no-verify).")
    for note in report.notes:
        warn(note)
