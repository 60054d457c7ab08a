"""The results of a benchmark: per case, per method and the whole run, their aggregation over
cases, the ratios to the baseline, and the JSON form."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from .metrics import PSNR_CAP


@dataclass
class CaseResult:
    case: str
    seconds: float  # end-to-end (median of the repeats)
    all_seconds: list[float]
    model_seconds: float
    steps: int
    full_steps: int
    clips: int = 1
    frames: int = 0
    flops: float | None = None
    peak_memory_mb: float | None = None
    memory_growth_mb: float | None = None
    psnr_base: float | None = None
    ssim_base: float | None = None
    psnr_gt: float | None = None
    ssim_gt: float | None = None
    l1_gt: float | None = None
    lipsync: float | None = None
    psnr_ref: float | None = None  # vs the longer (2x steps) reference
    ssim_ref: float | None = None
    stages: dict = field(default_factory=dict)  # pipeline stage -> seconds (mean of the repeats)
    extra: dict = field(default_factory=dict)
    # wall seconds from the call to generate until the first clip's frames reached the caller
    # (median of the repeats); the seconds of video made and video seconds / wall seconds (the
    # real-time factor, of the median run). None in results written before they were measured.
    first_frame_seconds: float | None = None
    video_seconds: float | None = None
    realtime_factor: float | None = None


@dataclass
class MethodResult:
    name: str
    accel: dict | None
    key_steps: int  # full steps per clip
    steps: int  # denoising steps per clip
    seconds: float = 0.0
    model_seconds: float = 0.0
    seconds_per_step: float = 0.0
    speedup: float | None = None
    model_speedup: float | None = None
    flops: float | None = None
    flops_ratio: float | None = None
    peak_memory_mb: float | None = None
    memory_growth_mb: float | None = None
    psnr_base: float | None = None
    ssim_base: float | None = None
    psnr_gt: float | None = None
    ssim_gt: float | None = None
    l1_gt: float | None = None
    lipsync: float | None = None
    psnr_ref: float | None = None
    ssim_ref: float | None = None
    family: str = ""  # "plain DDIM" or the accelerator's method (who owns the frontier)
    sampler: str | None = None  # the sampler the row ran (ddim, flow, dpmpp2m, unipc); None in older results
    role: str = "method"  # "baseline", "control" (plain DDIM, fewer steps), "reference" (longer), "method"
    frontier: bool | None = None  # no other row both faster and better (PSNR to the baseline); None: n/a
    stage_seconds: dict = field(default_factory=dict)  # pipeline stage -> mean seconds per generation
    first_frame_seconds: float | None = None  # mean over the cases (a latency: not summed)
    video_seconds: float | None = None  # summed over the cases
    realtime_factor: float | None = None  # video seconds / wall seconds, both summed over the cases
    cases: list[CaseResult] = field(default_factory=list)
    summary: dict = field(default_factory=dict)  # the accelerator's summary() of the last run


@dataclass
class BenchResult:
    target: str
    mode: str  # "pipeline" | "speed"
    meta: dict
    methods: list[MethodResult]
    notes: list[str] = field(default_factory=list)

    def method(self, name: str) -> MethodResult:
        for m in self.methods:
            if m.name == name:
                return m
        raise KeyError(name)

    def to_dict(self) -> dict:
        return _clean({"target": self.target, "mode": self.mode, "psnr_cap_db": PSNR_CAP, "meta": self.meta,
                       "notes": self.notes, "methods": [asdict(m) for m in self.methods]})


def _clean(obj):
    """JSON-safe: non-finite floats -> None, tuples -> lists, tensors -> lists."""
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if isinstance(obj, torch.Tensor):
        return _clean(obj.tolist())
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, (str, int, bool)) or obj is None:
        return obj
    return str(obj)


def _mean(values) -> float | None:
    vals = [v for v in values if v is not None]
    return sum(vals) / len(vals) if vals else None


def _aggregate(m: MethodResult) -> None:
    cs = m.cases
    m.seconds = sum(c.seconds for c in cs)
    m.model_seconds = sum(c.model_seconds for c in cs)
    steps = sum(c.steps for c in cs)
    m.seconds_per_step = m.model_seconds / steps if steps else 0.0
    m.flops = sum(c.flops for c in cs) if cs and all(c.flops is not None for c in cs) else None
    mem = [c.peak_memory_mb for c in cs if c.peak_memory_mb is not None]
    grow = [c.memory_growth_mb for c in cs if c.memory_growth_mb is not None]
    m.peak_memory_mb = max(mem) if mem else None
    m.memory_growth_mb = max(grow) if grow else None
    for key in ("psnr_base", "ssim_base", "psnr_gt", "ssim_gt", "l1_gt", "lipsync", "psnr_ref", "ssim_ref"):
        setattr(m, key, _mean(getattr(c, key) for c in cs))
    stages = []
    for c in cs:
        stages += [k for k in c.stages if k not in stages]
    m.stage_seconds = {k: _mean(c.stages.get(k) for c in cs) for k in stages}
    m.first_frame_seconds = _mean(c.first_frame_seconds for c in cs)
    video = [c.video_seconds for c in cs]
    m.video_seconds = sum(video) if cs and all(v is not None for v in video) else None
    m.realtime_factor = realtime_factor(m.video_seconds, m.seconds)


def realtime_factor(video_seconds: float | None, wall_seconds: float | None) -> float | None:
    """Seconds of video made per second of wall time (above 1: faster than real time); None
    when either is unknown or the wall time is not positive."""
    if video_seconds is None or wall_seconds is None or not wall_seconds > 0:
        return None
    return video_seconds / wall_seconds


def _relate(methods: list[MethodResult]) -> None:
    base = methods[0]
    for m in methods:
        m.speedup = base.seconds / m.seconds if m.seconds > 0 else None
        m.model_speedup = base.model_seconds / m.model_seconds if m.model_seconds > 0 else None
        m.flops_ratio = m.flops / base.flops if m.flops is not None and base.flops else None
    mark_frontier(methods)


def _dominates(a, b) -> bool:
    """``a`` = (speed, quality) is at least as good as ``b`` in both and better in one."""
    return a[0] >= b[0] and a[1] >= b[1] and (a[0] > b[0] or a[1] > b[1])


def frontier_flags(points) -> list[bool | None]:
    """For (speed, quality) pairs (higher is better in both; None: not measured): True for the
    points no other point dominates (at least as fast and as good, better in one), False for the
    dominated ones, None where a value is missing. Exact ties are all on the frontier."""
    ok = [(s, q) for s, q in points if s is not None and q is not None]
    return [None if s is None or q is None else not any(_dominates(o, (s, q)) for o in ok) for s, q in points]


def mark_frontier(methods) -> None:
    """Set ``frontier`` of every row from its speedup (end-to-end) and its PSNR to the baseline."""
    for m, flag in zip(methods, frontier_flags([(m.speedup, m.psnr_base) for m in methods])):
        m.frontier = flag


def frontier_sentence(methods) -> str | None:
    """One sentence: which family owns the frontier beyond the baseline (the rows on it that are
    faster than the baseline, by family). None without frontier flags."""
    if not any(m.frontier is not None for m in methods):
        return None
    fast = [m for m in methods if m.frontier and m.speedup is not None and m.speedup > 1.0 and m.role != "baseline"]
    if not fast:
        return "Frontier: no row is both faster than the baseline and not beaten by a faster, better row; the baseline owns it."
    count: dict[str, int] = {}
    for m in fast:
        count[m.family or m.name] = count.get(m.family or m.name, 0) + 1
    ranked = sorted(count.items(), key=lambda kv: (-kv[1], kv[0]))
    names = ", ".join(m.name for m in fast)
    if len(ranked) == 1:
        return f"Frontier: {ranked[0][0]} owns it: every frontier row faster than the baseline is {ranked[0][0]} ({names})."
    if ranked[0][1] == ranked[1][1]:
        return (f"Frontier: shared, no family owns it (of the {len(fast)} frontier rows faster than the baseline: "
                + ", ".join(f"{f} {n}" for f, n in ranked) + f"; rows: {names}).")
    return (f"Frontier: {ranked[0][0]} owns most of it ({ranked[0][1]} of the {len(fast)} frontier rows faster than "
            f"the baseline; " + ", ".join(f"{f} {n}" for f, n in ranked[1:]) + f"; rows: {names}).")


def write_json(result: BenchResult, path: str | Path) -> Path:
    """``result`` as JSON at ``path``, atomically (:func:`talkfast.io.write_rule.write_text_atomic`)."""
    from ..io.write_rule import write_text_atomic

    return write_text_atomic(path, json.dumps(result.to_dict(), indent=2, allow_nan=False))


def read_json(path: str | Path) -> BenchResult:
    """A :class:`BenchResult` back from :func:`write_json` (e.g. to redraw the plot)."""
    data = json.loads(Path(path).read_text())
    methods = []
    for m in data["methods"]:
        cases = [CaseResult(**c) for c in m.pop("cases", [])]
        methods.append(MethodResult(**m, cases=cases))
    return BenchResult(data["target"], data["mode"], data["meta"], methods, data.get("notes", []))

