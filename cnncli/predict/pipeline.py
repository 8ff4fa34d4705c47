"""Which predict pipeline runs a job, chosen by measurement on this machine rather than by a fixed rule.

Two pipelines give the same probabilities (tests/test_replicas.py): *replicas* (:mod:`cnncli.predict.replicas`:
each process decodes and runs its own batches on a single-threaded copy of the engine) and *decoders*
(:mod:`cnncli.predict.decode`: decoder processes feed one multi-threaded engine in this process). Which is faster
depends on the CPU: on one 2-core EPYC replicas cost 40% more CPU per image, on another they were the faster one.

``auto`` (the default): a job of :data:`PROBE_MIN_BATCHES` batches or more on an engine that replicates runs its
first batches as a probe, 3 to 8 with each pipeline (:func:`probe_batches`; their results are the job's, in order),
measures img/s (from its first batch out) and CPU ms per image (this process and its children, ``os.times``),
keeps the better pipeline for the rest of the job and writes the figures to ``<cache>/pipelines.json``, keyed by
the CPU model, the usable cores, the engine, the model file's sha256, its input size and the batch size, so later
jobs on this machine skip the probe. Smaller jobs use those kept figures too where a probe made them, else (and on
any failure of the probe's bookkeeping) the rule of before: replicas for two batches or more. An engine that
compiles the model in every replica (OpenVINO: about a second each, 512 JPEGs took 7.3-8.3 s on replicas against
5.9 s on decoders, Intel Xeon, 2 cores) runs on decoders. ``CNNCLI_PIPELINE`` (or ``--pipeline``) replicas or
decoders forces one.

A candidate's img/s leaves out the latency of its pool's start (the replicas' parent works meanwhile, the decoders'
engine waits; a few tenths of a second, a large share of a 3-batch probe); its CPU per image counts the start-up
(children are counted once joined), which weighs against the pipeline with more worker processes to start (the
decoders, at 2 cores), more so where no bytecode is cached (benchmarks/README.md, issue 24); CPU only breaks ties.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from cnncli.data.inputs import InputItem

PIPELINE_ENV = "CNNCLI_PIPELINE"
PIPELINES = ("auto", "replicas", "decoders")
PROBE_MIN_BATCHES = 32  # a job this large repays a probe (and two extra pool start-ups) the first time: a
# 10-batch job (320 JPEGs, Xeon, 2 cores) paid ~25% for its probe, so small jobs keep the rule
PROBE_BATCHES = 3  # batches each candidate runs in the probe, at least...
PROBE_SHARE = 6  # ...and up to a sixth of the job each (at most PROBE_MAX_BATCHES): the pools' start-up, which
PROBE_MAX_BATCHES = 8  # the probe's figures include, then weighs less
FIGURES_FILE = "pipelines.json"
FIGURES_FORMAT = 2  # 2: img/s from the first batch out
CLOSE = 0.02  # img/s within 2%: the pipeline with less CPU per image wins


@dataclass
class PipelineChoice:
    """The pipeline a job runs, why (forced, cached, probe, rule) and the figures it was chosen on."""

    pipeline: str  # "replicas" | "decoders"
    source: str  # "forced" | "cached" | "probe" | "rule"
    figures: dict[str, dict] = field(default_factory=dict)  # pipeline -> {"img_s", "cpu_ms", "images"}
    reason: str = ""

    def describe(self) -> str:
        shown = "; ".join(f"{name} {f['img_s']:.1f} img/s, {f['cpu_ms']:.2f} CPU ms/img ({f['images']} images)"
                          for name, f in sorted(self.figures.items()))
        why = {"forced": self.reason, "cached": "the figures kept for this machine",
               "probe": "measured on this job's first batches", "rule": self.reason}[self.source]
        return f"pipeline: {self.pipeline} ({why}{': ' + shown if shown else ''})."


def requested_pipeline(pipeline: str | None = None) -> str:
    """``pipeline``, else ``CNNCLI_PIPELINE``, else auto; UsageError for anything else."""
    from cnncli.core.errors import UsageError

    value = (pipeline or os.environ.get(PIPELINE_ENV) or "auto").strip().lower()
    if value not in PIPELINES:
        where = "--pipeline" if pipeline else PIPELINE_ENV
        raise UsageError(f"unknown {where} {value!r}; choose one of: {', '.join(PIPELINES)}.")
    return value


def cpu_seconds() -> float:
    """user + sys CPU seconds of this process and its waited-for children."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def machine_key(engine, batch_size: int) -> str:
    """What the pipeline figures depend on: CPU model, usable cores, engine, model content, input size, batch."""
    from cnncli.core.cpus import cpu_model, usable_cores
    from cnncli.models.weights import sha256_of

    kind, path, precision = engine.replica_recipe()
    size = "x".join(str(s) for s in engine.card.preprocessing.input_size)
    return "|".join([cpu_model(), f"cores={usable_cores()}", f"threads={getattr(engine, 'threads', None)}",
                     f"{kind}-{precision}", sha256_of(path)[:16], size, f"batch={batch_size}"])


def read_figures() -> dict:
    from cnncli.engines.cache import read_kept

    return read_kept(FIGURES_FILE, FIGURES_FORMAT, "machines")


def keep_figures(key: str, choice: PipelineChoice) -> None:
    from cnncli.engines.cache import keep

    keep(FIGURES_FILE, FIGURES_FORMAT, "machines", key,
         {"pipeline": choice.pipeline, "figures": choice.figures, "measured": time.time()})


def better(figures: dict[str, dict]) -> str:
    """The pipeline with the higher wall img/s; within :data:`CLOSE`, the one with less CPU per image."""
    r, d = figures["replicas"], figures["decoders"]
    if abs(r["img_s"] - d["img_s"]) <= CLOSE * max(r["img_s"], d["img_s"]):
        return "replicas" if r["cpu_ms"] <= d["cpu_ms"] else "decoders"
    return "replicas" if r["img_s"] > d["img_s"] else "decoders"


def probe_batches(n_items: int, batch_size: int) -> int:
    """How many batches each pipeline runs in the probe of a job of ``n_items``."""
    return min(PROBE_MAX_BATCHES, max(PROBE_BATCHES, -(-n_items // batch_size) // PROBE_SHARE))


def run_pipeline(name: str, engine, items: list[InputItem], batch_size: int, workers: int | None) -> Iterator:
    """:class:`~cnncli.predict.replicas.ScoredBatch` es for ``items`` from pipeline ``name``, in order."""
    from cnncli.predict.decode import decoded_batches
    from cnncli.predict.replicas import ScoredBatch, scored_batches

    if name == "replicas":
        yield from scored_batches(engine, items, batch_size=batch_size, workers=workers,
                                  threads=getattr(engine, "threads", None))
        return
    for batch in decoded_batches(items, engine.card.preprocessing, batch_size=batch_size, workers=workers):
        probs = engine.predict_proba(batch.array) if batch.array is not None else None
        yield ScoredBatch(paths=batch.paths, probs=probs, ok=batch.ok, errors=batch.errors)


def _measured(name: str, engine, items, batch_size, workers, figures: dict) -> Iterator:
    """Run pipeline ``name`` over ``items`` (its pool started and joined inside), recording its figures: img/s
    from its first batch out to its last (steady state: the pool's start-up latency left out, which would favour
    replicas, whose parent works while its workers start), the seconds to that first batch, and CPU ms per image
    over the whole segment (start-up included: the children's CPU is counted once they are joined)."""
    cpu, start, images, first, after_first = cpu_seconds(), time.perf_counter(), 0, None, 0
    for batch in run_pipeline(name, engine, items, batch_size, workers):
        images += len(batch.paths)
        if first is None:
            first = time.perf_counter()
        else:
            after_first += len(batch.paths)
        yield batch
    end, used = time.perf_counter(), cpu_seconds() - cpu
    steady = after_first / (end - first) if after_first and end > first else images / (end - start)
    figures[name] = {"img_s": round(steady, 2), "cpu_ms": round(used / images * 1e3, 3), "images": images,
                     "first_batch_s": round((first or end) - start, 3)}


def pipeline_batches(engine, items: list[InputItem], batch_size: int = 32, workers: int | None = None,
                     pipeline: str | None = None,
                     on_choice: Callable[[PipelineChoice], None] | None = None) -> Iterator:
    """Probabilities for ``items`` in input order, from the pipeline chosen as the module docstring says;
    ``on_choice`` is told the choice (after the probe, when there is one)."""
    from cnncli.predict.replicas import replicable

    wanted = requested_pipeline(pipeline)
    n_batches = -(-len(items) // batch_size)
    can_replicate = workers != 0 and replicable(engine)
    compiles = bool(getattr(engine, "compiles_in_each_replica", False))
    rule = "replicas" if can_replicate and len(items) > max(8, batch_size) and not compiles else "decoders"
    if wanted != "auto":
        name = wanted if can_replicate or wanted == "decoders" else "decoders"
        why = f"{PIPELINE_ENV}/--pipeline {wanted}" + ("" if name == wanted else ", but this engine cannot replicate")
        choice = PipelineChoice(name, "forced", reason=why)
    elif can_replicate and compiles:
        choice = PipelineChoice("decoders", "rule", reason=f"{engine.name} compiles the model again in every replica")
    elif not can_replicate or n_batches < PROBE_MIN_BATCHES:
        reason = "this engine does not replicate" if not can_replicate else \
            f"{n_batches} batch{'es' if n_batches != 1 else ''}, under the {PROBE_MIN_BATCHES} that repay a probe"
        choice = PipelineChoice(rule, "rule", reason=reason)
        if rule == "replicas":  # a smaller job still follows what a probe measured here before
            choice = _kept_choice(engine, batch_size) or choice
    else:
        yield from _probed(engine, items, batch_size, workers, rule, on_choice)
        return
    if on_choice is not None:
        on_choice(choice)
    yield from run_pipeline(choice.pipeline, engine, items, batch_size, workers)


def _kept_choice(engine, batch_size: int) -> PipelineChoice | None:
    """The choice a probe kept for this machine, model and batch size, if any (any trouble reading it: None)."""
    try:
        kept = read_figures().get(machine_key(engine, batch_size))
    except Exception:  # noqa: BLE001 - the bookkeeping must never stop a job
        return None
    if isinstance(kept, dict) and kept.get("pipeline") in PIPELINES[1:]:
        figures = kept.get("figures")
        return PipelineChoice(kept["pipeline"], "cached", figures=figures if isinstance(figures, dict) else {})
    return None


def _probed(engine, items, batch_size, workers, rule: str, on_choice) -> Iterator:
    """A large auto job: the figures kept for this machine, or a probe on the first batches; the rule when either
    fails."""
    try:
        key = machine_key(engine, batch_size)
        kept = read_figures().get(key)
        kept = kept if isinstance(kept, dict) else None  # the cache file is read, not trusted
    except Exception as exc:  # noqa: BLE001 - the bookkeeping must never stop a job
        key, kept = None, None
        choice = PipelineChoice(rule, "rule", reason=f"the probe could not run ({type(exc).__name__}: {exc})")
    if key is None or (kept and kept.get("pipeline") in PIPELINES[1:]):
        if key is not None:
            choice = PipelineChoice(kept["pipeline"], "cached", figures=kept.get("figures", {}))
        if on_choice is not None:
            on_choice(choice)
        yield from run_pipeline(choice.pipeline, engine, items, batch_size, workers)
        return
    figures: dict[str, dict] = {}
    # whole batches, so the job's batches are the same whichever pipeline runs
    step = probe_batches(len(items), batch_size) * batch_size
    yield from _measured("decoders", engine, items[:step], batch_size, workers, figures)
    yield from _measured("replicas", engine, items[step : 2 * step], batch_size, workers, figures)
    choice = PipelineChoice(better(figures), "probe", figures=figures)
    try:
        keep_figures(key, choice)
    except Exception:  # noqa: BLE001 - a read-only cache: the next job probes again
        pass
    if on_choice is not None:
        on_choice(choice)
    yield from run_pipeline(choice.pipeline, engine, items[2 * step :], batch_size, workers)
