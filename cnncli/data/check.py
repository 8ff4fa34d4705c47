"""The dataset health checker shared by ``cnncli inspect DATA`` and ``train``/``finetune``.

:func:`check_dataset` lists the dataset with :mod:`cnncli.data.layout` (so it sees exactly the split that
training would use), then reads every file once: a SHA-256 of its bytes finds exact duplicates within a split
and leaks across splits; PIL reads the header for size, mode and EXIF orientation, and with ``decode=True``
decodes the pixels so truncated or corrupt files are found before training does. Files are read by a small
thread pool (hashing and decoding release the GIL).
"""

from __future__ import annotations

import hashlib
import io
import math
import warnings
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from cnncli.core.cpus import usable_cores
from cnncli.core.paths import special_file_problem
from cnncli.data.images import max_image_pixels
from cnncli.data.layout import DatasetSplits, Sample, assemble_splits, scan_dataset

TOP_SIZES = 10
IMBALANCE_NOTE_RATIO = 5.0  # from this max/min ratio on, the report suggests class balancing
EXIF_ORIENTATION_TAG = 0x0112
EXIF_ROTATED = "exif-rotated"
SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N")


@dataclass
class DatasetReport:
    layout: str
    root: str
    classes: list[str]
    counts: dict[str, dict[str, int]]  # split -> class -> image count
    imbalance_ratio: float  # max/min class count in train over classes that have train images
    sizes: dict[str, int]  # "WxH" -> count (the most common TOP_SIZES; the rest under "other")
    modes: dict[str, int]  # "RGB", "L", "RGBA", "CMYK", "I;16", "exif-rotated", ...
    unreadable: list[dict]  # {"path", "error"}
    duplicates: list[list[str]]  # groups of identical files within a split
    leaks: list[dict]  # {"hash", "train": [...], "val": [...]} same content across splits
    hidden_ignored: list[str]
    empty_classes: list[str]
    problems: list[str]  # one sentence each; what train/finetune would refuse or warn
    notes: list[str] = field(default_factory=list)  # worth knowing, not problems (how val was made, imbalance)
    n_images: int = 0
    task: str = "single"  # "multilabel": counts are images showing each class (:mod:`.multilabel_check`)
    labels: dict | None = None  # multi-label: label cardinality, images with no label, co-occurrence, top pairs

    def to_dict(self) -> dict:
        data = asdict(self)
        if self.task == "single":  # single-label reports keep their keys
            del data["task"], data["labels"]
        if not math.isfinite(self.imbalance_ratio):
            data["imbalance_ratio"] = None  # JSON has no infinity
        return data


@dataclass
class FileFacts:
    """What one file looked like: content hash, and size/mode/orientation, or why it could not be read."""

    digest: str | None = None
    size: tuple[int, int] | None = None
    mode: str | None = None
    exif_rotated: bool = False
    error: str | None = None


def read_file_facts(path: Path, decode: bool = True) -> FileFacts:
    """Hash the bytes of ``path`` and read its image header (and pixels when ``decode``). Never raises."""
    special = special_file_problem(path)
    if special:  # reading a FIFO blocks forever, a device never ends
        return FileFacts(error=f"is {special}, not an image file.")
    try:
        data = path.read_bytes()
    except OSError as exc:
        return FileFacts(error=f"cannot read the file ({exc.strerror or exc}).")
    return facts_of_bytes(data, decode)


def facts_of_bytes(data: bytes, decode: bool = True) -> FileFacts:
    """:func:`read_file_facts` for bytes already read (an object fetched from a store, a tar member). Never raises."""
    facts = FileFacts(digest=hashlib.sha256(data).hexdigest())
    if not data:
        facts.error = "the file is empty (0 bytes)."
        return facts
    limit = max_image_pixels()  # also sets PIL's own limit from CNNCLI_MAX_PIXELS
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as img:
                width, height = img.size
                facts.mode = img.mode
                orientation = _orientation(img)
                facts.exif_rotated = orientation != 1
                if orientation in (5, 6, 7, 8):  # a quarter turn: what training sees is transposed
                    width, height = height, width
                facts.size = (width, height)
                if width * height > limit:
                    facts.error = (f"{width}x{height} is over the {limit:,}-pixel limit that guards "
                                   "against decompression bombs.")
                elif decode:
                    img.seek(0)
                    img.load()
    except UnidentifiedImageError:
        facts.error = "not an image file PIL can read (wrong extension or corrupt)."
    except Image.DecompressionBombError as exc:
        facts.error = f"refused as a possible decompression bomb ({exc})."
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        facts.error = f"cannot decode the image ({exc}); the file is truncated or corrupt."
    return facts


def _orientation(img: Image.Image) -> int:
    """The EXIF orientation tag (1 = upright) without decoding pixels: PIL's PNG getexif() would load the
    whole image to look for an eXIf chunk after the pixel data, so PNGs are asked only about the header's."""
    if img.format == "PNG" and "exif" not in img.info:
        return 1
    return img.getexif().get(EXIF_ORIENTATION_TAG, 1) or 1


def check_dataset(path: str | Path, val_split: float = 0.2, seed: int = 0, val_csv: str | Path | None = None,
                  decode: bool = True, workers: int | None = None, allow_outside: bool = False) -> DatasetReport:
    """Check the dataset at ``path`` and report everything ``train`` would refuse or warn about, and more.

    Raises UsageError only when ``path`` is not a dataset at all (missing, not a folder or CSV); an empty
    class, a single class or a bad split is reported in ``problems``, never raised.
    """
    scan = scan_dataset(path, val_csv, allow_outside)
    splits, refusals = assemble_splits(scan, val_split, seed)
    by_split = {name: samples for name, samples in (("train", splits.train), ("val", splits.val),
                                                    ("test", splits.test)) if samples or name != "test"}
    all_samples = [s for samples in by_split.values() for s in samples]
    facts = _read_all([s.path for s in all_samples], decode, workers)

    counts = {split: _class_counts(samples, splits.classes) for split, samples in by_split.items()}
    train_counts = [n for n in counts["train"].values() if n > 0]  # classes with no train images are problems
    imbalance = max(train_counts) / min(train_counts) if train_counts else math.inf
    readable = [(s, facts[s.path]) for s in all_samples if facts[s.path].error is None]
    unreadable = [{"path": str(s.path), "error": facts[s.path].error} for s in all_samples if facts[s.path].error]
    unreadable += [{"path": str(p), "error": "listed in the CSV manifest but not on disk."} for p in scan.missing_files]
    duplicates, leaks = _find_duplicates(by_split, facts)
    label_of = {str(s.path): s.label for s in all_samples}
    conflicting = [group for group in duplicates if len({label_of[p] for p in group}) > 1]

    report = DatasetReport(
        layout=splits.layout,
        root=str(splits.root),
        classes=list(splits.classes),
        counts=counts,
        imbalance_ratio=imbalance,
        sizes=_top_sizes(Counter(f"{f.size[0]}x{f.size[1]}" for _, f in readable if f.size)),
        modes=_modes(f for _, f in readable),
        unreadable=unreadable,
        duplicates=duplicates,
        leaks=leaks,
        hidden_ignored=[str(p) for p in scan.hidden],
        empty_classes=[str(p) for p in scan.empty_class_folders],
        problems=[],
        notes=list(splits.notes),
        n_images=len(all_samples),
    )
    report.problems = list(refusals) + _health_problems(report, splits, conflicting)
    if math.isfinite(imbalance) and imbalance >= IMBALANCE_NOTE_RATIO:
        report.notes.append(f"the largest class has {imbalance:.1f}x the train images of the smallest; "
                            "consider `--balance sampler` or `--balance weights` when training.")
    return report


def file_digest(path: Path) -> FileFacts:
    """Only the SHA-256 of ``path``'s bytes (no image header); never raises."""
    if special_file_problem(path):
        return FileFacts(error="not a regular file.")
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as fh:
            while block := fh.read(1 << 20):
                digest.update(block)
    except OSError as exc:
        return FileFacts(error=f"cannot read the file ({exc.strerror or exc}).")
    return FileFacts(digest=digest.hexdigest())


def _read_all(paths: list[Path], decode: bool, workers: int | None, digest_only: bool = False) -> dict[Path, FileFacts]:
    if not paths:
        return {}
    read = file_digest if digest_only else (lambda p: read_file_facts(p, decode))
    workers = workers or min(8, usable_cores() * 2)
    if workers <= 1 or len(paths) < 16:
        return {p: read(p) for p in paths}
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return dict(zip(paths, pool.map(read, paths, chunksize=16)))


def _class_counts(samples: list[Sample], classes: list[str]) -> dict[str, int]:
    counter = Counter(s.label for s in samples)
    return {name: counter.get(i, 0) for i, name in enumerate(classes)}


def _top_sizes(sizes: Counter) -> dict[str, int]:
    top = dict(sizes.most_common(TOP_SIZES))
    rest = sum(sizes.values()) - sum(top.values())
    if rest:
        top["other"] = rest
    return top


def _modes(all_facts) -> dict[str, int]:
    modes: Counter = Counter()
    for facts in all_facts:
        if facts.mode:
            modes[facts.mode] += 1
        if facts.exif_rotated:
            modes[EXIF_ROTATED] += 1
    return dict(modes.most_common())


def _find_duplicates(by_split: dict[str, list[Sample]], facts: dict[Path, FileFacts]
                     ) -> tuple[list[list[str]], list[dict]]:
    """Groups of byte-identical files inside one split, and contents found in more than one split."""
    where: dict[str, dict[str, list[str]]] = {}  # digest -> split -> paths
    for split, samples in by_split.items():
        for sample in samples:
            digest = facts[sample.path].digest
            if digest is not None:
                where.setdefault(digest, {}).setdefault(split, []).append(str(sample.path))
    duplicates = [paths for splits in where.values() for paths in splits.values() if len(paths) > 1]
    leaks = [{"hash": digest, **splits} for digest, splits in where.items() if len(splits) > 1]
    return duplicates, leaks


def _health_problems(report: DatasetReport, splits: DatasetSplits, conflicting: list[list[str]]) -> list[str]:
    """One sentence per finding that training would warn about or that spoils the measured accuracy."""
    problems = list(splits.warnings)
    if report.unreadable:
        problems.append(f"{_plural(len(report.unreadable), 'unreadable image')} "
                        f"(first: {report.unreadable[0]['path']}); "
                        f"training skips {'it' if len(report.unreadable) == 1 else 'them'}: fix or remove "
                        f"{'it' if len(report.unreadable) == 1 else 'them'}.")
    return problems + _duplicate_problems(report.duplicates, report.leaks, conflicting)


def duplicate_warnings(splits: DatasetSplits, workers: int | None = None) -> list[str]:
    """What ``inspect DATA`` says about identical files, for the split ``train``/``finetune`` use: duplicates within
    a split, the same image in train and val, and one image under two labels, naming the files. Only hashes are
    computed (no decoding), once per run. A streamed dataset was checked when it was packed: nothing is read."""
    if splits.stream is not None:
        return []
    by_split = {"train": splits.train, "val": splits.val}
    paths = [s.path for samples in by_split.values() for s in samples]
    facts = _read_all(paths, decode=False, workers=workers, digest_only=True)
    duplicates, leaks = _find_duplicates(by_split, facts)
    label_of = {str(s.path): s.label for samples in by_split.values() for s in samples}
    conflicting = [group for group in duplicates if len({label_of[p] for p in group}) > 1]
    return _duplicate_problems(duplicates, leaks, conflicting)


def _duplicate_problems(duplicates: list[list[str]], leaks: list[dict], conflicting: list[list[str]]) -> list[str]:
    problems = []
    if leaks:
        n_files = sum(len(paths) for leak in leaks for key, paths in leak.items() if key != "hash")
        problems.append(f"{_plural(len(leaks), 'image')} {'is' if len(leaks) == 1 else 'are'} in more "
                        f"than one split ({n_files} files, first: {_first_path(leaks[0])}); val accuracy is "
                        "inflated: remove the copies from val/test.")
    if duplicates:
        problems.append(f"{_plural(len(duplicates), 'group')} of identical files within a split (first: "
                        f"{', '.join(duplicates[0][:2])}); remove the copies.")
    if conflicting:
        problems.append(f"{_plural(len(conflicting), 'group')} of identical files "
                        f"{'carries' if len(conflicting) == 1 else 'carry'} different labels (first: "
                        f"{', '.join(conflicting[0][:2])}); keep each image in one class only.")
    return problems


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"


def _first_path(leak: dict) -> str:
    """The first copy in each split, e.g. ``train/a/1.png (train) = val/a/7.png (val)``."""
    return " = ".join(f"{paths[0]} ({key})" for key, paths in leak.items() if key != "hash")
