"""Where images come from at scale: local paths (as plain ``predict`` reads them) and fsspec URIs (``s3://``
via s3fs, and every other installed fsspec backend), listed recursively and read in batches.

Credentials and endpoints come only from the standard places (AWS environment variables and profiles,
``AWS_ENDPOINT_URL`` for S3-compatible stores); nothing here stores secrets. Network waits are bounded.
"""

from __future__ import annotations

import os
from pathlib import PurePosixPath

from cnncli.core.errors import UsageError
from cnncli.data.images import is_image_file
from cnncli.data.stores import container, describe_failure, filesystem
from cnncli.scale.uris import is_uri

GLOB_CHARS = set("*?[")


def _visible(relative: str) -> bool:
    parts = PurePosixPath(relative).parts
    return bool(parts) and not any(p.startswith(".") for p in parts) and is_image_file(PurePosixPath(parts[-1]))


def list_uri(spec: str, recursive: bool = True) -> tuple[list[str], bool]:
    """(image objects under ``spec``, as full URIs; whether ``spec`` names nothing that exists). ``spec`` is read
    literally first (an object or a prefix, whatever characters its key holds: ``in/[bold]y.jpg`` is that object)
    and as a glob pattern only when nothing exists under that name; hidden names are skipped.

    A prefix (``.../``) or pattern with no images gives no inputs; a missing single object is kept as an input
    (its row will carry the error), like a missing local file. UsageError when the container (bucket) is
    missing, access is refused or the store cannot be reached.
    """
    fs, root = filesystem(spec)
    missing = False
    try:
        if fs.isdir(root):
            base = root.rstrip("/")
            found = [p for p in fs.find(base, maxdepth=None if recursive else 1) if _visible(p[len(base):].lstrip("/"))]
        elif fs.isfile(root):
            found = [root]
        elif GLOB_CHARS & set(root):
            found = []
            for match in fs.glob(root):
                if fs.isdir(match):
                    found += [p for p in fs.find(match, maxdepth=None if recursive else 1)
                              if _visible(p[len(match):].lstrip("/"))]
                elif _visible(PurePosixPath(match).name):
                    found.append(match)
        else:
            bucket = container(fs, root)
            if bucket:
                fs.info(bucket)  # raises FileNotFoundError for a missing bucket
            missing = True
            found = [] if spec.endswith("/") else [root]  # an empty prefix holds no images
    except UsageError:
        raise
    except Exception as exc:  # botocore, aiohttp and fsspec raise many types
        raise UsageError(describe_failure(spec, exc)) from None
    finally:
        fs.invalidate_cache()  # s3fs keeps every listed key's details; the driver keeps only the names
    return [fs.unstrip_protocol(p) for p in found], missing


def list_inputs(specs: list[str], recursive: bool = True) -> list[str]:
    """Every input (local files, folders, globs and URIs), sorted and without duplicates: the deterministic
    list that shards are cut from. Local paths are made absolute, so a job means the same files from any
    working directory (and on every Ray worker). UsageError when nothing at all was found, or when every input
    names an object that does not exist."""
    from cnncli.data.inputs import collect_inputs

    found: set[str] = set()
    missing: list[str] = []  # URIs naming no object: kept as rows with an error when something else was found
    local = [s for s in specs if not is_uri(s)]
    for spec in specs:
        if is_uri(spec):
            uris, absent = list_uri(spec, recursive)
            found.update(uris)
            if absent:
                missing.append(spec)
    if local:
        try:
            found.update(os.path.abspath(item.path) for item in collect_inputs(local, recursive=recursive))
        except UsageError:
            if not found:
                raise
    if not found:
        raise UsageError(f"no images found in {', '.join(specs)}; pass image files, folders, globs or URIs.")
    if len(missing) == len(specs):  # as for local files: missing inputs are rows only beside ones that exist
        shown = ", ".join(missing[:3]) + (" ..." if len(missing) > 3 else "")
        raise UsageError(f"no such object: {shown}; nothing to predict.")
    return sorted(found)


def read_objects(uris: list[str]) -> dict[str, bytes | BaseException]:
    """The bytes of each URI (fetched concurrently where the backend can), or the exception that stopped it.
    Each key is read literally (``cat_ranges``; ``cat`` would expand ``[...]`` in a key as a glob pattern)."""
    by_fs: dict[int, tuple[object, dict[str, str]]] = {}
    for uri in uris:
        fs, path = filesystem(uri)
        by_fs.setdefault(id(fs), (fs, {}))[1][path] = uri
    out: dict[str, bytes | BaseException] = {}
    for fs, paths in by_fs.values():
        keys = list(paths)
        try:
            got = fs.cat_ranges(keys, [None] * len(keys), [None] * len(keys), on_error="return")
        except Exception as exc:  # a store-wide failure: every object of the batch carries it
            got = [exc] * len(keys)
        for key, data in zip(keys, got):
            out[paths[key]] = data
    return out
