"""Issue 13, "One vocabulary, the ecosystem's habits": the same option has the same name in every subcommand,
--help lists choices and fits 80 columns, and `train --config args.json` repeats a run. Each test fails on the
main before this change (no -o/--imgsz/-m/-V, `--device 0` refused, <list[str]> placeholders, truncated
command descriptions, no --config)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from types import SimpleNamespace

import pytest

COMMANDS = ["predict", "train", "finetune", "evaluate", "export", "inspect", "models"]


def help_text(*command: str) -> str:
    """`COLUMNS=80 cnncli ... --help` as a user sees it (a real process: click formats for the terminal width)."""
    env = {**os.environ, "COLUMNS": "80"}
    done = subprocess.run([sys.executable, "-m", "cnncli", *command, "--help"], capture_output=True, text=True,
                          env=env, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.fixture(scope="module")
def helps() -> dict[str, str]:
    return {c: help_text(*([c] if c else [])) for c in ["", *COMMANDS]}


def test_help_fits_80_columns_lists_choices_and_has_no_type_placeholders(helps):
    """Issue 13 item "--help: choices listed, no placeholders, --debug documented, descriptions fit 80 columns"."""
    for command, text in helps.items():
        wide = [line for line in text.splitlines() if len(line) > 80]
        assert not wide, f"{command or 'cnncli'} --help: {wide}"
        assert not re.search(r"<(list\[|int|float|str|text|path|int range|float range)", text), (command, text)
    root = helps[""]
    assert "--debug" in root and "-V, --version" in root and "--install-completion" in root
    commands = root.split("Commands:")[1]
    assert "..." not in commands  # no description cut short
    assert "[table|json|jsonl|csv|parquet]" in helps["predict"]
    assert "[sgd|adam|adamw|rmsprop|adagrad]" in helps["train"]
    assert "[table|json]" in helps["evaluate"] and "[table|json]" in helps["inspect"]


def test_one_option_vocabulary(helps):
    """Issue 13 item "Same option, same name in every subcommand": -o/--output, --image-size/--imgsz, -m/--model
    where an architecture is chosen, --device everywhere a device is used; --out is a hidden alias."""
    for command in ("predict", "train", "finetune", "export", "inspect"):
        assert "-o, --output" in helps[command], command
        assert "--out " not in helps[command] and "--out," not in helps[command], command
    for command in ("train", "finetune", "export", "inspect"):
        assert "--image-size, --imgsz" in helps[command], command
        assert "--input-size" not in helps[command]
    for command in ("train", "finetune"):
        assert re.search(r"-m, .*--model", helps[command]), command
    for command in ("predict", "train", "finetune", "evaluate"):
        assert "cuda:N" in helps[command], command


def test_version_short_and_long(run_cli):
    from cnncli import __version__

    for flag in ("-V", "--version"):
        code, out, _ = run_cli(flag)
        assert code == 0 and out.strip() == f"cnncli {__version__}"


def test_shell_completion_is_offered():
    """What bash's completion hook runs (`--install-completion` installs it): subcommands and choices complete."""
    def complete(words: str, index: int) -> list[str]:
        env = {**os.environ, "_CNNCLI_COMPLETE": "complete_bash", "COMP_WORDS": words, "COMP_CWORD": str(index)}
        done = subprocess.run([sys.executable, "-m", "cnncli"], capture_output=True, text=True, env=env, timeout=60)
        assert done.returncode == 0, done.stderr
        return done.stdout.split()

    assert complete("cnncli pre", 1) == ["predict"]
    assert complete("cnncli predict --format ", 3) == ["table", "json", "jsonl", "csv", "parquet"]


@pytest.mark.parametrize("spec, expected", [("auto", "auto"), ("cpu", "cpu"), ("CPU", "cpu"), ("cuda", "cuda"),
                                            ("gpu", "cuda"), ("0", "cuda:0"), ("1", "cuda:1"), ("cuda:1", "cuda:1")])
def test_device_spellings_of_pytorch_and_ultralytics(spec, expected):
    from cnncli.core.devices import parse_device

    assert parse_device(spec) == expected


@pytest.mark.parametrize("spec", ["tpu", "cuda:x", "0,1", "-1", "cuda:"])
def test_unknown_devices_are_one_usage_line(run_cli, photos, spec):
    code, _, err = run_cli("predict", photos["chelsea"], "--device", spec)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "--device" in err, err


def test_device_index_reaches_the_engines(tiny_model_file, photos, run_cli):
    """`--device 0` means the first GPU, as in Ultralytics: on a machine without one it is refused in one
    sentence by the engine (not as an unknown device); `--device cpu` runs."""
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU; covered by the cuda tests")
    code, _, err = run_cli("predict", photos["chelsea"], "-m", tiny_model_file, "--device", "0", "--engine", "torch")
    assert code == 2 and "cuda:0" in err and "no CUDA GPU" in err
    code, out, _ = run_cli("predict", photos["chelsea"], "-m", tiny_model_file, "--device", "cpu", "-f", "json")
    assert code == 0 and json.loads(out)[0]["top"]


def test_old_spellings_still_work_as_hidden_aliases():
    from cnncli.cli.app import rewrite_aliases

    assert rewrite_aliases(["train", "d", "--out", "r", "--input-size=32", "--", "--out"]) == \
        ["train", "d", "--output", "r", "--image-size=32", "--", "--out"]


@pytest.fixture
def captured_training(monkeypatch):
    """Stub run_training to capture the TrainConfig the CLI builds (the CLI's job ends there)."""
    import cnncli.train.loop as loop

    seen = []

    def fake(cfg):
        seen.append(cfg)
        return SimpleNamespace(history=[], skipped_images=0, out_dir=None)

    monkeypatch.setattr(loop, "run_training", fake)
    return seen


def test_train_accepts_model_alias_and_imgsz(tmp_path, run_cli, captured_training):
    code, _, err = run_cli("train", tmp_path, "-m", "lenet5", "--imgsz", "28", "-o", tmp_path / "r", "--device", "cpu")
    assert code == 0, err
    cfg = captured_training[-1]
    assert (cfg.arch, cfg.image_size, cfg.out, cfg.device) == ("lenet5", 28, str(tmp_path / "r"), "cpu")
    code, _, err = run_cli("train", tmp_path, "--out", tmp_path / "old")  # the hidden alias
    assert code == 0 and captured_training[-1].out == str(tmp_path / "old")


def test_train_config_repeats_a_run_and_command_line_overrides(tmp_path, run_cli, captured_training):
    """Issue 13 item "`train --config runs/x/args.json` re-runs a run's settings (command-line options override
    it)"; an option given with its default value still overrides (the parameter source, not the value, decides)."""
    from cnncli.train.config import TrainConfig

    data = tmp_path / "data"
    data.mkdir()
    args = tmp_path / "run" / "args.json"
    args.parent.mkdir()
    TrainConfig(data=str(data), arch="lenet5", epochs=7, lr=0.05, optimizer="sgd", grayscale=True, seed=3,
                out=str(args.parent), augment="none").save(args)
    code, _, err = run_cli("train", "--config", args, "--epochs", "2", "--optimizer", "adamw", "--seed", "0")
    assert code == 0, err
    cfg = captured_training[-1]
    assert (cfg.data, cfg.arch, cfg.lr, cfg.grayscale, cfg.augment) == (str(data), "lenet5", 0.05, True, "none")
    assert (cfg.epochs, cfg.optimizer, cfg.seed) == (2, "adamw", 0)
    assert cfg.out is None and cfg.resume is None  # a new run folder, never the old run's
    other = tmp_path / "other"
    other.mkdir()
    code, _, err = run_cli("train", other, "--config", args)
    assert code == 0 and captured_training[-1].data == str(other)


def test_train_config_refuses_another_commands_run_and_bad_files(tmp_path, run_cli, captured_training):
    from cnncli.train.config import TrainConfig

    args = tmp_path / "args.json"
    TrainConfig(data=str(tmp_path), command="finetune", arch="resnet18").save(args)
    code, _, err = run_cli("train", "--config", args)
    assert code == 2 and "cnncli finetune --config" in err and len(err.strip().splitlines()) == 1
    (tmp_path / "bad.json").write_text("{not json")
    code, _, err = run_cli("train", "--config", tmp_path / "bad.json")
    assert code == 2 and "bad.json" in err
    code, _, err = run_cli("train")
    assert code == 2 and "needs DATA" in err
    assert not captured_training


def test_listed_choices_match_what_the_engines_take():
    """--help lists the CLI's copies of the engine and precision names (kept free of numpy for a fast start)."""
    from cnncli.cli import common
    from cnncli.engines import base as engines

    assert common.ENGINES == engines.ENGINES and common.PRECISIONS == engines.PRECISIONS
