"""Time one denoising-UNet call (clip_frames x CFG 2) of the embedded model, eager vs compiled
(talkfast.models.compiled: torch.compile/inductor per layer, on-disk cache).

    .venv/bin/python benchmarks/compile_call.py [--cache-dir DIR] [--repeat 5] [--json out.json]

Runs two child processes on one cache folder (a new temporary one unless --cache-dir):
``cold`` (empty cache: the compile cost of a first run on a machine) and ``warm`` (the same cache:
what every later ``generate --compile on`` pays on its first call). Each child then times steady
calls at 1 and 2 threads, eager and compiled alternating call by call in the same process (the
compiled layers switched off and on), and reports medians, plus the largest difference between the
compiled and the eager output and the eager 1-vs-2-thread difference (the noise floor of fp32
reordering). Prints one JSON object and a markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time


def child(phase: str, repeat: int, thread_counts: tuple[int, ...]) -> dict:
    import torch

    from talkfast.models.attention import ItemLayout
    from talkfast.models.compiled import compile_denoiser, compiled_regions
    from talkfast.models.loading import load_embedded
    from talkfast.models.unet import UNetCond

    torch.set_num_threads(1)
    net, _, _ = load_embedded()
    net = net.float()  # what generate runs on a CPU (fp32)
    cfg = net.cfg
    u, lat, f = cfg.unet, cfg.latent_size, cfg.clip_frames
    g = torch.Generator().manual_seed(0)

    def r(*shape):
        return torch.randn(*shape, generator=g)

    net.write_reference(r(1 + cfg.motion_frames, cfg.latent_channels, lat, lat), r(2, cfg.image_tokens, u.cross_attention_dim))
    cond = UNetCond(
        context=r(2, cfg.image_tokens, u.cross_attention_dim), audio=r(2, f, cfg.audio_tokens, u.audio_attention_dim),
        masks=tuple([torch.rand(2, (lat // 2**i) ** 2, generator=g) for i in range(u.num_levels)] for _ in range(3)),
        face_feature=r(2, u.block_out_channels[0], 1, lat, lat), layout=ItemLayout.cfg(1, True))
    x, t = r(2, cfg.latent_channels, f, lat, lat), torch.tensor([500, 500])
    out: dict = {"phase": phase, "model": cfg.name, "torch": torch.__version__,
                 "call": f"{f} frames x CFG 2, {lat}x{lat} latents"}
    with torch.no_grad():
        eager_1 = net.denoise(x, t, cond)
        compile_denoiser(net)
        t0 = time.perf_counter()
        compiled_1 = net.denoise(x, t, cond)
        out["first_call_s"] = time.perf_counter() - t0
        out["fallbacks"] = {k: v for k, v in compiled_regions(net).items() if v}
        out["max_abs_diff_compiled_vs_eager"] = float((compiled_1 - eager_1).abs().max())
        out["output_max_abs"] = float(eager_1.abs().max())
        torch.set_num_threads(2)
        eager_2 = net.denoise(x, t, cond)
        out["max_abs_diff_eager_1_vs_2_threads"] = float((eager_2 - eager_1).abs().max())
        for threads in thread_counts:
            torch.set_num_threads(threads)
            times = {"eager": [], "compiled": []}
            for _ in range(repeat):
                for kind in ("eager", "compiled"):
                    compile_denoiser(net, kind == "compiled")
                    t0 = time.perf_counter()
                    net.denoise(x, t, cond)
                    times[kind].append(time.perf_counter() - t0)
            out[f"steady_{threads}t"] = {k: statistics.median(v) for k, v in times.items()}
    return out


def run_children(script: str, phases, extra: list[str], cache_dir: str | None) -> tuple[str, dict[str, dict]]:
    """Each phase in a new process (``script --child PHASE *extra``), all on one inductor cache folder
    (a new temporary one unless ``cache_dir``: cold); returns the folder and {phase: the JSON the
    child printed last, plus its wall time ``child_wall_s``}, each also echoed to stderr at once
    (kept if a later phase fails)."""
    cache = cache_dir or tempfile.mkdtemp(prefix="talkfast-inductor-")
    env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": cache}
    runs = {}
    for phase in phases:
        t0 = time.perf_counter()
        proc = subprocess.run([sys.executable, script, "--child", phase, *extra], env=env, capture_output=True,
                              text=True, check=True)
        runs[phase] = {**json.loads(proc.stdout.strip().splitlines()[-1]), "child_wall_s": time.perf_counter() - t0}
        print(json.dumps(runs[phase]), file=sys.stderr, flush=True)
    return cache, runs


def print_result(result: dict, json_path: str | None) -> None:
    """Print the result as indented JSON, and write it to ``json_path`` too when given."""
    text = json.dumps(result, indent=2)
    print(text)
    if json_path:
        with open(json_path, "w", encoding="utf-8") as fh:
            fh.write(text + "\n")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cache-dir", default=None, help="inductor cache folder (default: a new temporary one: cold)")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--json", default=None, help="also write the JSON here")
    ap.add_argument("--threads", default="1,2", help="thread counts of the steady timings (default 1,2; on a "
                    "machine shared with other work, 1 pinned to an idle core: taskset -c N ... --threads 1)")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    thread_counts = tuple(int(n) for n in args.threads.split(","))
    if args.child:
        print(json.dumps(child(args.child, args.repeat, thread_counts)))
        return
    cache, by_phase = run_children(__file__, ("cold", "warm"), ["--repeat", str(args.repeat), "--threads", args.threads],
                                   args.cache_dir)
    runs = list(by_phase.values())
    print_result({"cache_dir": cache, "runs": runs}, args.json)
    print("\n| process | first compiled call (s) | threads | eager (s) | compiled (s) | speedup |")
    print("|---|---|---|---|---|---|")
    for run in runs:
        for threads in thread_counts:
            s = run[f"steady_{threads}t"]
            print(f"| {run['phase']} | {run['first_call_s']:.1f} | {threads} | {s['eager']:.3f} | {s['compiled']:.3f} "
                  f"| {s['eager'] / s['compiled']:.2f}x |")


if __name__ == "__main__":
    main()
