"""``cnncli data pack DATA OUT``: any dataset ``train`` reads -> WebDataset tar shards per split + ``dataset.json``.

The source is listed and split exactly as ``train`` would (:func:`cnncli.data.layout.assemble_splits`, the same
seed and ``--val-split``), and refused for the same reasons before anything is written. Each split's samples are
cut into shards of ``shard_size`` images in that order (shard ``i`` holds the readable images among samples
``i*N .. i*N+N-1``, so its content depends on those inputs only); train's samples are shuffled by the seed first, so
each shard holds every class (a stream's shuffle buffer mixes only nearby samples). Every file is read once:
hashed, decoded to find the unreadable ones (reported, counted, left out) and written as it was
(:mod:`cnncli.data.shards`). Duplicates within a split and images in two splits are reported as ``inspect``
reports them.

Each shard is written whole (the atomic writer locally, one upload on a store), then a small record of it in
``OUT/.pack/`` (counts, what was left out, a short digest per image for the duplicate checks); ``dataset.json``
comes last. A re-run (after a crash or kill -9) skips every shard whose record matches its inputs and whose file
has the recorded size, and writes the rest: the same bytes. Locally it first removes the temporary files a killed
writer left in ``OUT`` and ``OUT/.pack/`` (their writer's process no longer exists).
"""

from __future__ import annotations

import hashlib
import json
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import numpy as np

from cnncli.core.atomic import sweep_stale_temporaries
from cnncli.core.console import info, warn
from cnncli.core.cpus import usable_cores
from cnncli.core.errors import UsageError
from cnncli.data.check import _duplicate_problems, facts_of_bytes
from cnncli.data.layout import Sample, assemble_splits, refusal_error, scan_dataset
from cnncli.data.shards import FORMAT, FORMAT_VERSION, MANIFEST, PackedSample, has_manifest, tar_bytes
from cnncli.data.stores import filesystem, is_uri, join, object_sizes, read_bytes, write_bytes

DEFAULT_SHARD_SIZE = 1000
STATE_FOLDER = ".pack"


@dataclass
class PackResult:
    out: str
    counts: dict[str, int]  # split -> images packed
    shards: int
    written: int  # shards written by this call (the rest were already complete)
    skipped: list[dict] = field(default_factory=list)  # {"path", "error"}: unreadable images left out
    problems: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class PlannedShard:
    split: str
    name: str
    start: int  # the first sample's index in its split (keys are these indices)
    samples: list[Sample]
    inputs: str  # fingerprint of the inputs: what the shard's bytes depend on


def _source_splits(data: str, val_split: float, seed: int, val_csv, allow_outside: bool):
    """(splits, base for relative paths, URI -> size) of the dataset to pack; UsageError where train would refuse."""
    if is_uri(data):
        from cnncli.data.store_scan import scan_store, store_fingerprint

        scan, sizes = scan_store(data)
        base = str(scan.root).rstrip("/") + "/"
        fingerprint = store_fingerprint(scan, sizes)
    else:
        if has_manifest(data):
            raise UsageError(f"{data} is already a packed dataset ({MANIFEST}); train on it directly.")
        from cnncli.data.multilabel import manifest_is_multilabel

        if manifest_is_multilabel(data, val_csv):  # its label sets would be packed as classes of their own
            raise UsageError(f"{data} is a multi-label manifest (rows with several labels); shards hold one label per "
                             "image, so train on the CSV manifest directly.")
        scan = scan_dataset(data, val_csv, allow_outside)
        from cnncli.data.eval_split import scan_fingerprint

        sizes = None
        base = str((scan.root.parent if scan.layout == "csv" else scan.root).resolve())
        fingerprint = scan_fingerprint(scan)
    splits, refusals = assemble_splits(scan, val_split, seed)
    if refusals:
        raise refusal_error(refusals, data)
    for message in splits.warnings:
        warn(message)
    return splits, base, sizes, fingerprint


def _relative(path, base: str) -> str:
    text = str(path)
    if is_uri(text):
        return text[len(base):] if text.startswith(base) else text
    try:
        return Path(text).resolve().relative_to(base).as_posix()
    except ValueError:
        return Path(text).resolve().as_posix()


def plan_shards(splits, base: str, sizes: dict | None, shard_size: int, seed: int) -> list[PlannedShard]:
    planned = []
    for split in ("train", "val", "test"):
        samples = getattr(splits, split)
        if split == "train":  # mixed before cutting, so a shard holds every class: a stream's buffer cannot mix far
            order = np.random.default_rng([seed, zlib.crc32(b"pack")]).permutation(len(samples))
            samples = [samples[i] for i in order]
        for start in range(0, len(samples), shard_size):
            part = samples[start:start + shard_size]
            digest = hashlib.sha256(json.dumps([FORMAT_VERSION, start, splits.classes]).encode())
            for sample in part:
                size = sizes.get(str(sample.path), -1) if sizes is not None else Path(sample.path).stat().st_size
                digest.update(f"{_relative(sample.path, base)}\t{size}\t{sample.label}\n".encode())
            planned.append(PlannedShard(split, f"{split}-{start // shard_size:06d}.tar", start, part,
                                        digest.hexdigest()))
    return planned


def _read_sources(paths: list[str]) -> dict[str, bytes | BaseException]:
    if paths and is_uri(paths[0]):
        fs, _ = filesystem(paths[0])
        inner = {fs._strip_protocol(p): p for p in paths}
        try:
            got = fs.cat(list(inner), on_error="return")
        except Exception as exc:  # a store-wide failure: every object carries it
            got = {p: exc for p in inner}
        if not isinstance(got, dict):
            got = {next(iter(inner)): got}
        return {uri: got.get(p, FileNotFoundError(p)) for p, uri in inner.items()}

    def read(path: str):
        try:
            return Path(path).read_bytes()
        except OSError as exc:
            return exc

    with ThreadPoolExecutor(max_workers=min(8, usable_cores() * 2)) as pool:
        return dict(zip(paths, pool.map(read, paths)))


def build_shard(plan: PlannedShard, classes: list[str], base: str) -> tuple[bytes, dict]:
    """The shard's bytes and its record (sha256, size, counts, what was left out, each image's digest)."""
    paths = [str(s.path) for s in plan.samples]
    raw = _read_sources(paths)
    with ThreadPoolExecutor(max_workers=min(8, usable_cores() * 2)) as pool:
        facts = list(pool.map(lambda p: None if isinstance(raw[p], BaseException) else facts_of_bytes(raw[p]), paths))
    packed, skipped, digests = [], [], []
    class_counts: dict[str, int] = {}
    for i, (sample, fact) in enumerate(zip(plan.samples, facts)):
        rel = _relative(sample.path, base)
        data = raw[str(sample.path)]
        if fact is None or fact.error:
            why = fact.error if fact is not None else f"cannot read it ({type(data).__name__}: {data})."
            skipped.append({"path": str(sample.path), "error": why})
            continue
        key = f"{plan.start + i:08d}"
        ext = (PurePosixPath(rel).suffix.lstrip(".") or "img").lower()
        name = classes[sample.label]
        packed.append(PackedSample(key, ext, data, sample.label, name, rel))
        class_counts[name] = class_counts.get(name, 0) + 1
        digests.append([rel, fact.digest[:16], sample.label])  # 64 bits find duplicates among billions
    payload = tar_bytes(packed)
    record = {"name": plan.name, "split": plan.split, "sha256": hashlib.sha256(payload).hexdigest(),
              "bytes": len(payload), "count": len(packed), "class_counts": class_counts, "inputs": plan.inputs,
              "skipped": skipped, "digests": digests}
    return payload, record


def _known_records(out: str) -> dict[str, dict]:
    """Shard records from an earlier, interrupted or finished, pack into ``out``."""
    known: dict[str, dict] = {}
    state = join(out, STATE_FOLDER)
    for name in sorted(object_sizes(state)):
        if name.endswith(".json"):
            try:
                record = json.loads(read_bytes(join(state, name)))
                known[record["name"]] = record
            except (FileNotFoundError, ValueError, KeyError):
                continue
    return known


def pack_dataset(data: str, out: str, shard_size: int = DEFAULT_SHARD_SIZE, val_split: float = 0.2, seed: int = 0,
                 val_csv: str | None = None, allow_outside: bool = False, quiet: bool = False) -> PackResult:
    """Pack ``data`` into ``out`` (see the module docstring)."""
    from cnncli.core.progress import progress_bar

    if shard_size < 1:
        raise UsageError(f"--shard-size must be at least 1 image, not {shard_size}.")
    splits, base, sizes, fingerprint = _source_splits(data, val_split, seed, val_csv, allow_outside)
    if not is_uri(out):
        out_path = Path(out).expanduser()
        if out_path.exists() and not out_path.is_dir():
            raise UsageError(f"{out} is a file; pass a folder (or a URI) to write the shards into.")
        if out_path.resolve() == Path(base).resolve() or Path(base) in out_path.resolve().parents:
            raise UsageError(f"{out} is inside the dataset {data}; write the shards somewhere else.")
        out = str(out_path)
        for folder in (out_path, out_path / STATE_FOLDER):
            sweep_stale_temporaries(folder)  # what a pack killed mid-write left
    planned = plan_shards(splits, base, sizes, shard_size, seed)
    known = _known_records(out)
    present = object_sizes(out)
    records: list[dict] = []
    written = 0
    with progress_bar("pack", len(planned), enabled=not quiet) as bar:
        for plan in planned:
            record = known.get(plan.name)
            if not (record and record.get("inputs") == plan.inputs and present.get(plan.name) == record["bytes"]):
                payload, record = build_shard(plan, splits.classes, base)
                write_bytes(join(out, plan.name), payload)
                write_bytes(join(join(out, STATE_FOLDER), f"{plan.name}.json"), json.dumps(record).encode())
                written += 1
            records.append(record)
            bar.advance()
    skipped = [bad for record in records for bad in record["skipped"]]
    problems = _problems(records)
    manifest = {
        "format": FORMAT, "version": FORMAT_VERSION, "classes": list(splits.classes),
        "source": {"dataset": str(data) if is_uri(data) else str(Path(data).expanduser().resolve()),
                   "layout": splits.layout, "val_split": val_split, "seed": seed, "fingerprint": fingerprint,
                   "val_csv": str(Path(val_csv).resolve()) if val_csv else None},
        "shard_size": shard_size,
        "splits": {},
        "skipped": skipped,
        "problems": problems,
    }
    for split in ("train", "val", "test"):
        mine = [r for r in records if r["split"] == split]
        if not mine:
            continue
        totals: dict[str, int] = {}
        for r in mine:
            for name, n in r["class_counts"].items():
                totals[name] = totals.get(name, 0) + n
        manifest["splits"][split] = {
            "count": sum(r["count"] for r in mine),
            "class_counts": {name: totals[name] for name in splits.classes if name in totals},
            "shards": [{k: r[k] for k in ("name", "sha256", "bytes", "count", "class_counts")} for r in mine]}
    write_bytes(join(out, MANIFEST), (json.dumps(manifest, indent=1) + "\n").encode())
    counts = {split: entry["count"] for split, entry in manifest["splits"].items()}
    for bad in skipped[:5]:
        warn(f"left out an unreadable image: {bad['path']}: {bad['error']}")
    for problem in problems:
        warn(problem)
    if not quiet:
        info(f"packed {sum(counts.values())} images ({', '.join(f'{n} {s}' for s, n in counts.items())}) into "
             f"{len(planned)} shards in {out} ({written} written, {len(planned) - written} already complete)"
             + (f"; {len(skipped)} unreadable images left out" if skipped else ""))
    return PackResult(out, counts, len(planned), written, skipped, problems)


def _problems(records: list[dict]) -> list[str]:
    """Duplicates within a split, images in two splits and identical images under two labels, as inspect says."""
    where: dict[str, dict[str, list[tuple[str, int]]]] = {}
    for record in records:
        for rel, digest, label in record["digests"]:
            where.setdefault(digest, {}).setdefault(record["split"], []).append((rel, label))
    duplicates = [[p for p, _ in items] for splits in where.values() for items in splits.values() if len(items) > 1]
    conflicting = [[p for p, _ in items] for splits in where.values() for items in splits.values()
                   if len({label for _, label in items}) > 1]
    leaks = [{"hash": digest, **{s: [p for p, _ in items] for s, items in splits.items()}}
             for digest, splits in where.items() if len(splits) > 1]
    return _duplicate_problems(duplicates, leaks, conflicting)
