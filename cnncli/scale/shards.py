"""One shard of a job: read its images (files or objects), decode them with cnncli's one preprocessing, run the
engine, and write the shard's parquet part atomically. The same code runs in the driver (local runs) and in
each Ray actor, so both give the same rows."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from cnncli.core.errors import ImageError
from cnncli.data.images import load_pixels, load_pixels_from_bytes, normalize
from cnncli.predict.run import Prediction, scored
from cnncli.scale.uris import is_uri


@dataclass
class ShardResult:
    index: int
    images: int
    failed: int
    written: bool  # False when the part already existed (another attempt wrote it first)


def _decode_one(path: str, fetched: dict, pre) -> np.ndarray | str:
    """uint8 pixels, or the one-sentence error for this input."""
    try:
        if not is_uri(path):
            return load_pixels(path, pre)
        data = fetched[path]
        if isinstance(data, BaseException):
            reason = " ".join(str(data).split())[:160] or type(data).__name__
            if isinstance(data, FileNotFoundError):
                return f"{path}: no such object."
            return f"{path}: cannot read the object ({type(data).__name__}: {reason})."
        return load_pixels_from_bytes(data, path, pre)
    except ImageError as exc:
        return str(exc)
    except Exception as exc:  # a decoder bug must not take the shard down
        return f"{path}: cannot read the image ({type(exc).__name__}: {exc})."


class ShardPredictor:
    """Predictions for lists of inputs with one engine; ``decode_threads`` > 0 decodes the next batch while the
    engine runs the current one (PIL releases the GIL while decoding and resizing)."""

    def __init__(self, engine, top_k: int, batch_size: int = 32, decode_threads: int = 0,
                 threshold: float | None = None) -> None:
        from cnncli.predict.multilabel import check_threshold_option, label_picker

        check_threshold_option(engine.card, threshold)
        self.engine, self.k, self.batch_size = engine, top_k, batch_size
        self.pick = label_picker(engine.card, threshold)  # None for a single-label model
        self.pre = engine.card.preprocessing
        self.classes = engine.card.classes
        self.pool = ThreadPoolExecutor(decode_threads) if decode_threads > 0 else None

    def _decode_batch(self, paths: list[str]) -> list[np.ndarray | str]:
        from cnncli.scale.sources import read_objects

        remote = [p for p in paths if is_uri(p)]
        fetched = read_objects(remote) if remote else {}
        if self.pool is None:
            return [_decode_one(p, fetched, self.pre) for p in paths]
        return list(self.pool.map(lambda p: _decode_one(p, fetched, self.pre), paths))

    def predict(self, paths: list[str], on_batch: Callable[[int, int], None] | None = None) -> Iterator[Prediction]:
        """Predictions for ``paths`` in order; ``on_batch(images, failed)`` after each batch."""
        chunks = [paths[i : i + self.batch_size] for i in range(0, len(paths), self.batch_size)]
        if not chunks:
            return
        submit = (lambda c: self.pool.submit(self._decode_batch, c)) if self.pool else None
        pending = submit(chunks[0]) if submit else None
        for i, chunk in enumerate(chunks):
            decoded = pending.result() if submit else self._decode_batch(chunk)
            if submit and i + 1 < len(chunks):
                pending = submit(chunks[i + 1])
            good = [d for d in decoded if not isinstance(d, str)]
            probs = self.engine.predict_proba(normalize(np.stack(good), self.pre)) if good else None
            row, failed = 0, 0
            for path, item in zip(chunk, decoded):
                if isinstance(item, str):
                    failed += 1
                    yield Prediction(path=path, error=item)
                else:
                    yield Prediction(path=path, **scored(probs[row], self.classes, self.k, self.pick))
                    row += 1
            if on_batch is not None:
                on_batch(len(chunk), failed)

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=False, cancel_futures=True)


def part_bytes(preds: list[Prediction], metadata: dict[str, str]) -> bytes:
    """A parquet file (in memory) with one row per prediction; lists are null for failed rows."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = pa.schema([
        ("path", pa.string()),
        ("labels", pa.list_(pa.string())),
        ("indices", pa.list_(pa.int32())),
        ("probs", pa.list_(pa.float32())),
        ("error", pa.string()),
    ], metadata={k.encode(): v.encode() for k, v in metadata.items()})
    multilabel = any(p.labels is not None for p in preds)
    if multilabel:  # a multi-label model: also the labels over their thresholds
        schema = schema.insert(4, pa.field("selected", pa.list_(pa.string())))
    ok = [p.error is None for p in preds]
    columns = [
        [p.path for p in preds],
        [[t["label"] for t in p.top] if good else None for p, good in zip(preds, ok)],
        [[t["index"] for t in p.top] if good else None for p, good in zip(preds, ok)],
        [[t["prob"] for t in p.top] if good else None for p, good in zip(preds, ok)],
        [p.error for p in preds],
    ]
    if multilabel:
        columns.insert(4, [p.labels if good else None for p, good in zip(preds, ok)])
    table = pa.Table.from_arrays([pa.array(c, type=f.type) for c, f in zip(columns, schema)], schema=schema)
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression="zstd")
    return sink.getvalue().to_pybytes()


def warm_up_writer() -> None:
    """Encode one tiny part in memory: pyarrow's first conversion imports pandas when it is installed (seconds on
    a cold start), which belongs with loading the model, not inside the first shard."""
    part_bytes([Prediction(path="warm-up", top=[{"label": "x", "index": 0, "prob": 1.0}])], {})


def run_shard(predictor: ShardPredictor, output, job, index: int, paths: list[str],
              on_batch: Callable[[int, int], None] | None = None) -> ShardResult:
    """Predict one shard and write its part (atomically, once)."""
    preds = list(predictor.predict(paths, on_batch))
    failed = sum(p.error is not None for p in preds)
    written = output.write_part(index, part_bytes(preds, job.part_metadata(index)))
    return ShardResult(index=index, images=len(preds), failed=failed, written=written)
