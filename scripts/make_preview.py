"""README pictures from a real generated video: a contact sheet (PNG) and a small animated GIF.

    .venv/bin/talkfast generate -o example.mp4          # the bundled example, embedded model, defaults
    .venv/bin/python scripts/make_preview.py example.mp4 --out docs/images

writes ``example_sheet.png`` (every ``--every``-th frame in a grid, its frame number under it) and
``example.gif`` (every ``--gif-step``-th frame at the video's frame rate divided by it, no audio).
Frames are read back from the mp4 as any player would decode them (imageio-ffmpeg); nothing is
generated here.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import imageio_ffmpeg
import numpy as np
from PIL import Image, ImageDraw


def read_frames(path: str) -> tuple[list[Image.Image], float]:
    """Every frame of ``path`` as RGB images, and the video's frame rate."""
    reader = imageio_ffmpeg.read_frames(path)
    meta = next(reader)
    width, height = meta["size"]
    frames = [Image.fromarray(np.frombuffer(buf, np.uint8).reshape(height, width, 3)) for buf in reader]
    return frames, float(meta["fps"])


def contact_sheet(frames: list[Image.Image], every: int, columns: int, label_h: int = 14) -> Image.Image:
    """Every ``every``-th frame in a grid of ``columns``, each with its frame number underneath."""
    picked = list(range(0, len(frames), every))
    w, h = frames[0].size
    rows = -(-len(picked) // columns)
    sheet = Image.new("RGB", (columns * w, rows * (h + label_h)), "white")
    draw = ImageDraw.Draw(sheet)
    for n, index in enumerate(picked):
        x, y = (n % columns) * w, (n // columns) * (h + label_h)
        sheet.paste(frames[index], (x, y))
        draw.text((x + 3, y + h + 1), f"frame {index}", fill="black")
    return sheet


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("video", help="an mp4 written by talkfast generate")
    ap.add_argument("--out", default="docs/images", help="folder for example_sheet.png and example.gif")
    ap.add_argument("--every", type=int, default=8, help="contact sheet: every N-th frame (default 8)")
    ap.add_argument("--columns", type=int, default=8, help="contact sheet: frames per row (default 8)")
    ap.add_argument("--gif-step", type=int, default=2, help="GIF: every N-th frame (default 2)")
    args = ap.parse_args()
    frames, fps = read_frames(args.video)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    contact_sheet(frames, args.every, args.columns).save(out / "example_sheet.png", optimize=True)
    gif = frames[:: args.gif_step]
    gif[0].save(out / "example.gif", save_all=True, append_images=gif[1:], loop=0,
                duration=round(1000 * args.gif_step / fps), optimize=True)
    print(f"{len(frames)} frames at {fps:g} fps -> {out / 'example_sheet.png'}, {out / 'example.gif'}")


if __name__ == "__main__":
    main()
