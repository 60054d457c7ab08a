"""Portrait image loading, square cropping and tensor conversion.

:func:`load_image` always returns an 8-bit RGB :class:`PIL.Image.Image` with EXIF orientation
applied, whatever the file's mode (alpha, palette, grayscale, 16-bit, float, CMYK), and turns
every problem a user can cause into an :class:`~talkfast.errors.InputError`.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from talkfast.errors import InputError

__all__ = ["MIN_SIDE", "load_image", "square_crop", "square_crop_box", "to_tensor", "to_uint8"]

#: Images with a side shorter than this are rejected.
MIN_SIDE = 32

StrPath = str | os.PathLike[str]

_ALPHA_MODES = {"RGBA", "RGBa", "LA", "La", "PA"}
_SIXTEEN_BIT_MODES = {"I;16", "I;16L", "I;16B", "I;16N"}


def load_image(path: StrPath, *, max_pixels: int = 64_000_000) -> Image.Image:
    """Load ``path`` as an RGB image.

    EXIF orientation is applied; transparency is composited on white; grayscale, 16-bit, float and
    CMYK images are converted to 8-bit RGB (16-bit data is rescaled, not clipped). Raises
    :class:`InputError` if the file is missing, not a decodable image, truncated, larger than
    ``max_pixels`` or has a side shorter than :data:`MIN_SIDE` pixels.
    """
    p = Path(path)
    name = str(path)
    if not p.exists():
        raise InputError(f"Image file not found: {name}")
    if p.is_dir():
        raise InputError(f"Image path is a directory, not a file: {name}")
    try:
        with Image.open(p) as img:
            width, height = img.size
            if width * height > max_pixels:
                raise InputError(
                    f"Image {name} is too large ({width}x{height} = {width * height:,} pixels, "
                    f"limit {max_pixels:,}); downscale it first."
                )
            img.load()
            img = _exif_transpose(img)
    except InputError:
        raise
    except Image.DecompressionBombError as err:
        raise InputError(f"Image {name} is too large to decode safely ({err}); downscale it first.") from err
    except UnidentifiedImageError as err:
        raise InputError(f"Image file {name} is not a recognised image format (or is corrupt).") from err
    except (OSError, SyntaxError, ValueError, EOFError, struct.error, IndexError, TypeError) as err:
        # Truncated or corrupt data surfaces from load() as OSError ("image file is truncated");
        # plugins raise SyntaxError/ValueError/EOFError/struct.error etc. for malformed headers.
        raise InputError(f"Image file {name} is corrupt or truncated: {err}") from err

    rgb = _to_rgb(img, name)
    if min(rgb.size) < MIN_SIDE:
        raise InputError(
            f"Image {name} is too small ({rgb.width}x{rgb.height}); each side must be at least "
            f"{MIN_SIDE} px (a portrait of 512 px or more works best)."
        )
    return rgb


def _exif_transpose(img: Image.Image) -> Image.Image:
    """Apply the EXIF orientation tag; an unreadable EXIF block is ignored, not fatal."""
    try:
        out = ImageOps.exif_transpose(img)
    except (OSError, SyntaxError, ValueError, TypeError, KeyError, ZeroDivisionError):
        out = img.copy()
    return out if out is not None else img.copy()


def _to_rgb(img: Image.Image, name: str) -> Image.Image:
    """Convert any Pillow mode to 8-bit RGB."""
    mode = img.mode
    if mode == "RGB":
        return img
    has_transparency = "transparency" in img.info
    if mode in _ALPHA_MODES or (has_transparency and mode in {"P", "L", "RGB", "1"}):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if mode in _SIXTEEN_BIT_MODES or mode == "I":
        # Integer data: treat as 16-bit (PNG 16-bit grayscale) and map 0..65535 to 0..255.
        arr = np.asarray(img).astype(np.float64)
        arr = np.clip(arr, 0.0, 65535.0) / 257.0
        return Image.fromarray(np.round(arr).astype(np.uint8), mode="L").convert("RGB")
    if mode == "F":
        # Float data: [0, 1] is scaled to [0, 255]; anything else is assumed to be 0..255.
        arr = np.nan_to_num(np.asarray(img, dtype=np.float64), nan=0.0, posinf=0.0, neginf=0.0)
        if arr.size and arr.min() >= 0.0 and arr.max() <= 1.0:
            arr = arr * 255.0
        return Image.fromarray(np.round(np.clip(arr, 0.0, 255.0)).astype(np.uint8), mode="L").convert("RGB")
    try:
        return img.convert("RGB")  # L, 1, P, CMYK, YCbCr, ...
    except (ValueError, OSError) as err:
        raise InputError(f"Image {name} has unsupported colour mode {mode!r}; save it as RGB PNG or JPEG.") from err


def square_crop_box(
    width: int, height: int, center: tuple[float, float] | None = None
) -> tuple[int, int, int]:
    """Largest square inside a ``width`` x ``height`` image, centred on ``center`` (x, y).

    The square is shifted back inside the image when ``center`` is near an edge; without
    ``center`` it is centred in the image. Returns ``(left, top, side)`` in pixels.
    """
    if width <= 0 or height <= 0:
        raise ValueError(f"image size must be positive, got {width}x{height}")
    side = min(width, height)
    cx, cy = (width / 2.0, height / 2.0) if center is None else (float(center[0]), float(center[1]))
    left = int(round(cx - side / 2.0))
    top = int(round(cy - side / 2.0))
    left = min(max(left, 0), width - side)
    top = min(max(top, 0), height - side)
    return left, top, side


def square_crop(
    img: Image.Image,
    size: int,
    center: tuple[float, float] | None = None,
    box: tuple[int, int, int, int] | None = None,
) -> Image.Image:
    """Crop the largest square that fits ``img`` and resize it to ``size`` x ``size`` (LANCZOS).

    The square is centred on ``center`` (x, y), or on the centre of ``box`` (left, top, right,
    bottom, e.g. a face box), or on the image centre; see :func:`square_crop_box`.
    """
    if size <= 0:
        raise ValueError(f"size must be positive, got {size}")
    if center is not None and box is not None:
        raise ValueError("pass either center or box, not both")
    if box is not None:
        x0, y0, x1, y1 = box
        center = ((x0 + x1) / 2.0, (y0 + y1) / 2.0)
    left, top, side = square_crop_box(img.width, img.height, center)
    crop = img.crop((left, top, left + side, top + side))
    if side != size:
        crop = crop.resize((size, size), Image.Resampling.LANCZOS)
    return crop


def to_tensor(img: Image.Image) -> torch.Tensor:
    """RGB image -> float32 tensor of shape (3, H, W) with values in [-1, 1]."""
    if img.mode != "RGB":
        img = img.convert("RGB")
    arr = np.array(img, dtype=np.uint8)  # copy: torch needs a writable buffer
    return torch.from_numpy(arr).permute(2, 0, 1).to(torch.float32).div_(127.5).sub_(1.0)


def to_uint8(t: torch.Tensor, value_range: tuple[float, float] = (0.0, 1.0)) -> np.ndarray:
    """Image tensor(s) (..., 3, H, W) in ``value_range`` -> uint8 numpy (..., H, W, 3).

    The default range is [0, 1]; pass ``value_range=(-1, 1)`` to invert :func:`to_tensor`.
    Values outside the range are clipped. A batch (T, 3, H, W) becomes (T, H, W, 3).
    """
    if t.ndim < 3 or t.shape[-3] != 3:
        raise ValueError(f"expected a (..., 3, H, W) tensor, got shape {tuple(t.shape)}")
    lo, hi = value_range
    if hi <= lo:
        raise ValueError(f"invalid value_range {value_range}")
    x = t.detach().to(device="cpu", dtype=torch.float32)
    x = ((x - lo) / (hi - lo)).clamp_(0.0, 1.0).mul_(255.0).round_()
    return x.to(torch.uint8).movedim(-3, -1).contiguous().numpy()
