"""Issue 19 item 6: `export --int8 static` said "no labelled validation set recorded" when one was recorded but its
dataset had changed or gone (export/judge.py swallowed the UsageError, OSError and ValueError). What is said now
is what is true: recorded, and why it cannot be used (or, with the training images' hashes, the images of the
changed dataset the model did not train on)."""

from __future__ import annotations

import shutil

import pytest
from test_evaluate_honest import DIGITS, flat, old_card_without_hashes, recorded, save_lenet
from train_data import write_digits


@pytest.fixture
def dataset_and_model(tmp_path):
    data = write_digits(tmp_path / "digits", per_class=6)
    model = save_lenet(tmp_path / "m.safetensors", DIGITS, recorded(data))
    return data, model


def test_recorded_validation_says_why_it_cannot_be_used(dataset_and_model):
    """recorded_validation: the hold-out as recorded; after an image was added, the unseen images (hashes
    recorded) or an UnusableValidation naming the change (no hashes); the dataset gone: UnusableValidation saying
    so. Fails on the old code, which returned None ("none recorded") for both."""
    from cnncli.export.judge import UnusableValidation, recorded_validation
    from cnncli.models.checkpoint import read_card

    data, model = dataset_and_model
    samples, description = recorded_validation(read_card(model))
    assert len(samples) == 10 and description.startswith("the model's recorded validation set (10 images")

    shutil.copy(next((data / "3").iterdir()), data / "3" / "extra.png")
    samples, description = recorded_validation(read_card(model))
    assert len(samples) in (10, 11) and "did not train on" in description and "has changed" in description

    old_card_without_hashes(model)
    with pytest.raises(UnusableValidation, match="61 images now, 60 recorded"):
        recorded_validation(read_card(model))

    shutil.rmtree(data)
    with pytest.raises(UnusableValidation, match=f"its dataset {data.resolve()} is not there any more"):
        recorded_validation(read_card(model))


def test_export_int8_static_says_the_recorded_set_is_gone_not_that_none_is_recorded(dataset_and_model, tmp_path,
                                                                                    run_cli):
    """The CLI: the export still succeeds (the int8 file is fine) and says why the figures cannot be given."""
    data, model = dataset_and_model
    calib = tmp_path / "calib"
    shutil.copytree(data / "1", calib)
    shutil.rmtree(data)
    result = run_cli("export", model, "--int8", "static", "--calib", calib, "-o", tmp_path / "m.int8.onnx",
                     "--no-verify")
    assert result.code == 0, result.err
    text = flat(result.err)
    assert "no labelled validation set recorded" not in text
    assert (f"int8 not judged on the validation set the model file records: its dataset {data.resolve()} is not "
            "there any more") in text
