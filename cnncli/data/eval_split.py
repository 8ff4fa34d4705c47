"""Which images ``evaluate`` scores: never, by default, the ones the model trained on.

``train``/``finetune`` record in the model card (``training.split``) what the split depended on: the dataset's
absolute path, its layout, ``--seed``, ``--val-split``, ``--val-csv``, a fingerprint of its file list, and the
content hashes of the training images (:func:`split_record`, :mod:`cnncli.data.copies`).

On the training dataset itself, ``evaluate`` (``--split auto``) scores ``test/`` if the dataset has one, else
``val/`` (or the recorded ``--val-csv``), else the seeded hold-out that ``train`` used, rebuilt by the same code
(:func:`cnncli.data.layout.assemble_splits`). If its file list has changed since, that hold-out cannot be
rebuilt: every image whose content is not a training image's is scored instead (refused in one sentence for an
older model file that records no hashes; ``--split all`` scores every image anyway).

Any other folder (one inside the training dataset, such as its ``val/``, or a separate labelled test set) is
new to the model: its ``test/``, else ``val/``, else every image is scored, less the images identical to a
training image, which are named, left out and counted (with ``--split all`` scored and counted). A model file
from before the hashes were recorded is checked against its training dataset when that is still there as
recorded, else the output says the copies could not be checked. A model that records no split (a pretrained
registry model) is scored on every image, and the output says so. A dataset whose classes are not the model's
is refused for that first, whatever ``--split`` says. Torch-free.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

from cnncli.core.errors import UsageError
from cnncli.data.copies import content_digests, train_hashes_record
from cnncli.data.layout import (
    DatasetScan,
    Sample,
    assemble_splits,
    natural_key,
    quote_list,
    refusal_error,
    scan_dataset,
)
from cnncli.models.card import decode_train_hashes

EVAL_SPLITS = ("auto", "test", "val", "train", "all")


@dataclass
class EvalSplit:
    samples: list[Sample]
    classes: list[str]  # the model's classes (label indices)
    name: str  # test | val | train | all
    description: str  # one phrase: which images, and why those
    stream: object = None  # a cnncli.data.stream_eval.StreamedSplit: read as a stream (samples is then empty)
    left_out: list[str] = field(default_factory=list)  # identical to a training image: not scored
    training_copies: list[str] | None = None  # --split all on another dataset: scored, though identical to one

    def to_dict(self) -> dict:
        n_images = sum(u.count for u in self.stream.units) if self.stream is not None else len(self.samples)
        data = {"name": self.name, "description": self.description, "n_images": n_images, "left_out": self.left_out}
        if self.training_copies is not None:
            data["training_copies"] = self.training_copies
        return data


def scan_fingerprint(scan: DatasetScan) -> str:
    """sha256 over every (group, class, path relative to the dataset, size): it changes when an image is
    added, removed, renamed, moved between classes or rewritten with another size, which is what the seeded
    split depends on (and what would make a recorded score incomparable)."""
    base = scan.root.parent if scan.layout == "csv" else scan.root
    digest = hashlib.sha256()
    for group in sorted(scan.groups):
        for name in sorted(scan.groups[group], key=natural_key):
            for path in scan.groups[group][name]:
                try:
                    rel = path.resolve().relative_to(base.resolve()).as_posix()
                except ValueError:
                    rel = path.resolve().as_posix()
                size = path.stat().st_size if path.exists() else -1
                digest.update(f"{group}\t{name}\t{rel}\t{size}\n".encode("utf-8", "surrogateescape"))
    return digest.hexdigest()


def split_record(data: str | Path, layout: str, val_split: float, seed: int, val_csv: str | Path | None,
                 n_train: int, n_val: int, allow_outside: bool = False) -> dict:
    """What ``train`` records in the card so ``evaluate`` can rebuild its split and know its training images (see
    the module docstring): the split's inputs, the file list's fingerprint and the training images' hashes."""
    from cnncli.data.stream_source import is_stream_source

    if is_stream_source(data):
        from cnncli.data.stream_source import open_stream_source

        return open_stream_source(str(data), val_split, seed).record
    scan = scan_dataset(data, val_csv, allow_outside)
    splits, refusals = assemble_splits(scan, val_split, seed)
    return {"dataset": str(Path(data).expanduser().resolve()), "layout": layout, "val_split": val_split, "seed": seed,
            "val_csv": str(Path(val_csv).expanduser().resolve()) if val_csv else None,
            "fingerprint": scan_fingerprint(scan), "n_images": _count(scan.groups), "n_train": n_train, "n_val": n_val,
            "train_hashes": None if refusals else train_hashes_record([s.path for s in splits.train])}


def dataset_fingerprint(data: str | Path, val_csv: str | Path | None = None,
                        allow_outside: bool = False) -> tuple[str, int | None]:
    """The fingerprint :func:`split_record` records for ``data`` as it is now, and its number of images (None for
    a stream, whose fingerprint covers its manifest): cheap, no image is read."""
    from cnncli.data.stream_source import is_stream_source

    if is_stream_source(data):
        from cnncli.data.stream_source import open_stream_source

        record = open_stream_source(str(data)).record
        return record.get("fingerprint"), record.get("n_images")
    scan = scan_dataset(data, val_csv, allow_outside)
    return scan_fingerprint(scan), _count(scan.groups)


def _count(groups: dict[str, dict[str, list[Path]]]) -> int:
    return sum(len(files) for group in groups.values() for files in group.values())


def _merged(groups: dict[str, dict[str, list[Path]]]) -> dict[str, list[Path]]:
    files: dict[str, list[Path]] = {}
    for group in groups.values():
        for name, paths in group.items():
            files.setdefault(name, []).extend(paths)
    return files


def dataset_change(scan: DatasetScan, record: dict) -> str | None:
    """How the dataset differs from the recorded one (a phrase after its path), or None: same layout, same files."""
    if record.get("fingerprint") == scan_fingerprint(scan) and record.get("layout") == scan.layout:
        return None
    return (f"has changed since the model was trained on it ({_count(scan.groups)} images now, "
            f"{record.get('n_images', '?')} recorded)")


@dataclass
class TrainingDigests:
    """The training images' content hashes, or why they are not known (``digests`` None, ``unknown`` a phrase)."""

    digests: set[bytes] | None
    unknown: str = ""


def training_digests(record: dict) -> TrainingDigests:
    """The hashes of the images the model trained on: recorded in the card (:mod:`cnncli.data.copies`), else read
    from the training dataset when it is still there with the recorded file list (a model file from before the
    record)."""
    if record.get("train_hashes") is not None:
        try:
            return TrainingDigests(decode_train_hashes(record["train_hashes"]))
        except ValueError as exc:  # checked when the card was read; a record handed in directly is checked here
            raise UsageError(f"the model card's 'training.split.train_hashes' {exc}; re-save the model.") from None
    dataset = record.get("dataset") or "?"
    why = "the model file records no hashes of its training images, and its training dataset"
    if not Path(dataset).exists():
        return TrainingDigests(None, f"{why} {dataset} is not there")
    try:
        scan = scan_dataset(dataset, record.get("val_csv"), allow_outside=True)
        if dataset_change(scan, record):
            return TrainingDigests(None, f"{why} {dataset} has changed since training")
        splits, refusals = assemble_splits(scan, float(record["val_split"]), int(record["seed"]))
    except (UsageError, OSError, KeyError, ValueError, TypeError) as exc:
        return TrainingDigests(None, f"{why} {dataset} cannot be read ({exc})")
    if refusals:
        return TrainingDigests(None, f"{why} {dataset} no longer splits as it did")
    hashes = content_digests([s.path for s in splits.train])
    return TrainingDigests({d for d in hashes.values() if d is not None})


def _is_training_dataset(scan: DatasetScan, record: dict) -> bool:
    """The recorded dataset: at its recorded path (changed since or not), or elsewhere with the same file list (a
    moved or copied dataset)."""
    return Path(record.get("dataset") or "") == scan.root.expanduser().resolve() or dataset_change(scan, record) is None


def _inside(root: Path, dataset: str) -> bool:
    try:
        root.expanduser().resolve().relative_to(Path(dataset))
        return True
    except ValueError:
        return False


def choose_eval_split(data: str | Path, split: str = "auto", classes: list[str] | None = None,
                      record: dict | None = None, allow_outside: bool = False) -> EvalSplit:
    """The images to score (see the module docstring). ``classes`` (the model's) fixes the label indices: a class
    in the data that the model does not know is refused. ``record`` is the card's ``training.split``."""
    if split not in EVAL_SPLITS:
        raise UsageError(f"unknown --split {split!r}; choose one of: {', '.join(EVAL_SPLITS)}.")
    from cnncli.data.stream_source import is_stream_source

    if is_stream_source(data):  # packed shards, or an object-store prefix of class folders
        from cnncli.data.stream_eval import choose_stream_split

        streamed, class_list, name, why = choose_stream_split(str(data), split, classes, record)
        return EvalSplit([], class_list, name, why, stream=streamed)
    val_csv = None
    if record and record.get("val_csv") and Path(data).suffix.lower() == ".csv" and Path(record["val_csv"]).is_file():
        if Path(data).expanduser().resolve() == Path(record.get("dataset", "")):
            val_csv = record["val_csv"]
    scan = scan_dataset(data, val_csv, allow_outside)
    if record and not _is_training_dataset(scan, record):
        return _another_dataset(scan, split, classes, record)
    groups = scan.groups
    if split == "auto":
        split = next((s for s in ("test", "val") if s in groups), None) or ("val" if record else "all")
    if split == "all":
        if record:
            why = "every image, including any the model trained on (--split all)"
        else:
            why = ("every image: the model records no training split (a pretrained model, or a file made before "
                   "cnncli recorded one), so images it trained on, if any, inflate the score")
        return _finish(scan, _merged(groups), classes, "all", why)
    if split in groups:
        return _finish(scan, groups[split], classes, split, _folder_phrase(scan, split))
    if split == "test":
        raise _refusal(scan, classes, f"{scan.root} has no test/ folder; use --split auto, val or all.")
    if not record:
        raise _refusal(scan, classes, f"{scan.root} has no {split}/ folder and the model records no training split "
                                      "to rebuild; use --split all to score every image.")
    return _rebuilt(scan, split, classes, record)


def _folder_phrase(scan: DatasetScan, split: str) -> str:
    if scan.layout == "csv":
        return {"val": "the validation manifest", "train": f"the manifest {scan.root.name}"}[split]
    return {"test": "test/", "val": "the val/ folder", "train": "train/"}[split]


def _unknown_classes(scan: DatasetScan, files: dict[str, list[Path]], classes: list[str] | None) -> UsageError | None:
    """The refusal for classes in ``files`` that the model does not know, or None."""
    if classes is None:
        return None
    unknown = sorted((n for n, paths in files.items() if paths and n not in classes), key=natural_key)
    if not unknown:
        return None
    return UsageError(f"{quote_list(unknown)} in {scan.root} {'is' if len(unknown) == 1 else 'are'} not among the "
                      f"model's {len(classes)} classes ({quote_list(list(classes), 6)}).")


def _refusal(scan: DatasetScan, classes: list[str] | None, message: str) -> UsageError:
    """``message``, unless the dataset's classes are not the model's: that is said first, since no --split helps."""
    return _unknown_classes(scan, _merged(scan.groups), classes) or UsageError(message)


def _another_dataset(scan: DatasetScan, split: str, classes: list[str] | None, record: dict) -> EvalSplit:
    """A folder that is not the training dataset (one inside it, such as its val/, or any other): every image of
    the chosen part is new to the model, except copies of training images, which are left out (kept and counted
    with an explicit --split all)."""
    recorded = record.get("dataset") or "?"
    relation = (f"a folder inside the dataset the model was trained on ({recorded})" if _inside(scan.root, recorded)
                else f"not the dataset the model was trained on ({recorded})")
    explicit_all = split == "all"
    if split == "auto":
        split = next((s for s in ("test", "val") if s in scan.groups), "all")
    if split == "all":
        files, what = _merged(scan.groups), f"every image in {scan.root}"
    elif split in scan.groups:
        files, what = scan.groups[split], f"{_folder_phrase(scan, split)} of {scan.root}"
    else:
        part = "held-out split" if split == "val" else f"{split} split"
        raise _refusal(scan, classes, f"{scan.root} has no {split}/ folder and is {relation}, so no recorded {part} "
                                      "applies to it; --split auto scores every image not identical to a training "
                                      "image.")
    return _unseen(scan, files, classes, record, split, f"{what}, {relation}", keep_copies=explicit_all)


def _unseen(scan: DatasetScan, files: dict[str, list[Path]], classes: list[str] | None, record: dict, name: str,
            description: str, keep_copies: bool = False) -> EvalSplit:
    """``files`` less the images identical to a training image (named in ``left_out``); with ``keep_copies`` they
    are scored and counted."""
    refused = _unknown_classes(scan, files, classes)
    if refused:
        raise refused  # before any file is hashed
    known = training_digests(record)
    if known.digests is None:
        return _finish(scan, files, classes, name, f"{description}; images identical to training images could not "
                                                   f"be checked: {known.unknown}")
    paths = [p for group in files.values() for p in group]
    hashes = content_digests(paths)
    copies = [p for p in paths if hashes[p] is not None and hashes[p] in known.digests]
    count = (f"{len(copies)} image{'s' if len(copies) != 1 else ''} identical to "
             f"{'training images' if len(copies) != 1 else 'a training image'}")
    if keep_copies:
        chosen = _finish(scan, files, classes, name, f"{description}; {count}, scored too (--split all)")
        chosen.training_copies = [str(p) for p in copies]
        return chosen
    if copies and len(copies) == len(paths):
        raise UsageError(f"all {len(paths)} images in {scan.root} are identical to images the model trained on, so "
                         "none is left to score; --split all scores them anyway.")
    dropped = set(copies)
    kept = {label: [p for p in group if p not in dropped] for label, group in files.items()}
    chosen = _finish(scan, kept, classes, name, f"{description}; {count} left out" if copies
                     else f"{description}; none is identical to a training image")
    chosen.left_out = [str(p) for p in copies]
    return chosen


def _rebuilt(scan: DatasetScan, split: str, classes: list[str] | None, record: dict) -> EvalSplit:
    """The hold-out (or train part) that ``train`` made, rebuilt with the recorded seed and val_split. When the
    dataset has changed since, the hold-out is every image not identical to a training image, where the record
    knows the training images' hashes."""
    change = dataset_change(scan, record)
    if change and split == "val" and record.get("train_hashes") is not None:
        return _unseen(scan, _merged(scan.groups), classes, record, "val",
                       f"every image in {scan.root}, which {change}, so the seeded hold-out cannot be rebuilt")
    if change and split == "train" and record.get("train_hashes") is not None:
        raise _refusal(scan, classes, f"{scan.root} {change}, so the part the model trained on cannot be rebuilt; "
                                      "--split auto scores every image not identical to a training image, --split "
                                      "all every image.")
    if change:
        part = "the seeded hold-out" if split == "val" else "the part the model trained on"
        raise _refusal(scan, classes, f"{scan.root} {change}, so {part} cannot be rebuilt, and the model file "
                                      "records no hashes of its training images to tell them apart; --split all "
                                      "scores every image, including any the model trained on.")
    val_split, seed = float(record["val_split"]), int(record["seed"])
    splits, refusals = assemble_splits(scan, val_split, seed)
    if refusals:
        raise refusal_error(refusals, scan.root)
    part = splits.val if split == "val" else splits.train
    files: dict[str, list[Path]] = {}
    for sample in part:
        files.setdefault(splits.classes[sample.label], []).append(sample.path)
    if split == "val":
        why = f"the {val_split:.0%} hold-out that train used (seed {seed}, --val-split {val_split:g}), not trained on"
    else:
        why = f"the {1 - val_split:.0%} of images the model trained on (seed {seed}, --val-split {val_split:g})"
    return _finish(scan, files, classes, split, why)


def _finish(scan: DatasetScan, files: dict[str, list[Path]], classes: list[str] | None, name: str,
            description: str) -> EvalSplit:
    empty = [p for p in scan.empty_class_folders if p.name in files and not files[p.name]]
    if empty:
        raise UsageError(f"class folder {empty[0]} has no images; add images to it or remove it.")
    found = sorted((n for n, paths in files.items() if paths), key=natural_key)
    class_list = found if classes is None else list(classes)
    refused = _unknown_classes(scan, files, classes)
    if refused:
        raise refused
    index = {n: i for i, n in enumerate(class_list)}
    samples = [Sample(f, index[n]) for n in found for f in files[n]]
    if not samples:
        raise UsageError(f"no images found in {scan.root} ({name}); expected class sub-folders of images.")
    return EvalSplit(samples, class_list, name, description)


def load_eval_split(path: str | Path, split: str = "auto", classes: list[str] | None = None
                    ) -> tuple[list[Sample], list[str]]:
    """Images to evaluate a model that records no training split on: ``split`` "auto" takes test/ if present,
    else val/, else every image; "train", "val", "test" or "all" pick one explicitly. Returns (samples, classes);
    :func:`cnncli.data.eval_split.choose_eval_split` is the full rule (it also rebuilds a recorded hold-out)."""
    chosen = choose_eval_split(path, split, classes)
    return chosen.samples, chosen.classes
