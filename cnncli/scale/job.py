"""A predict job at scale, from the command line's options to the summary: list the inputs, cut them into
shards, check the output folder's manifest (resume or refuse), run the missing shards in this process or on Ray,
report progress, and return the exit code (0 all classified, 1 some images failed, 2 usage errors raise)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from cnncli.core.atomic import atomic_open
from cnncli.core.cpus import usable_cores
from cnncli.core.errors import UsageError
from cnncli.scale.uris import is_uri

STREAM_FORMATS = ("table", "json", "jsonl", "csv")


@dataclass
class ScaleOptions:
    inputs: list[str]
    models: list[str | None] = field(default_factory=lambda: [None])
    weights: str | None = None
    top_k: int = 5
    batch_size: int = 32
    device: str = "auto"
    fmt: str = "parquet"
    output: str | None = None
    recursive: bool = True
    workers: int | None = None
    tta: bool = False
    threads: int | None = None
    engine: str = "auto"
    precision: str = "fp32"
    calib: str | None = None
    shard_size: int = 1000
    resume: bool = False
    ray: str | None = None  # "" (a bare --ray: RAY_ADDRESS or a local Ray), "local", or an address
    summary_only: bool = False
    threshold: float | None = None  # multi-label models: one threshold for every class instead of the card's


def model_identity_of(spec: str | None, weights: str | None) -> str:
    """A model's identity for the manifest and part metadata: the file's sha256, or the registry name + weights."""
    from cnncli.engines.base import is_onnx_spec
    from cnncli.engines.cache import model_identity
    from cnncli.models.weights import sha256_of

    if is_onnx_spec(spec):
        return "sha256:" + sha256_of(Path(spec))
    name, fingerprint = model_identity(spec, weights)
    return fingerprint.replace("file:", "sha256:", 1) if fingerprint.startswith("file:") else fingerprint


def _validate(opts: ScaleOptions) -> None:
    if opts.fmt != "parquet" and opts.fmt not in STREAM_FORMATS:
        raise UsageError(f"unknown --format {opts.fmt!r}; choose one of: {', '.join(STREAM_FORMATS)}, parquet.")
    if opts.fmt == "parquet" and not opts.output:
        raise UsageError("--format parquet writes numbered part files into a folder; add --output FOLDER "
                         "(a path, or a URI such as s3://bucket/preds/).")
    if opts.ray is not None and opts.fmt != "parquet":
        raise UsageError("--ray writes parquet part files; add --format parquet --output FOLDER.")


def _decode_threads(workers: int | None) -> int:
    return min(4, usable_cores()) if workers is None else workers


def run(opts: ScaleOptions) -> int:
    from cnncli.scale.sources import list_inputs

    _validate(opts)
    address = None
    if opts.ray is not None:
        from cnncli.scale.ray_runner import check_reachable, resolve_address

        address, source = resolve_address(opts.ray)
        if address is not None:
            check_reachable(address, source)  # before listing: an unreachable cluster fails in seconds
    if opts.output is not None:  # before the model and the listing: a bad location fails in seconds
        from cnncli.scale.destinations import check_output

        check_output(opts.output, folder=opts.fmt == "parquet")
    paths = list_inputs(opts.inputs, recursive=opts.recursive)
    if opts.fmt != "parquet":
        return _run_stream(opts, paths)
    return _run_parts(opts, paths, address)


def _open_engine(opts: ScaleOptions, for_ray: bool):
    from cnncli.engines.base import open_engines

    return open_engines(opts.models or [None], device="cpu" if for_ray else opts.device, weights=opts.weights,
                        threads=opts.threads, tta=opts.tta, engine="onnx" if for_ray and opts.engine == "auto"
                        else opts.engine, precision=opts.precision, calib=opts.calib)


def _run_parts(opts: ScaleOptions, paths: list[str], address: str | None) -> int:
    from cnncli.core.console import info
    from cnncli.core.progress import JobProgress
    from cnncli.scale.parts import Job, OutputFolder, check_output, inputs_fingerprint, shard_bounds
    from cnncli.scale.progress import print_parts_summary
    from cnncli.scale.shards import warm_up_writer

    warm_up_writer()  # pyarrow's imports before the clock starts (seconds on a cold start)
    settings = {"top_k": opts.top_k, "tta": opts.tta, "precision": opts.precision,
                "weights": opts.weights, "recursive": opts.recursive}
    if opts.threshold is not None:  # only then: a single-label job's manifest stays as it was
        settings["threshold"] = opts.threshold
    job = Job(inputs_sha256=inputs_fingerprint(paths), inputs=len(paths),
              model=[model_identity_of(m, opts.weights) for m in (opts.models or [None])],
              settings=settings, shard_size=opts.shard_size)
    folder = OutputFolder(opts.output)
    # refusals first (missing bucket, another job's folder), then the model, then Ray; the manifest is written
    # only when all of them are ready, so a failed start leaves the folder as it was
    done, known = check_output(folder, job, opts.resume)
    if known and len(done) == job.shards:
        info(f"every part of this job ({job.shards}) is already in {folder}; nothing to do.")
        return 0
    engine = _open_engine(opts, for_ray=opts.ray is not None)
    ray = None
    if opts.ray is not None:
        from cnncli.scale.ray_runner import connect, onnx_files

        onnx_files(engine)  # a model that cannot run on the actors is refused before Ray starts
        ray = connect(address)
    try:
        if not known:
            folder.write_manifest(job)
        bounds = shard_bounds(len(paths), opts.shard_size)
        todo = [i for i in range(len(bounds)) if i not in done]
        if done:
            info(f"resuming: {len(done)} of {len(bounds)} parts are already in {folder}; writing the other "
                 f"{len(todo)}.")
        remaining = sum(bounds[i][1] - bounds[i][0] for i in todo)
        with JobProgress(remaining) as progress:
            if ray is not None:
                from cnncli.scale.ray_runner import run_on_ray

                written = run_on_ray(ray, engine, opts, job, folder, paths, bounds, todo, progress)
            else:
                written = _run_local(engine, opts, job, folder, paths, bounds, todo, progress)
    finally:
        if ray is not None:
            from cnncli.scale.ray_runner import disconnect

            disconnect(ray)
    print_parts_summary(progress, folder.location, parts_written=written, parts_skipped=len(done))
    return 1 if progress.failed else 0


def _run_local(engine, opts, job, folder, paths, bounds, todo, progress) -> int:
    from cnncli.scale.shards import ShardPredictor, run_shard

    predictor = ShardPredictor(engine, opts.top_k, opts.batch_size, decode_threads=_decode_threads(opts.workers),
                                threshold=opts.threshold)
    written = 0
    try:
        for index in todo:
            start, stop = bounds[index]
            result = run_shard(predictor, folder, job, index, paths[start:stop], on_batch=progress.advance)
            written += result.written
    finally:
        predictor.close()
    return written


def _run_stream(opts: ScaleOptions, paths: list[str]) -> int:
    """table/json/jsonl/csv for URI inputs or a URI --output: the one predict job of local predict, in one
    process, results in input order; a local --output appears complete, a URI one is uploaded whole when the job
    is done (nothing half-written appears under its name)."""
    from cnncli.predict.job import run_predict_job
    from cnncli.scale.shards import ShardPredictor

    engine = _open_engine(opts, for_ray=False)
    predictor = ShardPredictor(engine, opts.top_k, opts.batch_size, decode_threads=_decode_threads(opts.workers),
                                threshold=opts.threshold)
    try:
        result = run_predict_job(predictor.predict(paths), total=len(paths), fmt=opts.fmt, top_k=opts.top_k,
                                 multilabel=engine.card.multilabel,
                                 output=opts.output, summary_only=opts.summary_only, open_output=open_output)
    finally:
        predictor.close()
    return result.report()


@contextmanager
def open_output(location: str) -> Iterator[IO[str]]:
    """A text stream for --output: a local file through :func:`cnncli.core.atomic.atomic_open`; a URI through a
    temporary file that is uploaded in one piece when the block ends without an exception."""
    if not is_uri(location):
        with atomic_open(location) as stream:
            yield stream
        return
    import tempfile

    from cnncli.scale.sources import filesystem

    fs, key = filesystem(location)
    with tempfile.TemporaryFile("w+", encoding="utf-8", newline="") as stream:
        yield stream
        stream.seek(0)
        try:
            fs.pipe_file(key, stream.read().encode("utf-8", "surrogateescape"))  # CSV: a file name's bytes as they are
        except Exception as exc:  # botocore/aiohttp errors: one sentence, not a traceback
            from cnncli.core.errors import CnncliError
            from cnncli.scale.sources import describe_failure

            raise CnncliError(f"the upload at the end failed: {describe_failure(location, exc)}") from None
