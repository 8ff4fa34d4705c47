"""Rendering a :class:`~cnncli.data.check.DatasetReport` for ``cnncli inspect DATA``: rich tables for people,
JSON (the report's keys) for programs."""

from __future__ import annotations

import json
import math
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
    console = Console(file=stream, highlight=False, soft_wrap=False, width=max(100, Console(file=stream).width))
    _print_summary(console, report)
    _print_lists(console, report)
    if report.problems:
        console.print(f"\n[bold red]{len(report.problems)} problem{'s' if len(report.problems) > 1 else ''} found:[/]")
        for problem in report.problems:
            console.print(f"  - {problem}", markup=False, soft_wrap=True)
    else:
        console.print("\n[green]no problems found.[/]")
    stream.flush()


def _print_summary(console: Console, report: DatasetReport) -> None:
    console.print(f"dataset {report.root}", markup=False, soft_wrap=True)
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
    if report.unreadable:
        table = Table(title=f"unreadable images ({len(report.unreadable)})", title_justify="left")
        table.add_column("path", overflow="fold")
        table.add_column("error", overflow="fold")
        for item in report.unreadable[:LIST_LIMIT]:
            table.add_row(escape(item["path"]), escape(item["error"]))
        console.print(table)
        _more(console, len(report.unreadable))
    _print_paths(console, "empty class folders", report.empty_classes)
    if report.duplicates:
        table = Table(title=f"identical files within a split ({len(report.duplicates)})", title_justify="left")
        table.add_column("group", justify="right")
        table.add_column("paths", overflow="fold")
        for number, group in enumerate(report.duplicates[:LIST_LIMIT], 1):
            table.add_row(str(number), escape("\n".join(group)))
        console.print(table)
        _more(console, len(report.duplicates))
    if report.leaks:
        table = Table(title=f"same image in more than one split ({len(report.leaks)})", title_justify="left")
        table.add_column("sha256", no_wrap=True)
        split_names = [s for s in ("train", "val", "test") if any(s in leak for leak in report.leaks)]
        for split in split_names:
            table.add_column(split, overflow="fold")
        for leak in report.leaks[:LIST_LIMIT]:
            table.add_row(leak["hash"][:12], *[escape("\n".join(leak.get(split, []))) for split in split_names])
        console.print(table)
        _more(console, len(report.leaks))
    _print_paths(console, "hidden files and folders (ignored)", report.hidden_ignored)


def _print_paths(console: Console, title: str, paths: list[str]) -> None:
    if not paths:
        return
    console.print(f"{title} ({len(paths)}):", markup=False)
    for path in paths[:LIST_LIMIT]:
        console.print(f"  {path}", markup=False, soft_wrap=True)
    _more(console, len(paths))


def _more(console: Console, total: int) -> None:
    if total > LIST_LIMIT:
        console.print(f"  ... and {total - LIST_LIMIT} more (--format json lists all).", markup=False)


def _count_cell(count: int) -> str:
    return "[red]0[/]" if count == 0 else str(count)


def _counts_text(counts: dict[str, int]) -> str:
    return ", ".join(f"{key} ({value})" for key, value in counts.items())
