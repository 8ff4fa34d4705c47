"""Datasets for training, evaluation and ``inspect``: layout detection and splits (:mod:`.layout`) and the
health checker (:mod:`.check`). Torch-free: PIL, numpy and hashlib only."""

from cnncli.data.check import DatasetReport, check_dataset
from cnncli.data.layout import (
    DatasetScan,
    DatasetSplits,
    Sample,
    assemble_splits,
    load_dataset,
    load_eval_split,
    looks_like_dataset,
    natural_key,
    scan_dataset,
    stratified_split,
)

__all__ = [
    "DatasetReport",
    "check_dataset",
    "DatasetScan",
    "DatasetSplits",
    "Sample",
    "assemble_splits",
    "load_dataset",
    "load_eval_split",
    "looks_like_dataset",
    "natural_key",
    "scan_dataset",
    "stratified_split",
]
