"""Static backgrounds of the synthetic scenes (gradients, stripes, tiles, noise, bokeh, photos)."""

from __future__ import annotations

import math
from typing import Any

import cv2
import numpy as np

from .canvas import _ONE, _SHIFT

def _value_noise(rng: np.random.Generator, size: int, octaves: int = 4) -> np.ndarray:
    out = np.zeros((size, size), np.float32)
    amp, total = 1.0, 0.0
    for o in range(octaves):
        n = 3 * 2**o
        grid = rng.random((n, n)).astype(np.float32)
        out += amp * cv2.resize(grid, (size, size), interpolation=cv2.INTER_CUBIC)
        total += amp
        amp *= 0.5
    out /= total
    return np.clip((out - out.min()) / max(float(np.ptp(out)), 1e-6), 0, 1)


def render_background(spec: dict[str, Any], size: int) -> np.ndarray:
    """The static background image ``(size, size, 3)`` uint8 described by ``spec``."""
    rng = np.random.default_rng(int(spec.get("texture_seed", 0)))
    c = [np.array(x, np.float32) for x in spec["colours"]]
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    xx = (xx + 0.5) / size
    yy = (yy + 0.5) / size
    ang = math.radians(float(spec.get("angle", 0.0)))
    proj = (xx - 0.5) * math.cos(ang) + (yy - 0.5) * math.sin(ang)
    kind = spec["kind"]
    if kind == "gradient":
        t = np.clip(proj / 1.42 + 0.5, 0, 1)[..., None]
        img = c[0] * (1 - t) + c[1] * t
    elif kind == "radial":
        r = np.sqrt((xx - 0.5) ** 2 + (yy - 0.42) ** 2)[..., None]
        t = np.clip(r / 0.75, 0, 1)
        img = c[0] * (1 - t) + c[1] * t
    elif kind == "stripes":
        period = float(spec.get("period", 0.12))
        t = (0.5 + 0.5 * np.sin(2 * math.pi * proj / period))[..., None]
        t = np.clip((t - 0.5) * 3 + 0.5, 0, 1)
        img = c[0] * (1 - t) + c[1] * t
    elif kind == "tiles":
        period = float(spec.get("period", 0.12)) * 1.3
        n = math.ceil(1 / period) + 2
        jitter = rng.normal(0, 10, (n, n, 3)).astype(np.float32)
        gi = np.clip((xx / period).astype(int), 0, n - 1)
        gj = np.clip((yy / period).astype(int), 0, n - 1)
        img = c[0] + jitter[gj, gi]
        fx = (xx / period) % 1.0
        fy = (yy / period) % 1.0
        grout = ((fx < 0.06) | (fy < 0.06))[..., None]
        img = np.where(grout, c[2] * 0.5 + c[0] * 0.5, img)
    elif kind == "noise":
        t = _value_noise(rng, size)[..., None]
        img = c[0] * (1 - t) + c[1] * t
    elif kind == "bokeh":
        t = np.clip(proj / 1.42 + 0.5, 0, 1)[..., None]
        img = (c[0] * (1 - t) + c[1] * t).astype(np.float32)
        layer = np.zeros((size, size, 3), np.float32)
        weight = np.zeros((size, size, 1), np.float32)
        for _ in range(int(rng.integers(8, 20))):
            cx, cy = rng.random(2) * size
            rad = float(rng.uniform(0.03, 0.12)) * size
            col = np.clip(c[2] + rng.normal(0, 40, 3), 0, 255)
            disc = np.zeros((size, size), np.uint8)
            cv2.circle(disc, (int(cx * _ONE), int(cy * _ONE)), int(rad * _ONE), 255, -1, cv2.LINE_AA, _SHIFT)
            a = disc.astype(np.float32)[..., None] / 255.0 * float(rng.uniform(0.25, 0.6))
            layer = layer * (1 - a) + col * a
            weight = weight * (1 - a) + a
        img = img * (1 - weight) + layer
        img = cv2.GaussianBlur(img, (0, 0), max(0.6, size / 160))
    elif kind == "photo":
        img = _photo(spec, size).astype(np.float32)
    else:
        raise ValueError(f"unknown background kind {kind!r}")
    grain = rng.normal(0, 2.0, (size, size, 1)).astype(np.float32)
    return np.clip(np.rint(img + grain), 0, 255).astype(np.uint8)


def _photo(spec: dict[str, Any], size: int) -> np.ndarray:
    import skimage.data  # optional (scikit-image); only used for "photo" backgrounds

    img = np.asarray(getattr(skimage.data, spec["image"])())
    if img.dtype != np.uint8:
        img = (np.clip(img.astype(np.float32), 0, 1) * 255).astype(np.uint8) if img.max() <= 1 else img.astype(np.uint8)
    if img.ndim == 2:
        tint = np.array(spec["colours"][0], np.float32) / 255.0
        img = (img[..., None].astype(np.float32) * (0.4 + 0.6 * tint)).astype(np.uint8)
    h, w = img.shape[:2]
    side = min(h, w)
    img = img[(h - side) // 2:(h - side) // 2 + side, (w - side) // 2:(w - side) // 2 + side, :3]
    img = cv2.resize(img, (size, size), interpolation=cv2.INTER_AREA)
    blur = float(spec.get("blur", 0.0)) * size / 128
    if blur > 0.3:
        img = cv2.GaussianBlur(img, (0, 0), blur)
    return img
