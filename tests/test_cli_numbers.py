"""Issue 14, "Every numeric option is validated at the CLI" and the CLI part of "No upper bounds": nan, inf,
negatives and values outside each option's range, and sizes and counts beyond the machine, are refused with one
sentence and exit 2, for every command; an --image-size below the architecture's minimum too. A table of cases and
a hypothesis property (any value: exit 0, 1 or 2, one error line, no traceback, within a time bound). On the old
main, `--lr nan`, `--momentum nan`, `--label-smoothing 1`, `--patience 0`, `--threads 100000`, `--image-size
100000`, `--workers 10000` and `--arch lenet5 --image-size 8` were all accepted."""

from __future__ import annotations

import time
from types import SimpleNamespace

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

TIME_BOUND_S = 60  # "never hangs": generous, the machine may be loaded; the model's ONNX export is made first


@pytest.fixture
def no_training(monkeypatch):
    """The CLI's job ends at the TrainConfig: run_training is stubbed, so valid values return at once."""
    import cnncli.train.loop as loop

    seen = []
    monkeypatch.setattr(loop, "run_training", lambda cfg: seen.append(cfg) or SimpleNamespace(
        history=[], skipped_images=0, out_dir=None))
    return seen


@pytest.fixture(scope="module")
def warm_tiny_model(tiny_model_file):
    """The tiny model's cached ONNX export, made once before any timed run."""
    from cnncli.engines.cache import prepare_cached_onnx

    prepare_cached_onnx(str(tiny_model_file), quiet=True)


@pytest.fixture(scope="module")
def textures(tmp_path_factory):
    from tests.train_data import write_textures

    return write_textures(tmp_path_factory.mktemp("numbers") / "textures", per_class=4, crop=32)


def one_error_line(err: str) -> str:
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ") and "Traceback" not in err
    return lines[0]


TRAIN_BAD = [
    ("--lr", "nan"), ("--lr", "inf"), ("--lr", "-0.1"), ("--lr", "0"), ("--lr", "abc"),
    ("--weight-decay", "-1"), ("--weight-decay", "nan"),
    ("--label-smoothing", "1"), ("--label-smoothing", "-0.1"), ("--label-smoothing", "nan"),
    ("--mixup", "-1"), ("--cutmix", "-0.5"), ("--cutmix", "inf"),
    ("--warmup-epochs", "-1"), ("--warmup-epochs", "nan"),
    ("--clip-grad", "0"), ("--clip-grad", "-1"), ("--clip-grad", "nan"),
    ("--patience", "0"), ("--patience", "-3"),
    ("--seed", "-1"), ("--seed", "99999999999"),
    ("--workers", "-1"), ("--workers", "10000"),
    ("--momentum", "nan"), ("--momentum", "1.5"), ("--momentum", "-0.1"),
    ("--epochs", "0"), ("--epochs", "1.5"), ("--epochs", "nan"),
    ("--batch-size", "0"), ("--batch-size", "-8"), ("--batch-size", "100000000"),
    ("--image-size", "0"), ("--image-size", "100000"), ("--image-size", "nan"),
    ("--dropout", "1"), ("--val-split", "0"), ("--val-split", "1"), ("--gamma", "0"),
    ("--accumulate", "0"), ("--step-epochs", "0"), ("--freeze-epochs", "-1"), ("--backbone-lr-mult", "-1"),
]
TRAIN_GOOD = [("--lr", "3e-3"), ("--weight-decay", "0"), ("--label-smoothing", "0.1"), ("--mixup", "0.2"),
              ("--warmup-epochs", "0.5"), ("--clip-grad", "1"), ("--patience", "1"), ("--seed", "0"),
              ("--workers", "0"), ("--momentum", "0"), ("--momentum", "1"), ("--epochs", "1"),
              ("--batch-size", "1"), ("--image-size", "32"), ("--imgsz", "64"), ("--dropout", "0")]


@pytest.mark.parametrize("option, value", TRAIN_BAD)
def test_train_refuses_bad_numbers(tmp_path, run_cli, no_training, option, value):
    code, _, err = run_cli("train", tmp_path, option, value)
    assert code == 2 and option in one_error_line(err)
    assert not no_training


@pytest.mark.parametrize("option, value", TRAIN_GOOD)
def test_train_takes_good_numbers(tmp_path, run_cli, no_training, option, value):
    code, _, err = run_cli("train", tmp_path, "--arch", "simplecnn", option, value)
    assert code == 0, err
    assert len(no_training) == 1


def test_limits_name_the_machine_and_how_to_raise_them(tmp_path, run_cli, no_training, monkeypatch):
    from cnncli.core.cpus import usable_cores as cpu_count

    err = one_error_line(run_cli("predict", tmp_path, "--threads", "100000").err)
    assert f"({cpu_count()} CPUs)" in err and f"at most {4 * cpu_count()}" in err
    err = one_error_line(run_cli("train", tmp_path, "--image-size", "5000").err)
    assert "CNNCLI_MAX_INPUT_SIZE" in err
    monkeypatch.setenv("CNNCLI_MAX_INPUT_SIZE", "6000")
    code, _, err = run_cli("train", tmp_path, "--image-size", "5000", "--batch-size", "1")
    assert code == 0, err
    err = one_error_line(run_cli("train", tmp_path, "--batch-size", "2000000", "--image-size", "224").err)
    assert "GiB" in err and "--batch-size" in err


@pytest.mark.parametrize("command", [["train", "{data}", "--arch", "lenet5", "--grayscale"],
                                     ["inspect", "lenet5"], ["inspect", "vgg11"]])
def test_image_size_below_the_architecture_minimum(tmp_path, run_cli, no_training, command):
    """lenet5's two 5x5 convolutions and poolings need 16 pixels; vgg11's five poolings need 32."""
    args = [a.replace("{data}", str(tmp_path)) for a in command]
    code, _, err = run_cli(*args, "--image-size", "8")
    minimum = "16" if "lenet5" in args else "32"
    line = one_error_line(err)
    assert code == 2 and "too small" in line and f"--image-size {minimum} or more" in line
    code, _, err = run_cli(*args, "--image-size", minimum, *(["--depth", "1"] if "inspect" in args else []))
    assert code == 0, err


@pytest.mark.parametrize("args", [["predict", "x.jpg", "--top-k", "0"], ["predict", "x.jpg", "-b", "nan"],
                                  ["predict", "x.jpg", "--workers", "-2"], ["predict", "x.jpg", "--threads", "0"],
                                  ["evaluate", "m", "d", "--batch-size", "-1"],
                                  ["evaluate", "m", "d", "--workers", "inf"],
                                  ["inspect", "d", "--depth", "0"], ["inspect", "d", "--val-split", "2"],
                                  ["inspect", "d", "--seed", "-5"], ["export", "m", "--opset", "3"],
                                  ["export", "m", "--image-size", "-1"]])
def test_other_commands_refuse_bad_numbers(run_cli, args):
    code, _, err = run_cli(*args)
    assert code == 2 and args[-2] in one_error_line(err)


VALUES = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.integers(min_value=-(10**20), max_value=10**20).map(str),
    st.sampled_from(["", " ", "1e3", "0x10", "1_000", "-0", "+5", "1e400", "nan", "-inf", "½", "1,5", "--", "8 8"]),
)
TRAIN_OPTIONS = ["--lr", "--momentum", "--weight-decay", "--label-smoothing", "--mixup", "--cutmix",
                 "--warmup-epochs", "--clip-grad", "--patience", "--seed", "--workers", "--epochs", "--batch-size",
                 "--image-size", "--dropout", "--val-split", "--gamma", "--accumulate"]
PREDICT_OPTIONS = ["--top-k", "--batch-size", "--workers", "--threads"]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(option=st.sampled_from(TRAIN_OPTIONS), value=VALUES)
def test_any_train_number_is_one_line_or_accepted(tmp_path, run_cli, no_training, option, value):
    start = time.monotonic()
    code, _, err = run_cli("train", tmp_path, option, value)
    assert time.monotonic() - start < TIME_BOUND_S
    assert code in (0, 2) and "Traceback" not in err
    if code == 2:
        one_error_line(err)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(option=st.sampled_from(PREDICT_OPTIONS), value=VALUES)
def test_any_predict_number_is_one_line_or_runs(run_cli, photos, tiny_model_file, warm_tiny_model, option, value):
    start = time.monotonic()
    code, out, err = run_cli("predict", photos["chelsea"], "-m", tiny_model_file, "-f", "json", option, value)
    assert time.monotonic() - start < TIME_BOUND_S
    assert code in (0, 1, 2) and "Traceback" not in err
    if code == 2:
        one_error_line(err)
    else:
        assert '"top"' in out


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(option=st.sampled_from(["--seed", "--val-split", "--depth"]), value=VALUES)
def test_any_inspect_dataset_number_is_one_line_or_runs(run_cli, textures, option, value):
    start = time.monotonic()
    code, _, err = run_cli("inspect", textures, option, value)
    assert time.monotonic() - start < TIME_BOUND_S
    assert code in (0, 1, 2) and "Traceback" not in err
    if code == 2:
        one_error_line(err)
