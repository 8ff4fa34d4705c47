"""The packed-dataset format: WebDataset tar shards and the ``dataset.json`` that describes them.

A shard is a plain POSIX (ustar) tar read by any WebDataset reader: for each image three members share a key,
``<key>.cls`` (the label index, ASCII), ``<key>.<ext>`` (the original image bytes, not re-encoded: ``png``, ``jpg``...)
and ``<key>.json`` (``{"class": ..., "path": ...}``, the source file relative to the dataset). The tars are written
with the standard library, every header field fixed (mtime 0, uid/gid 0, no user names, mode 0644, members in input
order), so the same images always give the same bytes: a resumed pack matches an uninterrupted one by sha256.

``dataset.json`` (:data:`MANIFEST`) lists the classes in index order, each split's count, per-class counts and
shards (name, sha256, bytes, count), the source and what packing left out. :func:`load_manifest` checks it before
any training: missing or unreadable, labels outside the class list, a shard missing or of another size.
Torch-free.
"""

from __future__ import annotations

import io
import json
import tarfile
from dataclasses import dataclass, field

from cnncli.core.errors import UsageError
from cnncli.data.stores import is_uri, join, object_sizes, read_bytes

MANIFEST = "dataset.json"
FORMAT = "cnncli-webdataset"
FORMAT_VERSION = 1
PACKED_LAYOUT = "packed"


@dataclass(frozen=True)
class PackedSample:
    key: str
    ext: str  # the image member's extension: png, jpg, ...
    data: bytes
    label: int
    class_name: str
    path: str  # the source file, relative to the dataset


def tar_bytes(samples: list[PackedSample]) -> bytes:
    """One shard: each sample's .cls, .<ext> and .json members, in the given order, with fixed headers."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for sample in samples:
            meta = json.dumps({"class": sample.class_name, "path": sample.path}, sort_keys=True).encode()
            for suffix, payload in (("cls", str(sample.label).encode()), (sample.ext, sample.data), ("json", meta)):
                info = tarfile.TarInfo(f"{sample.key}.{suffix}")
                info.size, info.mtime, info.mode = len(payload), 0, 0o644
                info.uid = info.gid = 0
                info.uname = info.gname = ""
                tar.addfile(info, io.BytesIO(payload))
    return buffer.getvalue()


@dataclass
class TarSample:
    """One key's members as read back: the image bytes and extension, the label, the source path, or an error."""

    key: str
    data: bytes | None = None
    ext: str | None = None
    label: int | None = None
    path: str | None = None
    error: str | None = None


def read_tar_samples(fileobj, shard: str, n_classes: int):
    """The samples of a shard in member order (WebDataset's grouping: consecutive members sharing a key). A sample
    without an image or a readable label, or with a label outside the ``n_classes`` classes, carries an error; a
    tar that breaks off ends the iteration with one error sample (the caller counts what is missing)."""
    current: TarSample | None = None
    try:
        with tarfile.open(fileobj=fileobj, mode="r|") as tar:
            for member in tar:
                if not member.isfile():
                    continue
                base = member.name.rsplit("/", 1)[-1]
                key, _, suffix = base.partition(".")
                prefix = member.name[: len(member.name) - len(base)]
                key = prefix + key
                if current is None or current.key != key:
                    if current is not None:
                        yield _finished(current, shard, n_classes)
                    current = TarSample(key)
                payload = tar.extractfile(member).read()
                suffix = suffix.lower()
                if suffix == "cls":
                    try:
                        current.label = int(payload.decode().strip())
                    except ValueError:
                        current.error = f"{shard}/{key}: the label {payload[:20]!r} is not a class index."
                elif suffix == "json":
                    try:
                        current.path = json.loads(payload).get("path")
                    except (ValueError, AttributeError):
                        pass
                elif current.data is None:
                    current.data, current.ext = payload, suffix
    except (tarfile.TarError, EOFError, OSError) as exc:
        if current is not None:
            current.error = current.error or f"{shard}/{current.key}: the tar breaks off here ({exc})."
            yield _finished(current, shard, n_classes)
        yield TarSample(key="", error=f"{shard}: the tar is corrupt ({exc}); the rest of the shard is skipped.")
        return
    if current is not None:
        yield _finished(current, shard, n_classes)


def _finished(sample: TarSample, shard: str, n_classes: int) -> TarSample:
    where = f"{shard}/{sample.key}" + (f" ({sample.path})" if sample.path else "")
    if sample.error:
        return sample
    if sample.label is None:
        sample.error = f"{where}: no .cls label member."
    elif not 0 <= sample.label < n_classes:
        sample.error = f"{where}: label {sample.label} is outside the {n_classes} classes of dataset.json."
    elif sample.data is None:
        sample.error = f"{where}: no image member."
    return sample


# ------------------------------------------------------------------------------------------- dataset.json


@dataclass(frozen=True)
class ShardEntry:
    name: str
    sha256: str
    bytes: int
    count: int
    uri: str  # where it is read from


@dataclass
class Manifest:
    root: str  # the folder or prefix holding dataset.json
    classes: list[str]
    splits: dict[str, list[ShardEntry]]
    counts: dict[str, dict[str, int]]  # split -> class -> images
    source: dict
    data: dict = field(default_factory=dict)  # dataset.json as read

    def fingerprint(self) -> str:
        """sha256 over the classes and every shard's name and sha256: which images, in which split."""
        import hashlib

        digest = hashlib.sha256(json.dumps(self.classes).encode())
        for split in sorted(self.splits):
            for shard in self.splits[split]:
                digest.update(f"{split}\t{shard.name}\t{shard.sha256}\n".encode())
        return digest.hexdigest()


def manifest_location(path: str) -> str:
    return join(str(path), MANIFEST)


def has_manifest(path: str) -> bool:
    """A local folder holding dataset.json (asked without touching a store)."""
    from pathlib import Path

    return not is_uri(path) and (Path(path).expanduser() / MANIFEST).is_file()


def load_manifest(path: str, check_shards: bool = True) -> Manifest:
    """dataset.json of the packed dataset at ``path`` (a folder or URI), checked: readable, of this format, labels
    within the class list, and (``check_shards``) every shard present with its recorded size: one listing."""
    root = str(path).rstrip("/") if is_uri(path) else str(path)
    where = manifest_location(root)
    try:
        raw = read_bytes(where)
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        raise UsageError(f"{where} does not exist; pass a folder or prefix written by `cnncli data pack`.") from None
    except OSError as exc:
        raise UsageError(f"cannot read {where} ({exc.strerror or exc}).") from None
    try:
        data = json.loads(raw)
        if data.get("format") != FORMAT:
            raise ValueError(f"format is {data.get('format')!r}, not {FORMAT!r}")
        classes = [str(c) for c in data["classes"]]
        splits, counts = {}, {}
        for split, entry in data["splits"].items():
            splits[split] = [ShardEntry(s["name"], s["sha256"], int(s["bytes"]), int(s["count"]),
                                        join(root, s["name"])) for s in entry["shards"]]
            counts[split] = {str(k): int(v) for k, v in entry.get("class_counts", {}).items()}
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise UsageError(f"{where} is not a cnncli dataset.json ({exc}); write it with `cnncli data pack`.") from None
    for split, by_class in counts.items():
        unknown = [name for name in by_class if name not in classes]
        if unknown:
            raise UsageError(f"{where}: {split} has labels outside the class list ({', '.join(unknown[:5])}); "
                             "the dataset.json does not match its shards: pack the dataset again.")
    if not classes or len(classes) < 2:
        raise UsageError(f"{where} lists {len(classes)} classes; a classifier needs at least two.")
    manifest = Manifest(root, classes, splits, counts, dict(data.get("source") or {}), data)
    if check_shards:
        sizes = object_sizes(root)
        for shards in splits.values():
            for shard in shards:
                if shard.name not in sizes:
                    raise UsageError(f"{shard.uri} is missing (named in {where}); copy it back or pack again.")
                if sizes[shard.name] != shard.bytes:
                    raise UsageError(f"{shard.uri} is {sizes[shard.name]} bytes, not the {shard.bytes} that "
                                     f"{MANIFEST} records: it is not the shard that was packed; pack again.")
    return manifest
