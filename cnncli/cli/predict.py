"""``cnncli predict``: classify images (files, folders, globs) with the default model, a registry model or a
cnncli model file (PyTorch) or an exported .onnx file (onnxruntime); ensembles and flip TTA."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import List, Optional

import typer


def register(app: typer.Typer) -> None:
    @app.command()
    def predict(
        inputs: List[str] = typer.Argument(..., metavar="IMAGE_OR_DIR_OR_GLOB...", help="Image files, folders or glob patterns."),
        model: Optional[List[str]] = typer.Option(None, "--model", "-m", help="A cnncli .safetensors file, an exported .onnx file (onnxruntime, no PyTorch) or a registry name (default: efficientnet_lite0, ImageNet). Repeat it for an ensemble that averages the models' probabilities."),
        weights: Optional[str] = typer.Option(None, "--weights", help="Weights for a registry name: default, an enum name (IMAGENET1K_V2) or a file."),
        top_k: int = typer.Option(5, "--top-k", "-k", min=1, help="How many classes to report per image."),
        batch_size: int = typer.Option(32, "--batch-size", "-b", min=1),
        device: str = typer.Option("auto", "--device", help="auto, cpu or cuda."),
        fmt: str = typer.Option("table", "--format", "-f", help="table, json, jsonl, csv, or parquet (numbered part files in the --output folder)."),
        output: Optional[str] = typer.Option(None, "--output", "-o", help="Write results here instead of stdout (a file appears complete, missing folders are created): a file, or a folder for --format parquet; a URI (s3://bucket/preds/) works too."),
        recursive: bool = typer.Option(True, "--recursive/--no-recursive", help="Look into sub-folders."),
        workers: Optional[int] = typer.Option(None, "--workers", min=0, help="Worker processes (default: one per engine thread; 0: everything in this process)."),
        tta: bool = typer.Option(False, "--tta", help="Test-time augmentation: average the image and its horizontal flip."),
        threads: Optional[int] = typer.Option(None, "--threads", min=1, help="Threads for the engine in total, shared among its worker processes (default: one per core)."),
        engine_name: str = typer.Option("auto", "--engine", help="auto (onnxruntime on CPU from a cached export, PyTorch on CUDA), torch, onnx or openvino (the same cached export compiled by OpenVINO for the CPU)."),
        precision: str = typer.Option("fp32", "--precision", help="fp32; int8 (static int8 on onnxruntime, calibrated on --calib or on the set a trained model file records); bf16 (OpenVINO on CPUs with AVX-512 BF16 or AMX)."),
        calib: Optional[Path] = typer.Option(None, "--calib", help="Folder of calibration images for --precision int8 (default: the set the model file records)."),
        ray: Optional[str] = typer.Option(None, "--ray", metavar="[ADDRESS]", help="Run on Ray: alone, a local Ray on this machine's cores (or RAY_ADDRESS); with HOST:PORT, join that cluster. Writes --format parquet."),
        shard_size: int = typer.Option(1000, "--shard-size", min=1, help="Images per parquet part file (the unit of resuming)."),
        resume: bool = typer.Option(False, "--resume", help="Continue a --format parquet job in --output, skipping its finished parts (also automatic when the folder's manifest matches)."),
    ) -> None:
        """Classify images. Exit code 0 if every image was classified, 1 if any failed, 2 for usage errors."""
        from cnncli.errors import UsageError
        from cnncli.scale import wants_scale

        if wants_scale(inputs, output, fmt, ray):  # URIs, parquet parts, Ray: cnncli/scale/
            from cnncli.scale.job import ScaleOptions, run

            code = run(ScaleOptions(
                inputs=list(inputs), models=list(model or [None]), weights=weights, top_k=top_k, batch_size=batch_size,
                device=device, fmt=fmt, output=output, recursive=recursive, workers=workers, tta=tta, threads=threads,
                engine=engine_name, precision=precision, calib=str(calib) if calib else None, shard_size=shard_size,
                resume=resume, ray=ray))
            if code:
                raise typer.Exit(code)
            return
        from cnncli.report import FORMATS, PredictionWriter, err_console, warn

        if fmt not in FORMATS:
            raise UsageError(f"unknown --format {fmt!r}; choose one of: {', '.join(FORMATS)}.")
        from cnncli.engines import open_engines
        from cnncli.pipeline import collect_inputs
        from cnncli.predict import predict_items

        items = collect_inputs(inputs, recursive=recursive)
        engine = open_engines(model or [None], device=device, weights=weights, threads=threads, tta=tta,
                              engine=engine_name, precision=precision, calib=str(calib) if calib else None)
        from contextlib import nullcontext

        from cnncli.atomic import atomic_open

        failed = 0
        # a file is written beside the target and renamed at the end: a kill or a full disk leaves the previous one
        with atomic_open(output) if output else nullcontext(sys.stdout) as stream:
            writer = PredictionWriter(fmt, stream, top_k)
            progress = None
            if len(items) > 8 and err_console.is_terminal:
                from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

                progress = Progress(TextColumn("predict"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                                    console=err_console, transient=True)
                task = progress.add_task("predict", total=len(items))
                progress.start()
            try:
                for pred in predict_items(engine, items, k=top_k, batch_size=batch_size, workers=workers,
                                          on_batch=(lambda n: progress.advance(task, n)) if progress else None):
                    if pred.error is not None:
                        failed += 1
                        warn(pred.error)
                    writer.write(pred)
            finally:
                if progress is not None:
                    progress.stop()
            writer.close()
        if failed:
            err_console.print(f"{failed} of {len(items)} images failed.", highlight=False)
            raise typer.Exit(1)
