"""The drawing canvas of :class:`~talkfast.data.render.FaceRenderer`: fixed-point cv2 coordinates on
a ``supersample`` x canvas and premultiplied compositing of one shape.

Design units are output pixels in the corner convention (pixel ``i`` covers ``[i, i + 1)``); face
units ``(u, v)`` are offsets from the face centre in half-widths and half-heights. A subclass sets
``identity``, ``size``, ``ss`` (supersampling), ``big`` (``size * ss``), ``cx``, ``cy``, ``fw`` and
``fh`` before drawing.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from .identity import Identity

_SHIFT = 4  # fractional bits for cv2 drawing coordinates
_ONE = 1 << _SHIFT


class Canvas:
    """Coordinate conversions and single-shape compositing shared by the head and feature drawing."""

    identity: Identity
    size: int
    ss: int
    big: int
    cx: float
    cy: float
    fw: float
    fh: float

    # ---- geometry helpers (design units = output pixels, corner convention)
    def P(self, u: float, v: float) -> tuple[float, float]:
        """Face units -> output pixel coordinates (neutral pose)."""
        return self.cx + u * self.fw, self.cy + v * self.fh

    def _c(self, x: float, y: float) -> tuple[int, int]:
        """Output coordinates -> fixed-point cv2 coordinates on the supersampled canvas."""
        return round((x * self.ss - 0.5) * _ONE), round((y * self.ss - 0.5) * _ONE)

    def _l(self, d: float) -> int:
        """A length in output pixels -> fixed-point length on the canvas."""
        return max(0, round(d * self.ss * _ONE))

    def _poly(self, pts: np.ndarray) -> np.ndarray:
        arr = np.asarray(pts, np.float64)
        return np.rint((arr * self.ss - 0.5) * _ONE).astype(np.int32).reshape(-1, 1, 2)

    def _draw_layer(self, canvas: np.ndarray, alpha: np.ndarray, colour, draw, opacity: float = 1.0,
                    texture: np.ndarray | None = None) -> np.ndarray:
        """Draw a shape with ``draw(mask)`` and composite it (premultiplied) onto ``canvas``/``alpha``."""
        m = np.zeros(alpha.shape, np.uint8)
        draw(m)
        a = m.astype(np.float32) / 255.0 * opacity
        col = texture if texture is not None else np.array(colour, np.float32)
        canvas *= (1 - a)[..., None]
        canvas += col * a[..., None]
        alpha *= 1 - a
        alpha += a
        return a


def _rounded_rect(x0: float, y0: float, x1: float, y1: float, r: float, n: int = 6) -> np.ndarray:
    r = min(r, (x1 - x0) / 2, (y1 - y0) / 2)
    pts = []
    for cx, cy, a0 in ((x1 - r, y0 + r, -90), (x1 - r, y1 - r, 0), (x0 + r, y1 - r, 90), (x0 + r, y0 + r, 180)):
        for k in range(n + 1):
            a = math.radians(a0 + 90 * k / n)
            pts.append((cx + r * math.cos(a), cy + r * math.sin(a)))
    return np.array(pts, np.float64)
