"""Predict at scale: object-storage URIs in and out (fsspec), parquet part files written exactly once with a
manifest so an interrupted job resumes exactly, and the same job on a Ray cluster (``--ray``). ``cnncli predict``
hands a command to :func:`cnncli.scale.job.run` when :func:`cnncli.scale.uris.wants_scale` says so; nothing
here is imported on the plain local path.

May import: cnncli.predict and every room below it; not serve or inspect."""
