"""The output of a job at scale: numbered parquet part files plus a small manifest, in a local folder or an
object-store prefix.

The sorted input list is cut into shards of ``shard_size`` inputs; shard i becomes ``part-{i:06d}.parquet``, one
row per input (path, top-k labels / indices / probabilities as list columns, error). A part is written atomically
and once: locally to a hidden temp file that is hard-linked into place (never replacing an existing part), on
object stores as one complete object put under its final key. The manifest ``_cnncli_manifest.json`` records the
job's identity (input list fingerprint, model identity, settings, shard size), so a re-run resumes exactly the
missing parts and a different job is refused. Names starting with ``_`` or ``.`` are ignored by parquet readers.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from cnncli import __version__
from cnncli.core.atomic import DiskFullError, write_bytes_atomic
from cnncli.core.errors import UsageError
from cnncli.scale.uris import is_uri

MANIFEST = "_cnncli_manifest.json"
MANIFEST_FORMAT = 1
PART_RE = re.compile(r"^part-(\d{6})\.parquet$")
DEFAULT_SHARD_SIZE = 1000


def part_name(index: int) -> str:
    return f"part-{index:06d}.parquet"


def inputs_fingerprint(paths: list[str]) -> str:
    """sha256 of the sorted input list (one path per line)."""
    digest = hashlib.sha256()
    for path in paths:
        digest.update(path.encode("utf-8", "surrogateescape") + b"\n")
    return digest.hexdigest()


def shard_bounds(count: int, shard_size: int) -> list[tuple[int, int]]:
    """[start, stop) of each shard: a pure function of the input count and shard size."""
    return [(start, min(start + shard_size, count)) for start in range(0, count, shard_size)]


@dataclass(frozen=True)
class Job:
    """What a job is: the same inputs, model and settings make the same job (and the same parts)."""

    inputs_sha256: str
    inputs: int
    model: list[str]  # one identity per model: "sha256:<hex>" of the file, or the registry name and weights
    settings: dict
    shard_size: int

    @property
    def shards(self) -> int:
        return len(shard_bounds(self.inputs, self.shard_size))

    @property
    def job_id(self) -> str:
        return hashlib.sha256(json.dumps(self.identity(), sort_keys=True).encode()).hexdigest()[:16]

    def identity(self) -> dict:
        return {"inputs": {"count": self.inputs, "sha256": self.inputs_sha256}, "model": self.model,
                "settings": self.settings, "shard_size": self.shard_size}

    def manifest(self) -> dict:
        return {"format": MANIFEST_FORMAT, "tool": "cnncli", "job": self.job_id, **self.identity(),
                "shards": self.shards, "cnncli": __version__}

    def part_metadata(self, index: int) -> dict[str, str]:
        return {"cnncli.version": __version__, "cnncli.job": self.job_id, "cnncli.model": json.dumps(self.model),
                "cnncli.top_k": str(self.settings.get("top_k")), "cnncli.part": str(index),
                "cnncli.settings": json.dumps(self.settings, sort_keys=True)}


def mismatch(existing: dict, job: Job) -> list[str]:
    """What differs between a manifest on disk and ``job`` (empty when they are the same job)."""
    mine = job.identity()
    names = {"inputs": "inputs", "model": "model", "settings": "settings", "shard_size": "shard size"}
    return [names[k] for k in mine if existing.get(k) != json.loads(json.dumps(mine[k]))]


class OutputFolder:
    """A local folder or an object-store prefix holding a job's parts and manifest."""

    def __init__(self, location: str) -> None:
        self.location = location
        self.remote = is_uri(location) and not location.startswith("file://")
        if self.remote:
            from cnncli.scale.sources import filesystem

            self.fs, self.root = filesystem(location)
            self.root = self.root.rstrip("/")
        else:
            self.fs = None
            self.root = location[len("file://"):] if location.startswith("file://") else location

    def __str__(self) -> str:
        return self.location

    def _key(self, name: str) -> str:
        return f"{self.root}/{name}"

    # --------------------------------------------------------------- reading

    def names(self) -> list[str]:
        """File names directly in the folder ([] when it does not exist yet)."""
        if not self.remote:
            path = Path(self.root)
            if path.exists() and not path.is_dir():
                raise UsageError(f"--output {self.location} is a file; give a folder for the parquet parts.")
            return sorted(os.listdir(path)) if path.is_dir() else []
        from cnncli.scale.sources import describe_failure

        try:
            if not self.fs.exists(self.root):
                from cnncli.scale.sources import container

                bucket = container(self.fs, self.root)
                if bucket:
                    self.fs.info(bucket)  # a missing bucket raises FileNotFoundError
                return []
            return sorted(_basename(p) for p in self.fs.ls(self.root, detail=False))
        except Exception as exc:  # noqa: BLE001
            raise UsageError(describe_failure(self.location, exc)) from None

    def read_manifest(self, names: list[str]) -> dict | None:
        if MANIFEST not in names:
            return None
        try:
            if self.remote:
                text = self.fs.cat_file(self._key(MANIFEST)).decode("utf-8")
            else:
                text = Path(self._key(MANIFEST)).read_text(encoding="utf-8")
            data = json.loads(text)
            return data if isinstance(data, dict) else {}
        except (OSError, ValueError):
            return {}

    @staticmethod
    def done_parts(names: list[str]) -> set[int]:
        return {int(m.group(1)) for n in names if (m := PART_RE.match(n))}

    # --------------------------------------------------------------- writing

    def write_bytes(self, name: str, data: bytes, replace: bool) -> bool:
        """Write ``name`` atomically; with replace=False an existing file is kept. Returns whether it was written."""
        if self.remote:
            # a single PUT: the object appears under its final key only once complete
            self.fs.pipe_file(self._key(name), data)
            return True
        # locally: a temporary file beside the target, fsynced, then hard-linked (or renamed) into place
        return write_bytes_atomic(Path(self.root) / name, data, replace=replace)

    def write_manifest(self, job: Job) -> None:
        """The job's first write: a folder or bucket that cannot be written to fails here, before any work."""
        try:
            self.write_bytes(MANIFEST, (json.dumps(job.manifest(), indent=2) + "\n").encode(), replace=True)
        except DiskFullError:
            raise
        except Exception as exc:  # noqa: BLE001 - OSError locally; botocore/aiohttp errors on object stores
            from cnncli.scale.sources import describe_failure

            if not self.remote:
                reason = getattr(exc, "strerror", None) or exc
                raise UsageError(f"cannot write to --output {self.location} ({reason}); "
                                 "choose a folder you can write to.") from None
            raise UsageError(describe_failure(self.location, exc)) from None

    def write_part(self, index: int, data: bytes) -> bool:
        return self.write_bytes(part_name(index), data, replace=False)

    def remove_stale_temps(self, names: list[str]) -> None:
        """Hidden temp files left by a killed local run (never parts: parts appear only complete)."""
        if self.remote:
            return
        for name in names:
            if name.startswith(".part-") and name.endswith(".tmp"):
                Path(self.root, name).unlink(missing_ok=True)


def _basename(path: str) -> str:
    return path.rstrip("/").rsplit("/", 1)[-1]


def check_output(folder: OutputFolder, job: Job, resume: bool) -> tuple[set[int], bool]:
    """(the shards already done, whether the folder holds this job's manifest) for ``job`` in ``folder``; nothing
    is written. A folder holding another job's manifest, or part files without a manifest, is refused
    (UsageError, exit 2)."""
    names = folder.names()
    existing = folder.read_manifest(names)
    done = folder.done_parts(names)
    if existing is None:
        if done:
            raise UsageError(f"--output {folder} already holds part files but no cnncli manifest; "
                             "give an empty or new folder.")
        if resume:
            from cnncli.core.console import info

            info(f"nothing to resume in {folder}: starting the job.")
        return set(), False
    differs = mismatch(existing, job)
    if differs:
        raise UsageError(f"--output {folder} holds the parts of another job (different {' and '.join(differs)}); "
                         "give a new --output folder, or delete that one to start over.")
    folder.remove_stale_temps(names)
    return {i for i in done if i < job.shards}, True
