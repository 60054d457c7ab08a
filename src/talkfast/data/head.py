"""The static layers of a face: the plate (background, neck, shoulders, neckline) and the head layer
(hair, ears, face skin with shading, cheeks, nose, beard, brows), both drawn once per renderer."""

from __future__ import annotations

import math

import cv2
import numpy as np

from .backgrounds import render_background
from .canvas import _SHIFT, Canvas, _rounded_rect
from .colours import _mix, _scale


class HeadLayers(Canvas):
    """Draws :attr:`plate` and the head layer (``_head_rgb``, ``_head_alpha``) of the renderer."""

    def _face_outline(self, n: int = 120) -> np.ndarray:
        idn = self.identity
        th = np.linspace(0, 2 * math.pi, n, endpoint=False)
        c, s = np.cos(th), np.sin(th)
        ex = np.where(s < 0, idn.top_n, idn.chin_n)
        u = np.sign(c) * np.abs(c) ** (2 / ex)
        v = np.sign(s) * np.abs(s) ** (2 / ex)
        u = u * np.where(v > 0, 1 - (1 - idn.jaw) * v**2, 1.0)
        return np.stack([self.cx + u * self.fw, self.cy + v * self.fh], axis=1)

    # ---- static plate: background + shoulders + neck
    def _plate(self) -> np.ndarray:
        idn = self.identity
        S, B = self.size, self.big
        bg = render_background(idn.background, S).astype(np.float32)
        canvas = np.zeros((B, B, 3), np.float32)
        alpha = np.zeros((B, B), np.float32)
        skin_dark = _scale(idn.skin, 0.86)
        shirt = idn.shirt_colour
        # neck
        neck_w = 0.5 * self.fw
        self._draw_layer(canvas, alpha, skin_dark, lambda m: cv2.fillPoly(m, [self._poly([
            (self.cx - neck_w, self.cy), (self.cx + neck_w, self.cy),
            (self.cx + neck_w * 1.08, S * 1.02), (self.cx - neck_w * 1.08, S * 1.02)])], 255, cv2.LINE_AA, _SHIFT))
        # shoulders
        sh_y = self.cy + 1.55 * self.fh
        self._draw_layer(canvas, alpha, shirt, lambda m: cv2.ellipse(
            m, self._c(self.cx, sh_y + 0.32 * S), (self._l(0.55 * S), self._l(0.36 * S)), 0, 0, 360, 255, -1,
            cv2.LINE_AA, _SHIFT))
        # neckline
        if idn.neckline == "v":
            pts = [(self.cx - neck_w * 1.1, sh_y - 0.02 * S), (self.cx + neck_w * 1.1, sh_y - 0.02 * S),
                   (self.cx, sh_y + 0.13 * S)]
            self._draw_layer(canvas, alpha, skin_dark, lambda m: cv2.fillPoly(
                m, [self._poly(pts)], 255, cv2.LINE_AA, _SHIFT))
        elif idn.neckline == "round":
            self._draw_layer(canvas, alpha, skin_dark, lambda m: cv2.ellipse(
                m, self._c(self.cx, sh_y - 0.01 * S), (self._l(neck_w * 1.2), self._l(0.05 * S)), 0, 0, 180, 255, -1,
                cv2.LINE_AA, _SHIFT))
        else:  # collar
            for side in (-1, 1):
                pts = [(self.cx, sh_y + 0.05 * S), (self.cx + side * neck_w * 1.3, sh_y - 0.05 * S),
                       (self.cx + side * neck_w * 1.6, sh_y + 0.06 * S)]
                self._draw_layer(canvas, alpha, _mix(shirt, (255, 255, 255), 0.5), lambda m, p=pts: cv2.fillPoly(
                    m, [self._poly(p)], 255, cv2.LINE_AA, _SHIFT))
        small_rgb = cv2.resize(canvas, (S, S), interpolation=cv2.INTER_AREA)
        small_a = cv2.resize(alpha, (S, S), interpolation=cv2.INTER_AREA)[..., None]
        out = bg * (1 - small_a) + small_rgb
        return np.clip(np.rint(out), 0, 255).astype(np.uint8)

    # ---- the static head layer
    def _build_head(self) -> None:
        idn = self.identity
        B = self.big
        rgb = np.zeros((B, B, 3), np.float32)  # premultiplied
        alpha = np.zeros((B, B), np.float32)
        rng = np.random.default_rng(np.random.SeedSequence([idn.seed, 0x4EAD]))
        hair_tex = self._hair_texture(rng)
        skin = idn.skin
        style = idn.hair_style
        fw, fh = self.fw, self.fh

        face_mask = np.zeros((B, B), np.uint8)
        cv2.fillPoly(face_mask, [self._poly(self.face_outline)], 255, cv2.LINE_AA, _SHIFT)

        # 1. hair behind the head
        if style in ("long", "bob", "curly", "afro"):
            def back(m):
                if style == "long":
                    x0, x1 = self.cx - 1.28 * fw, self.cx + 1.28 * fw
                    y0, y1 = self.cy - 0.4 * fh, self.cy + 1.75 * fh
                    cv2.fillPoly(m, [self._poly(_rounded_rect(x0, y0, x1, y1, 0.5 * fw))], 255, cv2.LINE_AA, _SHIFT)
                elif style == "bob":
                    cv2.ellipse(m, self._c(self.cx, self.cy + 0.05 * fh), (self._l(1.3 * fw), self._l(0.98 * fh)),
                                0, 0, 360, 255, -1, cv2.LINE_AA, _SHIFT)
                elif style == "afro":
                    cv2.ellipse(m, self._c(self.cx, self.cy - 0.3 * fh), (self._l(1.55 * fw), self._l(1.05 * fh)),
                                0, 0, 360, 255, -1, cv2.LINE_AA, _SHIFT)
                else:  # curly
                    for k in range(26):
                        a = math.pi * (0.85 + 1.3 * k / 25)
                        r = 0.2 * fw * (0.8 + 0.4 * rng.random())
                        x = self.cx + 1.12 * fw * math.cos(a)
                        y = self.cy - 0.15 * fh + 1.02 * fh * math.sin(a)
                        cv2.circle(m, self._c(x, y), self._l(r), 255, -1, cv2.LINE_AA, _SHIFT)
                    cv2.ellipse(m, self._c(self.cx, self.cy + 0.1 * fh), (self._l(1.2 * fw), self._l(0.85 * fh)),
                                0, 0, 360, 255, -1, cv2.LINE_AA, _SHIFT)
            self._draw_layer(rgb, alpha, None, back, texture=hair_tex * 0.82)

        # 2. ears (+ earrings)
        ear_col = _scale(skin, 0.9)
        if style not in ("long", "bob", "afro"):
            for side in (-1, 1):
                ex, ey = self.P(side * 0.97, -0.02)
                self._draw_layer(rgb, alpha, ear_col, lambda m, ex=ex, ey=ey: cv2.ellipse(
                    m, self._c(ex, ey), (self._l(0.17 * fw * idn.ear_size), self._l(0.2 * fh * idn.ear_size)),
                    0, 0, 360, 255, -1, cv2.LINE_AA, _SHIFT))
                self._draw_layer(rgb, alpha, _scale(skin, 0.72), lambda m, ex=ex, ey=ey, side=side: cv2.ellipse(
                    m, self._c(ex + side * 0.04 * fw, ey), (self._l(0.07 * fw * idn.ear_size),
                                                           self._l(0.11 * fh * idn.ear_size)),
                    0, 0, 360, 255, -1, cv2.LINE_AA, _SHIFT), opacity=0.6)
        if idn.earrings is not None:
            for side in (-1, 1):
                ex, ey = self.P(side * 1.0, 0.2)
                self._draw_layer(rgb, alpha, idn.earrings, lambda m, ex=ex, ey=ey: cv2.circle(
                    m, self._c(ex, ey), self._l(0.06 * fw), 255, -1, cv2.LINE_AA, _SHIFT))

        # 3. face skin with soft shading
        a_face = face_mask.astype(np.float32) / 255.0
        yy, xx = np.mgrid[0:B, 0:B].astype(np.float32)
        xs = ((xx + 0.5) / self.ss - self.cx) / fw
        ys = ((yy + 0.5) / self.ss - self.cy) / fh
        shade = 1.04 - 0.12 * np.clip(xs**2 + 0.6 * ys**2, 0, 1.5)
        face_rgb = np.array(skin, np.float32)[None, None, :] * shade[..., None]
        rgb *= (1 - a_face)[..., None]
        rgb += face_rgb * a_face[..., None]
        alpha *= 1 - a_face
        alpha += a_face
        self._xs, self._ys = xs, ys

        # 4. cheeks, nose, beard
        if idn.blush > 0.02:
            for side in (-1, 1):
                bx, by = self.P(side * 0.5, 0.3)
                self._draw_layer(rgb, alpha, (215, 95, 100), lambda m, bx=bx, by=by: cv2.ellipse(
                    m, self._c(bx, by), (self._l(0.2 * fw), self._l(0.1 * fh)), 0, 0, 360, 255, -1,
                    cv2.LINE_AA, _SHIFT), opacity=idn.blush * 0.5)
        nose_col = _scale(skin, 0.8)
        nx, ny = self.P(0.0, idn.eye_v + idn.nose_len + 0.1)
        self._draw_layer(rgb, alpha, nose_col, lambda m: cv2.ellipse(
            m, self._c(nx, ny - 0.02 * fh), (self._l(idn.nose_w * fw), self._l(0.06 * fh)), 0, 0, 360, 255, -1,
            cv2.LINE_AA, _SHIFT), opacity=0.45)
        self._draw_layer(rgb, alpha, nose_col, lambda m: cv2.line(
            m, self._c(nx - 0.05 * fw, self.cy + (idn.eye_v + 0.05) * fh), self._c(nx - 0.07 * fw, ny - 0.04 * fh),
            255, max(1, round(0.6 * self.ss * fw / 28)), cv2.LINE_AA, _SHIFT), opacity=0.35)
        for side in (-1, 1):
            self._draw_layer(rgb, alpha, _scale(skin, 0.45), lambda m, side=side: cv2.ellipse(
                m, self._c(nx + side * 0.065 * fw, ny + 0.015 * fh), (self._l(0.04 * fw), self._l(0.022 * fh)),
                0, 0, 360, 255, -1, cv2.LINE_AA, _SHIFT), opacity=0.8)
        if idn.beard is not None:
            self._draw_beard(rgb, alpha, face_mask, hair_tex)

        # 5. hair on top of the head
        self._draw_hair_cap(rgb, alpha, face_mask, hair_tex, rng)

        # 6. brows
        for side in (-1, 1):
            self._draw_brow(rgb, alpha, side)

        self._head_alpha = alpha
        # straight (non-premultiplied) uint8 colour for cv2 drawing; alpha stays static per frame
        safe = np.maximum(alpha, 1e-6)[..., None]
        straight = np.where(alpha[..., None] > 0, rgb / safe, 0.0)
        self._head_rgb = np.clip(np.rint(straight), 0, 255).astype(np.uint8)
        self._alpha4 = alpha[..., None].astype(np.float32)
        ys_idx, xs_idx = np.nonzero(alpha > 0)
        pad = 2 * self.ss
        self._bbox = (int(max(0, xs_idx.min() - pad)), int(max(0, ys_idx.min() - pad)),
                      int(min(B, xs_idx.max() + pad + 1)), int(min(B, ys_idx.max() + pad + 1)))
        corners = np.array([[self._bbox[0], self._bbox[1]], [self._bbox[2], self._bbox[1]],
                            [self._bbox[0], self._bbox[3]], [self._bbox[2], self._bbox[3]]], np.float64) / self.ss
        self._reach = float(np.max(np.hypot(corners[:, 0] - self.pivot[0], corners[:, 1] - self.pivot[1])))

    def _hair_texture(self, rng: np.random.Generator) -> np.ndarray:
        idn = self.identity
        B = self.big
        base = np.array(idn.hair_colour, np.float32)
        tex = np.empty((B, B, 3), np.float32)
        tex[:] = base
        strands = np.zeros((B, B), np.float32)
        n = 140 if idn.hair_style not in ("curly", "afro") else 90
        for _ in range(n):
            x0, y0 = rng.random(2) * self.size
            ang = rng.normal(math.pi / 2, 0.5)
            ln = rng.uniform(0.08, 0.25) * self.size
            val = float(rng.uniform(-1, 1))
            if idn.hair_style in ("curly", "afro"):
                cv2.circle(strands, self._c(x0, y0), self._l(rng.uniform(0.015, 0.035) * self.size), val,
                           max(1, self.ss // 2), cv2.LINE_AA, _SHIFT)
            else:
                cv2.line(strands, self._c(x0, y0), self._c(x0 + ln * math.cos(ang), y0 + ln * math.sin(ang)), val,
                         max(1, self.ss // 2), cv2.LINE_AA, _SHIFT)
        lum = float(np.mean(base))
        amp = 0.12 * (60 + lum)
        tex += strands[..., None] * amp
        return np.clip(tex, 0, 255)

    def _hairline_v(self, u: np.ndarray) -> np.ndarray:
        idn = self.identity
        hl = idn.hairline
        if idn.hair_style == "fringe":
            return -0.42 + 0.1 * u**2 + 0.08 * idn.part * u
        if idn.hair_style == "bald":
            return np.full_like(u, -1.5)
        if idn.hair_style in ("buzz",):
            return hl + 0.3 * u**2
        return hl + 0.4 * u**2 + 0.06 * idn.part * u

    def _draw_hair_cap(self, rgb, alpha, face_mask, hair_tex, rng) -> None:
        idn = self.identity
        fw, fh = self.fw, self.fh
        B = self.big
        vol = idn.hair_volume if idn.hair_style not in ("buzz", "bald") else 0.02
        cap = np.zeros((B, B), np.uint8)
        cv2.ellipse(cap, self._c(self.cx, self.cy - 0.1 * fh), (self._l(fw * (1.05 + 0.5 * vol)),
                                                               self._l(fh * (0.9 + vol))),
                    0, 0, 360, 255, -1, cv2.LINE_AA, _SHIFT)
        if idn.hair_style == "bun":
            cv2.circle(cap, self._c(self.cx, self.cy - 1.08 * fh), self._l(0.38 * fw), 255, -1, cv2.LINE_AA, _SHIFT)
        capf = cap.astype(np.float32) / 255.0
        xs, ys = self._xs, self._ys
        hv = self._hairline_v(xs)
        # soft (about one output pixel) transition at the hairline and at the lower limit
        soft = 1.0 / self.fh
        below_hairline = np.clip((ys - hv) / (2 * soft) + 0.5, 0, 1)
        facef = face_mask.astype(np.float32) / 255.0
        side_limit = {"long": 0.25, "bob": 0.3, "curly": 0.1, "afro": 0.1}.get(idn.hair_style, -0.05)
        above_limit = np.clip((side_limit - ys) / (2 * soft) + 0.5, 0, 1)
        a = capf * (1 - facef * below_hairline) * above_limit
        if idn.hair_style == "bald":
            a = capf * (1 - facef) * np.clip((np.abs(xs) - 0.85) * 8, 0, 1) * above_limit * (ys > -0.7)
        opacity = 0.55 if idn.hair_style == "buzz" else 1.0
        a = a * opacity
        rgb *= (1 - a)[..., None]
        rgb += hair_tex * a[..., None]
        alpha *= 1 - a
        alpha += a

    def _draw_beard(self, rgb, alpha, face_mask, hair_tex) -> None:
        idn = self.identity
        xs, ys = self._xs, self._ys
        facef = face_mask.astype(np.float32) / 255.0
        mv = idn.mouth_v
        # The area the mouth can reach (and the lip-sync metric's measuring region, see
        # talkfast.eval.lipsync) stays bare: beards grow on the jaw sides and below the chin.
        mouth_clear = (np.abs(xs) < 0.55) & (ys < mv + 0.42)
        if idn.beard == "stubble":
            region = (ys > 0.15) & (np.abs(xs) < 1.0)
            opacity = 0.3
        elif idn.beard == "full":
            region = (ys > 0.05) & ~mouth_clear
            opacity = 0.92
        elif idn.beard == "goatee":
            region = (ys > mv + 0.42) & (np.abs(xs) < 0.42)
            opacity = 0.9
        else:  # moustache, above the upper lip's highest position
            region = (ys > mv - 0.27) & (ys < mv - 0.15) & (np.abs(xs) < idn.mouth_w * 1.15)
            opacity = 0.92
        m = region.astype(np.float32) * facef
        m = cv2.GaussianBlur(m, (0, 0), 0.5 * self.ss) * opacity
        m *= facef
        rgb *= (1 - m)[..., None]
        rgb += hair_tex * 0.9 * m[..., None]
        alpha *= 1 - m
        alpha += m

    def _draw_brow(self, rgb, alpha, side: int) -> None:
        idn = self.identity
        ex, ey = self.P(side * idn.eye_spacing * 1.02, idn.eye_v - idn.brow_raise - 0.04)
        half = idn.eye_w * 1.25 * self.fw
        n = 9
        t = np.linspace(-1, 1, n)
        if idn.brow_shape == "arched":
            lift = 0.35 * (1 - t**2)
        elif idn.brow_shape == "angled":
            lift = 0.4 * np.clip(1 - np.abs(t - 0.3 * side), 0, 1)
        else:
            lift = 0.08 * (1 - t**2)
        thick = idn.brow_thickness * self.fh
        xs = ex + t * half
        ys = ey - lift * thick * 2.2 + side * t * 0.15 * thick
        taper = 1.0 - 0.45 * ((t * side + 1) / 2)  # thicker at the inner end
        upper = np.stack([xs, ys - thick * taper / 2], axis=1)
        lower = np.stack([xs, ys + thick * taper / 2], axis=1)[::-1]
        pts = np.concatenate([upper, lower])
        self._draw_layer(rgb, alpha, idn.brow_colour, lambda m: cv2.fillPoly(
            m, [self._poly(pts)], 255, cv2.LINE_AA, _SHIFT), opacity=0.92)
