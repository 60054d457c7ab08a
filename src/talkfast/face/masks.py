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
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from talkfast.face.detect import Box, FaceRegions

__all__ = ["MaskSet", "build_masks", "face_locator_image", "token_mask", "scaled_kernel"]


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
