"""Reading images robustly and turning them into model input: the single preprocessing definition.

Every inference path (PyTorch, onnxruntime, training-time evaluation, export verification) calls
:func:`load_and_preprocess`, so every engine sees identical pixels. Only PIL and numpy are used here.
"""

from __future__ import annotations

import io
import math
import warnings
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from cnncli.core.errors import ImageError, ImageTooLargeError
from cnncli.models.card import Preprocessing

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm", ".jfif")

_RESAMPLE = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
}


def max_image_pixels() -> int:
    """Largest image (in pixels) we decode (CNNCLI_MAX_PIXELS); larger ones are refused as possible
    decompression bombs. PIL's own limit is kept in step, so raising ours really lets such images through."""
    from cnncli.core.limits import max_pixels

    limit = max_pixels()
    pil_limit = Image.MAX_IMAGE_PIXELS  # PIL refuses above twice this: raise it (never lower it) to let ours through
    if pil_limit is not None and 2 * pil_limit < limit:
        Image.MAX_IMAGE_PIXELS = (limit + 1) // 2
    return limit


def is_image_file(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith(".")


def load_image(path: str | Path, channels: int = 3, draft_size: tuple[int, int] | None = None) -> Image.Image:
    """Open an image as 8-bit RGB (channels=3) or L (channels=1), whatever it was stored as.

    Handles EXIF orientation, grayscale, palette and alpha (composited on white), CMYK, 16-bit and
    animated images (first frame). ``draft_size`` (width, height) lets JPEG decode at a reduced scale
    that is still at least that large, which is much faster for big photos.
    Raises ImageError with one sentence for anything unreadable.
    """
    path = Path(path)
    if not path.exists():
        raise ImageError(f"{path}: no such file.")
    if path.is_dir():
        raise ImageError(f"{path}: is a folder, not an image.")
    from cnncli.core.paths import special_file_problem

    special = special_file_problem(path)
    if special:  # a FIFO would block forever, a device never end
        raise ImageError(f"{path}: is {special}, not an image file.")
    if path.stat().st_size == 0:
        raise ImageError(f"{path}: the file is empty (0 bytes).")
    return _decode(path, str(path), channels, draft_size)


def load_image_bytes(data: bytes, name: str = "-", channels: int = 3,
                     draft_size: tuple[int, int] | None = None) -> Image.Image:
    """:func:`load_image` for an image held in memory (an upload); ``name`` labels it in error messages.
    Same checks (pixel limit, EXIF, modes), same decoding, so the same pixels as from a file."""
    if not data:
        raise ImageError(f"{name}: the file is empty (0 bytes).")
    return _decode(io.BytesIO(data), name, channels, draft_size)


def _decode(source: Path | BinaryIO, name: str, channels: int, draft_size: tuple[int, int] | None) -> Image.Image:
    limit = max_image_pixels()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(source)
            pixels = img.width * img.height
            if pixels > limit:
                raise ImageTooLargeError(
                    f"{name}: {img.width}x{img.height} is {pixels:,} pixels, over the {limit:,} limit that guards "
                    "against decompression bombs; set CNNCLI_MAX_PIXELS higher if you trust this file."
                )
            if draft_size is not None and img.format == "JPEG":
                img.draft("RGB" if channels == 3 else "L", draft_size)
            img.seek(0)  # animated GIF/WebP/TIFF: the first frame
            img.load()
            img = ImageOps.exif_transpose(img)
            return _to_8bit(img, channels)
    except ImageError:
        raise
    except UnidentifiedImageError:
        raise ImageError(f"{name}: not an image file PIL can read (wrong extension or corrupt).") from None
    except Image.DecompressionBombError:
        raise ImageTooLargeError(f"{name}: refused as a possible decompression bomb (over the {limit:,}-pixel limit); "
                                 "set CNNCLI_MAX_PIXELS higher if you trust this file.") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise ImageError(f"{name}: cannot decode the image ({exc}); the file is truncated or corrupt.") from None


def _to_8bit(img: Image.Image, channels: int) -> Image.Image:
    mode = img.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        peak = 65535.0 if mode.startswith("I;16") or arr.max(initial=0) > 255 else 255.0
        img = Image.fromarray(np.clip(arr * (255.0 / peak) + 0.5, 0, 255).astype(np.uint8), "L")
    elif mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    elif mode in ("1", "CMYK", "YCbCr", "LAB", "HSV"):
        img = img.convert("RGB" if mode != "1" else "L")
    elif mode == "PA":
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "RGBa", "La"):
        background = Image.new("RGBA", img.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, img.convert("RGBA"))
    target = "RGB" if channels == 3 else "L"
    return img if img.mode == target else img.convert(target)


def scaled_size(size: int, crop_pct: float) -> int:
    """Size before the centre crop: 224 at crop_pct 0.875 -> 256 (timm's floor(size / crop_pct))."""
    return math.floor(size / crop_pct + 1e-6)


def resize_target(width: int, height: int, pre: Preprocessing) -> tuple[int, int]:
    """Size (width, height) the image is resized to before any crop or pad."""
    out_h, out_w = pre.input_size
    if pre.resize_mode == "squash":
        return out_w, out_h
    if pre.resize_mode == "pad":
        scale = min(out_w / width, out_h / height)
        return max(1, round(width * scale)), max(1, round(height * scale))
    # crop: like torchvision Resize(int(size / crop_pct)) + CenterCrop(size) for square sizes
    scale_h, scale_w = scaled_size(out_h, pre.crop_pct), scaled_size(out_w, pre.crop_pct)
    if out_h == out_w:
        short = scale_h
        if width <= height:
            return short, int(short * height / width)
        return int(short * width / height), short
    scale = max(scale_w / width, scale_h / height)
    return max(out_w, round(width * scale)), max(out_h, round(height * scale))


def preprocess_pixels(img: Image.Image, pre: Preprocessing) -> np.ndarray:
    """PIL image -> uint8 array (H, W, C), resized, cropped or padded: the geometric half of :func:`preprocess`."""
    img = _to_8bit(img, pre.channels)
    out_h, out_w = pre.input_size
    new_w, new_h = resize_target(img.width, img.height, pre)
    if (new_w, new_h) != img.size:
        img = img.resize((new_w, new_h), _RESAMPLE[pre.interpolation])
    if pre.resize_mode == "crop":
        left = int(round((new_w - out_w) / 2.0))
        top = int(round((new_h - out_h) / 2.0))
        img = img.crop((left, top, left + out_w, top + out_h))
    elif pre.resize_mode == "pad":
        fill = tuple(int(round(m * 255)) for m in pre.mean)
        canvas = Image.new(img.mode, (out_w, out_h), fill if pre.channels == 3 else fill[0])
        canvas.paste(img, ((out_w - new_w) // 2, (out_h - new_h) // 2))
        img = canvas
    arr = np.asarray(img, dtype=np.uint8)
    return arr[:, :, None] if arr.ndim == 2 else arr


def normalize(pixels: np.ndarray, pre: Preprocessing) -> np.ndarray:
    """uint8 (..., H, W, C) -> float32 (..., C, H, W), scaled to [0, 1] and normalised with the card's mean and
    std: the arithmetic half of :func:`preprocess`. The same operations per element for one image or a batch, so
    both give identical numbers."""
    arr = pixels.astype(np.float32) * np.float32(1 / 255.0)
    mean = np.asarray(pre.mean, dtype=np.float32)
    inv_std = np.asarray([1.0 / s for s in pre.std], dtype=np.float32)
    arr = (arr - mean) * inv_std
    return np.ascontiguousarray(np.moveaxis(arr, -1, -3))


def preprocess(img: Image.Image, pre: Preprocessing) -> np.ndarray:
    """PIL image -> float32 array (C, H, W), resized, cropped or padded, and normalised."""
    return normalize(preprocess_pixels(img, pre), pre)


def draft_size_for(pre: Preprocessing) -> tuple[int, int]:
    """Smallest decode size (width, height) that still leaves the resize step downscaling."""
    out_h, out_w = pre.input_size
    if pre.resize_mode == "crop":
        return scaled_size(out_w, pre.crop_pct), scaled_size(out_h, pre.crop_pct)
    return out_w, out_h


def load_pixels(path: str | Path, pre: Preprocessing) -> np.ndarray:
    """Read one image file and return it resized and cropped, uint8 (H, W, C); :func:`normalize` finishes it."""
    return preprocess_pixels(load_image(path, pre.channels, draft_size=_draft_for_path(pre)), pre)


def load_pixels_from_bytes(data: bytes, name: str, pre: Preprocessing) -> np.ndarray:
    """:func:`load_pixels` for an image held in memory (an upload): the same decoding, draft size and geometry."""
    return preprocess_pixels(load_image_bytes(data, name, pre.channels, draft_size=_draft_for_path(pre)), pre)


def load_and_preprocess(path: str | Path, pre: Preprocessing) -> np.ndarray:
    """Read one image file and return the model input (C, H, W) float32. Raises ImageError."""
    return normalize(load_pixels(path, pre), pre)


def _draft_for_path(pre: Preprocessing) -> tuple[int, int] | None:
    # JPEG draft mode decodes at 1/2, 1/4 or 1/8 scale while keeping both sides >= this size.
    # Asking for twice the target keeps the final antialiased resize doing real work, so quality holds.
    w, h = draft_size_for(pre)
    return (2 * w, 2 * h)
