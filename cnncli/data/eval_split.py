"""Which images ``evaluate`` scores: never, by default, the ones the model trained on.

``train``/``finetune`` record in the model card (``training.split``) what the split depended on: the dataset's
absolute path, its layout, ``--seed``, ``--val-split``, ``--val-csv`` and a fingerprint of its file list
(:func:`split_record`). ``evaluate`` (``--split auto``) then scores ``test/`` if the dataset has one, else
``val/`` (or the recorded ``--val-csv``), else the seeded hold-out that ``train`` used, rebuilt by the same code
(:func:`cnncli.data.layout.assemble_splits`). When the dataset's file list is not the recorded one, that
hold-out cannot be trusted and evaluate refuses in one sentence (``--split all`` scores every image anyway). A
model that records no split (a pretrained registry model, a file from an older cnncli) is scored on every image,
and the output says so. Torch-free.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from cnncli.core.errors import UsageError
from cnncli.data.layout import (
    DatasetScan,
    Sample,
    assemble_splits,
    natural_key,
    quote_list,
    refusal_error,
    scan_dataset,
)

EVAL_SPLITS = ("auto", "test", "val", "train", "all")


@dataclass
class EvalSplit:
    samples: list[Sample]
    classes: list[str]  # the model's classes (label indices)
    name: str  # test | val | train | all
    description: str  # one phrase: which images, and why those
    stream: object = None  # a cnncli.data.stream_eval.StreamedSplit: read as a stream (samples is then empty)

    def to_dict(self) -> dict:
        n_images = sum(u.count for u in self.stream.units) if self.stream is not None else len(self.samples)
        return {"name": self.name, "description": self.description, "n_images": n_images}


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
    """What ``train`` records in the card so ``evaluate`` can rebuild its split (see the module docstring)."""
    from cnncli.data.stream_source import is_stream_source

    if is_stream_source(data):
        from cnncli.data.stream_source import open_stream_source

        return open_stream_source(str(data), val_split, seed).record
    scan = scan_dataset(data, val_csv, allow_outside)
    return {"dataset": str(Path(data).expanduser().resolve()), "layout": layout, "val_split": val_split, "seed": seed,
            "val_csv": str(Path(val_csv).expanduser().resolve()) if val_csv else None,
            "fingerprint": scan_fingerprint(scan), "n_images": _count(scan.groups), "n_train": n_train, "n_val": n_val}


def _count(groups: dict[str, dict[str, list[Path]]]) -> int:
    return sum(len(files) for group in groups.values() for files in group.values())


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
    groups = scan.groups
    if split == "auto":
        split = next((s for s in ("test", "val") if s in groups), None) or ("val" if record else "all")
    if split == "all":
        files: dict[str, list[Path]] = {}
        for group in groups.values():
            for name, paths in group.items():
                files.setdefault(name, []).extend(paths)
        if record:
            why = "every image, including any the model trained on (--split all)"
        else:
            why = ("every image: the model records no training split (a pretrained model, or a file made before "
                   "cnncli recorded one), so images it trained on, if any, inflate the score")
        return _finish(scan, files, classes, "all", why)
    if split in groups:
        folder = {"test": "test/", "val": "the val/ folder", "train": "train/"}[split]
        if scan.layout == "csv":
            folder = {"val": f"the validation manifest {Path(val_csv).name}",
                      "train": f"the manifest {scan.root.name}"}[split]
        return _finish(scan, groups[split], classes, split, folder)
    if split == "test":
        raise UsageError(f"{scan.root} has no test/ folder; use --split auto, val or all.")
    if not record:
        raise UsageError(f"{scan.root} has no {split}/ folder and the model records no training split to rebuild; "
                         "use --split all to score every image.")
    return _rebuilt(scan, split, classes, record)


def _rebuilt(scan: DatasetScan, split: str, classes: list[str] | None, record: dict) -> EvalSplit:
    """The hold-out (or train part) that ``train`` made, rebuilt with the recorded seed and val_split."""
    recorded = record.get("dataset", "?")
    same_path = Path(recorded) == scan.root.expanduser().resolve()
    if record.get("fingerprint") != scan_fingerprint(scan) or record.get("layout") != scan.layout:
        n_now, n_then = _count(scan.groups), record.get("n_images", "?")
        where = "" if same_path else f" (recorded: {recorded})"
        raise UsageError(
            f"{scan.root} is not the dataset this model was trained on{where}: its file list differs "
            f"({n_now} images now, {n_then} recorded), so the held-out split cannot be rebuilt; use a dataset with a "
            "test/ or val/ folder, or --split all to score every image, including any the model trained on.")
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
    unknown = [n for n in found if n not in class_list]
    if unknown:
        raise UsageError(f"{quote_list(unknown)} in {scan.root} {'is' if len(unknown) == 1 else 'are'} not "
                         f"among the model's {len(class_list)} classes ({quote_list(class_list, 6)}).")
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
