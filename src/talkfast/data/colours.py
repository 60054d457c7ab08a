"""Colours of the synthetic faces: skin, hair and eye palettes and the RGB helpers the drawing uses."""

from __future__ import annotations

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


def _rgb(v) -> tuple[int, int, int]:
    return tuple(int(max(0, min(255, round(float(c))))) for c in v)  # type: ignore[return-value]


def _mix(a, b, t: float) -> tuple[int, int, int]:
    return _rgb([x * (1 - t) + y * t for x, y in zip(a, b)])


def _scale(a, s: float) -> tuple[int, int, int]:
    return _rgb([x * s for x in a])
