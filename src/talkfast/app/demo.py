"""``talkfast demo``: a local web app (Gradio) around one loaded pipeline.

Upload a portrait and a speech recording (or pick the bundled examples), choose an accelerator
preset and the number of steps, and watch the video with a speed summary: how many steps ran the
full network and how many the reduced path, the wall time, and an *estimate* of the time the same
run would have taken without acceleration (see :func:`speed_report`). The video starts playing
after the first clip, while the rest is generated: every clip goes to a streaming ``gr.Video`` as a
small MPEG-TS segment (:meth:`DemoEngine.stream`, :func:`_serve_segments`); the final mp4 (the
same file ``talkfast generate`` writes) follows at the end.

The model is loaded once per process; generations run one at a time (a lock, plus a queue of one).
Outputs go to a temporary folder removed at exit. The app only listens on the address given
(127.0.0.1 by default) and never opens a public share link.

Gradio is an optional dependency (``pip install 'talkfast[demo]'``): it is imported inside the
functions that need it, so the rest of ``talkfast`` works without it.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import itertools
import logging
import os
import shutil
import socket
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

from ..errors import TalkfastError

from ..examples import EXAMPLES_DIR
from ..examples import PORTRAIT as EXAMPLE_PORTRAIT
from ..examples import SPEECH as EXAMPLE_SPEECH
PRESETS = ("auto", "off", "quality", "balanced", "fast")  # auto = balanced (talkfast.accelerators.tuned)
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 7860
logger = logging.getLogger(__name__)
KEEP_RUNS = 8  # videos kept in the output folder; older ones are deleted
# Where the live stream's timeline starts (seconds): past zero, so that the AAC encoder's priming
# frame before each segment's first sample keeps a positive timestamp (Gradio 6's own value).
STREAM_START = 10.0


# ---------------------------------------------------------------------------------------------
# speed summary (no gradio, no torch)
# ---------------------------------------------------------------------------------------------


def speed_report(summary: dict, wall_seconds: float, baseline_step_seconds: float | None = None) -> dict:
    """Numbers for the speed summary from an accelerator ``summary()`` and the run's wall time.

    The unaccelerated time is an *estimate*, not a measurement: a time per full step times the
    run's total number of steps, plus the time this run spent outside the denoising network
    (conditioning, VAE, encoding), which acceleration does not change. The time per full step is
    ``baseline_step_seconds`` when given (measured by an earlier ``off`` run of the same model:
    ``basis`` "off run"), else this run's own full (key) steps (``basis`` "key steps"; low when
    reference removal or DFA also lighten the key steps). Present only when some steps were
    reduced: with every step full the run itself is the baseline."""
    steps = int(summary.get("steps", 0))
    full = int(summary.get("full_steps", 0))
    model = float(summary.get("model_seconds", 0.0))
    reduced = int(summary.get("reduced_steps", steps - full))
    out = {"method": summary.get("method", "off"), "steps": steps, "full_steps": full, "reduced_steps": reduced,
           "model_calls": int(summary.get("model_calls", 0)), "wall_seconds": float(wall_seconds),
           "model_seconds": model, "other_seconds": max(0.0, float(wall_seconds) - model)}
    key_total = summary.get("estimated_baseline_seconds")  # this run's mean full-step time x all steps
    if steps and full and (key_total is not None or not reduced):
        out["seconds_per_full_step"] = (float(key_total) if key_total is not None else model) / steps
    if reduced and "seconds_per_full_step" in out:
        per_step, basis = out["seconds_per_full_step"], "key steps"
        if baseline_step_seconds:
            per_step, basis = float(baseline_step_seconds), "off run"
        est = out["other_seconds"] + per_step * steps
        out.update(estimate_basis=basis, estimate_step_seconds=per_step, estimated_unaccelerated_seconds=est,
                   estimated_speedup=est / wall_seconds if wall_seconds > 0 else None)
    if summary.get("flops_ratio") is not None:
        out["flops_ratio"] = float(summary["flops_ratio"])
    return out


def format_report(report: dict, *, preset: str, frames: int, clips: int, fps: int, weights: str = "") -> str:
    """The speed summary as Markdown (what the app shows under the video)."""
    steps, full, reduced = report["steps"], report["full_steps"], report["reduced_steps"]
    per_clip = steps // clips if clips else steps
    lines = [f"**Preset `{preset}`** ({report['method']}): {frames} frames ({frames / fps:.1f} s at {fps} fps), "
             f"{clips} clip{'s' if clips != 1 else ''} x {per_clip} steps.", ""]
    lines += ["| speed | this run |", "|---|---|"]
    if reduced:
        lines.append(f"| denoising steps | {steps}: **{full} full + {reduced} reduced** ({report['model_calls']} model calls) |")
    else:
        lines.append(f"| denoising steps | {steps}: all full, none skipped ({report['model_calls']} model calls) |")
    lines.append(f"| wall time | **{report['wall_seconds']:.1f} s** ({report['model_seconds']:.1f} s in the denoising network, "
                 f"{report['other_seconds']:.1f} s outside it) |")
    if "seconds_per_full_step" in report:
        lines.append(f"| time per full step | {report['seconds_per_full_step']:.3f} s (measured in this run) |")
    if "estimated_unaccelerated_seconds" in report:
        est, per_step = report["estimated_unaccelerated_seconds"], report["estimate_step_seconds"]
        lines.append(f"| estimated time without acceleration | ~{est:.1f} s (**estimate**, not measured: {per_step:.3f} s "
                     f"per full step x {steps} steps + {report['other_seconds']:.1f} s outside the network) |")
        if report["estimate_basis"] == "off run":
            lines.append("| step time of the estimate | measured by the last `off` run |")
        else:
            lines.append("| step time of the estimate | from this run's full steps (reference removal / DFA may make them "
                         "lighter than unaccelerated ones): run the `off` preset once for a measured one |")
        if report.get("estimated_speedup"):
            lines.append(f"| estimated speed-up | ~{report['estimated_speedup']:.2f}x (estimate) |")
    elif preset == "off":
        lines.append("| compared with | this run is the unaccelerated baseline |")
    else:
        lines.append("| compared with | no step was reduced at this step count, so there is nothing to compare |")
    if "flops_ratio" in report:
        lines.append(f"| FLOPs | {100 * report['flops_ratio']:.1f}% of an all-full run |")
    if weights.startswith("random:"):
        lines += ["", "_Random weights (a smoke test): the video is noise; only the speed figures mean something._"]
    elif reduced:
        lines += ["", "_Quality: reduced steps approximate the full network; compare with the `off` preset by eye._"]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# the engine: one pipeline per process, one generation at a time
# ---------------------------------------------------------------------------------------------


class DemoInputError(TalkfastError):
    """Something the user has to fix in the form (a missing upload, a bad setting)."""


@dataclass
class DemoResult:
    video: Path
    markdown: str
    report: dict
    sidecar: dict = field(default_factory=dict)


@dataclass
class DemoSegment:
    """One clip of a running generation as a playable piece of the live stream: ``path`` a small
    MPEG-TS file (H.264 + AAC) whose timestamps start at :data:`STREAM_START` + ``start_seconds``."""

    path: Path
    clip: int
    frames: int
    start_seconds: float
    seconds: float
    elapsed: float


class DemoEngine:
    """Holds the pipeline (or loads it on first use with ``loader``), a lock so that only one
    generation runs at a time, and the temporary output folder."""

    def __init__(self, source, *, out_dir: str | Path | None = None, seed: int | None = None, fps: int | None = None,
                 default_steps: int | None = None):
        from ..pipeline.generate import DEFAULT_SEED, GenerateOptions, TalkingHeadPipeline

        if isinstance(source, TalkingHeadPipeline):
            self._pipe, self._loader = source, None
        elif callable(source):
            self._pipe, self._loader = None, source
        else:
            raise TypeError("DemoEngine needs a TalkingHeadPipeline or a function that returns one")
        self._lock = threading.Lock()
        self._count = itertools.count(1)
        if seed is None:  # the family's default seed (EchoMimic 420), known once the pipeline is
            seed = self._pipe.resolve(GenerateOptions()).seed if self._pipe is not None else DEFAULT_SEED
        self.seed, self.fps = seed, fps
        self.off_step_seconds: float | None = None  # per-step time of the latest `off` run
        self._default_steps = default_steps
        self._segment_seconds: dict[str, float] = {}
        #: Called (in the generating thread) with each :class:`DemoSegment` once the consumer of
        #: :meth:`stream` asked for more, before the next clip is generated; tests hold a run here.
        self.between_clips: Callable[[DemoSegment], None] | None = None
        if out_dir is None:
            self.out_dir = Path(tempfile.mkdtemp(prefix="talkfast-demo-"))
            atexit.register(shutil.rmtree, self.out_dir, ignore_errors=True)
        else:
            self.out_dir = Path(out_dir)
            self.out_dir.mkdir(parents=True, exist_ok=True)

    @property
    def loaded(self) -> bool:
        return self._pipe is not None

    def pipeline(self):
        """The pipeline, loaded on first call (only once, even with concurrent callers)."""
        with self._lock:
            return self._pipeline_locked()

    def _pipeline_locked(self):
        if self._pipe is None:
            self._pipe = self._loader()
        return self._pipe

    def default_steps(self) -> int:
        if self._default_steps is not None:
            return self._default_steps
        if self._pipe is None:
            return 15
        from ..pipeline.generate import SAMPLING_DEFAULTS

        return SAMPLING_DEFAULTS.get(self._pipe.cfg.name, (25, 3.5))[0]

    def generate(self, image: str | Path | None, audio: str | Path | None, preset: str = "auto",
                 steps: int | float | None = None, seed: int | float | None = None,
                 progress: Callable[[int, int], None] | None = None) -> DemoResult:
        """Validate the form, run one generation (waiting for any other to finish) and return
        the video path and the speed summary. User mistakes raise :class:`TalkfastError`."""
        with contextlib.closing(self.stream(image, audio, preset, steps, seed, progress, segments=False)) as run:
            return list(run)[-1]

    def stream(self, image: str | Path | None, audio: str | Path | None, preset: str = "auto",
               steps: int | float | None = None, seed: int | float | None = None,
               progress: Callable[[int, int], None] | None = None, *,
               segments: bool = True) -> Iterator[DemoSegment | DemoResult]:
        """:meth:`generate` as it goes: with ``segments``, a :class:`DemoSegment` (a small MPEG-TS
        file of the clip's frames and audio, :func:`~talkfast.io.stream.write_segment`, in a folder
        of the output folder) as soon as each clip is ready, and last the :class:`DemoResult` (the
        final video, written by the same writer as without segments). A segment file is the
        consumer's to read at once: the next one (and at the end the folder) replaces it. Holds
        the generation lock until it ends or is closed (closing it early aborts the generation).
        The summary's wall time leaves out the segment encoding and the time spent in the
        consumer (and in :attr:`between_clips`), so it is the generation's own."""
        if not image:
            raise DemoInputError("Upload a portrait image (or pick the bundled example) first.")
        if not audio:
            raise DemoInputError("Upload a speech recording (or pick the bundled example) first.")
        if preset not in PRESETS:
            raise DemoInputError(f"Unknown accelerator preset {preset!r}; choose one of {', '.join(PRESETS)}.")
        n_steps = self._whole(steps, "Steps", 1, 1000) if steps is not None else None
        n_seed = self._whole(seed, "Seed", 0, 2**63 - 1) if seed is not None else self.seed

        from ..accelerators import build_accelerator
        from ..accelerators.tuned import resolve_for
        from ..io.image import to_uint8
        from ..io.stream import write_segment
        from ..pipeline.generate import GenerateOptions

        with self._lock:
            pipe = self._pipeline_locked()
            # the model's tuned setting for the budget (its own steps unless the slider was moved off
            # the model's default), else the documented preset
            choice = resolve_for(preset, pipe, None if n_steps in (None, self.default_steps()) else n_steps)
            if choice.source == "tuned":
                n_steps = choice.steps
            number = next(self._count)
            out = self.out_dir / f"talk-{number:04d}-{preset}.mp4"
            seg_dir = self.out_dir / f"segments-{number:04d}"
            acc = build_accelerator(choice.accel)  # "off" too: its records time every (full) step
            t0, paused = time.perf_counter(), 0.0
            clips = pipe.stream(image, audio, GenerateOptions(steps=n_steps, seed=n_seed, fps=self.fps),
                                output=out, accelerator=acc, progress=progress,
                                extra_sidecar={"accel_choice": choice.describe()})
            try:
                while True:
                    try:
                        clip = next(clips)
                    except StopIteration as stop:
                        result = stop.value
                        break
                    if not segments:
                        continue
                    t_pause = time.perf_counter()
                    seg_dir.mkdir(exist_ok=True)
                    path = write_segment(seg_dir / f"clip-{clip.index:04d}.ts", to_uint8(clip.frames.float().cpu()),
                                         clip.fps, clip.audio, clip.sample_rate,
                                         start_seconds=STREAM_START + clip.start_seconds)
                    seg = DemoSegment(path, clip.index, clip.end_frame - clip.start_frame, clip.start_seconds,
                                      clip.end_seconds - clip.start_seconds, clip.elapsed)
                    self._segment_seconds[str(path)] = seg.seconds
                    yield seg
                    self._segment_seconds.pop(str(path), None)
                    path.unlink(missing_ok=True)
                    if self.between_clips is not None:
                        self.between_clips(seg)
                    paused += time.perf_counter() - t_pause
            except TalkfastError as err:
                raise TalkfastError(self._short_paths(str(err), image, audio)) from err
            finally:
                self._segment_seconds.clear()
                clips.close()  # an early close aborts the generation (no output)
                acc.detach()  # DFA / reference removal must not stay on the shared network
                shutil.rmtree(seg_dir, ignore_errors=True)
            wall = time.perf_counter() - t0 - paused
            self._prune()
            report = speed_report(acc.summary(), wall, self.off_step_seconds)
            if preset == "off" and report.get("seconds_per_full_step"):
                self.off_step_seconds = report["seconds_per_full_step"]  # the baseline for later estimates
        text = format_report(report, preset=preset, frames=result.frames, clips=result.clips,
                             fps=result.sidecar["options"]["fps"],
                             weights=getattr(pipe, "source", ""))
        text += "\n\n" + choice.text() + (f"\n\n_{choice.warning.removeprefix('warning: ')}_" if choice.warning else "")
        yield DemoResult(out, text, report, result.sidecar)

    def segment_seconds(self, path) -> float | None:
        """The duration of a segment :meth:`stream` yielded and has not yet replaced."""
        return self._segment_seconds.get(str(path))

    @staticmethod
    def _whole(value, name: str, lo: int, hi: int) -> int:
        try:
            v = float(value)
        except (TypeError, ValueError):
            raise DemoInputError(f"{name} must be a whole number, got {value!r}.") from None
        if v != int(v) or not lo <= v <= hi:
            raise DemoInputError(f"{name} must be a whole number from {lo} to {hi}, got {value!r}.")
        return int(v)

    @staticmethod
    def _short_paths(message: str, *paths) -> str:
        """Uploads live under long temporary paths: show only their file names."""
        for p in paths:
            if p:
                message = message.replace(str(p), Path(p).name)
        return message

    def _prune(self) -> None:
        runs = sorted(self.out_dir.glob("talk-*.mp4"))
        for old in runs[:-KEEP_RUNS]:
            old.unlink(missing_ok=True)
            old.with_suffix(".json").unlink(missing_ok=True)


# ---------------------------------------------------------------------------------------------
# the Gradio app
# ---------------------------------------------------------------------------------------------


def _gradio():
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    try:
        import gradio as gr
    except ImportError as err:
        raise TalkfastError("the web demo needs gradio: pip install 'talkfast[demo]'") from err
    return gr


def _pass_undecodable_uploads(component):
    """Let uploads that Gradio's image preprocessing cannot open reach talkfast's image loader
    (and its clear error message) as a plain path, instead of failing inside Gradio with an
    internal message. Done on the instance: subclassing a Gradio component writes a .pyi file."""
    original = component.preprocess

    def preprocess(payload):
        try:
            return original(payload)
        except Exception:  # not an image PIL opens: load_image will say what is wrong with it
            path = getattr(payload, "path", None)
            return str(path) if path else None

    component.preprocess = preprocess
    return component


def run_for_ui(engine: DemoEngine, image, audio, preset, steps, seed=None, progress=None):
    """The Generate button run to its end (:func:`stream_for_ui` without the live stream):
    (video path, summary Markdown, details)."""
    with contextlib.closing(stream_for_ui(engine, image, audio, preset, steps, seed, progress, live=False)) as run:
        return list(run)[-1][1:]


def stream_for_ui(engine: DemoEngine, image, audio, preset, steps, seed=None, progress=None, *, live: bool = True):
    """The Generate button: yields (live segment, video, summary, details) for the outputs, first
    once per clip (its segment for the live player, with ``live``; the others unchanged) and last
    with the final video path, the summary Markdown and the details. User mistakes and pipeline
    input errors become ``gr.Error`` (shown as a message in the page)."""
    gr = _gradio()

    def report(done: int, total: int) -> None:
        if progress is not None:
            progress((done, total), desc="denoising", unit="steps")

    try:
        if progress is not None and not engine.loaded:
            progress(0.0, desc="loading the model")
        with contextlib.closing(engine.stream(image, audio, preset, steps, seed, progress=report, segments=live)) as run:
            for item in run:
                if isinstance(item, DemoSegment):
                    note = (f"_{item.start_seconds + item.seconds:.1f} s of video so far: it plays above while the "
                            "rest is generated ..._")
                    yield str(item.path), (None if item.clip == 0 else gr.skip()), note, gr.skip()  # no stale result
    except (TalkfastError, ValueError) as err:  # ValueError: option values the pipeline rejects
        raise gr.Error(str(err), title="Cannot generate", print_exception=False) from err
    details = {"speed": item.report, "accelerator": item.sidecar.get("accelerator", {}),
               "seconds": item.sidecar.get("seconds", {}), "model": item.sidecar.get("model"),
               "weights": item.sidecar.get("weights"), "size": item.sidecar.get("size"),
               "face_detected": item.sidecar.get("face_detected")}
    yield gr.skip(), str(item.video), item.markdown, details


def segments_servable(video_class) -> bool:
    """Whether ``video_class`` (Gradio's ``Video``) has the streaming hooks :func:`_serve_segments`
    replaces, with Gradio 6.31's parameters; another Gradio version falls back to showing the
    video at the end (a warning), never to Gradio's own chunk encoding, which needs the ffmpeg
    and ffprobe programs on PATH."""
    import inspect

    wanted = {"stream_output": ["self", "value", "output_id", "first_chunk"],
              "flush_stream_output": ["self", "output_id"], "end_stream_output": ["self", "output_id"]}
    for name, params in wanted.items():
        hook = getattr(video_class, name, None)
        try:
            if hook is None or list(inspect.signature(hook).parameters) != params:
                return False
        except (TypeError, ValueError):
            return False
    return True


def _serve_segments(component, engine: DemoEngine):
    """Make a ``gr.Video(streaming=True)`` output send the engine's segments to the browser as
    they are. Gradio 6.31's own ``Video.stream_output`` re-encodes every chunk with the ``ffmpeg``
    and ``ffprobe`` programs on PATH, which talkfast does not need or have (it encodes with
    imageio-ffmpeg's binary); its player (hls.js over the ``playlist.m3u8`` Gradio serves) and its
    stream bookkeeping take a chunk as ``{"data": MPEG-TS bytes, "duration": seconds, "extension":
    ".ts"}`` (``MediaStreamChunk``), which :func:`~talkfast.io.stream.write_segment` already makes:
    H.264 + AAC on one timeline. Each segment file is read once and deleted. Done on the instance
    (see :func:`_pass_undecodable_uploads`)."""

    async def stream_output(value, output_id: str, first_chunk: bool):  # noqa: ARG001 (Gradio's signature)
        meta = {"path": output_id, "is_stream": True, "orig_name": "live.mp4", "meta": {"_type": "gradio.FileData"}}
        if value is None:
            return None, meta
        path = Path(str(value))
        seconds = engine.segment_seconds(path)
        if seconds is None:
            raise TalkfastError(f"{path.name} is not a segment of the running generation")
        data = path.read_bytes()
        path.unlink(missing_ok=True)
        return {"data": data, "duration": seconds, "extension": ".ts"}, meta

    async def flush_stream_output(output_id: str):  # noqa: ARG001 (nothing is held back)
        return None

    component.stream_output = stream_output
    component.flush_stream_output = flush_stream_output
    component.end_stream_output = lambda output_id: None
    return component


def build_demo(source, *, out_dir: str | Path | None = None, default_steps: int | None = None):
    """The app as a ``gr.Blocks``. ``source``: a loaded ``TalkingHeadPipeline``, a function that
    loads one (called once, on the first generation) or a :class:`DemoEngine`."""
    gr = _gradio()
    engine = source if isinstance(source, DemoEngine) else DemoEngine(source, out_dir=out_dir, default_steps=default_steps)

    live_ok = segments_servable(gr.Video)
    if not live_ok:
        logger.warning("this Gradio version's streaming video differs from 6.31's (stream_output(value, output_id, "
                       "first_chunk)): the demo shows the video when the run ends, without the live player")

    def on_generate(image, audio, preset, steps, seed, progress=gr.Progress()):
        yield from stream_for_ui(engine, image, audio, preset, steps, seed, progress, live=live_ok)

    # delete_cache: Gradio's copies of uploads and results older than an hour go, hourly.
    with gr.Blocks(title="talkfast demo", analytics_enabled=False, delete_cache=(3600, 3600)) as demo:
        gr.Markdown("# talkfast\nPortrait + speech -> talking-head video, with training-free acceleration.")
        with gr.Row():
            with gr.Column():
                image = _pass_undecodable_uploads(gr.Image(label="Portrait", type="filepath", sources=["upload"],
                                                           image_mode=None, format="png", elem_id="portrait"))
                audio = gr.Audio(label="Speech", type="filepath", sources=["upload"], elem_id="speech")
                if EXAMPLE_PORTRAIT.exists() and EXAMPLE_SPEECH.exists():
                    gr.Examples([[str(EXAMPLE_PORTRAIT), str(EXAMPLE_SPEECH)]], inputs=[image, audio],
                                label="Bundled example", elem_id="examples")
                preset = gr.Radio(list(PRESETS), value="auto", label="Accelerator preset", elem_id="preset",
                                  info="auto = balanced; quality / balanced / fast: the fastest setting 'talkfast tune' "
                                       "measured for this model within >= 36 / 33 / 30 dB of the full run (its own "
                                       "steps unless you move the slider), else a documented preset; off: every step full")
                steps = gr.Slider(1, 100, value=engine.default_steps(), step=1, label="Denoising steps per clip",
                                  elem_id="steps")
                with gr.Accordion("More", open=False):
                    seed = gr.Number(value=engine.seed, precision=0, minimum=0, label="Seed", elem_id="seed")
                run = gr.Button("Generate", variant="primary", elem_id="generate")
            with gr.Column():
                # the clips as they are generated (played from the first one on), then the final video
                live = gr.Video(label="Live (plays while the rest is generated)", streaming=live_ok, visible=live_ok,
                                autoplay=True, interactive=False, buttons=[], elem_id="live")
                if live_ok:
                    _serve_segments(live, engine)
                video = gr.Video(label="Result", format="mp4", interactive=False, elem_id="result")
                summary = gr.Markdown(elem_id="summary")
                with gr.Accordion("Details", open=False):
                    details = gr.JSON(label="Run details", elem_id="details")
        run.click(on_generate, inputs=[image, audio, preset, steps, seed], outputs=[live, video, summary, details],
                  concurrency_limit=1)
    demo.engine = engine  # for callers and tests
    return demo


def launch(demo, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT, *, block: bool = True, quiet: bool = False):
    """Serve ``demo`` on ``host:port`` (never a public share link). ``block`` False returns once
    the server is up (tests); call ``demo.close()`` to stop it."""
    demo.queue(default_concurrency_limit=1)
    return demo.launch(server_name=host, server_port=port, share=False, inbrowser=False, prevent_thread_lock=not block,
                       show_error=True, quiet=quiet, ssr_mode=False, allowed_paths=[str(EXAMPLES_DIR)])


# ---------------------------------------------------------------------------------------------
# command line
# ---------------------------------------------------------------------------------------------


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("demo", help="local web app: upload a portrait and speech, compare presets (needs gradio)")
    p.add_argument("--checkpoint", default=None,
                   help="model folder: a Hallo pretrained_models folder or a talkfast model folder")
    p.add_argument("--random-weights", action="store_true", help="random weights (a smoke test; the video is noise)")
    p.add_argument("--model", default="small", help="preset for --random-weights: small, tiny")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    p.add_argument("--dtype", default="auto", help="auto (fp16 on CUDA, fp32 on CPU), fp32, fp16, bf16")
    p.add_argument("--host", default=DEFAULT_HOST, help=f"address to listen on (default {DEFAULT_HOST}: this machine only)")
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT})")
    return p


def _cannot_listen(host: str, port: int) -> str | None:
    """Why ``host:port`` cannot be listened on (port taken, unknown address), or None."""
    try:
        family, kind, proto, _, addr = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except socket.gaierror as err:
        return f"unknown address ({err.strerror})"
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server does
        try:
            probe.bind(addr)
        except OSError as err:
            return f"{err.strerror or err} (another program is using the port? try --port)"
    return None


def cmd_demo(args) -> int:
    _gradio()  # fail early, before loading the model, if gradio is missing
    from ..pipeline.loader import load_pipeline

    if not 1 <= args.port <= 65535:
        raise DemoInputError(f"--port must be between 1 and 65535, got {args.port}")
    problem = _cannot_listen(args.host, args.port)  # before the model load, not after it
    if problem:
        print(f"error: cannot serve on {args.host}:{args.port}: {problem}", file=sys.stderr)
        return 3
    print("loading the model ...", flush=True)
    pipe = load_pipeline(args.checkpoint, random_weights=args.random_weights, preset=args.model,
                         device=args.device, dtype=args.dtype)
    demo = build_demo(pipe)
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"warning: listening on {args.host}: anyone who can reach this address can use the demo", file=sys.stderr)
    try:
        launch(demo, args.host, args.port, block=False, quiet=True)
    except OSError as err:
        print(f"error: cannot serve on {args.host}:{args.port}: {err}", file=sys.stderr)
        return 3
    host = f"[{args.host}]" if ":" in args.host else args.host
    print(f"talkfast demo on http://{host}:{args.port} (Ctrl+C stops it)", flush=True)
    _serve_until_signal(demo)
    return 0


def _serve_until_signal(demo, grace: float = 10.0) -> None:
    """Serve until SIGINT/SIGTERM, then close the server (waiting at most ``grace`` seconds: a
    stuck connection must not keep the process alive)."""
    import signal

    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        while not stop.wait(0.5):
            pass
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    print("stopping ...", flush=True)
    closer = threading.Thread(target=demo.close, daemon=True)
    closer.start()
    closer.join(grace)
