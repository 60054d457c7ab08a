"""``talkfast generate`` on an idle machine and next to one competing busy process.

    .venv/bin/python benchmarks/load_bench.py [--seconds 1.0] [--steps 4] [--repeat 1] [-- EXTRA GENERATE ARGS]

Runs the bundled example (its speech cut to ``--seconds``) through ``python -m talkfast generate
--steps N`` with the embedded model, first alone, then while one pure-Python busy loop runs in a
subprocess (one core's worth of competing work, stopped as soon as the run ends and at most after
``--busy-limit`` seconds). Prints the wall time of each run (process start to exit: what a user
waits for), the pipeline's own time from the sidecar (``seconds.total``: from the inputs to the
published video, without imports and model loading), and the busy/idle ratios of both. The environment is
passed through, so ``OMP_WAIT_POLICY=ACTIVE`` or ``OMP_NUM_THREADS=2`` in front of the command
compares other settings; arguments after ``--`` go to ``generate`` (e.g. ``-- --threads 1``).

The numbers depend on everything else the machine runs; measure on a machine without other jobs.
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
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

BUSY_LOOP = "import time, sys\nend = time.monotonic() + float(sys.argv[1])\nwhile time.monotonic() < end:\n    pass\n"


def short_speech(seconds: float, folder: Path) -> Path:
    import soundfile as sf

    from talkfast import examples

    audio, rate = sf.read(examples.SPEECH, dtype="float32")
    out = folder / "speech.wav"
    sf.write(out, audio[: max(1, int(seconds * rate))], rate)
    return out


def run_generate(speech: Path, out: Path, steps: int, extra: list[str]) -> tuple[float, float | None]:
    # --accel off: the same work in every run, whatever the model's tuned default is
    cmd = [sys.executable, "-m", "talkfast", "generate", "-a", str(speech), "-o", str(out), "--steps", str(steps),
           "--accel", "off", "-q", *extra]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO / "src"), os.environ.get("PYTHONPATH")]))}
    for stale in (out, out.with_suffix(".json")):
        stale.unlink(missing_ok=True)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"error: generate failed (exit {proc.returncode}):\n{proc.stderr[-2000:]}")
    try:
        pipeline = json.loads(out.with_suffix(".json").read_text())["seconds"]["total"]
    except (OSError, KeyError, ValueError):
        pipeline = None
    return wall, pipeline


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[: argv.index("--")] if "--" in argv else argv
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=float, default=1.0, help="speech length (the bundled example, cut)")
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--repeat", type=int, default=1, help="runs per condition (the median is reported)")
    p.add_argument("--busy-limit", type=float, default=600.0, help="the busy loop stops after this many seconds anyway")
    args = p.parse_args(argv)

    results: dict[str, list[tuple[float, float | None]]] = {"idle": [], "busy": []}
    with tempfile.TemporaryDirectory(prefix="talkfast_load_") as tmp:
        folder = Path(tmp)
        speech = short_speech(args.seconds, folder)
        out = folder / "out.mp4"
        run_generate(speech, out, args.steps, extra)  # warm the page cache (torch, ffmpeg, weights)
        for _ in range(args.repeat):
            results["idle"].append(run_generate(speech, out, args.steps, extra))
            busy = subprocess.Popen([sys.executable, "-c", BUSY_LOOP, str(args.busy_limit)])
            try:
                time.sleep(0.2)  # the competitor is running before generate starts
                results["busy"].append(run_generate(speech, out, args.steps, extra))
            finally:
                busy.kill()
                busy.wait()

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print(f"talkfast generate --steps {args.steps}, {args.seconds:g} s of the bundled speech, {cores} CPUs, "
          f"extra args {extra or 'none'}, OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', '(unset)')}, "
          f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', '(unset)')}")
    med, pipe_med = {}, {}
    for name, runs in results.items():
        walls = [w for w, _ in runs]
        pipes = [x for _, x in runs if x is not None]
        med[name] = statistics.median(walls)
        pipe_med[name] = statistics.median(pipes) if pipes else None
        pipe_text = f", pipeline {pipe_med[name]:.2f} s" if pipes else ""
        print(f"{name:>5}: wall {med[name]:.2f} s (runs: {', '.join(f'{w:.2f}' for w in walls)}){pipe_text}")
    ratio = f"busy / idle: wall {med['busy'] / med['idle']:.2f}x"
    if pipe_med["idle"] and pipe_med["busy"]:
        ratio += f", pipeline {pipe_med['busy'] / pipe_med['idle']:.2f}x"
    print(ratio)
    return 0


if __name__ == "__main__":
    sys.exit(main())
