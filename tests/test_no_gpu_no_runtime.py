"""On a machine without an NVIDIA GPU, every command that takes ``--device`` refuses ``--device cuda`` in one
sentence, exit 2, before any work (nothing written); without any onnxruntime build (neither cnncli[cpu] nor
cnncli[gpu]) ``--engine auto`` runs PyTorch and an ONNX file gets one sentence naming the extras; with both builds
installed (they ship the same module) ``--device cuda`` names that as the reason."""

from __future__ import annotations

import json

import pytest
from train_data import write_textures


def _no_cuda() -> bool:
    import onnxruntime
    import torch

    return not torch.cuda.is_available() and "CUDAExecutionProvider" not in onnxruntime.get_available_providers()


needs_no_gpu = pytest.mark.skipif(not _no_cuda(), reason="this machine has a CUDA GPU (the cuda tests cover it)")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Class folders of the tiny model's three classes."""
    return write_textures(tmp_path_factory.mktemp("textures"), per_class=4, crop=32)


@needs_no_gpu
@pytest.mark.parametrize("device", ["cuda", "cuda:1", "0"])
@pytest.mark.parametrize("command", ["predict", "predict-onnx", "evaluate", "train", "finetune", "serve"])
def test_device_cuda_without_a_gpu_is_one_sentence_and_exit_2(command, device, data, tiny_model_file, tmp_path,
                                                               run_cli):
    image = next(data.rglob("*.png"))
    out = tmp_path / "out"
    if command == "predict-onnx":
        onnx_file = tmp_path / "tiny.onnx"
        assert run_cli("export", tiny_model_file, "-o", onnx_file).code == 0
        args = ["predict", image, "-m", onnx_file, "-o", out / "p.json"]
    elif command == "predict":
        args = ["predict", image, "-m", tiny_model_file, "-o", out / "p.json"]
    elif command == "evaluate":
        args = ["evaluate", tiny_model_file, data, "--plots", out]
    elif command == "train":
        args = ["train", data, "--arch", "simplecnn", "--epochs", "1", "-o", out]
    elif command == "finetune":
        args = ["finetune", data, "--epochs", "1", "-o", out]  # the bundled ImageNet backbone
    else:
        args = ["serve", "-m", tiny_model_file, "--port", "0"]
    result = run_cli(*args, "--device", device)
    assert result.code == 2, (result.code, result.err)
    lines = result.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: --device"), result.err
    assert "cuda" in lines[0] and ("GPU" in lines[0] or "CUDA" in lines[0]) and "--device cpu" in lines[0]
    assert not out.exists()


def test_without_onnxruntime_auto_runs_pytorch_and_onnx_files_say_what_to_install(tiny_model_file, data, tmp_path,
                                                                                  run_cli):
    image = next(data.rglob("*.png"))
    onnx_file = tmp_path / "tiny.onnx"
    assert run_cli("export", tiny_model_file, "-o", onnx_file).code == 0
    expected = json.loads(run_cli("predict", image, "-m", tiny_model_file, "--engine", "torch", "-f", "json").out)
    with pytest.MonkeyPatch.context() as patch:  # as after `pip install cnncli` without the cpu or gpu extra
        import sys

        for name in [m for m in sys.modules if m == "onnxruntime" or m.startswith("onnxruntime.")]:
            patch.delitem(sys.modules, name)
        patch.setitem(sys.modules, "onnxruntime", None)
        auto = run_cli("predict", image, "-m", tiny_model_file, "-f", "json")
        onnx = run_cli("predict", image, "-m", onnx_file)
    assert auto.code == 0, auto.err
    assert json.loads(auto.out)[0]["top"] == expected[0]["top"]  # PyTorch ran it
    assert onnx.code == 1 and onnx.err.strip().count("\n") == 0, onnx.err
    assert "onnxruntime is not installed" in onnx.err and "cnncli[cpu]" in onnx.err and "cnncli[gpu]" in onnx.err


@needs_no_gpu
def test_both_builds_installed_is_named_when_cuda_is_asked_for(tiny_model_file, tmp_path, run_cli, monkeypatch,
                                                               data):
    """A second distribution's metadata on sys.path, as `uv run` leaves after a gpu sync without UV_NO_GROUP=cpu."""
    import sys

    site = tmp_path / "site"
    info = site / "onnxruntime_gpu-1.31.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: onnxruntime-gpu\nVersion: 1.31.1\n")
    onnx_file = tmp_path / "tiny.onnx"
    assert run_cli("export", tiny_model_file, "-o", onnx_file).code == 0
    monkeypatch.setattr(sys, "path", [*sys.path, str(site)])
    out = run_cli("predict", next(data.rglob("*.png")), "-m", onnx_file, "--device", "cuda")
    assert out.code == 2 and "onnxruntime and onnxruntime-gpu are both installed" in out.err, out.err
    assert out.err.strip().count("\n") == 0
