"""Where the results of a job at scale go, checked before the work: an ``--output`` URI must name a bucket that
exists and takes new objects, and be the right kind of place (an object key for one results file, a prefix for
the parquet parts). Local paths and ``file://`` URIs get :func:`cnncli.core.paths.check_output_location`, the
check every command makes.

The write check puts a hidden, empty probe object beside the target and removes it at once (hidden names are
skipped by parquet readers), so refused or read-only credentials fail in seconds, not after the job."""

from __future__ import annotations

import os
import secrets

from cnncli.core.errors import UsageError
from cnncli.core.paths import check_output_location
from cnncli.scale.uris import is_uri

FILE_SCHEME = "file://"


def check_output(location: str, folder: bool, option: str = "--output") -> None:
    """UsageError (exit 2) in one sentence naming ``location`` when results cannot be written there: as one file,
    or with ``folder`` as the folder (prefix) of the parquet parts."""
    if not is_uri(location) or location.startswith(FILE_SCHEME):
        check_output_location(location[len(FILE_SCHEME):] if location.startswith(FILE_SCHEME) else location,
                              option, folder=folder)
        return
    from cnncli.scale.sources import container, describe_failure, filesystem

    fs, key = filesystem(location)
    key = key.rstrip("/")
    bucket = container(fs, key)
    if not folder and (location.endswith("/") or key == bucket):
        raise UsageError(f"{option} {location} names a prefix (a folder), not an object; give the file's key, "
                         f"e.g. {location.rstrip('/')}/predictions.jsonl.")
    try:
        if bucket:
            fs.info(bucket)  # a missing bucket raises FileNotFoundError
        if folder and fs.isfile(key):
            raise UsageError(f"{option} {location} is an object, not a prefix; give a prefix (a folder) for the "
                             "parquet parts, e.g. " + location.rstrip("/") + "-parts/.")
        if not folder and fs.isdir(key):
            raise UsageError(f"{option} {location} is a prefix holding objects; give the key of a new file, e.g. "
                             f"{location}/predictions.jsonl.")
        tag = f"cnncli-probe-{os.getpid()}-{secrets.token_hex(4)}"
        if folder:
            probe = f"{key}/.{tag}"
        else:
            parent, _, name = key.rpartition("/")
            probe = f"{parent}/.{name}.{tag}" if parent else f".{name}.{tag}"
        fs.pipe_file(probe, b"")
        try:
            fs.rm_file(probe)
        except Exception:  # noqa: BLE001 - put-only credentials: a hidden empty object is left, readers skip it
            pass
    except UsageError:
        raise
    except Exception as exc:  # botocore, aiohttp and fsspec raise many types
        raise UsageError(describe_failure(location, exc)) from None
    finally:
        fs.invalidate_cache()
