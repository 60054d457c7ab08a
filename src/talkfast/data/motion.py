"""Per-frame motion tracks of a synthetic clip: head pose, blinks and gaze, from a random generator."""

from __future__ import annotations

import math

import numpy as np

def head_motion(num_frames: int, fps: float, rng: np.random.Generator, size: int = 128,
                amplitude: float = 1.0) -> np.ndarray:
    """Smooth small head motion ``(T, 4)``: dx, dy (px), rotation (deg), scale.

    Each channel is a sum of three sinusoids (0.08-0.6 Hz, random phases); at ``amplitude`` 1 the
    translation stays within about +-2.5 % of ``size``, the rotation within +-3 deg and the scale
    within +-2 %.
    """
    t = np.arange(num_frames, dtype=np.float64) / fps
    out = np.zeros((num_frames, 4), np.float64)
    limits = (0.012 * size, 0.009 * size, 1.4, 0.008)
    for ch, lim in enumerate(limits):
        for _ in range(3):
            f = rng.uniform(0.08, 0.6)
            out[:, ch] += lim * rng.uniform(0.3, 0.7) * np.sin(2 * math.pi * f * t + rng.uniform(0, 2 * math.pi))
    out *= amplitude
    out[:, 3] += 1.0
    return out


def blink_track(num_frames: int, fps: float, rng: np.random.Generator, rate_per_s: float = 0.33,
                duration: tuple[float, float] = (0.12, 0.18)) -> tuple[np.ndarray, list[float]]:
    """Eyelid closure per frame in [0, 1] (1 closed) and the blink start times.

    Blink starts follow a Poisson process (``rate_per_s``, about 3.3 per 10 s) with at least 0.9 s
    between blinks; each blink closes in 40 % and reopens in 60 % of its 120-180 ms, and the value
    of a frame is the mean closure over its 40 ms exposure.
    """
    total = num_frames / fps
    starts: list[float] = []
    t = max(0.1, float(rng.exponential(1.0 / rate_per_s)))
    while t < total:
        starts.append(float(t))
        t += max(0.9, rng.exponential(1.0 / rate_per_s))
    durs = rng.uniform(duration[0], duration[1], len(starts))
    sub = (np.arange(num_frames)[:, None] + (np.arange(5)[None, :] + 0.5) / 5) / fps
    closure = np.zeros_like(sub)
    for s, d in zip(starts, durs):
        x = (sub - s) / d
        rise = np.clip(x / 0.4, 0, 1)
        fall = np.clip((1 - x) / 0.6, 0, 1)
        closure = np.maximum(closure, np.where(x < 0.4, rise, fall) * ((x >= 0) & (x <= 1)))
    return closure.mean(axis=1), starts


def gaze_track(num_frames: int, fps: float, rng: np.random.Generator) -> np.ndarray:
    """Iris offset ``(T, 2)`` in units of the eye half-size: fixations with quick saccades."""
    out = np.zeros((num_frames, 2), np.float64)
    t, cur = 0.0, np.zeros(2)
    total = num_frames / fps
    while t < total:
        i0 = int(t * fps)
        cur = rng.normal(0, [0.18, 0.08]) if rng.random() < 0.75 else np.zeros(2)
        t += rng.uniform(0.6, 2.5)
        out[i0:int(min(t, total) * fps) + 1] = cur
    # 2-frame saccades
    k = np.array([0.25, 0.5, 0.25])
    for c in range(2):
        out[:, c] = np.convolve(np.pad(out[:, c], 1, mode="edge"), k, mode="valid")
    return out
