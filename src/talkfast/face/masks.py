"""Hallo's region masks for the audio cross-attention, the FaceLocator input and a foreground-token mask.

Hallo's audio attention has three branches whose outputs are multiplied by soft masks before
they are added to the residual stream: the *full* (pose/background) branch by ``full``, the face
(expression) branch by ``face`` and the lip branch by ``lip``. The recipe (Hallo's
``image_processor`` / ``get_blur_mask`` / ``get_sep_face_mask`` / ``get_background_mask``):

1. hard 0/1 rectangles at the image resolution: the face box expanded by 1.2, the lip box by
   2.0 (both about their centres and shifted back inside the image, see :meth:`Box.expand`);
2. resize each to ``base x base`` (bilinear, ``cv2.resize``), Gaussian-blur it (``cv2.GaussianBlur``,
   kernel 51 for the face, 31 for the lips at ``base=64``, sigma from the kernel size) and
   min-max normalise it to ``[0, 1]``;
3. ``lip = L``, ``face = clip(F - L, 0, 1)``, ``full = 1 - F`` (F, L: blurred face and lip maps);
4. resize each to every level size (bilinear with antialiasing, like torchvision ``Resize`` on a
   PIL image) and flatten row-major.

Differences from Hallo: we stay in float32 (Hallo round-trips through 8-bit PNGs, a difference
of at most about 1/255), and a constant blurred map (a box covering the whole image, or an empty
box) is kept as it is instead of becoming all zeros as ``cv2.normalize`` would make it.

Because F >= L wherever the lip map is non-zero, ``full + face + lip = 1`` almost everywhere: the
three branches form a soft partition of unity, and the total amount of audio conditioning added
to each token is about the same everywhere. The no-face fallback keeps that property.

EchoMimic v1 uses a single FaceLocator mask instead: :func:`echomimic_face_mask` (with the square
crop of :func:`echomimic_crop_rect`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from talkfast.face.detect import Box, FaceRegions

__all__ = [
    "MaskSet", "build_masks", "face_locator_image", "token_mask", "scaled_kernel",
    "echomimic_crop_rect", "echomimic_face_mask", "echomimic_crop",
]


@dataclass
class MaskSet:
    """Soft region masks per UNet level.

    ``full[i]``, ``face[i]`` and ``lip[i]`` are float32 tensors of shape ``(h_i * w_i,)`` (row-major
    flattening of an ``(h_i, w_i)`` map, values in ``[0, 1]``) for ``level_sizes[i] = (h_i, w_i)``.
    """

    full: list[torch.Tensor]
    face: list[torch.Tensor]
    lip: list[torch.Tensor]
    level_sizes: list[tuple[int, int]] = field(default_factory=list)

    def level(self, i: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(full, face, lip)`` of level ``i``."""
        return self.full[i], self.face[i], self.lip[i]

    def to(self, device=None, dtype: torch.dtype | None = None) -> "MaskSet":
        """A copy with every tensor moved/cast."""

        def move(ts: list[torch.Tensor]) -> list[torch.Tensor]:
            return [t.to(device=device, dtype=dtype) for t in ts]

        return MaskSet(move(self.full), move(self.face), move(self.lip), list(self.level_sizes))


def scaled_kernel(kernel: int, base: int, reference_base: int = 64) -> int:
    """Gaussian kernel size for a ``base x base`` map: ``kernel * base / reference_base``, nearest odd, >= 1."""
    if kernel < 1 or base < 1:
        raise ValueError(f"kernel and base must be >= 1, got kernel={kernel}, base={base}")
    size = kernel * base / reference_base
    return max(1, 2 * int(np.floor((size - 1) / 2 + 0.5)) + 1)


def _level_hw(size) -> tuple[int, int]:
    if isinstance(size, (int, np.integer)):
        h = w = int(size)
    else:
        h, w = (int(v) for v in size)
    if h < 1 or w < 1:
        raise ValueError(f"level sizes must be positive, got {size}")
    return h, w


def _rasterise(box: Box, image_w: int, image_h: int) -> np.ndarray:
    """Hard float32 0/1 mask of ``box`` (rounded to whole pixels, like Hallo's slicing)."""
    mask = np.zeros((image_h, image_w), dtype=np.float32)
    x0, y0, x1, y1 = box.clip(image_w, image_h).to_int()
    if x1 > x0 and y1 > y0:
        mask[y0:y1, x0:x1] = 1.0
    return mask


def _minmax(x: np.ndarray) -> np.ndarray:
    lo, hi = float(x.min()), float(x.max())
    if hi - lo < 1e-6:  # constant map: keep its value instead of collapsing it to zeros
        return np.clip(x, 0.0, 1.0).astype(np.float32)
    return ((x - lo) / (hi - lo)).astype(np.float32)


def _soft(box: Box, image_w: int, image_h: int, base: int, kernel: int) -> np.ndarray:
    hard = _rasterise(box, image_w, image_h)
    small = cv2.resize(hard, (base, base), interpolation=cv2.INTER_LINEAR)
    blurred = cv2.GaussianBlur(small, (kernel, kernel), 0)
    return _minmax(blurred)


def _to_levels(m: np.ndarray, sizes: list[tuple[int, int]]) -> list[torch.Tensor]:
    src = torch.from_numpy(np.ascontiguousarray(m, dtype=np.float32))[None, None]
    out = []
    for h, w in sizes:
        if (h, w) == tuple(src.shape[-2:]):
            t = src
        else:
            t = F.interpolate(src, size=(h, w), mode="bilinear", align_corners=False, antialias=True)
        out.append(t.clamp(0.0, 1.0).reshape(-1).contiguous().clone())
    return out


def build_masks(
    regions: FaceRegions,
    level_sizes: Sequence[int | tuple[int, int]] = (64, 32, 16, 8),
    face_expand: float = 1.2,
    lip_expand: float = 2.0,
    base: int = 64,
    face_kernel: int = 51,
    lip_kernel: int = 31,
) -> MaskSet:
    """Build Hallo's ``full`` / ``face`` / ``lip`` masks for every level (see the module docstring).

    ``level_sizes`` entries are ints (square levels) or ``(h, w)`` pairs. The soft maps are made at
    ``base x base``; ``face_kernel`` and ``lip_kernel`` are the kernel sizes *at base 64* and are
    scaled by ``base / 64`` (to the nearest odd size, see :func:`scaled_kernel`) for other bases,
    so a 128-pixel image with latents of 16 can use ``base=32``, ``level_sizes=(16, 8, 4, 2)``.

    **No face detected** (``regions.detected`` is False; :func:`detect_face` warned about it):
    "full-frame" masks that keep the soft partition of unity the model was trained with:

    * ``lip`` = the usual blurred lip map of the prior mouth box (``regions.lip``, centred low in
      the frame), so a centred face the detector missed (profile, stylised, occluded) can still
      lip-sync;
    * ``face = 1 - lip``: the expression branch covers the whole frame, since the face may be
      anywhere;
    * ``full = 0``: without a face location we cannot tell head/background from face, and an
      audio-driven pose/background branch applied to an unknown layout is the most likely source
      of wobbling backgrounds, so head pose is left to the motion module and the reference.

    Every token still receives exactly one unit of audio conditioning (``full + face + lip = 1``),
    so the magnitude of the audio signal stays in the range seen in training.
    """
    if base < 4:
        raise ValueError(f"base must be >= 4, got {base}")
    if face_expand <= 0 or lip_expand <= 0:
        raise ValueError(f"expand ratios must be > 0, got face {face_expand}, lip {lip_expand}")
    sizes = [_level_hw(s) for s in level_sizes]
    image_w, image_h = (int(v) for v in regions.image_size)
    if image_w < 1 or image_h < 1:
        raise ValueError(f"invalid image size {regions.image_size}")
    k_face = scaled_kernel(face_kernel, base)
    k_lip = scaled_kernel(lip_kernel, base)

    lip_box = regions.lip.expand(lip_expand, image_w, image_h)
    lip = _soft(lip_box, image_w, image_h, base, k_lip)
    if regions.detected:
        face_box = regions.face.expand(face_expand, image_w, image_h)
        face_blur = _soft(face_box, image_w, image_h, base, k_face)
        face = np.clip(face_blur - lip, 0.0, 1.0)
        full = 1.0 - face_blur
    else:
        face = 1.0 - lip
        full = np.zeros_like(lip)
    return MaskSet(
        full=_to_levels(full, sizes),
        face=_to_levels(face, sizes),
        lip=_to_levels(lip, sizes),
        level_sizes=sizes,
    )


def face_locator_image(regions: FaceRegions, size: int | tuple[int, int] = 512, face_expand: float = 1.2) -> torch.Tensor:
    """The FaceLocator input: the ``face_expand``-expanded face box as a hard 0/1 rectangle.

    Returns a float32 tensor ``(3, H, W)`` (``size`` is an int for a square image or ``(W, H)``),
    the box mapped from ``regions.image_size`` to the output size (the image is assumed to be
    resized, not cropped, to that size). With ``detected=False`` the box is the portrait prior,
    which after expansion covers almost the whole frame.
    """
    if isinstance(size, (int, np.integer)):
        out_w = out_h = int(size)
    else:
        out_w, out_h = (int(v) for v in size)
    if out_w < 1 or out_h < 1:
        raise ValueError(f"size must be positive, got {size}")
    image_w, image_h = (int(v) for v in regions.image_size)
    box = regions.face.expand(face_expand, image_w, image_h).scale(out_w / image_w, out_h / image_h)
    mask = torch.from_numpy(_rasterise(box, out_w, out_h))
    return mask[None].expand(3, out_h, out_w).contiguous()


def token_mask(regions: FaceRegions, grid: tuple[int, int], dilate: float = 0.1) -> torch.Tensor:
    """Foreground tokens of an ``(h, w)`` token grid laid over the image, flattened row-major.

    A token is foreground when its cell overlaps the face box dilated by ``dilate`` times the box
    width (left and right) and height (top and bottom). Returns a ``torch.bool`` tensor ``(h*w,)``;
    all True when no face was detected (everything may be face).
    """
    h, w = _level_hw(grid)
    if dilate < 0:
        raise ValueError(f"dilate must be >= 0, got {dilate}")
    if not regions.detected:
        return torch.ones(h * w, dtype=torch.bool)
    image_w, image_h = (float(v) for v in regions.image_size)
    box = regions.face
    dx, dy = dilate * box.width, dilate * box.height
    x0, x1 = (box.x0 - dx) / image_w * w, (box.x1 + dx) / image_w * w
    y0, y1 = (box.y0 - dy) / image_h * h, (box.y1 + dy) / image_h * h
    cols = torch.arange(w, dtype=torch.float64)
    rows = torch.arange(h, dtype=torch.float64)
    col_in = (cols + 1 > x0) & (cols < x1)
    row_in = (rows + 1 > y0) & (rows < y1)
    if not bool(col_in.any()):  # degenerate box: keep the nearest column/row
        col_in[int(min(max((x0 + x1) / 2, 0), w - 1))] = True
    if not bool(row_in.any()):
        row_in[int(min(max((y0 + y1) / 2, 0), h - 1))] = True
    return (row_in[:, None] & col_in[None, :]).reshape(-1)


# ----------------------------------------------------------------------------------------------
# EchoMimic v1 (antgroup/echomimic a53e97040398ddae5d26df0d2054a8f1e9f9df6d: infer_audio2vid.py,
# "face musk prepare" and "face crop"; src/utils/util.py crop_and_pad; echomimic_memo.md §0.2, §1.4)
# ----------------------------------------------------------------------------------------------


def _echomimic_box(box) -> tuple[int, int, int, int] | None:
    """``(x0, y0, x1, y1)`` rounded like EchoMimic's ``np.round(xyxy).astype(int)`` (half to even), or None."""
    if box is None:
        return None
    if isinstance(box, FaceRegions):
        if not box.detected:
            return None
        box = box.face
    if isinstance(box, Box):
        box = (box.x0, box.y0, box.x1, box.y1)
    coords = np.round(np.asarray(box, dtype=np.float64).reshape(-1)[:4])
    if coords.shape != (4,) or not np.isfinite(coords).all() or coords[2] < coords[0] or coords[3] < coords[1]:
        raise ValueError(f"expected a face box (x0, y0, x1, y1) with x0 <= x1 and y0 <= y1, got {box!r}")
    x0, y0, x1, y1 = (int(v) for v in coords)
    return x0, y0, x1, y1


def _image_wh(image_size) -> tuple[int, int]:
    w, h = (int(v) for v in image_size)
    if w < 1 or h < 1:
        raise ValueError(f"invalid image size {image_size}")
    return w, h


def echomimic_crop_rect(box, image_size: tuple[int, int], dilation: float = 0.5) -> tuple[int, int, int, int] | None:
    """EchoMimic's square face crop ``(x0, y0, x1, y1)`` (pixels, ``x1``/``y1`` exclusive) of an image
    of ``image_size = (W, H)``, or None when there is no face (``box`` None, or a
    :class:`FaceRegions` with ``detected=False``): EchoMimic then neither crops nor resizes.

    ``box`` (a :class:`Box`, an ``(x0, y0, x1, y1)`` sequence or :class:`FaceRegions`) is rounded to
    whole pixels, dilated by ``int(h * dilation)`` rows and ``int(w * dilation)`` columns on each
    side and clipped to the image; ``crop_and_pad`` then takes ``side = min(width, height)``, the
    centre ``((x0 + x1) // 2, (y0 + y1) // 2)``, ``x0' = max(0, cx - side // 2)``,
    ``x1' = min(W, x0' + side)`` (likewise for y) and shrinks the result to a square if the image
    edge made it uneven. The crop is then resized to the model size (512 x 512 in EchoMimic).
    """
    rounded = _echomimic_box(box)
    if rounded is None:
        return None
    w, h = _image_wh(image_size)
    cb, rb, ce, re_ = rounded
    pad_r, pad_c = int((re_ - rb) * dilation), int((ce - cb) * dilation)
    x0, y0 = max(0, cb - pad_c), max(0, rb - pad_r)
    x1, y1 = min(ce + pad_c, w), min(re_ + pad_r, h)
    side = max(0, min(x1 - x0, y1 - y0))
    cx, cy = (x0 + x1) // 2, (y0 + y1) // 2
    nx0, ny0 = max(0, cx - side // 2), max(0, cy - side // 2)
    nx1, ny1 = min(w, nx0 + side), min(h, ny0 + side)
    if nx1 - nx0 != ny1 - ny0:
        side = min(nx1 - nx0, ny1 - ny0)
        nx1, ny1 = nx0 + side, ny0 + side
    return nx0, ny0, nx1, ny1


def echomimic_face_mask(
    box,
    image_size: tuple[int, int],
    size: int | tuple[int, int] = 512,
    *,
    dilation: float = 0.1,
    crop_dilation: float = 0.5,
    uint8: bool = False,
    wrap: bool = False,
) -> torch.Tensor:
    """EchoMimic v1's FaceLocator input: float32 ``(1, H, W)`` in ``[0, 1]`` (``size`` an int or ``(W, H)``).

    1. The face box (rounded to whole pixels, see :func:`echomimic_crop_rect` for ``box`` types) is
       padded by ``int(dilation * h)`` rows above and below and ``int(dilation * w)`` columns left
       and right, and that rectangle of an ``image_size = (W, H)`` map is set to 1.
    2. The map is cut to :func:`echomimic_crop_rect` (``crop_dilation``), the same square as the
       portrait, and resized to ``size`` with ``cv2.resize`` (bilinear), so its edges become soft.

    **Deviation:** EchoMimic writes the rectangle by numpy slicing, so a padded start above or left
    of the image (a face near the top or left edge) is a negative index that wraps around and can
    leave the mask wrong or empty. Here the rectangle is clipped to the image instead (``wrap=True``
    writes it with EchoMimic's slice ``[rb - r_pad : re + r_pad, cb - c_pad : ce + c_pad]`` as it is,
    negative starts included). EchoMimic
    also resizes an 8-bit 0/255 map (edges rounded to 1/255); by default this stays in float32
    (differences below 1/255, as in Hallo's masks above); ``uint8=True`` resizes the 0/255 map as
    EchoMimic does.

    **No face** (``box`` None or ``regions.detected`` False): all ones, i.e. EchoMimic's all-255
    mask. EchoMimic keeps it (and the portrait) at the source size, which mismatches the latent
    unless the source is already 512 x 512; here it has the model size. Like :func:`token_mask`'s
    fallback, the whole frame may be face.
    """
    if isinstance(size, (int, np.integer)):
        out_w = out_h = int(size)
    else:
        out_w, out_h = (int(v) for v in size)
    if out_w < 1 or out_h < 1:
        raise ValueError(f"size must be positive, got {size}")
    if dilation < 0 or crop_dilation < 0:
        raise ValueError(f"dilations must be >= 0, got {dilation}, {crop_dilation}")
    rounded = _echomimic_box(box)
    if rounded is None:
        return torch.ones(1, out_h, out_w)
    w, h = _image_wh(image_size)
    x0, y0, x1, y1 = echomimic_crop_rect(rounded, (w, h), crop_dilation)
    if x1 <= x0 or y1 <= y0:
        raise ValueError(f"the face box {rounded} gives an empty crop of a {w}x{h} image")
    cb, rb, ce, re_ = rounded
    pad_r, pad_c = int((re_ - rb) * dilation), int((ce - cb) * dilation)
    if wrap:  # EchoMimic's own slicing of the full-size map (a negative start counts from the end)
        full = np.zeros((h, w), dtype=np.uint8 if uint8 else np.float32)
        full[rb - pad_r : re_ + pad_r, cb - pad_c : ce + pad_c] = 255 if uint8 else 1.0
        crop = full[y0:y1, x0:x1]
    else:
        r0, r1 = max(rb - pad_r, 0), min(re_ + pad_r, h)  # clipped: EchoMimic wraps negative starts
        c0, c1 = max(cb - pad_c, 0), min(ce + pad_c, w)
        crop = np.zeros((y1 - y0, x1 - x0), dtype=np.uint8 if uint8 else np.float32)
        r0, r1 = min(max(r0 - y0, 0), y1 - y0), min(max(r1 - y0, 0), y1 - y0)
        c0, c1 = min(max(c0 - x0, 0), x1 - x0), min(max(c1 - x0, 0), x1 - x0)
        crop[r0:r1, c0:c1] = 255 if uint8 else 1.0
    resized = cv2.resize(crop, (out_w, out_h), interpolation=cv2.INTER_LINEAR)
    out = resized.astype(np.float32) / 255.0 if uint8 else np.clip(resized, 0.0, 1.0)
    return torch.from_numpy(np.ascontiguousarray(out, dtype=np.float32))[None]


def echomimic_crop(image: np.ndarray, box, size: int | tuple[int, int] = 512) -> np.ndarray | None:
    """EchoMimic's reference crop of a uint8 ``(H, W)`` or ``(H, W, C)`` array: the square of
    :func:`echomimic_crop_rect` (``crop_and_pad``'s slice) resized to ``size`` (an int or ``(W, H)``)
    with ``cv2.resize``'s default bilinear filter (``INTER_LINEAR``), as ``infer_audio2vid.py`` does.
    None without a face (EchoMimic then keeps the whole image; the pipeline squashes it)."""
    arr = np.asarray(image)
    if arr.ndim not in (2, 3) or arr.shape[0] < 1 or arr.shape[1] < 1:
        raise ValueError(f"expected an (H, W) or (H, W, C) image, got shape {arr.shape}")
    out_w, out_h = (int(size), int(size)) if isinstance(size, (int, np.integer)) else (int(v) for v in size)
    if out_w < 1 or out_h < 1:
        raise ValueError(f"size must be positive, got {size}")
    rect = echomimic_crop_rect(box, (arr.shape[1], arr.shape[0]))
    if rect is None:
        return None
    x0, y0, x1, y1 = rect
    if x1 <= x0 or y1 <= y0:
        raise ValueError(f"the face box {box!r} gives an empty crop of a {arr.shape[1]}x{arr.shape[0]} image")
    return cv2.resize(np.ascontiguousarray(arr[y0:y1, x0:x1]), (out_w, out_h), interpolation=cv2.INTER_LINEAR)
