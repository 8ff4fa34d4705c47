"""``cnncli serve --ray [ADDRESS] --replicas N``: the same FastAPI app on Ray Serve, so a cluster serves one endpoint.

Each replica is a Ray Serve ingress deployment (``serve.ingress`` with a builder that runs on the replica): it opens
the models itself and builds the app of :func:`cnncli.serve.app.create_app`, so every replica has the same routes,
API key, limits, metrics and its own batcher per model; Ray Serve's HTTP proxy spreads requests over the replicas.
The driver (this process) first opens the models once itself, so a bad spec is one sentence before Ray starts;
then it starts a local Ray (no ADDRESS, or ``local``) or joins ``ADDRESS`` (``HOST:PORT``, ``ray://HOST:PORT``,
``auto``; a bare ``--ray`` takes RAY_ADDRESS when set), through the same address checks, reachability probe
and orphan reaper as predict's ``--ray`` (:mod:`cnncli.scale.ray_runner`), deploys, prints the URL and waits
for SIGTERM or Ctrl-C, then shuts the deployment (and a local Ray) down. On a cluster the model specs must
resolve on every node (a registry name, or a path on a shared volume).

What stays per replica: ``/metrics`` and ``/v1/stats`` are the replica's that answered (scrape Ray's own metrics
for the cluster's), ``--watch`` reloads in each replica; SIGHUP reaches only the driver and is not used here.
"""

from __future__ import annotations

import logging
import signal
import socket
import sys
import threading

from cnncli.core.cpus import usable_cores
from cnncli.scale.ray_runner import check_reachable, connect, disconnect, resolve_address

APP_NAME = "cnncli"


def replica_app_builder(specs: list, name: str | None, open_kwargs: dict, settings):
    """The function Ray Serve runs on each replica to make its ASGI app (cloudpickled with the deployment)."""

    def build_app():
        from cnncli.engines.base import open_engines
        from cnncli.serve.app import create_app
        from cnncli.serve.models import model_entries

        entries = model_entries(list(specs), name, lambda group: open_engines(group, **open_kwargs),
                                weights=open_kwargs.get("weights"))
        return create_app(entries, settings)

    return build_app


def deployment(specs: list, name: str | None, open_kwargs: dict, settings, replicas: int, cpus_per_replica: float):
    """The bound Ray Serve application: ``replicas`` copies of the cnncli app."""
    from ray import serve

    ingress = serve.ingress(replica_app_builder(specs, name, open_kwargs, settings))()
    Deployment = serve.deployment(ingress, name="cnncli", num_replicas=replicas,
                                  ray_actor_options={"num_cpus": cpus_per_replica},
                                  max_ongoing_requests=max(8, settings.max_queue))
    return Deployment.bind()


def free_port(host: str) -> int:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def serve_on_ray(specs: list, name: str | None, open_kwargs: dict, settings, host: str, port: int, address: str,
                 replicas: int) -> None:
    from cnncli.engines.base import open_engines
    from cnncli.serve.models import model_entries

    # the models open here first: a bad spec is one sentence now, not a replica failing on Ray
    entries = model_entries(list(specs), name, lambda group: open_engines(group, **open_kwargs),
                            weights=open_kwargs.get("weights"))
    names = [e[0] for e in entries]
    del entries
    target, source = resolve_address(address)
    if target is not None:
        check_reachable(target, source)  # within seconds, as predict's --ray (Ray itself waits a minute)
    cores = usable_cores()
    cpus = max(1, cores // replicas) if target is None else 1
    open_kwargs = {**open_kwargs, "threads": open_kwargs.get("threads") or cpus}
    ray = connect(target, num_cpus=max(cores, replicas * cpus))  # a local Ray gets the reaper: no orphans
    from ray import serve

    logging.getLogger("ray.serve").setLevel(logging.WARNING)  # its INFO lines would drown the startup line
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        port = port or free_port(host)
        serve.start(http_options={"host": host, "port": port})
        serve.run(deployment(specs, name, open_kwargs, settings, replicas, cpus if target is None else 1),
                  name=APP_NAME, route_prefix="/", blocking=False)
        shown = f"[{host}]" if ":" in host else host
        url = f"http://{shown}:{port}"
        auth = ", API key required" if settings.api_key else ""
        print(f"cnncli serve: {', '.join(names)} on Ray Serve, {replicas} replica(s)"
              f"{' on ' + target if target else ' on a local Ray'}; listening on {url}{auth}; API docs {url}/docs; "
              "Ctrl-C stops.", file=sys.stderr, flush=True)
        stop.wait()
    finally:
        try:
            serve.shutdown()
        finally:
            disconnect(ray)
            for sig, handler in previous.items():
                signal.signal(sig, handler)
    print("cnncli serve: stopped (Ray Serve).", file=sys.stderr, flush=True)
