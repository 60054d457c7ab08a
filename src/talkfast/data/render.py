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
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import cv2
import numpy as np

__all__ = [
    "FaceRenderer",
    "Identity",
    "RenderResult",
    "blink_track",
    "gaze_track",
    "head_motion",
]

_SHIFT = 4  # fractional bits for cv2 drawing coordinates
_ONE = 1 << _SHIFT

SKIN_TONES = (
    (255, 226, 200), (244, 204, 176), (232, 184, 150), (214, 160, 122), (190, 136, 98),
    (160, 108, 74), (128, 84, 56), (98, 64, 44), (76, 50, 36),
)
HAIR_COLOURS = {
    "black": (28, 24, 22), "dark_brown": (58, 40, 30), "brown": (98, 66, 42), "light_brown": (146, 108, 70),
    "blonde": (214, 182, 124), "platinum": (232, 220, 190), "red": (152, 66, 34), "auburn": (112, 46, 30),
    "grey": (150, 148, 146), "white": (220, 218, 214), "blue": (50, 90, 170), "pink": (210, 100, 150),
    "purple": (110, 60, 140),
}
EYE_COLOURS = {
    "brown": (96, 58, 30), "dark_brown": (56, 36, 22), "blue": (70, 120, 186), "green": (76, 124, 76),
    "hazel": (128, 104, 56), "grey": (122, 134, 146), "amber": (170, 118, 40),
}
HAIR_STYLES = ("short", "buzz", "long", "bob", "bun", "curly", "bald", "fringe", "afro")
BACKGROUND_KINDS = ("gradient", "radial", "stripes", "tiles", "noise", "bokeh")
PHOTO_BACKGROUNDS = ("brick", "grass", "gravel", "coffee", "rocket", "chelsea", "camera", "moon",
                     "hubble_deep_field", "immunohistochemistry")


def _rgb(v) -> tuple[int, int, int]:
    return tuple(int(max(0, min(255, round(float(c))))) for c in v)  # type: ignore[return-value]


def _mix(a, b, t: float) -> tuple[int, int, int]:
    return _rgb([x * (1 - t) + y * t for x, y in zip(a, b)])


def _scale(a, s: float) -> tuple[int, int, int]:
    return _rgb([x * s for x in a])


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


# ---------------------------------------------------------------------------------- backgrounds
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


# ---------------------------------------------------------------------------------- motion tracks
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


class FaceRenderer:
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


def _rounded_rect(x0: float, y0: float, x1: float, y1: float, r: float, n: int = 6) -> np.ndarray:
    r = min(r, (x1 - x0) / 2, (y1 - y0) / 2)
    pts = []
    for cx, cy, a0 in ((x1 - r, y0 + r, -90), (x1 - r, y1 - r, 0), (x0 + r, y1 - r, 90), (x0 + r, y0 + r, 180)):
        for k in range(n + 1):
            a = math.radians(a0 + 90 * k / n)
            pts.append((cx + r * math.cos(a), cy + r * math.sin(a)))
    return np.array(pts, np.float64)
