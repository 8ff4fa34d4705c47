"""Reliability, crashes (issue 14 acceptance "a crash test that kills train, predict --output and export with
SIGKILL at random points in a loop, bounded time"): after every kill the previous outputs are intact or the new
ones complete, no process of the killed command is left (orphans with parent 1), temporaries of the dead writer
are removed by the next run, and a resumed training reaches the uninterrupted result.

The default suite runs 2 kills of each command; ``-m slow`` runs 20 of each (kills that come after the command
finished do not count; up to 3x as many attempts are made). Fails on the main
before this change (predict truncated its output; temporaries and decoder processes were left behind).
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from train_data import write_digits

CLI = [sys.executable, "-m", "cnncli"]
ORPHAN_BOUND_S = 5.0
ENV = dict(os.environ, PYTHONDONTWRITEBYTECODE="1", OMP_NUM_THREADS="1")


# ---------------------------------------------------------------- processes


def _children_map() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat[stat.rindex(")") + 2 :].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    return children


def descendants(pid: int) -> set[int]:
    tree, found, todo = _children_map(), set(), [pid]
    while todo:
        for child in tree.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def running(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"  # a zombie is dead, waiting for init to reap it


def kill_at_random(cmd: list[str], delay: float, started=None, start_timeout: float = 120) -> tuple[bool, set[int]]:
    """Run ``cmd``; once ``started()`` is true (or at once), wait ``delay`` s and SIGKILL it with its children
    recorded. Returns (whether it was killed before finishing, its processes still running ORPHAN_BOUND_S later)."""
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ENV)
    try:
        deadline = time.monotonic() + start_timeout
        while started is not None and not started() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        end = time.monotonic() + delay
        while proc.poll() is None and time.monotonic() < end:
            time.sleep(0.01)
        kids = descendants(proc.pid)
        killed = proc.poll() is None
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    except BaseException:
        proc.kill()
        raise
    bound = time.monotonic() + ORPHAN_BOUND_S
    while time.monotonic() < bound and any(running(k) for k in kids):
        time.sleep(0.05)
    left = {k for k in kids if running(k)}
    for k in left:  # leave nothing behind for the rest of the suite
        os.kill(k, signal.SIGKILL)
    return killed, left


def run_ok(cmd: list[str], timeout: float = 600) -> float:
    start = time.monotonic()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=ENV)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return time.monotonic() - start


def temporaries(folder: Path) -> list[Path]:
    return sorted(folder.glob(".*.tmp")) + sorted(folder.glob(".cnncli-work-*"))


# ---------------------------------------------------------------- the three commands


def numbers(run: Path) -> list[dict]:
    from cnncli.train.outputs import read_results_csv

    return [{k: v for k, v in row.items() if k not in ("seconds", "train_img_s")}
            for row in read_results_csv(run / "results.csv")]


def check_run_folder(run: Path) -> None:
    """Every file a killed run left is complete: it loads."""
    import torch
    from safetensors.torch import load_file

    from cnncli.models.checkpoint import read_card

    for name in ("best.safetensors", "last.safetensors"):
        if (run / name).exists():
            read_card(run / name)
            load_file(str(run / name))
    if (run / "train_state.pt").exists():
        state = torch.load(run / "train_state.pt", weights_only=True)
        assert len(state["history"]) == state["epoch"]
    if (run / "args.json").exists():
        json.loads((run / "args.json").read_text())
    if (run / "results.csv").exists():
        numbers(run)


def crash_train(root: Path, kills: int, rng: random.Random) -> dict:
    data = write_digits(root / "digits", per_class=8, size=16, classes=4)
    common = ["--arch", "lenet5", "--grayscale", "--augment", "none", "--image-size", "28", "--epochs", "3",
              "--batch-size", "8", "--lr", "3e-3", "--workers", "0", "--quiet"]
    reference = root / "reference"
    duration = run_ok([*CLI, "train", str(data), *common, "--out", str(reference)])
    run = root / "run"
    done = 0
    attempts = 0
    while done < kills and attempts < 3 * kills:  # until `kills` kills landed before the command finished
        attempts += 1
        # a finished run (metrics.json) is started afresh, so that there is always something to interrupt
        resumable = (run / "train_state.pt").exists() and not (run / "metrics.json").exists()
        cmd = [*CLI, "train", "--resume", str(run), "--quiet"] if resumable else \
              [*CLI, "train", str(data), *common, "--out", str(run), "--exist-ok"]
        killed, left = kill_at_random(cmd, rng.uniform(0, 0.7 * duration))
        assert not left, f"train left processes running: {left}"
        done += killed
        if run.exists():
            check_run_folder(run)
    if (run / "train_state.pt").exists():
        run_ok([*CLI, "train", "--resume", str(run), "--quiet"])
    else:
        run_ok([*CLI, "train", str(data), *common, "--out", str(run), "--exist-ok"])
    assert numbers(run) == numbers(reference)  # resumed across kills = uninterrupted
    assert not temporaries(run), temporaries(run)
    return {"kills": done}


def kill_output_writer(cmd: list[str], out: Path, kills: int, duration: float, rng: random.Random,
                       check_complete, what: str) -> int:
    """SIGKILL ``cmd`` at random points until ``kills`` kills landed before it finished (at most 3x attempts).
    After each, ``out`` is the previous bytes or a complete new output (``check_complete`` asserts that)."""
    previous = out.read_bytes()
    done = attempts = 0
    while done < kills and attempts < 3 * kills:
        attempts += 1
        killed, left = kill_at_random(cmd, rng.uniform(0, 0.7 * duration))
        assert not left, f"{what} left processes running: {left}"
        done += killed
        now = out.read_bytes()
        if now != previous:  # it finished before the kill: the new output is complete
            check_complete(out)
            previous = now
    return done


def crash_predict(root: Path, model: Path, photo: Path, kills: int, rng: random.Random) -> dict:
    folder = root / "images"
    folder.mkdir(parents=True)
    for i in range(120):
        (folder / f"img_{i:03d}.jpg").write_bytes(photo.read_bytes())
    out = root / "preds.json"
    cmd = [*CLI, "predict", str(folder), "--model", str(model), "-f", "json", "-o", str(out), "--batch-size", "4",
           "--workers", "2"]
    duration = run_ok(cmd)  # also makes the cached ONNX export
    complete = out.read_bytes()
    assert len(json.loads(complete)) == 120
    out.write_text('{"previous": "result"}\n')

    def complete(path: Path) -> None:
        assert len(json.loads(path.read_bytes())) == 120

    done = kill_output_writer(cmd, out, kills, duration, rng, complete, "predict")
    run_ok(cmd)
    assert len(json.loads(out.read_bytes())) == 120
    assert not temporaries(root), temporaries(root)
    return {"kills": done}


def crash_export(root: Path, model: Path, kills: int, rng: random.Random) -> dict:
    import onnx

    from cnncli.export.to_onnx import card_from_onnx_metadata

    out = root / "exports" / "tiny.onnx"
    cmd = [*CLI, "export", str(model), "-o", str(out), "--force"]
    duration = run_ok(cmd)

    def complete(path: Path) -> None:
        graph = onnx.load(str(path))
        onnx.checker.check_model(graph)
        assert card_from_onnx_metadata({p.key: p.value for p in graph.metadata_props}) is not None

    complete(out)
    done = kill_output_writer(cmd, out, kills, duration, rng, complete, "export")
    run_ok(cmd)
    complete(out)
    assert not temporaries(out.parent), temporaries(out.parent)
    return {"kills": done}


@pytest.mark.parametrize("kills", [pytest.param(2, id="short"), pytest.param(20, id="full", marks=pytest.mark.slow)])
def test_sigkill_at_random_points(tmp_path, tiny_model_file, photos, kills, capsys):
    """SIGKILL train, predict --output and export at random points, ``kills`` times each (see the module)."""
    rng = random.Random(kills)
    start = time.monotonic()
    report = {
        "train": crash_train(tmp_path / "train", kills, rng),
        "predict": crash_predict(tmp_path / "predict", tiny_model_file, photos["chelsea"], kills, rng),
        "export": crash_export(tmp_path / "export", tiny_model_file, kills, rng),
    }
    with capsys.disabled():
        print(f"\ncrash test: {report} in {time.monotonic() - start:.0f} s")
    for command, outcome in report.items():
        assert outcome["kills"] == kills, (command, outcome)  # every kill landed before the command finished


def test_stale_temporaries_are_removed_by_the_next_run(tmp_path, tiny_model_file, photos, run_cli):
    """Issue 14 "kill -9 leaves .*.tmp files in the run folder that resume does not clean": temporaries of a dead
    writer (its process id in the name, or a run folder this run owns) are removed by the next run: resume,
    predict --output and export. Fails on the old main."""
    from cnncli.train.config import TrainConfig
    from cnncli.train.loop import run_training

    data = write_digits(tmp_path / "digits", per_class=4, size=16, classes=2)
    run = tmp_path / "run"
    cfg = dict(data=str(data), arch="lenet5", grayscale=True, augment="none", epochs=1, batch_size=8, quiet=True,
               workers=0, image_size=28, out=str(run))
    run_training(TrainConfig(**cfg))
    dead = 2**22 + 12345  # above pid_max: no such process
    planted = [run / f".last.safetensors.{dead}-0a0b.tmp", run / ".train_state.pt.k3j4h5.tmp"]
    out = tmp_path / "preds.json"
    planted += [tmp_path / f".preds.json.{dead}-0c0d.tmp", tmp_path / f".tiny.onnx.{dead}-0e0f.tmp"]
    work = tmp_path / f".cnncli-work-{dead}-abc"
    work.mkdir()
    (work / "fp32.onnx").write_bytes(b"half")
    for path in planted:
        path.write_bytes(b"half-written")
    run_training(TrainConfig(data="", resume=str(run), quiet=True))
    assert run_cli("predict", photos["chelsea"], "--model", tiny_model_file, "-f", "json", "-o", out).code == 0
    assert run_cli("export", tiny_model_file, "-o", tmp_path / "tiny.onnx", "--no-verify").code == 0
    assert not [p for p in planted if p.exists()] and not work.exists()
