"""Which images are byte-for-byte copies of a model's training images.

``train``/``finetune`` record in the model card (``training.split.train_hashes``, built by
:func:`train_hashes_record`) the first 8 bytes of the SHA-256 of every training image's file — the same hash
``cnncli inspect DATA`` uses to find duplicates and leaks (:func:`cnncli.data.check.file_digest`) — sorted and
base64-encoded: 8 bytes an image, 64 bits, so a false match is out of reach even for millions of images (the
card checks the record when it is read: :func:`cnncli.models.card.decode_train_hashes`).
``evaluate`` (:mod:`cnncli.data.eval_split`) hashes the images it is about to score and leaves out those whose
hash is recorded (a model file from before this record falls back to the training dataset, when it is still
there with the recorded file list: :func:`cnncli.data.eval_split.training_digests`). Torch-free.
"""

from __future__ import annotations

import base64
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from cnncli.core.cpus import usable_cores
from cnncli.data.check import file_digest
from cnncli.models.card import TRAIN_HASH_ALGORITHM, TRAIN_HASH_BYTES

MAX_RECORDED_HASHES = 250_000  # 2.7 MB of card at most; a larger training set falls back to the dataset


def content_digests(paths: list[Path], workers: int | None = None) -> dict[Path, bytes | None]:
    """The 8-byte content hash of each file (None for a file that cannot be read), read by a few threads."""

    def one(path: Path) -> bytes | None:
        facts = file_digest(path)
        return bytes.fromhex(facts.digest[: 2 * TRAIN_HASH_BYTES]) if facts.digest else None

    workers = workers or min(8, usable_cores() * 2)
    if workers <= 1 or len(paths) < 16:
        return {path: one(path) for path in paths}
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return dict(zip(paths, pool.map(one, paths, chunksize=16)))


def train_hashes_record(paths: list[Path]) -> dict | None:
    """What the card records of the training images: {"algorithm", "count", "digests"} (base64 of the sorted
    8-byte hashes); None above :data:`MAX_RECORDED_HASHES` images (evaluate then uses the dataset itself)."""
    if len(paths) > MAX_RECORDED_HASHES:
        return None
    digests = sorted({d for d in content_digests(paths).values() if d is not None})
    return {"algorithm": TRAIN_HASH_ALGORITHM, "count": len(digests),
            "digests": base64.b64encode(b"".join(digests)).decode("ascii")}
