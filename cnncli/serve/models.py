"""The models one service serves. Each :class:`ServedModel` has a name (``--model NAME=SPEC``, ``--name``), and
its :class:`ModelVersion` now in service: the engine, its own :class:`~cnncli.serve.batcher.DynamicBatcher`, the
card and the sha256 of what was loaded. :meth:`ServedModel.classify` is the one way a request's images reach an
engine (the JSON API and the Open Inference Protocol both use it): admission slots, decoding in the service's
thread pool, the batch queue.

Hot reload (:meth:`ServedModel.reload`, on SIGHUP or ``--watch``): the model's file is opened anew in a thread
(the card and graph are verified as on startup), a new batcher warms it up with one forward pass, and only then
does the new version take over; requests admitted before that finish on the old version, whose batcher stops once
they are answered. A new file that fails any step leaves the old version serving; the error goes to the log, to
``/v1/model`` (``reload.last_error``) and to ``cnncli_model_reload_failures_total``.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cnncli.core.errors import ImageError
from cnncli.data.images import load_pixels_from_bytes
from cnncli.predict.multilabel import label_picker
from cnncli.serve.batcher import DynamicBatcher
from cnncli.serve.errors import busy

WARMUP_LIMIT_S = 300.0  # the longest a reloaded model may take to open and warm up


def model_sha256(spec: str | None, weights: str | None = None) -> str:
    """The sha256 of what a spec loads (the file, or the bundled weights' recorded digest); "" when unknown."""
    from cnncli.engines.cache import model_identity

    try:
        fingerprint = model_identity(spec, weights)[1]
    except Exception:
        return ""
    for marker in ("file:", "sha256:"):
        if marker in fingerprint:
            return fingerprint.split(marker, 1)[1]
    return ""


def default_name(specs: list[str | None]) -> str:
    """A model's name when none is given: the file's stem or the registry name (``efficientnet_lite0`` for the
    default model; ``timm:x/y`` becomes ``timm-x-y``), several joined with ``+``."""
    from cnncli.models.names import DEFAULT_ARCH

    names = []
    for spec in specs or [None]:
        if spec is None:
            names.append(DEFAULT_ARCH)
        elif spec.lower().endswith((".onnx", ".safetensors")) or Path(spec).exists():
            names.append(Path(spec).stem)
        else:
            names.append(spec)
    return "+".join("".join(c if c in NAME_CHARS else "-" for c in n) for n in names)


@dataclass
class ModelSource:
    """How to open a model again: ``open()`` returns a fresh engine; ``path`` is the file a reload watches."""

    open: Callable[[], object]
    path: Path | None = None


@dataclass
class ModelVersion:
    engine: object
    batcher: DynamicBatcher
    sha256: str
    loaded_at: float = field(default_factory=time.time)
    threshold: float | None = None  # serve --threshold: one threshold for every class of a multi-label model

    @property
    def card(self):
        return self.engine.card

    @property
    def pick(self):
        return label_picker(self.engine.card, self.threshold)


@dataclass
class BatcherOptions:
    max_batch: int = 32
    max_wait_ms: float = 5.0
    max_queue: int = 256


def _iso(t: float | None) -> str | None:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t)) if t else None


class ServedModel:
    def __init__(self, name: str, engine, *, options: BatcherOptions, source: ModelSource | None = None,
                 sha256: str = "", precision: str = "fp32", metrics=None, threshold: float | None = None) -> None:
        self.name, self.source, self.options, self.precision, self.metrics = name, source, options, precision, metrics
        self.threshold = threshold
        self.current = self._version(engine, sha256)
        self.reloads = 0
        self.reload_failures = 0
        self.last_error: str | None = None
        self.last_attempt: float | None = None
        self._lock: asyncio.Lock | None = None
        self._retiring: set[asyncio.Task] = set()
        self._seen_stat = self._stat()
        self._describe()

    # ---------------------------------------------------------------- versions
    def _version(self, engine, sha256: str) -> ModelVersion:
        observe = self.metrics.batch_observer(self.name) if self.metrics is not None else None
        batcher = DynamicBatcher(engine, self.options.max_batch, self.options.max_wait_ms, self.options.max_queue,
                                 on_batch=observe)
        return ModelVersion(engine, batcher, sha256, threshold=self.threshold)

    def _describe(self) -> None:
        if self.metrics is not None:
            card = self.current.card
            self.metrics.describe_model(self.name, {"arch": card.arch, "sha256": self.current.sha256,
                                                    "engine": self.current.engine.name, "precision": self.precision,
                                                    "classes": str(card.num_classes)})

    async def start(self) -> None:
        await self.current.batcher.start()

    async def stop(self) -> None:
        for task in list(self._retiring):
            task.cancel()
        await self.current.batcher.stop()

    def summary(self) -> dict:
        card, batcher = self.current.card, self.current.batcher
        return {"name": self.name, "arch": card.arch, "num_classes": card.num_classes,
                "engine": self.current.engine.name, "precision": self.precision, "sha256": self.current.sha256,
                "ready": batcher.ready and not batcher.failure, "reload": self.reload_state()}

    def reload_state(self) -> dict:
        return {"watched_file": str(self.source.path) if self.source and self.source.path else None,
                "loaded_at": _iso(self.current.loaded_at), "reloads": self.reloads,
                "failures": self.reload_failures, "last_attempt": _iso(self.last_attempt),
                "last_error": self.last_error}

    # ---------------------------------------------------------------- classify
    async def classify(self, items: list, decoders: Executor) -> tuple[ModelVersion, list]:
        """Each item is (name, encoded bytes), decoded here, or a normalised float32 C x H x W array. Returns the
        version that answered and, per item, its probabilities or the :class:`ImageError` that stopped it."""
        version = self.current  # a reload that takes over meanwhile does not change what answers this request
        batcher = version.batcher
        if not batcher.try_reserve(len(items)):
            raise busy(f"{batcher.max_queue} images in progress for model {self.name}, --max-queue")
        try:
            loop = asyncio.get_running_loop()
            pre = version.card.preprocessing
            ready = await asyncio.gather(*(
                loop.run_in_executor(decoders, _decode, item[1], item[0], pre) if isinstance(item, tuple)
                else _as_done(item) for item in items))
            good = [px for px in ready if isinstance(px, np.ndarray)]
            rows = iter(await asyncio.gather(*(batcher.classify(px) for px in good)))
            results = [next(rows) if isinstance(px, np.ndarray) else px for px in ready]
        finally:
            batcher.release(len(items))
        if self.metrics is not None:
            bad = sum(1 for r in results if not isinstance(r, np.ndarray))
            self.metrics.images.labels(self.name, "classified").inc(len(results) - bad)
            if bad:
                self.metrics.images.labels(self.name, "unreadable").inc(bad)
        return version, results

    # ---------------------------------------------------------------- hot reload
    def _stat(self) -> tuple | None:
        path = self.source.path if self.source else None
        try:
            st = path.stat() if path else None
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_size, st.st_ino) if st else None

    def changed_on_disk(self) -> bool:
        """Whether the watched file's mtime, size or inode moved since last looked at (for ``--watch``)."""
        now = self._stat()
        if now is None or now == self._seen_stat:
            return False
        self._seen_stat = now
        return True

    async def reload(self) -> bool:
        """Open the file again; swap it in when it differs, opens and warms up. True when a new version took over."""
        if self.source is None or self.source.path is None:
            print(f"cnncli serve: model {self.name} is not served from one file (a registry name or an ensemble); "
                  "nothing to reload.", file=sys.stderr, flush=True)
            return False
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            self._seen_stat = self._stat()
            path = self.source.path
            loop = asyncio.get_running_loop()
            self.last_attempt = time.time()
            try:
                from cnncli.models.weights import sha256_of

                sha = await loop.run_in_executor(None, sha256_of, path)
                if sha == self.current.sha256:
                    print(f"cnncli serve: model {self.name}: {path} is unchanged (sha256 {sha[:12]}); nothing to "
                          "reload.", file=sys.stderr, flush=True)
                    return False
                if path.suffix.lower() == ".safetensors":  # the card first: torch-free, refuses a damaged file at once
                    from cnncli.models.checkpoint import read_card

                    await loop.run_in_executor(None, read_card, path)
                engine = await asyncio.wait_for(loop.run_in_executor(None, self.source.open), WARMUP_LIMIT_S)
                version = self._version(engine, sha)
                await self._warm(version)
            except Exception as exc:
                self.reload_failures += 1
                self.last_error = f"{path}: {_one_line(exc)}"
                if self.metrics is not None:
                    self.metrics.reload_failures.labels(self.name).inc()
                print(f"error: model {self.name}: the new {path} was refused ({_one_line(exc)}); the model loaded "
                      f"at {_iso(self.current.loaded_at)} keeps serving.", file=sys.stderr, flush=True)
                return False
            old, self.current = self.current, version
            self.reloads += 1
            self.last_error = None
            if self.metrics is not None:
                self.metrics.reloads.labels(self.name).inc()
            self._describe()
            task = asyncio.create_task(self._retire(old), name=f"cnncli-retire-{self.name}")
            self._retiring.add(task)
            task.add_done_callback(self._retiring.discard)
            print(f"cnncli serve: model {self.name} reloaded from {path} (sha256 {sha[:12]}, "
                  f"{version.card.arch}, {version.card.num_classes} classes).", file=sys.stderr, flush=True)
            return True

    async def _warm(self, version: ModelVersion) -> None:
        batcher = version.batcher
        await batcher.start()
        deadline = time.monotonic() + WARMUP_LIMIT_S
        while not batcher.ready and batcher.warmup_error is None and batcher.failure is None:
            if time.monotonic() > deadline:
                batcher.warmup_error = f"no warm-up forward pass within {WARMUP_LIMIT_S:g} s"
                break
            await asyncio.sleep(0.01)
        if not batcher.ready:
            await batcher.stop()
            raise RuntimeError(f"its warm-up forward pass failed ({batcher.warmup_error or batcher.failure})")

    async def _retire(self, old: ModelVersion, limit_s: float = 120.0) -> None:
        """Stop the old version's batcher once the requests it admitted are answered (each is bounded by
        ``--timeout``; ``limit_s`` is a backstop)."""
        deadline = time.monotonic() + limit_s
        while old.batcher.reserved and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        await old.batcher.stop()


def _one_line(exc: BaseException) -> str:
    from cnncli.core.errors import CnncliError

    text = str(exc).strip().replace("\n", " ").rstrip(".")
    return text if isinstance(exc, CnncliError) and text else f"{type(exc).__name__}: {text}"


async def _as_done(value):
    return value


def _decode(data: bytes, name: str, pre):
    try:
        return load_pixels_from_bytes(data, name, pre)
    except ImageError as exc:
        return exc
    except Exception as exc:  # a decoder bug fails this image only
        return ImageError(f"{name}: cannot read the image ({type(exc).__name__}: {exc}).")


NAME_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-+")


def _named(spec: str) -> tuple[str, str] | None:
    """``NAME=SPEC`` split, or None when ``spec`` is a plain spec (an existing path may hold ``=``)."""
    if "=" not in spec or Path(spec).exists():
        return None
    name, _, rest = spec.partition("=")
    return name, rest


def model_entries(specs: list[str], name: str | None, open_engines: Callable[[list], object],
                  weights: str | None = None) -> list[tuple]:
    """The (name, engine, source, sha256) of each model ``cnncli serve`` was given: ``--model NAME=SPEC`` repeated
    (several models, each its own batcher), or plain specs (one model: their ensemble when several), named by
    ``name`` or :func:`default_name`. ``open_engines(specs)`` opens one engine; a model from one file can be
    reloaded (its :class:`ModelSource` watches that file)."""
    from cnncli.core.errors import UsageError

    named = [_named(s) for s in specs]
    if any(named):
        if not all(named):
            plain = next(s for s, n in zip(specs, named) if n is None)
            raise UsageError(f"--model {plain} has no NAME=; with several named models give each as NAME=SPEC.")
        if name is not None:
            raise UsageError("--name names the one model; with NAME=SPEC models each is named already.")
        groups = [(n, [s]) for n, s in named]
    else:
        groups = [(name or default_name(list(specs) or [None]), list(specs) or [None])]
    seen: set[str] = set()
    for model_name, group in groups:
        if not model_name or not set(model_name) <= NAME_CHARS:
            raise UsageError(f"model name {model_name!r} must be letters, digits and _ . - + (it goes in URLs).")
        if model_name in seen:
            raise UsageError(f"two models are named {model_name!r}; each --model NAME=SPEC needs its own NAME.")
        if any(not s for s in group if s is not None):
            raise UsageError(f"--model {model_name}= has no SPEC after the =.")
        seen.add(model_name)
    entries = []
    for model_name, group in groups:
        engine = open_engines(group)
        one_file = len(group) == 1 and group[0] is not None and Path(group[0]).is_file()
        source = ModelSource(open=lambda g=group: open_engines(g),
                             path=Path(group[0]).absolute() if one_file else None)
        sha = model_sha256(group[0], weights) if len(group) == 1 else ""
        entries.append((model_name, engine, source, sha))
    return entries
