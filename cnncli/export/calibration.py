"""Calibration images for static int8: a folder given with ``--calib``, or the set that train/finetune recorded
in the model file; and a cheap fingerprint of such a set (part of a cached int8 export's key). Torch-free.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from cnncli.models.names import DEFAULT_ARCH


def files_fingerprint(paths: list[Path]) -> str:
    """Fingerprint of a calibration set: each image's path, size and modification time (cheap enough for the hot
    path; a changed image makes a new int8 export)."""
    digest = hashlib.sha256()
    for path in paths:
        stat = Path(path).stat()
        digest.update(f"{Path(path).resolve()}|{stat.st_size}|{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:20]


def calibration_images(spec: str | None, calib_dir: str | Path | None, limit: int = 200) -> list[Path]:
    """Images to calibrate a static-int8 export on: ``calib_dir`` when given, else the calibration set recorded
    in the model file by train/finetune. UsageError, in one sentence, when there is neither."""
    from cnncli.core.errors import UsageError
    from cnncli.data.inputs import image_files

    if calib_dir is not None:
        return image_files(calib_dir, limit)
    record = None
    if spec is not None and spec.endswith(".safetensors") and Path(spec).is_file():
        from cnncli.models.checkpoint import read_card

        card = read_card(spec)
        record = (card.training or {}).get("calibration") if card is not None else None
    if record is None:
        raise UsageError(f"--precision int8 needs calibration images and {spec or DEFAULT_ARCH} records none "
                         "(models made by `cnncli train` or `finetune` do); "
                         "pass --calib DIR with a few dozen typical images.")
    from cnncli.data.layout import recorded_calibration_files

    found = recorded_calibration_files(record)
    if not found:
        raise UsageError(f"the calibration images recorded in {spec} (under {record.get('root')}) are gone; "
                         "pass --calib DIR with a few dozen typical images.")
    return found[:limit]
