"""Issue 25 item 2: one signal handling for every long command. SIGINT and SIGTERM at any moment, during the
imports and set-up too, stop with exit 130 / 143 and the usual advice. The children start with the default SIGINT
handler (as a terminal gives them), and real signals are sent to the real ``cnncli`` process."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from train_data import write_digits

from cnncli.train.config import TrainConfig
from cnncli.train.loop import TrainingInterrupted, run_training
from cnncli.train.outputs import read_results_csv

CNNCLI = str(Path(sys.executable).with_name("cnncli"))


@pytest.fixture(scope="module")
def digits(tmp_path_factory) -> Path:
    return write_digits(tmp_path_factory.mktemp("sig") / "digits", per_class=12)


def _start(args: list[str]) -> subprocess.Popen:
    return subprocess.Popen([CNNCLI, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_during_start_up_stops_with_its_exit_code_and_one_line(digits, tmp_path, sig, code):
    """0.4 s in, the command is still importing (or setting up): before, SIGINT there became a silent exit 130 and
    SIGTERM a death by signal with no word."""
    proc = _start(["train", str(digits), "--arch", "lenet5", "--epochs", "50", "-o", str(tmp_path / "run")])
    time.sleep(0.4)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == code, err
    assert err.strip().splitlines()[-1].endswith("interrupted."), err
    assert "Traceback" not in err
    assert not (tmp_path / "run" / "best.safetensors").exists()


def test_sigterm_during_training_keeps_the_last_epoch_and_advises_resume(digits, tmp_path):
    out = tmp_path / "run"
    proc = _start(["train", str(digits), "--arch", "lenet5", "--epochs", "400", "-o", str(out), "--quiet"])
    deadline = time.monotonic() + 90
    while not (out / "results.csv").exists() or not read_results_csv(out / "results.csv"):
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err
    assert f"continue with --resume {out}" in err, err
    assert "Traceback" not in err
    rows = read_results_csv(out / "results.csv")
    assert 1 <= len(rows) < 400
    assert [int(r["epoch"]) for r in rows] == list(range(1, len(rows) + 1))


def test_a_signal_after_the_last_epoch_is_not_swallowed(digits, tmp_path):
    """Before, a Ctrl-C during the last epoch's validation or saving set the stop flag that nothing read any more:
    the run finished with exit 0 as if Ctrl-C had never been pressed."""
    cfg = TrainConfig(data=str(digits), arch="lenet5", grayscale=True, augment="none", epochs=2, batch_size=16,
                      out=str(tmp_path / "run"), quiet=True, workers=0, image_size=28)

    def ctrl_c_while_saving(epoch, _model):
        if epoch == 2:
            os.kill(os.getpid(), signal.SIGINT)  # the run's handler: stop at the next safe point

    with pytest.raises(TrainingInterrupted, match="interrupted after epoch 2") as info:
        run_training(cfg, on_epoch_end=ctrl_c_while_saving)
    assert info.value.exit_code == 130
    assert f"--resume {tmp_path / 'run'}" in str(info.value)
    assert len(read_results_csv(tmp_path / "run" / "results.csv")) == 2
