"""Object stores and other fsspec locations (``s3://`` via s3fs, ``memory://``, ``file://``...), for every command
that reads or writes them: the filesystem for a URI, its storage options, one sentence for a failure, and
whole-object writes.

Credentials and endpoints come only from the standard places (AWS environment variables and profiles,
``AWS_ENDPOINT_URL`` for S3-compatible stores); nothing here stores secrets. Network waits are bounded. fsspec is
imported only when a URI is opened.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from cnncli.core.errors import UsageError

_URI = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
# bounded waits for S3: a missing endpoint or a dead network is an error in seconds, not a hang
S3_CONFIG = {"connect_timeout": 10, "read_timeout": 60, "retries": {"max_attempts": 3, "mode": "standard"}}


def is_uri(spec: object) -> bool:
    """Whether ``spec`` names a location with a scheme (``s3://bucket/key``, ``memory://x``, ``file:///tmp``)."""
    return isinstance(spec, str) and bool(_URI.match(spec))


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


def container(fs, root: str) -> str | None:
    """The bucket of an object-store path (its first component); None for stores without buckets."""
    protocols = fs.protocol if isinstance(fs.protocol, (tuple, list)) else (fs.protocol,)
    if any(p in ("s3", "s3a", "gs", "gcs", "az", "abfs") for p in protocols):
        return root.split("/", 1)[0]
    return None


def join(base: str, name: str) -> str:
    """``name`` inside the folder or prefix ``base`` (a local path or a URI)."""
    if is_uri(base):
        return base.rstrip("/") + "/" + name
    return str(Path(base) / name)


def read_bytes(location: str) -> bytes:
    """The whole file or object at ``location``; FileNotFoundError when it is not there, UsageError when the store
    cannot be reached."""
    if not is_uri(location):
        return Path(location).read_bytes()
    fs, path = filesystem(location)
    try:
        return fs.cat_file(path)
    except FileNotFoundError:
        raise
    except Exception as exc:  # botocore, aiohttp and fsspec raise many types
        raise UsageError(describe_failure(location, exc)) from None


def write_bytes(location: str, data: bytes) -> None:
    """Write a whole file or object: locally through the one atomic writer (a temporary file, then a rename); on an
    object store as one upload, which the store makes visible only once complete."""
    if not is_uri(location):
        from cnncli.core.atomic import write_bytes_atomic

        write_bytes_atomic(location, data)
        return
    fs, path = filesystem(location)
    try:
        fs.pipe_file(path, data)
    except Exception as exc:
        raise UsageError(describe_failure(location, exc)) from None


def object_sizes(folder: str) -> dict[str, int]:
    """name -> size of the files directly in ``folder`` (a local folder or a prefix); {} when there is none.
    UsageError when the store cannot be reached or its bucket does not exist."""
    if not is_uri(folder):
        root = Path(folder)
        return {p.name: p.stat().st_size for p in root.iterdir() if p.is_file()} if root.is_dir() else {}
    fs, root = filesystem(folder)
    root = root.rstrip("/")
    try:
        bucket = container(fs, root)
        if bucket:
            fs.info(bucket)  # raises FileNotFoundError for a missing bucket
        entries = fs.ls(root, detail=True, refresh=True) if fs.isdir(root) else []
    except FileNotFoundError as exc:
        raise UsageError(describe_failure(folder, exc)) from None
    except Exception as exc:
        raise UsageError(describe_failure(folder, exc)) from None
    return {e["name"].rstrip("/").rsplit("/", 1)[-1]: int(e.get("size") or 0) for e in entries
            if e.get("type") == "file"}
