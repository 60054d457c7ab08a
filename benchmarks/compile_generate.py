"""End to end: the default ``generate`` of the bundled example (embedded model, ``--accel auto``),
eager fp32 against ``--compile on``, each in a new process as a user runs it (#29's Done-when).

    taskset -c 1 .venv/bin/python benchmarks/compile_generate.py --threads 1 [--cache-dir DIR] [--json out.json]

Three child processes share one inductor cache folder (a new temporary one unless --cache-dir):

- ``first``: ``--compile on`` in a process whose cache may be cold: the first run on a machine.
- ``second``: ``--compile on`` again in a new process (cache warm: what every later run pays,
  Dynamo's tracing included), then a second compiled generate in the same process (what a
  long-lived process such as the demo pays), then eager generates in the same process (the
  reference: fp32, no compilation, same settings).
- ``eager``: a new process that only runs eager: its wall time from import to the end is the
  baseline a user compares a compiled process against.

Every time is wall time of ``pipe.generate`` (nothing written to disk: frames kept in memory), and
the process wall time from start to the end of the generate. The compiled frames are compared with
the eager frames of the same process by the bench's PSNR (:func:`talkfast.eval.metrics.psnr`: frames
in [0, 1], the mean of the per-frame PSNR), uncapped.
"""

from __future__ import annotations

import argparse
import json
import time

from compile_call import print_result, run_children  # the same child-process runner (benchmarks/ is on sys.path)

START = time.perf_counter()


def child(phase: str, threads: int) -> dict:
    import torch

    from talkfast import examples
    from talkfast.accelerators import build_accelerator
    from talkfast.accelerators.tuned import resolve_for
    from talkfast.eval.metrics import psnr
    from talkfast.pipeline.generate import GenerateOptions
    from talkfast.pipeline.loader import load_pipeline

    torch.set_num_threads(threads)
    pipe = load_pipeline()
    choice = resolve_for("auto", pipe)

    def run(compiled: bool):
        frames = []
        acc = build_accelerator(choice.accel) if choice.accel.method != "off" else None
        # "off" after "on" runs the same network eagerly (pipeline.generate switches the compiled layers)
        opts = GenerateOptions(steps=choice.steps, seed=42, sampler=choice.sampler, compile="on" if compiled else "off")
        t0 = time.perf_counter()
        pipe.generate(str(examples.PORTRAIT), str(examples.SPEECH), None, opts, accelerator=acc, on_clip=frames.append)
        seconds = time.perf_counter() - t0
        if acc is not None:
            acc.detach()
        return torch.cat(frames), seconds

    out: dict = {"phase": phase, "threads": threads, "torch": torch.__version__, "accel": choice.describe()}
    if phase == "eager":
        _, out["eager_s"] = run(False)
        out["process_s"] = time.perf_counter() - START
        return out
    compiled, out["compiled_first_s"] = run(True)
    out["process_s"] = time.perf_counter() - START
    if phase == "second":
        compiled_2, out["compiled_again_s"] = run(True)
        eager, out["eager_s"] = run(False)
        _, out["eager_again_s"] = run(False)
        out["psnr_compiled_vs_eager_db"] = psnr(compiled, eager, cap=float("inf"))
        out["psnr_compiled_runs_db"] = psnr(compiled_2, compiled, cap=float("inf"))
        out["frames"] = int(eager.shape[0])
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cache-dir", default=None, help="inductor cache folder (default: a new temporary one: cold)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", default=None, help="also write the JSON here")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.threads)))
        return
    cache, runs = run_children(__file__, ("first", "second", "eager"), ["--threads", str(args.threads)], args.cache_dir)
    print_result({"cache_dir": cache, "runs": runs}, args.json)
    s, e = runs["second"], runs["eager"]
    print(f"\n| | seconds ({args.threads} thread(s)) |\n|---|---|")
    print(f"| first run, compile on (process: import to end of generate) | {runs['first']['process_s']:.1f} |")
    print(f"| second run, compile on (process) | {s['process_s']:.1f} |")
    print(f"| eager run (process) | {e['process_s']:.1f} |")
    print(f"| generate, compiled, first in a warm-cache process / again | {s['compiled_first_s']:.1f} / "
          f"{s['compiled_again_s']:.1f} |")
    print(f"| generate, eager (same process, twice) | {s['eager_s']:.1f} / {s['eager_again_s']:.1f} |")
    print(f"| PSNR compiled vs eager (dB) | {s['psnr_compiled_vs_eager_db']:.1f} |")


if __name__ == "__main__":
    main()
