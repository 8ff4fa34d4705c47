"""Rendering a :class:`~cnncli.data.check.DatasetReport` for ``cnncli inspect DATA``: rich tables for people,
JSON (the report's keys) for programs."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import IO

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from cnncli.data.check import DatasetReport

DATASET_FORMATS = ("table", "json")
LIST_LIMIT = 20  # rows shown per list in the table; JSON always has all of them


def render_dataset_report(report: DatasetReport, fmt: str, stream: IO[str]) -> None:
    """Write ``report`` to ``stream`` as "table" (rich) or "json" (DatasetReport.to_dict())."""
    if fmt == "json":
        json.dump(report.to_dict(), stream, indent=2, ensure_ascii=False)
        stream.write("\n")
        stream.flush()
        return
    console = Console(file=stream, highlight=False, soft_wrap=False)
    _print_summary(console, report)
    _print_lists(console, report)
    for note in report.notes:
        console.print(f"note: {note}", markup=False, overflow="fold")
    if report.problems:
        console.print(f"\n[bold red]{len(report.problems)} problem{'s' if len(report.problems) > 1 else ''} found:[/]")
        for problem in report.problems:
            console.print(f"  - {problem}", markup=False, overflow="fold")
    else:
        console.print("\n[green]no problems found.[/]")
    stream.flush()


def _print_summary(console: Console, report: DatasetReport) -> None:
    console.print(f"dataset {report.root}", markup=False, overflow="fold")
    console.print(f"layout: {report.layout}; {len(report.classes)} classes; {report.n_images} images", markup=False)
    splits = list(report.counts)
    table = Table(title="classes (index order)", title_justify="left")
    table.add_column("#", justify="right")
    table.add_column("class", overflow="fold")
    for split in splits:
        table.add_column(split, justify="right")
    for index, name in enumerate(report.classes):
        table.add_row(str(index), escape(name), *[_count_cell(report.counts[split].get(name, 0)) for split in splits])
    table.add_section()
    table.add_row("", "total", *[str(sum(report.counts[split].values())) for split in splits])
    console.print(table)
    ratio = report.imbalance_ratio
    ratio_text = f"{ratio:.2f}" if math.isfinite(ratio) else "n/a (no train images)"
    console.print(f"imbalance ratio (train images, largest / smallest non-empty class): {ratio_text}", markup=False)
    console.print("image sizes: " + (_counts_text(report.sizes) or "none readable"), markup=False)
    console.print("modes: " + (_counts_text(report.modes) or "none readable"), markup=False)


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
                 ["group " + str(n) + ":\n" + "\n".join(f"    {rel(p)}" for p in group)
                  for n, group in enumerate(report.duplicates, 1)])
    _print_lines(console, "same image in more than one split",
                 [f"sha256 {leak['hash'][:16]}:\n" + "\n".join(f"    {split}: {rel(p)}" for split, paths in leak.items()
                                                        if split != "hash" for p in paths)
                  for leak in report.leaks])
    _print_lines(console, "hidden files and folders (ignored)", [rel(p) for p in report.hidden_ignored])


def _print_lines(console: Console, title: str, lines: list[str]) -> None:
    if not lines:
        return
    console.print(f"{title} ({len(lines)}):", markup=False)
    for line in lines[:LIST_LIMIT]:
        console.print(f"  {line}", markup=False, overflow="fold")
    _more(console, len(lines))


def _more(console: Console, total: int) -> None:
    if total > LIST_LIMIT:
        console.print(f"  ... and {total - LIST_LIMIT} more (--format json lists all).", markup=False)


def _count_cell(count: int) -> str:
    return "[red]0[/]" if count == 0 else str(count)


def _counts_text(counts: dict[str, int]) -> str:
    return ", ".join(f"{key} ({value})" for key, value in counts.items())
