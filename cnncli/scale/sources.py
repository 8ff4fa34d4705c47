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
from cnncli.scale.uris import is_uri

GLOB_CHARS = set("*?[")
# bounded waits for S3: a missing endpoint or a dead network is an error in seconds, not a hang
S3_CONFIG = {"connect_timeout": 10, "read_timeout": 60, "retries": {"max_attempts": 3, "mode": "standard"}}


def storage_options(uri: str) -> dict:
    protocol = uri.split("://", 1)[0].lower()
    if protocol in ("s3", "s3a"):
        options: dict = {"config_kwargs": dict(S3_CONFIG)}
        # botocore reads these itself; naming them here also keys fsspec's instance cache on them
        if os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL"):
            options["endpoint_url"] = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ["AWS_ENDPOINT_URL"]
        if os.environ.get("AWS_PROFILE"):
            options["profile"] = os.environ["AWS_PROFILE"]
        return options
    return {}


def filesystem(uri: str):
    """(fsspec filesystem, path inside it) for ``uri``; UsageError for a scheme no installed backend handles."""
    import fsspec

    try:
        return fsspec.core.url_to_fs(uri, **storage_options(uri))
    except (ImportError, ValueError) as exc:
        scheme = uri.split("://", 1)[0]
        raise UsageError(f"cannot open {uri}: no installed fsspec backend handles {scheme}:// ({exc}).") from None


def describe_failure(uri: str, exc: BaseException) -> str:
    """One sentence for a failed listing or access of ``uri`` (missing bucket, credentials, network)."""
    text = " ".join(str(exc).split())[:200] or type(exc).__name__
    name = type(exc).__name__
    if isinstance(exc, FileNotFoundError):
        return f"{uri} does not exist ({text}); check the bucket and prefix."
    if isinstance(exc, PermissionError) or "credential" in name.lower() or "credential" in text.lower():
        return (f"access to {uri} was refused ({text}); check the credentials (AWS_ACCESS_KEY_ID / "
                "AWS_SECRET_ACCESS_KEY or AWS_PROFILE) and AWS_ENDPOINT_URL.")
    return f"cannot reach {uri} ({name}: {text}); check the endpoint (AWS_ENDPOINT_URL) and the network."


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


def container(fs, root: str) -> str | None:
    """The bucket of an object-store path (its first component); None for stores without buckets."""
    protocols = fs.protocol if isinstance(fs.protocol, (tuple, list)) else (fs.protocol,)
    if any(p in ("s3", "s3a", "gs", "gcs", "az", "abfs") for p in protocols):
        return root.split("/", 1)[0]
    return None


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
