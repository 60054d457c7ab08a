"""The speed-vs-quality plot of a benchmark, drawn with PIL."""

from __future__ import annotations

import math
from pathlib import Path

from .bench_results import BenchResult
from .metrics import PSNR_CAP

PALETTE = ((31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75),
           (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207))


def nice_ticks(lo: float, hi: float, target: int = 6) -> list[float]:
    """Round tick values (1, 2, 5 x 10^k steps) covering [lo, hi]."""
    if not math.isfinite(lo) or not math.isfinite(hi):
        return []
    if hi <= lo:
        hi = lo + 1.0
    raw = (hi - lo) / max(1, target - 1)
    mag = 10 ** math.floor(math.log10(raw))
    step = next(s * mag for s in (1, 2, 2.5, 5, 10) if s * mag >= raw)
    start = math.floor(lo / step) * step
    ticks, v = [], start
    while v <= hi + step * 0.5:
        ticks.append(round(v, 10))
        v += step
    return ticks


def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1
        return ImageFont.load_default()


def _fmt_tick(v: float) -> str:
    return f"{v:.0f}" if abs(v - round(v)) < 1e-9 else f"{v:g}"


def _overlaps(a, b) -> bool:
    return not (a[2] < b[0] or a[0] > b[2] or a[3] < b[1] or a[1] > b[3])


def _place_labels(d, points, texts, font, box, radius: int = 5):
    """Label boxes beside the points without overlapping each other or any point; None when
    some label finds no free spot."""
    x0, y0, x1, y1 = box
    marks = [(X - radius - 1, Y - radius - 1, X + radius + 1, Y + radius + 1) for X, Y in points]
    placed = []
    for (X, Y), text in zip(points, texts):
        tw, th = d.textlength(text, font=font), 15
        spot = None
        for dy in (-9, 9, -24, 24, -39, 39, -54, 54, -69, 69):
            for side in (1, -1):
                lx = X + 9 if side > 0 else X - 9 - tw
                ly = Y + dy - th / 2
                cand = (lx, ly, lx + tw, ly + th)
                if cand[0] < x0 + 2 or cand[2] > x1 - 2 or cand[1] < y0 + 2 or cand[3] > y1 - 2:
                    continue
                if any(_overlaps(cand, b) for b in placed) or any(_overlaps(cand, m) for m in marks):
                    continue
                spot = cand
                break
            if spot is not None:
                break
        if spot is None:
            return None
        placed.append(spot)
    return placed


def plot_png(result: BenchResult, path: str | Path, width: int = 960, height: int = 640) -> Path:
    """Speedup (x) against PSNR to the baseline (y), one labelled point per method, and the
    frontier (the rows marked ``frontier``) as a line through its points. Points at
    the PSNR cap (identical to the baseline) sit on the top edge as squares. Without any quality
    numbers (speed mode) the y axis is the FLOPs ratio (%), else seconds per step. When the labels
    do not fit beside the points, the points are numbered and listed in a legend on the right."""
    from PIL import Image, ImageDraw

    path = Path(path)
    on_front = {m.name for m in result.methods if m.frontier}
    pts = [(m.name, m.speedup, m.psnr_base) for m in result.methods if m.speedup is not None]
    ylabel, capped_ok = "PSNR to baseline (dB)", True
    if not any(p[2] is not None for p in pts):
        if any(m.flops_ratio is not None for m in result.methods):
            pts = [(m.name, m.speedup, 100 * m.flops_ratio) for m in result.methods
                   if m.speedup is not None and m.flops_ratio is not None]
            ylabel = "FLOPs (% of baseline)"
        else:
            pts = [(m.name, m.speedup, m.seconds_per_step) for m in result.methods if m.speedup is not None]
            ylabel = "seconds per denoising step"
        capped_ok = False
        on_front = set()
    pts = [p for p in pts if p[2] is not None]
    capped = [capped_ok and p[2] >= PSNR_CAP - 1e-9 for p in pts]

    xs = [p[1] for p in pts] or [1.0]
    ys = [p[2] for p, c in zip(pts, capped) if not c] or ([PSNR_CAP - 10, PSNR_CAP] if any(capped) else [0.0, 1.0])
    xlo, xhi = min(min(xs), 1.0), max(max(xs), 1.0)
    pad = 0.08 * (xhi - xlo or 1.0)
    xlo, xhi = max(0.0, xlo - pad), xhi + pad
    ylo, yhi = min(ys), max(ys)
    ypad = 0.1 * (yhi - ylo or max(1.0, abs(yhi) * 0.1))
    ylo, yhi = ylo - ypad, yhi + ypad
    if any(capped):
        yhi += ypad  # room on the top edge for the "identical" points
    xt, yt = nice_ticks(xlo, xhi), nice_ticks(ylo, yhi)
    if xt:
        xlo, xhi = min(xlo, xt[0]), max(xhi, xt[-1])
    if yt:
        ylo, yhi = min(ylo, yt[0]), max(yhi, yt[-1])

    f_title, f_axis, f_tick, f_label = _font(20), _font(16), _font(13), _font(13)
    texts = [f"{name} ({sx:.2f}x" + (", identical)" if c else f", {sy:.3g})") for (name, sx, sy), c in zip(pts, capped)]

    def layout(right: int):
        box = (90, 70, width - right, height - 80)

        def px(x: float) -> float:
            return box[0] + (x - xlo) / (xhi - xlo) * (box[2] - box[0])

        def py(y: float) -> float:
            return box[3] - (y - ylo) / (yhi - ylo) * (box[3] - box[1])

        where = [(px(sx), (box[1] + 10) if c else py(sy)) for (_, sx, sy), c in zip(pts, capped)]
        return box, px, py, where

    img = Image.new("RGB", (width, height), "white")
    d = ImageDraw.Draw(img)
    box, px, py, where = layout(40)
    labels = _place_labels(d, where, texts, f_label, box)
    legend = labels is None
    if legend:
        legend_w = int(max([d.textlength(f"{i + 1:>2}  {t}", font=f_label) for i, t in enumerate(texts)] + [120])) + 30
        box, px, py, where = layout(min(legend_w, width // 2))
    x0, y0, x1, y1 = box

    title = f"talkfast bench: {result.target} - speed vs " + ("quality" if capped_ok else ylabel.split(" (")[0])
    d.text((x0, 22), title, fill="black", font=f_title)
    mt = result.meta
    d.text((x0, 46), f"{mt.get('model')} {mt.get('device')} {mt.get('dtype')}, {mt.get('steps')} steps",
           fill=(90, 90, 90), font=f_tick)
    for v in xt:
        X = px(v)
        d.line([(X, y0), (X, y1)], fill=(232, 232, 232))
        d.line([(X, y1), (X, y1 + 6)], fill="black")
        label = _fmt_tick(v)
        d.text((X - d.textlength(label, font=f_tick) / 2, y1 + 9), label, fill="black", font=f_tick)
    for v in yt:
        Y = py(v)
        d.line([(x0, Y), (x1, Y)], fill=(232, 232, 232))
        d.line([(x0 - 6, Y), (x0, Y)], fill="black")
        label = _fmt_tick(v)
        d.text((x0 - 10 - d.textlength(label, font=f_tick), Y - 8), label, fill="black", font=f_tick)
    if xlo <= 1.0 <= xhi:  # the baseline's speed
        d.line([(px(1.0), y0), (px(1.0), y1)], fill=(170, 170, 170), width=1)
    d.rectangle([x0, y0, x1, y1], outline="black")
    xl = "speedup vs baseline (x, end-to-end)" if result.mode == "pipeline" else "speedup vs baseline (x, denoising loop)"
    d.text(((x0 + x1) / 2 - d.textlength(xl, font=f_axis) / 2, height - 40), xl, fill="black", font=f_axis)
    w = int(d.textlength(ylabel, font=f_axis)) + 4  # the y label, drawn on its own strip and rotated
    strip = Image.new("RGB", (w, 22), "white")
    ImageDraw.Draw(strip).text((2, 2), ylabel, fill="black", font=f_axis)
    strip = strip.rotate(90, expand=True)
    img.paste(strip, (14, int((y0 + y1) / 2 - strip.size[1] / 2)))

    front = sorted((X, Y) for (X, Y), p in zip(where, pts) if p[0] in on_front)
    if len(front) > 1:  # the frontier: best quality at each speed, as a line through its points
        d.line(front, fill=(60, 60, 60), width=2)
    if front:
        note = "line: the frontier (no other point both faster and better)"
        d.text((x0 + 8, y1 - 20), note, fill=(60, 60, 60), font=f_tick)
    for i, ((X, Y), c) in enumerate(zip(where, capped)):
        color = PALETTE[i % len(PALETTE)]
        r = 5
        if c:
            d.rectangle([X - r, Y - r, X + r, Y + r], fill=color, outline="black")
        else:
            d.ellipse([X - r, Y - r, X + r, Y + r], fill=color, outline="black")
        if legend:
            d.text((X + 6, Y - 17), str(i + 1), fill=color, font=f_label)
        else:
            lx0, ly0, lx1, ly1 = labels[i]
            d.text((lx0, ly0), texts[i], fill=color, font=f_label)
            d.line([(X, Y), (lx0 if lx0 > X else lx1, (ly0 + ly1) / 2)], fill=color)
    if legend:
        for i, t in enumerate(texts):
            d.text((x1 + 14, y0 + 4 + 17 * i), f"{i + 1:>2}  {t}", fill=PALETTE[i % len(PALETTE)], font=f_label)
    if any(capped):
        note = f"squares: identical to the baseline (PSNR capped at {PSNR_CAP:g} dB)"
        d.text((width - 40 - d.textlength(note, font=f_tick), 46), note, fill=(90, 90, 90), font=f_tick)
    if not pts:
        d.text((x0 + 20, y0 + 20), "no data", fill="black", font=f_axis)
    from PIL.PngImagePlugin import PngInfo

    from ..io.write_rule import PNG_MARK, replacing

    info = PngInfo()
    info.add_text(*PNG_MARK)  # recognised as talkfast's by the write rule
    with replacing(path) as tmp:
        img.save(tmp, format="PNG", pnginfo=info)
    return path
