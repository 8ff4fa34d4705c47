"""Reliability, model cards and ONNX graphs (issue 14 "model cards from files are data from strangers" and
"ONNX files whose input is not one image tensor ... are refused in one sentence before running").

A table of hostile card fields and a hypothesis fuzz test, over cards in safetensors metadata and in ONNX
metadata_props, through predict, evaluate, inspect and export: every run ends with exit 0, 1 or 2, one line
of error, no traceback, within a time bound. Each test fails on the main before this change."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

SECONDS_PER_COMMAND = 30


@pytest.fixture(scope="module")
def base(tmp_path_factory, tiny_model_file):
    """The tiny model's tensors and card, its ONNX export, a photo and a 3-class dataset with its classes."""
    import onnx
    from safetensors.torch import load_file

    from cnncli.export.to_onnx import export_onnx
    from cnncli.models.checkpoint import load_model

    root = tmp_path_factory.mktemp("cards")
    model, card = load_model(tiny_model_file)
    onnx_path = root / "tiny.onnx"
    export_onnx(model, card, onnx_path, verify=False)
    data = root / "data"
    rng = np.random.default_rng(0)
    for name in card.classes:
        (data / name).mkdir(parents=True)
        for i in range(2):
            Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(data / name / f"{i}.png")
    return {"tensors": load_file(str(tiny_model_file)), "card": card.to_dict(), "onnx": onnx.load(str(onnx_path)),
            "image": data / card.classes[0] / "0.png", "data": data, "root": root}


def write_safetensors(base, card_text: str, path: Path) -> Path:
    from safetensors.torch import save_file

    save_file(base["tensors"], str(path), metadata={"cnncli": card_text})
    return path


def write_onnx(base, card_text: str, path: Path) -> Path:
    import onnx

    graph = onnx.ModelProto()
    graph.CopyFrom(base["onnx"])
    for prop in graph.metadata_props:
        if prop.key == "cnncli":
            prop.value = card_text
    onnx.save(graph, str(path))
    return path


def run_bounded(run_cli, *args) -> tuple[int, str]:
    start = time.perf_counter()
    result = run_cli(*args)
    elapsed = time.perf_counter() - start
    assert elapsed < SECONDS_PER_COMMAND, (args, elapsed)
    assert result.code in (0, 1, 2), (args, result.code, result.err)
    assert "Traceback" not in result.err, (args, result.err)
    errors = [line for line in result.err.splitlines() if line.startswith("error:")]
    assert len(errors) <= 1 and (result.code == 0 or errors or "failed" in result.err), (args, result.err)
    if errors:
        assert not errors[0].startswith("error: " + "TypeError") and "run again with --debug" not in errors[0], errors
    return result.code, result.err


def commands(base, model: Path) -> list[list]:
    torch_engine = [] if model.suffix == ".onnx" else ["--engine", "torch"]
    found = [["predict", base["image"], "--model", model, *torch_engine],
             ["evaluate", model, base["data"], *torch_engine, "--workers", "0"],
             ["inspect", model]]
    if model.suffix != ".onnx":
        found.append(["export", model, "-o", model.with_suffix(".onnx"), "--no-verify"])
    return found


def with_field(card: dict, path: str, value) -> dict:
    card = json.loads(json.dumps(card))
    *parents, last = path.split(".")
    target = card
    for key in parents:
        target = target[key]
    if value is DELETE:
        target.pop(last, None)
    else:
        target[last] = value
    return card


DELETE = object()
HOSTILE = {  # field -> values a stranger's file may hold
    "classes": [[], None, "abc", [None], [["x"]], ["a", "a", "b"], [str(i) for i in range(100)], ["a"] * 2, 7],
    "num_classes": [100, -1, "3", None, 1.5],
    "arch": [None, "", 7, "x" * 5000, ["resnet18"]],  # (an unknown name is the registry's refusal, tested there)
    "format_version": [-1, "1", None, 99, 1.5],
    "preprocessing": [DELETE, None, [], "crop"],
    "preprocessing.input_size": [[100000, 100000], [0, 0], [-5, 5], "224", [224], [math.inf, 1], None, [True, True]],
    "preprocessing.mean": [[math.nan] * 3, [1e300] * 3, [0.5], "0.5", None],
    "preprocessing.std": [[0, 0, 0], [0.2, -0.2, 0.2], [math.inf] * 3, [1e-30] * 3, [0.2], None],
    "preprocessing.channels": [2, 0, 4, "3", None, 1],
    "preprocessing.crop_pct": [0, -1, 2, math.nan, 1e-9, "x"],
    "preprocessing.resize_mode": ["stretch", None, 3],
    "preprocessing.interpolation": ["magic", None],
    "training": ["x", 3],
    "extra": [[1], "x"],
}
TABLE = [(field, value) for field, values in HOSTILE.items() for value in values]


@pytest.mark.parametrize("suffix", [".safetensors", ".onnx"])
def test_hostile_card_fields_are_refused_naming_the_field(run_cli, base, tmp_path, suffix):
    """Issue 14 "validate every field (types, ranges, lengths, std != 0, classes vs the graph's/head's output size,
    a missing preprocessing block) and refuse with one sentence naming the field, in every command"; "evaluate
    blames the dataset for a bad card". Table entries go through predict, evaluate, inspect (and export for
    safetensors) in turn. The old main gave raw TypeError / ZeroDivisionError / IndexError, or exit 0 with wrong
    labels."""
    write = write_safetensors if suffix == ".safetensors" else write_onnx
    for i, (field, value) in enumerate(TABLE):
        card = with_field(base["card"], field, value)
        model = write(base, json.dumps(card), tmp_path / f"m{i}{suffix}")
        options = commands(base, model)
        for args in (options[i % len(options)],):  # each entry through one command, in turn: all are covered
            code, err = run_bounded(run_cli, *args)
            # valid in itself on ONNX: 1 channel (the graph then disagrees)
            accepted = (field, value) == ("preprocessing.channels", 1) and suffix == ".onnx"
            if not accepted:
                assert code != 0, (field, value, args)
            if code == 2 or (code == 1 and "model card" in err):
                continue
            if code == 1:  # refused: the sentence names the field (or the graph mismatch), not the dataset
                leaf = field.split(".")[-1]
                assert (leaf in err or leaf.replace("_", " ") in err or "classes" in err or "channels" in err
                        or "input" in err), (field, value, args, err)
                assert str(base["data"]) not in err, (field, value, args, err)


def test_onnx_card_with_more_classes_than_the_graph_is_refused(run_cli, base, tmp_path):
    """Issue 14 "an ONNX card with 100 classes on a 6-output graph predicts wrong labels with exit 0"."""
    card = dict(base["card"], classes=[f"c{i}" for i in range(100)], num_classes=100)
    model = write_onnx(base, json.dumps(card), tmp_path / "wrong.onnx")
    result = run_cli("predict", base["image"], "--model", model)
    assert result.code == 1 and "100 classes" in result.err and "outputs 3" in result.err


def onnx_graph(path: Path, inputs: list[tuple[str, int, list]], output_shape: list) -> Path:
    """A one-node graph (Identity or Add) with the given inputs (name, elem type, shape) and output shape."""
    import onnx
    from onnx import helper

    in_values = [helper.make_tensor_value_info(name, kind, shape) for name, kind, shape in inputs]
    out = helper.make_tensor_value_info("out", inputs[0][1], output_shape)
    if len(inputs) == 1:
        node = helper.make_node("Identity", [inputs[0][0]], ["out"])
    else:
        node = helper.make_node("Add", [inputs[0][0], inputs[1][0]], ["out"])
    graph = helper.make_graph([node], "g", in_values, [out])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


@pytest.mark.parametrize("inputs, output, says", [
    ([("a", 1, [1, 3, 8, 8]), ("b", 1, [1, 3, 8, 8])], [1, 3, 8, 8], "2 inputs"),
    ([("x", 1, [1, 3, 8])], [1, 3, 8], "not one image batch"),
    ([("x", 7, [1, 3, 8, 8])], [1, 3, 8, 8], "not float pixels"),
    ([("x", 1, [1, 5, 8, 8])], [1, 5, 8, 8], "5 channels"),
    ([("x", 1, [1, 3, 8, 8])], [1, 3, 8, 8], "not class scores"),
])
def test_onnx_graph_that_is_not_an_image_classifier_is_refused_before_running(run_cli, base, tmp_path, inputs, output,
                                                                              says):
    """Issue 14 "ONNX files whose input is not one image tensor (rank, dtype, several inputs) or whose output is
    not (N, classes) are refused in one sentence before running". The old main ran them into raw errors."""
    model = onnx_graph(tmp_path / "odd.onnx", inputs, output)
    for args in (["predict", base["image"], "--model", model], ["evaluate", model, base["data"]]):
        result = run_cli(*args)
        assert result.code == 1 and result.err.count("\n") == 1 and says in result.err, (args, result.err)


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-10**12, 10**12) | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=30),
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)
FIELDS = st.sampled_from(list(HOSTILE))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(field=FIELDS, data=st.data(), onnx_file=st.booleans())
def test_fuzzed_card_fields_end_with_a_sentence(run_cli, base, field, data, onnx_file):
    """Issue 14 acceptance "a property-based fuzz test for model cards: for any value, the command exits 0, 1 or 2
    with one line of error and no traceback, within a time bound" (predict, evaluate and inspect). Architecture
    names come from the table only: an unknown name sends the registry through timm's whole list (tested there)."""
    import tempfile

    hostile = st.sampled_from([v for v in HOSTILE[field] if v is not DELETE] or [None])
    value = data.draw(hostile if field == "arch" else JSON_VALUES | hostile)
    card = with_field(base["card"], field, value)
    with tempfile.TemporaryDirectory(dir=base["root"]) as tmp:
        suffix = ".onnx" if onnx_file else ".safetensors"
        write = write_onnx if onnx_file else write_safetensors
        model = write(base, json.dumps(card), Path(tmp) / f"fuzz{suffix}")
        for args in commands(base, model)[:3]:
            run_bounded(run_cli, *args)
