"""Issue 25 item 10: ``--config FILE`` and a run's ``args.json`` on ``--resume`` are read through the same option
parsers as the command line: a bad value gets the command line's sentence, naming the file and the key; an unknown
key is refused with the nearest known name; exit 2 before any work (before: raw TypeError/AttributeError after
~9 s of training set-up, ``inf`` accepted, ``epochz`` silently ignored)."""

from __future__ import annotations

import json
import time

import pytest
from train_data import write_digits


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    return write_digits(tmp_path_factory.mktemp("cfg") / "digits", per_class=6)


BAD = [
    ('{"epochs": "ten"}', "'epochs' is \"ten\": invalid --epochs: must be a whole number >= 1, not 'ten'"),
    ('{"epochs": 2.5}', "'epochs' is 2.5: invalid --epochs: must be a whole number"),
    ('{"lr": [1, 2]}', "'lr' must be one value (the option --lr), not [1, 2]"),
    ('{"lr": "fast"}', "'lr' is \"fast\": invalid --lr: must be a number > 0"),
    ('{"lr": NaN}', "invalid --lr: must be a finite number > 0 or auto, not nan"),
    ('{"lr": Infinity}', "invalid --lr: must be a finite number > 0 or auto, not inf"),
    ('{"optimizer": "sgdd"}', "unknown --optimizer 'sgdd'; choose one of: sgd, adam"),
    ('{"compile": "yes"}', "'compile' must be true or false (the flag --compile)"),
    ('{"log": "mlflow"}', "'log' must be a list (the option --log is repeatable)"),
    ('{"epochz": 3}', "'epochz' is not a setting of cnncli train; did you mean 'epochs'?"),
    ('[1, 2]', "holds a JSON list, not the settings object"),
    ('{"epochs": ', "cannot read the run's settings"),
]


@pytest.mark.parametrize(("text", "expected"), BAD, ids=[b[0][:20] for b in BAD])
def test_a_bad_config_file_is_one_sentence_and_exit_2_before_any_work(digits, tmp_path, run_cli, text, expected):
    settings = tmp_path / "args.json"
    settings.write_text(text)
    t0 = time.monotonic()
    result = run_cli("train", digits, "--config", settings, "-o", tmp_path / "run")
    assert result.code == 2, result.err
    assert expected in result.err and str(settings) in result.err, result.err
    assert "\n" not in result.err.strip(), result.err  # one line
    assert "Traceback" not in result.err and not (tmp_path / "run").exists()
    assert time.monotonic() - t0 < 5


def test_resume_reads_the_runs_args_json_through_the_same_parsers(digits, tmp_path, run_cli):
    run = tmp_path / "run"
    first = run_cli("train", digits, "--arch", "lenet5", "--grayscale", "--image-size", "28", "--epochs", "1",
                    "--augment", "none", "--workers", "0", "-o", run, "--quiet")
    assert first.code == 0, first.err
    saved = json.loads((run / "args.json").read_text())
    (run / "args.json").write_text(json.dumps({**saved, "lr": "fast"}))
    resumed = run_cli("train", "--resume", run, "--epochs", "2")
    assert resumed.code == 2 and "'lr' is \"fast\": invalid --lr" in resumed.err, resumed.err
    (run / "args.json").write_text(json.dumps(saved))
    assert run_cli("train", "--resume", run, "--epochs", "2", "--quiet").code == 0
