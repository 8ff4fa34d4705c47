"""``cnncli serve``: the model behind an HTTP endpoint. :mod:`.batcher` gathers concurrent requests into
engine batches, :mod:`.app` builds the FastAPI app (API, limits, JSON errors, the page in ``static/``) and
:mod:`.server` runs it with a pre-bound socket, graceful shutdown and the startup line. One process owns the model.

May import: cnncli.predict and every room below it; not scale or inspect."""
