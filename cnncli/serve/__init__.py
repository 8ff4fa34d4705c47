"""``cnncli serve``: models behind an HTTP endpoint. :mod:`.models` holds each served model (a name, its engine, its
own batcher, hot reload), :mod:`.batcher` gathers concurrent requests into engine batches (supervised, every image
answered or failed), :mod:`.app` builds the FastAPI app (API, limits, JSON errors, the page in ``static/``) with
:mod:`.uploads` reading bodies, :mod:`.deadline` bounding each request by ``--timeout``, :mod:`.auth` (API keys),
:mod:`.metrics` (Prometheus) and :mod:`.inference_v2` (the Open Inference Protocol); :mod:`.server` runs it with its
own connection-capped listener, the h11 protocol of :mod:`.protocol` (header deadline, JSON for malformed
requests), graceful shutdown, SIGHUP reloads and the startup line; :mod:`.errors` is the one error shape. One
process owns each model; :mod:`cnncli.scale.ray_serve` runs the same app in Ray Serve replicas.

May import: cnncli.train and every room below it; not scale or inspect."""
