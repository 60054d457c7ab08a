"""Hallo's face preparation: landmark boxes, the FaceLocator input and the soft region masks.

Matched, line for line in effect (numbers, rounding, libraries), with fudan-generative-vision/hallo
8fd7c57:

* ``hallo/utils/util.py``: ``silhouette_ids`` / ``lip_ids``, ``get_face_mask`` / ``get_lip_mask``
  (``np.round`` of the landmarks' min / max, then ``expand_region``: float floor division and
  Python's round-half-to-even; face expand ``face_expand_ratio`` = 1.2 from
  ``configs/inference/default.yaml``, lip expand 2.0, the default of ``get_lip_mask``; boxes filled
  with 255 in full-size uint8 images), ``get_mask`` / ``get_blur_mask`` / ``blur_mask``
  (``cv2.resize`` to 64 x 64, INTER_LINEAR; ``cv2.GaussianBlur`` 51 x 51 face / 31 x 31 lips,
  sigma 0; ``cv2.normalize`` NORM_MINMAX 0..255), ``get_background_mask``
  (``((1 - m / 255) * 255).astype(uint8)``: truncation, so not ``255 - m``) and
  ``get_sep_face_mask`` (``cv2.subtract``, saturating), every step through a PNG file;
* ``hallo/datasets/image_processor.py`` (``ImageProcessor.preprocess``): the whole photo (no crop)
  through torchvision ``Resize((512, 512))`` on the PIL image (PIL bilinear, which low-passes when
  shrinking; a non-square photo is squashed), ``ToTensor`` and ``Normalize(0.5, 0.5)``; the
  FaceLocator input is the full-size hard face-box PNG ``.convert("RGB")`` through ``Resize`` and
  ``ToTensor`` (three equal channels, soft edges from the resize); the attention masks are the
  64 x 64 PNGs opened with PIL and resized (PIL bilinear) to ``size // 8``, ``// 16``, ``// 32``,
  ``// 64``, ``/ 255``, flattened;
* ``scripts/inference.py``: ``img_size`` = (width, height) = (512, 512).

Kept as Hallo has it: a box that covers the whole photo (or an empty one) blurs to a constant map,
which ``cv2.normalize`` turns into all zeros (then background = 255 everywhere).

The PNG round trips are done in memory (``cv2.imencode`` / ``cv2.imdecode`` and ``PIL.Image.open`` of
the encoded bytes), the same codecs as Hallo's files; for 8-bit grey images they are lossless.

Deviations (all documented where they happen):

* **No face found by the landmarker** (Hallo crashes with an IndexError): :func:`hallo_face_boxes`
  warns and uses the caller's fallback regions (by default talkfast's Haar detector
  :func:`~talkfast.face.detect.detect_face`); those *unexpanded* boxes go through the same
  ``np.round`` + ``expand_region`` as Hallo's landmark boxes.
* **A box larger than the image** (e.g. a face more than 1/1.2 of the photo's width):
  ``expand_region`` shifts the box so its start becomes negative, and Hallo's numpy slice then wraps
  around (only the last few columns / rows are filled). Reproduced as Hallo does, with a warning.
* **Sizes other than 512**: as Hallo's code does for any configured size, the soft maps are still made
  at 64 x 64 (``get_blur_mask``'s fixed ``resize_dim``, kernels 51 / 31) and resized to the levels
  ``size // 8``, ``// 16``, ``// 32``, ``// 64``; ``size`` must be a multiple of 64 so those levels
  equal the UNet's latent sizes.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import cv2
import numpy as np
import torch
from PIL import Image

from talkfast.errors import InputError
from talkfast.face.detect import Box, FaceRegions, detect_face
from talkfast.face.masks import MaskSet, _image_wh

__all__ = [
    "SILHOUETTE_IDS", "LIP_IDS", "FACE_EXPAND", "LIP_EXPAND", "MASK_BASE", "FACE_KERNEL", "LIP_KERNEL",
    "HalloBoxes", "HalloSoftMasks", "HalloFacePrep", "expand_region", "hallo_boxes",
    "hallo_boxes_from_regions", "hallo_face_boxes", "hallo_hard_masks", "hallo_soft_masks",
    "hallo_face_prep", "hallo_level_sizes",
]

# MediaPipe face-mesh indices Hallo uses (hallo/utils/util.py).
SILHOUETTE_IDS = (
    10, 338, 297, 332, 284, 251, 389, 356, 454, 323, 361, 288,
    397, 365, 379, 378, 400, 377, 152, 148, 176, 149, 150, 136,
    172, 58, 132, 93, 234, 127, 162, 21, 54, 103, 67, 109,
)
LIP_IDS = (61, 185, 40, 39, 37, 0, 267, 269, 270, 409, 291, 146, 91, 181, 84, 17, 314, 405, 321, 375)
FACE_EXPAND = 1.2  # configs/inference/default.yaml face_expand_ratio
LIP_EXPAND = 2.0  # get_lip_mask's default
MASK_BASE = 64  # get_blur_mask's resize_dim
FACE_KERNEL = 51
LIP_KERNEL = 31


@dataclass(frozen=True)
class HalloBoxes:
    """Hallo's face and lip boxes of one photo, **already expanded** (face x1.2, lip x2.0).

    Unlike :class:`~talkfast.face.detect.FaceRegions` from the Haar detector (raw boxes that
    :func:`~talkfast.face.masks.build_masks` expands later), these are the exact integer rectangles
    Hallo fills with 255: ``(x0, y0, x1, y1)`` in pixels of the photo, ``x1`` / ``y1`` exclusive.
    ``image_size`` is the photo's ``(W, H)``; ``detected`` is True when they come from MediaPipe's
    landmarks and False when from a fallback; ``method`` says where they come from.
    """

    face: tuple[int, int, int, int]
    lip: tuple[int, int, int, int]
    image_size: tuple[int, int]
    detected: bool
    method: str

    def regions(self) -> FaceRegions:
        """The same (expanded) boxes as :class:`FaceRegions`, e.g. for ``Portrait.regions``.

        Do not pass these to :func:`~talkfast.face.masks.build_masks`: it would expand them again.
        A box that starts before the image (Hallo's wrapping slice, see :func:`hallo_hard_masks`) is
        clipped here: these regions are the nominal boxes (DFA's foreground, the sidecar).
        """
        w, h = self.image_size
        return FaceRegions(face=Box(*self.face).clip(w, h), lip=Box(*self.lip).clip(w, h), image_size=self.image_size,
                           detected=self.detected, method=self.method)


def expand_region(region, image_w: int, image_h: int, expand_ratio: float = 1.0) -> tuple[int, int, int, int]:
    """Hallo's ``expand_region``: ``(min_x, max_x, min_y, max_y)`` -> the same, expanded and shifted.

    Centre by float floor division, half side ``side * ratio // 2`` (floor), a box sticking out on
    one side is moved back inside (its size kept; only when it is larger than the image does the
    start end up negative), each value rounded with Python's ``round`` (half to even). The arithmetic
    is float64, like Hallo's numpy scalars. Note the argument order (x range, then y range).
    """
    min_x, max_x, min_y, max_y = (np.float64(v) for v in region)
    return (*_expand_axis(min_x, max_x, image_w, expand_ratio), *_expand_axis(min_y, max_y, image_h, expand_ratio))


def _expand_axis(lo: np.float64, hi: np.float64, limit: int, ratio: float) -> tuple[int, int]:
    """One axis of :func:`expand_region` (the two axes do not interact)."""
    mid, side = (hi + lo) // 2, (hi - lo) * ratio
    lo, hi = mid - side // 2, mid + side // 2
    if lo < 0:
        hi -= lo
        lo = np.float64(0)
    if hi > limit:
        lo -= hi - limit
        hi = np.float64(limit)
    return round(lo), round(hi)


def _box_from_points(points: np.ndarray, image_w: int, image_h: int, ratio: float, what: str,
                     source: str, wrap: bool = True) -> tuple[int, int, int, int]:
    """``np.round`` + :func:`expand_region` of the points' bounding box; a negative start is kept
    (Hallo's slice wraps it, ``wrap``) or clipped to 0 (the fallback boxes, where Hallo has none)."""
    lo = np.round(np.min(points, 0))
    hi = np.round(np.max(points, 0))
    x0, x1, y0, y1 = expand_region([lo[0], hi[0], lo[1], hi[1]], image_w, image_h, ratio)
    if not wrap:
        return max(x0, 0), max(y0, 0), x1, y1
    if x0 < 0 or y0 < 0:
        warnings.warn(
            f"the expanded {what} box of {source} (x {x0}..{x1}, y {y0}..{y1}) is larger than the "
            f"{image_w}x{image_h} image; Hallo's numpy slice wraps the negative start around (only the "
            "last rows / columns of the box are filled), reproduced as Hallo does", UserWarning, stacklevel=3)
    return x0, y0, x1, y1


def hallo_boxes(landmarks: np.ndarray, image_size: tuple[int, int], face_expand: float = FACE_EXPAND,
                lip_expand: float = LIP_EXPAND, *, source: str = "the image") -> HalloBoxes:
    """Hallo's boxes from MediaPipe landmarks ``(N >= 468, 2)`` in pixels of an ``image_size = (W, H)`` photo.

    Face: the 36 silhouette points, lips: the 20 lip points; ``np.round`` of their min / max, then
    :func:`expand_region` by ``face_expand`` / ``lip_expand``. ``detected=True``,
    ``method="mediapipe:face_landmarker"``.
    """
    w, h = _image_wh(image_size)
    pts = np.asarray(landmarks, dtype=np.float64)
    if pts.ndim != 2 or pts.shape[1] < 2 or pts.shape[0] <= max(SILHOUETTE_IDS + LIP_IDS):
        raise ValueError(f"expected MediaPipe face-mesh landmarks (N >= 468, 2), got shape {pts.shape}")
    pts = pts[:, :2]
    if not np.isfinite(pts).all():
        raise ValueError("the landmarks contain NaN or infinite values")
    face = _box_from_points(np.take(pts, SILHOUETTE_IDS, 0), w, h, face_expand, "face", source)
    lip = _box_from_points(np.take(pts, LIP_IDS, 0), w, h, lip_expand, "lip", source)
    return HalloBoxes(face=face, lip=lip, image_size=(w, h), detected=True, method="mediapipe:face_landmarker")


def hallo_boxes_from_regions(regions: FaceRegions, face_expand: float = FACE_EXPAND,
                             lip_expand: float = LIP_EXPAND, *, source: str = "the image") -> HalloBoxes:
    """Fallback boxes: raw (unexpanded) :class:`FaceRegions`, e.g. from the Haar detector, through the
    same ``np.round`` + :func:`expand_region` as Hallo's landmark boxes (corners as the points);
    a box larger than the image is clipped (Hallo itself has no boxes here: it stops).

    ``detected`` is copied from ``regions``; ``method`` is ``"fallback:" + regions.method``.
    """
    w, h = _image_wh(regions.image_size)

    def corners(b: Box) -> np.ndarray:
        return np.array([[b.x0, b.y0], [b.x1, b.y1]], dtype=np.float64)

    face = _box_from_points(corners(regions.face), w, h, face_expand, "face", source, wrap=False)
    lip = _box_from_points(corners(regions.lip), w, h, lip_expand, "lip", source, wrap=False)
    return HalloBoxes(face=face, lip=lip, image_size=(w, h), detected=regions.detected,
                      method=f"fallback:{regions.method}")


def hallo_face_boxes(image: Image.Image, landmarker, fallback: FaceRegions | Callable | None = None,
                     *, source: str | None = None, path=None) -> HalloBoxes:
    """Hallo's boxes for a photo: MediaPipe landmarks via ``landmarker``
    (a :class:`~talkfast.face.landmarker.FaceLandmarker`), or the fallback.

    **No face from the landmarker** (Hallo itself stops there with an IndexError): a ``UserWarning``
    ``"MediaPipe's face landmarker found no face in <source>; ..."`` and the boxes of ``fallback``
    (raw :class:`FaceRegions` of this photo, or a callable taking the RGB PIL image and returning
    them; None = :func:`~talkfast.face.detect.detect_face`, the Haar detector, which warns again
    and returns its portrait prior when it too finds nothing), through
    :func:`hallo_boxes_from_regions`. ``landmarker=None`` goes to the fallback directly (with the
    warning), for users without MediaPipe's model.

    ``path``: the photo's file; when given, MediaPipe decodes that file itself, as Hallo does
    (:meth:`~talkfast.face.landmarker.FaceLandmarker.landmarks_from_file`; JPEG decoders differ by a
    few levels), and ``image`` must be that file opened with PIL.
    """
    rgb_image = image.convert("RGB")
    where = source or (str(path) if path is not None else "the image")
    if landmarker is None:
        points = None
    elif path is not None:
        points = landmarker.landmarks_from_file(path)
    else:
        points = landmarker.landmarks(np.asarray(rgb_image))
    if points is not None:
        return hallo_boxes(points, rgb_image.size, source=where)
    reason = "no MediaPipe face landmarker model was given" if landmarker is None else \
        f"MediaPipe's face landmarker found no face in {where}"
    warnings.warn(f"{reason}; Hallo needs its landmarks (and stops without a face), so talkfast uses "
                  "fallback face/lip boxes (the Haar detector unless others were given), expanded as Hallo does",
                  UserWarning, stacklevel=2)
    if fallback is None:
        regions = detect_face(rgb_image, source=source)
    elif isinstance(fallback, FaceRegions):
        regions = fallback
    else:
        regions = fallback(rgb_image)
    if tuple(int(v) for v in regions.image_size) != rgb_image.size:
        raise ValueError(f"fallback regions are for a {regions.image_size} image, the photo is {rgb_image.size}")
    return hallo_boxes_from_regions(regions, source=where)


def hallo_hard_masks(boxes: HalloBoxes) -> tuple[np.ndarray, np.ndarray]:
    """The full-size hard ``(face, lip)`` uint8 masks: 255 inside the box, 0 elsewhere (``(H, W)``),
    filled by numpy slicing as Hallo's ``get_face_mask`` / ``get_lip_mask`` do (a negative start
    counts from the end: the box wraps around)."""
    w, h = _image_wh(boxes.image_size)
    out = []
    for x0, y0, x1, y1 in (boxes.face, boxes.lip):
        m = np.zeros((h, w), dtype=np.uint8)
        m[y0:y1, x0:x1] = 255
        out.append(m)
    return out[0], out[1]


def _png_roundtrip(gray: np.ndarray) -> np.ndarray:
    """``cv2.imwrite`` then ``cv2.imread(..., IMREAD_GRAYSCALE)``, in memory."""
    ok, buf = cv2.imencode(".png", gray)
    if not ok:  # pragma: no cover (OpenCV without PNG support)
        raise RuntimeError("OpenCV could not encode a PNG")
    return cv2.imdecode(buf, cv2.IMREAD_GRAYSCALE)


def _png_pil(gray: np.ndarray) -> Image.Image:
    """``cv2.imwrite`` then ``PIL.Image.open``, in memory (an 8-bit grey PNG opens in mode ``"L"``)."""
    ok, buf = cv2.imencode(".png", gray)
    if not ok:  # pragma: no cover
        raise RuntimeError("OpenCV could not encode a PNG")
    img = Image.open(io.BytesIO(buf.tobytes()))
    img.load()
    return img


def _blur(mask: np.ndarray, kernel: int) -> np.ndarray:
    small = cv2.resize(mask, (MASK_BASE, MASK_BASE))
    blurred = cv2.GaussianBlur(small, (kernel, kernel), 0)
    return cv2.normalize(blurred, None, 0, 255, cv2.NORM_MINMAX)


@dataclass(frozen=True)
class HalloSoftMasks:
    """Hallo's 64 x 64 uint8 maps, as its PNG files hold them (``<name>_face_mask_blur.png``,
    ``_sep_lip.png``, ``_sep_background.png``, ``_sep_face.png``)."""

    face_blur: np.ndarray
    lip: np.ndarray
    background: np.ndarray
    face: np.ndarray


def hallo_soft_masks(boxes: HalloBoxes) -> HalloSoftMasks:
    """Hallo's ``get_mask`` chain from the hard masks to the four 64 x 64 maps (see the module docstring)."""
    face_hard, lip_hard = hallo_hard_masks(boxes)
    face_blur = _png_roundtrip(_blur(_png_roundtrip(face_hard), FACE_KERNEL))
    lip = _png_roundtrip(_blur(_png_roundtrip(lip_hard), LIP_KERNEL))
    background = _png_roundtrip(((1.0 - face_blur / 255.0) * 255).astype(np.uint8))
    face = _png_roundtrip(cv2.subtract(face_blur, lip))
    return HalloSoftMasks(face_blur=face_blur, lip=lip, background=background, face=face)


def hallo_level_sizes(size: int = 512) -> list[int]:
    """The attention-mask levels for a ``size`` x ``size`` image: ``size // 8, // 16, // 32, // 64``."""
    if not isinstance(size, (int, np.integer)) or size < 64 or size % 64:
        raise ValueError(f"Hallo's image size must be a multiple of 64 (latents size // 8 down to size // 64), got {size}")
    return [int(size) // d for d in (8, 16, 32, 64)]


def _tv_resize(img: Image.Image, side: int) -> Image.Image:
    """torchvision ``Resize((side, side))`` on a PIL image: unchanged when already that size, else PIL bilinear."""
    if img.size == (side, side):
        return img
    return img.resize((side, side), Image.Resampling.BILINEAR)


def _to_tensor(img: Image.Image) -> torch.Tensor:
    """torchvision ``ToTensor`` on an 8-bit PIL image: ``(C, H, W)`` float32 ``/ 255``."""
    arr = np.array(img, dtype=np.uint8)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    return torch.from_numpy(arr).permute(2, 0, 1).contiguous().to(torch.float32).div(255)


@dataclass
class HalloFacePrep:
    """Everything Hallo's network gets from the photo (no identity embedding: that is insightface's).

    * ``image``: the photo resized (squashed) to ``size`` x ``size``, RGB PIL;
    * ``pixels``: ``(3, size, size)`` float32, ``(x / 255 - 0.5) / 0.5``;
    * ``locator_input``: ``(3, size, size)`` float32 in ``[0, 1]``, the FaceLocator input;
    * ``masks``: :class:`MaskSet` with levels ``size // 8 .. size // 64`` (``full`` = background,
      ``face``, ``lip``; flattened ``(n * n,)`` float32, ``/ 255``);
    * ``boxes``: the :class:`HalloBoxes` used (photo pixels, already expanded);
    * ``regions``: ``boxes.regions()``, the expanded boxes in photo pixels (``.rescaled((size, size))``
      maps them onto ``image``);
    * ``soft``: the 64 x 64 uint8 maps (:class:`HalloSoftMasks`).
    """

    image: Image.Image
    pixels: torch.Tensor
    locator_input: torch.Tensor
    masks: MaskSet
    boxes: HalloBoxes
    regions: FaceRegions
    soft: HalloSoftMasks


def hallo_face_prep(image: Image.Image, boxes_or_regions: HalloBoxes | FaceRegions, size: int = 512) -> HalloFacePrep:
    """Hallo's ``ImageProcessor.preprocess`` minus the insightface embedding, for one PIL photo.

    ``boxes_or_regions``: :class:`HalloBoxes` (from :func:`hallo_face_boxes` / :func:`hallo_boxes`,
    used as they are) or raw :class:`FaceRegions` of this photo (a fallback, e.g. the Haar detector:
    expanded here by :func:`hallo_boxes_from_regions`, with a warning). ``size``: the square model
    size (Hallo: 512; a multiple of 64, see :func:`hallo_level_sizes`).
    """
    if not isinstance(image, Image.Image):
        raise InputError(f"expected a PIL image, got {type(image).__name__}")
    rgb = image.convert("RGB")
    levels = hallo_level_sizes(size)
    if isinstance(boxes_or_regions, FaceRegions):
        warnings.warn(f"face regions from {boxes_or_regions.method!r} instead of MediaPipe's landmarks: "
                      "expanding them as Hallo expands its landmark boxes (fallback)", UserWarning, stacklevel=2)
        boxes = hallo_boxes_from_regions(boxes_or_regions)
    elif isinstance(boxes_or_regions, HalloBoxes):
        boxes = boxes_or_regions
    else:
        raise TypeError(f"expected HalloBoxes or FaceRegions, got {type(boxes_or_regions).__name__}")
    if tuple(boxes.image_size) != rgb.size:
        raise ValueError(f"the boxes are for a {boxes.image_size} image, the photo is {rgb.size}")

    resized = _tv_resize(rgb, size)
    pixels = (_to_tensor(resized) - 0.5) / 0.5

    face_hard, _ = hallo_hard_masks(boxes)
    locator_png = _png_pil(face_hard).convert("RGB")  # face_mask.png, then PIL .convert("RGB")
    locator_input = _to_tensor(_tv_resize(locator_png, size))

    soft = hallo_soft_masks(boxes)

    def per_level(m: np.ndarray) -> list[torch.Tensor]:
        png = _png_pil(m)
        return [_to_tensor(_tv_resize(png, n)).reshape(-1) for n in levels]

    masks = MaskSet(full=per_level(soft.background), face=per_level(soft.face), lip=per_level(soft.lip),
                    level_sizes=[(n, n) for n in levels])
    return HalloFacePrep(image=resized, pixels=pixels, locator_input=locator_input, masks=masks, boxes=boxes,
                         regions=boxes.regions(), soft=soft)
