"""``cnncli inspect DATA`` for a streamed dataset (packed shards, or an object-store prefix of class folders): what
:func:`cnncli.data.check.check_dataset` reports for a folder, from one pass over every sample: counts per split and
class, sizes and modes, unreadable images, broken shards (a sha256 that differs, a corrupt member, a label outside
the classes), duplicates within a split and images in two splits. Torch-free."""

from __future__ import annotations

import math
from collections import Counter

from cnncli.data.check import DatasetReport, _duplicate_problems, _modes, _plural, _top_sizes, facts_of_bytes
from cnncli.data.stream_source import DEFAULT_CACHE_SIZE, ShardCache, open_stream_source, parse_size, unit_samples


def check_stream(location: str, val_split: float = 0.2, seed: int = 0) -> DatasetReport:
    source = open_stream_source(location, val_split, seed)
    cache = ShardCache(parse_size(DEFAULT_CACHE_SIZE))
    counts = {split: dict.fromkeys(source.classes, 0) for split in source.units}
    where: dict[str, dict[str, list[tuple[str, int]]]] = {}
    unreadable, readable = [], []
    n_images = 0
    for split, units in source.units.items():
        for unit in units:
            for sample in unit_samples(unit, len(source.classes), cache):
                n_images += 1
                name = sample.path or sample.key or unit.uri or unit.name
                if sample.error:
                    unreadable.append({"path": name, "error": sample.error})
                    continue
                facts = facts_of_bytes(sample.data)
                if facts.error:
                    unreadable.append({"path": name, "error": facts.error})
                    continue
                readable.append(facts)
                counts[split][source.classes[sample.label]] += 1
                where.setdefault(facts.digest, {}).setdefault(split, []).append((name, sample.label))
    duplicates = [[p for p, _ in items] for splits in where.values() for items in splits.values() if len(items) > 1]
    conflicting = [[p for p, _ in items] for splits in where.values() for items in splits.values()
                   if len({label for _, label in items}) > 1]
    leaks = [{"hash": digest, **{s: [p for p, _ in items] for s, items in splits.items()}}
             for digest, splits in where.items() if len(splits) > 1]
    train_counts = [n for n in counts.get("train", {}).values() if n > 0]
    problems = list(source.warnings)
    if unreadable:
        problems.append(f"{_plural(len(unreadable), 'unreadable image')} (first: {unreadable[0]['path']}: "
                        f"{unreadable[0]['error']}); training skips them.")
    problems += _duplicate_problems(duplicates, leaks, conflicting)
    return DatasetReport(
        layout=source.layout, root=source.location, classes=list(source.classes), counts=counts,
        imbalance_ratio=max(train_counts) / min(train_counts) if train_counts else math.inf,
        sizes=_top_sizes(Counter(f"{f.size[0]}x{f.size[1]}" for f in readable if f.size)), modes=_modes(readable),
        unreadable=unreadable, duplicates=duplicates, leaks=leaks, hidden_ignored=[], empty_classes=[],
        problems=problems, notes=list(source.notes), n_images=n_images)
