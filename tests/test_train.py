"""Training and fine-tuning on tiny real datasets: trainable policies, BatchNorm freezing, resume, seeds,
corrupt images, NaN guard, feature caching, DDP, and the CLI's refusals."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from train_data import write_digits, write_textures

from cnncli.core.errors import UsageError
from cnncli.train.config import TrainConfig
from cnncli.train.loop import TrainingDiverged, TrainingInterrupted, run_training
from cnncli.train.outputs import read_results_csv

QUIET = dict(quiet=True, workers=0)


@pytest.fixture(scope="module")
def digits(tmp_path_factory) -> Path:
    return write_digits(tmp_path_factory.mktemp("digits"), per_class=10)


@pytest.fixture(scope="module")
def textures(tmp_path_factory) -> Path:
    return write_textures(tmp_path_factory.mktemp("textures"), per_class=8)


def snapshot(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def run_with_snapshots(cfg: TrainConfig) -> tuple[list[dict], object]:
    snaps: list[dict] = []
    result = run_training(cfg, on_epoch_end=lambda _epoch, model: snaps.append(snapshot(model)))
    return snaps, result


def changed(before: dict, after: dict, names) -> set[str]:
    return {n for n in names if not torch.equal(before[n], after[n])}


def lenet_cfg(data: Path, out: Path, **kw) -> TrainConfig:
    base = dict(data=str(data), arch="lenet5", grayscale=True, augment="none", epochs=3, batch_size=16, lr=3e-3,
                out=str(out))
    base.update(QUIET)
    base.update(kw)
    return TrainConfig(**base)


# ---------------------------------------------------------------- trainable policies and BatchNorm


POLICIES = {  # policy -> parameter-name prefixes of resnet18 it must train (head = fc)
    "head": ("fc.",),
    "last:2": ("layer3.", "layer4.", "fc."),
    "all": ("",),
}


@pytest.mark.parametrize("policy", list(POLICIES))
def test_trainable_policy_trains_exactly_the_named_parameters(textures, tmp_path, policy):
    cfg = TrainConfig(data=str(textures), command="finetune", arch="resnet18", weights="none", trainable=policy,
                      image_size=32, augment="none", epochs=1, batch_size=8, out=str(tmp_path / "run"), **QUIET)
    snaps, result = run_with_snapshots(cfg)
    before, after = snaps
    from cnncli.models.registry import build_architecture

    model = build_architecture("resnet18", 3)
    names = [n for n, _ in model.named_parameters()]
    expected = {n for n in names if n.startswith(POLICIES[policy])}
    assert changed(before, after, names) == expected
    assert result.trainable_params == sum(p.numel() for n, p in model.named_parameters() if n in expected)
    card = json.loads(json.dumps(_card(tmp_path / "run" / "best.safetensors")))
    assert card["extra"]["trainable"] == policy and card["extra"]["trainable_params"] == result.trainable_params
    # --bn frozen (default): BatchNorm layers whose parameters are frozen keep their running statistics
    stats = [n for n in before if n.endswith("running_mean")]
    frozen_bn = {n for n in stats if n.rsplit(".", 1)[0] + ".weight" not in expected}
    assert changed(before, after, stats) == set(stats) - frozen_bn



def _card(path: Path) -> dict:
    from cnncli.models.checkpoint import read_card

    return read_card(path).to_dict()


def test_bn_train_lets_frozen_batchnorm_statistics_adapt(textures, tmp_path):
    cfg = TrainConfig(data=str(textures), command="finetune", arch="resnet18", weights="none", trainable="head",
                      bn="train", image_size=32, augment="none", epochs=1, batch_size=8, out=str(tmp_path / "run"),
                      **QUIET)
    (before, after), _ = run_with_snapshots(cfg)
    stats = [n for n in before if n.endswith("running_mean")]
    assert changed(before, after, stats) == set(stats)
    weights = [n for n in before if n.startswith("bn1.") or n.startswith("layer1.0.bn1.")]
    assert not changed(before, after, [n for n in weights if "running" not in n and "num_batches" not in n])


def test_freeze_epochs_trains_the_head_first_then_everything(textures, tmp_path):
    cfg = TrainConfig(data=str(textures), command="finetune", arch="simplecnn", weights="none", trainable="all",
                      freeze_epochs=1, augment="none", epochs=2, batch_size=8, out=str(tmp_path / "run"), **QUIET)
    (start, epoch1, epoch2), _ = run_with_snapshots(cfg)
    params = [n for n in start if not n.endswith(("running_mean", "running_var", "num_batches_tracked"))]
    assert changed(start, epoch1, params) == {"fc.weight", "fc.bias"}
    assert changed(epoch1, epoch2, params) == set(params)


def test_cache_features_gives_the_same_training_as_the_full_forward(textures, tmp_path):
    common = dict(data=str(textures), command="finetune", arch="resnet18", weights="none", trainable="head",
                  image_size=32, augment="none", epochs=2, batch_size=8, channels_last=False, **QUIET)
    plain = run_training(TrainConfig(out=str(tmp_path / "plain"), **common))
    cached = run_training(TrainConfig(out=str(tmp_path / "cached"), cache_features=True, **common))
    for a, b in zip(plain.history, cached.history):
        assert a["train_loss"] == pytest.approx(b["train_loss"], abs=1e-4)
        assert a["val_loss"] == pytest.approx(b["val_loss"], abs=1e-4)
    with pytest.raises(UsageError, match="augment none"):
        run_training(TrainConfig(out=str(tmp_path / "bad"), **dict(common, augment="light"), cache_features=True))


# ---------------------------------------------------------------- lifecycle


def test_seed_resume_outputs_and_finetune_of_the_result(digits, textures, tmp_path):
    ref = run_training(lenet_cfg(digits, tmp_path / "a"))
    run_training(lenet_cfg(digits, tmp_path / "b"))
    run_training(lenet_cfg(digits, tmp_path / "c", seed=1, epochs=1))

    def numbers(run):
        return [{k: v for k, v in row.items() if k != "seconds"} for row in read_results_csv(run / "results.csv")]

    assert numbers(tmp_path / "a") == numbers(tmp_path / "b")
    assert numbers(tmp_path / "c")[0] != numbers(tmp_path / "a")[0]
    assert len(numbers(tmp_path / "a")) == 3 and ref.best_val_acc > 0.3

    # Ctrl-C during epoch 2: exit code 130, the state after epoch 1 stays; --resume ends where run "a" ended
    def interrupt(epoch, _model):
        if epoch == 1:
            os.kill(os.getpid(), signal.SIGINT)

    with pytest.raises(TrainingInterrupted, match="--resume") as info:
        run_training(lenet_cfg(digits, tmp_path / "d"), on_epoch_end=interrupt)
    assert info.value.exit_code == 130
    assert len(numbers(tmp_path / "d")) == 1
    state = torch.load(tmp_path / "d" / "train_state.pt", weights_only=True)
    assert state["epoch"] == 1
    resumed = run_training(TrainConfig(data=str(digits), resume=str(tmp_path / "d"), quiet=True))
    assert numbers(tmp_path / "d") == numbers(tmp_path / "a")
    assert resumed.best_epoch == ref.best_epoch
    from safetensors.torch import load_file

    a, d = load_file(str(tmp_path / "a" / "last.safetensors")), load_file(str(tmp_path / "d" / "last.safetensors"))
    assert all(torch.equal(a[k], d[k]) for k in a)

    run = tmp_path / "a"
    for name in ("best.safetensors", "last.safetensors", "train_state.pt", "args.json", "results.csv", "curves.png",
                 "confusion_matrix.png", "metrics.json"):
        assert (run / name).is_file(), name
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["best_epoch"] == ref.best_epoch
    assert metrics["evaluation"]["top1"] == pytest.approx(metrics["val_acc"])
    card = _card(run / "best.safetensors")
    assert card["training"]["best_epoch"] == ref.best_epoch and card["training"]["policy"] == "all"
    assert card["classes"] == [str(i) for i in range(10)] and card["preprocessing"]["channels"] == 1
    assert json.loads((run / "args.json").read_text())["arch"] == "lenet5"

    # finetune of that cnncli model on another class set: its architecture, a new head, and a note saying so
    said: list[str] = []
    tuned = run_training(TrainConfig(data=str(textures), command="finetune", arch=None,
                                     weights=str(run / "best.safetensors"), trainable="head", augment="none", epochs=1,
                                     out=str(tmp_path / "ft"), workers=0),
                         log=said.append)
    assert any("new 3-class head" in line for line in said)
    card = _card(tmp_path / "ft" / "best.safetensors")
    assert card["arch"] == "lenet5" and card["classes"] == ["brick", "grass", "gravel"]
    assert tuned.trainable_params == 84 * 3 + 3


def test_resume_restores_the_random_generators_it_saved(digits, tmp_path):
    """--resume puts back python's, numpy's and torch's generators as they were when the last epoch's files were
    written: what an on_epoch_end hook draws after epoch 1 and after epoch 2 is the same whether the run went
    straight on or was stopped by Ctrl-C in epoch 2 and resumed. Fails when the state is saved but not restored."""

    def drawing(draws: dict, stop_after: int | None = None):
        def on_epoch_end(epoch, _model):
            draws[epoch] = (random.random(), float(np.random.random()), float(torch.rand(1)))
            if epoch == stop_after:
                os.kill(os.getpid(), signal.SIGINT)

        return on_epoch_end

    straight: dict = {}
    run_training(lenet_cfg(digits, tmp_path / "straight", epochs=2), on_epoch_end=drawing(straight))
    stopped: dict = {}
    with pytest.raises(TrainingInterrupted):
        run_training(lenet_cfg(digits, tmp_path / "stopped", epochs=2), on_epoch_end=drawing(stopped, stop_after=1))
    assert stopped == {0: straight[0], 1: straight[1]}
    resumed: dict = {}
    run_training(TrainConfig(data=str(digits), resume=str(tmp_path / "stopped"), quiet=True),
                 on_epoch_end=drawing(resumed))
    assert resumed == {1: straight[1], 2: straight[2]}
    saved = torch.load(tmp_path / "stopped" / "train_state.pt", weights_only=True)["rng"]
    assert {"python", "numpy", "torch"} <= set(saved)


def test_corrupt_image_is_skipped_and_counted(digits, tmp_path):
    import shutil

    data = tmp_path / "data"
    shutil.copytree(digits, data)
    (data / "3" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not really a png")
    result = run_training(lenet_cfg(data, tmp_path / "run", epochs=1))
    assert result.skipped_images == 1
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["skipped_images"] == 1 and "broken.png" in metrics["skipped_examples"][0]


def test_nan_loss_stops_with_epoch_and_step_and_keeps_checkpoint(digits, tmp_path):
    cfg = lenet_cfg(digits, tmp_path / "run", epochs=1, optimizer="sgd", lr=1e30, momentum=0.0, weight_decay=0.0)
    with pytest.raises(TrainingDiverged, match=r"epoch 1, step \d+"):
        run_training(cfg)
    assert not (tmp_path / "run" / "last.safetensors").exists()


# ---------------------------------------------------------------- CLI refusals and DDP


def cli(args: list[str], capsys) -> tuple[int, str]:
    from cnncli.cli.app import main

    with pytest.raises(SystemExit) as exc:
        main(args)
    return exc.value.code, capsys.readouterr().err


def test_bad_dataset_inputs_give_one_sentence_and_exit_code(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    single = tmp_path / "single" / "cats"
    single.mkdir(parents=True)
    write_digits(tmp_path / "one", per_class=3, classes=1)
    for data in (empty, tmp_path / "one", tmp_path / "missing"):
        code, err = cli(["train", str(data), "--arch", "lenet5", "--out", str(tmp_path / "r"), "--quiet"], capsys)
        assert code == 2 and err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err
    code, err = cli(["finetune", str(tmp_path / "one"), "--trainable", "middle"], capsys)
    assert code == 2 and "--trainable" in err and err.count("\n") == 1


def test_ddp_two_cpu_processes_gloo(digits, tmp_path):
    out = tmp_path / "ddp"
    env = dict(os.environ, OMP_NUM_THREADS="1", CNNCLI_DEBUG="1")
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29517",
         "-m", "cnncli", "train", str(digits), "--arch", "lenet5", "--grayscale", "--augment", "none",
         "--epochs", "2", "--batch-size", "8", "--out", str(out), "--workers", "0"],
        capture_output=True, text=True, timeout=240, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = read_results_csv(out / "results.csv")
    assert [r["epoch"] for r in rows] == ["1", "2"]
    assert proc.stderr.count("epoch 2/2") == 1  # only rank 0 logs
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["evaluation"]["n_images"] == 20  # the whole val split, not one rank's half


# ---------------------------------------------------------------- optimisers and schedules


@pytest.mark.parametrize("schedule", ["cosine", "step", "exponential", "onecycle", "constant"])
def test_schedules_warm_up_and_save_with_weights_only(tmp_path, schedule):
    from cnncli.train.optim import build_optimizer, build_scheduler, param_groups

    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Linear(8, 3))
    cfg = TrainConfig(data="-", optimizer="sgd", lr=0.1, schedule=schedule, warmup_epochs=1, epochs=4, step_epochs=1,
                      gamma=0.5)
    groups = param_groups(model, ["1.weight", "1.bias"], ["0.weight", "0.bias", "1.weight", "1.bias"], 0.1, 0.1)
    opt = build_optimizer(groups, cfg)
    sched = build_scheduler(opt, cfg, steps_per_epoch=5)
    lrs = []
    for _ in range(20):
        opt.step()
        sched.step()
        lrs.append([g["lr"] for g in opt.param_groups])
    assert lrs[0][0] < lrs[3][0]  # warming up
    assert all(b == pytest.approx(0.1 * h) for h, b in lrs)  # discriminative rate: backbone = 0.1 x head
    torch.save(sched.state_dict(), tmp_path / "s.pt")
    state = torch.load(tmp_path / "s.pt", weights_only=True)
    fresh = build_scheduler(build_optimizer(param_groups(model, ["1.weight", "1.bias"],
                                                         ["0.weight", "0.bias", "1.weight", "1.bias"], 0.1, 0.1), cfg),
                            cfg, 5)
    fresh.load_state_dict(state)
    assert fresh.get_last_lr() == pytest.approx(sched.get_last_lr())


# mixup, cutmix, --balance, --nesterov, onecycle, --accumulate, --clip-grad, hinge: tests/test_train_options.py
