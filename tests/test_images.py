"""Image loading (modes, EXIF, bombs) and the single preprocessing definition."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import skimage_photo
from PIL import Image

from cnncli.core.errors import ImageError
from cnncli.data.images import load_image, preprocess
from cnncli.models.card import Preprocessing


@pytest.fixture(scope="module")
def cat() -> Image.Image:
    return Image.fromarray(skimage_photo("chelsea"))  # 451 x 300, RGB


def test_crop_matches_torchvision_resize_and_center_crop(cat):
    """Our numpy path gives the same pixels as torchvision's Resize(256) + CenterCrop(224) + Normalize."""
    import torch
    from torchvision.transforms import v2

    pre = Preprocessing(interpolation="bilinear")
    ours = preprocess(cat, pre)
    reference = v2.Compose([
        v2.PILToTensor(), v2.Resize(256, interpolation=v2.InterpolationMode.BILINEAR, antialias=True),
        v2.CenterCrop(224), v2.ToDtype(torch.float32, scale=True), v2.Normalize(pre.mean, pre.std),
    ])(cat).numpy()
    assert ours.shape == (3, 224, 224) and ours.dtype == np.float32
    assert np.abs(ours - reference).max() < 0.05  # PIL vs tensor resampling differ by rounding only
    assert np.abs(ours - reference).mean() < 0.01


def test_pad_keeps_the_whole_image_and_squash_fills_the_frame(cat):
    pad = preprocess(cat, Preprocessing(input_size=(64, 64), resize_mode="pad", mean=(0.5,) * 3, std=(0.5,) * 3))
    # chelsea is wider than tall: letterbox bands top and bottom hold the mean colour (~0 after normalising)
    assert pad.shape == (3, 64, 64)
    assert np.allclose(pad[:, 0, :], 0, atol=0.01) and np.allclose(pad[:, -1, :], 0, atol=0.01)  # one 8-bit step
    assert not np.allclose(pad[:, 32, :], 0)
    squash = preprocess(cat, Preprocessing(input_size=(32, 48), resize_mode="squash"))
    assert squash.shape == (3, 32, 48)
    assert not np.allclose(squash[:, 0, :], squash[:, 0, :].mean())


def test_grayscale_model_input_has_one_channel(cat):
    out = preprocess(cat, Preprocessing(input_size=(32, 32), channels=1, mean=(0.5,), std=(0.5,)))
    assert out.shape == (1, 32, 32)


def test_exif_orientation_is_applied(tmp_path, cat):
    path = tmp_path / "rotated.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise for display
    cat.save(path, exif=exif)
    img = load_image(path)
    assert img.size == (cat.height, cat.width)


def test_modes_are_normalised_to_rgb(tmp_path, cat):
    small = cat.resize((40, 30))
    small.convert("CMYK").save(tmp_path / "cmyk.jpg")
    rgba = small.convert("RGBA")
    rgba.putalpha(0)  # fully transparent: composited on white
    rgba.save(tmp_path / "rgba.png")
    arr16 = (np.asarray(small.convert("L"), dtype=np.uint16) * 257)
    Image.fromarray(arr16).save(tmp_path / "gray16.png")
    small.convert("P").save(tmp_path / "palette.gif")
    frames = [small, small.transpose(Image.Transpose.FLIP_LEFT_RIGHT)]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:])

    assert load_image(tmp_path / "cmyk.jpg").mode == "RGB"
    white = np.asarray(load_image(tmp_path / "rgba.png"))
    assert white.min() == 255
    gray16 = np.asarray(load_image(tmp_path / "gray16.png", channels=1))
    assert np.abs(gray16.astype(int) - np.asarray(small.convert("L"), dtype=int)).max() <= 1
    assert load_image(tmp_path / "palette.gif").mode == "RGB"
    first = np.asarray(load_image(tmp_path / "anim.gif"), dtype=int)
    assert np.abs(first - np.asarray(small, dtype=int)).mean() < 8  # frame 0, not the flipped frame 1


@pytest.mark.parametrize(
    "name, content, message",
    [("empty.jpg", b"", "empty"), ("text.png", b"just some text\n", "not an image"),
     ("truncated.jpg", None, "truncated")],
)
def test_bad_files_raise_one_sentence(tmp_path, cat, name, content, message):
    path = tmp_path / name
    if content is None:
        cat.save(path, quality=90)
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    else:
        path.write_bytes(content)
    with pytest.raises(ImageError, match=message) as info:
        load_image(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_decompression_bomb_is_refused(tmp_path, monkeypatch):
    path = tmp_path / "big.png"
    Image.new("L", (300, 300)).save(path)
    monkeypatch.setenv("CNNCLI_MAX_PIXELS", "10000")
    with pytest.raises(ImageError, match="decompression bomb"):
        load_image(path)


def test_invalid_preprocessing_is_rejected():
    with pytest.raises(ValueError):
        Preprocessing(resize_mode="stretch")
    with pytest.raises(ValueError):
        Preprocessing(channels=1)  # three means for one channel
