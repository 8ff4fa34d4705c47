"""``cnncli serve``: put a model behind an HTTP endpoint (FastAPI + uvicorn, dynamic batching, a browser page)."""

from __future__ import annotations

from pathlib import Path

import typer

from cnncli.cli import validate as v
from cnncli.cli.common import PRECISIONS, choices, device_option, engine_option, threads_option
from cnncli.core.cpus import usable_cores


def register(app: typer.Typer) -> None:
    @app.command(short_help="Serve a model over HTTP (a JSON API and a page).")
    def serve(
        models: list[str] | None = typer.Argument(None, metavar="MODEL",
                                                  help="Model specs as for predict --model: a .safetensors file, an "
                                                       ".onnx file or a registry name (default: efficientnet_lite0, "
                                                       "ImageNet). Several: an ensemble."),
        model: list[str] | None = typer.Option(None, "--model", "-m", metavar="[NAME=]MODEL",
                                               help="Same as MODEL; repeat it for an ensemble. NAME=MODEL, repeated: "
                                                    "several models, each with its own batcher (/v1/models, "
                                                    "/v1/classify?model=NAME, /v2/models/NAME)."),
        name: str | None = typer.Option(None, "--name", metavar="NAME",
                                        help="The model's name in /v1/models and the Open Inference Protocol "
                                             "(/v2/models/NAME); default: the registry name or the file's stem."),
        watch: float | None = typer.Option(None, "--watch", parser=v.number(float, ge=0.1, le=86_400), metavar="S",
                                           help="Every S seconds, reload a model file that changed (as SIGHUP "
                                                "does): verified and warmed up first; a bad file leaves the old "
                                                "model serving."),
        weights: str | None = typer.Option(None, "--weights", metavar="WEIGHTS",
                                           help="Weights for a registry name: default, an enum name (IMAGENET1K_V2) or "
                                                "a file."),
        host: str = typer.Option("127.0.0.1", "--host", metavar="ADDRESS",
                                 help="Address to listen on. The default answers this machine only; --host 0.0.0.0 "
                                      "opens the service to the network, which needs --api-key-file (or "
                                      "CNNCLI_API_KEY) or an explicit --no-auth."),
        port: int = typer.Option(8000, "--port", "-p", parser=v.number(int, ge=0, le=65535), metavar="PORT",
                                 help="TCP port; 0 picks a free one (printed at startup)."),
        max_batch: int = typer.Option(32, "--max-batch", parser=v.number(int, ge=1, le=4096), metavar="N",
                                      help="Most images in one engine batch."),
        max_wait_ms: float = typer.Option(5.0, "--max-wait-ms", parser=v.number(float, ge=0, le=10_000), metavar="MS",
                                          help="How long the first image of a batch waits for others to join it."),
        max_queue: int = typer.Option(256, "--max-queue", parser=v.number(int, ge=1, le=1_000_000), metavar="N",
                                      help="Most images in the service at once (decoding, queued, in the engine; a "
                                           "request is admitted once its upload is complete); beyond it requests "
                                           "get 503 with Retry-After."),
        timeout: float = typer.Option(30.0, "--timeout", parser=v.number(float, gt=0, le=86_400), metavar="S",
                                      help="Longest one request may take from its headers to its answer (upload, "
                                           "queue, engine): past it 408 if the client had not sent its body, else "
                                           "503. Headers must arrive within 10 s (or S, if less)."),
        max_connections: int = typer.Option(1000, "--max-connections", parser=v.number(int, ge=1, le=1_000_000),
                                            metavar="N",
                                            help="Most connections open at once (lowered to fit the open-file limit); "
                                                 "at the cap the one idle longest is closed, or new ones wait."),
        max_upload_mb: float = typer.Option(25.0, "--max-upload-mb", parser=v.number(float, ge=0.001, le=100_000),
                                            metavar="MB", help="Largest request body in MB; larger uploads get 413 as "
                                                               "soon as they pass it."),
        max_files: int = typer.Option(32, "--max-files", parser=v.number(int, ge=1, le=100_000), metavar="N",
                                      help="Most images in one request (413 beyond)."),
        workers: int | None = typer.Option(None, "--workers", parser=v.number(int, ge=1, le=256), metavar="N",
                                           help="Decoder threads in the one server process (default: up to 4). The "
                                                "model is loaded once; this does not start more processes."),
        top_k: int = typer.Option(5, "--top-k", "-k", parser=v.POSITIVE_INT, metavar="K",
                                  help="Classes per image when a request has no ?top_k=."),
        device: str = device_option(),
        tta: bool = typer.Option(False, "--tta",
                                 help="Test-time augmentation: average the image and its horizontal flip."),
        threads: int | None = threads_option(),
        engine_name: str = engine_option(),
        precision: str = typer.Option("fp32", "--precision", metavar=choices(*PRECISIONS),
                                      help="fp32; int8 (static int8 on onnxruntime, calibrated on --calib or on the "
                                           "set a trained model file records); bf16 (OpenVINO on CPUs with AVX-512 "
                                           "BF16 or AMX)."),
        calib: Path | None = typer.Option(None, "--calib", metavar="DIR",
                                          help="Folder of calibration images for --precision int8."),
        api_key_file: Path | None = typer.Option(None, "--api-key-file", metavar="FILE",
                                                 help="A file holding one API key (one line); every route then "
                                                      "needs Authorization: Bearer KEY or X-API-Key: KEY, except "
                                                      "/healthz, /readyz, /v2/health/live, /v2/health/ready and the "
                                                      "static /, /docs. Default: the CNNCLI_API_KEY variable."),
        no_auth: bool = typer.Option(False, "--no-auth",
                                     help="Serve without an API key on a network address (--host): say it "
                                          "explicitly, or give a key."),
        ray: str | None = typer.Option(None, "--ray", metavar="[ADDRESS]",
                                       help="Serve on Ray Serve: alone, a local Ray on this machine (or RAY_ADDRESS); "
                                            "with HOST:PORT (or ray://, auto), join that cluster. The same routes, "
                                            "key and batching in every replica."),
        replicas: int = typer.Option(1, "--replicas", parser=v.number(int, ge=1, le=10_000), metavar="N",
                                     help="Ray Serve replicas with --ray (each loads the models once)."),
        threshold: float | None = typer.Option(None, "--threshold", parser=v.UNIT_INTERVAL, metavar="P",
                                               help="Multi-label models: answer the classes with probability >= P "
                                                    "(default: the per-class thresholds tuned on val, in the card)."),
        quiet: bool = typer.Option(False, "--quiet", "-q", help="No log line per request."),
    ) -> None:
        """Serve a model over HTTP: POST /v1/classify, GET /v1/model, /v1/models, /metrics, /healthz, /readyz,
        /docs, the Open Inference Protocol (KServe v2) under /v2, and a page at /.

        Concurrent requests are batched for the engine (--max-batch, --max-wait-ms). SIGHUP (or --watch) reloads
        a model file that changed, without dropping requests. Stop with Ctrl-C or SIGTERM: requests in flight get
        up to 5 s to be answered, then it exits 0.
        """

        from cnncli.core.errors import CnncliError, UsageError

        try:
            import fastapi  # noqa: F401
            import python_multipart  # noqa: F401
            import uvicorn  # noqa: F401
        except ImportError as exc:
            raise CnncliError(f"cnncli serve needs FastAPI, uvicorn and python-multipart ({exc.name} is missing); "
                              "install them with: pip install 'cnncli[serve]'.") from None
        from cnncli.engines.base import open_engines
        from cnncli.serve.app import ServeSettings
        from cnncli.serve.auth import resolve_api_key
        from cnncli.serve.models import model_entries
        from cnncli.serve.server import serve_models

        api_key = resolve_api_key(api_key_file, host, no_auth)  # before the model loads: refuse fast
        specs = list(models or []) + list(model or [])
        open_kwargs = dict(device=device, weights=weights, threads=threads, tta=tta, engine=engine_name,
                           precision=precision, calib=str(calib) if calib else None)
        settings = ServeSettings(max_batch=max_batch, max_wait_ms=max_wait_ms, max_queue=max_queue,
                                 max_upload_mb=max_upload_mb, max_files=max_files,
                                 workers=workers or min(4, usable_cores()), default_top_k=top_k,
                                 models=[s for s in specs] or ["default"], precision=precision, tta=tta, log=not quiet,
                                 timeout=timeout, api_key=api_key, watch_s=watch,
                                 threshold=threshold)
        if ray is not None:
            from cnncli.scale.ray_serve import serve_on_ray

            serve_on_ray(specs, name, open_kwargs, settings, host, port, ray, replicas)
            return
        if replicas != 1:
            raise UsageError("--replicas needs --ray (one process serves without it).")
        entries = model_entries(specs, name, lambda group: open_engines(group, **open_kwargs), weights=weights)
        from cnncli.predict.multilabel import check_threshold_option

        for model_name, engine, _source, _sha in entries:
            check_threshold_option(engine.card, threshold, model_name)
        serve_models(entries, settings, host, port, max_connections=max_connections)
