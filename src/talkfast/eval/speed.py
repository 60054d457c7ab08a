"""Speed mode of ``talkfast bench``: the bare denoising loop of a preset with random weights and
synthetic conditioning (no VAE, no audio extractor); speed, FLOPs and memory only (see
:mod:`talkfast.eval.bench` for how things are measured)."""

from __future__ import annotations

import contextlib
import statistics
import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch

from ..accelerators import KeySchedule
from ..accelerators.base import Accelerator
from . import metrics
from .bench_cases import EXAMPLE_PORTRAIT
from .bench_measure import FlopMemo, Log, _environment, _quiet, _sync, flushed_denormals
from ..sampling.scheduler import family_samplers
from .bench_methods import (BenchMethod, _baseline_first, _lcp, control_methods, control_steps, default_methods,
                            is_plain_family)
from .bench_results import BenchResult, CaseResult, MethodResult, _aggregate, _relate, realtime_factor
from .metrics import PeakMemory
from .report import human_flops


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
    # a windowed model (EchoMimic): the predictor depends on the scheduler's timesteps (the
    # windows shift per step), so it is made per run from them; ``predict`` is then None
    make_predict: Callable[[torch.Tensor], Callable] | None = None
    sampler: str = "ddim"  # the scheduler kind (MEMO: "flow")
    fps: int = 25  # the family's video frame rate (the real-time factor's seconds of video)

    def predictor(self, timesteps: torch.Tensor) -> Callable:
        return self.make_predict(timesteps) if self.make_predict is not None else self.predict


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
    if cfg.audio_features == "whisper":
        return echomimic_speed_setup(net, frames=frames, size=size, guidance=guidance, seed=seed, device=device,
                                     dtype=dtype)
    if cfg.unet.audio_module == "joint":
        return memo_speed_setup(net, frames=frames, size=size, guidance=guidance, seed=seed, device=device,
                                dtype=dtype)
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


@torch.no_grad()
def echomimic_speed_setup(net, *, frames: int | None = None, size: int | None = None, guidance: float = 2.5,
                          seed: int = 0, device=None, dtype=None) -> SpeedSetup:
    """The EchoMimic form of :func:`speed_setup`, shaped like
    :class:`~talkfast.pipeline.echomimic.EchoMimicPipeline`'s: the reference UNet run once on a
    random portrait latent (no context), the FaceLocator on the bundled portrait's EchoMimic face
    mask (whose pooled token grids are DFA's foreground), random whisper tokens per frame, and the pipeline's
    :class:`~talkfast.sampling.windows.WindowedPredictor` (windows of 12, overlap 3, shift 2) over
    ``frames`` frames (default 24: three windows)."""
    from ..io.image import load_image
    from ..pipeline.echomimic import ECHOMIMIC_FPS, WINDOW_FRAMES, WINDOW_OVERLAP, echomimic_portrait, window_model
    from ..sampling.windows import WindowedPredictor

    cfg = net.cfg
    device = torch.device(device) if device is not None else net.device
    dtype = dtype or net.dtype
    frames = frames or 2 * WINDOW_FRAMES
    size = size or cfg.image_size
    f = cfg.vae_scale_factor * 2 ** (cfg.unet.num_levels - 1)
    if size % f:
        raise ValueError(f"size must be a multiple of {f} for the {cfg.name} model, got {size}")
    por = echomimic_portrait(load_image(EXAMPLE_PORTRAIT), size)  # the crop, its face mask and regions
    lat = size // cfg.vae_scale_factor
    g = torch.Generator("cpu").manual_seed(seed)

    def rnd(*shape):
        return torch.randn(*shape, generator=g).to(device, dtype)

    net.write_reference(rnd(1, cfg.latent_channels, lat, lat), None)
    face = net.face_locator(por.mask.to(device, dtype)[None]).unsqueeze(2)
    tokens = rnd(frames, cfg.audio_tokens, cfg.audio_feature_dim)
    run = window_model(net, tokens, face, guidance > 1.0, dtype)

    def make_predict(timesteps: torch.Tensor) -> Callable:
        return WindowedPredictor(run, timesteps, frames, guidance, size=WINDOW_FRAMES, overlap=WINDOW_OVERLAP, shift=2)

    noise = rnd(1, cfg.latent_channels, frames, lat, lat)
    return SpeedSetup(net, None, noise, por, frames, size, make_predict, fps=ECHOMIMIC_FPS)


@torch.no_grad()
def memo_speed_setup(net, *, frames: int | None = None, size: int | None = None, guidance: float = 3.5,
                     seed: int = 0, device=None, dtype=None) -> SpeedSetup:
    """The MEMO form of :func:`speed_setup`, shaped like
    :class:`~talkfast.pipeline.memo.MemoPipeline`'s: the reference net on a random reference latent
    and 16 past frames with the [uncond, cond] image contexts (a zero identity, as the pipeline
    without insightface), the memory modules' first-clip memory, random audio tokens per frame,
    emotion 4 (neutral) and the pipeline's CFG predictor; flow-matching Euler steps."""
    from ..io.image import load_image
    from ..sampling.loop import guided
    from ..pipeline.memo import MEMO_FPS, memo_model, memo_portrait

    cfg = net.cfg
    device = torch.device(device) if device is not None else net.device
    dtype = dtype or net.dtype
    frames = frames or cfg.clip_frames
    size = size or cfg.image_size
    f = cfg.vae_scale_factor * 2 ** (cfg.unet.num_levels - 1)
    if size % f:
        raise ValueError(f"size must be a multiple of {f} for the {cfg.name} model, got {size}")
    por = memo_portrait(load_image(EXAMPLE_PORTRAIT), size, cfg)  # the whole image resized, its face regions
    lat = size // cfg.vae_scale_factor
    g = torch.Generator("cpu").manual_seed(seed)

    def rnd(*shape):
        return torch.randn(*shape, generator=g).to(device, dtype)

    ctx = net.imageproj(torch.zeros(2, cfg.image_embed_dim, device=device, dtype=dtype))
    net.write_reference(rnd(1 + cfg.motion_frames, cfg.latent_channels, lat, lat), ctx)
    net.update_motion_memory(reset=True)
    audio = rnd(1, frames, cfg.audio_tokens, cfg.unet.audio_attention_dim)
    predict = guided(memo_model(net, ctx, audio, 4, guidance > 1.0, dtype), guidance)
    noise = rnd(1, cfg.latent_channels, frames, lat, lat)
    return SpeedSetup(net, predict, noise, por, frames, size, sampler="flow", fps=MEMO_FPS)


def run_denoise(setup: SpeedSetup, acc: Accelerator, steps: int, sampler: str | None = None) -> torch.Tensor:
    """One whole schedule of ``steps`` steps of ``sampler`` (None: the setup's family's own) with
    the attached accelerator ``acc``; its statistics are reset first (``begin``, as the pipeline
    does per generation)."""
    from ..sampling.loop import denoise
    from ..sampling.scheduler import make_scheduler, sampler_kind

    acc.begin(None, setup.portrait)  # drops the records; plug-ins (DFA) take the face regions
    sched = make_scheduler(steps, kind=sampler_kind(setup.sampler, sampler))
    with torch.no_grad():
        return denoise(setup.predictor(sched.timesteps), sched, setup.noise, acc)


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
                    controls: str | Sequence[int] | None = None, max_controls: int = 6,
                    log: Log | None = None) -> BenchResult:
    """Speed-only benchmark of the bare denoising loop (see the module docstring).

    ``setup``: a prepared :class:`SpeedSetup` (else the preset is built with random weights on
    ``device``). ``flops_on``: "device" (counted in each method's untimed warm-up pass),
    "meta" (a shapes-only copy of the network on the meta device; no device time, costs host
    time) or "none". ``budget_s``: methods that would start after this many seconds (counted from
    the call, estimated from the baseline's time) are skipped and listed in the notes.
    ``controls``: plain-DDIM fewer-step rows after the methods ("auto": step counts whose cost
    ratio spans the accelerated rows' measured speedups, at most ``max_controls``; or a list of
    step counts; None: none). ``flush_denormal`` (default: on for CPU) runs everything under
    :func:`flushed_denormals`."""
    if flush_denormal is None:
        dev = setup.net.device if setup is not None else torch.device(device)
        flush_denormal = dev.type == "cpu"
    with flushed_denormals(flush_denormal) as flushed:
        result = _run_speed_bench(preset, device, dtype, frames, steps, methods, size, guidance, seed, repeats,
                                  warmup, count_flops, flops_on, setup, budget_s, target, log, controls, max_controls)
    result.meta["flush_denormal"] = flushed
    if flushed:
        result.notes.append("CPU denormals flushed to zero (torch.set_flush_denormal) for every method.")
    return result


def _run_speed_bench(preset, device, dtype, frames, steps, methods, size, guidance, seed, repeats, warmup,
                     count_flops, flops_on, setup, budget_s, target, log, controls=None,
                     max_controls: int = 6) -> BenchResult:
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
    queue, i, added = list(methods), 0, controls is None
    while True:
        if i == len(queue):  # after the methods: the fewer-step controls (chosen from their measured speedups)
            if added:
                break
            added = True
            queue += _controls(controls, results, queue, steps, max_controls, setup.sampler)
            if i == len(queue):
                break
        m = queue[i]
        i += 1
        passes = repeats + (1 if (warmup or flops_on == "device") else 0)
        if budget_s is not None and per_run is not None and m is not methods[0]:
            if time.perf_counter() - t_start + passes * per_run > budget_s:
                skipped.append(m.name)
                log(f"{m.name}: skipped (time budget of {budget_s:.0f} s)")
                continue
        m_steps = m.steps_for(steps)  # a method may run its own number of steps (a fewer-step control)
        mr = MethodResult(m.name, None if m.accel is None else m.accel.describe(), m.key_steps(m_steps), m_steps,
                          family=m.family_on(setup.sampler), sampler=m.sampler or setup.sampler,
                          role="baseline" if m is methods[0] else
                          "control" if m.is_plain and m.steps_for(steps) < steps else "method")
        acc = _attached(m, setup)
        acc.sync_timing = dev.type == "cuda"
        if dev.type == "meta":  # shapes only: the FLOPs of one counted pass, no timing
            try:
                with FlopMemo(acc):
                    run_denoise(setup, acc, m_steps, m.sampler)
                summary = acc.summary()
            finally:
                acc.detach()
            mr.cases.append(CaseResult("synthetic", 0.0, [], 0.0, summary["steps"], summary["full_steps"],
                                       frames=setup.frames, flops=summary.get("flops"), extra={"device": "meta"}))
            mr.summary = summary
            _aggregate(mr)
            mr.seconds = mr.model_seconds = mr.seconds_per_step = float("nan")  # not measured: n/a
            results.append(mr)
            log(f"{m.name}: {human_flops(mr.flops)}FLOPs (meta device)" if mr.flops is not None else f"{m.name}: counted")
            continue
        try:
            flops = None
            if flops_on == "device":
                with FlopMemo(acc):
                    run_denoise(setup, acc, m_steps, m.sampler)
                flops = acc.summary().get("flops")
            elif warmup:
                run_denoise(setup, acc, m_steps, m.sampler)
            if flops_on == "meta":
                macc = _attached(m, meta_setup)
                try:
                    with FlopMemo(macc):
                        run_denoise(meta_setup, macc, m_steps, m.sampler)
                    flops = macc.summary().get("flops")
                finally:
                    macc.detach()
            secs, model_secs, out, mem, summary = [], [], None, None, None
            for r in range(repeats):
                meter = PeakMemory(dev) if r == 0 else contextlib.nullcontext()
                _sync(dev)
                with meter:
                    t0 = time.perf_counter()
                    latents = run_denoise(setup, acc, m_steps, m.sampler)
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
                                                               "finite": bool(torch.isfinite(out).all())},
                        video_seconds=setup.frames / setup.fps)
        # one clip, no VAE: its frames exist when the loop ends, so the first frame comes at the total
        cr.first_frame_seconds = cr.seconds
        cr.realtime_factor = realtime_factor(cr.video_seconds, cr.seconds)
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
    mem_kind = results[0].cases[0].extra.get("memory_kind", "none (meta device)")
    meta = {
        "model": net.cfg.name, "weights": "random", "device": str(dev), "dtype": str(net.dtype).replace("torch.", ""),
        "steps": steps, "guidance": guidance, "seed": seed, "size": setup.size, "frames": setup.frames,
        "repeats": repeats, "flops_on": flops_on, "build_seconds": build_s, "memory": mem_kind,
        "skipped": skipped, "wall_seconds": time.perf_counter() - t_start,
        "controls": sorted({r.steps for r in results if r.role == "control"}, reverse=True),
        "samplers": list(family_samplers(setup.sampler)), **_environment(dev),
    }
    sampler = {"flow": "rectified-flow Euler"}.get(setup.sampler, "DDIM")
    if dev.type == "meta":
        meta["flops_on"] = "meta"
        return BenchResult(target or net.cfg.name, "speed", meta, results, [
            f"FLOPs only: the bare denoising loop (CFG x2 where guided, {setup.frames} frames, {setup.size}x{setup.size}, "
            f"{steps} {sampler} steps) on a shapes-only copy of the network on the meta device (torch.utils.flop_counter, "
            "first call of each signature counted, reused for the rest); no timing, no memory, quality n/a; "
            "ratio vs the baseline's FLOPs."])
    notes = [
        f"speed only: the bare denoising loop (CFG x2, {setup.frames} frames, {setup.size}x{setup.size}, {steps} {sampler} steps) "
        "with random weights and synthetic conditioning; no VAE, no audio extractor; quality n/a.",
        "total s: wall-clock of the whole denoising loop" + (f", median of {repeats} runs" if repeats > 1 else "")
        + "; s/step: time inside model calls / steps" + (" (CUDA-synchronised per call)" if dev.type == "cuda" else "") + ".",
        f"first frame s: the loop is one clip and nothing decodes it, so its frames exist when the loop ends: the "
        f"total s. RTF (real-time factor): {setup.frames} frames at {setup.fps} fps (the family's frame rate) / total s "
        "(above 1: faster than real time); denoising only, the whole pipeline's is lower.",
        {"device": "FLOPs: torch.utils.flop_counter in each method's untimed warm-up pass on the device (first call of each "
                   "signature counted, reused for the rest); ratio vs the baseline's FLOPs.",
         "meta": "FLOPs: torch.utils.flop_counter on a shapes-only copy of the network on the meta device "
                 "(first call of each signature counted, reused for the rest); ratio vs the baseline's FLOPs.",
         "none": "FLOPs: not counted (n/a)."}[flops_on],
        f"memory: {metrics.describe_memory(mem_kind)}.",
    ]
    if meta["controls"]:
        notes.append("controls: <sampler>@k rows (ddim@k or MEMO's flow@k, dpmpp2m@k, unipc@k) are that sampler alone at "
                     "k steps (no acceleration), k chosen so that the "
                     "baseline's steps / k spans the accelerated rows' measured speedups.")
    if skipped:
        notes.append(f"skipped to stay within the time budget: {', '.join(skipped)}.")
    return BenchResult(target or net.cfg.name, "speed", meta, results, notes)


def _controls(controls, results: list[MethodResult], queue: list[BenchMethod], steps: int, most: int,
              sampler: str = "ddim") -> list[BenchMethod]:
    """The control methods to add: "auto" (from the measured accelerated rows) or step counts, each
    for every sampler of the family whose own sampler is ``sampler``."""
    if controls == "auto":
        base, spans = results[0], []
        for r in results[1:]:
            if not is_plain_family(r.family):
                spans += [v for v in (base.seconds / r.seconds if r.seconds else None,
                                      base.model_seconds / r.model_seconds if r.model_seconds else None,
                                      base.flops / r.flops if r.flops and base.flops else None) if v]
        ks = control_steps(steps, spans, most)
    else:
        ks = [int(k) for k in controls]
        if any(k < 1 for k in ks):
            raise ValueError(f"control step counts must be >= 1, got {list(controls)}")
    return control_methods(ks, family_samplers(sampler), queue, steps, sampler)

