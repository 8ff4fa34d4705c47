"""Shared fixtures: real photos from scikit-image written to temporary folders, and an in-process CLI runner."""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import numpy as np
import pytest
from PIL import Image


class CliResult(NamedTuple):
    code: int
    out: str
    err: str


@pytest.fixture(scope="session", autouse=True)
def isolated_cache(tmp_path_factory):
    """Every test session gets its own cnncli cache (the ONNX fast-path exports), never the user's."""
    import os

    path = tmp_path_factory.mktemp("cnncli-cache")
    old = os.environ.get("CNNCLI_CACHE")
    os.environ["CNNCLI_CACHE"] = str(path)
    yield path
    if old is None:
        os.environ.pop("CNNCLI_CACHE", None)
    else:
        os.environ["CNNCLI_CACHE"] = old


@pytest.fixture
def run_cli(capsys):
    """Run ``cnncli ARGS`` in this process through the real entry point; returns exit code, stdout, stderr."""
    from cnncli.cli.app import main

    def run(*args: str) -> CliResult:
        capsys.readouterr()
        try:
            main([str(a) for a in args])
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        captured = capsys.readouterr()
        return CliResult(code, captured.out, captured.err)

    return run


def skimage_photo(name: str) -> np.ndarray:
    from skimage import data

    return getattr(data, name)()


@pytest.fixture(scope="session")
def photos(tmp_path_factory) -> dict[str, Path]:
    """chelsea (a cat) and coffee (a cup of espresso) as JPEG files."""
    folder = tmp_path_factory.mktemp("photos")
    paths = {}
    for name in ("chelsea", "coffee"):
        path = folder / f"{name}.jpg"
        Image.fromarray(skimage_photo(name)).save(path, quality=95)
        paths[name] = path
    return paths


@pytest.fixture
def calib_crops(photos, tmp_path) -> Path:
    """A folder of 8 calibration images for int8: four offset 200x200 crops of each photo."""
    calib = tmp_path / "calib"
    calib.mkdir()
    for i, path in enumerate(photos.values()):
        img = Image.open(path)
        for j in range(4):
            img.crop((j * 20, j * 10, j * 20 + 200, j * 10 + 200)).save(calib / f"{i}_{j}.jpg")
    return calib


@pytest.fixture(scope="session")
def imagenet_samples() -> list[tuple[Path, int]]:
    """The 20 ImageNet validation images that the foolbox package ships (224x224 JPEGs named
    imagenet_<n>_<class index>.jpg), as (path, class index) pairs; read in place, no download."""
    import importlib.util

    folder = Path(importlib.util.find_spec("foolbox").submodule_search_locations[0]) / "data"
    return [(path, int(path.stem.split("_")[2])) for path in sorted(folder.glob("imagenet_*.jpg"))]


@pytest.fixture(scope="session")
def tiny_model_file(tmp_path_factory) -> Path:
    """A small simplecnn model file with three named classes (random weights, fixed seed)."""
    import torch

    from cnncli.models.checkpoint import save_model
    from cnncli.models.registry import create_model

    torch.manual_seed(0)
    built = create_model("simplecnn", classes=["brick", "grass", "gravel"])
    path = tmp_path_factory.mktemp("models") / "tiny.safetensors"
    save_model(path, built.model, built.card)
    return path


@pytest.fixture(scope="module")
def cached_tiny(tiny_model_file) -> Path:
    """The tiny model with its onnxruntime export already in the (test session's) cache, as a user's second run
    (once per module, as each serve test module had it)."""
    from cnncli.engines.cache import prepare_cached_onnx

    prepare_cached_onnx(str(tiny_model_file), quiet=True)
    return tiny_model_file
