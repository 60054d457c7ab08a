"""Procedural talking-face renderer (numpy + OpenCV drawing), deterministic and fast.

An :class:`Identity` (sampled from a seed by :meth:`Identity.sample`) fixes everything about a
person and their scene: skin tone, face shape, hair, eyes, brows, nose, lips, accessories,
clothing, background and voice. A :class:`FaceRenderer` turns it into frames:

* the **plate** (background + shoulders + neck) is drawn once and never changes, so every pixel
  outside the moving head is the same in every frame (compositing leaves it bit-exact);
* the **head** (hair, ears, face, nose, brows, beard) is drawn once as an RGBA layer at
  ``supersample`` times the output size; per frame only the eyes (blinks, gaze), the mouth
  (``openness``, ``width``) and glasses are drawn on a copy, which is then moved by a small head
  pose (translation, rotation about the neck, scale), downsampled with area averaging (so edges
  are anti-aliased) and alpha-composited over the plate with premultiplied alpha.

Coordinates are continuous pixel coordinates of the output image with pixel ``i`` covering
``[i, i + 1)``; boxes are ``(x0, y0, x1, y1)`` in those units. The face box is the box of the
face-skin silhouette (forehead to chin, cheek to cheek, without hair and ears), the mouth box the
box of the outer lip outline, both after the head pose. The head mask marks every pixel the head
layer (hair, ears, face, accessories) covers at all, anti-aliased edges included, so every pixel
outside it is exactly the static plate.

Mouth model: the lips open by ``openness * 0.3 * face_half_height`` (upper lip moves up 30 %, the
lower lip/jaw down 70 %), the inner mouth is dark with an upper-teeth band and a tongue hint, and
the mouth half-width is ``mouth_w * (0.72 + 0.5 * width)`` so that rounded visemes (width 0) purse
the lips and spread ones (width 1) widen them.

The parts live in their own modules: :mod:`.identity` (the person, sampled from a seed),
:mod:`.colours` (palettes), :mod:`.backgrounds`, :mod:`.motion` (pose, blink and gaze tracks),
:mod:`.canvas` (fixed-point coordinates, one-shape compositing), :mod:`.head` (plate and head
layer) and :mod:`.features` (mouth, eyes, glasses); this module composes a frame from them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from .backgrounds import render_background  # noqa: F401  (re-exported)
from .colours import EYE_COLOURS, HAIR_COLOURS, SKIN_TONES  # noqa: F401  (re-exported)
from .features import FaceFeatures
from .head import HeadLayers
from .identity import BACKGROUND_KINDS, HAIR_STYLES, PHOTO_BACKGROUNDS, Identity  # noqa: F401  (re-exported)
from .motion import blink_track, gaze_track, head_motion

__all__ = [
    "FaceRenderer",
    "Identity",
    "RenderResult",
    "blink_track",
    "gaze_track",
    "head_motion",
]


# ---------------------------------------------------------------------------------- rendering
@dataclass
class RenderResult:
    """Frames plus their exact ground truth.

    ``face_boxes``/``mouth_boxes``: ``(T, 4)`` float32 ``x0, y0, x1, y1``; ``masks``: ``(T, H, W)``
    bool head masks; ``pose``: ``(T, 4)`` dx, dy, degrees, scale; ``blink``: ``(T,)`` eyelid closure;
    ``gaze``: ``(T, 2)``; ``blink_starts``: seconds.
    """

    frames: np.ndarray
    face_boxes: np.ndarray
    mouth_boxes: np.ndarray
    masks: np.ndarray
    pose: np.ndarray
    blink: np.ndarray
    gaze: np.ndarray
    blink_starts: list[float]


class FaceRenderer(HeadLayers, FaceFeatures):
    """Renders one :class:`Identity` at ``size x size`` pixels (drawing at ``supersample`` x)."""

    def __init__(self, identity: Identity, size: int = 128, supersample: int = 2) -> None:
        if size < 32:
            raise ValueError(f"size must be >= 32, got {size}")
        if supersample < 1:
            raise ValueError(f"supersample must be >= 1, got {supersample}")
        self.identity = identity
        self.size = int(size)
        self.ss = int(supersample)
        self.big = self.size * self.ss
        idn = identity
        s = float(self.size)
        self.cx = 0.5 * s
        self.cy = idn.face_cy * s
        self.fw = idn.face_w * s
        self.fh = idn.face_h * s
        # the neck pivot for head rotation
        self.pivot = (self.cx, self.cy + 0.95 * self.fh)
        self.face_outline = self._face_outline()
        self.plate = self._plate()
        self._build_head()

    # ---- public API
    def pose_matrix(self, pose) -> np.ndarray:
        """2x3 affine (output pixels, corner convention) for ``pose = (dx, dy, degrees, scale)``."""
        dx, dy, deg, sc = (float(v) for v in pose)
        m = cv2.getRotationMatrix2D(self.pivot, deg, sc)
        m[:, 2] += (dx, dy)
        return m

    def _transform_box(self, m: np.ndarray, box) -> np.ndarray:
        x0, y0, x1, y1 = box
        pts = np.array([[x0, y0, 1], [x1, y0, 1], [x0, y1, 1], [x1, y1, 1]], np.float64) @ m.T
        return np.array([pts[:, 0].min(), pts[:, 1].min(), pts[:, 0].max(), pts[:, 1].max()], np.float64)

    def face_box(self, pose=(0, 0, 0, 1)) -> np.ndarray:
        m = self.pose_matrix(pose)
        pts = np.concatenate([self.face_outline, np.ones((len(self.face_outline), 1))], axis=1) @ m.T
        return np.array([pts[:, 0].min(), pts[:, 1].min(), pts[:, 0].max(), pts[:, 1].max()], np.float64)

    def render_frame(self, openness: float = 0.0, width: float = 0.5, blink: float = 0.0,
                     pose=(0.0, 0.0, 0.0, 1.0), gaze=(0.0, 0.0)
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """One frame: ``(rgb uint8 (S, S, 3), face_box (4,), mouth_box (4,), head mask bool (S, S))``.

        ``blink`` is the eyelid closure (0 open, 1 shut), ``pose`` ``(dx px, dy px, degrees, scale)``
        about the neck, ``gaze`` the iris offset in units of the eye half-size.
        """
        img = self._head_rgb.copy()
        for side in (-1, 1):
            self._draw_eye(img, side, blink, gaze)
        mouth = self._draw_mouth(img, openness, width)
        self._draw_glasses(img)
        m = self.pose_matrix(pose)
        S, B, ss = self.size, self.big, self.ss
        # Work only on the region the head can reach under this pose (aligned to whole output pixels).
        dx, dy, deg, sc = (float(v) for v in pose)
        reach = math.hypot(dx, dy) + (abs(sc - 1.0) + sc * abs(math.radians(deg))) * self._reach + 1.0
        pad = math.ceil(reach) * ss + ss
        bx0, by0, bx1, by1 = self._bbox
        X0 = max(0, (bx0 - pad) // ss * ss)
        Y0 = max(0, (by0 - pad) // ss * ss)
        X1 = min(B, -(-(bx1 + pad) // ss) * ss)
        Y1 = min(B, -(-(by1 + pad) // ss) * ss)
        alpha = self._alpha4[Y0:Y1, X0:X1]
        # premultiplied RGBA on the supersampled canvas, moved by the pose, then area-downsampled
        layer = np.empty((Y1 - Y0, X1 - X0, 4), np.float32)
        layer[..., :3] = img[Y0:Y1, X0:X1]
        layer[..., :3] *= alpha
        layer[..., 3:] = alpha
        if any(abs(v - d) > 1e-12 for v, d in zip((dx, dy, deg, sc), (0.0, 0.0, 0.0, 1.0))):
            mb = np.vstack([m, [0.0, 0.0, 1.0]])
            mb[:2, 2] *= ss
            # cv2 pixel-centre coordinates of the crop: x_crop = x * ss - 0.5 - X0
            to_corner = np.array([[1, 0, 0.5 + X0], [0, 1, 0.5 + Y0], [0, 0, 1]], np.float64)
            to_crop = np.array([[1, 0, -0.5 - X0], [0, 1, -0.5 - Y0], [0, 0, 1]], np.float64)
            full = to_crop @ mb @ to_corner
            layer = cv2.warpAffine(layer, full[:2], (X1 - X0, Y1 - Y0), flags=cv2.INTER_LINEAR,
                                   borderMode=cv2.BORDER_CONSTANT, borderValue=(0, 0, 0, 0))
        x0, y0, x1, y1 = X0 // ss, Y0 // ss, X1 // ss, Y1 // ss
        if ss > 1:
            layer = cv2.resize(layer, (x1 - x0, y1 - y0), interpolation=cv2.INTER_AREA)
        a = layer[..., 3:]
        plate = self.plate[y0:y1, x0:x1]
        out = plate.astype(np.float32) * (1.0 - a) + layer[..., :3]
        region = np.clip(np.rint(out), 0, 255).astype(np.uint8)
        a2 = a[..., 0]
        # pixels the head does not touch are exactly the plate
        untouched = a2 <= 0.0
        region[untouched] = plate[untouched]
        frame = self.plate.copy()
        frame[y0:y1, x0:x1] = region
        mask = np.zeros((S, S), bool)
        mask[y0:y1, x0:x1] = ~untouched
        return frame, self.face_box(pose), self._transform_box(m, mouth), mask

    def reference(self) -> np.ndarray:
        """Neutral portrait: mouth closed, eyes open, looking ahead, no head motion."""
        return self.render_frame(0.0, 0.5, 0.0, (0.0, 0.0, 0.0, 1.0), (0.0, 0.0))[0]

    def render(self, openness, width, *, seed: int = 0, fps: float = 25.0, motion: float = 1.0,
               blinks: bool = True, gaze: bool = True) -> RenderResult:
        """Render a clip for per-frame ``openness``/``width`` arrays; blinks, gaze and motion from ``seed``."""
        o = np.asarray(openness, np.float64).reshape(-1)
        w = np.asarray(width, np.float64).reshape(-1)
        if o.shape != w.shape:
            raise ValueError("openness and width must have the same length")
        T = int(o.shape[0])
        rng = np.random.default_rng(np.random.SeedSequence([int(seed), 0xF4A3]))
        pose = head_motion(T, fps, rng, self.size, motion)
        blink, starts = blink_track(T, fps, rng) if blinks else (np.zeros(T), [])
        gz = gaze_track(T, fps, rng) if gaze else np.zeros((T, 2))
        S = self.size
        frames = np.empty((T, S, S, 3), np.uint8)
        masks = np.empty((T, S, S), bool)
        fboxes = np.empty((T, 4), np.float32)
        mboxes = np.empty((T, 4), np.float32)
        for t in range(T):
            frames[t], fboxes[t], mboxes[t], masks[t] = self.render_frame(o[t], w[t], blink[t], pose[t], gz[t])
        return RenderResult(frames=frames, face_boxes=fboxes, mouth_boxes=mboxes, masks=masks,
                            pose=pose.astype(np.float32), blink=blink.astype(np.float32), gaze=gz.astype(np.float32),
                            blink_starts=starts)
