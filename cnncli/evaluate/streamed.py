"""``evaluate`` on a streamed dataset (packed shards, or an object-store prefix of class folders): the samples of
the chosen split read unit by unit (:mod:`cnncli.data.stream_source`), decoded with the one eval preprocessing
(:func:`cnncli.data.images.load_pixels_from_bytes`) by a thread pool, scored by the engine in batches. Broken
samples (unreadable, a shard whose sha256 differs, a corrupt member) are listed as unreadable. Torch-free."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from itertools import islice

import numpy as np

from cnncli.core.cpus import usable_cores
from cnncli.core.errors import ImageError, UsageError
from cnncli.data.images import load_pixels_from_bytes, normalize
from cnncli.data.stream_source import DEFAULT_CACHE_SIZE, ShardCache, parse_size, unit_samples


def stream_probabilities(engine, streamed, batch_size: int = 32, workers: int | None = None):
    """(probs, labels, paths, unreadable) over the units of ``streamed`` (a StreamedSplit)."""
    pre = engine.card.preprocessing
    cache = ShardCache(parse_size(DEFAULT_CACHE_SIZE))
    n_classes = len(streamed.source.classes)
    samples = (s for unit in streamed.units for s in unit_samples(unit, n_classes, cache))

    def decode(sample):
        name = sample.path or sample.key
        if sample.error:
            return name, None, sample.error
        try:
            return name, normalize(load_pixels_from_bytes(sample.data, name, pre), pre), None
        except ImageError as exc:
            return name, None, str(exc)
        except Exception as exc:  # a decoder bug on one odd file must not stop the evaluation
            return name, None, f"{name}: cannot read the image ({type(exc).__name__}: {exc})."

    probs, labels, paths, unreadable = [], [], [], []
    threads = workers if workers else min(8, usable_cores())
    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        while batch := list(islice(samples, batch_size)):
            arrays, batch_labels = [], []
            for sample, (name, array, error) in zip(batch, pool.map(decode, batch)):
                if error is None and streamed.remap[sample.label] < 0:
                    error = f"{name}: its class is not among the model's."
                if error is not None:
                    unreadable.append({"path": name, "error": error})
                    continue
                arrays.append(array)
                batch_labels.append(streamed.remap[sample.label])
                paths.append(name)
            if arrays:
                probs.append(engine.predict_proba(np.stack(arrays)))
                labels += batch_labels
    if not paths:
        raise UsageError("none of the images could be read; check the dataset with `cnncli inspect`.")
    return np.concatenate(probs), np.asarray(labels, dtype=np.int64), paths, unreadable
