"""``cnncli predict``: classify images (files, folders, globs, ``-`` for paths on stdin, ``@list.txt``) with the
default model, a registry model or a cnncli model file (PyTorch) or an exported .onnx file (onnxruntime);
ensembles and flip TTA. Object-store URIs, parquet parts and Ray go to :mod:`cnncli.scale`. Several images end
with a summary on stderr."""

from __future__ import annotations

from pathlib import Path

import typer

from cnncli.cli import validate as v
from cnncli.cli.common import (
    PRECISIONS,
    PREDICT_FORMATS,
    PredictFormat,
    batch_size_option,
    choices,
    device_option,
    engine_option,
    output_option,
    threads_option,
    workers_option,
)

PREFETCH_BATCHES = 2


def register(app: typer.Typer) -> None:
    @app.command()
    def predict(
        inputs: list[str] = typer.Argument(..., metavar="IMAGES",
                                           help="Image files, folders, glob patterns, - (paths on stdin, one per "
                                                "line), @LIST (paths in a file) or URIs (s3://bucket/prefix/)."),
        model: list[str] | None = typer.Option(None, "--model", "-m", metavar="MODEL",
                                               help="A cnncli .safetensors file, an exported .onnx file "
                                                    "(onnxruntime, no PyTorch) or a registry name (default: "
                                                    "efficientnet_lite0, ImageNet). Repeat it for an ensemble that "
                                                    "averages the models' probabilities."),
        weights: str | None = typer.Option(None, "--weights", metavar="WEIGHTS",
                                           help="Weights for a registry name: default, an enum name (IMAGENET1K_V2) "
                                                "or a file."),
        top_k: int = typer.Option(5, "--top-k", "-k", parser=v.POSITIVE_INT, metavar="K",
                                  help="How many classes to report per image."),
        batch_size: int = batch_size_option(),
        device: str = device_option(),
        fmt: PredictFormat = typer.Option("table", "--format", "-f", metavar=choices(*PREDICT_FORMATS),
                                          help="Output format; parquet: numbered part files in the --output folder."),
        output: str | None = output_option("Write results here instead of stdout (a file appears complete, missing "
                                           "folders are created): a file, or a folder for --format parquet; a URI "
                                           "(s3://bucket/preds/) works too."),
        summary_only: bool = typer.Option(False, "--summary-only",
                                          help="Print only the summary (images, failed, speed, count per class), not "
                                               "each image."),
        recursive: bool = typer.Option(True, "--recursive/--no-recursive", help="Look into sub-folders."),
        workers: int | None = workers_option("Worker processes (default: one per engine thread; 0: everything in "
                                             "this process)."),
        tta: bool = typer.Option(False, "--tta",
                                 help="Test-time augmentation: average the image and its horizontal flip."),
        threads: int | None = threads_option("Threads for the engine in total, shared among its worker processes "
                                             "(default: one per core)."),
        engine_name: str = engine_option(),
        precision: str = typer.Option("fp32", "--precision", metavar=choices(*PRECISIONS),
                                      help="int8: static int8 on onnxruntime or OpenVINO, calibrated on --calib or on "
                                           "the set a trained model file records; bf16: OpenVINO on CPUs with AVX-512 "
                                           "BF16 or AMX."),
        calib: Path | None = typer.Option(None, "--calib", metavar="DIR",
                                          help="Folder of calibration images for --precision int8 (default: the set "
                                               "the model file records)."),
        ray: str | None = typer.Option(None, "--ray", metavar="[ADDRESS]",
                                       help="Run on Ray: alone, a local Ray on this machine's cores (or RAY_ADDRESS); "
                                            "with HOST:PORT, join that cluster. Writes --format parquet."),
        shard_size: int = typer.Option(1000, "--shard-size", parser=v.POSITIVE_INT, metavar="N",
                                       help="Images per parquet part file (the unit of resuming)."),
        threshold: float | None = typer.Option(None, "--threshold", parser=v.UNIT_INTERVAL, metavar="P",
                                               help="Multi-label models: report the classes with probability >= P "
                                                    "(default: the per-class thresholds tuned on val, in the card)."),
        pipeline: str | None = typer.Option(None, "--pipeline", metavar=choices("auto", "replicas", "decoders"),
                                            help="replicas: each worker decodes and runs its own copy of the engine; "
                                                 "decoders: worker processes decode for one engine here; auto "
                                                 "(default, or CNNCLI_PIPELINE): measured once per machine."),
        verbose: bool = typer.Option(False, "--verbose", help="Say which pipeline and engine ran, and why."),
        resume: bool = typer.Option(False, "--resume",
                                    help="Continue a --format parquet job in --output, skipping its finished parts "
                                         "(also automatic when the folder's manifest matches)."),
    ) -> None:
        """Classify images. Exit code 0 if every image was classified, 1 if any failed, 2 for usage errors."""
        from cnncli.core.errors import UsageError
        from cnncli.data.inputs import expand_input_lists, refuse_web_urls
        from cnncli.scale.uris import wants_scale

        if summary_only and output is not None:
            raise UsageError("--summary-only writes no per-image results, so --output has nothing to write; drop one.")
        refuse_web_urls(inputs)
        specs = expand_input_lists(inputs)
        refuse_web_urls(specs)
        if wants_scale(specs, output, fmt, ray):  # URIs, parquet parts, Ray: cnncli/scale/
            from cnncli.scale.job import ScaleOptions, run

            code = run(ScaleOptions(
                inputs=specs, models=list(model or [None]), weights=weights, top_k=top_k, batch_size=batch_size,
                device=device, fmt=fmt, output=output, recursive=recursive, workers=workers, tta=tta, threads=threads,
                engine=engine_name, precision=precision, calib=str(calib) if calib else None, shard_size=shard_size,
                resume=resume, ray=ray, summary_only=summary_only, threshold=threshold))
            if code:
                raise typer.Exit(code)
            return
        from cnncli.core.paths import check_output_location
        from cnncli.data.inputs import collect_inputs
        from cnncli.engines.base import open_engines
        from cnncli.predict.decode import default_workers
        from cnncli.predict.job import run_predict_job
        from cnncli.predict.run import predict_items

        if output is not None:  # at scale, cnncli.scale.destinations.check_output does this (URIs too)
            check_output_location(output, "--output")
        from cnncli.predict.pipeline import requested_pipeline

        requested_pipeline(pipeline)  # a bad --pipeline or CNNCLI_PIPELINE is refused before the model loads
        items = collect_inputs(specs, recursive=recursive)
        engine = open_engines(model or [None], device=device, weights=weights, threads=threads, tta=tta,
                              engine=engine_name, precision=precision, calib=str(calib) if calib else None,
                              job_images=len(items))
        from cnncli.predict.multilabel import check_threshold_option

        check_threshold_option(engine.card, threshold, (model or ["the default model"])[0])
        pre = engine.card.preprocessing
        n_workers = default_workers() if workers is None else workers
        v.check_batch_memory(batch_size, pre.input_size, pre.channels, in_flight=n_workers + PREFETCH_BATCHES + 2)
        on_choice = None
        if verbose:
            from cnncli.core.console import info

            info(f"engine: {engine.name}.")

            def on_choice(choice):
                info(choice.describe())
        predictions = predict_items(engine, items, k=top_k, batch_size=batch_size, workers=workers, threshold=threshold,
                                    pipeline=pipeline, on_choice=on_choice)
        result = run_predict_job(predictions, total=len(items), fmt=fmt, top_k=top_k, output=output,
                                 summary_only=summary_only, root=common_root(specs), multilabel=engine.card.multilabel)
        code = result.report()
        if code:
            raise typer.Exit(code)


def common_root(specs: list[str]) -> str | None:
    """The folder that image paths are shown relative to in tables: the input folder when there is one."""
    folders = [s for s in specs if Path(s).is_dir()]
    return folders[0] if len(folders) == 1 and len(specs) == 1 else None
