"""One command for a GPU (H100/H200): build the hallo-size model with random weights, check it,
time the baseline against every accelerator, print the table last.

    python benchmarks/gpu_bench.py --dtype fp16 --out $OUT            # H100/H200, ~3-5 minutes
    python benchmarks/gpu_bench.py --preset tiny --device cpu --steps 4   # CPU dry run (seconds)

What it does, in order:

1. checks the device (CUDA present, bf16 supported when asked) and prints what it found;
2. builds the preset (default ``hallo``) with random weights directly on the device in the chosen
   dtype (no VAE, no audio extractor) and synthetic conditioning at ``--size`` (512), ``--frames``
   (16) frames, CFG 3.5;
3. correctness: LightningCP with every step a key step must reproduce the baseline within the
   dtype's tolerance (``--check-steps`` steps), and the outputs must be finite;
4. times the baseline and each method of ``--methods`` (default on CUDA ``all``: the default set,
   the ablation and the key-step sweep; elsewhere ``default``) over the whole ``--steps`` (40) schedule, each after an
   untimed warm-up pass that also counts FLOPs (``--flops device``); per method: seconds of the
   denoising loop, seconds per step (CUDA-synchronised per model call), speedup, FLOPs and
   ratio, peak CUDA memory; quality is n/a (random weights);
5. writes ``gpu_bench.md``, ``gpu_bench.json`` and ``gpu_bench.png`` under ``--out`` and prints
   the markdown (the table last).

Time budget: on one H200 a full hallo step (CFG, 16 frames, 64x64 latents) takes about 0.17 s and
the shallow path about 0.019 s, so a 40-step baseline is ~7 s and a method with a key step every
4th step ~2-4 s; two passes per method (warm-up + timed) over ~16 methods plus the model build
and the check stay well under 8 minutes. ``--budget-s`` (default 450, counted from the start of
the script) is a guard: a method whose estimated cost (passes x the baseline's time) would run
past it is skipped and listed in the notes. Exit code 0 when every check passed, 1 when a check
failed, 2 when the device is unusable.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

T_START = time.perf_counter()

try:
    import talkfast  # noqa: F401  (only: is the package importable?)
except ImportError:  # a source checkout without an installed package
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import torch

from talkfast.accelerators import KeySchedule
from talkfast.eval import bench

TOLERANCE = {torch.float32: (1e-4, 1e-4), torch.float16: (2e-2, 1e-2), torch.bfloat16: (5e-2, 2e-2)}  # (atol, rtol)


def parse_args(argv):
    ap = argparse.ArgumentParser(description="hallo-size accelerator benchmark for one GPU (table printed last)")
    ap.add_argument("--preset", default="hallo", help="model preset (hallo; tiny for a CPU dry run)")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--dtype", default="fp16", choices=["fp16", "bf16", "fp32"])
    ap.add_argument("--size", type=int, default=None, help="frame side in pixels (default: the preset's, hallo 512)")
    ap.add_argument("--frames", type=int, default=None, help="frames per clip (default: the preset's, hallo 16)")
    ap.add_argument("--steps", type=int, default=40, help="DDIM steps of every timed run")
    ap.add_argument("--cfg", type=float, default=3.5)
    ap.add_argument("--key-steps", default="4", help="key steps of the default/ablation methods: N, 'dense' or a list")
    ap.add_argument("--sweep", default="2,3,4,5,6,8", help="key-step intervals of the sweep")
    ap.add_argument("--methods", default=None, choices=["default", "ablation", "sweep", "all", "quick"],
                    help="method set (default: all on CUDA, default elsewhere: a dry run need not repeat every variant)")
    ap.add_argument("--repeats", type=int, default=1, help="timed runs per method (median reported)")
    ap.add_argument("--check-steps", type=int, default=10, help="steps of the every-step-a-key-step check")
    ap.add_argument("--flops", default="device", choices=["device", "meta", "none"],
                    help="where FLOPs are counted: in each warm-up pass on the device, on a meta-device copy, or not")
    ap.add_argument("--budget-s", type=float, default=450.0, help="skip methods that would end past this (s since start)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="gpu_bench_out")
    return ap.parse_args(argv)


def device_report(device: torch.device, dtype: torch.dtype) -> tuple[dict, str | None]:
    """What the device is; an error message when it cannot run this benchmark."""
    info = {"device": str(device), "torch": torch.__version__, "dtype": str(dtype).replace("torch.", "")}
    if device.type != "cuda":
        info["note"] = "not a GPU: a dry run (timings say nothing about GPU speed)"
        return info, None
    if not torch.cuda.is_available():
        return info, "CUDA is not available (torch built without CUDA, or no visible GPU)"
    idx = device.index if device.index is not None else torch.cuda.current_device()
    if idx >= torch.cuda.device_count():
        return info, f"{device} does not exist ({torch.cuda.device_count()} GPUs visible)"
    props = torch.cuda.get_device_properties(idx)
    info.update(gpu=props.name, capability=f"{props.major}.{props.minor}", memory_gib=round(props.total_memory / 2**30, 1),
                cuda=torch.version.cuda, cudnn=torch.backends.cudnn.version())
    if dtype == torch.bfloat16 and not torch.cuda.is_bf16_supported():
        return info, f"{props.name} does not support bf16"
    return info, None


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    dtype = bench.resolve_dtype(args.dtype)
    device = torch.device(args.device)
    info, err = device_report(device, dtype)
    print("device: " + ", ".join(f"{k}={v}" for k, v in info.items()), flush=True)
    if err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if device.type == "cuda" and device.index is not None:
        torch.cuda.set_device(device)

    from talkfast.models.config import get_preset

    cfg = get_preset(args.preset)
    size, frames = args.size or cfg.image_size, args.frames or cfg.clip_frames
    t0 = time.perf_counter()
    net = bench.build_random_net(args.preset, device, dtype, args.seed)
    setup = bench.speed_setup(net, frames=frames, size=size, guidance=args.cfg, seed=args.seed)
    bench._sync(device)
    build_s = time.perf_counter() - t0
    params = sum(p.numel() for p in net.denoising_unet.parameters()) / 1e6
    print(f"built {args.preset} (denoising UNet {params:.0f}M parameters) with random weights on {device} in "
          f"{build_s:.1f} s; {size}x{size}, {frames} frames, CFG {args.cfg}", flush=True)

    atol, rtol = TOLERANCE[dtype]
    check = bench.equivalence_check(setup, min(args.check_steps, args.steps), atol=atol, rtol=rtol)
    print(f"check: LightningCP with every step a key step vs the baseline over {check['steps']} steps: "
          f"max |diff| {check['max_abs_diff']:.3g} (outputs up to {check['max_abs_baseline']:.3g}; "
          f"tolerance {atol:g} + {rtol:g} x max) -> {'ok' if check['ok'] else 'FAILED'}", flush=True)

    kind = args.methods or ("all" if device.type == "cuda" else "default")
    methods = bench.method_set(kind, KeySchedule.parse(args.key_steps),
                               [int(x) for x in args.sweep.split(",") if x.strip()])
    budget = args.budget_s - (time.perf_counter() - T_START)
    result = bench.run_speed_bench(
        args.preset, device, dtype, frames=frames, steps=args.steps, methods=methods, size=size, guidance=args.cfg,
        seed=args.seed, repeats=args.repeats, flops_on=args.flops, setup=setup, budget_s=budget,
        target=f"{args.preset} (gpu_bench)", log=lambda m: print(m, flush=True), controls="auto")

    checks = {"every_step_key_equals_baseline": check}
    finite = {m.name: m.cases[0].extra.get("finite") for m in result.methods}
    checks["finite_outputs"] = {"ok": all(finite.values()), "per_method": finite}
    reduced = [m for m in result.methods if m.name != "baseline"]
    fewer = {m.name: m.flops_ratio for m in reduced if m.flops_ratio is not None}
    checks["reduced_methods_do_fewer_flops"] = {"ok": all(r < 1.0 for r in fewer.values()), "ratios": fewer}
    ok = all(c["ok"] for c in checks.values())
    result.meta.update(build_seconds=build_s, device_info=info, checks=checks, checks_ok=ok,
                       script_seconds=time.perf_counter() - T_START)
    result.notes.insert(0, f"checks: {'all passed' if ok else 'FAILED: ' + ', '.join(k for k, c in checks.items() if not c['ok'])} "
                           f"(every-step-key LightningCP vs baseline max |diff| {check['max_abs_diff']:.3g}; "
                           f"finite outputs; reduced methods do fewer FLOPs).")
    result.notes.append(f"model build {build_s:.1f} s; whole script {time.perf_counter() - T_START:.1f} s.")
    paths = bench.write_outputs(result, args.out, stem="gpu_bench")
    print("wrote " + ", ".join(str(p) for p in paths.values()), flush=True)
    print()
    print(bench.to_markdown(result), flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
