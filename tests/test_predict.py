"""`cnncli predict` on folders with good and bad files, output formats, exit codes, and a torch-free --help."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys

import numpy as np
import pytest
from conftest import skimage_photo
from PIL import Image

GOOD = ["chelsea.jpg", "cmyk.jpg", "gray16.png", "rgba.png", "exif_rotated.jpg", "sub/coffee.png"]
BAD = ["empty.jpg", "truncated.jpg", "text.png"]


@pytest.fixture(scope="module")
def mixed_folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("mixed")
    cat = Image.fromarray(skimage_photo("chelsea"))
    cat.save(root / "chelsea.jpg")
    cat.convert("CMYK").save(root / "cmyk.jpg")
    Image.fromarray(np.asarray(cat.convert("L"), dtype=np.uint16) * 257).save(root / "gray16.png")
    cat.convert("RGBA").save(root / "rgba.png")
    exif = Image.Exif()
    exif[0x0112] = 8
    cat.save(root / "exif_rotated.jpg", exif=exif)
    (root / "sub").mkdir()
    Image.fromarray(skimage_photo("coffee")).save(root / "sub" / "coffee.png")
    (root / "empty.jpg").write_bytes(b"")
    cat.save(root / "truncated.jpg")
    (root / "truncated.jpg").write_bytes((root / "truncated.jpg").read_bytes()[:3000])
    (root / "text.png").write_text("not an image")
    (root / "notes.txt").write_text("ignored: not an image extension")
    (root / ".hidden").mkdir()
    cat.save(root / ".hidden" / "skip.jpg")
    return root


def test_mixed_folder_predicts_good_reports_bad_exit_1(run_cli, mixed_folder, tiny_model_file):
    result = run_cli("predict", mixed_folder, "--model", tiny_model_file, "--format", "jsonl", "--workers", "2",
                     "--batch-size", "4")
    assert result.code == 1
    rows = {json.loads(line)["path"]: json.loads(line) for line in result.out.splitlines()}
    assert set(rows) == {str(mixed_folder / name) for name in GOOD + BAD}
    for name in GOOD:
        top = rows[str(mixed_folder / name)]["top"]
        assert top[0]["label"] in {"brick", "grass", "gravel"} and len(top) == 3
    for name in BAD:
        row = rows[str(mixed_folder / name)]
        assert "top" not in row and str(mixed_folder / name) in row["error"]
        assert str(mixed_folder / name) in result.err
    assert "3 of 9 images failed" in result.err and "Traceback" not in result.err


def test_workers_do_not_change_results_or_order(mixed_folder, tiny_model_file):
    from cnncli.data.inputs import collect_inputs
    from cnncli.engines.base import open_engine
    from cnncli.predict.run import predict_items

    engine = open_engine(str(tiny_model_file), device="cpu")
    items = collect_inputs([str(mixed_folder)])
    inline = [p.to_dict() for p in predict_items(engine, items, k=3, batch_size=3, workers=0)]
    pooled = [p.to_dict() for p in predict_items(engine, items, k=3, batch_size=3, workers=2)]
    assert [r["path"] for r in inline] == [r["path"] for r in pooled]
    for a, b in zip(inline, pooled):
        assert a.get("error") == b.get("error")
        for ta, tb in zip(a.get("top", []), b.get("top", [])):
            assert ta["index"] == tb["index"] and abs(ta["prob"] - tb["prob"]) < 1e-5


def test_pooled_batches_hold_the_same_pixels_as_single_image_preprocessing(photos):
    """Workers send uint8 pixels and the engine's process normalises whole batches: the numbers must be identical
    to preprocessing each image alone (the path every other command uses)."""
    from cnncli.data.images import load_and_preprocess
    from cnncli.data.inputs import InputItem
    from cnncli.models.card import Preprocessing
    from cnncli.predict.decode import decoded_batches

    pre = Preprocessing(input_size=(96, 80), mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
    paths = [str(p) for p in photos.values()] * 3
    batches = list(decoded_batches([InputItem(p) for p in paths], pre, batch_size=4, workers=2))
    pooled = np.concatenate([b.array for b in batches])
    single = np.stack([load_and_preprocess(p, pre) for p in paths])
    assert pooled.dtype == np.float32 and pooled.shape == (len(paths), 3, 96, 80)
    np.testing.assert_array_equal(pooled, single)


def test_output_formats(run_cli, photos, tiny_model_file, tmp_path):
    args = ("predict", photos["chelsea"], photos["coffee"], "--model", tiny_model_file, "-k", "2")
    as_json = json.loads(run_cli(*args, "--format", "json").out)
    assert [r["path"] for r in as_json] == [str(photos["chelsea"]), str(photos["coffee"])]
    assert set(as_json[0]["top"][0]) == {"label", "index", "prob"}

    rows = list(csv.DictReader(io.StringIO(run_cli(*args, "--format", "csv").out)))
    assert [r["rank"] for r in rows] == ["1", "2", "1", "2"]
    assert rows[0]["label"] == as_json[0]["top"][0]["label"]
    assert abs(float(rows[0]["prob"]) - as_json[0]["top"][0]["prob"]) < 1e-6

    table = run_cli(*args).out
    assert "chelsea.jpg" in table and as_json[0]["top"][0]["label"] in table

    out_file = tmp_path / "out.jsonl"
    result = run_cli(*args, "--format", "jsonl", "--output", out_file)
    assert result.code == 0 and result.out == ""
    assert len(out_file.read_text().splitlines()) == 2


@pytest.mark.parametrize(
    "args, message",
    [(("predict", "/no/such/dir/*.jpg"), "no images found"),
     (("predict", "{img}", "--model", "resnet81"), "unknown architecture"),
     (("predict", "{img}", "--format", "xml"), "unknown --format"),
     (("predict", "/no/such/file.jpg"), "no such file")],
)
def test_usage_errors_exit_2_with_one_line(run_cli, photos, args, message):
    args = [a.replace("{img}", str(photos["chelsea"])) for a in args]
    result = run_cli(*args)
    assert result.code == 2
    assert message in result.err and "Traceback" not in result.err
    assert len(result.err.strip().splitlines()) == 1


def test_help_does_not_import_torch():
    code = (
        "import sys\nfrom cnncli.cli.app import main\n"
        "for argv in (['--help'], ['predict', '--help'], ['train', '--help'], ['export', '--help']):\n"
        "    try:\n        main(argv)\n    except SystemExit:\n        pass\n"
        "heavy = [m for m in ('torch', 'torchvision', 'timm', 'onnxruntime') if m in sys.modules]\n"
        "print('HEAVY', heavy, file=sys.stderr)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert "HEAVY []" in done.stderr, done.stderr


def _split_stderr(err: str) -> tuple[str, str]:
    """(everything before the last line, the last line) of a command's stderr."""
    lines = err.strip().splitlines()
    return "\n".join(lines[:-1]), lines[-1] if lines else ""


@pytest.mark.parametrize(
    "make_args, code, error_class",
    [(lambda tmp: ["predict", str(tmp)], 2, "UsageError"),  # an empty folder: found deep in the job
     (lambda tmp: ["predict", str(tmp), "--top-k", "zero"], 2, "BadParameter"),  # rejected by the option parser
     (lambda tmp: ["predict", str(_bad_model(tmp)), "--model", str(_bad_model(tmp))], None, "ModelFileError")],
    ids=["usage-error", "bad-option", "bad-model-file"])
def test_debug_adds_the_traceback_and_keeps_the_exit_code(run_cli, tmp_path, make_args, code, error_class):
    """Without --debug: one sentence, no traceback. With --debug (anywhere on the line): the traceback naming the
    error, then the same sentence, and the same exit code (a script must not see 1 where it would see 2)."""
    args = make_args(tmp_path)
    quiet = run_cli(*args)
    assert quiet.code == (code if code is not None else quiet.code) and quiet.code in (1, 2), quiet
    _, sentence = _split_stderr(quiet.err)
    assert "Traceback" not in quiet.err and sentence.startswith("error: "), quiet.err
    assert [line for line in quiet.err.splitlines() if line.startswith("error: ")] == [sentence]
    if code is not None:  # a usage error: that sentence is all there is
        assert quiet.err.strip() == sentence

    for loud in (run_cli("--debug", *args), run_cli(*args, "--debug")):
        assert loud.code == quiet.code, loud
        trace, last = _split_stderr(loud.err)
        assert "Traceback (most recent call last):" in trace, loud.err
        assert error_class in trace and 'File "' in trace, loud.err
        assert last == sentence  # the one sentence still ends the output


def _bad_model(folder):
    bad = folder / "bad.safetensors"
    bad.write_text("nope")
    return bad


def test_module_entry_point_debug_by_environment(tmp_path):
    """``python -m cnncli`` with CNNCLI_DEBUG=1 behaves as --debug: a traceback and the usage-error exit code 2."""
    import os

    command = [sys.executable, "-m", "cnncli", "predict", str(tmp_path)]  # an empty folder: no images
    quiet = subprocess.run(command, capture_output=True, text=True, timeout=300)
    loud = subprocess.run(command, capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, CNNCLI_DEBUG="1"))
    assert quiet.returncode == 2 and "Traceback" not in quiet.stderr
    assert quiet.stderr.strip().splitlines() == ["error: no images found in " + str(tmp_path)
                                                 + "; pass image files, folders or glob patterns."]
    assert loud.returncode == 2 and loud.stderr.startswith("Traceback (most recent call last):"), loud.stderr
    assert "cnncli.core.errors.UsageError: no images found" in loud.stderr
    assert loud.stderr.strip().splitlines()[-1] == quiet.stderr.strip()


def test_prediction_table_has_one_column_per_field_with_failed_images():
    """A failed image in the table must not add a column: top-1 only -> image, top-1, prob; with -k 3 -> + next."""
    import io

    from cnncli.predict.run import Prediction
    from cnncli.predict.writers import render_prediction_table

    preds = [Prediction(path="bad.jpg", error="not an image file."),
             Prediction(path="cat.jpg", top=[{"label": "tabby", "index": 281, "prob": 0.9},
                                            {"label": "tiger cat", "index": 282, "prob": 0.05}])]
    for k, header in ((1, ["image", "top-1", "prob"]), (3, ["image", "top-1", "prob", "next"])):
        out = io.StringIO()
        render_prediction_table(preds, k, out)
        header_line = next(line for line in out.getvalue().splitlines() if "image" in line)
        assert [cell.strip() for cell in header_line.split("┃")[1:-1]] == header
        assert ("not an image file." in out.getvalue()) == (k > 1)
