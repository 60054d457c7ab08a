"""The per-frame features of a face, drawn on a copy of the head layer: mouth, eyes, glasses."""

from __future__ import annotations

import math

import cv2
import numpy as np

from .canvas import _ONE, _SHIFT, Canvas, _rounded_rect
from .colours import _mix, _rgb, _scale


class FaceFeatures(Canvas):
    """Mouth (openness, width), eyes (blink, gaze) and glasses on the supersampled head image."""

    # ---- per-frame features
    def mouth_geometry(self, openness: float, width: float) -> dict[str, float]:
        """Mouth shape in output pixels (neutral pose) for ``(openness, width)``."""
        idn = self.identity
        o = float(np.clip(openness, 0, 1))
        w = float(np.clip(width, 0, 1))
        mx, my = self.P(0.0, idn.mouth_v)
        hw = idn.mouth_w * self.fw * (0.72 + 0.5 * w)
        open_h = o * 0.3 * self.fh
        pucker = (0.5 - min(w, 0.5)) * 2  # 0..1 when rounding
        tu = idn.lip_upper * self.fh * (1 + 0.35 * pucker)
        tl = idn.lip_lower * self.fh * (1 + 0.35 * pucker)
        y_up = my - 0.3 * open_h
        y_lo = my + 0.7 * open_h
        return {"mx": mx, "my": my, "hw": hw, "open_h": open_h, "tu": tu, "tl": tl, "y_up": y_up, "y_lo": y_lo}

    def _draw_mouth(self, img: np.ndarray, openness: float, width: float) -> tuple[float, float, float, float]:
        idn = self.identity
        g = self.mouth_geometry(openness, width)
        mx, hw, open_h, tu, tl = g["mx"], g["hw"], g["open_h"], g["tu"], g["tl"]
        yc = (g["y_up"] + g["y_lo"]) / 2
        half_open = open_h / 2
        lip = idn.lip_colour
        aa = cv2.LINE_AA
        # outer lip shape: upper half-ellipse and lower half-ellipse
        cv2.ellipse(img, self._c(mx, yc), (self._l(hw), self._l(half_open + tu)), 0, 180, 360, lip, -1, aa, _SHIFT)
        cv2.ellipse(img, self._c(mx, yc), (self._l(hw), self._l(half_open + tl)), 0, 0, 180, lip, -1, aa, _SHIFT)
        # lighter lower lip highlight
        cv2.ellipse(img, self._c(mx, yc + half_open + tl * 0.45), (self._l(hw * 0.45), self._l(tl * 0.22)),
                    0, 0, 360, _mix(lip, (255, 255, 255), 0.18), -1, aa, _SHIFT)
        seam = _scale(lip, 0.45)
        # the lip seam is always there, so opening the mouth only ever adds darkness
        cv2.line(img, self._c(mx - hw * 0.92, yc), self._c(mx + hw * 0.92, yc), seam, max(1, self.ss // 2) + 1,
                 aa, _SHIFT)
        if open_h * self.ss > 0.6:
            inner_w = hw * 0.86
            cv2.ellipse(img, self._c(mx, yc), (self._l(inner_w), self._l(half_open)), 0, 0, 360, seam,
                        max(1, self.ss // 2), aa, _SHIFT)
            cv2.ellipse(img, self._c(mx, yc), (self._l(inner_w), self._l(half_open)), 0, 0, 360, (38, 14, 18),
                        -1, aa, _SHIFT)
            # tongue hint at the bottom
            cv2.ellipse(img, self._c(mx, g["y_lo"]), (self._l(inner_w * 0.5), self._l(open_h * 0.2)),
                        0, 180, 360, (112, 40, 50), -1, aa, _SHIFT)
            # upper teeth hanging from the upper lip
            teeth_h = min(open_h * 0.22, 0.04 * self.fh)
            if teeth_h * self.ss > 0.5:
                cv2.ellipse(img, self._c(mx, g["y_up"] - 0.2 * teeth_h), (self._l(inner_w * 0.62), self._l(teeth_h)),
                            0, 0, 180, idn.teeth_colour, -1, aa, _SHIFT)
        return (mx - hw, yc - half_open - tu, mx + hw, yc + half_open + tl)

    def _draw_eye(self, img: np.ndarray, side: int, closure: float, gaze: tuple[float, float]) -> None:
        idn = self.identity
        ex, ey = self.P(side * idn.eye_spacing, idn.eye_v)
        ew = idn.eye_w * self.fw
        eh = ew * idn.eye_aspect
        aa = cv2.LINE_AA
        # the eyeball is drawn on a patch and pasted through the (anti-aliased) eye-opening mask,
        # so the iris never spills onto the skin
        ss = self.ss
        x0 = max(0, math.floor((ex - ew) * ss) - 2)
        y0 = max(0, math.floor((ey - eh) * ss) - 2)
        x1 = min(self.big, math.ceil((ex + ew) * ss) + 3)
        y1 = min(self.big, math.ceil((ey + eh) * ss) + 3)
        ox, oy = x0 * _ONE, y0 * _ONE

        def c(x: float, y: float) -> tuple[int, int]:
            px, py = self._c(x, y)
            return px - ox, py - oy

        patch = img[y0:y1, x0:x1]
        eye = np.empty_like(patch)
        eye[:] = (240, 238, 232)
        ir = 0.92 * eh
        ix = ex + gaze[0] * (ew - ir) * 0.9
        iy = ey + gaze[1] * eh * 0.4
        cv2.circle(eye, c(ix, iy), self._l(ir), idn.eye_colour, -1, aa, _SHIFT)
        cv2.circle(eye, c(ix, iy), self._l(ir * 0.45), (16, 12, 12), -1, aa, _SHIFT)
        cv2.circle(eye, c(ix + ir * 0.3, iy - ir * 0.3), self._l(ir * 0.18), (250, 250, 250), -1, aa, _SHIFT)
        mask = np.zeros(patch.shape[:2], np.uint8)
        cv2.ellipse(mask, c(ex, ey), (self._l(ew), self._l(eh)), 0, 0, 360, 255, -1, aa, _SHIFT)
        m = mask.astype(np.float32)[..., None] / 255.0
        patch[:] = np.rint(patch * (1 - m) + eye * m).astype(np.uint8)
        # upper eyelid: from the top of the eye down to an edge between the top and bottom arcs
        cl = float(np.clip(idn.lid + (1 - idn.lid) * closure, 0, 1))
        pad = 0.6 / ss * 2
        xs = np.linspace(ex - ew - pad, ex + ew + pad, 21)
        s = np.sqrt(np.clip(1 - ((xs - ex) / (ew + pad)) ** 2, 0, 1))
        top_y = ey - (eh + pad) * s
        edge_y = ey + (eh + pad) * s * (2 * cl - 1)
        lid_pts = np.concatenate([np.stack([xs, top_y], axis=1), np.stack([xs[::-1], edge_y[::-1]], axis=1)])
        cv2.fillPoly(img, [self._poly(lid_pts)], _scale(idn.skin, 0.93), aa, _SHIFT)
        lash = _rgb(np.minimum(np.array(idn.skin, np.float64), 60) * 0.5)
        cv2.polylines(img, [self._poly(np.stack([xs, edge_y], axis=1))], False, lash, max(1, ss // 2) + 1, aa, _SHIFT)

    def _draw_glasses(self, img: np.ndarray) -> None:
        idn = self.identity
        if idn.glasses is None:
            return
        col = idn.glasses_colour
        aa = cv2.LINE_AA
        th = max(1, round(0.7 * self.ss * self.size / 128))
        ew = idn.eye_w * self.fw
        rx, ry = ew * 1.45, ew * 1.05
        centres = [self.P(side * idn.eye_spacing, idn.eye_v + 0.01) for side in (-1, 1)]
        for (gx, gy) in centres:
            if idn.glasses == "round":
                cv2.ellipse(img, self._c(gx, gy), (self._l(rx), self._l(ry)), 0, 0, 360, col, th, aa, _SHIFT)
            else:
                pts = _rounded_rect(gx - rx, gy - ry * 0.85, gx + rx, gy + ry * 0.85, ry * 0.35)
                cv2.polylines(img, [self._poly(pts)], True, col, th, aa, _SHIFT)
        (lx, ly), (rx_, ry_) = centres
        cv2.line(img, self._c(lx + rx, ly - ry * 0.2), self._c(rx_ - rx, ry_ - ry * 0.2), col, th, aa, _SHIFT)
        for side, (gx, gy) in zip((-1, 1), centres):
            x_edge = gx + side * rx
            cv2.line(img, self._c(x_edge, gy - ry * 0.3), self._c(self.cx + side * self.fw * 0.97, gy - ry * 0.4), col,
                     th, aa, _SHIFT)
