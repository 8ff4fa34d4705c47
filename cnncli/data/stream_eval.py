"""Which images ``evaluate`` scores on a streamed dataset (packed shards, or an object-store prefix of class folders):
the rule of :mod:`cnncli.data.eval_split`. A packed dataset's test split, else its val split (held out when it was
packed); a store prefix's test/ or val/, else the seeded hold-out ``train`` recorded, rebuilt from a listing that
must match the recorded one. A model trained on another pack or listing is refused for the held-out split (its
images may be among them); ``--split all`` scores everything. Torch-free."""

from __future__ import annotations

from dataclasses import dataclass

from cnncli.core.errors import UsageError
from cnncli.data.layout import quote_list
from cnncli.data.shards import PACKED_LAYOUT
from cnncli.data.stream_source import StreamSource, Unit, open_stream_source


@dataclass
class StreamedSplit:
    """What to score: units of the source and the map from its label indices to the model's."""

    source: StreamSource
    units: list[Unit]
    remap: list[int]  # source label index -> model class index (-1: a class the model does not know)


def choose_stream_split(data: str, split: str, classes: list[str] | None, record: dict | None):
    """(StreamedSplit, class list, split name, description) for ``evaluate``."""
    recorded = record or {}
    val_split = float(recorded.get("val_split") or 0.2)
    seed = int(recorded.get("seed") or 0)
    source = open_stream_source(data, val_split, seed)
    same = bool(recorded) and recorded.get("fingerprint") == source.record["fingerprint"]
    packed_from = source.record.get("source") or {}
    split_the_same = all(recorded.get(k) == packed_from.get(k) for k in ("seed", "val_split"))
    if recorded and recorded.get("fingerprint") == packed_from.get("fingerprint") and split_the_same:
        same = True  # trained on the very dataset this was packed from, split the same way: its val is the hold-out
    packed = source.layout == PACKED_LAYOUT
    folders = source.layout == "split-folders"  # a store prefix with train/ val/ test/: never part of train
    if split == "auto" and (packed or folders):
        split = next((s for s in ("test", "val") if s in source.units), "all")
    elif split == "auto":  # a store prefix of class folders: the recorded hold-out, else everything
        split = "val" if record else "all"
    if split == "all":
        units = [u for part in source.units.values() for u in part]
        why = ("every image, including any the model trained on (--split all)" if record else
               "every image: the model records no training split, so images it trained on, if any, inflate the score")
    else:
        if split not in source.units:
            raise UsageError(f"{data} has no {split} split; use --split auto, "
                             f"{', '.join(sorted(source.units))} or all.")
        if split == "val" and not folders and not same and (record or not packed):
            raise UsageError(f"{data} is not the dataset this model was trained on (its shards or file list differ "
                             "from the recorded ones), so its val split may hold images the model trained on; use "
                             "--split test where there is one, or --split all to score every image.")
        units = source.units[split]
        why = {"test": "the test split", "val": "the val split (never trained on)",
               "train": "the train split the model trained on"}[split]
        if packed:
            why += f" of the packed dataset (split when packed, seed {source.record.get('seed')})"
    class_list = list(source.classes) if classes is None else list(classes)
    unknown = [name for name in source.classes if name not in class_list
               and any(source.counts.get(s, {}).get(name) for s in source.units)]
    if unknown:
        raise UsageError(f"{quote_list(unknown)} in {data} {'is' if len(unknown) == 1 else 'are'} not among the "
                         f"model's {len(class_list)} classes ({quote_list(class_list, 6)}).")
    remap = [class_list.index(name) if name in class_list else -1 for name in source.classes]
    if not sum(u.count for u in units):
        raise UsageError(f"no images in the {split} split of {data}.")
    return StreamedSplit(source, units, remap), class_list, split, why

