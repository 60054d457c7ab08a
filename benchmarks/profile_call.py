"""Where the time of one denoising-UNet call goes on the CPU: time and FLOPs by stage, by model
component and by aten op kind, against a GEMM peak measured in the same run.

    PYTHONPATH=src .venv/bin/python benchmarks/profile_call.py [--threads 1] [--repeat 3]
        [--checkpoint DIR | --preset small] [--shallow-steps 2] [--variants channels_last,bf16,autocast,fp32_2t] [--precision]
        [--json out.json] [--md out.md]

It profiles, on the embedded model by default (``--preset`` builds random weights instead):

- a **full** call: one step, CFG 2 (2 items x ``clip_frames`` frames), as the baseline runs it;
- a **shallow** call: LightningCP's batched reduced pass over ``--shallow-steps`` steps (CFG 2, so
  2 x n items), run as the accelerators run it: a key call with a
  :class:`~talkfast.accelerators.base.CapturePlan` at the default cache point (branch 0), then the
  same :class:`~talkfast.accelerators.base.ShallowPlan` (DeepCache's shallow path is the same plan
  with one step per call: ``--shallow-steps 1``);
- the **reference** pass (``write_reference``: once per clip, not per step).

FLOPs: ``torch.utils.flop_counter`` (talkfast's :func:`~talkfast.sampling.loop.flop_counter`,
which also counts CPU SDPA), attributed to the stage and component running when each op ran (the
counter's total is read at every stage and module boundary, so the rows add up to the total
exactly). Time: the clock at the same boundaries in separate, uncounted passes (the median of
``--repeat`` passes per row; the plain call's time is reported beside the hooked one). The clock
(``--clock``) is the thread's CPU time by default at 1 thread (robust on a shared machine: it leaves
out the time spent waiting for a core), else wall time. Op kinds:
``torch.profiler`` self time per aten op, grouped (conv / gemm / sdpa / norm / elementwise /
copy+layout / other). Peak: ``torch.mm`` of two ``--gemm-size`` square matrices at the same
thread count (fp32, and bf16).

``--variants`` times whole calls of other settings interleaved with fp32 in the same run
(round-robin, median): ``channels_last`` (the 4-D weights in channels_last), ``bf16`` (weights and
inputs bf16), ``autocast`` (fp32 weights under CPU bf16 autocast), ``fp32_2t`` (2 threads), with
the PSNR of each output against fp32 (``fp32_2t`` gives the fp32 noise floor). ``--precision``
runs only the bf16 check: one call each of fp32, fp32 on 2 threads, bf16 and autocast, with PSNR
and the top ops of the bf16 calls. Results: docs/PROFILE.md.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import re
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from diffusers.models.attention import BasicTransformerBlock  # noqa: E402
from diffusers.models.resnet import Downsample2D, ResnetBlock2D, Upsample2D  # noqa: E402

from talkfast.accelerators.base import CapturePlan, ShallowPlan, cut_points  # noqa: E402
from talkfast.models.attention import ItemLayout  # noqa: E402
from talkfast.models.layers import AudioBlock, AudioModule, MotionModule, SpatialTransformer, TemporalAttention  # noqa: E402
from talkfast.models.memo_layers import JointAudioModule  # noqa: E402
from talkfast.models.unet import StagePlan, UNetCond  # noqa: E402
from talkfast.sampling.loop import flop_counter  # noqa: E402


CLOCKS = {"wall": time.perf_counter, "cpu": time.thread_time}
_clock = [time.perf_counter]


def clock() -> float:
    """The timing clock: wall time, or (``set_clock("cpu")``, 1 thread) this thread's CPU time, which
    leaves out the time the process waits for a core on a shared machine."""
    return _clock[0]()


def median_seconds(fn, repeat: int) -> float:
    """The median :func:`clock` time of ``repeat`` calls of ``fn``."""
    times = []
    for _ in range(repeat):
        t0 = clock()
        fn()
        times.append(clock() - t0)
    return statistics.median(times)


def set_clock(name: str) -> None:
    _clock[0] = CLOCKS[name]


# ------------------------------------------------------------------------------------- inputs
def make_inputs(net, steps: int = 1, dtype: torch.dtype = torch.float32, seed: int = 0, reference: bool = True):
    """(x, t, cond) of one CFG-2 call over ``steps`` batched steps (``2 * steps`` items, the
    layout :func:`ItemLayout.cfg` the batched reduced pass uses) for ``net``'s preset, random values
    (benchmarks/unet_call.py's recipe); also writes the reference (1 + motion_frames images)."""
    cfg = net.cfg
    u, lat, f = cfg.unet, cfg.latent_size, cfg.clip_frames
    g = torch.Generator().manual_seed(seed)
    kw = dict(dtype=dtype)

    def r(*shape, rand=False):
        return (torch.rand if rand else torch.randn)(*shape, generator=g).to(**kw)

    b = 2 * steps
    ref = r(1 + cfg.motion_frames, cfg.latent_channels, lat, lat), r(2, cfg.image_tokens, u.cross_attention_dim)
    if reference:
        net.write_reference(ref[0], ref[1] if net.reference_unet.has_cross_attention else None)
    cond = UNetCond(
        context=r(b, cfg.image_tokens, u.cross_attention_dim),
        audio=r(b, f, cfg.audio_tokens, u.audio_attention_dim),
        masks=tuple([r(b, (lat // 2**i) ** 2, rand=True) for i in range(u.num_levels)] for _ in range(3)),
        face_feature=r(b, u.block_out_channels[0], 1, lat, lat),
        layout=ItemLayout.cfg(steps, True))
    x = r(b, cfg.latent_channels, f, lat, lat)
    t = torch.full((b,), 500, dtype=torch.long)
    return x, t, cond


def shallow_plan(net, key_x, key_t, key_cond):
    """Run a key call (CapturePlan at branch 0's cut) and return the ShallowPlan of the reduced
    calls that follow it, as :class:`~talkfast.accelerators.caching.LightningCP` builds them."""
    unet = net.denoising_unet
    d, u = cut_points(unet, 0)
    cap = CapturePlan(u, keep_skips=False, keep_audio=net.cfg.unet.audio_module == "joint")
    with torch.no_grad():
        net.denoise(key_x, key_t, key_cond, cap)
    cap.layout = key_cond.layout
    rs = net.ref_state
    return ShallowPlan(d, u, cap, key_cond.layout, lambda: rs.layout)


# -------------------------------------------------------------------------------- attribution
def component_modules(unet) -> dict[int, str]:
    """id(module) -> component name for the modules whose inner time/FLOPs are attributed to them
    (the innermost one wins)."""
    out: dict[int, str] = {}
    for name, mod in unet.named_modules():
        if isinstance(mod, BasicTransformerBlock):
            out[id(mod.attn1)] = "spatial.self_ref_attn"
            if mod.attn2 is not None:
                out[id(mod.attn2)] = "spatial.cross_attn"
            out[id(mod.ff)] = "spatial.ff"
        elif isinstance(mod, SpatialTransformer):
            out[id(mod)] = "spatial.norm_proj"
        elif isinstance(mod, AudioBlock):  # Hallo's audio module: split like the spatial one
            out[id(mod.attn1)] = "audio.self_attn"
            for a in (mod.attn2_0, mod.attn2_1, mod.attn2_2):
                out[id(a)] = "audio.cross_attn"
            out[id(mod.ff)] = "audio.ff"
        elif isinstance(mod, (AudioModule, JointAudioModule)):
            out[id(mod)] = "audio.other"
        elif isinstance(mod, TemporalAttention):
            out[id(mod)] = "motion.attn"
        elif isinstance(mod, MotionModule):
            out[id(mod)] = "motion.other"
        elif isinstance(mod, ResnetBlock2D):
            out[id(mod)] = "resnet"
        elif isinstance(mod, (Downsample2D, Upsample2D)):
            out[id(mod)] = "sampler"
        elif name in ("conv_in", "conv_out", "conv_norm_out", "time_embedding"):
            out[id(mod)] = "io"
    return out


class _Recorder(StagePlan):
    """Wraps the call's plan: notes each stage start; module hooks note component entry/exit. At
    every boundary the time (and the FLOP counter's total) since the previous boundary goes to the
    (stage, component) that was running."""

    def __init__(self, inner: StagePlan | None, counter=None):
        self.inner, self.counter = inner, counter
        self.stage, self.stack = "prepare", []
        self.time: dict[tuple[str, str], float] = defaultdict(float)
        self.flops: dict[tuple[str, str], int] = defaultdict(int)
        self._t = clock()
        self._f = 0

    def mark(self) -> None:
        now = clock()
        key = (self.stage, self.stack[-1] if self.stack else "other")
        self.time[key] += now - self._t
        if self.counter is not None:
            total = self.counter.get_total_flops()
            self.flops[key] += total - self._f
            self._f = total
        self._t = clock()

    def active(self, index, stage) -> bool:
        return True if self.inner is None else self.inner.active(index, stage)

    def before(self, index, stage, state) -> None:
        self.mark()
        self.stage = stage.name
        if self.inner is not None:
            self.inner.before(index, stage, state)

    def enter(self, comp: str) -> None:
        self.mark()
        self.stack.append(comp)

    def leave(self) -> None:
        self.mark()
        self.stack.pop()


@contextlib.contextmanager
def _hooks(unet, rec_box: list):
    handles = []
    comps = component_modules(unet)
    for mod in unet.modules():
        comp = comps.get(id(mod))
        if comp is None:
            continue
        handles.append(mod.register_forward_pre_hook(lambda m, a, c=comp: rec_box[0] and rec_box[0].enter(c)))
        handles.append(mod.register_forward_hook(lambda m, a, o: rec_box[0] and rec_box[0].leave()))
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def _one(net, x, t, cond, plan, counter=None) -> _Recorder:
    rec = _Recorder(plan, counter)
    box = [rec]
    with _hooks(net.denoising_unet, box), torch.no_grad():
        rec._t = clock()
        net.denoise(x, t, cond, rec)
        rec.stage = "finish"
        rec.mark()
    return rec


def profile_call(net, x, t, cond, plan: StagePlan | None = None, repeat: int = 3,
                 autocast: bool = False) -> dict:
    """Profile one ``net.denoise(x, t, cond, plan)`` call.

    Returns ``{"rows": [{"stage", "component", "time_s", "flops"}], "flops": total FLOPs (the
    counter's), "time_s": median plain call time (no hooks), "time_hooked_s": median sum of rows}``.
    The rows' FLOPs add up to ``flops``; their times are medians over ``repeat`` hooked calls.
    """
    ctx = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if autocast else contextlib.nullcontext
    with ctx():
        with torch.no_grad():
            net.denoise(x, t, cond, plan)  # warm-up
        with flop_counter() as counter:
            counted = _one(net, x, t, cond, plan, counter)
        runs, plain = [], []
        for _ in range(repeat):
            with torch.no_grad():
                t0 = clock()
                net.denoise(x, t, cond, plan)
                plain.append(clock() - t0)
            runs.append(_one(net, x, t, cond, plan).time)
    keys = list(counted.flops.keys() | set().union(*(r.keys() for r in runs)))
    order = {s.name: i for i, s in enumerate(net.denoising_unet.stages)}
    keys.sort(key=lambda k: (order.get(k[0], -1 if k[0] == "prepare" else len(order)), k[1]))
    rows = [{"stage": s, "component": c, "time_s": statistics.median(r.get((s, c), 0.0) for r in runs),
             "flops": int(counted.flops.get((s, c), 0))} for s, c in keys]
    return {"rows": rows, "flops": int(counter.get_total_flops()), "time_s": statistics.median(plain),
            "time_hooked_s": statistics.median(sum(r.values()) for r in runs)}


def profile_reference(net, ref, ctx, repeat: int = 3) -> dict:
    """Time and FLOPs of one ``write_reference`` (the ReferenceNet pass, once per clip)."""
    with torch.no_grad():
        net.write_reference(ref, ctx)
        with flop_counter() as counter:
            net.write_reference(ref, ctx)
        seconds = median_seconds(lambda: net.write_reference(ref, ctx), repeat)
    return {"flops": int(counter.get_total_flops()), "time_s": seconds}


# ------------------------------------------------------------------------------------ op kinds
OP_KINDS = (  # (kind, pattern on the aten op name), first match wins
    ("conv", r"conv|mkldnn_convolution"),
    ("sdpa", r"scaled_dot_product|flash_attention|_efficient_attention"),
    ("gemm", r"\b(aten::)?(mm|addmm|bmm|baddbmm|matmul|linear|mkldnn_linear)\b"),
    ("norm", r"norm"),
    ("copy/layout", r"copy|clone|contiguous|cat|_to_copy|to\b|index|expand|repeat|stack|permute|transpose|reshape|view|empty"),
    ("elementwise", r"silu|gelu|add|mul|div|sub|exp|sin|cos|neg|sigmoid|relu|chunk|fill|zero"),
)


def op_kind(name: str) -> str:
    for kind, pat in OP_KINDS:
        if re.search(pat, name):
            return kind
    return "other"


def profile_ops(net, x, t, cond, plan=None, autocast: bool = False, top: int = 12) -> dict:
    """One call under torch.profiler: self CPU time and count per aten op, by kind, plus the top
    ops by self time with their input shapes."""
    from torch.profiler import ProfilerActivity, profile

    ctx = torch.autocast("cpu", dtype=torch.bfloat16) if autocast else contextlib.nullcontext()
    with ctx, torch.no_grad():
        net.denoise(x, t, cond, plan)
        with profile(activities=[ProfilerActivity.CPU], record_shapes=True, with_flops=True) as prof:
            net.denoise(x, t, cond, plan)
    kinds: dict[str, dict] = defaultdict(lambda: {"time_s": 0.0, "calls": 0})
    for ev in prof.key_averages():
        k = kinds[op_kind(ev.key)]
        k["time_s"] += ev.self_cpu_time_total / 1e6
        k["calls"] += ev.count
    by_shape = sorted(prof.key_averages(group_by_input_shape=True), key=lambda e: -e.self_cpu_time_total)
    tops = [{"op": e.key, "shapes": str(e.input_shapes)[:120], "calls": e.count,
             "self_time_s": e.self_cpu_time_total / 1e6} for e in by_shape[:top]]
    return {"kinds": dict(kinds), "top": tops}


# ---------------------------------------------------------------------------------------- peak
def gemm_peak(dtype: torch.dtype = torch.float32, n: int = 2048, repeat: int = 3) -> float:
    """GFLOP/s of ``torch.mm`` of two n x n matrices (median of ``repeat``) at the current threads."""
    a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
    torch.mm(a, b)
    return 2 * n**3 / median_seconds(lambda: torch.mm(a, b), repeat) / 1e9


# ------------------------------------------------------------------------------------ variants
def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """PSNR of ``a`` against reference ``b`` with ``b``'s peak-to-peak range as the signal range."""
    a, b = a.float(), b.float()
    mse = torch.mean((a - b) ** 2).item()
    rng = (b.max() - b.min()).item()
    return math.inf if mse == 0 else 10 * math.log10(rng**2 / mse)


def compare_variants(net, load, variants: list[str], steps: int, repeat: int, threads: int) -> dict:
    """Whole full-call times of fp32 and each variant, round-robin in one run, and each output's
    PSNR against fp32. ``load()``: a fresh fp32 copy of ``net`` (a loaded one: a deep copy of a
    TalkingUNet would run the original's modules, see :func:`TalkingUNet.__deepcopy__`)."""
    out: dict[str, dict] = {}
    nets = {"fp32": net}
    for v in variants:
        if v == "channels_last":
            nets[v] = load().to(memory_format=torch.channels_last)
        elif v == "bf16":
            nets[v] = load().to(torch.bfloat16)
        elif v in ("autocast", "fp32_2t"):
            nets[v] = net
        else:
            raise SystemExit(f"unknown variant {v!r}")
    names = ["fp32"] + variants
    results, times, walls = {}, defaultdict(list), defaultdict(list)

    def run(v):
        n = nets[v]
        dt = torch.bfloat16 if v == "bf16" else torch.float32
        x, t, cond = make_inputs(n, steps, dt)
        ctx = torch.autocast("cpu", dtype=torch.bfloat16) if v == "autocast" else contextlib.nullcontext()
        torch.set_num_threads(2 if v == "fp32_2t" else threads)
        try:
            with ctx, torch.no_grad():
                t0, w0 = clock(), time.perf_counter()
                y = n.denoise(x, t, cond)
                times[v].append(clock() - t0)
                walls[v].append(time.perf_counter() - w0)
        finally:
            torch.set_num_threads(threads)
        results[v] = y.float()

    for v in names:  # warm-up
        run(v)
    times.clear()
    walls.clear()
    for _ in range(repeat):
        for v in names:
            run(v)
    for v in names:
        out[v] = {"time_s": statistics.median(times[v]), "times_s": times[v], "wall_s": statistics.median(walls[v]),
                  "psnr_vs_fp32_db": psnr(results[v], results["fp32"])}
    return out


def precision_check(net, load, threads: int, top: int = 8) -> dict:
    """One full call in fp32, fp32 on 2 threads (the noise floor), bf16 (weights and inputs) and
    fp32 weights under CPU bf16 autocast: time (the clock) of each, PSNR of each output against
    fp32, and the top ops by self time of the two bf16 calls (one profiled call each: they are slow)."""
    from torch.profiler import ProfilerActivity, profile

    out: dict = {}
    ref = None
    for v in ("fp32", "fp32_2t", "bf16", "autocast"):
        n = load().to(torch.bfloat16) if v == "bf16" else net
        x, t, cond = make_inputs(n, 1, torch.bfloat16 if v == "bf16" else torch.float32)
        ctx = torch.autocast("cpu", dtype=torch.bfloat16) if v == "autocast" else contextlib.nullcontext()
        torch.set_num_threads(2 if v == "fp32_2t" else threads)
        prof = profile(activities=[ProfilerActivity.CPU], record_shapes=True) if v in ("bf16", "autocast") \
            else contextlib.nullcontext()
        try:
            with ctx, torch.no_grad():
                if v.startswith("fp32"):
                    n.denoise(x, t, cond)  # warm-up (the bf16 calls are too slow for one)
                with prof:
                    t0, w0 = clock(), time.perf_counter()
                    y = n.denoise(x, t, cond).float()
                    dt, wall = clock() - t0, time.perf_counter() - w0
        finally:
            torch.set_num_threads(threads)
        ref = y if ref is None else ref
        row = {"time_s": dt, "wall_s": wall, "psnr_vs_fp32_db": psnr(y, ref)}
        if v in ("bf16", "autocast"):
            evs = sorted(prof.key_averages(group_by_input_shape=True), key=lambda e: -e.self_cpu_time_total)
            total = sum(e.self_cpu_time_total for e in prof.key_averages())
            row["top"] = [{"op": e.key, "shapes": str(e.input_shapes)[:120], "calls": e.count,
                           "share": e.self_cpu_time_total / total} for e in evs[:top]]
            kinds: dict[str, float] = defaultdict(float)
            for e in prof.key_averages():
                kinds[op_kind(e.key)] += e.self_cpu_time_total / total
            row["kinds"] = dict(kinds)
        out[v] = row
    return out


# -------------------------------------------------------------------------------------- report
def _group(stage: str) -> str:
    m = re.match(r"(down|up)\.(\d+)", stage)
    return f"{m.group(1)}.{m.group(2)}" if m else stage


def summarize(res: dict, key) -> list[dict]:
    acc: dict[str, dict] = {}
    for r in res["rows"]:
        k = key(r)
        a = acc.setdefault(k, {"name": k, "time_s": 0.0, "flops": 0})
        a["time_s"] += r["time_s"]
        a["flops"] += r["flops"]
    return list(acc.values())


def md_table(rows: list[dict], total_time: float, peak: float) -> str:
    lines = ["| part | ms | % time | GFLOP | GFLOP/s | % of peak |", "|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        gfs = r["flops"] / r["time_s"] / 1e9 if r["time_s"] > 0 else 0.0
        lines.append(f"| {r['name']} | {r['time_s'] * 1e3:.1f} | {100 * r['time_s'] / total_time:.1f} | "
                     f"{r['flops'] / 1e9:.3f} | {gfs:.1f} | {100 * gfs / peak:.0f} |")
    return "\n".join(lines)


def report(call: str, res: dict, ops: dict | None, peak: float) -> str:
    tot = sum(r["time_s"] for r in res["rows"])
    gfs = res["flops"] / res["time_s"] / 1e9
    parts = [f"### {call} call: {res['time_s'] * 1e3:.0f} ms (no hooks; {res['time_hooked_s'] * 1e3:.0f} ms hooked), "
             f"{res['flops'] / 1e9:.2f} GFLOP, {gfs:.1f} GFLOP/s = {100 * gfs / peak:.0f}% of the fp32 GEMM peak",
             "", "By stage:", "", md_table(summarize(res, lambda r: _group(r["stage"])), tot, peak),
             "", "By component:", "", md_table(sorted(summarize(res, lambda r: r["component"]),
                                                      key=lambda a: -a["time_s"]), tot, peak)]
    if ops is not None:
        otot = sum(k["time_s"] for k in ops["kinds"].values())
        parts += ["", "By aten op kind (torch.profiler self time):", "",
                  "| kind | ms | % | calls |", "|---|---:|---:|---:|"]
        for name, k in sorted(ops["kinds"].items(), key=lambda kv: -kv[1]["time_s"]):
            parts.append(f"| {name} | {k['time_s'] * 1e3:.1f} | {100 * k['time_s'] / otot:.1f} | {k['calls']} |")
        parts += ["", "Top ops by self time:", "", "| op | input shapes | calls | ms |", "|---|---|---:|---:|"]
        for e in ops["top"]:
            parts.append(f"| {e['op']} | `{e['shapes']}` | {e['calls']} | {e['self_time_s'] * 1e3:.1f} |")
    return "\n".join(parts)


def load_net(args):
    if args.checkpoint or not args.preset:
        from talkfast.models.loading import EMBEDDED_DIR, load_embedded

        net, _, _ = load_embedded(args.checkpoint or EMBEDDED_DIR)
    else:
        from talkfast.models.loading import build_random

        net, _ = build_random(args.preset)
    return net.to(torch.float32).eval()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--checkpoint", default=None, help="a talkfast model folder (default: the embedded model)")
    ap.add_argument("--preset", default=None, help="random weights of this preset instead")
    ap.add_argument("--shallow-steps", type=int, default=2, help="steps batched in the shallow call (0: skip it)")
    ap.add_argument("--dtype", default="fp32", choices=["fp32", "bf16", "autocast"],
                    help="the profiled calls' precision (autocast: fp32 weights, CPU bf16 autocast)")
    ap.add_argument("--gemm-size", type=int, default=2048)
    ap.add_argument("--no-ops", action="store_true", help="skip the torch.profiler op-kind pass")
    ap.add_argument("--variants", default="", help="comma list: channels_last,bf16,autocast,fp32_2t")
    ap.add_argument("--variant-repeat", type=int, default=3)
    ap.add_argument("--precision", action="store_true",
                    help="only the bf16 check: one full call each of fp32, fp32 on 2 threads, bf16, autocast")
    ap.add_argument("--clock", choices=sorted(CLOCKS), default=None,
                    help="wall, or cpu (this thread's CPU time: robust on a shared machine; default with 1 thread)")
    ap.add_argument("--json", default=None)
    ap.add_argument("--md", default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    clock_name = args.clock or ("cpu" if args.threads == 1 else "wall")
    set_clock(clock_name)
    net = load_net(args)
    dt = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    if dt != torch.float32:
        net = net.to(dt)
    autocast = args.dtype == "autocast"
    out: dict = {"threads": args.threads, "clock": clock_name, "torch": torch.__version__, "dtype": args.dtype, "preset": net.cfg.name,
                 "cpu_capability": torch.backends.cpu.get_cpu_capability()}
    out["peak_gflops"] = {"fp32": gemm_peak(torch.float32, args.gemm_size)}
    try:
        out["peak_gflops"]["bf16"] = gemm_peak(torch.bfloat16, min(args.gemm_size, 512), 1)
    except RuntimeError as err:
        out["peak_gflops"]["bf16"] = f"unsupported: {err}"
    peak = out["peak_gflops"]["fp32"]
    if args.precision:
        out["precision"] = pc = precision_check(net, lambda: load_net(args), args.threads)
        md = [f"threads {args.threads}, clock {clock_name}, bf16 GEMM support in oneDNN: "
              f"{torch.ops.mkldnn._is_mkldnn_bf16_supported()}, GEMM peak fp32 {peak:.1f} / bf16 "
              f"{out['peak_gflops']['bf16']} GFLOP/s", "",
              "| call | ms (clock) | x fp32 | wall ms | PSNR vs fp32 (dB) |", "|---|---:|---:|---:|---:|"]
        for v, r in pc.items():
            md.append(f"| {v} | {r['time_s'] * 1e3:.0f} | {r['time_s'] / pc['fp32']['time_s']:.1f} | "
                      f"{r['wall_s'] * 1e3:.0f} | {r['psnr_vs_fp32_db']:.1f} |")
        for v in ("bf16", "autocast"):
            md += ["", f"{v}: share of self time by op kind: " + ", ".join(
                f"{k} {100 * s:.0f}%" for k, s in sorted(pc[v]["kinds"].items(), key=lambda kv: -kv[1])), "",
                "| op | input shapes | calls | % self time |", "|---|---|---:|---:|"]
            md += [f"| {e['op']} | `{e['shapes']}` | {e['calls']} | {100 * e['share']:.1f} |" for e in pc[v]["top"]]
        _write(args, out, "\n".join(md))
        return
    md = [f"threads {args.threads}, clock {clock_name}, torch {torch.__version__}, CPU capability {out['cpu_capability']}, "
          f"{args.dtype}, model {net.cfg.name}", "",
          f"GEMM peak (torch.mm): fp32 {peak:.1f} GFLOP/s (n={args.gemm_size}), bf16 {out['peak_gflops']['bf16']}", ""]
    x, t, cond = make_inputs(net, 1, dt)
    ref = torch.randn(1 + net.cfg.motion_frames, net.cfg.latent_channels, net.cfg.latent_size, net.cfg.latent_size).to(dt)
    ref_ctx = cond.context if net.reference_unet.has_cross_attention else None
    out["reference"] = profile_reference(net, ref, ref_ctx, args.repeat)
    x, t, cond = make_inputs(net, 1, dt)  # the reference written again, as the calls read it
    calls = [("full", x, t, cond, None)]
    if args.shallow_steps:
        plan = shallow_plan(net, x, t, cond)
        sx, st, scond = make_inputs(net, args.shallow_steps, dt, seed=1, reference=False)
        calls.append((f"shallow ({args.shallow_steps} steps batched)", sx, st, scond, plan))
    for name, cx, ct, cc, plan in calls:
        res = profile_call(net, cx, ct, cc, plan, args.repeat, autocast)
        ops = None if args.no_ops else profile_ops(net, cx, ct, cc, plan, autocast)
        out[name] = {**res, "ops": ops}
        md += [report(name, res, ops, peak), ""]
    r = out["reference"]
    md += [f"Reference pass (write_reference, once per clip): {r['time_s'] * 1e3:.0f} ms, {r['flops'] / 1e9:.2f} GFLOP, "
           f"{r['flops'] / r['time_s'] / 1e9:.1f} GFLOP/s", ""]
    if args.variants:
        variants = [v for v in args.variants.split(",") if v]
        out["variants"] = compare_variants(net, lambda: load_net(args), variants, 1, args.variant_repeat, args.threads)
        md += ["Full call, variants interleaved (median of round-robin runs):", "",
               "| variant | ms (clock) | x fp32 | wall ms | PSNR vs fp32 (dB) |", "|---|---:|---:|---:|---:|"]
        base = out["variants"]["fp32"]["time_s"]
        for v, r in out["variants"].items():
            md.append(f"| {v} | {r['time_s'] * 1e3:.0f} | {r['time_s'] / base:.2f} | {r['wall_s'] * 1e3:.0f} | "
                      f"{r['psnr_vs_fp32_db']:.1f} |")
    _write(args, out, "\n".join(md))


def _write(args, out: dict, text: str) -> None:
    print(text)
    if args.md:
        Path(args.md).write_text(text + "\n")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1, default=str))


if __name__ == "__main__":
    main()
