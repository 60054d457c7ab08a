"""The written forms of a benchmark: the markdown table and report, and the three output files
(markdown, JSON, PNG)."""

from __future__ import annotations

import math
from pathlib import Path

from .bench_results import BenchResult, frontier_sentence, write_json
from .plot import plot_png

# the pipeline's stages, in the order they run (GenerationResult.seconds)
STAGES = ("prepare", "reference", "audio", "denoise", "decode", "encode", "write", "wait", "total")

COLUMNS = ("method", "key steps", "total s", "first frame s", "RTF", "s/step", "speedup", "model speedup", "FLOPs", "FLOPs ratio",
           "peak MB", "mem growth MB", "PSNR base dB", "SSIM base", "PSNR ref dB", "PSNR GT dB", "SSIM GT", "L1 GT", "lip-sync",
           "frontier")


def _num(v: float | None, fmt: str) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "n/a"
    return format(v, fmt)


def human_flops(v: float | None) -> str:
    if v is None:
        return "n/a"
    for unit, scale in (("P", 1e15), ("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(v) >= scale * 0.9995:  # 999.7e6 -> "1 G", never "1e+03 M"
            return f"{v / scale:.3g} {unit}"
    return f"{v:.3g}"


def table_rows(result: BenchResult) -> list[list[str]]:
    rows = []
    for m in result.methods:
        rows.append([
            m.name, f"{m.key_steps}/{m.steps}", _num(m.seconds, ".3f"), _num(m.first_frame_seconds, ".3f"),
            _num(m.realtime_factor, ".3f") + ("x" if m.realtime_factor is not None else ""),
            _num(m.seconds_per_step, ".4f"),
            _num(m.speedup, ".2f") + ("x" if m.speedup is not None else ""),
            _num(m.model_speedup, ".2f") + ("x" if m.model_speedup is not None else ""),
            human_flops(m.flops), _num(None if m.flops_ratio is None else 100 * m.flops_ratio, ".1f")
            + ("%" if m.flops_ratio is not None else ""),
            _num(m.peak_memory_mb, ".0f"), _num(m.memory_growth_mb, ".0f"),
            _num(m.psnr_base, ".2f"), _num(m.ssim_base, ".4f"), _num(m.psnr_ref, ".2f"), _num(m.psnr_gt, ".2f"),
            _num(m.ssim_gt, ".4f"), _num(m.l1_gt, ".4f"), _num(m.lipsync, ".3f"),
            "n/a" if m.frontier is None else ("yes" if m.frontier else "no"),
        ])
    return rows


def markdown_table(result: BenchResult) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "|".join("---" for _ in COLUMNS) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in table_rows(result)]
    return "\n".join(lines)


def to_markdown(result: BenchResult) -> str:
    """A title, the settings, the notes, then the table (last)."""
    mt = result.meta
    head = (f"model {mt.get('model')} ({mt.get('weights')}), {mt.get('device')} {mt.get('dtype')}"
            + (f" [{mt['gpu']}]" if mt.get("gpu") else "") + f", {mt.get('steps')} steps, CFG {mt.get('guidance')}, "
            f"{mt.get('size')}x{mt.get('size')}, {mt.get('frames')} frames, torch {mt.get('torch')}, "
            f"{mt.get('threads')} threads")
    if result.mode == "pipeline":
        head += f", cases: {', '.join(mt.get('cases', []))}"
    parts = [f"# talkfast bench: {result.target} ({result.mode})", "", head, ""]
    parts += [f"- {n}" for n in result.notes]
    stages = stage_table(result)
    if stages:
        parts += ["", "Seconds per pipeline stage (mean per generation):", "", stages]
    sentence = frontier_sentence(result.methods)
    if sentence:
        parts += ["", sentence]
    parts += ["", markdown_table(result), ""]
    return "\n".join(parts)


def stage_table(result: BenchResult) -> str:
    """Method x stage mean seconds (the stages any row reports, in pipeline order); "" when none
    does (speed mode)."""
    seen: list[str] = []
    for m in result.methods:
        seen += [k for k in m.stage_seconds if k not in seen]
    if not seen:
        return ""
    cols = [k for k in STAGES if k in seen] + [k for k in seen if k not in STAGES]
    lines = ["| method | " + " | ".join(cols) + " |", "|---|" + "|".join("---" for _ in cols) + "|"]
    lines += ["| " + m.name + " | " + " | ".join(_num(m.stage_seconds.get(k), ".3f") for k in cols) + " |"
              for m in result.methods]
    return "\n".join(lines)


#: What marks each bench output as talkfast's (the write rule, :mod:`talkfast.io.write_rule`).
BENCH_TITLE = "# talkfast bench: "
BENCH_KEYS = ("target", "mode", "meta", "methods")


def output_files(out_dir: str | Path, stem: str = "bench") -> list[Path]:
    """The files :func:`write_outputs` writes: ``<stem>.md``, ``<stem>.json``, ``<stem>.png``."""
    out = Path(out_dir)
    return [out / f"{stem}.md", out / f"{stem}.json", out / f"{stem}.png"]


def check_outputs(out_dir: str | Path, stem: str = "bench", *, inputs=(), overwrite: bool = False) -> list[Path]:
    """The write rule for ``bench --out`` (before any work): never onto an input (the checkpoint
    folder's files, the corpus); an existing file that is not talkfast's (the markdown's title,
    the JSON's keys, the PNG's ``Software: talkfast`` chunk) only with ``overwrite``."""
    from ..io.write_rule import check_writes, json_with_keys, png_by_talkfast, text_starting_with

    ours = {".md": text_starting_with(BENCH_TITLE), ".json": json_with_keys(*BENCH_KEYS), ".png": png_by_talkfast}
    return check_writes(output_files(out_dir, stem), inputs=inputs, overwrite=overwrite,
                        ours=lambda p: ours[p.suffix](p), mark="not a talkfast bench report")


def write_outputs(result: BenchResult, out_dir: str | Path, stem: str = "bench", *, checked: bool = False) -> dict[str, Path]:
    """``<stem>.md``, ``<stem>.json`` and ``<stem>.png`` in ``out_dir`` (created), each atomically;
    unless ``checked`` (:func:`check_outputs` ran before the work), checked here first."""
    from ..io.write_rule import write_text_atomic

    if not checked:
        check_outputs(out_dir, stem)
    md, js, png = output_files(out_dir, stem)
    write_text_atomic(md, to_markdown(result))
    js = write_json(result, js)
    png = plot_png(result, png)
    return {"markdown": md, "json": js, "png": png}
