"""cnncli model files: safetensors + card round trip, atomic writes, and refusal of pickles."""

from __future__ import annotations

import os
import pickle

import pytest
import torch

from cnncli.core.errors import ModelFileError
from cnncli.models.card import ModelCard, Preprocessing
from cnncli.models.checkpoint import load_model, read_card, save_model
from cnncli.models.registry import create_model


class WritesMarker:
    """Unpickling this object would create a marker file (what a malicious checkpoint does)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_round_trip_gives_identical_logits_and_card(tmp_path):
    torch.manual_seed(1)
    pre = Preprocessing(input_size=(48, 48), resize_mode="pad", interpolation="bicubic",
                        mean=(0.4,), std=(0.2,), channels=1)
    built = create_model("simplecnn", classes=["a", "b", "10", "2"], in_chans=1)
    built.card.preprocessing = pre
    built.card.training = {"epochs": 3, "best_val_acc": 0.5}
    path = save_model(tmp_path / "m.safetensors", built.model, built.card)
    model, card = load_model(path)
    x = torch.rand(2, 1, 48, 48)
    built.model.eval()
    assert torch.equal(built.model(x), model(x))
    assert card.classes == ["a", "b", "10", "2"]
    assert card.preprocessing == pre
    assert card.training == {"epochs": 3, "best_val_acc": 0.5}
    assert read_card(path).to_dict() == card.to_dict()  # the torch-free header read agrees


def test_save_is_atomic_and_leaves_no_temporary_files(tmp_path, monkeypatch):
    built = create_model("lenet5", num_classes=2, in_chans=1)
    path = tmp_path / "m.safetensors"
    save_model(path, built.model, built.card)
    before = path.read_bytes()

    import safetensors.torch

    def broken_save(model, filename, metadata=None):
        with open(filename, "wb") as fh:
            fh.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(safetensors.torch, "save_model", broken_save)
    with pytest.raises(OSError):
        save_model(path, built.model, built.card)
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["m.safetensors"]


@pytest.mark.parametrize("name", ["evil.safetensors", "evil.pt"])
def test_pickle_model_file_is_refused_without_running_it(tmp_path, run_cli, photos, name):
    marker = tmp_path / "pwned"
    path = tmp_path / name
    with open(path, "wb") as fh:
        pickle.dump({"state_dict": WritesMarker(marker)}, fh)
    with pytest.raises(ModelFileError, match="pickle"):
        load_model(path)
    result = run_cli("predict", photos["chelsea"], "--model", path)
    assert result.code == 2 and "pickle" in result.err and "Traceback" not in result.err  # a bad model: usage error
    assert not marker.exists()


def test_pickle_weights_file_is_refused_by_weights_only(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "weights.pt"
    torch.save({"fc.weight": WritesMarker(marker)}, path)
    with pytest.raises(ModelFileError, match="not a plain state dict"):
        create_model("lenet5", weights=str(path))
    assert not marker.exists()


def test_plain_state_dict_loads_as_weights(tmp_path):
    torch.manual_seed(2)
    source = create_model("lenet5", num_classes=4, in_chans=1).model
    torch.save(source.state_dict(), tmp_path / "w.pt")
    loaded = create_model("lenet5", weights=str(tmp_path / "w.pt"), in_chans=1)
    assert loaded.card.num_classes == 4
    x = torch.rand(1, 1, 32, 32)
    assert torch.equal(source.eval()(x), loaded.model.eval()(x))


def test_truncated_and_foreign_files_are_clear_errors(tmp_path, tiny_model_file):
    truncated = tmp_path / "t.safetensors"
    truncated.write_bytes(tiny_model_file.read_bytes()[:1000])
    with pytest.raises(ModelFileError):
        load_model(truncated)
    text = tmp_path / "notes.safetensors"
    text.write_text("hello, this is not a model")
    with pytest.raises(ModelFileError, match="not a safetensors"):
        read_card(text)
    from safetensors.torch import save_file

    bare = tmp_path / "bare.safetensors"
    save_file({"w": torch.zeros(2)}, str(bare))
    with pytest.raises(ModelFileError, match="without cnncli metadata"):
        read_card(bare)


def test_newer_format_version_is_refused():
    card = ModelCard(arch="lenet5", classes=["a", "b"]).to_dict()
    card["format_version"] = 99
    with pytest.raises(ModelFileError, match="upgrade cnncli"):
        ModelCard.from_dict(card)
