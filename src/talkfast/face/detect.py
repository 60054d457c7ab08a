"""Face and lip boxes for the source portrait.

Hallo finds the face with MediaPipe FaceLandmarker: the face box is the bounding box of the 36
silhouette landmarks and the lip box the bounding box of the 20 lip landmarks. We do not ship
MediaPipe (or its model file); instead :func:`detect_face` uses the Haar cascades that come with
``opencv-python-headless`` (no download at run time):

* face: ``haarcascade_frontalface_default.xml``; if it finds nothing, ``haarcascade_frontalface_alt2.xml``.
  When several faces are found the largest one is kept. Haar boxes stop around the upper chin, so
  the bottom edge is pushed down by ``chin_extend`` (12 % of the box height by default) to get
  closer to the silhouette box that Hallo's masks and FaceLocator were trained with.
* lips: ``haarcascade_smile.xml`` searched in the lower half of the (raw) face box; the candidate
  with the highest cascade weight whose centre lies in the lower third of the face and in its
  middle half horizontally wins. Without a candidate, a geometric prior is used: a box centred at
  0.5 w / 0.78 h of the raw face box, 0.45 w wide and 0.18 h tall.

dlib is deliberately not used, even when importable: results must not depend on which optional
packages happen to be installed.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, replace
from functools import lru_cache

import cv2
import numpy as np
from PIL import Image

from talkfast.errors import InputError

__all__ = ["Box", "FaceRegions", "detect_face", "lip_prior", "portrait_prior"]

# Geometric mouth prior, as fractions of the raw detector face box.
_LIP_CX, _LIP_CY, _LIP_W, _LIP_H = 0.5, 0.78, 0.45, 0.18
# Portrait prior used when no face is found: centred box of this fraction of the image.
_PORTRAIT_W, _PORTRAIT_H = 0.70, 0.85
# Images are searched at most at this size (longer side); larger images are downscaled first.
_MAX_SEARCH_SIDE = 1024


@dataclass(frozen=True)
class Box:
    """An axis-aligned box in pixel coordinates, ``x0 <= x1`` and ``y0 <= y1`` (``x1``/``y1`` exclusive)."""

    x0: float
    y0: float
    x1: float
    y1: float

    def __post_init__(self) -> None:
        coords = (self.x0, self.y0, self.x1, self.y1)
        if not all(math.isfinite(float(c)) for c in coords):
            raise ValueError(f"Box coordinates must be finite, got {coords}")
        if self.x1 < self.x0 or self.y1 < self.y0:
            raise ValueError(f"Box needs x0 <= x1 and y0 <= y1, got {coords}")
        for name, value in zip(("x0", "y0", "x1", "y1"), coords):
            object.__setattr__(self, name, float(value))

    @property
    def width(self) -> float:
        return self.x1 - self.x0

    @property
    def height(self) -> float:
        return self.y1 - self.y0

    @property
    def center(self) -> tuple[float, float]:
        return ((self.x0 + self.x1) / 2.0, (self.y0 + self.y1) / 2.0)

    @property
    def area(self) -> float:
        return self.width * self.height

    def expand(self, ratio: float, image_w: float | None = None, image_h: float | None = None) -> "Box":
        """Scale the box by ``ratio`` about its centre, then shift it back inside the image.

        Like Hallo's ``expand_region``, a box that sticks out on one side is *moved* (keeping its
        size) rather than clipped. Only when the expanded box is larger than the image along an
        axis is it clipped to the image on that axis. Without ``image_w``/``image_h`` no shifting
        happens on that axis.
        """
        if ratio < 0 or not math.isfinite(ratio):
            raise ValueError(f"expand ratio must be a finite number >= 0, got {ratio}")
        cx, cy = self.center
        hw, hh = self.width * ratio / 2.0, self.height * ratio / 2.0
        x0, x1 = _shift_inside(cx - hw, cx + hw, image_w)
        y0, y1 = _shift_inside(cy - hh, cy + hh, image_h)
        return Box(x0, y0, x1, y1)

    def scale(self, sx: float, sy: float | None = None) -> "Box":
        """Multiply the coordinates (e.g. to map a box to a resized image); ``sy`` defaults to ``sx``."""
        sy = sx if sy is None else sy
        if sx < 0 or sy < 0:
            raise ValueError(f"scale factors must be >= 0, got {(sx, sy)}")
        return Box(self.x0 * sx, self.y0 * sy, self.x1 * sx, self.y1 * sy)

    def clip(self, image_w: float, image_h: float) -> "Box":
        """Intersect with the image rectangle ``[0, image_w] x [0, image_h]``."""
        x0 = min(max(self.x0, 0.0), image_w)
        y0 = min(max(self.y0, 0.0), image_h)
        x1 = min(max(self.x1, x0), image_w)
        y1 = min(max(self.y1, y0), image_h)
        return Box(x0, y0, x1, y1)

    def to_int(self) -> tuple[int, int, int, int]:
        """``(x0, y0, x1, y1)`` rounded to the nearest integers."""
        return (int(round(self.x0)), int(round(self.y0)), int(round(self.x1)), int(round(self.y1)))


def _shift_inside(lo: float, hi: float, limit: float | None) -> tuple[float, float]:
    if limit is None:
        return lo, hi
    if lo < 0:
        hi -= lo
        lo = 0.0
    if hi > limit:
        lo -= hi - limit
        hi = float(limit)
    return max(lo, 0.0), hi


@dataclass
class FaceRegions:
    """Where the face and the lips are in an image of ``image_size = (W, H)`` pixels.

    ``face`` approximates the face silhouette box and ``lip`` the lip box, both *before* the
    expansions (1.2 and 2.0) that :mod:`talkfast.face.masks` applies. ``detected`` is False when
    no face was found and both boxes are priors. ``method`` says how the boxes were obtained, e.g.
    ``"haar:frontalface_default+smile"``, ``"haar:frontalface_alt2+prior"`` or ``"none+prior"``.
    """

    face: Box
    lip: Box
    image_size: tuple[int, int]
    detected: bool
    method: str

    def rescaled(self, image_size: tuple[int, int]) -> "FaceRegions":
        """The same regions for the image resized (without cropping) to ``image_size = (W, H)``."""
        w, h = int(image_size[0]), int(image_size[1])
        if w <= 0 or h <= 0:
            raise ValueError(f"image_size must be positive, got {image_size}")
        sx, sy = w / self.image_size[0], h / self.image_size[1]
        return replace(self, face=self.face.scale(sx, sy), lip=self.lip.scale(sx, sy), image_size=(w, h))


def lip_prior(face: Box) -> Box:
    """Geometric mouth box for a face box: centred at (0.5 w, 0.78 h), 0.45 w wide, 0.18 h tall."""
    cx = face.x0 + _LIP_CX * face.width
    cy = face.y0 + _LIP_CY * face.height
    hw, hh = _LIP_W * face.width / 2.0, _LIP_H * face.height / 2.0
    return Box(cx - hw, cy - hh, cx + hw, cy + hh)


def portrait_prior(image_w: int, image_h: int) -> Box:
    """Centred box covering 70 % of the width and 85 % of the height (where a portrait's face is)."""
    hw, hh = _PORTRAIT_W * image_w / 2.0, _PORTRAIT_H * image_h / 2.0
    cx, cy = image_w / 2.0, image_h / 2.0
    return Box(cx - hw, cy - hh, cx + hw, cy + hh)


@lru_cache(maxsize=None)
def _cascade(name: str) -> cv2.CascadeClassifier:
    path = cv2.data.haarcascades + name
    classifier = cv2.CascadeClassifier(path)
    if classifier.empty():  # a broken OpenCV install, not a user error
        raise RuntimeError(f"could not load the OpenCV Haar cascade {path}")
    return classifier


def _to_rgb_uint8(image) -> np.ndarray:
    """Accept a PIL image or an (H, W), (H, W, 1), (H, W, 3) or (H, W, 4) array; return RGB uint8."""
    if isinstance(image, Image.Image):
        image = np.asarray(image.convert("RGB"))
    if not isinstance(image, np.ndarray):
        raise InputError(f"expected an RGB image as a numpy array or PIL image, got {type(image).__name__}")
    arr = image
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    if arr.ndim == 2:
        arr = np.stack([arr] * 3, axis=-1)
    if arr.ndim != 3 or arr.shape[2] not in (3, 4):
        raise InputError(f"expected an image of shape (H, W, 3), got an array of shape {image.shape}")
    arr = arr[:, :, :3]
    if arr.shape[0] < 1 or arr.shape[1] < 1:
        raise InputError(f"the image is empty (shape {image.shape})")
    if arr.dtype != np.uint8:
        if arr.dtype == np.bool_:
            arr = arr.astype(np.uint8) * 255
        elif np.issubdtype(arr.dtype, np.floating):
            if not np.all(np.isfinite(arr)):
                raise InputError("the image contains NaN or infinite values")
            scale = 255.0 if arr.size and float(arr.max()) <= 1.0 else 1.0
            arr = np.clip(np.rint(arr * scale), 0, 255).astype(np.uint8)
        elif np.issubdtype(arr.dtype, np.integer):
            arr = np.clip(arr, 0, 255).astype(np.uint8)
        else:
            raise InputError(f"unsupported image dtype {arr.dtype}")
    return np.ascontiguousarray(arr)


def _largest(rects: np.ndarray | tuple) -> tuple[int, int, int, int] | None:
    if rects is None or len(rects) == 0:
        return None
    rects = np.asarray(rects).reshape(-1, 4)
    best = int(np.argmax(rects[:, 2].astype(np.int64) * rects[:, 3].astype(np.int64)))
    x, y, w, h = (int(v) for v in rects[best])
    return x, y, w, h


def _find_lips(gray: np.ndarray, face: tuple[int, int, int, int]) -> tuple[int, int, int, int] | None:
    """Best smile-cascade box (full-image coordinates) inside the lower third of ``face``, or None."""
    x, y, w, h = face
    top = y + h // 2
    roi = gray[top : y + h, x : x + w]
    if roi.shape[0] < 6 or roi.shape[1] < 12:
        return None
    min_size = (max(12, w // 6), max(6, h // 14))
    try:
        rects, _levels, weights = _cascade("haarcascade_smile.xml").detectMultiScale3(
            roi, scaleFactor=1.05, minNeighbors=3, minSize=min_size, outputRejectLevels=True
        )
    except cv2.error:
        return None
    if len(rects) == 0:
        return None
    weights = np.asarray(weights, dtype=np.float64).reshape(-1)
    best, best_weight = None, -np.inf
    for (rx, ry, rw, rh), weight in zip(np.asarray(rects).reshape(-1, 4), weights):
        cx = x + rx + rw / 2.0
        cy = top + ry + rh / 2.0
        inside_third = cy >= y + 2.0 * h / 3.0 and cy <= y + h
        centred = x + 0.25 * w <= cx <= x + 0.75 * w
        sane_size = 0.2 * w <= rw <= 0.8 * w and rh <= 0.4 * h
        if inside_third and centred and sane_size and weight > best_weight:
            best, best_weight = (int(x + rx), int(top + ry), int(rw), int(rh)), float(weight)
    return best


def detect_face(
    image,
    *,
    min_face_frac: float = 0.05,
    chin_extend: float = 0.12,
    source: str | None = None,
) -> FaceRegions:
    """Find the largest face and its lips in an RGB image (numpy ``uint8`` ``(H, W, 3)`` or PIL).

    Detection uses OpenCV's Haar cascades (frontal-face default, then alt2), searching faces of at
    least ``min_face_frac`` of the shorter side (and at least the cascade window, 20 px, in the
    searched copy), on the grey image and then on its histogram-equalised version. Images whose
    longer side exceeds 1024 px are searched on a downscaled copy; small images (longer side
    <= 512 px) in which the native-resolution passes find nothing get a second round on a 2x
    upscaled copy, so faces down to about 12-24 px are found. The face
    box is the detector box with its bottom edge moved down by ``chin_extend * height`` (the
    Haar box ends above the chin; Hallo's box is the full silhouette), clipped to the image. The lip
    box comes from the smile cascade or, failing that, the geometric prior of :func:`lip_prior`
    applied to the raw detector box.

    **No face found** (``detected=False``): the face box is the portrait prior of
    :func:`portrait_prior` (centred, 70 % of the width, 85 % of the height), the lip box is
    :func:`lip_prior` of that box, ``method`` is ``"none+prior"``, and a ``UserWarning``
    ``"no face found in <source>; using full-frame attention masks"`` is emitted.
    :func:`talkfast.face.masks.build_masks` then builds its full-frame fallback masks and
    :func:`talkfast.face.masks.token_mask` marks every token as foreground.

    ``source`` names the image in the warning (e.g. its file name).
    """
    rgb = _to_rgb_uint8(image)
    img_h, img_w = rgb.shape[:2]
    gray_full = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)

    base_scale = 1.0
    if max(img_h, img_w) > _MAX_SEARCH_SIDE:
        base_scale = _MAX_SEARCH_SIDE / max(img_h, img_w)
    # Faces of at least this many pixels (in the original image) are searched for.
    min_face_px = max(1.0, min_face_frac * min(img_h, img_w))
    scales = [base_scale]
    if base_scale == 1.0 and 2 * max(img_h, img_w) <= _MAX_SEARCH_SIDE:
        # Haar cascades (24x24 / 20x20 windows) miss faces near their window size; a pass on a 2x
        # upscaled copy finds faces down to about 12 px. It only runs when the native passes find
        # nothing, so it cannot replace a real face by a larger false positive.
        scales.append(2.0)

    face_rect, cascade_name, scale, gray = None, "", 1.0, gray_full
    for scale in scales:
        size = (max(1, round(img_w * scale)), max(1, round(img_h * scale)))
        interp = cv2.INTER_AREA if scale < 1.0 else cv2.INTER_CUBIC
        plain = gray_full if scale == 1.0 else cv2.resize(gray_full, size, interpolation=interp)
        min_side = int(max(20, round(min_face_px * scale)))
        if min(plain.shape[:2]) < min_side:
            continue
        # Plain grey first; histogram equalisation helps dim or low-contrast faces but hurts when a
        # large flat background dominates the histogram, so it is the second try.
        for gray in (plain, cv2.equalizeHist(plain)):
            for name in ("haarcascade_frontalface_default.xml", "haarcascade_frontalface_alt2.xml"):
                rects = _cascade(name).detectMultiScale(
                    gray, scaleFactor=1.1, minNeighbors=5, minSize=(min_side, min_side)
                )
                face_rect = _largest(rects)
                if face_rect is not None:
                    cascade_name = name[len("haarcascade_") : -len(".xml")]
                    break
            if face_rect is not None:
                break
        if face_rect is not None:
            break

    if face_rect is None:
        where = source if source else "the image"
        warnings.warn(f"no face found in {where}; using full-frame attention masks", UserWarning, stacklevel=2)
        face = portrait_prior(img_w, img_h)
        return FaceRegions(face=face, lip=lip_prior(face), image_size=(img_w, img_h), detected=False,
                           method="none+prior")

    lip_rect = _find_lips(gray, face_rect)
    inv = 1.0 / scale
    x, y, w, h = face_rect
    raw_face = Box(x, y, x + w, y + h).scale(inv, inv)
    face = Box(raw_face.x0, raw_face.y0, raw_face.x1, raw_face.y1 + chin_extend * raw_face.height).clip(img_w, img_h)
    if lip_rect is not None:
        lx, ly, lw, lh = lip_rect
        lip = Box(lx, ly, lx + lw, ly + lh).scale(inv, inv).clip(img_w, img_h)
        lip_method = "smile"
    else:
        lip = lip_prior(raw_face).clip(img_w, img_h)
        lip_method = "prior"
    return FaceRegions(face=face, lip=lip, image_size=(img_w, img_h), detected=True,
                       method=f"haar:{cascade_name}+{lip_method}")
