"""Finding the images and labels of a dataset: layout detection, class order, and the seeded val split.

Three layouts are understood, detected automatically:

* ``class-folders``: ``DATA/<class>/**/*.jpg``; a stratified, seeded share goes to val.
* ``split-folders``: ``DATA/train/<class>/...`` and ``DATA/val|valid|validation/<class>/...``, optionally
  ``DATA/test/<class>/...`` (used only by ``evaluate``).
* ``csv``: a manifest ``path,label`` (paths relative to the CSV, header optional), optionally with a second
  manifest for val.

Nothing here decodes an image (listing a big dataset stays fast); :mod:`cnncli.data.check` looks inside
the files. :func:`scan_dataset` never refuses a dataset that it can read; :func:`assemble_splits` turns a scan
into :class:`DatasetSplits` plus the sentences :func:`load_dataset` refuses with, so ``cnncli inspect`` can
list every problem that ``train`` would stop at.
"""

from __future__ import annotations

import csv
import os
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cnncli.core.errors import UsageError
from cnncli.data.images import is_image_file
from cnncli.data.inputs import natural_key  # "2" before "10", case ignored

VAL_FOLDER_NAMES = ("val", "valid", "validation")
TRAIN_FOLDER_NAME = "train"
TEST_FOLDER_NAME = "test"
SPLIT_NAMES = ("train", "val", "test")
PATH_COLUMN_NAMES = ("path", "file", "filename", "filepath", "image", "image_path", "img")
LABEL_COLUMN_NAMES = ("label", "class", "class_name", "target", "category")
_JUNK_FOLDERS = ("__MACOSX",)


@dataclass(frozen=True)
class Sample:
    path: Path
    label: int  # index into DatasetSplits.classes


@dataclass
class DatasetSplits:
    root: Path
    layout: str  # "class-folders" | "split-folders" | "csv"
    classes: list[str]  # natural order ("2" before "10"); index order everywhere
    train: list[Sample]
    val: list[Sample]
    test: list[Sample]  # only for split-folders with test/; used only by evaluate
    warnings: list[str] = field(default_factory=list)  # e.g. "class 'x' has no images in val"
    notes: list[str] = field(default_factory=list)  # how the split was made, when it is worth saying; not problems
    stream: object = None  # a cnncli.data.stream_source.StreamSource: read as a stream (packed, or in a store)


@dataclass
class DatasetScan:
    """What is on disk, before any refusal: files per group and class, and what was left out.

    ``groups`` maps a group to class -> image paths. Groups are "all" (class folders, or a single CSV:
    val still has to be split off), or "train", "val", "test".
    """

    root: Path
    layout: str
    groups: dict[str, dict[str, list[Path]]]
    hidden: list[Path] = field(default_factory=list)  # hidden files/folders that were ignored
    empty_class_folders: list[Path] = field(default_factory=list)
    non_image_files: list[Path] = field(default_factory=list)
    missing_files: list[Path] = field(default_factory=list)  # named by a CSV manifest, not on disk
    loose_images: list[Path] = field(default_factory=list)  # images directly in a folder meant to hold classes
    ignored_folders: list[Path] = field(default_factory=list)  # next to train/ and val/ but not a split
    skipped_links: list[Path] = field(default_factory=list)  # symlinks into the dataset itself or loops: not followed
    unreadable_folders: list[tuple[Path, str]] = field(default_factory=list)  # (folder, why) that could not be listed

    def class_names(self) -> list[str]:
        names = {name for classes in self.groups.values() for name in classes}
        return sorted(names, key=natural_key)


def is_hidden(name: str) -> bool:
    """Hidden files and folders (".ipynb_checkpoints", ".DS_Store", "__MACOSX") are never classes or samples."""
    return name.startswith(".") or name in _JUNK_FOLDERS


def looks_like_dataset(path: str | Path) -> bool:
    """True for a folder or a .csv manifest: what ``inspect`` treats as a dataset rather than a model."""
    path = Path(path).expanduser()
    return path.is_dir() or path.suffix.lower() == ".csv"


# ------------------------------------------------------------------------------------------- scanning


def scan_dataset(path: str | Path, val_csv: str | Path | None = None, allow_outside: bool = False) -> DatasetScan:
    """List the dataset at ``path`` (a folder or a CSV manifest). Raises UsageError only when the path is
    missing or cannot be read as a dataset at all (a file that is not a CSV, a malformed manifest, a manifest
    path outside the manifest's folder without ``allow_outside``)."""
    root = Path(path).expanduser()
    if not root.exists():
        raise UsageError(f"{root}: no such file or folder; pass a dataset folder or a CSV manifest.")
    if root.is_file():
        if root.suffix.lower() != ".csv":
            raise UsageError(f"{root}: not a dataset; "
                             "pass a folder of class sub-folders or a CSV manifest (path,label).")
        return _scan_csv(root, val_csv, allow_outside)
    if val_csv is not None:
        raise UsageError("--val-csv goes with a CSV manifest; for a folder dataset use --val-split or a val/ folder.")
    split_dirs = _split_folders(root)
    if _is_split_layout(root, split_dirs):
        scan = DatasetScan(root, "split-folders", {})
        for split, folder in split_dirs.items():
            scan.groups[split] = _scan_class_folders(folder, scan)
        for entry in _visible_entries(root, scan):
            if entry.is_file() and is_image_file(entry):
                scan.loose_images.append(entry)
            elif entry.is_dir() and entry not in split_dirs.values():
                scan.ignored_folders.append(entry)
        return scan
    scan = DatasetScan(root, "class-folders", {})
    scan.groups["all"] = _scan_class_folders(root, scan)
    return scan


def _split_folders(root: Path) -> dict[str, Path]:
    """train/, val/ (or valid/, validation/) and test/ under ``root``, matched case-insensitively."""
    found: dict[str, Path] = {}
    for entry in sorted(root.iterdir(), key=lambda p: natural_key(p.name)):
        if not entry.is_dir() or is_hidden(entry.name):
            continue
        name = entry.name.lower()
        if name == TRAIN_FOLDER_NAME:
            found["train"] = entry
        elif name in VAL_FOLDER_NAMES and "val" not in found:
            found["val"] = entry
        elif name == TEST_FOLDER_NAME:
            found["test"] = entry
    return found


def _is_split_layout(root: Path, split_dirs: dict[str, Path]) -> bool:
    """train/ holding class sub-folders, next to val/ or test/ or alone: not a dataset whose class is "train"."""
    if "train" not in split_dirs:
        return False
    train_has_classes = any(p.is_dir() and not is_hidden(p.name) for p in split_dirs["train"].iterdir())
    other_dirs = [p for p in root.iterdir() if p.is_dir() and not is_hidden(p.name) and p not in split_dirs.values()]
    return train_has_classes and (len(split_dirs) > 1 or not other_dirs)


def _visible_entries(folder: Path, scan: DatasetScan) -> list[Path]:
    """Entries of ``folder`` in natural order; hidden ones are recorded in ``scan.hidden`` and skipped, and a
    folder that cannot be listed is recorded in ``scan.unreadable_folders``."""
    entries = []
    try:
        listed = list(folder.iterdir())
    except OSError as exc:
        scan.unreadable_folders.append((folder, exc.strerror or str(exc)))
        return entries
    for entry in sorted(listed, key=lambda p: natural_key(p.name)):
        if is_hidden(entry.name):
            scan.hidden.append(entry)
        else:
            entries.append(entry)
    return entries


def _scan_class_folders(folder: Path, scan: DatasetScan) -> dict[str, list[Path]]:
    """class name -> image files (recursive, natural order) for each visible sub-folder of ``folder``."""
    classes: dict[str, list[Path]] = {}
    for entry in _visible_entries(folder, scan):
        if entry.is_dir() and _link_inside_dataset(entry, scan):
            scan.skipped_links.append(entry)  # a second name for images already in the dataset, or a loop
        elif entry.is_dir():
            images = _images_below(entry, scan)
            classes[entry.name] = images
            if not images:
                scan.empty_class_folders.append(entry)
        elif is_image_file(entry):
            scan.loose_images.append(entry)
        else:
            scan.non_image_files.append(entry)
    return classes


def _link_inside_dataset(path: Path, scan: DatasetScan) -> bool:
    """``path`` is a symlink to a folder inside the dataset (its images would be counted twice, perhaps under
    another class) or to one of its own ancestors (a loop)."""
    if not path.is_symlink():
        return False
    target = Path(os.path.realpath(path))
    root = Path(os.path.realpath(scan.root if scan.root.is_dir() else scan.root.parent))
    here = Path(os.path.realpath(path.parent))
    return target == root or root in target.parents or target == here or target in here.parents


def _images_below(folder: Path, scan: DatasetScan) -> list[Path]:
    images: list[Path] = []
    visited: set[str] = set()

    def unreadable(exc: OSError) -> None:
        scan.unreadable_folders.append((Path(exc.filename or folder), exc.strerror or str(exc)))

    for here, dirs, files in os.walk(folder, onerror=unreadable, followlinks=True):
        here_path = Path(here)
        real = os.path.realpath(here)
        if real in visited:  # reached again through a link: a loop or a second name
            dirs[:] = []
            continue
        visited.add(real)
        scan.hidden += [here_path / d for d in dirs if is_hidden(d)]
        links = [d for d in dirs if not is_hidden(d) and _link_inside_dataset(here_path / d, scan)]
        scan.skipped_links += [here_path / d for d in links]
        dirs[:] = sorted((d for d in dirs if not is_hidden(d) and d not in links), key=natural_key)
        for name in sorted(files, key=natural_key):
            file = here_path / name
            if is_hidden(name):
                scan.hidden.append(file)
            elif is_image_file(file):
                images.append(file)
            else:
                scan.non_image_files.append(file)
    return images


def _scan_csv(manifest: Path, val_csv: str | Path | None, allow_outside: bool = False) -> DatasetScan:
    scan = DatasetScan(manifest, "csv", {})
    if val_csv is None:
        scan.groups["all"] = _read_manifest(manifest, scan, allow_outside)
    else:
        val_path = Path(val_csv).expanduser()
        if not val_path.is_file():
            raise UsageError(f"--val-csv {val_path}: no such file; pass the CSV manifest of the validation images.")
        scan.groups["train"] = _read_manifest(manifest, scan, allow_outside)
        scan.groups["val"] = _read_manifest(val_path, scan, allow_outside)
    return scan


def _read_manifest(manifest: Path, scan: DatasetScan, allow_outside: bool = False) -> dict[str, list[Path]]:
    """class -> paths from a ``path,label`` CSV. The header is optional; with one, the columns may be in
    any order and named path/file/filename/image and label/class/target."""
    try:
        with open(manifest, newline="", encoding="utf-8-sig") as handle:
            rows = list(csv.reader(handle))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise UsageError(f"{manifest}: cannot read the CSV manifest ({exc}).") from None
    rows = [(number, row) for number, row in enumerate(rows, 1) if any(cell.strip() for cell in row)]
    if not rows:
        raise UsageError(f"{manifest}: the CSV manifest is empty; write one 'path,label' line per image.")
    path_col, label_col = 0, 1
    header = [cell.strip().lower() for cell in rows[0][1]]
    if any(name in PATH_COLUMN_NAMES for name in header) and any(name in LABEL_COLUMN_NAMES for name in header):
        path_col = next(i for i, name in enumerate(header) if name in PATH_COLUMN_NAMES)
        label_col = next(i for i, name in enumerate(header) if name in LABEL_COLUMN_NAMES)
        rows = rows[1:]
    base = manifest.parent
    classes: dict[str, list[Path]] = {}
    for number, row in rows:
        if len(row) <= max(path_col, label_col):
            raise UsageError(f"{manifest} line {number}: expected 'path,label' but found {','.join(row)!r}.")
        rel, label = row[path_col].strip(), row[label_col].strip()
        if not rel or not label:
            raise UsageError(f"{manifest} line {number}: the path or the label is empty.")
        file = Path(rel).expanduser()
        if not allow_outside and (file.is_absolute() or os.path.normpath(rel).split(os.sep)[0] == os.pardir):
            raise UsageError(f"{manifest} line {number}: {rel} is outside the manifest's folder {base}; a manifest "
                             "names files below its own folder, or pass --allow-outside to read it anyway.")
        file = file if file.is_absolute() else base / file
        if not file.is_file():
            scan.missing_files.append(file)
            continue
        classes.setdefault(label, []).append(file)
    return {name: classes[name] for name in sorted(classes, key=natural_key)}


# ------------------------------------------------------------------------------------------- splitting


def stratified_split(files_by_class: dict[str, list[Path]], val_split: float, seed: int
                     ) -> tuple[dict[str, list[Path]], dict[str, list[Path]]]:
    """Send round(n * val_split) images of each class to val, chosen by a seeded shuffle.

    Each class is shuffled by its own generator, seeded by (seed, crc32 of the class name), so adding or
    removing a class does not change which images of the other classes go to val. Order inside each part
    follows the input order (natural path order).
    """
    train: dict[str, list[Path]] = {}
    val: dict[str, list[Path]] = {}
    for name, files in files_by_class.items():
        n_val = round(len(files) * val_split)  # 0 for a tiny class: assemble_splits names it
        rng = np.random.default_rng([seed, zlib.crc32(name.encode("utf-8", "surrogateescape"))])
        chosen = set(rng.permutation(len(files))[:n_val].tolist())
        val[name] = [f for i, f in enumerate(files) if i in chosen]
        train[name] = [f for i, f in enumerate(files) if i not in chosen]
    return train, val


def assemble_splits(scan: DatasetScan, val_split: float = 0.2, seed: int = 0,
                    classes: list[str] | None = None) -> tuple[DatasetSplits, list[str]]:
    """Turn a scan into samples and the refusals (one sentence each) that :func:`load_dataset` raises.

    Never raises for dataset content: everything wrong is returned, so the checker can report it all.
    Warnings (kept in ``DatasetSplits.warnings``) are things training goes on with; notes say how the split
    was made where that is not obvious (val held out of train/, no val at all).
    """
    if not 0.0 <= val_split < 1.0:
        raise UsageError(f"--val-split must be at least 0 and below 1, not {val_split}.")
    refusals: list[str] = []
    warnings: list[str] = []
    notes: list[str] = []
    where = scan.root
    for folder in scan.empty_class_folders:
        refusals.append(f"class folder {folder} has no images; add images to it or remove it.")
    to_split = scan.groups.get("all")
    if to_split is None and "val" not in scan.groups:
        to_split = scan.groups["train"]
        notes.append(f"{where} has train/ but no val/, valid/ or validation/ folder; "
                        f"{val_split:.0%} of train/ is held out as val.")
    if to_split is not None:
        train_files, val_files = stratified_split(to_split, val_split, seed) if val_split > 0 else (dict(to_split), {})
        if val_split == 0:
            notes.append("--val-split 0: no validation images; accuracy will not be measured on held-out images.")
        for name, files in to_split.items():
            if files and val_split > 0 and not val_files[name]:
                refusals.append(f"--val-split {val_split:g} leaves class '{name}' with no val images "
                                f"({len(files)} in all); add images or raise --val-split.")
            elif files and not train_files[name]:
                refusals.append(f"--val-split {val_split:g} leaves class '{name}' with no train images "
                                f"({len(files)} in all); add images or lower --val-split.")
        parts = {"train": train_files, "val": val_files, "test": scan.groups.get("test", {})}
    else:
        parts = {split: scan.groups.get(split, {}) for split in SPLIT_NAMES}

    found = scan.class_names()
    if classes is None:
        class_list = found
    else:
        class_list = list(classes)
        unknown = [name for name in found if name not in class_list]
        if unknown:
            refusals.append(
                f"{quote_list(unknown)} in {where} {'is' if len(unknown) == 1 else 'are'} not among the "
                f"{len(class_list)} classes given ({quote_list(class_list, 6)})."
            )
    index = {name: i for i, name in enumerate(class_list)}

    n_images = sum(len(files) for part in parts.values() for files in part.values())
    with_train_images = [name for name, files in parts["train"].items() if files]
    if n_images == 0 and scan.loose_images and not found:
        refusals.insert(0, f"{where} holds {len(scan.loose_images)} images but no class sub-folders; put each "
                           "class's images in a sub-folder named after the class.")
    elif n_images == 0 and scan.layout == "csv":
        refusals.insert(0, f"no images found from {where}: the {len(scan.missing_files)} files it names do not exist; "
                           "paths are read relative to the CSV's folder.")
    elif n_images == 0:
        refusals.insert(0, f"no images found in {where}; expected class sub-folders of .jpg/.png files, "
                           "train/ and val/ folders, or a CSV manifest (path,label).")
    elif len(with_train_images) < 2:
        only = f" (only '{with_train_images[0]}')" if with_train_images else ""
        refusals.append(f"{where} has a single class{only}; a classifier needs at least two class folders or labels.")

    if to_split is None and n_images:
        for name in class_list:
            present = {split: bool(parts[split].get(name)) for split in ("train", "val")}
            if present["train"] and "val" in scan.groups and not present["val"]:
                warnings.append(f"class '{name}' has images in train but none in val; "
                                "its val accuracy is not measured.")
            if present["val"] and not present["train"]:
                warnings.append(f"class '{name}' has images in val but none in train; the model cannot learn it.")
    if scan.missing_files and n_images:
        warnings.append(f"the CSV manifest names {len(scan.missing_files)} files that do not exist "
                        f"(first: {scan.missing_files[0]}); they are skipped.")
    if scan.ignored_folders:
        warnings.append(f"{quote_list([p.name for p in scan.ignored_folders])} next to train/ "
                        f"{'is' if len(scan.ignored_folders) == 1 else 'are'} not train/, val/ or test/ and "
                        f"{'is' if len(scan.ignored_folders) == 1 else 'are'} ignored.")
    for link in scan.skipped_links[:3]:
        warnings.append(f"{link} is a symlink to {os.path.realpath(link)}, inside the dataset (a loop, or the same "
                        "images under a second name); it is not followed.")
    for folder, why in scan.unreadable_folders[:3]:
        warnings.append(f"folder {folder} cannot be read ({why}); its images are not used: fix its permissions.")
    if scan.loose_images and n_images:
        warnings.append(f"{len(scan.loose_images)} images lie outside any class folder (first: "
                        f"{scan.loose_images[0]}) and are ignored.")

    def samples(part: dict[str, list[Path]]) -> list[Sample]:
        return [Sample(file, index[name]) for name in class_list if name in part for file in part[name]]

    splits = DatasetSplits(
        root=scan.root, layout=scan.layout, classes=class_list, train=samples(parts["train"]),
        val=samples(parts["val"]), test=samples(parts["test"]), warnings=warnings,
        notes=notes,
    )
    return splits, refusals


def quote_list(names: list[str], limit: int = 5) -> str:
    shown = ", ".join(f"'{n}'" for n in names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def refusal_error(refusals: list[str], path: str | Path) -> UsageError:
    """The UsageError raised for a refused dataset: the first refusal, and a pointer when there are more."""
    first = refusals[0]
    if len(refusals) > 1:
        first = first.rstrip(".") + f" ({len(refusals) - 1} more problems: run `cnncli inspect {path}` to list them)."
    return UsageError(first)


# ------------------------------------------------------------------------------------------- public API


def load_dataset(path: str | Path, val_split: float = 0.2, seed: int = 0, val_csv: str | Path | None = None,
                 classes: list[str] | None = None, allow_outside: bool = False) -> DatasetSplits:
    """Find the dataset's images, classes (natural order, or ``classes`` when given) and train/val/test split.

    Refuses with a one-sentence UsageError: missing path, no images, a single class, a class folder with no
    images, a val split that leaves a class empty. Does not decode images. (A packed dataset or an object-store
    prefix: :func:`cnncli.data.stream_source.stream_splits`.)
    """
    splits, refusals = assemble_splits(scan_dataset(path, val_csv, allow_outside), val_split, seed, classes)
    if refusals:
        raise refusal_error(refusals, path)
    return splits


CALIBRATION_IMAGES = 64


def calibration_record(splits: DatasetSplits, n: int = CALIBRATION_IMAGES) -> dict:
    """A calibration set for int8, recorded in the model file by train/finetune: up to ``n`` training images,
    taken class by class in turn so each class is represented; paths relative to the dataset root. A streamed
    dataset has no local files to record: export --precision int8 then asks for --calib."""
    if splits.stream is not None:
        return {"root": str(splits.root), "files": []}
    by_class: dict[int, list[Path]] = {}
    for sample in splits.train:
        by_class.setdefault(sample.label, []).append(sample.path)
    picked: list[Path] = []
    queues = [list(paths) for _, paths in sorted(by_class.items())]
    while len(picked) < n and any(queues):
        for queue in queues:
            if queue and len(picked) < n:
                picked.append(queue.pop(0))
    root = Path(splits.root).resolve()
    files = []
    for path in picked:
        path = Path(path).resolve()
        files.append(str(path.relative_to(root)) if path.is_relative_to(root) else str(path))
    return {"root": str(root), "files": files}


def recorded_calibration_files(record: dict | None) -> list[Path]:
    """The images of a :func:`calibration_record` that still exist (an empty list when none do)."""
    if not record or not record.get("files"):
        return []
    root = Path(record.get("root", "."))
    return [p for p in (root / f for f in record["files"]) if p.is_file()]
