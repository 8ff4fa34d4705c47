"""Datasets laid out as class folders under an object-store prefix (``s3://bucket/pets/<class>/...``, or
``.../train|val|test/<class>/...``): listed once (names and sizes, nothing downloaded) into the same
:class:`cnncli.data.layout.DatasetScan` a local folder gives, so the seeded split, the refusals and the split
record are the local ones. Samples carry the object's URI as their path.
"""

from __future__ import annotations

import hashlib
from pathlib import PurePosixPath

from cnncli.core.errors import UsageError
from cnncli.data.images import is_image_file
from cnncli.data.inputs import natural_key
from cnncli.data.layout import (
    SPLIT_NAMES,
    TEST_FOLDER_NAME,
    TRAIN_FOLDER_NAME,
    VAL_FOLDER_NAMES,
    DatasetScan,
    is_hidden,
)
from cnncli.data.stores import container, describe_failure, filesystem


def list_objects(uri: str) -> dict[str, int]:
    """relative key -> size of every object under the prefix ``uri``. UsageError for an unreachable store, a
    missing bucket or a prefix with nothing under it."""
    fs, root = filesystem(uri)
    root = root.rstrip("/")
    try:
        bucket = container(fs, root)
        if bucket:
            fs.info(bucket)  # raises FileNotFoundError for a missing bucket
        found = fs.find(root, detail=True) if fs.isdir(root) else {}
    except Exception as exc:  # botocore, aiohttp and fsspec raise many types
        raise UsageError(describe_failure(uri, exc)) from None
    finally:
        fs.invalidate_cache()
    objects = {name[len(root):].lstrip("/"): int(info.get("size") or 0) for name, info in found.items()
               if info.get("type", "file") == "file"}
    if not objects:
        raise UsageError(f"{uri}: nothing under this prefix; check the bucket and prefix (a dataset is a prefix of "
                         "class folders, or one holding dataset.json from `cnncli data pack`).")
    return objects


def scan_store(uri: str) -> tuple[DatasetScan, dict[str, int]]:
    """(the scan, URI -> size) of the prefix ``uri``: class folders, or train/ val/ test/ of class folders."""
    base = uri.rstrip("/")
    objects = list_objects(uri)
    visible = {}
    hidden, non_images, loose = [], [], []
    for rel, size in objects.items():
        parts = PurePosixPath(rel).parts
        if any(is_hidden(p) for p in parts):
            hidden.append(f"{base}/{rel}")
        elif len(parts) == 1:
            (loose if is_image_file(PurePosixPath(rel)) else non_images).append(f"{base}/{rel}")
        elif not is_image_file(PurePosixPath(parts[-1])):
            non_images.append(f"{base}/{rel}")
        else:
            visible[rel] = size
    tops = {PurePosixPath(rel).parts[0] for rel in visible}
    split_of = {}
    for top in tops:
        name = top.lower()
        if name == TRAIN_FOLDER_NAME:
            split_of[top] = "train"
        elif name in VAL_FOLDER_NAMES and "val" not in split_of.values():
            split_of[top] = "val"
        elif name == TEST_FOLDER_NAME:
            split_of[top] = "test"
    split_layout = "train" in split_of.values() and all(
        len(PurePosixPath(rel).parts) >= 3 for rel in visible if PurePosixPath(rel).parts[0] in split_of)
    scan = DatasetScan(base, "split-folders" if split_layout else "class-folders", {})
    scan.hidden, scan.non_image_files, scan.loose_images = hidden, non_images, loose
    for rel in sorted(visible, key=natural_key):
        parts = PurePosixPath(rel).parts
        if split_layout:
            if parts[0] not in split_of:
                continue  # next to train/ but not a split
            group, name = split_of[parts[0]], parts[1]
        else:
            group, name = "all", parts[0]
        scan.groups.setdefault(group, {}).setdefault(name, []).append(f"{base}/{rel}")
    for group in scan.groups.values():
        for name in group:
            group[name].sort(key=natural_key)
    scan.groups = {g: dict(sorted(scan.groups[g].items(), key=lambda kv: natural_key(kv[0])))
                   for g in (("all",) if not split_layout else SPLIT_NAMES) if g in scan.groups}
    return scan, {f"{base}/{rel}": size for rel, size in visible.items()}


def store_fingerprint(scan: DatasetScan, sizes: dict[str, int]) -> str:
    """sha256 over every (group, class, key relative to the prefix, size): the store's counterpart of
    :func:`cnncli.data.eval_split.scan_fingerprint`."""
    base = str(scan.root).rstrip("/") + "/"
    digest = hashlib.sha256()
    for group in sorted(scan.groups):
        for name in sorted(scan.groups[group], key=natural_key):
            for uri in scan.groups[group][name]:
                digest.update(f"{group}\t{name}\t{uri[len(base):]}\t{sizes.get(uri, -1)}\n".encode())
    return digest.hexdigest()
