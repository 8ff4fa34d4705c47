"""``cnncli serve``: the model behind an HTTP endpoint. :mod:`.batcher` gathers concurrent requests into
engine batches (supervised, every image answered or failed), :mod:`.app` builds the FastAPI app (API, limits,
JSON errors, the page in ``static/``) with :mod:`.uploads` reading bodies and :mod:`.deadline` bounding each
request by ``--timeout``; :mod:`.server` runs it with its own connection-capped listener, the h11 protocol of
:mod:`.protocol` (header deadline, JSON for malformed requests), graceful shutdown and the startup line;
:mod:`.errors` is the one error shape. One process owns the model.

May import: cnncli.predict and every room below it; not scale or inspect."""
