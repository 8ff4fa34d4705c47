"""Predict at scale: object-storage URIs in and out (fsspec), parquet part files written exactly once with a
manifest so an interrupted job resumes exactly, and the same job on a Ray cluster (``--ray``). ``cnncli predict``
hands a command to :func:`cnncli.scale.job.run` when :func:`cnncli.scale.uris.wants_scale` says so; nothing
here is imported on the plain local path. Training at scale lives here too: a run folder in object storage
(:mod:`cnncli.scale.run_store`, ``train -o s3://...``) and training on Ray Train (:mod:`cnncli.scale.ray_train`,
``train --ray``), and serving on Ray Serve (:mod:`cnncli.scale.ray_serve`, ``serve --ray``).

May import: cnncli.serve, cnncli.train and every room below them; not inspect."""
