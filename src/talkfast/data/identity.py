"""One synthetic person and their scene: :class:`Identity`, sampled from a seed."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import cv2
import numpy as np

from .colours import EYE_COLOURS, HAIR_COLOURS, SKIN_TONES, _mix, _rgb, _scale

HAIR_STYLES = ("short", "buzz", "long", "bob", "bun", "curly", "bald", "fringe", "afro")
BACKGROUND_KINDS = ("gradient", "radial", "stripes", "tiles", "noise", "bokeh")
PHOTO_BACKGROUNDS = ("brick", "grass", "gravel", "coffee", "rocket", "chelsea", "camera", "moon",
                     "hubble_deep_field", "immunohistochemistry")


@dataclass
class Identity:
    """Every parameter of one synthetic person and their scene (all sizes relative; see module doc).

    Face geometry is relative to the output size ``S``: the face centre is at ``(0.5 S, face_cy S)``
    with half-width ``face_w S`` and half-height ``face_h S``; features are placed in face units
    (``u = dx / half-width``, ``v = dy / half-height``).
    """

    seed: int
    sex: str
    skin: tuple[int, int, int]
    face_w: float
    face_h: float
    face_cy: float
    top_n: float
    chin_n: float
    jaw: float
    ear_size: float
    hair_style: str
    hair_colour: tuple[int, int, int]
    hair_volume: float
    hairline: float
    part: float
    eye_colour: tuple[int, int, int]
    eye_w: float
    eye_aspect: float
    eye_spacing: float
    eye_v: float
    lid: float
    brow_shape: str
    brow_thickness: float
    brow_colour: tuple[int, int, int]
    brow_raise: float
    nose_len: float
    nose_w: float
    mouth_w: float
    mouth_v: float
    lip_colour: tuple[int, int, int]
    lip_upper: float
    lip_lower: float
    teeth_colour: tuple[int, int, int]
    blush: float
    glasses: str | None
    glasses_colour: tuple[int, int, int]
    earrings: tuple[int, int, int] | None
    beard: str | None
    shirt_colour: tuple[int, int, int]
    neckline: str
    background: dict[str, Any] = field(default_factory=dict)
    voice: str = "en-us"
    pitch: int = 50
    rate: int = 160

    # ------------------------------------------------------------------ sampling / (de)serialising
    @classmethod
    def sample(cls, seed: int, *, photo_backgrounds: bool = False, voices: dict[str, list[str]] | None = None
               ) -> Identity:
        """A random identity, a pure function of ``seed`` (and of the two options).

        ``voices`` maps ``"f"``/``"m"`` to espeak voice names to pick from (default: every English
        base voice with every variant of that sex, see :mod:`talkfast.data.speech`).
        ``photo_backgrounds`` adds scikit-image's bundled pictures to the background kinds.
        """
        rng = np.random.default_rng(np.random.SeedSequence([int(seed), 0x1D]))
        sex = "f" if rng.random() < 0.5 else "m"
        t = rng.random()
        k = t * (len(SKIN_TONES) - 1)
        i0 = math.floor(k)
        i1 = min(i0 + 1, len(SKIN_TONES) - 1)
        skin = _mix(SKIN_TONES[i0], SKIN_TONES[i1], k - i0)
        skin = _rgb(np.array(skin) * (1 + rng.normal(0, 0.03, 3)))

        if sex == "f":
            styles = ("long", "bob", "bun", "curly", "fringe", "short", "afro")
            probs = (0.3, 0.18, 0.12, 0.12, 0.14, 0.08, 0.06)
        else:
            styles = ("short", "buzz", "bald", "curly", "fringe", "long", "afro")
            probs = (0.36, 0.18, 0.12, 0.1, 0.1, 0.06, 0.08)
        hair_style = str(rng.choice(styles, p=probs))
        hair_names = list(HAIR_COLOURS)
        hp = np.array([12, 12, 10, 7, 8, 2, 4, 3, 4, 2, 1, 1, 1], dtype=float)
        if t > 0.55:  # darker skin: mostly dark hair
            hp[:2] *= 3
        hair_colour = HAIR_COLOURS[str(rng.choice(hair_names, p=hp / hp.sum()))]
        eye_names = list(EYE_COLOURS)
        ep = np.array([10, 6, 5, 3, 3, 3, 1], dtype=float)
        if t > 0.5:
            ep[[0, 1]] *= 4
        eye_colour = EYE_COLOURS[str(rng.choice(eye_names, p=ep / ep.sum()))]

        lipstick = sex == "f" and rng.random() < 0.3
        base_lip = _mix(_scale(skin, 0.82), (176, 78, 88), 0.35 + 0.15 * rng.random())
        lip_colour = _mix(base_lip, [(170, 30, 50), (190, 70, 110), (140, 40, 60)][int(rng.integers(3))], 0.6) \
            if lipstick else base_lip

        beard = None
        if sex == "m" and rng.random() < 0.4:
            beard = str(rng.choice(["stubble", "full", "goatee", "moustache"], p=[0.35, 0.3, 0.2, 0.15]))
        glasses = str(rng.choice(["round", "rect"])) if rng.random() < 0.28 else None
        glasses_colour = [(20, 20, 20), (90, 60, 40), (190, 160, 80), (170, 170, 175), (120, 30, 40),
                          (30, 50, 110)][int(rng.integers(6))]
        earrings = None
        if rng.random() < (0.4 if sex == "f" else 0.08):
            earrings = [(212, 175, 55), (192, 192, 200), (180, 40, 60)][int(rng.integers(3))]
        shirt = _rgb(rng.uniform(20, 235, 3))
        if rng.random() < 0.4:  # muted
            g = float(np.mean(shirt))
            shirt = _mix(shirt, (g, g, g), 0.6)

        if voices is None:
            from talkfast.data.speech import BASE_VOICES, VARIANTS

            variants = sorted(v for v, s in VARIANTS.items() if s == sex)
            base = str(rng.choice(BASE_VOICES))
            voice = f"{base}+{rng.choice(variants)}"
        else:
            voice = str(rng.choice(sorted(voices[sex])))
        pitch = int(rng.integers(45, 80) if sex == "f" else rng.integers(25, 60))
        rate = int(rng.integers(140, 190))

        hair_colour_brows = _scale(hair_colour, 0.8) if sum(hair_colour) < 500 else _scale(hair_colour, 0.7)
        return cls(
            seed=int(seed),
            sex=sex,
            skin=skin,
            face_w=float(rng.uniform(0.215, 0.255)),
            face_h=float(rng.uniform(0.285, 0.325)),
            face_cy=float(rng.uniform(0.435, 0.465)),
            top_n=float(rng.uniform(1.9, 2.4)),
            chin_n=float(rng.uniform(1.6, 2.6)),
            jaw=float(rng.uniform(0.72, 0.95)),
            ear_size=float(rng.uniform(0.85, 1.15)),
            hair_style=hair_style,
            hair_colour=_rgb(np.array(hair_colour) * (1 + rng.normal(0, 0.06, 3))),
            hair_volume=float(rng.uniform(0.04, 0.16)),
            hairline=float(rng.uniform(-0.78, -0.6)),
            part=float(rng.uniform(-1, 1)),
            eye_colour=_rgb(np.array(eye_colour) * (1 + rng.normal(0, 0.06, 3))),
            eye_w=float(rng.uniform(0.17, 0.22)),
            eye_aspect=float(rng.uniform(0.46, 0.62)),
            eye_spacing=float(rng.uniform(0.38, 0.45)),
            eye_v=float(rng.uniform(-0.14, -0.04)),
            lid=float(rng.uniform(0.05, 0.28)),
            brow_shape=str(rng.choice(["straight", "arched", "angled"])),
            brow_thickness=float(rng.uniform(0.035, 0.07) * (1.25 if sex == "m" else 1.0)),
            brow_colour=hair_colour_brows,
            brow_raise=float(rng.uniform(0.16, 0.24)),
            nose_len=float(rng.uniform(0.22, 0.29)),
            nose_w=float(rng.uniform(0.14, 0.2)),
            mouth_w=float(rng.uniform(0.38, 0.47)),
            mouth_v=float(rng.uniform(0.5, 0.58)),
            lip_colour=lip_colour,
            lip_upper=float(rng.uniform(0.035, 0.055)),
            lip_lower=float(rng.uniform(0.045, 0.07)),
            teeth_colour=_rgb(np.array([236, 232, 220]) * rng.uniform(0.9, 1.0)),
            blush=float(rng.uniform(0.0, 0.25)),
            glasses=glasses,
            glasses_colour=glasses_colour,
            earrings=earrings,
            beard=beard,
            shirt_colour=shirt,
            neckline=str(rng.choice(["round", "v", "collar"])),
            background=_sample_background(rng, photo_backgrounds),
            voice=voice,
            pitch=pitch,
            rate=rate,
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly dict (tuples become lists)."""
        out = asdict(self)
        for k, v in out.items():
            if isinstance(v, tuple):
                out[k] = list(v)
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Identity:
        kw = {}
        for f in fields(cls):
            if f.name not in d:
                continue
            v = d[f.name]
            if isinstance(v, list) and f.name != "background":
                v = tuple(v)
            kw[f.name] = v
        return cls(**kw)


def _sample_background(rng: np.random.Generator, photo: bool) -> dict[str, Any]:
    kinds = BACKGROUND_KINDS + (("photo",) if photo else ())
    kind = str(rng.choice(kinds))
    hue_a = rng.uniform(0, 180)
    hue_b = (hue_a + rng.uniform(20, 120)) % 180

    def colour(hue: float) -> list[int]:
        hsv = np.uint8([[[hue, rng.uniform(20, 160), rng.uniform(70, 235)]]])
        return [int(c) for c in cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)[0, 0]]

    bg: dict[str, Any] = {
        "kind": kind,
        "colours": [colour(hue_a), colour(hue_b), colour(rng.uniform(0, 180))],
        "angle": float(rng.uniform(0, 180)),
        "period": float(rng.uniform(0.06, 0.25)),
        "texture_seed": int(rng.integers(0, 2**31 - 1)),
    }
    if kind == "photo":
        bg["image"] = str(rng.choice(PHOTO_BACKGROUNDS))
        bg["blur"] = float(rng.uniform(0.0, 2.5))
    return bg
