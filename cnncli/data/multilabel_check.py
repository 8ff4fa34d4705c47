"""``cnncli inspect DATA`` on a multi-label manifest: the health checks of :mod:`cnncli.data.check` (unreadable
files, duplicates within a split, train/val leaks, one image under two label sets) over the split multi-label
training would use, with images counted per class (an image counts once for each of its labels), and the label
report of :func:`cnncli.data.multilabel.label_report` (label cardinality, images with no label, co-occurrence).

:func:`check_any_dataset` is the entry point: the multi-label checker for ``--task multilabel`` or a manifest with a
row of two labels, :func:`cnncli.data.check.check_dataset` otherwise.
"""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path

from cnncli.core.errors import UsageError
from cnncli.data.check import (
    IMBALANCE_NOTE_RATIO,
    DatasetReport,
    _duplicate_problems,
    _find_duplicates,
    _modes,
    _plural,
    _read_all,
    _top_sizes,
    check_dataset,
)
from cnncli.data.multilabel import TASK, label_matrix, label_report, load_multilabel_dataset, manifest_is_multilabel

TASKS = ("auto", "single", TASK)


def check_any_dataset(path: str | Path, task: str = "auto", val_split: float = 0.2, seed: int = 0,
                      val_csv: str | Path | None = None, decode: bool = True, workers: int | None = None,
                      allow_outside: bool = False) -> DatasetReport:
    """The report of the checker ``task`` calls for (auto: multi-label when the manifest has a row of two labels)."""
    if task not in TASKS:
        raise UsageError(f"unknown --task {task!r}; choose one of: {', '.join(TASKS)}.")
    if task == TASK or (task == "auto" and manifest_is_multilabel(path, val_csv)):
        return check_multilabel_dataset(path, val_split=val_split, seed=seed, val_csv=val_csv, decode=decode,
                                        workers=workers, allow_outside=allow_outside)
    return check_dataset(path, val_split=val_split, seed=seed, val_csv=val_csv, decode=decode, workers=workers,
                         allow_outside=allow_outside)


def check_multilabel_dataset(path: str | Path, val_split: float = 0.2, seed: int = 0,
                             val_csv: str | Path | None = None, decode: bool = True, workers: int | None = None,
                             allow_outside: bool = False) -> DatasetReport:
    """What ``train`` would do with this multi-label manifest, and more. A manifest that training refuses (a label
    twice in a row, mixed separators, an image listed twice with other labels, an unknown val label) raises the
    same one-sentence UsageError."""
    splits = load_multilabel_dataset(path, val_split=val_split, seed=seed, val_csv=val_csv,
                                     allow_outside=allow_outside)
    by_split = {"train": splits.train, "val": splits.val}
    every = splits.train + splits.val
    facts = _read_all([s.path for s in every], decode, workers)
    n = len(splits.classes)
    counts = {split: dict(zip(splits.classes, (int(c) for c in label_matrix(samples, n).sum(axis=0))))
              for split, samples in by_split.items()}
    positive = [c for c in counts["train"].values() if c > 0]
    imbalance = max(positive) / min(positive) if positive else math.inf
    readable = [facts[s.path] for s in every if facts[s.path].error is None]
    unreadable = [{"path": str(s.path), "error": facts[s.path].error} for s in every if facts[s.path].error]
    unreadable += [{"path": str(p), "error": "listed in the CSV manifest but not on disk."} for p in splits.missing]
    duplicates, leaks = _find_duplicates(by_split, facts)
    labels_of = {str(s.path): s.labels for s in every}
    conflicting = [group for group in duplicates if len({labels_of[p] for p in group}) > 1]
    report = DatasetReport(
        layout=splits.layout, root=str(splits.root), classes=list(splits.classes), counts=counts,
        imbalance_ratio=imbalance,
        sizes=_top_sizes(Counter(f"{f.size[0]}x{f.size[1]}" for f in readable if f.size)),
        modes=_modes(readable), unreadable=unreadable, duplicates=duplicates, leaks=leaks, hidden_ignored=[],
        empty_classes=[], problems=list(splits.warnings), notes=list(splits.notes), n_images=len(every),
        task=TASK, labels=_labels(splits))
    if unreadable:
        report.problems.append(f"{_plural(len(unreadable), 'unreadable image')} (first: {unreadable[0]['path']}); "
                               "training skips them: fix or remove them.")
    report.problems += _duplicate_problems(duplicates, leaks, conflicting)
    if math.isfinite(imbalance) and imbalance >= IMBALANCE_NOTE_RATIO:
        report.notes.append(f"the most frequent label is on {imbalance:.1f}x the train images of the rarest; "
                            "consider `--balance weights` (per-class positive weights) when training.")
    return report


def _labels(splits) -> dict:
    """label_report without what the report already says (classes, counts per split)."""
    full = label_report(splits)
    return {key: full[key] for key in ("label_cardinality", "no_label", "co_occurrence", "top_pairs")}
