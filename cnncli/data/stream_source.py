"""Datasets read as a stream, never downloaded whole: a packed dataset (a folder or URI holding ``dataset.json``,
:mod:`cnncli.data.shards`) or an object-store prefix of class folders (:mod:`cnncli.data.store_scan`).

:func:`open_stream_source` checks what can be known up front (the store answers, ``dataset.json`` is there and
sound, every shard is present with its size, the labels are among the classes, the split is possible) and
describes the dataset as :class:`Unit` s per split: a tar shard, or a group of objects. :func:`unit_samples`
yields a unit's samples, exactly as many as it counts: a shard is verified against its sha256 as it is first read
(a mismatch makes its samples errors, never silently different data), a broken tar or a bad member becomes an
error sample, and the caller skips and counts those like unreadable images. :class:`ShardCache` keeps downloaded
shards in a local folder bounded in size, evicting the least recently used. Torch-free.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cnncli.core.errors import UsageError
from cnncli.data.layout import SPLIT_NAMES, DatasetSplits, Sample, assemble_splits, refusal_error
from cnncli.data.shards import MANIFEST, PACKED_LAYOUT, TarSample, has_manifest, load_manifest, read_tar_samples
from cnncli.data.stores import filesystem, is_uri, join, read_bytes

OBJECT_GROUP = 64  # objects per unit of a store prefix of class folders
DEFAULT_CACHE_SIZE = "20GB"
DEFAULT_SHUFFLE_BUFFER = 1000


@dataclass(frozen=True)
class Unit:
    """What one loader worker reads in one go: a tar shard (``uri``, ``sha256``) or a group of objects."""

    name: str
    count: int
    uri: str | None = None
    sha256: str | None = None
    size: int = 0
    objects: tuple[tuple[str, int], ...] = ()  # (URI, label)


@dataclass
class StreamSource:
    location: str
    layout: str  # packed, or the store's class-folders / split-folders
    classes: list[str]
    units: dict[str, list[Unit]]  # split -> units, in order
    counts: dict[str, dict[str, int]]  # split -> class -> images
    record: dict  # the split record for the model card (cnncli.data.eval_split)
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def count(self, split: str) -> int:
        return sum(u.count for u in self.units.get(split, []))


def is_stream_source(path: object) -> bool:
    """A URI, or a local folder holding dataset.json: what train, evaluate and inspect read as a stream."""
    return isinstance(path, (str, Path)) and (is_uri(str(path)) or has_manifest(str(path)))


def _is_packed(location: str) -> bool:
    if not is_uri(location):
        return has_manifest(location)
    try:
        read_bytes(join(location, MANIFEST))
        return True
    except (FileNotFoundError, IsADirectoryError):
        return False


def open_stream_source(location: str, val_split: float = 0.2, seed: int = 0) -> StreamSource:
    """The dataset at ``location`` (see the module docstring); UsageError for what is wrong up front."""
    location = str(location)
    if not is_uri(location):
        location = str(Path(location).expanduser().resolve())
    if _is_packed(location):
        return _packed(location)
    return _store_folders(location, val_split, seed)


def _packed(location: str) -> StreamSource:
    manifest = load_manifest(location)
    units = {split: [Unit(s.name, s.count, s.uri, s.sha256, s.bytes) for s in shards]
             for split, shards in manifest.splits.items()}
    source = manifest.source
    counts = {split: sum(u.count for u in split_units) for split, split_units in units.items()}
    if not counts.get("train"):
        raise UsageError(f"{join(location, MANIFEST)} has no train images; pack a dataset with a train split.")
    record = {"dataset": location, "layout": PACKED_LAYOUT, "val_split": source.get("val_split"),
              "seed": source.get("seed"), "val_csv": None, "fingerprint": manifest.fingerprint(),
              "n_images": sum(counts.values()), "n_train": counts.get("train", 0), "n_val": counts.get("val", 0),
              "source": {k: source.get(k) for k in ("dataset", "fingerprint", "seed", "val_split")}}
    notes = [f"{location} is packed: its split was made when it was packed (seed {source.get('seed')}, "
             f"--val-split {source.get('val_split')}); --val-split and --seed do not change it."]
    problems = [str(p) for p in manifest.data.get("problems", [])]
    return StreamSource(location, PACKED_LAYOUT, manifest.classes, units, manifest.counts, record, problems, notes)


def _store_folders(location: str, val_split: float, seed: int) -> StreamSource:
    from cnncli.data.store_scan import scan_store, store_fingerprint

    scan, sizes = scan_store(location)
    tars = [p for p in scan.non_image_files if str(p).endswith(".tar")]
    if tars and not sizes:
        raise UsageError(f"{location} holds {len(tars)} .tar shards but no {MANIFEST}; pass the prefix that `cnncli "
                         "data pack` wrote (with its dataset.json), or pack the dataset again.")
    splits, refusals = assemble_splits(scan, val_split, seed)
    if refusals:
        raise refusal_error(refusals, location)
    units: dict[str, list[Unit]] = {}
    counts: dict[str, dict[str, int]] = {}
    for split in SPLIT_NAMES:
        samples = list(getattr(splits, split))
        if not samples:
            continue
        if split == "train":  # groups that hold every class, as pack's shards do
            samples = [samples[i] for i in np.random.default_rng([seed, zlib.crc32(b"pack")]).permutation(len(samples))]
        units[split] = [Unit(f"{split}:{start // OBJECT_GROUP:06d}", len(group),
                             objects=tuple((str(s.path), s.label) for s in group))
                        for start in range(0, len(samples), OBJECT_GROUP)
                        for group in [samples[start:start + OBJECT_GROUP]]]
        counts[split] = {}
        for s in samples:
            name = splits.classes[s.label]
            counts[split][name] = counts[split].get(name, 0) + 1
    record = {"dataset": location, "layout": scan.layout, "val_split": val_split, "seed": seed, "val_csv": None,
              "fingerprint": store_fingerprint(scan, sizes), "n_images": len(sizes),
              "n_train": len(splits.train), "n_val": len(splits.val)}
    return StreamSource(location, scan.layout, splits.classes, units, counts, record, splits.warnings, splits.notes)


class CountedSamples:
    """A split's samples known only by their labels (a packed dataset names no files): a sized, iterable stand-in
    for a Sample list, for the code that counts or weighs labels."""

    def __init__(self, counts: dict[str, int], classes: list[str]) -> None:
        self.counts = [(classes.index(name), n) for name, n in counts.items()]

    def __len__(self) -> int:
        return sum(n for _, n in self.counts)

    def __iter__(self):
        for label, n in self.counts:
            for _ in range(n):
                yield Sample(None, label)

    def __bool__(self) -> bool:
        return len(self) > 0


def stream_splits(location: str, val_split: float = 0.2, seed: int = 0) -> DatasetSplits:
    """:class:`DatasetSplits` for a stream source, with the source itself in ``stream``."""
    source = open_stream_source(location, val_split, seed)
    parts = {split: CountedSamples(source.counts.get(split, {}), source.classes) for split in SPLIT_NAMES}
    return DatasetSplits(root=source.location, layout=source.layout, classes=list(source.classes),
                         train=parts["train"], val=parts["val"], test=parts["test"], warnings=list(source.warnings),
                         notes=list(source.notes), stream=source)


# ------------------------------------------------------------------------------------------- reading units


def parse_size(text: str | int) -> int:
    """``"20GB"``, ``"500MB"``, ``"0"``, ``1048576`` -> bytes."""
    if isinstance(text, int):
        return text
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]?i?b?)?\s*", str(text).lower())
    if not match:
        raise UsageError(f"--cache-size takes a size such as 20GB, 500MB or 0, not {text!r}.")
    scale = {"": 1, "b": 1, "k": 1e3, "m": 1e6, "g": 1e9, "t": 1e12}[(match.group(2) or "").rstrip("ib")[:1]]
    if "i" in (match.group(2) or ""):
        scale = {1e3: 2**10, 1e6: 2**20, 1e9: 2**30, 1e12: 2**40}.get(scale, scale)
    return int(float(match.group(1)) * scale)


def default_cache_folder() -> Path:
    """Where downloaded shards are kept: $CNNCLI_CACHE/shards, else the user cache folder's cnncli/shards."""
    override = os.environ.get("CNNCLI_CACHE")
    if override:
        return Path(override).expanduser() / "shards"
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("cnncli")) / "shards"


class ShardMismatch(Exception):
    """A shard's bytes are not the ones dataset.json records."""


class ShardCache:
    """Local copies of remote shards, named by their sha256, at most ``max_bytes`` in all (least recently used go
    first; 0 keeps nothing, each shard is read into memory). Local shards are read in place, verified once per
    process. Safe to share between processes: files appear by rename, a reader keeps an evicted file open."""

    def __init__(self, max_bytes: int, folder: Path | None = None) -> None:
        self.max_bytes = max_bytes
        self.folder = Path(folder) if folder is not None else default_cache_folder()
        self.verified: set[tuple[str, int, int]] = set()

    def open(self, unit: Unit):
        """A binary file object of the shard's verified bytes; ShardMismatch, or OSError when it cannot be read."""
        if not is_uri(unit.uri):
            stat = os.stat(unit.uri)
            key = (unit.uri, stat.st_size, stat.st_mtime_ns)
            if key not in self.verified:
                if _file_sha256(unit.uri) != unit.sha256:
                    raise ShardMismatch(unit.uri)
                self.verified.add(key)
            return open(unit.uri, "rb")
        local = self.folder / f"{unit.sha256}.tar"
        if local.is_file() and local.stat().st_size == unit.size:
            os.utime(local)  # most recently used
            return open(local, "rb")
        data = _fetch(unit.uri)
        if hashlib.sha256(data).hexdigest() != unit.sha256:
            raise ShardMismatch(unit.uri)
        if self.max_bytes >= unit.size > 0:
            self._keep(local, data)
        return io.BytesIO(data)

    def _keep(self, local: Path, data: bytes) -> None:
        from cnncli.core.atomic import write_bytes_atomic

        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            self._evict(self.max_bytes - len(data))
            write_bytes_atomic(local, data)
        except OSError:
            pass  # a full or read-only cache folder only costs another download

    def _evict(self, room: int) -> None:
        entries = []
        for path in self.folder.glob("*.tar"):
            try:
                stat = path.stat()
            except FileNotFoundError:
                continue
            entries.append((stat.st_mtime, stat.st_size, path))
        total = sum(size for _, size, _ in entries)
        for _, size, path in sorted(entries):
            if total <= room:
                break
            path.unlink(missing_ok=True)
            total -= size


def _file_sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def _fetch(uri: str) -> bytes:
    fs, path = filesystem(uri)
    return fs.cat_file(path)


def unit_samples(unit: Unit, n_classes: int, cache: ShardCache, start: int = 0, stop: int | None = None):
    """Samples ``start`` .. ``stop`` of ``unit``: exactly that many :class:`TarSample` s, errors included."""
    stop = unit.count if stop is None else stop
    produced = 0
    for index, sample in enumerate(_raw_samples(unit, n_classes, cache)):
        if index >= stop:
            break
        if index >= start:
            produced += 1
            yield sample
    for i in range(start + produced, stop):  # a shard that broke off or holds fewer samples than recorded
        yield TarSample(key="", error=f"{unit.uri or unit.name} sample {i + 1}: missing (the shard holds fewer "
                                      "samples than dataset.json records); skipped.")


def _failed(unit: Unit, why: str):
    """One error sample per image of ``unit`` (each its own message, so each is counted)."""
    for i in range(unit.count):
        yield TarSample(key="", error=f"{unit.uri} (image {i + 1} of {unit.count}): {why}")


def _raw_samples(unit: Unit, n_classes: int, cache: ShardCache):
    if unit.objects:
        yield from _object_samples(unit)
        return
    try:
        fileobj = cache.open(unit)
    except ShardMismatch:
        why = (f"its sha256 differs from the one dataset.json records, so its {unit.count} images are skipped; pack "
               "the dataset again or copy the shard back.")
        yield from _failed(unit, why)
        return
    except Exception as exc:  # a network or file error: this shard's samples are skipped, the run goes on
        yield from _failed(unit, f"cannot read the shard ({type(exc).__name__}: {exc}); its images are skipped.")
        return
    with fileobj:
        for sample in read_tar_samples(fileobj, unit.uri, n_classes):
            if sample.key:  # where it is: the shard and key, and the file it was packed from
                sample.path = f"{unit.uri}/{sample.key}" + (f" ({sample.path})" if sample.path else "")
            yield sample


def _object_samples(unit: Unit):
    uris = [uri for uri, _ in unit.objects]
    fs, _ = filesystem(uris[0])
    inner = [fs._strip_protocol(u) for u in uris]
    try:
        got = fs.cat(inner, on_error="return")
    except Exception as exc:  # the store failed for the whole group
        got = {p: exc for p in inner}
    if not isinstance(got, dict):
        got = {inner[0]: got}
    for (uri, label), path in zip(unit.objects, inner):
        data = got.get(path, FileNotFoundError(path))
        ext = uri.rsplit(".", 1)[-1].lower()
        if isinstance(data, BaseException):
            yield TarSample(key=uri, label=label, path=uri, error=f"{uri}: cannot read the object ({data}).")
        else:
            yield TarSample(key=uri, data=data, ext=ext, label=label, path=uri)
