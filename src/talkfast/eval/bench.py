"""Benchmarks of the accelerators against the unaccelerated baseline.

Two modes:

- :func:`run_bench` (pipeline mode): whole generations with :meth:`TalkingHeadPipeline.generate`,
  the baseline first, then every method on the same inputs and seed. Per method: end-to-end
  seconds, seconds per denoising step, speedup, FLOPs, peak memory, PSNR/SSIM of the frames
  against the baseline's frames, and, when a case supplies them, PSNR/SSIM/L1 against ground
  truth and a lip-sync score. Every comparison also runs the controls (plain DDIM at fewer steps,
  spanning the accelerated rows' measured speedups), a longer reference (plain DDIM at 2x the
  steps; the "ref" quality columns) and marks the rows on the speed/quality frontier
  (:func:`~talkfast.eval.bench_results.mark_frontier`); per-stage seconds come from the
  pipeline's own timings.
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

The pieces live in their own modules (method sets :mod:`.bench_methods`, inputs
:mod:`.bench_cases`, results :mod:`.bench_results`, measuring :mod:`.bench_measure`, speed mode
:mod:`.speed`, markdown/JSON :mod:`.report`, plot :mod:`.plot`); their public names are
importable from here as before.
"""

from __future__ import annotations

import contextlib
import dataclasses
import statistics
import time
from typing import Sequence

import torch

from ..accelerators.base import Accelerator
from ..paths import display_source
from . import metrics
from .bench_cases import (
    EXAMPLE_PORTRAIT,
    EXAMPLE_SPEECH,
    BenchCase,
    _load_case,
    corpus_cases,
    example_case,
    one_clip,
    trim_audio,
)
from ..sampling.scheduler import family_samplers
from .bench_measure import FlopMemo, Log, _environment, _quiet, _sync, flushed_denormals
from .bench_methods import (
    DEFAULT_KEYS,
    DEFAULT_SWEEP,
    PLAIN,
    BenchMethod,
    _baseline_first,
    _lcp,
    ablation_methods,
    control_method,
    control_methods,
    control_steps,
    default_methods,
    method_set,
    on_samplers,
    reference_method,
    sweep_methods,
    tuned_methods,
)
from .bench_results import (
    BenchResult,
    CaseResult,
    MethodResult,
    _aggregate,
    _clean,
    _mean,
    _relate,
    realtime_factor,
    frontier_flags,
    frontier_sentence,
    mark_frontier,
    read_json,
    write_json,
)
from .metrics import PSNR_CAP, PeakMemory
from .plot import PALETTE, nice_ticks, plot_png
from .report import (
    COLUMNS,
    STAGES,
    human_flops,
    markdown_table,
    table_rows,
    to_markdown,
    write_outputs,
)
from .speed import (
    SpeedSetup,
    build_random_net,
    equivalence_check,
    resolve_dtype,
    run_denoise,
    run_speed_bench,
    speed_setup,
)

__all__ = [  # the public names, importable from here as before the split into modules
    "COLUMNS", "DEFAULT_KEYS", "DEFAULT_SWEEP", "EXAMPLE_PORTRAIT", "EXAMPLE_SPEECH", "PALETTE", "BenchCase",
    "BenchMethod", "BenchResult", "CaseResult", "FlopMemo", "MethodResult", "SpeedSetup", "ablation_methods",
    "build_random_net", "corpus_cases", "default_methods", "equivalence_check", "example_case", "flushed_denormals",
    "human_flops", "markdown_table", "method_set", "nice_ticks", "one_clip", "plot_png", "read_json",
    "resolve_dtype", "run_bench", "run_denoise", "run_speed_bench", "speed_setup", "sweep_methods", "table_rows",
    "to_markdown", "trim_audio", "write_json", "write_outputs", "PLAIN", "STAGES", "Runner", "control_method",
    "control_steps", "on_samplers", "reference_method", "tuned_methods", "frontier_flags", "frontier_sentence", "mark_frontier",
    "stage_seconds",
    "_lcp", "_clean", "_mean", "_sync",  # used by scripts and tests
]


def _compare(frames: torch.Tensor, case: BenchCase, base: torch.Tensor | None, cr: CaseResult,
             ref: torch.Tensor | None = None) -> None:
    if base is not None:
        a, b = metrics.align(frames, base)
        cr.psnr_base, cr.ssim_base = metrics.psnr(a, b), metrics.ssim(a, b)
    if ref is not None:
        a, b = metrics.align(frames, ref)
        cr.psnr_ref, cr.ssim_ref = metrics.psnr(a, b), metrics.ssim(a, b)
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


def stage_seconds(seconds: dict) -> dict[str, float]:
    """The per-stage seconds of a generation's ``seconds`` record (every number; "clips", a
    list, is left out), in :data:`STAGES` order, then any others."""
    vals = {k: float(v) for k, v in seconds.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    return {k: vals[k] for k in [*STAGES, *sorted(set(vals) - set(STAGES))] if k in vals}


class Runner:
    """Measures one method at a time on fixed cases with one pipeline: the machinery of
    :func:`run_bench`, also used by the tuner (:mod:`talkfast.eval.tune`). ``base_frames`` /
    ``ref_frames`` (per case name) are the baseline's and the reference's frames, filled by
    :meth:`measure` with ``keep="base"`` / ``"ref"``."""

    def __init__(self, pipe, cases: Sequence[BenchCase], options=None, *, size: int | None = None, log: Log | None = None):
        if not cases:
            raise ValueError("no benchmark cases")
        self.pipe, self.cases, self.size, self.log = pipe, list(cases), size, log or _quiet
        self.opts = pipe.resolve(options)
        self.device = pipe.device
        self.loaded = {c.name: _load_case(c) for c in cases}
        if len(self.loaded) != len(cases):
            raise ValueError("case names must be unique")
        self.base_frames: dict[str, torch.Tensor] = {}
        self.ref_frames: dict[str, torch.Tensor] = {}

    def options(self, method: BenchMethod):
        return dataclasses.replace(self.opts, steps=method.steps_for(self.opts.steps),
                                   sampler=method.sampler or self.opts.sampler)

    def generate(self, acc, case: BenchCase, opts, first_clip_only: bool = False, collect: list | None = None,
                 clip_times: list | None = None):
        """One generation of ``case``; ``collect`` gets every clip's frames (on the CPU, float32),
        ``clip_times`` the ``time.perf_counter()`` at which each clip reached the caller."""
        image, audio = self.loaded[case.name]
        if first_clip_only:
            audio = one_clip(audio, self.pipe.cfg.clip_frames, opts.fps)
        on_clip = None
        if collect is not None or clip_times is not None:
            def on_clip(fr: torch.Tensor) -> None:
                if clip_times is not None:
                    clip_times.append(time.perf_counter())  # before the copy: the clip as the pipeline handed it
                if collect is not None:
                    collect.append(fr.detach().to("cpu", torch.float32))
        return self.pipe.generate(image, audio, None, opts, size=self.size, accelerator=acc, on_clip=on_clip,
                                  regions=case.regions)

    def warm_up(self) -> None:
        """One untimed baseline clip (first-call costs: threads, allocator, kernels)."""
        self.log("warm-up: one baseline clip")
        acc = Accelerator()
        try:
            self.generate(acc, self.cases[0], self.opts, first_clip_only=True)
        finally:
            acc.detach()

    def measure(self, m: BenchMethod, *, count_flops: bool = True, warm: bool = True, repeats: int = 1,
                role: str = "method", keep: str | None = None) -> MethodResult:
        """Per case: an untimed one-clip pass (FLOPs counted when ``count_flops``; also the
        method's warm-up, skipped when neither), then ``repeats`` timed generations (median
        reported; frames and memory from the first). ``keep``: "base" / "ref" stores the frames
        as the baseline's / the reference's."""
        if repeats < 1:
            raise ValueError("repeats must be >= 1")
        opts, device = self.options(m), self.device
        mr = MethodResult(m.name, None if m.accel is None else m.accel.describe(), m.key_steps(opts.steps), opts.steps,
                          family=m.family_on(opts.sampler), sampler=opts.sampler, role=role)
        acc = m.build()
        acc.sync_timing = device.type == "cuda"
        try:
            for case in self.cases:
                per_clip_flops = None
                if count_flops:
                    with FlopMemo(acc):
                        self.generate(acc, case, opts, first_clip_only=True)
                    per_clip_flops = acc.summary().get("flops")
                elif warm:
                    self.generate(acc, case, opts, first_clip_only=True)
                secs, model_secs, stages, frames, mem, summary, res = [], [], [], None, None, None, None
                firsts: list[float] = []
                for r in range(repeats):
                    collect: list[torch.Tensor] = []
                    times: list[float] = []
                    meter = PeakMemory(device) if r == 0 else contextlib.nullcontext()
                    _sync(device)
                    with meter:
                        t0 = time.perf_counter()
                        res = self.generate(acc, case, opts, collect=collect, clip_times=times)
                        _sync(device)
                        secs.append(time.perf_counter() - t0)
                    firsts.append(times[0] - t0)
                    model_secs.append(acc.summary()["model_seconds"])
                    stages.append(stage_seconds(res.seconds))
                    if r == 0:
                        frames, mem, summary = torch.cat(collect), meter.reading, acc.summary()
                cr = CaseResult(case.name, statistics.median(secs), secs, statistics.median(model_secs), summary["steps"],
                                summary["full_steps"], clips=res.clips, frames=int(frames.shape[0]),
                                flops=None if per_clip_flops is None else per_clip_flops * res.clips,
                                peak_memory_mb=mem.peak_mb, memory_growth_mb=mem.growth_mb,
                                stages={k: _mean(s.get(k) for s in stages) for k in stages[0]},
                                extra={"memory_kind": mem.kind}, first_frame_seconds=statistics.median(firsts),
                                video_seconds=int(frames.shape[0]) / opts.fps)
                cr.realtime_factor = realtime_factor(cr.video_seconds, cr.seconds)
                if keep == "base":
                    self.base_frames[case.name] = frames
                elif keep == "ref":
                    self.ref_frames[case.name] = frames
                _compare(frames, case, self.base_frames.get(case.name), cr, self.ref_frames.get(case.name))
                mr.cases.append(cr)
                mr.summary = summary
                self.log(f"{m.name} / {case.name}: {cr.seconds:.2f} s, {cr.model_seconds / max(1, cr.steps):.4f} s/step"
                         + (f", PSNR to baseline {cr.psnr_base:.2f} dB" if cr.psnr_base is not None else ""))
        finally:
            acc.detach()
        _aggregate(mr)
        return mr

    def compare_to_reference(self, mr: MethodResult, frames: dict[str, torch.Tensor]) -> None:
        """Fill the reference columns of a row measured before the reference (the baseline)."""
        for cr in mr.cases:
            if cr.case in frames and cr.case in self.ref_frames:
                a, b = metrics.align(frames[cr.case], self.ref_frames[cr.case])
                cr.psnr_ref, cr.ssim_ref = metrics.psnr(a, b), metrics.ssim(a, b)
        _aggregate(mr)


def run_bench(pipe, cases: Sequence[BenchCase], methods: Sequence[BenchMethod], options=None,
              warmup: bool = True, count_flops: bool = True, *, repeats: int = 1, size: int | None = None,
              target: str = "pipeline", flush_denormal: bool | None = None, log: Log | None = None,
              controls: str | Sequence[int] | None = "auto", reference: int = 2, max_controls: int = 6) -> BenchResult:
    """Benchmark ``methods`` on ``cases`` with the pipeline ``pipe`` (see the module docstring).

    The baseline (added if ``methods`` has none) runs first; its frames are the reference of the
    PSNR/SSIM columns. Then the longer reference (plain DDIM at ``reference`` x the baseline's
    steps; 0: none), whose frames are the reference of the "ref" columns, then ``methods``, then
    the fewer-step controls: plain DDIM at the step counts ``controls`` ("auto": chosen by
    :func:`control_steps` so that their cost ratios span the accelerated rows' measured speedups
    and FLOP ratios, at most ``max_controls``; a list: those step counts; None: none). Rows
    come back as baseline, methods, controls (most steps first), reference; each marked on the
    speed/quality frontier or not.

    Per method and case: an untimed pass over the first clip (FLOPs counted when
    ``count_flops``; it is also the method's warm-up), then ``repeats`` timed generations
    (median reported; frames and memory from the first). ``warmup`` adds one untimed baseline
    clip before everything (first-call costs: threads, allocator, kernels). ``flush_denormal``
    (default: on for CPU pipelines) runs everything under :func:`flushed_denormals`."""
    if flush_denormal is None:
        flush_denormal = pipe.device.type == "cpu"
    with flushed_denormals(flush_denormal) as flushed:
        result = _run_bench(pipe, cases, methods, options, warmup, count_flops, repeats, size, target, log,
                            controls, reference, max_controls)
    result.meta["flush_denormal"] = flushed
    if flushed:
        result.notes.append("CPU denormals flushed to zero (torch.set_flush_denormal) for every method: "
                            "denormal arithmetic can slow a CPU model call 100x.")
    return result


def _speedups(base: MethodResult, m: MethodResult) -> list[float]:
    out = []
    if m.seconds > 0:
        out.append(base.seconds / m.seconds)
    if m.model_seconds > 0:
        out.append(base.model_seconds / m.model_seconds)
    if m.flops and base.flops:
        out.append(base.flops / m.flops)
    return out


def _role(m: BenchMethod, base_steps: int) -> str:
    if m.name.startswith("tuned:"):
        return "tuned"  # a setting talkfast tune chose for a budget
    return "control" if m.is_plain and m.steps is not None and m.steps < base_steps else "method"


def _run_bench(pipe, cases, methods, options, warmup, count_flops, repeats, size, target, log,
               controls, reference, max_controls) -> BenchResult:
    if repeats < 1:
        raise ValueError("repeats must be >= 1")
    if reference < 0:
        raise ValueError("reference must be >= 0 (0: no longer reference)")
    run = Runner(pipe, cases, options, size=size, log=log)
    opts, device = run.opts, run.device
    methods = _baseline_first(methods)
    S = opts.steps
    if warmup:
        run.warm_up()
    kw = dict(count_flops=count_flops, warm=warmup, repeats=repeats)
    base = run.measure(methods[0], role="baseline", keep="base", **kw)
    ref = None
    if reference:
        ref_method = reference_method(S, reference)
        if ref_method.name in {m.name for m in methods}:
            raise ValueError(f"method name {ref_method.name!r} is reserved for the longer reference")
        ref = run.measure(ref_method, role="reference", keep="ref", **kw)
        run.compare_to_reference(base, run.base_frames)
    rows = [run.measure(m, role=_role(m, S), **kw) for m in methods[1:]]
    if controls == "auto":
        spans = [v for mr, m in zip(rows, methods[1:]) if not m.is_plain for v in _speedups(base, mr)]
        ks = control_steps(S, spans, max_controls)
    elif controls is None:
        ks = []
    else:
        ks = sorted({int(k) for k in controls}, reverse=True)
        if any(k < 1 for k in ks):
            raise ValueError(f"control step counts must be >= 1, got {list(controls)}")
    samplers = family_samplers(getattr(pipe, "sampler", "ddim"))
    todo = control_methods(ks, samplers, methods, S, opts.sampler)
    clash = {c.name for c in todo} & {m.name for m in methods}
    if clash:
        raise ValueError(f"method names {sorted(clash)} are reserved for the fewer-step controls")
    rows += [run.measure(c, role="control", **kw) for c in todo]
    results = [base] + rows + ([ref] if ref is not None else [])
    _relate(results)
    mem_kind = base.cases[0].extra.get("memory_kind", "")
    meta = {
        "model": pipe.cfg.name, "weights": display_source(getattr(pipe, "source", "")), "device": str(device),
        "dtype": str(pipe.dtype).replace("torch.", ""), "steps": S, "guidance": opts.guidance,
        "seed": opts.seed, "fps": opts.fps, "size": size or pipe.cfg.image_size, "clip_frames": pipe.cfg.clip_frames,
        "cases": [c.name for c in cases], "frames": sum(c.frames for c in base.cases),
        "repeats": repeats, "count_flops": count_flops, "warmup": warmup, "memory": mem_kind,
        "controls": sorted({c.steps for c in todo}, reverse=True) if controls == "auto" else controls,
        "samplers": list(samplers), "sampler": opts.sampler,
        "reference_steps": None if ref is None else ref.steps, **_environment(device),
    }
    notes = _pipeline_notes(mem_kind, count_flops, repeats, pipe, cases, S, ref is not None and ref.steps,
                            controls_auto=controls == "auto")
    return BenchResult(target, "pipeline", meta, results, notes)


def _pipeline_notes(mem_kind: str, count_flops: bool, repeats: int, pipe, cases, steps: int = 0,
                    ref_steps: int | None = None, controls_auto: bool = True) -> list[str]:
    notes = [
        "total s: wall-clock of a whole generate() (portrait, VAE, ReferenceNet, audio features, denoising)"
        + (f", median of {repeats} runs" if repeats > 1 else "") + "; speedup = baseline total / method total.",
        "s/step: time inside denoising-model calls / denoising steps" + (" (median run)" if repeats > 1 else "")
        + "; model speedup = baseline model time / method model time.",
        (("FLOPs: torch.utils.flop_counter over the denoising UNet calls (both CFG halves) of a separate untimed "
          "one-clip pass (first call of each call signature counted, reused for the rest), x clips; "
          "ratio vs the baseline's FLOPs.") if count_flops else "FLOPs: not counted (n/a)."),
        f"memory: {metrics.describe_memory(mem_kind)}.",
        f"PSNR/SSIM: per frame, averaged; PSNR capped at {PSNR_CAP:g} dB (identical frames read {PSNR_CAP:g}); "
        f"'base' against the baseline ({steps} steps, the model's default unless --steps)"
        + (f", 'ref' against the longer reference ({ref_steps} steps)." if ref_steps else "."),
        "controls: <sampler>@k rows (ddim@k, flow@k for MEMO, dpmpp2m@k, unipc@k) are that sampler alone at k steps, "
        "no acceleration, one row per sampler of the model family and k, "
        + ("with k chosen so that the baseline's steps / k spans the accelerated rows' measured speedups (time and "
           "FLOPs), each row's neighbours included." if controls_auto else "with the k given by --controls."),
        "frontier: a row is on it when no other row is both at least as fast (end-to-end) and at least as close "
        "to the baseline (PSNR), and better in one.",
        "first frame s: wall seconds from the call to generate() (so with the portrait and audio preparation) until "
        "the first clip's frames reached the caller (a growing --stream file is written each clip before the caller "
        "gets it)"
        + (", median of the runs" if repeats > 1 else "") + "; the mean over the cases. RTF (real-time factor): "
        "seconds of video made / total s (above 1: faster than real time), over all cases.",
        "stage seconds: the pipeline's own per-stage timings (GenerationResult.seconds), mean per generation; "
        "where a clip is decoded while the next one samples (a core left free by --threads), decode and write "
        "overlap the denoising and 'wait' is the time the sampler waited for them.",
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
