"""``cnncli serve``: an HTTP classification service (FastAPI on uvicorn) around one engine.

:mod:`cnncli.serve.batcher` gathers concurrent requests into engine batches, :mod:`cnncli.serve.app` builds the
FastAPI app (API, limits, JSON errors, the browser page in ``static/``), and :mod:`cnncli.serve.server` runs it
with a pre-bound socket, graceful shutdown and the startup line. One process owns the model.
"""
