"""Reliability, run folders (issue 14 "lose finished work" and issue 13 "an existing --out is never silently
overwritten"): one run per folder, clean replacement, no non-finite checkpoints, Ctrl-C advice that works.
Each test names the item it covers; each fails on the main before this change."""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from train_data import write_digits

from cnncli.core.errors import UsageError
from cnncli.train.config import TrainConfig
from cnncli.train.loop import TrainingDiverged, TrainingInterrupted, run_training
from cnncli.train.outputs import read_results_csv


@pytest.fixture(scope="module")
def digits(tmp_path_factory) -> Path:
    return write_digits(tmp_path_factory.mktemp("digits"), per_class=6, size=16, classes=4)


def cfg_for(data: Path, out: Path | None, **kw) -> TrainConfig:
    base = dict(data=str(data), arch="lenet5", grayscale=True, augment="none", epochs=2, batch_size=8, lr=3e-3,
                out=str(out) if out else None, quiet=True, workers=0, image_size=28)
    base.update(kw)
    return TrainConfig(**base)


def test_existing_run_folder_is_refused_unless_exist_ok_then_replaced_cleanly(digits, tmp_path, run_cli):
    """Issue 13 "an existing --out run folder is never silently overwritten ... re-running with --epochs 1 must not
    leave a 10-epoch run's plots mixed with the new one" and issue 14 "a new run into a finished run's folder
    silently replaces the first". The refusal's advice (--resume) works when followed. Files get the umask's mode
    (issue 13). Fails on the old main (the second run was accepted)."""
    out = tmp_path / "run"
    run_training(cfg_for(digits, out))
    (out / "errors.png").write_bytes(b"a plot an earlier version wrote")  # an output the new run does not make
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    args = ["train", str(digits), "--arch", "lenet5", "--grayscale", "--augment", "none", "--image-size", "28",
            "--out", str(out), "--quiet", "--workers", "0"]
    refused = run_cli(*args, "--epochs", "1")
    assert refused.code == 2 and refused.err.count("\n") == 1
    assert f"--resume {out}" in refused.err and "--exist-ok" in refused.err
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before  # nothing touched
    resumed = run_training(TrainConfig(data=str(digits), resume=str(out), quiet=True))  # the advice works
    assert resumed.epochs_run == 2

    started = time.time_ns()
    replaced = run_cli(*args, "--epochs", "1", "--exist-ok")
    assert replaced.code == 0, replaced.err
    assert len(read_results_csv(out / "results.csv")) == 1
    assert not (out / "errors.png").exists()
    leftovers = [p.name for p in out.iterdir() if p.stat().st_mtime_ns < started]
    assert leftovers == []  # every file is the new run's
    umask = os.umask(0)
    os.umask(umask)
    assert {p.stat().st_mode & 0o777 for p in out.iterdir()} == {0o666 & ~umask}


def test_a_running_folder_is_owned_by_its_run(digits, tmp_path, run_cli):
    """Issue 14 "two train --out SAME at once: the second silently replaces the first": a lock is held while a
    run trains; a second run into the folder is refused in one sentence naming the owner. The lock goes with its
    process, even killed with SIGKILL. Fails on the old main (no lock)."""
    out = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time\nfrom cnncli.train.run_folder import RunLock\n"
                               "RunLock(sys.argv[1]).acquire()\nprint('locked', flush=True)\ntime.sleep(60)", str(out)],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(UsageError, match=rf"in use by another cnncli run \(process {holder.pid}\)"):
            run_training(cfg_for(digits, out))
        result = run_cli("train", str(digits), "--arch", "lenet5", "--grayscale", "--out", str(out), "--quiet")
        assert result.code == 2 and result.err.count("\n") == 1 and "in use" in result.err
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(10)
    assert run_training(cfg_for(digits, out, epochs=1)).epochs_run == 1  # the dead owner's lock is gone
    assert not (out / ".cnncli.lock").exists()


def test_default_run_names_are_unchanged(digits, tmp_path, monkeypatch):
    """Issue 14 / 13: the run-folder checks keep the default runs/<command>-N naming (first free N). A guard: it
    passes on the old main too."""
    monkeypatch.chdir(tmp_path)
    first = run_training(cfg_for(digits, None, epochs=1))
    second = run_training(cfg_for(digits, None, epochs=1))
    assert (first.out_dir, second.out_dir) == (Path("runs/train-1"), Path("runs/train-2"))


def all_finite(path: Path) -> bool:
    from safetensors.torch import load_file

    return all(bool(torch.isfinite(t).all()) for t in load_file(str(path)).values() if t.is_floating_point())


def test_non_finite_weights_are_never_saved_and_the_message_is_true(digits, tmp_path):
    """Issue 14 "train --lr inf says the last good checkpoint (epoch 1) is kept but best.safetensors is all NaN;
    a NaN validation loss (--momentum nan) is not caught". One batch per epoch, so the weights go bad within an
    epoch whose training loss was still finite. Fails on the old main (NaN checkpoints, a false message)."""
    one_batch = dict(batch_size=64, optimizer="sgd", weight_decay=0.0, epochs=3)
    with pytest.raises(TrainingDiverged) as info:
        run_training(cfg_for(digits, tmp_path / "lr", lr=math.inf, **one_batch))
    assert "no checkpoint was written" in str(info.value)
    assert not list((tmp_path / "lr").glob("*.safetensors"))

    with pytest.raises(TrainingDiverged, match="validation loss became nan at epoch 2") as info:
        run_training(cfg_for(digits, tmp_path / "momentum", lr=0.01, momentum=math.nan, **one_batch))
    assert "the last good checkpoint (epoch 1) is kept" in str(info.value)
    for name in ("best.safetensors", "last.safetensors"):
        assert all_finite(tmp_path / "momentum" / name), name
    assert len(read_results_csv(tmp_path / "momentum" / "results.csv")) == 1


def test_ctrl_c_in_the_first_epoch_gives_advice_that_works(digits, tmp_path, monkeypatch):
    """Issue 14 "Ctrl-C during epoch 1 advises --resume to a folder that cannot be resumed. Advice must work when
    followed": the advice is followed here. Fails on the old main (it advised --resume, which then failed)."""
    import cnncli.train.run as loop

    out = tmp_path / "run"
    real_epoch = loop._train_epoch

    def ctrl_c_in_epoch_1(cfg, epoch, *args):
        if epoch == 1:
            os.kill(os.getpid(), signal.SIGINT)  # delivered to the run's handler: stop after this step
        return real_epoch(cfg, epoch, *args)

    monkeypatch.setattr(loop, "_train_epoch", ctrl_c_in_epoch_1)
    with pytest.raises(TrainingInterrupted) as info:
        run_training(cfg_for(digits, out))
    message = str(info.value)
    assert "--resume" not in message and "run the same command again" in message
    monkeypatch.setattr(loop, "_train_epoch", real_epoch)
    assert run_training(cfg_for(digits, out)).epochs_run == 2  # the same command again
