"""Rendering a :class:`~cnncli.data.check.DatasetReport` for ``cnncli inspect DATA``: rich tables for people,
JSON (the report's keys) for programs. Class names and paths are literal text (:mod:`cnncli.core.console`):
never markup, control characters and non-UTF-8 bytes of file names as visible escapes; JSON keeps them exact."""

from __future__ import annotations

import math
from pathlib import Path
from typing import IO

from rich.console import Console
from rich.table import Table
from rich.text import Text

from cnncli.core.console import styled, terminal_console, to_text
from cnncli.data.check import DatasetReport

DATASET_FORMATS = ("table", "json")
LIST_LIMIT = 20  # rows shown per list in the table; JSON always has all of them


def render_dataset_report(report: DatasetReport, fmt: str, stream: IO[str]) -> None:
    """Write ``report`` to ``stream`` as "table" (rich) or "json" (DatasetReport.to_dict())."""
    if fmt == "json":
        stream.write(to_text(report.to_dict()) + "\n")
        stream.flush()
        return
    console = terminal_console(stream)
    _print_summary(console, report)
    _print_lists(console, report)
    for note in report.notes:
        console.print(f"note: {note}", overflow="fold")
    console.print()
    if report.problems:
        console.print(styled(f"{len(report.problems)} problem{'s' if len(report.problems) > 1 else ''} found:",
                             "bold red"))
        for problem in report.problems:
            console.print(f"  - {problem}", overflow="fold")
    else:
        console.print(styled("no problems found.", "green"))
    stream.flush()


def _print_summary(console: Console, report: DatasetReport) -> None:
    console.print(f"dataset {report.root}", overflow="fold")
    multilabel = report.task == "multilabel"
    console.print(f"layout: {report.layout}{' (multi-label)' if multilabel else ''}; {len(report.classes)} classes; "
                  f"{report.n_images} images")
    splits = list(report.counts)
    table = Table(title="classes (index order)", title_justify="left")
    table.add_column("#", justify="right")
    table.add_column("class", overflow="fold")
    for split in splits:
        table.add_column(split, justify="right")
    for index, name in enumerate(report.classes):
        table.add_row(str(index), name, *[_count_cell(report.counts[split].get(name, 0)) for split in splits])
    if not multilabel:  # an image with several labels is counted once per label: no total
        table.add_section()
        table.add_row("", "total", *[str(sum(report.counts[split].values())) for split in splits])
    console.print(table)
    if multilabel:
        console.print("(images showing each class: an image counts once for each of its labels)")
    ratio = report.imbalance_ratio
    ratio_text = f"{ratio:.2f}" if math.isfinite(ratio) else "n/a (no train images)"
    what = "most / least frequent label" if multilabel else "largest / smallest non-empty class"
    console.print(f"imbalance ratio (train images, {what}): {ratio_text}")
    if multilabel:
        _print_label_report(console, report.labels)
    console.print("image sizes: " + (_counts_text(report.sizes) or "none readable"))
    console.print("modes: " + (_counts_text(report.modes) or "none readable"))


def _print_label_report(console: Console, labels: dict) -> None:
    """Label cardinality, images with no label, and the most frequent label pairs (JSON: the whole matrix)."""
    no_label = labels["no_label"]
    console.print(f"labels per image: {labels['label_cardinality']:.2f} on average; {no_label} "
                  f"image{'' if no_label == 1 else 's'} with no label")
    if not labels["top_pairs"]:
        console.print("co-occurrence: no two labels share an image")
        return
    console.print("most frequent label pairs (--format json has the whole co-occurrence matrix):")
    table = Table()
    table.add_column("labels", overflow="fold")
    table.add_column("images", justify="right")
    for pair in labels["top_pairs"]:
        table.add_row(" + ".join(pair["labels"]), str(pair["images"]))
    console.print(table)


def _print_lists(console: Console, report: DatasetReport) -> None:
    """Paths are printed relative to the dataset folder, one per line (never inside table cells), so they can be
    copied; a path longer than the terminal is folded onto the next line."""
    from cnncli.predict.writers import shown_path

    root = str(report.root)
    if Path(root).is_file():  # a CSV manifest: paths relative to its folder
        root = str(Path(root).parent)

    def rel(p) -> str:
        return shown_path(str(p), root)

    _print_lines(console, "unreadable images",
                 [f"{rel(item['path'])}: {item['error'].replace(str(item['path']), rel(item['path']))}"
                  for item in report.unreadable])
    _print_lines(console, "empty class folders", [rel(p) for p in report.empty_classes])
    _print_lines(console, "groups of identical files within a split",
                 [[f"group {n}:", *(f"    {rel(p)}" for p in group)] for n, group in enumerate(report.duplicates, 1)])
    _print_lines(console, "same image in more than one split",
                 [[f"sha256 {leak['hash'][:16]}:", *(f"    {split}: {rel(p)}" for split, paths in leak.items()
                                                     if split != "hash" for p in paths)]
                  for leak in report.leaks])
    _print_lines(console, "hidden files and folders (ignored)", [rel(p) for p in report.hidden_ignored])


def _print_lines(console: Console, title: str, entries: list[str | list[str]]) -> None:
    """``title (n):`` and the first LIST_LIMIT entries, each a line or a list of lines (a heading and its paths);
    a newline inside a path is shown as ``\\n``, never as a line break."""
    if not entries:
        return
    console.print(f"{title} ({len(entries)}):")
    for entry in entries[:LIST_LIMIT]:
        for line in [entry] if isinstance(entry, str) else entry:
            console.print(f"  {line}", overflow="fold")
    _more(console, len(entries))


def _more(console: Console, total: int) -> None:
    if total > LIST_LIMIT:
        console.print(f"  ... and {total - LIST_LIMIT} more (--format json lists all).")


def _count_cell(count: int) -> str | Text:
    return styled("0", "red") if count == 0 else str(count)


def _counts_text(counts: dict[str, int]) -> str:
    return ", ".join(f"{key} ({value})" for key, value in counts.items())
