"""Multi-label datasets: CSV manifests whose label cell holds several class names, and their stratified split.

A manifest row is ``path,labels`` where ``labels`` lists class names separated by ``|`` (or ``;``, but not both in
one manifest), spaces trimmed; an empty cell is an image with no label. A manifest is multi-label when any row
holds two labels (or ``--task multilabel`` says so). Refused, one sentence each (UsageError, exit 2): a label twice
in a row, a manifest mixing separators (in one cell or across rows), an image listed twice with different labels, a
val label train never saw.

``--val-split`` holds out images by iterative stratification (Sechidis, Tsoumakas and Vlahavas, "On the
stratification of multi-label data", ECML PKDD 2011): the rarest label is placed first, each of its images into the
part that most wants that label, so every class keeps close to its share in both parts. Torch-free; nothing here
decodes an image.
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cnncli.core.errors import UsageError
from cnncli.data.inputs import natural_key
from cnncli.data.layout import LABEL_COLUMN_NAMES, PATH_COLUMN_NAMES

SEPARATORS = ("|", ";")
LABEL_COLUMNS = LABEL_COLUMN_NAMES + ("labels", "tags", "classes")
TASK = "multilabel"


@dataclass(frozen=True)
class MultiLabelSample:
    path: Path
    labels: tuple[int, ...]  # indices into MultiLabelSplits.classes, in class order; () for an image with no label


@dataclass
class ManifestRows:
    """What a manifest lists: (line, file, label names) per image, and the files it names that are missing."""

    manifest: Path
    rows: list[tuple[int, Path, tuple[str, ...]]]
    missing: list[Path] = field(default_factory=list)


@dataclass
class MultiLabelSplits:
    root: Path
    layout: str  # "csv"
    classes: list[str]
    train: list[MultiLabelSample]
    val: list[MultiLabelSample]
    test: list[MultiLabelSample] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    task: str = TASK
    missing: list[Path] = field(default_factory=list)  # named by a manifest, not on disk (skipped)


def split_label_cell(cell: str, where: str) -> tuple[str, ...]:
    """The class names of one label cell; refuses mixed separators and a name given twice."""
    cell = cell.strip()
    if not cell:
        return ()
    used = [s for s in SEPARATORS if s in cell]
    if len(used) > 1:
        raise UsageError(f"{where}: the labels {cell!r} mix '|' and ';'; separate the labels of a manifest with one "
                         "of them.")
    names = [name.strip() for name in cell.split(used[0])] if used else [cell]
    names = [name for name in names if name]
    repeated = sorted({name for name in names if names.count(name) > 1}, key=natural_key)
    if repeated:
        raise UsageError(f"{where}: the label {repeated[0]!r} is listed twice in {cell!r}; name each label of an "
                         "image once.")
    return tuple(names)


def _read_csv(manifest: Path) -> list[tuple[int, list[str]]]:
    try:
        with open(manifest, newline="", encoding="utf-8-sig") as handle:
            rows = list(csv.reader(handle))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise UsageError(f"{manifest}: cannot read the CSV manifest ({exc}).") from None
    return [(number, row) for number, row in enumerate(rows, 1) if any(cell.strip() for cell in row)]


def _columns(rows: list[tuple[int, list[str]]]) -> tuple[int, int, list[tuple[int, list[str]]]]:
    """(path column, label column, data rows): a header naming both columns is used and dropped."""
    if not rows:
        return 0, 1, rows
    header = [cell.strip().lower() for cell in rows[0][1]]
    if any(name in PATH_COLUMN_NAMES for name in header) and any(name in LABEL_COLUMNS for name in header):
        path_col = next(i for i, name in enumerate(header) if name in PATH_COLUMN_NAMES)
        label_col = next(i for i, name in enumerate(header) if name in LABEL_COLUMNS)
        return path_col, label_col, rows[1:]
    return 0, 1, rows


def manifest_is_multilabel(path: str | Path, val_csv: str | Path | None = None) -> bool:
    """Whether a CSV manifest (or its val manifest) has a row holding two labels or more."""
    for manifest in (path, val_csv):
        if manifest is None:
            continue
        manifest = Path(manifest).expanduser()
        if not manifest.is_file() or manifest.suffix.lower() != ".csv":
            continue
        try:
            path_col, label_col, rows = _columns(_read_csv(manifest))
        except UsageError:
            return False  # the single-label reader says what is wrong with it
        for _, row in rows:
            if len(row) > label_col and any(s in row[label_col] for s in SEPARATORS):
                cell = row[label_col]
                if len([n for n in cell.replace(";", "|").split("|") if n.strip()]) > 1:
                    return True
    return False


def read_multilabel_manifest(manifest: str | Path, allow_outside: bool = False) -> ManifestRows:
    """Every image of a multi-label manifest with its label names; refuses what :func:`split_label_cell` refuses
    and an image listed twice with different labels (listed twice with the same labels: kept once)."""
    manifest = Path(manifest).expanduser()
    if not manifest.is_file():
        raise UsageError(f"{manifest}: no such file; pass a CSV manifest 'path,labels'.")
    path_col, label_col, rows = _columns(_read_csv(manifest))
    if not rows:
        raise UsageError(f"{manifest}: the CSV manifest is empty; write one 'path,labels' line per image.")
    base = manifest.parent
    out = ManifestRows(manifest, [])
    seen: dict[Path, tuple[int, tuple[str, ...]]] = {}
    first_separator: tuple[str, int] | None = None  # the separator the manifest uses, and where it first did
    for number, row in rows:
        where = f"{manifest} line {number}"
        if len(row) <= path_col:
            raise UsageError(f"{where}: expected 'path,labels' but found {','.join(row)!r}.")
        rel = row[path_col].strip()
        if not rel:
            raise UsageError(f"{where}: the path is empty.")
        cell = row[label_col] if len(row) > label_col else ""
        names = split_label_cell(cell, where)
        used = next((sep for sep in SEPARATORS if sep in cell), None)  # split_label_cell refused two in a cell
        if used is not None:
            first_separator = first_separator or (used, number)
            if used != first_separator[0]:
                raise UsageError(f"{where}: the labels {cell.strip()!r} are separated by '{used}' but line "
                                 f"{first_separator[1]} separates them with '{first_separator[0]}'; use one "
                                 "separator throughout the manifest.")
        file = Path(rel).expanduser()
        if not allow_outside and (file.is_absolute() or os.path.normpath(rel).split(os.sep)[0] == os.pardir):
            raise UsageError(f"{where}: {rel} is outside the manifest's folder {base}; a manifest names files below "
                             "its own folder, or pass --allow-outside to read it anyway.")
        file = file if file.is_absolute() else base / file
        key = Path(os.path.normpath(file))
        if key in seen:
            first_line, first_names = seen[key]
            if set(first_names) != set(names):
                raise UsageError(f"{where}: {rel} is listed again with other labels ({'|'.join(names) or 'none'}) "
                                 f"than on line {first_line} ({'|'.join(first_names) or 'none'}); list each image "
                                 "once with all its labels.")
            continue
        seen[key] = (number, names)
        if not file.is_file():
            out.missing.append(file)
            continue
        out.rows.append((number, file, names))
    return out


# ------------------------------------------------------------------------------------------- splitting


def iterative_stratification(targets: np.ndarray, val_fraction: float, seed: int = 0) -> np.ndarray:
    """A boolean mask of the rows of ``targets`` (n images x c classes, 0/1) that go to val: Sechidis et al.'s
    iterative stratification into two parts of desired sizes ``val_fraction`` and ``1 - val_fraction``.

    Repeatedly take the label with the fewest images still unplaced; put each of them into the part that wants
    that label most (ties: the part that wants the most images, then a seeded coin). Images with no label are
    shared out last by the parts' remaining wants. The same seed gives the same split.
    """
    y = np.asarray(targets, dtype=bool)
    n, c = y.shape
    rng = np.random.default_rng(seed)
    ratios = np.array([val_fraction, 1.0 - val_fraction])
    want_images = ratios * n
    want_labels = ratios[:, None] * y.sum(axis=0)[None, :]  # (2, c)
    part = np.full(n, -1)
    unplaced = np.ones(n, dtype=bool)
    while True:
        counts = y[unplaced].sum(axis=0)
        if not counts.any():
            break
        label = int(np.flatnonzero(counts == counts[counts > 0].min())[0])
        rows = np.flatnonzero(unplaced & y[:, label])
        for row in rng.permutation(rows):
            wants = want_labels[:, label]
            best = np.flatnonzero(wants == wants.max())
            if len(best) > 1:
                most = want_images[best]
                best = best[most == most.max()]
            chosen = int(best[0] if len(best) == 1 else rng.choice(best))
            part[row] = chosen
            unplaced[row] = False
            want_labels[chosen] -= y[row]
            want_images[chosen] -= 1
    for row in rng.permutation(np.flatnonzero(unplaced)):  # images with no label
        chosen = int(np.argmax(want_images))
        part[row] = chosen
        want_images[chosen] -= 1
    return part == 0


def label_matrix(samples: list[MultiLabelSample], n_classes: int) -> np.ndarray:
    """The 0/1 targets (images x classes, float32) of ``samples``."""
    y = np.zeros((len(samples), n_classes), dtype=np.float32)
    for i, sample in enumerate(samples):
        y[i, list(sample.labels)] = 1.0
    return y


def load_multilabel_dataset(path: str | Path, val_split: float = 0.2, seed: int = 0,
                            val_csv: str | Path | None = None, allow_outside: bool = False,
                            classes: list[str] | None = None) -> MultiLabelSplits:
    """The images and labels of a multi-label manifest, with a val manifest or an iteratively stratified
    ``val_split`` hold-out. ``classes`` (a model's) fixes the class order; otherwise natural order of every name
    the training manifest uses. A label the classes do not hold is refused."""
    manifest = Path(path).expanduser()
    if not manifest.is_file() or manifest.suffix.lower() != ".csv":
        raise UsageError(f"{manifest}: multi-label data is a CSV manifest 'path,labels' (labels separated by '|').")
    train_rows = read_multilabel_manifest(manifest, allow_outside)
    val_rows = read_multilabel_manifest(val_csv, allow_outside) if val_csv is not None else None
    names = classes or sorted({n for _, _, labels in train_rows.rows for n in labels}, key=natural_key)
    if len(names) < 2:
        raise UsageError(f"{manifest}: multi-label training needs at least 2 classes; found {len(names)}.")
    index = {name: i for i, name in enumerate(names)}
    warnings = [f"{len(rows.missing)} file(s) named by {rows.manifest} do not exist (first: {rows.missing[0]})"
                for rows in (train_rows, val_rows) if rows is not None and rows.missing]

    def samples_of(rows: ManifestRows, what: str) -> list[MultiLabelSample]:
        out = []
        for number, file, labels in rows.rows:
            unknown = [n for n in labels if n not in index]
            if unknown:
                raise UsageError(f"{rows.manifest} line {number}: the label {unknown[0]!r} is not one of the "
                                 f"{len(names)} classes {what}; fix the name or add images of it to the training "
                                 "manifest.")
            out.append(MultiLabelSample(file, tuple(sorted(index[n] for n in labels))))
        return out

    train = samples_of(train_rows, "of the model" if classes else "the training manifest uses")
    notes: list[str] = []
    if val_rows is not None:
        val = samples_of(val_rows, "of the model" if classes else "the training manifest uses")
    else:
        is_val = iterative_stratification(label_matrix(train, len(names)), val_split, seed)
        val = [s for s, v in zip(train, is_val) if v]
        train = [s for s, v in zip(train, is_val) if not v]
        notes.append(f"val: {len(val)} images held out by iterative stratification (--val-split {val_split:g}, "
                     f"seed {seed})")
    if not train:
        raise UsageError(f"{manifest}: no training images are left; check the manifest's paths.")
    counts = label_matrix(train, len(names)).sum(axis=0)
    warnings += [f"class {names[i]!r} has no training images" for i in np.flatnonzero(counts == 0)]
    missing = train_rows.missing + (val_rows.missing if val_rows is not None else [])
    return MultiLabelSplits(manifest, "csv", list(names), train, val, warnings=warnings, notes=notes, missing=missing)


def label_report(splits: MultiLabelSplits, top_pairs: int = 10) -> dict:
    """Label cardinality (mean labels per image), images with no label, per-class counts per split, and the most
    frequent label pairs (co-occurrence), for ``cnncli inspect DATA``."""
    every = splits.train + splits.val
    y = label_matrix(every, len(splits.classes))
    per_class = {name: {"train": int(label_matrix(splits.train, len(splits.classes))[:, i].sum()),
                        "val": int(label_matrix(splits.val, len(splits.classes))[:, i].sum())}
                 for i, name in enumerate(splits.classes)}
    co = (y.T @ y).astype(np.int64)
    pairs = [(int(co[i, j]), splits.classes[i], splits.classes[j])
             for i in range(len(splits.classes)) for j in range(i + 1, len(splits.classes)) if co[i, j]]
    pairs.sort(key=lambda p: -p[0])
    return {"task": TASK, "images": len(every), "train": len(splits.train), "val": len(splits.val),
            "classes": len(splits.classes), "label_cardinality": float(y.sum(axis=1).mean()) if len(y) else 0.0,
            "no_label": int((y.sum(axis=1) == 0).sum()), "per_class": per_class,
            "co_occurrence": co.tolist(),
            "top_pairs": [{"labels": [a, b], "images": n} for n, a, b in pairs[:top_pairs]]}
