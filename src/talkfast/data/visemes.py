"""Phoneme -> mouth shape, and a per-frame mouth target with coarticulation.

A mouth shape is ``(openness, width)``, both in [0, 1]: ``openness`` 0 is lips closed, 1 a wide
open jaw (/a/); ``width`` 0 is lips rounded and protruded (/u/, /w/), 0.5 neutral and 1 spread
(/i/). Phoneme names are espeak-ng's ASCII mnemonics (what its phoneme events report): ``p b m``,
``f v``, ``T D`` (th), ``S Z tS dZ`` (sh, zh, ch, j), ``N`` (ng), ``a A: aI aU @ 3: E e I i: 0 O:
OI oU U u: V`` and so on, sometimes with suffixes such as ``#``, ``2``, ``/``, ``-`` or ``L``.

:func:`mouth_target` places each phoneme's shape at its centre (diphthongs get two shapes at 30 %
and 70 % of their interval, bilabial and labiodental closures their shape over the middle half so a
short /p/ still reaches closure), puts closed-mouth keys over silences, interpolates linearly at the
frame centres and smooths with a short Gaussian (sigma 0.6 frame by default), giving a smooth,
coarticulated trajectory. Silence is closed (openness 0, width 0.5).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence

import numpy as np

__all__ = ["CLOSED", "FPS", "MouthTarget", "mouth_target", "viseme"]

FPS = 25
#: Mouth shape during silence.
CLOSED = (0.0, 0.5)

# (openness, width) for monophthongs and consonants; diphthongs map to two shapes.
_TABLE: dict[str, tuple[float, float]] = {
    # bilabials: lips pressed together
    "p": (0.0, 0.5), "b": (0.0, 0.5), "m": (0.0, 0.5),
    # labiodentals: lower lip under the upper teeth
    "f": (0.08, 0.55), "v": (0.08, 0.55),
    # dentals, alveolars, velars, glottals
    "T": (0.22, 0.55), "D": (0.22, 0.55),
    "t": (0.22, 0.55), "d": (0.22, 0.55), "n": (0.22, 0.55), "l": (0.28, 0.55), "?": (0.2, 0.5),
    "s": (0.12, 0.7), "z": (0.12, 0.7),
    "S": (0.15, 0.3), "Z": (0.15, 0.3), "tS": (0.15, 0.3), "dZ": (0.15, 0.3),
    "k": (0.3, 0.5), "g": (0.3, 0.5), "N": (0.3, 0.5), "x": (0.3, 0.5), "h": (0.4, 0.5),
    "r": (0.2, 0.3), "w": (0.1, 0.08), "j": (0.2, 0.72),
    # vowels
    "a": (0.95, 0.6), "aa": (1.0, 0.55), "A": (1.0, 0.5), "A:": (1.0, 0.5), "a#": (0.7, 0.55),
    "V": (0.7, 0.5), "@": (0.45, 0.5), "3": (0.45, 0.45), "3:": (0.45, 0.4), "@L": (0.4, 0.5),
    "E": (0.65, 0.65), "e": (0.6, 0.68), "I": (0.32, 0.78), "i": (0.3, 0.8), "i:": (0.28, 0.85),
    "0": (0.78, 0.3), "O": (0.72, 0.22), "O:": (0.72, 0.2), "o": (0.55, 0.22), "U": (0.35, 0.2),
    "u": (0.25, 0.08), "u:": (0.25, 0.05), "y": (0.25, 0.1),
}
_DIPHTHONGS: dict[str, tuple[tuple[float, float], tuple[float, float]]] = {
    "aI": ((0.95, 0.6), (0.38, 0.75)),
    "aU": ((0.95, 0.55), (0.35, 0.15)),
    "eI": ((0.6, 0.68), (0.32, 0.78)),
    "oU": ((0.6, 0.25), (0.32, 0.12)),
    "OI": ((0.72, 0.22), (0.35, 0.75)),
    "e@": ((0.6, 0.65), (0.45, 0.5)),
    "i@": ((0.3, 0.8), (0.45, 0.5)),
    "I@": ((0.3, 0.8), (0.45, 0.5)),
    "U@": ((0.35, 0.2), (0.45, 0.5)),
    "A@": ((1.0, 0.5), (0.45, 0.5)),
    "O@": ((0.72, 0.2), (0.45, 0.45)),
    "o@": ((0.6, 0.22), (0.45, 0.45)),
    "aI@": ((0.95, 0.6), (0.45, 0.5)),
    "aU@": ((0.95, 0.55), (0.45, 0.5)),
}
_CLOSURES = {"p", "b", "m", "f", "v"}
_VOWEL_START = set("aAeEiIoOuUV@3y0")


def _normalise(name: str) -> str:
    """Strip espeak's decorations (stress marks, ``#``, ``/``, ``-``, ``;``, ``!``, digits) from a mnemonic."""
    name = name.strip().replace("'", "").replace(",", "")
    if name in _TABLE or name in _DIPHTHONGS:
        return name
    stripped = re.sub(r"[#/;!\-]", "", name).rstrip("0123456789")
    return stripped or name


def viseme(phoneme: str) -> tuple[tuple[float, float], ...]:
    """Mouth shapes ``((openness, width), ...)`` for one espeak phoneme (two for diphthongs).

    Unknown names fall back on their first character (a vowel letter -> a mid-open vowel, anything
    else -> a mid consonant); pause mnemonics (``_``...) give the closed mouth.
    """
    if not phoneme or phoneme.startswith("_"):
        return (CLOSED,)
    for candidate in (phoneme, _normalise(phoneme), phoneme.rstrip("0123456789#:"), phoneme[:2], phoneme[:1]):
        if candidate in _DIPHTHONGS:
            return _DIPHTHONGS[candidate]
        if candidate in _TABLE:
            return (_TABLE[candidate],)
    if phoneme[0] in _VOWEL_START:
        return ((0.55, 0.5),)
    return ((0.25, 0.5),)


class MouthTarget:
    """Per-frame mouth target: ``openness`` and ``width`` arrays of length ``num_frames`` at ``fps``."""

    def __init__(self, openness: np.ndarray, width: np.ndarray, fps: float = FPS) -> None:
        self.openness = np.asarray(openness, dtype=np.float32)
        self.width = np.asarray(width, dtype=np.float32)
        if self.openness.shape != self.width.shape or self.openness.ndim != 1:
            raise ValueError("openness and width must be 1-D arrays of the same length")
        self.fps = float(fps)

    def __len__(self) -> int:
        return int(self.openness.shape[0])

    def as_array(self) -> np.ndarray:
        """``(T, 2)`` float32 array of (openness, width)."""
        return np.stack([self.openness, self.width], axis=1)

    def to_lists(self, ndigits: int = 4) -> dict[str, list[float]]:
        return {"openness": [round(float(v), ndigits) for v in self.openness],
                "width": [round(float(v), ndigits) for v in self.width]}


def _keys(phonemes: Iterable[Sequence], duration: float, close_gap: float) -> list[tuple[float, float, float]]:
    """Sorted (time, openness, width) keys for the phoneme intervals, with closed keys at silences."""
    keys: list[tuple[float, float, float]] = [(0.0, *CLOSED)]
    prev_end = 0.0
    for item in phonemes:
        name, start, end = str(item[0]), float(item[1]), float(item[2])
        if end <= start:
            continue
        if start - prev_end >= close_gap:
            # a real pause: the mouth closes shortly after the last sound and opens just before the next
            keys.append((prev_end + 0.04, *CLOSED))
            keys.append((start - 0.02, *CLOSED))
        shapes = viseme(name)
        dur = end - start
        base = _normalise(name)
        if len(shapes) == 2:
            keys.append((start + 0.3 * dur, *shapes[0]))
            keys.append((start + 0.7 * dur, *shapes[1]))
        elif base in _CLOSURES:
            keys.append((start + 0.3 * dur, *shapes[0]))
            keys.append((start + 0.7 * dur, *shapes[0]))
        else:
            keys.append((start + 0.5 * dur, *shapes[0]))
        prev_end = end
    keys.append((max(prev_end + 0.04, keys[-1][0]), *CLOSED))
    keys.append((max(duration, keys[-1][0]), *CLOSED))
    keys.sort(key=lambda k: k[0])
    return keys


def mouth_target(phonemes: Iterable[Sequence], duration: float, fps: float = FPS, *,
                 num_frames: int | None = None, smooth_sigma: float = 0.6, close_gap: float = 0.06
                 ) -> MouthTarget:
    """Per-frame (openness, width) for ``[(phoneme, start_s, end_s), ...]`` over ``duration`` seconds.

    Frame ``i`` is sampled at its centre ``(i + 0.5) / fps``; ``num_frames`` defaults to
    ``ceil(duration * fps)``. Pauses of ``close_gap`` seconds or more close the mouth.
    ``smooth_sigma`` (in frames, 0 disables) is the Gaussian low-pass applied after interpolation.
    """
    if fps <= 0:
        raise ValueError(f"fps must be positive, got {fps}")
    if num_frames is None:
        num_frames = math.ceil(round(duration * fps, 6))
    num_frames = max(int(num_frames), 0)
    keys = _keys(phonemes, float(duration), close_gap)
    kt = np.array([k[0] for k in keys], dtype=np.float64)
    # np.interp needs increasing x: nudge ties apart (keeps the order of keys at the same time)
    kt = kt + np.arange(len(kt)) * 1e-9
    t = (np.arange(num_frames, dtype=np.float64) + 0.5) / fps
    openness = np.interp(t, kt, [k[1] for k in keys])
    width = np.interp(t, kt, [k[2] for k in keys])
    if smooth_sigma > 0 and num_frames > 1:
        openness = _gauss(openness, smooth_sigma)
        width = _gauss(width, smooth_sigma)
    return MouthTarget(np.clip(openness, 0.0, 1.0), np.clip(width, 0.0, 1.0), fps)


def _gauss(x: np.ndarray, sigma: float) -> np.ndarray:
    radius = max(1, math.ceil(3 * sigma))
    k = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    k /= k.sum()
    padded = np.pad(x, radius, mode="edge")
    return np.convolve(padded, k, mode="valid")
