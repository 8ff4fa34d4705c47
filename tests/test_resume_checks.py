"""Issue 25 items 3 and 10: ``--resume`` continues the run on the dataset it started on, and on the model its
args.json describes, or says in one sentence why it cannot (exit 2), before any epoch is trained."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from train_data import write_digits

from cnncli.core.errors import UsageError
from cnncli.train.config import TrainConfig
from cnncli.train.loop import run_training
from cnncli.train.outputs import read_results_csv


@pytest.fixture()
def digits(tmp_path) -> Path:
    return write_digits(tmp_path / "digits", per_class=8)


def _cfg(data: Path, out: Path, **kw) -> TrainConfig:
    base = dict(data=str(data), arch="lenet5", grayscale=True, augment="none", epochs=1, batch_size=16,
                out=str(out), quiet=True, workers=0, image_size=28)
    base.update(kw)
    return TrainConfig(**base)


def _resume(run: Path, epochs: int) -> TrainConfig:
    return TrainConfig(data="", resume=str(run), epochs=epochs, quiet=True, explicit=frozenset({"epochs"}))


def test_resume_refuses_a_dataset_with_an_image_added_or_removed(digits, tmp_path):
    run = tmp_path / "run"
    run_training(_cfg(digits, run))
    extra = digits / "3" / "extra.png"
    shutil.copy(next((digits / "3").glob("*.png")), extra)  # 80 -> 81 images: a seeded split would change
    with pytest.raises(UsageError) as info:
        run_training(_resume(run, 2))
    message = str(info.value)
    assert "has changed since" in message and "81 images now, 80 recorded" in message, message
    assert "\n" not in message
    assert len(read_results_csv(run / "results.csv")) == 1  # nothing trained, nothing lost

    extra.unlink()
    next((digits / "5").glob("*.png")).unlink()  # removed instead: refused as well
    with pytest.raises(UsageError, match="79 images now, 80 recorded"):
        run_training(_resume(run, 2))

    shutil.rmtree(digits)
    write_digits(digits, per_class=8)  # the same files again: the run goes on
    run_training(_resume(run, 2))
    assert [int(r["epoch"]) for r in read_results_csv(run / "results.csv")] == [1, 2]


def test_resume_after_args_json_names_another_architecture_is_one_sentence(digits, tmp_path):
    run = tmp_path / "run"
    run_training(_cfg(digits, run))
    args = json.loads((run / "args.json").read_text())
    args["arch"] = "simplecnn"
    (run / "args.json").write_text(json.dumps(args))
    with pytest.raises(UsageError, match="was args.json edited") as info:
        run_training(_resume(run, 2))
    assert "state_dict" not in str(info.value)
