"""The fast path: PyTorch models run through onnxruntime from a cached, verified ONNX export.

The cache lives in the user cache folder (XDG, via platformdirs; ``CNNCLI_CACHE`` overrides). A cached file's
name carries a key derived from the model's content hash (the weights file, or the sha256 of the bundled
default weights), the cnncli version and the export settings, so a changed model or a new cnncli makes a new
export. Files are written atomically under a lock, verified when made, and re-made when missing or corrupt.
When the cached file exists, nothing here imports torch.

A cache folder that cannot be written (``CNNCLI_CACHE=/proc/x``, a read-only HOME, a file in its place) is not
fatal: a cached file already there is still used, and a new export goes to a temporary cache for this run, with
a warning that names the folder, ``CNNCLI_CACHE`` and ``--engine torch`` (:func:`writable_cache_dir`).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

from cnncli import __version__
from cnncli.core.locks import FileLock
from cnncli.export.calibration import calibration_images, files_fingerprint  # noqa: F401 - re-exported
from cnncli.models.names import DEFAULT_ARCH, TIMM_PREFIX
from cnncli.models.weights import NO_WEIGHTS, PRETRAINED_ALIASES, is_weights_path, read_descriptor, sha256_of

CACHE_FORMAT = 2  # 2: simplified with onnxslim
PRECISIONS = ("fp32", "int8")


_temporary_cache: Path | None = None  # this run's cache, once the configured one proved unwritable


def configured_cache_dir() -> Path:
    """``CNNCLI_CACHE``, else the user cache folder (XDG, via platformdirs)."""
    override = os.environ.get("CNNCLI_CACHE")
    if override:
        return Path(override).expanduser()
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("cnncli"))


def cache_dir() -> Path:
    """Where cached files are looked for: the configured cache, or this run's temporary one if it replaced it."""
    return _temporary_cache or configured_cache_dir()


def _cache_problem(folder: Path) -> str | None:
    from cnncli.core.paths import output_location_problem

    try:
        (folder / "onnx").mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        return exc.strerror or str(exc)
    return output_location_problem(folder / "onnx", folder=True)


def read_kept(name: str, fmt: int, section: str) -> dict:
    """The entries kept in the cache's JSON file ``name`` under ``section`` (measurements kept per machine and
    model), or {} when the file is missing, unreadable or of another ``fmt``."""
    try:
        data = json.loads((cache_dir() / name).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    entries = data.get(section, {}) if isinstance(data, dict) and data.get("format") == fmt else {}
    return entries if isinstance(entries, dict) else {}


def keep(name: str, fmt: int, section: str, key: str, entry: dict) -> None:
    """Add or replace ``key`` in the cache's JSON file ``name`` (see :func:`read_kept`), written atomically."""
    from cnncli.core.atomic import write_bytes_atomic

    entries = read_kept(name, fmt, section)
    entries[key] = entry
    data = json.dumps({"format": fmt, section: entries}, indent=1, sort_keys=True)
    write_bytes_atomic(writable_cache_dir() / name, data.encode())


def writable_cache_dir() -> Path:
    """The cache folder to write into: the configured one when files can be made in it (its folders are created);
    else a temporary cache for this run (removed at exit), with a warning. UsageError (exit 2) when not even a
    temporary folder can be made."""
    global _temporary_cache
    if _temporary_cache is not None:
        return _temporary_cache
    configured = configured_cache_dir()
    problem = _cache_problem(configured)
    if problem is None:
        return configured
    import atexit
    import shutil
    import tempfile

    from cnncli.core.atomic import sweep_stale_work_folders, work_folder_prefix
    from cnncli.core.console import warn
    from cnncli.core.errors import UsageError

    named = f"CNNCLI_CACHE={os.environ['CNNCLI_CACHE']}" if os.environ.get("CNNCLI_CACHE") else \
        f"the cache folder {configured} (set CNNCLI_CACHE to choose another)"
    try:
        sweep_stale_work_folders(tempfile.gettempdir())  # temporary caches of runs that were killed
        _temporary_cache = Path(tempfile.mkdtemp(prefix=work_folder_prefix() + "cache-"))
    except OSError as exc:
        raise UsageError(f"{named} cannot be written ({problem}), and no temporary folder can be made either "
                         f"({exc.strerror or exc}); set CNNCLI_CACHE to a folder you can write to, or use "
                         "--engine torch, which needs no cache.") from None
    atexit.register(shutil.rmtree, _temporary_cache, ignore_errors=True)
    warn(f"{named} cannot be written ({problem}); using a temporary cache for this run, so the fast path is "
         "exported again next time: set CNNCLI_CACHE to a folder you can write to, or use --engine torch.")
    return _temporary_cache


def model_identity(spec: str | None, weights: str | None) -> tuple[str, str]:
    """(a readable name, a content fingerprint) for a model spec, without importing torch."""
    from cnncli.core.paths import require_regular_file

    if spec is not None and (spec.endswith(".safetensors") or Path(spec).exists()):
        path = require_regular_file(spec, "model file")
        return path.stem, "file:" + sha256_of(path)
    arch = spec or DEFAULT_ARCH
    wspec = (weights or "default").strip()
    if is_weights_path(wspec):
        return arch, f"{arch}|file:{sha256_of(require_regular_file(wspec, 'weights file'))}"
    if arch == DEFAULT_ARCH and wspec.lower() in PRETRAINED_ALIASES:
        return arch, f"{arch}|sha256:{read_descriptor(DEFAULT_ARCH)['sha256']}"
    if wspec.lower() in NO_WEIGHTS:
        return arch, f"{arch}|random"  # random weights differ on every build: never cached (see below)
    return arch, f"{arch}|weights:{wspec}"


def cache_key(fingerprint: str, precision: str, calib_fingerprint: str | None = None) -> str:
    material = json.dumps({"model": fingerprint, "cnncli": __version__, "format": CACHE_FORMAT,
                           "precision": precision, "calib": calib_fingerprint, "dynamic_batch": True})
    return hashlib.sha256(material.encode()).hexdigest()[:20]


def cached_path(spec: str | None, weights: str | None, precision: str = "fp32",
                calib_fingerprint: str | None = None) -> Path | None:
    """Where the ONNX export of this model lives (or would live); None when it cannot be cached."""
    name, fingerprint = model_identity(spec, weights)
    if fingerprint.endswith("|random"):
        return None
    safe = name.replace(TIMM_PREFIX, "timm-").replace("/", "_").replace(":", "_")
    return cache_dir() / "onnx" / f"{safe}-{precision}-{cache_key(fingerprint, precision, calib_fingerprint)}.onnx"


def _usable(path: Path) -> bool:
    """The cached file exists and onnxruntime can load it (a truncated or corrupt file is not usable)."""
    if not path.is_file() or path.stat().st_size == 0:
        return False
    try:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.log_severity_level = 4
        ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        return True
    except Exception:  # noqa: BLE001 - any load failure means: make it again
        return False


def prepare_cached_onnx(spec: str | None, weights: str | None = None, precision: str = "fp32",
                        calib_images: list[Path] | None = None, quiet: bool = False) -> Path | None:
    """Return the path of a verified ONNX export of ``spec``, exporting it first if the cache lacks it.

    Returns None for models that cannot be cached (random weights). The first export says so on stderr.
    """
    from cnncli.core.console import info

    if precision not in PRECISIONS:
        raise ValueError(precision)
    calib_fp = files_fingerprint(calib_images) if calib_images else None
    path = cached_path(spec, weights, precision, calib_fp)
    if path is None:
        return None
    if path.is_file() and path.stat().st_size > 0:
        return path  # the hot path: the engine's own load reports corruption (see open_cached_engine)
    path = writable_cache_dir() / "onnx" / path.name  # this run's temporary cache when the configured one is read-only
    with FileLock(path.with_suffix(".lock")):
        if _usable(path):  # another process made it while we waited for the lock
            return path
        start = time.perf_counter()
        from cnncli.models.spec import load_for_inference

        model = card = None
        if model_identity(spec, weights)[1].startswith(f"{spec}|"):  # a registry name: check it before announcing
            from cnncli.models.registry import check_arch

            check_arch(spec)
        else:  # a model file: load it first, so a damaged file, card or head is refused before any word of export
            model, card = load_for_inference(spec, weights=weights, device="cpu")
        if not quiet:
            info(f"preparing the fast path for {spec or DEFAULT_ARCH}: exporting to ONNX and verifying it "
                 f"({precision}); this happens once.")
        from cnncli.export.to_onnx import export_onnx

        if model is None:
            model, card = load_for_inference(spec, weights=weights, device="cpu")
        options = {"simplify": True}  # onnxslim folds TF-"same" padding arithmetic: ~35% faster on onnxruntime
        if precision == "int8":
            options["precision"] = "int8-static"
            options["calib_images"] = list(calib_images or [])
        report = export_onnx(model, card, path, **options)
        if not quiet:
            check = report.verification
            if precision == "int8" and check is not None:
                real = check.real_top1_agreement
                info(f"int8 agrees with fp32 on top-1 for {check.top1_agreement:.1%} of {check.inputs} inputs"
                     + (f" ({real:.1%} of {check.real_images} calibration images)" if real is not None else "")
                     + f", calibrated on {len(calib_images or [])} images.")
            info(f"fast path ready in {time.perf_counter() - start:.1f} s: {path}")
    return path
