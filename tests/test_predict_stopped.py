"""Issue 25 item 13: whatever stops a predict job part-way (an exception, Ctrl-C) leaves every finished row
written. On the old main an exception in the middle of the stream lost rows already computed (40 of 42 JSONL
lines, and `-o p.csv` never written at all). Now the output named by the user holds, as a complete file (a JSON
array closed, a table drawn), the predictions finished before the stop; a warning says how many of how many; the
error is reported as usual (exit 1; 130 for Ctrl-C). When not one row was finished, an earlier file of that name
is left as it was.

The failure is real and comes from inside the job: the engine's ``predict_proba`` (the engine interface,
:class:`cnncli.engines.base.Engine`) raises on its third batch, or sends this process a real SIGINT there."""

from __future__ import annotations

import csv
import json
import os
import signal

import pytest
from PIL import Image

BATCH, IMAGES = 2, 8  # the third batch fails: images 1-4 are done, 5-8 are not


@pytest.fixture
def images(tmp_path, photos):
    folder = tmp_path / "imgs"
    folder.mkdir()
    sources = list(photos.values())
    for i in range(1, IMAGES + 1):
        Image.open(sources[i % 2]).resize((96, 64)).save(folder / f"img{i}.jpg")
    return folder


def fail_on_batch(monkeypatch, number: int, failure) -> None:
    """The engine's ``number``-th call to ``predict_proba`` runs ``failure()`` instead of predicting."""
    from cnncli.engines.torch_engine import TorchEngine

    original, calls = TorchEngine.predict_proba, []

    def predict_proba(self, batch):
        calls.append(len(batch))
        if len(calls) == number:
            failure()
        return original(self, batch)

    monkeypatch.setattr(TorchEngine, "predict_proba", predict_proba)


def engine_breaks():
    raise RuntimeError("the engine broke")


def ctrl_c():
    os.kill(os.getpid(), signal.SIGINT)  # a real signal to this process, as Ctrl-C sends; Python raises it here


def rows_of(path, fmt: str) -> list[dict]:
    text = path.read_text(encoding="utf-8")
    if fmt == "jsonl":
        return [json.loads(line) for line in text.splitlines()]
    if fmt == "json":
        return json.loads(text)  # a complete JSON array: closed with "]"
    return [row for row in csv.DictReader(text.splitlines()) if row["rank"] in ("1", "")]


def args(model, folder, fmt: str, output) -> list:
    return ["predict", folder, "-m", model, "--engine", "torch", "--workers", "0", "--batch-size", BATCH,
            "-f", fmt, "-o", output]


@pytest.mark.parametrize("fmt", ["jsonl", "json", "csv"])
def test_an_exception_mid_stream_leaves_the_finished_rows_written(run_cli, images, tiny_model_file, tmp_path,
                                                                  monkeypatch, fmt):
    output = tmp_path / "out" / f"p.{fmt}"
    output.parent.mkdir()
    output.write_text("an earlier run's results\n")
    fail_on_batch(monkeypatch, 3, engine_breaks)
    code, out, err = run_cli(*args(tiny_model_file, images, fmt, output))
    assert code == 1, err
    assert "error: RuntimeError: the engine broke" in err and "Traceback" not in err
    assert "stopped after 4 of 8 images" in " ".join(err.split()) and str(output) in err.replace("\n", "")
    rows = rows_of(output, fmt)
    assert [r["path"] for r in rows] == [str(images / f"img{i}.jpg") for i in range(1, 5)]
    assert not [p for p in output.parent.iterdir() if p.name != output.name]  # no temporary file left behind


def test_ctrl_c_mid_stream_leaves_the_finished_rows_written(run_cli, images, tiny_model_file, tmp_path,
                                                            monkeypatch):
    output = tmp_path / "p.jsonl"
    fail_on_batch(monkeypatch, 3, ctrl_c)
    code, out, err = run_cli(*args(tiny_model_file, images, "jsonl", output))
    assert code == 130 and "stopped after 4 of 8 images" in " ".join(err.split()), err
    assert [r["path"] for r in rows_of(output, "jsonl")] == [str(images / f"img{i}.jpg") for i in range(1, 5)]


def test_sigterm_mid_stream_leaves_the_finished_rows_written_and_exits_143(run_cli, images, tiny_model_file,
                                                                           tmp_path, monkeypatch):
    """Issue 25 item 2: SIGTERM (a service manager stopping the job) is handled as Ctrl-C is, with its own code."""
    from cnncli.core import signals

    previous = {sig: signal.getsignal(sig) for sig in signals.STOP_SIGNALS}
    signals.install()  # what the entry point does first
    try:
        output = tmp_path / "p.jsonl"
        fail_on_batch(monkeypatch, 3, lambda: os.kill(os.getpid(), signal.SIGTERM))
        code, out, err = run_cli(*args(tiny_model_file, images, "jsonl", output))
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    assert code == 143 and "stopped after 4 of 8 images" in " ".join(err.split()), err
    assert [r["path"] for r in rows_of(output, "jsonl")] == [str(images / f"img{i}.jpg") for i in range(1, 5)]


def test_the_table_on_stdout_shows_the_finished_rows(run_cli, images, tiny_model_file, monkeypatch):
    fail_on_batch(monkeypatch, 3, engine_breaks)
    code, out, err = run_cli("predict", images, "-m", tiny_model_file, "--engine", "torch", "--workers", "0",
                             "--batch-size", BATCH)
    assert code == 1 and "the engine broke" in err, err
    assert [f"img{i}.jpg" in out for i in range(1, IMAGES + 1)] == [True] * 4 + [False] * 4


def test_a_failure_before_any_row_leaves_the_earlier_file(run_cli, images, tiny_model_file, tmp_path,
                                                          monkeypatch):
    output = tmp_path / "p.jsonl"
    output.write_text("an earlier run's results\n")
    fail_on_batch(monkeypatch, 1, engine_breaks)
    code, out, err = run_cli(*args(tiny_model_file, images, "jsonl", output))
    assert code == 1 and "the engine broke" in err, err
    assert output.read_text() == "an earlier run's results\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["imgs", "p.jsonl"]
