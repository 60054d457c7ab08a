"""Time to the first playable frame of ``talkfast generate --stream`` (issue 26, Done-when: the
first clip is playable in the growing file before 25% of the run's wall time; and a run fed by a
pipe at real speech speed finishes within compute time plus the stated lookahead).

    .venv/bin/python benchmarks/latency.py [--accel auto,off] [--repeat 1] [--warmup 1] [--out latency_out]
                                           [--poll 0.05] [-- EXTRA GENERATE ARGS]

For each ``--accel`` value, runs ``python -m talkfast generate --stream -o OUT --accel A -q`` in a
subprocess on the bundled example (its portrait and speech, the embedded model: ``generate``'s
defaults) and, while it runs, polls the growing ``OUT.partial.mp4`` every ``--poll`` seconds with
the project's probe (:func:`talkfast.io.video.probe_video`, which counts decoded frames) until it
decodes to at least one frame. Records per run:

- ``wall_s``: process start to exit (what a user waits for, imports and model loading included);
- ``first_frame_s``: process start to the first poll at which the partial file decoded to >= 1
  frame (so late by at most one poll interval plus one probe, ``probe_s`` is the slowest probe);
- ``ratio``: first_frame_s / wall_s (the Done-when asks for < 0.25);
- ``realtime_factor``: seconds of video (the sidecar's frames / fps) per second of ``wall_s``;
- ``pipeline_s``: the run's own ``seconds.total`` from the sidecar (inputs to published video,
  without imports and model loading), and ``pipeline_first_frame_s``: first_frame_s minus the
  time before the pipeline started (wall_s - pipeline_s), the same moment on the pipeline's clock.

``--realtime`` adds, per accel, a run with the speech on stdin (``-a -``) written at the speed it
is spoken (:func:`feed_realtime`), interleaved with the file runs: its wall time minus the file
run's is what waiting for the speech cost (the embedded model's stated lookahead: the first clip's
audio, 16 frames, plus 3 frames: 0.76 s at 25 fps, when compute is slower than speech).

Writes ``latency.json`` and ``latency.md`` (a table, the median of ``--repeat`` runs per accel) in
``--out``. ``--warmup`` untimed runs first warm the page cache (torch, ffmpeg, the weights).
Arguments after ``--`` go to ``generate`` (e.g. ``-- --threads 1``). The numbers depend on
everything else the machine runs: measure on a machine without other jobs.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))


def decodable_frames(path: Path) -> int:
    """Frames the (possibly growing) video at ``path`` decodes to now; 0 while it has none or is
    not yet readable."""
    from talkfast.errors import InputError
    from talkfast.io.video import probe_video

    try:
        data = path.read_bytes()
    except OSError:
        return 0
    if b"moof" not in data:  # the empty header only: no fragment yet, nothing to probe
        return 0
    try:
        return probe_video(path).num_frames
    except InputError:
        return 0


def feed_realtime(stdin, wav: Path, chunk_s: float = 0.02) -> None:
    """Write ``wav`` to ``stdin`` as a streaming writer would, at the speed of speech: a WAV header
    with an open length (0xFFFFFFFF, as ``ffmpeg -f wav pipe:`` writes), then 16-bit PCM in
    ``chunk_s`` pieces, each no earlier than its time in the recording (counted from the call)."""
    import numpy as np
    import soundfile as sf

    samples, rate = sf.read(str(wav), dtype="int16", always_2d=True)
    channels = samples.shape[1]
    header = (b"RIFF" + (0xFFFFFFFF).to_bytes(4, "little") + b"WAVEfmt " + (16).to_bytes(4, "little")
              + (1).to_bytes(2, "little") + channels.to_bytes(2, "little") + rate.to_bytes(4, "little")
              + (rate * channels * 2).to_bytes(4, "little") + (channels * 2).to_bytes(2, "little")
              + (16).to_bytes(2, "little") + b"data" + (0xFFFFFFFF).to_bytes(4, "little"))
    step = max(1, int(rate * chunk_s))
    t0 = time.perf_counter()
    try:
        stdin.write(header)
        for a in range(0, len(samples), step):
            due = t0 + (a + step) / rate  # a chunk is sent once it has been "spoken"
            time.sleep(max(0.0, due - time.perf_counter()))
            stdin.write(np.ascontiguousarray(samples[a:a + step]).tobytes())
            stdin.flush()
    except (BrokenPipeError, OSError):
        pass  # the run failed: its exit code says why
    finally:
        try:
            stdin.close()
        except OSError:
            pass


def run_stream(out: Path, accel: str, extra: list[str], poll: float, realtime: bool = False) -> dict:
    """One ``generate --stream`` run, the growing file polled until its first frame; ``realtime``:
    the speech comes on stdin (``-a -``) at the speed it is spoken (:func:`feed_realtime`)."""
    import threading

    from talkfast.examples import SPEECH
    from talkfast.io.stream import partial_path

    partial = partial_path(out)
    for stale in (out, out.with_suffix(".json"), partial):
        stale.unlink(missing_ok=True)
    cmd = [sys.executable, "-m", "talkfast", "generate", "--stream", "-o", str(out), "--accel", accel, "-q", *extra]
    if realtime:
        cmd += ["-a", "-"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO / "src"), os.environ.get("PYTHONPATH")]))}
    first, frames, probe_max, polls = None, 0, 0.0, 0
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdin=subprocess.PIPE if realtime else subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    feeder = threading.Thread(target=feed_realtime, args=(proc.stdin, SPEECH), daemon=True) if realtime else None
    if feeder is not None:
        feeder.start()
    while proc.poll() is None:
        if first is None:
            tp = time.perf_counter()
            n = decodable_frames(partial)
            probe_max = max(probe_max, time.perf_counter() - tp)
            polls += 1
            if n >= 1:
                first, frames = tp - t0, n  # the poll's start: the frame was there by then
        time.sleep(poll)
    wall = time.perf_counter() - t0
    if feeder is not None:
        feeder.join()
        proc.stdin = None  # the feeder closed it; communicate() must not flush it
    _, stderr = proc.communicate()
    if proc.returncode != 0:
        raise SystemExit(f"error: generate --accel {accel} failed (exit {proc.returncode}):\n"
                         f"{stderr.decode(errors='replace')[-2000:]}")
    try:
        sidecar = json.loads(out.with_suffix(".json").read_text())
    except (OSError, ValueError):
        sidecar = {}
    pipeline = (sidecar.get("seconds") or {}).get("total")
    return {
        "accel": accel, "input": "stdin, real speed" if realtime else "file", "wall_s": wall, "first_frame_s": first, "frames_at_first": frames,
        "ratio": None if first is None else first / wall, "pipeline_s": pipeline,
        "pipeline_first_frame_s": None if first is None or pipeline is None else first - (wall - pipeline),
        "probe_s": probe_max, "polls": polls, "video_frames": sidecar.get("frames"),
        "realtime_factor": realtime_factor(sidecar.get("frames"), (sidecar.get("options") or {}).get("fps"), wall),
        "audio_seconds": sidecar.get("audio_seconds"), "accel_used": (sidecar.get("accel_choice") or {}).get("setting"),
        "decode_in_background": sidecar.get("decode_in_background"), "threads": sidecar.get("threads"),
        "output_ok": out.is_file() and not partial.exists(),
    }


def realtime_factor(frames, fps, wall: float) -> float | None:
    """Seconds of video per second of the process's wall time (above 1: faster than real time)."""
    return frames / fps / wall if frames and fps and wall > 0 else None


def row_label(accel: str, realtime: bool) -> str:
    return f"{accel}, stdin at speech speed" if realtime else accel


def summarize(runs: list[dict]) -> dict:
    def med(key):
        vals = [r.get(key) for r in runs if r.get(key) is not None]
        return statistics.median(vals) if vals else None

    keys = ("wall_s", "first_frame_s", "ratio", "pipeline_s", "pipeline_first_frame_s", "realtime_factor")
    return {k: med(k) for k in keys}


def _cell(v, fmt: str) -> str:
    return "n/a" if v is None else format(v, fmt)


def markdown(result: dict) -> str:
    lines = ["# talkfast latency: time to the first playable frame of generate --stream", "",
             (f"{result['meta']['cpus']} CPUs, python {result['meta']['python']}, extra args "
              f"{result['meta']['extra'] or 'none'}, median of {result['meta']['repeat']} run(s) per row; "
              "first frame: process start until OUT.partial.mp4 decodes to >= 1 frame (polled every "
              f"{result['meta']['poll_s']:g} s); the Done-when asks for a ratio < 0.25."), "",
             "| accel | wall s | first frame s | ratio | pipeline s | first frame s (pipeline clock) | RTF | < 25% |",
             "|---|---|---|---|---|---|---|---|"]
    for accel, s in result["summary"].items():
        ok = "n/a" if s["ratio"] is None else ("yes" if s["ratio"] < 0.25 else "no")
        lines.append(f"| {accel} | {_cell(s['wall_s'], '.2f')} | {_cell(s['first_frame_s'], '.2f')} | "
                     f"{_cell(s['ratio'], '.3f')} | {_cell(s['pipeline_s'], '.2f')} | "
                     f"{_cell(s['pipeline_first_frame_s'], '.2f')} | {_cell(s.get('realtime_factor'), '.3f')} | {ok} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[: argv.index("--")] if "--" in argv else argv
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--accel", default="auto,off", help="comma-separated --accel values, one row each")
    p.add_argument("--repeat", type=int, default=1, help="runs per accel (the median is reported)")
    p.add_argument("--warmup", type=int, default=1, help="untimed runs first (page cache)")
    p.add_argument("--poll", type=float, default=0.05, help="seconds between polls of the growing file")
    p.add_argument("--out", default="latency_out", help="folder for latency.json and latency.md")
    p.add_argument("--realtime", action="store_true",
                   help="also a row per accel with the speech on stdin (-a -) at the speed it is spoken")
    args = p.parse_args(argv)
    if args.repeat < 1 or args.warmup < 0 or args.poll <= 0:
        p.error("--repeat must be >= 1, --warmup >= 0, --poll > 0")
    accels = [a.strip() for a in args.accel.split(",") if a.strip()]

    rows = [(a, False) for a in accels] + ([(a, True) for a in accels] if args.realtime else [])
    runs: dict[str, list[dict]] = {row_label(a, rt): [] for a, rt in rows}
    with tempfile.TemporaryDirectory(prefix="talkfast_latency_") as tmp:
        out = Path(tmp) / "talk.mp4"
        for _ in range(args.warmup):
            run_stream(out, accels[0], extra, args.poll)
        for _ in range(args.repeat):
            for a, rt in rows:  # interleaved: a file run and its real-speed stdin run see the same machine
                r = run_stream(out, a, extra, args.poll, realtime=rt)
                runs[row_label(a, rt)].append(r)
                print(f"--accel {row_label(a, rt)}: wall {r['wall_s']:.2f} s, first frame "
                      f"{_cell(r['first_frame_s'], '.2f')} s, ratio {_cell(r['ratio'], '.3f')}", flush=True)
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    result = {
        "meta": {"cpus": cpus, "python": platform.python_version(), "extra": extra, "repeat": args.repeat,
                 "warmup": args.warmup, "poll_s": args.poll, "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
                 "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None},
        "summary": {a: summarize(rs) for a, rs in runs.items()},
        "runs": runs,
    }
    folder = Path(args.out)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "latency.json").write_text(json.dumps(result, indent=2))
    (folder / "latency.md").write_text(markdown(result))
    print(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
