"""Benchmarks of the accelerators against the unaccelerated baseline.

Two modes:

- :func:`run_bench` (pipeline mode): whole generations with :meth:`TalkingHeadPipeline.generate`,
  the baseline first, then every method on the same inputs and seed. Per method: end-to-end
  seconds, seconds per denoising step, speedup, FLOPs, peak memory, PSNR/SSIM of the frames
  against the baseline's frames, and, when a case supplies them, PSNR/SSIM/L1 against ground
  truth and a lip-sync score.
- :func:`run_speed_bench` (speed mode): the bare denoising loop of a preset with random weights
  (e.g. ``hallo`` at 512x512, 16 frames, 40 steps) with synthetic conditioning, no VAE and no
  audio extractor. Speed, FLOPs and memory only; quality is n/a.

How things are measured (also written into every result's ``notes``):

- **Time.** End-to-end seconds are wall-clock around ``generate`` (pipeline mode: portrait
  preparation, VAE encode/decode, ReferenceNet, audio features, denoising) or around ``denoise``
  (speed mode), with a CUDA synchronisation before and after on GPUs. Seconds per step are the
  accelerator's own record of the time spent in model calls divided by the number of denoising
  steps (``acc.sync_timing`` on CUDA makes each call's time exact). Timed runs never count FLOPs.
  With ``repeats > 1`` the median run is reported.
- **FLOPs.** ``torch.utils.flop_counter.FlopCounterMode`` around every denoising-model call of a
  separate, untimed pass that doubles as the method's warm-up. Calls with the same signature
  (full or reduced, number of batched steps) run the same stages on the same shapes, so only the
  first call of each signature is counted and the count is reused for the others
  (:class:`FlopMemo`); in pipeline mode that pass covers one clip and is scaled by the number of
  clips (every clip runs the same step plan on same-shaped tensors). The counts cover the
  denoising UNet (both CFG halves) only, not the VAE, the ReferenceNet or the audio features.
  The FLOPs ratio is relative to the baseline's measured FLOPs.
- **Memory.** :class:`talkfast.eval.metrics.PeakMemory` around the first timed run (the
  others run without it: on CPU it trims the heap first, which the run then pays for in page
  faults).
- **Quality.** :mod:`talkfast.eval.metrics`: per-frame PSNR (capped at 100 dB, so identical
  frames read 100) and SSIM, averaged over frames and then over cases.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import platform
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from .. import __version__, examples
from ..accelerators import AccelConfig, CachingConfig, DFAConfig, KeySchedule, build_accelerator
from ..accelerators.base import Accelerator
from . import metrics
from .metrics import PSNR_CAP, PeakMemory

EXAMPLE_PORTRAIT, EXAMPLE_SPEECH = examples.PORTRAIT, examples.SPEECH

DEFAULT_KEYS = KeySchedule("uniform", interval=4)
DEFAULT_SWEEP = (2, 3, 4, 5, 6, 8)

Log = Callable[[str], None]


def _quiet(_msg: str) -> None:
    pass


# ---------------------------------------------------------------------------------------------
# methods
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BenchMethod:
    """A named accelerator setting; ``accel`` None is the baseline (every step a full step)."""

    name: str
    accel: AccelConfig | None = None

    @property
    def is_baseline(self) -> bool:
        return self.accel is None or self.accel.method == "off"

    def build(self) -> Accelerator:
        """A fresh accelerator. The baseline gets the plain :class:`Accelerator` (every step
        full), so it records its calls (time, FLOPs) exactly like the methods do."""
        return Accelerator() if self.is_baseline else build_accelerator(self.accel)

    def key_steps(self, steps: int) -> int:
        """Full-network steps per clip of ``steps`` steps."""
        if self.is_baseline:
            return steps
        return len(self.accel.caching.keys.keys(steps))

    def describe(self) -> dict:
        return {"name": self.name, "accel": None if self.accel is None else self.accel.describe()}


def _lcp(keys: KeySchedule, **caching) -> AccelConfig:
    return AccelConfig("lightningcp", CachingConfig(keys=keys, **caching))


def default_methods(keys: KeySchedule = DEFAULT_KEYS, dfa: DFAConfig = DFAConfig()) -> list[BenchMethod]:
    """The baseline, LightningCP and its variants, DeepCache and FasterDiffusion, all with the
    same key steps."""
    return [
        BenchMethod("baseline"),
        BenchMethod("lightningcp", _lcp(keys)),
        BenchMethod("lightningcp+dfa", _lcp(keys).replace(dfa=dfa)),
        BenchMethod("lightningcp+dfa+refdrop", _lcp(keys).replace(dfa=dfa, drop_ref=True)),
        BenchMethod("lightningcp-noest", _lcp(keys, estimation=False)),
        BenchMethod("deepcache", AccelConfig("deepcache", CachingConfig(keys=keys))),
        BenchMethod("fasterdiffusion", AccelConfig("fasterdiffusion", CachingConfig(keys=keys))),
    ]


def ablation_methods(keys: KeySchedule = DEFAULT_KEYS, dfa: DFAConfig = DFAConfig()) -> list[BenchMethod]:
    """The paper's ablation: LightningCP only, +DFA, +DFA+reference removal, each with and
    without input-latent estimation (without: the reduced steps all get the key step's latent)."""
    out = [BenchMethod("baseline")]
    for est in (True, False):
        tag = "" if est else "-noest"
        out += [
            BenchMethod("lightningcp" + tag, _lcp(keys, estimation=est)),
            BenchMethod("lightningcp+dfa" + tag, _lcp(keys, estimation=est).replace(dfa=dfa)),
            BenchMethod("lightningcp+dfa+refdrop" + tag, _lcp(keys, estimation=est).replace(dfa=dfa, drop_ref=True)),
        ]
    return out


def sweep_methods(intervals: Sequence[int] = DEFAULT_SWEEP, template: AccelConfig | None = None,
                  name: str | None = None) -> list[BenchMethod]:
    """The baseline plus ``template`` (default: plain LightningCP) with a key step every
    ``k``-th step for each ``k`` in ``intervals`` (named ``<name>@k``)."""
    template = template or _lcp(DEFAULT_KEYS)
    if name is None:
        name = template.method + ("+dfa" if template.dfa is not None else "") + ("+refdrop" if template.drop_ref else "")
    out = [BenchMethod("baseline")]
    for k in intervals:
        if int(k) < 1:
            raise ValueError(f"key-step intervals must be >= 1, got {k}")
        caching = dataclasses.replace(template.caching, keys=KeySchedule("uniform", interval=int(k)))
        out.append(BenchMethod(f"{name}@{int(k)}", template.replace(caching=caching)))
    return out


def method_set(kind: str, keys: KeySchedule = DEFAULT_KEYS, intervals: Sequence[int] = DEFAULT_SWEEP) -> list[BenchMethod]:
    """``kind``: "default", "ablation", "sweep", "all" (their union, each name once) or
    "quick" (baseline + LightningCP)."""
    if kind == "default":
        return default_methods(keys)
    if kind == "ablation":
        return ablation_methods(keys)
    if kind == "sweep":
        return sweep_methods(intervals)
    if kind == "quick":
        return default_methods(keys)[:2]
    if kind == "all":
        seen, out = set(), []
        for m in default_methods(keys) + ablation_methods(keys) + sweep_methods(intervals):
            if m.name not in seen:
                seen.add(m.name)
                out.append(m)
        return out
    raise ValueError(f"unknown method set {kind!r}; choose default, ablation, sweep, all or quick")


def _baseline_first(methods: Sequence[BenchMethod]) -> list[BenchMethod]:
    methods = list(methods)
    names = [m.name for m in methods]
    if len(set(names)) != len(names):
        raise ValueError(f"method names must be unique: {names}")
    base = [m for m in methods if m.is_baseline]
    rest = [m for m in methods if not m.is_baseline]
    return [base[0] if base else BenchMethod("baseline")] + rest


# ---------------------------------------------------------------------------------------------
# FLOP counting
# ---------------------------------------------------------------------------------------------


class FlopMemo:
    """``with FlopMemo(acc): <run the loop with acc>``: while active, the denoising loop counts
    FLOPs only for the first model call of each signature ``(full, number of steps in the
    call)``; the other calls' records get that count. It wraps the accelerator instance's
    ``stage_plan`` and ``record`` (restored on exit), so the accelerator itself is what the
    pipeline and the loop see."""

    _WRAPPED = ("stage_plan", "record")

    def __init__(self, acc: Accelerator):
        self.acc = acc
        self.memo: dict[tuple[bool, int], int] = {}
        self.counted_calls = 0
        self._saved: dict[str, Any] = {}

    @staticmethod
    def signature(action) -> tuple[bool, int]:
        return bool(action.full), len(action.steps)

    def __enter__(self) -> "FlopMemo":
        acc = self.acc
        self._saved = {k: acc.__dict__[k] for k in self._WRAPPED if k in acc.__dict__}
        self._saved_count = acc.count_flops
        plan_fn, record_fn = acc.stage_plan, acc.record

        def stage_plan(action):
            acc.count_flops = self.signature(action) not in self.memo
            return plan_fn(action)

        def record(action, seconds: float, items: int, flops: int | None) -> None:
            sig = self.signature(action)
            if flops is None:
                flops = self.memo.get(sig)
            else:
                self.memo[sig] = flops
                self.counted_calls += 1
            record_fn(action, seconds, items, flops)

        acc.stage_plan, acc.record = stage_plan, record
        return self

    def __exit__(self, *exc) -> None:
        acc = self.acc
        for k in self._WRAPPED:
            if k in self._saved:
                setattr(acc, k, self._saved[k])
            else:
                acc.__dict__.pop(k, None)
        acc.count_flops = self._saved_count


@contextlib.contextmanager
def flushed_denormals(enabled: bool):
    """While active (and ``enabled``), CPU float math flushes denormal numbers to zero
    (``torch.set_flush_denormal``). On CPU a model call that meets denormals can run 100x slower
    (seen with random weights: 17 s instead of 0.07 s per tiny-model call on some clips), which
    would make the timings measure the inputs' arithmetic accidents rather than the methods.
    Every method runs under the same setting, so the comparisons stay fair. Restored to the
    default (off) on exit."""
    on = bool(enabled) and torch.set_flush_denormal(True)
    try:
        yield on
    finally:
        if on:
            torch.set_flush_denormal(False)


# ---------------------------------------------------------------------------------------------
# cases and results
# ---------------------------------------------------------------------------------------------


@dataclass
class BenchCase:
    """One input of the pipeline benchmark. ``image``/``audio``: paths, or a PIL image and an
    :class:`~talkfast.io.audio.Audio`. ``ground_truth``: the real video (T, 3, H, W), float in
    [0, 1] or uint8, when known (resized to the generated size if it differs; compared over the
    common number of frames). ``lipsync_fn(frames) -> float``: the corpus's lip-sync
    metric for this case's audio (higher is better), when available."""

    name: str
    image: Any
    audio: Any
    ground_truth: torch.Tensor | None = None
    lipsync_fn: Callable[[torch.Tensor], float] | None = None
    regions: Any = None  # known face/lip boxes of the portrait (corpus samples), instead of detection


def trim_audio(audio, seconds: float | None):
    """The first ``seconds`` of ``audio`` (all of it when None or longer)."""
    from ..io.audio import Audio

    if seconds is None:
        return audio
    if seconds <= 0:
        raise ValueError(f"--seconds must be positive, got {seconds}")
    n = max(1, round(seconds * audio.sample_rate))
    if n >= len(audio.samples):
        return audio
    return Audio(audio.samples[:n].copy(), audio.sample_rate, audio.source_sample_rate, audio.source_channels, audio.path)


def example_case(seconds: float | None = None, name: str = "example") -> BenchCase:
    """The bundled portrait and speech (its first ``seconds``); no ground truth."""
    from ..io.audio import load_audio
    from ..io.image import load_image

    return BenchCase(name, load_image(EXAMPLE_PORTRAIT), trim_audio(load_audio(EXAMPLE_SPEECH), seconds))


def corpus_cases(corpus_dir: str | Path, split: str = "test", limit: int | None = None) -> list[BenchCase]:
    """Cases from a synthetic corpus folder (:mod:`talkfast.data.corpus`): per sample its
    neutral reference portrait and its speech as inputs, its frames as ground truth (uint8,
    resized to the generated size when they differ) and :func:`talkfast.eval.lipsync.lipsync_score`
    against its phoneme-derived mouth target as the lip-sync metric (face boxes scaled to the
    generated size). ``limit``: at most that many samples, spread over identities."""
    from ..errors import InputError

    try:
        from ..data.corpus import load_corpus
        from .lipsync import lipsync_score
    except ImportError as err:
        raise InputError(f"the synthetic corpus support is not available: {err}") from err
    from .quality import select_samples

    samples = select_samples(load_corpus(corpus_dir, split), limit)  # spread over identities
    if not samples:
        raise InputError(f"no {split!r} samples in {corpus_dir}")
    cases = []
    for sample in samples:
        frames = sample.frames()  # (T, H, W, 3) uint8
        truth = torch.from_numpy(frames).permute(0, 3, 1, 2).contiguous()
        cases.append(BenchCase(sample.id, sample.reference_path, sample.audio(), truth,
                               _corpus_lipsync(lipsync_score, sample.face_boxes(), sample.openness, frames.shape[1]),
                               regions=sample.regions()))
    return cases


def _corpus_lipsync(score, boxes, target, truth_height: int) -> Callable[[torch.Tensor], float]:
    def lipsync(video: torch.Tensor) -> float:
        n = min(video.shape[0], len(boxes))  # a trimmed run (--seconds) covers the first frames only
        arr = (video[:n].detach().float().clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
        return float(score(arr, boxes[:n] * (arr.shape[1] / truth_height), target[:n]))

    return lipsync


def one_clip(audio, frames: int, fps: int):
    """The audio of exactly the first clip (``frames`` frames at ``fps``), or all if shorter."""
    from ..io.audio import Audio

    n = (frames * audio.sample_rate) // fps  # floor: ceil(n * fps / sr) == frames
    if n >= len(audio.samples) or n < 1:
        return audio
    return Audio(audio.samples[:n].copy(), audio.sample_rate, audio.source_sample_rate, audio.source_channels, audio.path)


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
    extra: dict = field(default_factory=dict)


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
    for key in ("psnr_base", "ssim_base", "psnr_gt", "ssim_gt", "l1_gt", "lipsync"):
        setattr(m, key, _mean(getattr(c, key) for c in cs))


def _relate(methods: list[MethodResult]) -> None:
    base = methods[0]
    for m in methods:
        m.speedup = base.seconds / m.seconds if m.seconds > 0 else None
        m.model_speedup = base.model_seconds / m.model_seconds if m.model_seconds > 0 else None
        m.flops_ratio = m.flops / base.flops if m.flops is not None and base.flops else None


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _compare(frames: torch.Tensor, case: BenchCase, base: torch.Tensor | None, cr: CaseResult) -> None:
    if base is not None:
        a, b = metrics.align(frames, base)
        cr.psnr_base, cr.ssim_base = metrics.psnr(a, b), metrics.ssim(a, b)
    if case.ground_truth is not None:
        gt = case.ground_truth.detach().cpu()
        gt = gt.float() / 255.0 if gt.dtype == torch.uint8 else gt.float()
        if gt.shape[-2:] != frames.shape[-2:]:  # ground truth at another resolution
            gt = torch.nn.functional.interpolate(gt, size=tuple(frames.shape[-2:]), mode="bilinear",
                                                 align_corners=False, antialias=True).clamp(0, 1)
        a, b = metrics.align(frames, gt)
        cr.psnr_gt, cr.ssim_gt, cr.l1_gt = metrics.psnr(a, b), metrics.ssim(a, b), metrics.l1(a, b)
    if case.lipsync_fn is not None:
        cr.lipsync = float(case.lipsync_fn(frames))


# ---------------------------------------------------------------------------------------------
# pipeline mode
# ---------------------------------------------------------------------------------------------


def _load_case(case: BenchCase) -> tuple[Any, Any]:
    from ..io.audio import load_audio
    from ..io.image import load_image

    image = load_image(case.image) if isinstance(case.image, (str, Path)) else case.image
    audio = load_audio(case.audio) if isinstance(case.audio, (str, Path)) else case.audio
    return image, audio


def run_bench(pipe, cases: Sequence[BenchCase], methods: Sequence[BenchMethod], options=None,
              warmup: bool = True, count_flops: bool = True, *, repeats: int = 1, size: int | None = None,
              target: str = "pipeline", flush_denormal: bool | None = None, log: Log | None = None) -> BenchResult:
    """Benchmark ``methods`` on ``cases`` with the pipeline ``pipe`` (see the module docstring).

    The baseline (added if ``methods`` has none) runs first; its frames are the reference of the
    PSNR/SSIM columns. Per method and case: an untimed pass over the first clip (FLOPs counted
    when ``count_flops``; it is also the method's warm-up), then ``repeats`` timed generations
    (median reported; frames and memory from the first). ``warmup`` adds one untimed baseline
    clip before everything (first-call costs: threads, allocator, kernels). ``flush_denormal``
    (default: on for CPU pipelines) runs everything under :func:`flushed_denormals`."""
    if flush_denormal is None:
        flush_denormal = pipe.device.type == "cpu"
    with flushed_denormals(flush_denormal) as flushed:
        result = _run_bench(pipe, cases, methods, options, warmup, count_flops, repeats, size, target, log)
    result.meta["flush_denormal"] = flushed
    if flushed:
        result.notes.append("CPU denormals flushed to zero (torch.set_flush_denormal) for every method: "
                            "denormal arithmetic can slow a CPU model call 100x.")
    return result


def _run_bench(pipe, cases, methods, options, warmup, count_flops, repeats, size, target, log) -> BenchResult:

    log = log or _quiet
    if not cases:
        raise ValueError("no benchmark cases")
    if repeats < 1:
        raise ValueError("repeats must be >= 1")
    opts = pipe.resolve(options)
    methods = _baseline_first(methods)
    device = pipe.device
    loaded = {c.name: _load_case(c) for c in cases}
    if len(loaded) != len(cases):
        raise ValueError("case names must be unique")
    clip_frames = pipe.cfg.clip_frames

    def generate(method_acc, case: BenchCase, first_clip_only: bool = False, collect: list | None = None):
        image, audio = loaded[case.name]
        if first_clip_only:
            audio = one_clip(audio, clip_frames, opts.fps)
        on_clip = (lambda fr: collect.append(fr.detach().to("cpu", torch.float32))) if collect is not None else None
        return pipe.generate(image, audio, None, opts, size=size, accelerator=method_acc, on_clip=on_clip,
                             regions=case.regions)

    if warmup:
        log("warm-up: one baseline clip")
        acc = Accelerator()
        try:
            generate(acc, cases[0], first_clip_only=True)
        finally:
            acc.detach()

    results: list[MethodResult] = []
    base_frames: dict[str, torch.Tensor] = {}
    for m in methods:
        mr = MethodResult(m.name, None if m.accel is None else m.accel.describe(), m.key_steps(opts.steps), opts.steps)
        acc = m.build()
        acc.sync_timing = device.type == "cuda"
        try:
            for case in cases:
                per_clip_flops = None
                if count_flops:
                    with FlopMemo(acc):
                        generate(acc, case, first_clip_only=True)
                    per_clip_flops = acc.summary().get("flops")
                elif warmup:
                    generate(acc, case, first_clip_only=True)
                secs, model_secs, frames, mem, summary, res = [], [], None, None, None, None
                for r in range(repeats):
                    collect: list[torch.Tensor] = []
                    meter = PeakMemory(device) if r == 0 else contextlib.nullcontext()
                    _sync(device)
                    with meter:
                        t0 = time.perf_counter()
                        res = generate(acc, case, collect=collect)
                        _sync(device)
                        secs.append(time.perf_counter() - t0)
                    model_secs.append(acc.summary()["model_seconds"])
                    if r == 0:
                        frames, mem, summary = torch.cat(collect), meter.reading, acc.summary()
                cr = CaseResult(case.name, statistics.median(secs), secs, statistics.median(model_secs), summary["steps"],
                                summary["full_steps"], clips=res.clips, frames=int(frames.shape[0]),
                                flops=None if per_clip_flops is None else per_clip_flops * res.clips,
                                peak_memory_mb=mem.peak_mb, memory_growth_mb=mem.growth_mb,
                                extra={"memory_kind": mem.kind})
                if m is methods[0]:
                    base_frames[case.name] = frames
                _compare(frames, case, base_frames.get(case.name), cr)
                mr.cases.append(cr)
                mr.summary = summary
                log(f"{m.name} / {case.name}: {cr.seconds:.2f} s, {cr.model_seconds / max(1, cr.steps):.4f} s/step"
                    + (f", PSNR to baseline {cr.psnr_base:.2f} dB" if cr.psnr_base is not None else ""))
        finally:
            acc.detach()
        _aggregate(mr)
        results.append(mr)
    _relate(results)
    mem_kind = results[0].cases[0].extra.get("memory_kind", "")
    meta = {
        "model": pipe.cfg.name, "weights": getattr(pipe, "source", ""), "device": str(device),
        "dtype": str(pipe.dtype).replace("torch.", ""), "steps": opts.steps, "guidance": opts.guidance,
        "seed": opts.seed, "fps": opts.fps, "size": size or pipe.cfg.image_size, "clip_frames": clip_frames,
        "cases": [c.name for c in cases], "frames": sum(c.frames for c in results[0].cases),
        "repeats": repeats, "count_flops": count_flops, "warmup": warmup, "memory": mem_kind,
        **_environment(device),
    }
    notes = _pipeline_notes(mem_kind, count_flops, repeats, pipe, cases)
    return BenchResult(target, "pipeline", meta, results, notes)


def _environment(device: torch.device) -> dict:
    env = {"talkfast": __version__, "torch": torch.__version__, "python": platform.python_version(),
           "threads": torch.get_num_threads(), "cpu": platform.processor() or platform.machine()}
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
    return env


def _pipeline_notes(mem_kind: str, count_flops: bool, repeats: int, pipe, cases) -> list[str]:
    notes = [
        "total s: wall-clock of a whole generate() (portrait, VAE, ReferenceNet, audio features, denoising)"
        + (f", median of {repeats} runs" if repeats > 1 else "") + "; speedup = baseline total / method total.",
        "s/step: time inside denoising-model calls / denoising steps" + (" (median run)" if repeats > 1 else "")
        + "; model speedup = baseline model time / method model time.",
        (("FLOPs: torch.utils.flop_counter over the denoising UNet calls (both CFG halves) of a separate untimed "
          "one-clip pass (first call of each call signature counted, reused for the rest), x clips; "
          "ratio vs the baseline's FLOPs.") if count_flops else "FLOPs: not counted (n/a)."),
        f"memory: {metrics.describe_memory(mem_kind)}.",
        f"PSNR/SSIM: per frame, averaged; PSNR capped at {PSNR_CAP:g} dB (identical frames read {PSNR_CAP:g}).",
    ]
    if str(getattr(pipe, "source", "")).startswith("random:"):
        notes.append("random weights: PSNR/SSIM to the baseline measure numerical deviation, not visual quality.")
    if not any(c.ground_truth is not None for c in cases):
        notes.append("ground truth: none for these inputs (n/a); a corpus split (--corpus) supplies it.")
    else:
        notes.append("PSNR/SSIM/L1 GT: against the ground-truth frames (resized to the generated size if needed), "
                     "averaged over cases.")
    if not any(c.lipsync_fn is not None for c in cases):
        notes.append("lip-sync: needs the corpus metric (n/a).")
    else:
        notes.append("lip-sync: talkfast.eval.lipsync.lipsync_score (Pearson r of the measured mouth opening vs the "
                     "phoneme-derived target; ~1 in sync, ~0 not), averaged over cases.")
    return notes


# ---------------------------------------------------------------------------------------------
# speed mode: the bare denoising loop with synthetic conditioning
# ---------------------------------------------------------------------------------------------


@dataclass
class SpeedSetup:
    """A network, a CFG predictor with synthetic conditioning, the starting noise and the
    portrait whose face regions drive DFA."""

    net: Any
    predict: Callable
    noise: torch.Tensor
    portrait: Any
    frames: int
    size: int


def resolve_dtype(dtype: torch.dtype | str) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    names = {"fp32": torch.float32, "float32": torch.float32, "fp16": torch.float16, "float16": torch.float16,
             "bf16": torch.bfloat16, "bfloat16": torch.bfloat16}
    try:
        return names[dtype]
    except KeyError:
        raise ValueError(f"dtype must be one of {sorted(names)}, got {dtype!r}") from None


def build_random_net(preset: str, device: torch.device | str, dtype: torch.dtype, seed: int = 0):
    """The preset's network with random weights, built directly on ``device`` (the same modules
    and initialisation as :func:`talkfast.models.loading.build_random`, without the VAE and
    without a CPU initialisation of the full model, which takes minutes for ``hallo``)."""
    from ..models.config import get_preset
    from ..models.net import build_net

    torch.manual_seed(seed)
    if torch.device(device).type == "cuda":
        torch.cuda.manual_seed(seed)
    return build_net(get_preset(preset), device=device, dtype=dtype)


@torch.no_grad()
def speed_setup(net, *, frames: int | None = None, size: int | None = None, guidance: float = 3.5,
                seed: int = 0, device=None, dtype=None) -> SpeedSetup:
    """Synthetic conditioning for a bare denoising loop, shaped like the pipeline's: the bundled
    portrait (face regions and masks at ``size``; its identity embedding and FaceLocator input),
    random reference latents (reference + motion frames) written through the ReferenceNet, random
    audio tokens. The predictor is the pipeline's CFG predictor (unconditional half: zero audio,
    zero face feature, empty image context, no reference tokens). ``device="meta"`` gives the
    same shapes on the meta device (FLOP counting without memory or compute)."""
    from ..io.image import load_image
    from ..models.attention import ItemLayout
    from ..models.unet import UNetCond
    from ..pipeline.conditioning import prepare_portrait

    cfg = net.cfg
    device = torch.device(device) if device is not None else net.device
    dtype = dtype or net.dtype
    frames = frames or cfg.clip_frames
    size = size or cfg.image_size
    f = cfg.vae_scale_factor * 2 ** (cfg.unet.num_levels - 1)
    if size % f:
        raise ValueError(f"size must be a multiple of {f} for the {cfg.name} model, got {size}")
    por = prepare_portrait(load_image(EXAMPLE_PORTRAIT), size, size // cfg.vae_scale_factor, cfg.unet.num_levels,
                           cfg.image_embed_dim, "pixels")
    lat = size // cfg.vae_scale_factor
    g = torch.Generator("cpu").manual_seed(seed)

    def rnd(*shape):
        return torch.randn(*shape, generator=g).to(device, dtype)

    u = cfg.unet
    ident = por.identity.to(device, dtype)[None]
    ctx_c, ctx_u = net.imageproj(ident), net.imageproj(torch.zeros_like(ident))
    net.write_reference(rnd(1 + cfg.motion_frames, cfg.latent_channels, lat, lat), torch.cat([ctx_u, ctx_c]))
    face = net.face_locator(por.locator_input.to(device, dtype)[None]).unsqueeze(2)
    audio = rnd(1, frames, cfg.audio_tokens, u.audio_attention_dim)
    masks = tuple([m.to(device, dtype)[None] for m in kind] for kind in (por.masks.full, por.masks.face, por.masks.lip))
    cfg_on = guidance > 1.0

    def predict(x: torch.Tensor, t: torch.Tensor, plan) -> torch.Tensor:
        n = x.shape[0]
        if cfg_on:
            cond = UNetCond(context=torch.cat([ctx_u.expand(n, -1, -1), ctx_c.expand(n, -1, -1)]),
                            audio=torch.cat([torch.zeros_like(audio).expand(n, -1, -1, -1), audio.expand(n, -1, -1, -1)]),
                            masks=tuple([m.expand(2 * n, -1) for m in kind] for kind in masks),
                            face_feature=torch.cat([torch.zeros_like(face).expand(n, -1, -1, -1, -1),
                                                    face.expand(n, -1, -1, -1, -1)]),
                            layout=ItemLayout.cfg(n, True))
            v = net.denoise(torch.cat([x, x]).to(dtype), torch.cat([t, t]), cond, plan)
            v_u, v_c = v.chunk(2)
            return v_u + guidance * (v_c - v_u)
        cond = UNetCond(context=ctx_c.expand(n, -1, -1), audio=audio.expand(n, -1, -1, -1),
                        masks=tuple([m.expand(n, -1) for m in kind] for kind in masks),
                        face_feature=face.expand(n, -1, -1, -1, -1), layout=ItemLayout.cfg(n, False))
        return net.denoise(x.to(dtype), t, cond, plan)

    noise = rnd(1, cfg.latent_channels, frames, lat, lat)
    return SpeedSetup(net, predict, noise, por, frames, size)


def run_denoise(setup: SpeedSetup, acc: Accelerator, steps: int) -> torch.Tensor:
    """One whole schedule of ``steps`` DDIM steps with the attached accelerator ``acc``; its
    statistics are reset first (``begin``, as the pipeline does per generation)."""
    from ..sampling.loop import denoise
    from ..sampling.scheduler import make_scheduler

    acc.begin(None, setup.portrait)  # drops the records; plug-ins (DFA) take the face regions
    with torch.no_grad():
        return denoise(setup.predict, make_scheduler(steps), setup.noise, acc)


def _attached(method: BenchMethod, setup: SpeedSetup) -> Accelerator:
    acc = method.build()
    acc.attach(setup.net)
    return acc


def equivalence_check(setup: SpeedSetup, steps: int, atol: float, rtol: float = 0.0,
                      keys: KeySchedule = KeySchedule("uniform", interval=1)) -> dict:
    """LightningCP with every step a key step must reproduce the baseline. Returns
    {"ok", "max_abs_diff", "finite", "steps"}."""
    base = _attached(BenchMethod("baseline"), setup)
    try:
        ref = run_denoise(setup, base, steps)
    finally:
        base.detach()
    lcp = _attached(BenchMethod("lightningcp-all-keys", _lcp(keys)), setup)
    try:
        out = run_denoise(setup, lcp, steps)
        reduced = lcp.summary()["reduced_steps"]
    finally:
        lcp.detach()
    finite = bool(torch.isfinite(ref).all() and torch.isfinite(out).all())
    diff = float((out.float() - ref.float()).abs().max())
    scale = float(ref.float().abs().max())
    ok = finite and reduced == 0 and diff <= atol + rtol * scale
    return {"ok": ok, "max_abs_diff": diff, "max_abs_baseline": scale, "finite": finite, "steps": steps,
            "atol": atol, "rtol": rtol, "reduced_steps": reduced}


def run_speed_bench(preset: str = "hallo", device: torch.device | str = "cuda", dtype: torch.dtype | str = torch.float16,
                    frames: int = 16, steps: int = 40, methods: Sequence[BenchMethod] | None = None, size: int = 512,
                    *, guidance: float = 3.5, seed: int = 0, repeats: int = 1, warmup: bool = True,
                    count_flops: bool = True, flops_on: str = "device", setup: SpeedSetup | None = None,
                    budget_s: float | None = None, target: str | None = None, flush_denormal: bool | None = None,
                    log: Log | None = None) -> BenchResult:
    """Speed-only benchmark of the bare denoising loop (see the module docstring).

    ``setup``: a prepared :class:`SpeedSetup` (else the preset is built with random weights on
    ``device``). ``flops_on``: "device" (counted in each method's untimed warm-up pass),
    "meta" (a shapes-only copy of the network on the meta device; no device time, costs host
    time) or "none". ``budget_s``: methods that would start after this many seconds (counted from
    the call, estimated from the baseline's time) are skipped and listed in the notes.
    ``flush_denormal`` (default: on for CPU) runs everything under :func:`flushed_denormals`."""
    if flush_denormal is None:
        dev = setup.net.device if setup is not None else torch.device(device)
        flush_denormal = dev.type == "cpu"
    with flushed_denormals(flush_denormal) as flushed:
        result = _run_speed_bench(preset, device, dtype, frames, steps, methods, size, guidance, seed, repeats,
                                  warmup, count_flops, flops_on, setup, budget_s, target, log)
    result.meta["flush_denormal"] = flushed
    if flushed:
        result.notes.append("CPU denormals flushed to zero (torch.set_flush_denormal) for every method.")
    return result


def _run_speed_bench(preset, device, dtype, frames, steps, methods, size, guidance, seed, repeats, warmup,
                     count_flops, flops_on, setup, budget_s, target, log) -> BenchResult:
    log = log or _quiet
    t_start = time.perf_counter()
    if flops_on not in ("device", "meta", "none"):
        raise ValueError(f"flops_on must be device, meta or none, not {flops_on!r}")
    if not count_flops:
        flops_on = "none"
    if repeats < 1:
        raise ValueError("repeats must be >= 1")
    methods = _baseline_first(methods if methods is not None else default_methods())
    build_s = None
    if setup is None:
        dt = resolve_dtype(dtype)
        t0 = time.perf_counter()
        net = build_random_net(preset, device, dt, seed)
        setup = speed_setup(net, frames=frames, size=size, guidance=guidance, seed=seed)
        _sync(net.device)
        build_s = time.perf_counter() - t0
        log(f"built {preset} with random weights on {device} ({dt}) in {build_s:.1f} s")
    net = setup.net
    dev = net.device
    meta_setup = None
    if flops_on == "meta":
        meta_net = build_random_net(net.cfg.name, "meta", net.dtype)
        meta_setup = speed_setup(meta_net, frames=setup.frames, size=setup.size, guidance=guidance, seed=seed)

    results: list[MethodResult] = []
    skipped: list[str] = []
    base_latents = None
    per_run = None  # seconds of one baseline run: the cost estimate of later methods
    for m in methods:
        passes = repeats + (1 if (warmup or flops_on == "device") else 0)
        if budget_s is not None and per_run is not None and m is not methods[0]:
            if time.perf_counter() - t_start + passes * per_run > budget_s:
                skipped.append(m.name)
                log(f"{m.name}: skipped (time budget of {budget_s:.0f} s)")
                continue
        mr = MethodResult(m.name, None if m.accel is None else m.accel.describe(), m.key_steps(steps), steps)
        acc = _attached(m, setup)
        acc.sync_timing = dev.type == "cuda"
        try:
            flops = None
            if flops_on == "device":
                with FlopMemo(acc):
                    run_denoise(setup, acc, steps)
                flops = acc.summary().get("flops")
            elif warmup:
                run_denoise(setup, acc, steps)
            if flops_on == "meta":
                macc = _attached(m, meta_setup)
                try:
                    with FlopMemo(macc):
                        run_denoise(meta_setup, macc, steps)
                    flops = macc.summary().get("flops")
                finally:
                    macc.detach()
            secs, model_secs, out, mem, summary = [], [], None, None, None
            for r in range(repeats):
                meter = PeakMemory(dev) if r == 0 else contextlib.nullcontext()
                _sync(dev)
                with meter:
                    t0 = time.perf_counter()
                    latents = run_denoise(setup, acc, steps)
                    _sync(dev)
                    secs.append(time.perf_counter() - t0)
                model_secs.append(acc.summary()["model_seconds"])
                if r == 0:
                    out, mem, summary = latents, meter.reading, acc.summary()
        finally:
            acc.detach()
        cr = CaseResult("synthetic", statistics.median(secs), secs, statistics.median(model_secs), summary["steps"],
                        summary["full_steps"], frames=setup.frames, flops=flops, peak_memory_mb=mem.peak_mb,
                        memory_growth_mb=mem.growth_mb, extra={"memory_kind": mem.kind,
                                                               "finite": bool(torch.isfinite(out).all())})
        if base_latents is None:
            base_latents = out
            per_run = max(secs)
        else:
            cr.extra["latent_max_abs_diff_to_baseline"] = float((out.float() - base_latents.float()).abs().max())
        mr.cases.append(cr)
        mr.summary = summary
        _aggregate(mr)
        results.append(mr)
        log(f"{m.name}: {cr.seconds:.3f} s, {mr.seconds_per_step:.4f} s/step"
            + (f", {human_flops(flops)}FLOPs" if flops is not None else ""))
    _relate(results)
    mem_kind = results[0].cases[0].extra.get("memory_kind", "")
    meta = {
        "model": net.cfg.name, "weights": "random", "device": str(dev), "dtype": str(net.dtype).replace("torch.", ""),
        "steps": steps, "guidance": guidance, "seed": seed, "size": setup.size, "frames": setup.frames,
        "repeats": repeats, "flops_on": flops_on, "build_seconds": build_s, "memory": mem_kind,
        "skipped": skipped, "wall_seconds": time.perf_counter() - t_start, **_environment(dev),
    }
    notes = [
        f"speed only: the bare denoising loop (CFG x2, {setup.frames} frames, {setup.size}x{setup.size}, {steps} DDIM steps) "
        "with random weights and synthetic conditioning; no VAE, no audio extractor; quality n/a.",
        "total s: wall-clock of the whole denoising loop" + (f", median of {repeats} runs" if repeats > 1 else "")
        + "; s/step: time inside model calls / steps" + (" (CUDA-synchronised per call)" if dev.type == "cuda" else "") + ".",
        {"device": "FLOPs: torch.utils.flop_counter in each method's untimed warm-up pass on the device (first call of each "
                   "signature counted, reused for the rest); ratio vs the baseline's FLOPs.",
         "meta": "FLOPs: torch.utils.flop_counter on a shapes-only copy of the network on the meta device "
                 "(first call of each signature counted, reused for the rest); ratio vs the baseline's FLOPs.",
         "none": "FLOPs: not counted (n/a)."}[flops_on],
        f"memory: {metrics.describe_memory(mem_kind)}.",
    ]
    if skipped:
        notes.append(f"skipped to stay within the time budget: {', '.join(skipped)}.")
    return BenchResult(target or net.cfg.name, "speed", meta, results, notes)


# ---------------------------------------------------------------------------------------------
# writers
# ---------------------------------------------------------------------------------------------

COLUMNS = ("method", "key steps", "total s", "s/step", "speedup", "model speedup", "FLOPs", "FLOPs ratio",
           "peak MB", "mem growth MB", "PSNR base dB", "SSIM base", "PSNR GT dB", "SSIM GT", "L1 GT", "lip-sync")


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
            m.name, f"{m.key_steps}/{m.steps}", _num(m.seconds, ".3f"), _num(m.seconds_per_step, ".4f"),
            _num(m.speedup, ".2f") + ("x" if m.speedup is not None else ""),
            _num(m.model_speedup, ".2f") + ("x" if m.model_speedup is not None else ""),
            human_flops(m.flops), _num(None if m.flops_ratio is None else 100 * m.flops_ratio, ".1f")
            + ("%" if m.flops_ratio is not None else ""),
            _num(m.peak_memory_mb, ".0f"), _num(m.memory_growth_mb, ".0f"),
            _num(m.psnr_base, ".2f"), _num(m.ssim_base, ".4f"), _num(m.psnr_gt, ".2f"), _num(m.ssim_gt, ".4f"),
            _num(m.l1_gt, ".4f"), _num(m.lipsync, ".3f"),
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
    parts += ["", markdown_table(result), ""]
    return "\n".join(parts)


def write_json(result: BenchResult, path: str | Path) -> Path:
    path = Path(path)
    path.write_text(json.dumps(result.to_dict(), indent=2, allow_nan=False))
    return path


def read_json(path: str | Path) -> BenchResult:
    """A :class:`BenchResult` back from :func:`write_json` (e.g. to redraw the plot)."""
    data = json.loads(Path(path).read_text())
    methods = []
    for m in data["methods"]:
        cases = [CaseResult(**c) for c in m.pop("cases", [])]
        methods.append(MethodResult(**m, cases=cases))
    return BenchResult(data["target"], data["mode"], data["meta"], methods, data.get("notes", []))


def write_outputs(result: BenchResult, out_dir: str | Path, stem: str = "bench") -> dict[str, Path]:
    """``<stem>.md``, ``<stem>.json`` and ``<stem>.png`` in ``out_dir`` (created)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    md = out / f"{stem}.md"
    md.write_text(to_markdown(result))
    js = write_json(result, out / f"{stem}.json")
    png = plot_png(result, out / f"{stem}.png")
    return {"markdown": md, "json": js, "png": png}


# ---------------------------------------------------------------------------------------------
# the speed-vs-quality plot, drawn with PIL
# ---------------------------------------------------------------------------------------------

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
    """Speedup (x) against PSNR to the baseline (y), one labelled point per method. Points at
    the PSNR cap (identical to the baseline) sit on the top edge as squares. Without any quality
    numbers (speed mode) the y axis is the FLOPs ratio (%), else seconds per step. When the labels
    do not fit beside the points, the points are numbered and listed in a legend on the right."""
    from PIL import Image, ImageDraw

    path = Path(path)
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
    img.save(path, format="PNG")
    return path
