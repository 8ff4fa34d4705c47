"""Running a job's shards on Ray: a pool of long-lived actors, each loading the model once (onnxruntime, one CPU
per actor, or one GPU with ``--device cuda``) and writing the parts of the shards it is handed.

Without an address (and without RAY_ADDRESS) a local Ray starts on this machine's cores, on 127.0.0.1 and without
the dashboard, and none of its processes outlives the driver (:mod:`cnncli.scale.ray_reaper`); with one, the driver
joins that cluster. An address, from ``--ray`` or RAY_ADDRESS, is checked (its form, then a TCP connect of a few
seconds) before any work. Only the core actor API is used (``ray.init``,
``ray.remote``, ``ray.put``, ``ray.wait``, ``ray.kill``), which is the same in every Ray the lock allows (>= 2.9);
Ray-version-specific switches are environment variables set before Ray is imported. The driver holds the input
list and shard boundaries, never image data: each actor reads its own images and writes its own part.
"""

from __future__ import annotations

import logging
import os
import re
import socket
from collections import deque
from pathlib import Path

from cnncli.core.cpus import usable_cores
from cnncli.core.errors import CnncliError, UsageError

LOOPBACK = ("127.0.0.1", "localhost", "::1")
# where the driver found its object store, passed on to the actors (never credentials: nodes use their own)
FORWARDED_ENV = ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_REGION", "AWS_DEFAULT_REGION")
CONNECT_TIMEOUT_S = 5.0
IN_FLIGHT_PER_ACTOR = 2
REPLACEMENTS_PER_ACTOR = 2  # an actor that dies (out of memory, a lost node) is replaced this often, per slot


_HOST_PORT = re.compile(r"^(?:ray://)?(?:\[(?P<ip6>[0-9A-Fa-f:.]+)\]|(?P<host>[A-Za-z0-9_.-]+)):(?P<port>\d{1,5})/?$")


def resolve_address(address: str | None) -> tuple[str | None, str]:
    """(the cluster to join: ``host:port``, ``ray://host:port`` or ``auto``, or None to start a local Ray; where it
    came from, for messages). A bare ``--ray`` (``""``) takes RAY_ADDRESS when it is set, as ``ray.init`` does;
    ``--ray local`` always starts a local Ray."""
    if address == "local":
        return None, "--ray"
    if address in (None, ""):
        env = os.environ.get("RAY_ADDRESS", "").strip()
        return (None if env in ("", "local") else env), "RAY_ADDRESS"
    return address, "--ray"


def _host_port(address: str) -> tuple[str, int] | None:
    match = _HOST_PORT.match(address.strip())
    if not match or not 1 <= int(match["port"]) <= 65535:
        return None
    return match["ip6"] or match["host"], int(match["port"])


def check_reachable(address: str, source: str = "--ray") -> None:
    """UsageError in one sentence, within seconds, when ``address`` is not a Ray address or nothing listens there
    (Ray itself waits a minute). ``source``: the option or variable it came from."""
    if address == "auto":
        return
    hp = _host_port(address)
    if hp is None:
        raise UsageError(f"{source} {address!r} is not a Ray address; use HOST:PORT (e.g. 10.0.0.5:6379), "
                         "ray://HOST:PORT, auto, or local for a local Ray.")
    try:
        with socket.create_connection(hp, timeout=CONNECT_TIMEOUT_S):
            pass
    except OSError as exc:
        reason = exc.strerror or str(exc) or type(exc).__name__
        hint = "unset RAY_ADDRESS for a local Ray" if source == "RAY_ADDRESS" else "check the address"
        raise UsageError(f"cannot reach the Ray cluster at {address} (from {source}: {reason}); start it with "
                         f"`ray start --head` or {hint}.") from None


def _prepare_environment(address: str | None) -> None:
    """Ray settings that must be in the environment before ``import ray``."""
    # `uv run` drivers would otherwise ship the whole project (its .venv included) to every worker
    os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
    hp = _host_port(address) if address else None
    if address is None or (hp is not None and hp[0] in LOOPBACK):
        # a single-machine cluster on 127.0.0.1: keep loopback addresses as they are (Ray would rewrite them)
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    if address is not None and "RAY_AUTH_MODE" not in os.environ:
        token_file = Path(os.environ.get("RAY_AUTH_TOKEN_PATH") or Path.home() / ".ray" / "auth_token")
        if os.environ.get("RAY_AUTH_TOKEN") or token_file.is_file():
            os.environ["RAY_AUTH_MODE"] = "token"  # Ray >= 2.52 clusters started with a token expect it


def connect(address: str | None, num_cpus: int | None = None):
    """Start a local Ray (``num_cpus``: default the usable cores) or join ``address``; UsageError in one sentence
    when that fails."""
    _prepare_environment(address)
    import ray

    quiet = {"include_dashboard": False, "logging_level": logging.ERROR, "log_to_driver": False}
    try:
        if address is None:
            from cnncli.scale.ray_reaper import start_reaper

            start_reaper()  # nothing of this local Ray outlives the driver, even after kill -9
            ray.init(address="local", num_cpus=num_cpus or usable_cores(), **quiet)
        else:
            quiet.pop("include_dashboard")
            ray.init(address=address, **quiet)
    except Exception as exc:  # ConnectionError, RuntimeError (version mismatch, auth), ValueError
        first = " ".join(str(exc).split())[:200]
        where = f"the Ray cluster at {address}" if address else "a local Ray"
        raise UsageError(f"cannot start or join {where} ({type(exc).__name__}: {first}).") from None
    return ray


def disconnect(ray) -> None:
    """``ray.shutdown()``, then whatever is left of a local Ray is stopped (its reaper; nothing for a cluster)."""
    from cnncli.scale.ray_reaper import stop_reaper

    try:
        ray.shutdown()
    finally:
        stop_reaper()


def onnx_files(engine) -> list[Path]:
    """The ONNX files behind an engine (one, or an ensemble's members); UsageError for a PyTorch engine."""
    from cnncli.engines.ensemble import EnsembleEngine, FlipTTAEngine
    from cnncli.engines.onnx_engine import OnnxEngine

    if isinstance(engine, FlipTTAEngine):
        return onnx_files(engine.engine)
    if isinstance(engine, EnsembleEngine):
        return [p for e in engine.engines for p in onnx_files(e)]
    if isinstance(engine, OnnxEngine):
        return [engine.path]
    raise UsageError("--ray runs models on onnxruntime: use a model with weights (not --weights none), "
                     "an .onnx file, and --engine auto or onnx.")


class ShardActor:
    """A Ray actor: loads the model once, then predicts shards and writes their parts."""

    def __init__(self, model_refs: list, device: str, threads: int | None, tta: bool, top_k: int,
                 batch_size: int, output: str, job: dict) -> None:
        import tempfile

        import ray

        from cnncli.engines.ensemble import EnsembleEngine, FlipTTAEngine
        from cnncli.engines.onnx_engine import OnnxEngine
        from cnncli.scale.parts import Job, OutputFolder
        from cnncli.scale.shards import ShardPredictor, warm_up_writer

        folder = Path(tempfile.mkdtemp(prefix="cnncli-model-"))
        engines = []
        for i, data in enumerate(ray.get(model_refs)):
            path = folder / f"model{i}.onnx"
            path.write_bytes(data)
            engines.append(OnnxEngine(path, device=device, threads=threads, allow_spinning=False, verbose=False))
        engine = engines[0] if len(engines) == 1 else EnsembleEngine(engines)
        engine = FlipTTAEngine(engine) if tta else engine
        self.predictor = ShardPredictor(engine, top_k, batch_size, decode_threads=0,
                                        threshold=(job.get("settings") or {}).get("threshold"))
        warm_up_writer()
        self.output = OutputFolder(output)
        self.job = Job(**job)

    def ready(self) -> bool:
        return True

    def run(self, index: int, paths: list[str]) -> tuple[int, int, int, bool]:
        from cnncli.scale.shards import run_shard

        result = run_shard(self.predictor, self.output, self.job, index, paths)
        return result.index, result.images, result.failed, result.written


def _shard_failed(exc: BaseException) -> CnncliError:
    first = " ".join(str(exc).split())[:240]
    return CnncliError(f"a shard failed on Ray ({type(exc).__name__}: {first}); the parts written so far are kept: "
                       "run the same command again to finish the job.")


def run_on_ray(ray, engine, opts, job, folder, paths: list[str], bounds: list[tuple[int, int]], todo: list[int],
               progress) -> int:
    """Run the shards ``todo`` on the connected Ray; returns how many parts were written."""
    from dataclasses import asdict

    gpu = opts.device.startswith("cuda")
    resources = ray.cluster_resources()
    slots = int(resources.get("GPU" if gpu else "CPU", 0))
    if slots < 1:
        raise UsageError("--ray --device cuda needs GPUs in the Ray cluster and it has none; use --device cpu."
                         if gpu else "the Ray cluster has no CPUs to run on.")
    model_refs = [ray.put(Path(p).read_bytes()) for p in onnx_files(engine)]
    device = "cuda" if gpu else "cpu"
    threads = opts.threads or 1
    forwarded = {k: os.environ[k] for k in FORWARDED_ENV if os.environ.get(k)}
    Actor = ray.remote(ShardActor).options(num_cpus=0 if gpu else 1, num_gpus=1 if gpu else 0,
                                            **({"runtime_env": {"env_vars": forwarded}} if forwarded else {}))

    def new_actor():
        return Actor.remote(model_refs, device, threads, opts.tta, opts.top_k, opts.batch_size, folder.location,
                            asdict(job))

    from ray.exceptions import RayActorError

    actors = [new_actor() for _ in range(min(slots, len(todo)))]
    replacements = REPLACEMENTS_PER_ACTOR * len(actors)
    queue = deque(todo)
    in_flight: dict = {}  # result ref -> (actor, shard index)

    def submit(actor) -> None:
        if queue:
            index = queue.popleft()
            start, stop = bounds[index]
            in_flight[actor.run.remote(index, paths[start:stop])] = (actor, index)

    written = 0
    try:
        # the model loads in every actor first; like the single-process run (which opens its engine before the
        # clock starts), the img/s of the summary counts from there
        try:
            ray.get([actor.ready.remote() for actor in actors])
        except Exception as exc:  # RayActorError: the model did not load on a node
            first = " ".join(str(exc).split())[:240]
            raise CnncliError(f"the Ray actors could not load the model ({type(exc).__name__}: {first}); check that "
                              "every node has cnncli installed (and onnxruntime-gpu for --device cuda).") from None
        progress.restart()
        for _ in range(IN_FLIGHT_PER_ACTOR):
            for actor in actors:
                submit(actor)
        while in_flight:
            ready, _ = ray.wait(list(in_flight), num_returns=1, timeout=1.0)
            for ref in ready:
                actor, index = in_flight.pop(ref)
                try:
                    _, images, failed, wrote = ray.get(ref)
                except RayActorError as exc:
                    if replacements <= 0:
                        raise _shard_failed(exc) from None
                    # the actor died: its shards go back to the queue (their parts were not written, or were
                    # written whole), and a fresh actor takes its place
                    queue.appendleft(index)
                    if actor in actors:
                        replacements -= 1
                        actors[actors.index(actor)] = actor = new_actor()
                        submit(actor)
                    continue
                except Exception as exc:  # RayTaskError: a bug or an unwritable output
                    raise _shard_failed(exc) from None
                written += bool(wrote)
                progress.advance(images, failed)
                submit(actor)
    finally:
        for actor in actors:
            try:
                ray.kill(actor)
            except Exception:  # an actor that is already gone must not stop the others being killed
                pass
    return written
