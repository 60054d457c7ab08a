"""Tests of ``talkfast demo`` (the Gradio web app): the speed summary and its estimate, the form's
error messages, one model per process with one generation at a time, and an end-to-end run in a
headless Debian chromium driven by Playwright (tiny random-weights model, few steps).

The browser test is skipped only when Playwright or chromium is missing (CI installs both). Its
screenshots go to $TALKFAST_ARTIFACTS, else tests/artifacts/ (ignored by git)."""

from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from talkfast.app import demo as demo_app
from talkfast.app.cli import build_parser, main
from talkfast.app.demo import DemoEngine, format_report, run_for_ui, speed_report

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = REPO / "src" / "talkfast" / "assets" / "examples"
PORTRAIT, SPEECH = EXAMPLES / "portrait.png", EXAMPLES / "speech.wav"
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                  "--disable-sync", "--no-first-run"]
# gradio's queue calls pandas options that pandas 3 deprecates; not ours to fix.
pytestmark = [pytest.mark.usefixtures("one_torch_thread"),
              pytest.mark.filterwarnings("ignore:'future.no_silent_downcasting' is deprecated"),
              pytest.mark.filterwarnings("ignore:The copy keyword is deprecated")]


@pytest.fixture(scope="module")
def tiny_pipe():
    from talkfast.pipeline.loader import load_pipeline

    return load_pipeline(random_weights=True, preset="tiny", device="cpu", dtype="fp32")


@pytest.fixture(scope="module")
def short_wav(tmp_path_factory) -> Path:
    """0.3 s of a voiced-like tone: a few frames, so a generation takes well under a second."""
    rate = 16000
    t = np.arange(int(0.3 * rate)) / rate
    wave = 0.3 * np.sin(2 * np.pi * 140 * t) * (0.6 + 0.4 * np.sin(2 * np.pi * 4 * t))
    path = tmp_path_factory.mktemp("demo_inputs") / "short.wav"
    sf.write(str(path), wave.astype(np.float32), rate, subtype="PCM_16")
    return path


def artifacts_dir() -> Path:
    d = Path(os.environ.get("TALKFAST_ARTIFACTS") or REPO / "tests" / "artifacts")
    d.mkdir(parents=True, exist_ok=True)
    return d


# ---------------------------------------------------------------------------------------------
# the speed summary
# ---------------------------------------------------------------------------------------------

ACCELERATED = {"method": "lightningcp", "steps": 12, "full_steps": 3, "reduced_steps": 9, "model_calls": 6,
               "model_seconds": 3.0, "seconds_per_step": 0.25, "estimated_baseline_seconds": 8.4}


def test_speed_report_estimates_the_unaccelerated_time() -> None:
    r = speed_report(ACCELERATED, wall_seconds=5.0)
    assert r["full_steps"] == 3 and r["reduced_steps"] == 9
    assert r["other_seconds"] == pytest.approx(2.0)  # wall time outside the network
    assert r["seconds_per_full_step"] == pytest.approx(0.7)  # 8.4 s / 12 steps
    # estimate = per-full-step time x all steps + the (unchanged) time outside the network
    assert r["estimated_unaccelerated_seconds"] == pytest.approx(8.4 + 2.0)
    assert r["estimated_speedup"] == pytest.approx(10.4 / 5.0)
    text = format_report(r, preset="fast", frames=50, clips=3, fps=25, weights="random:tiny")
    assert "3 full + 9 reduced" in text and "6 model calls" in text
    assert "5.0 s" in text and "~10.4 s" in text and "~2.08x" in text
    assert text.count("estimate") >= 2 and "not measured" in text  # labelled as an estimate, never as a measurement
    assert "from this run's full steps" in text and "run the `off` preset once" in text
    assert "(2.0 s at 25 fps)" in text and "3 clips x 4 steps" in text
    assert "video is noise" in text


def test_speed_report_prefers_a_measured_off_run() -> None:
    r = speed_report(ACCELERATED, wall_seconds=5.0, baseline_step_seconds=0.9)
    assert r["estimate_basis"] == "off run" and r["estimate_step_seconds"] == pytest.approx(0.9)
    assert r["estimated_unaccelerated_seconds"] == pytest.approx(2.0 + 0.9 * 12)
    assert r["seconds_per_full_step"] == pytest.approx(0.7)  # this run's own figure is still reported
    text = format_report(r, preset="balanced", frames=50, clips=3, fps=25, weights="/models/x")
    assert "~12.8 s" in text and "measured by the last `off` run" in text and "~2.56x" in text
    assert "compare with the `off` preset" in text  # real weights: a word on quality instead of the noise note


def test_speed_report_off_is_the_baseline() -> None:
    summary = {"method": "off", "steps": 8, "full_steps": 8, "reduced_steps": 0, "model_calls": 8, "model_seconds": 4.0}
    r = speed_report(summary, wall_seconds=6.0)
    assert r["seconds_per_full_step"] == pytest.approx(0.5)
    assert "estimated_unaccelerated_seconds" not in r and "estimated_speedup" not in r
    text = format_report(r, preset="off", frames=25, clips=2, fps=25, weights="/models/x")
    assert "all full, none skipped" in text and "unaccelerated baseline" in text
    assert "speed-up" not in text and "noise" not in text


def test_speed_report_accelerator_with_nothing_reduced() -> None:
    summary = {"method": "lightningcp", "steps": 2, "full_steps": 2, "reduced_steps": 0, "model_calls": 2, "model_seconds": 1.0}
    text = format_report(speed_report(summary, 1.5), preset="fast", frames=4, clips=2, fps=25)
    assert "nothing to compare" in text and "speed-up" not in text


# ---------------------------------------------------------------------------------------------
# the command line
# ---------------------------------------------------------------------------------------------


def test_demo_command_options() -> None:
    parser = build_parser()
    args = parser.parse_args(["demo", "--random-weights", "--model", "tiny"])
    assert (args.host, args.port, args.device, args.dtype, args.checkpoint) == ("127.0.0.1", 7860, "auto", "auto", None)
    assert args.random_weights and args.model == "tiny"
    args = parser.parse_args(["demo", "--checkpoint", "m", "--port", "8000", "--host", "0.0.0.0", "--device", "cpu"])
    assert (args.checkpoint, args.port, args.host, args.device) == ("m", 8000, "0.0.0.0", "cpu")
    with pytest.raises(SystemExit):  # never a public share link
        parser.parse_args(["demo", "--share"])


def test_demo_command_serves_and_stops_on_ctrl_c() -> None:
    """The real console entry point in a fresh interpreter: serves the page, stops on SIGINT."""
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "talkfast", "demo", "--random-weights", "--model", "tiny",
                             "--device", "cpu", "--port", str(port)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env=env)
    lines: list[str] = []
    try:
        reader = threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True)
        reader.start()
        deadline = time.monotonic() + 600  # an outer bound only: the server starts in seconds
        while not any("talkfast demo on" in line for line in lines):
            assert proc.poll() is None, "".join(lines)
            assert time.monotonic() < deadline, "".join(lines)
            time.sleep(0.2)
        assert f"http://127.0.0.1:{port}" in "".join(lines)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=30) as page:
            assert page.status == 200 and b"talkfast" in page.read()
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 0, "".join(lines)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_demo_command_port_in_use(capsys) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        root = logging.getLogger()
        handlers = list(root.handlers)
        try:
            code = main(["demo", "--random-weights", "--model", "tiny", "--device", "cpu", "--port", str(port)])
        finally:
            for h in list(root.handlers):
                if h not in handlers:
                    root.removeHandler(h)
    assert code == 3
    assert f"error: cannot serve on 127.0.0.1:{port}" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# the engine and the form's errors
# ---------------------------------------------------------------------------------------------


def test_bad_inputs_become_clear_gr_errors(tiny_pipe, short_wav: Path, tmp_path: Path) -> None:
    import gradio as gr

    out = tmp_path / "out"
    engine = DemoEngine(tiny_pipe, out_dir=out)
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"this is not an image")
    silent = tmp_path / "silent.wav"
    sf.write(str(silent), np.zeros(8000, np.float32), 16000)
    cases = [
        ((None, short_wav, "fast", 1), "Upload a portrait"),
        ((PORTRAIT, None, "fast", 1), "Upload a speech recording"),
        ((PORTRAIT, short_wav, "fast", 0), "Steps must be a whole number from 1"),
        ((PORTRAIT, short_wav, "fast", 2.5), "Steps must be a whole number"),
        ((PORTRAIT, short_wav, "turbo", 1), "Unknown accelerator preset 'turbo'"),
        ((broken, short_wav, "fast", 1), "broken.png is not a recognised image"),
        ((PORTRAIT, silent, "fast", 1), "silent.wav"),
    ]
    for (image, audio, preset, steps), expected in cases:
        image = str(image) if image else None
        audio = str(audio) if audio else None
        with pytest.raises(gr.Error) as err:
            run_for_ui(engine, image, audio, preset, steps)
        assert expected in err.value.message, (expected, err.value.message)
        assert str(tmp_path) not in err.value.message  # upload paths are shortened to file names
    assert sorted(p.name for p in out.iterdir()) == []  # nothing partial left behind


def test_model_loads_once_and_generations_take_turns(tiny_pipe, short_wav: Path, tmp_path: Path) -> None:
    calls = []

    def loader():
        calls.append(threading.get_ident())
        time.sleep(0.2)  # widen the window for a second load
        return tiny_pipe

    engine = DemoEngine(loader, out_dir=tmp_path)
    assert not engine.loaded
    net = tiny_pipe.net

    def state():
        procs = [(n, id(m.processor)) for n, m in net.named_modules() if hasattr(m, "processor")]
        return procs, [(k, r.enabled) for k, r in net.readers.items()]

    before = state()
    results, errors = {}, []

    def worker(preset: str) -> None:
        try:
            results[preset] = engine.generate(str(PORTRAIT), str(short_wav), preset, 6)
        except Exception as err:  # reported below
            errors.append(err)

    threads = [threading.Thread(target=worker, args=(p,)) for p in ("fast", "off")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    assert len(calls) == 1  # loaded once for both
    assert state() == before  # DFA / reference removal were detached after the fast run
    fast, off = results["fast"], results["off"]
    assert fast.video != off.video and fast.video.exists() and off.video.exists()
    assert fast.report["reduced_steps"] > 0 and "estimated_unaccelerated_seconds" in fast.report
    assert off.report["reduced_steps"] == 0 and off.report["full_steps"] == off.report["steps"] > 0
    assert "reduced" in fast.markdown and "baseline" in off.markdown
    # Once an `off` run has been measured, later estimates use its per-step time.
    again = engine.generate(str(PORTRAIT), str(short_wav), "balanced", 6)
    assert again.report["estimate_basis"] == "off run"
    assert again.report["estimate_step_seconds"] == pytest.approx(off.report["seconds_per_full_step"])
    assert len(calls) == 1


# ---------------------------------------------------------------------------------------------
# end to end in a browser
# ---------------------------------------------------------------------------------------------


def chromium_path() -> str | None:
    found = shutil.which("chromium")
    if found:
        return found
    return "/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def browser_tools():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("playwright is not installed (pip install playwright; CI installs it)")
    exe = chromium_path()
    if exe is None:
        pytest.skip("Debian chromium is not installed (apt-get install chromium; scripts/install.sh does it)")
    return sync_playwright, exe


@pytest.fixture(scope="module")
def server(tiny_pipe, browser_tools, tmp_path_factory):
    before = os.environ.get("GRADIO_TEMP_DIR")
    os.environ["GRADIO_TEMP_DIR"] = str(tmp_path_factory.mktemp("gradio_cache"))  # uploads: not the shared /tmp/gradio
    demo = demo_app.build_demo(tiny_pipe, out_dir=tmp_path_factory.mktemp("demo_out"))
    port = free_port()
    demo_app.launch(demo, "127.0.0.1", port, block=False, quiet=True)
    try:
        yield demo, f"http://127.0.0.1:{port}/"
    finally:
        demo.close()
        if before is None:
            os.environ.pop("GRADIO_TEMP_DIR", None)
        else:
            os.environ["GRADIO_TEMP_DIR"] = before


# Set once the page has shown the pipeline's progress ("denoising: n/N steps"), however briefly.
WATCH_PROGRESS = """() => {
  window.__sawProgress = false;
  new MutationObserver(() => {
    if (!window.__sawProgress && /denoising/.test(document.body.innerText)) window.__sawProgress = true;
  }).observe(document.body, {subtree: true, childList: true, characterData: true});
}"""

VIDEO_READY = """() => {
  const v = document.querySelector('#result video');
  return !!v && !!v.getAttribute('src') && v.readyState >= 1 && v.duration > 0;
}"""


def test_browser_generates_and_plays_a_video(server, browser_tools, tmp_path: Path) -> None:
    sync_playwright, exe = browser_tools
    demo, url = server
    shots = artifacts_dir()
    with sync_playwright() as pw:
        ctx = pw.chromium.launch_persistent_context(str(tmp_path / "profile"), executable_path=exe, headless=True,
                                                    args=CHROMIUM_FLAGS, viewport={"width": 1280, "height": 1100})
        page = ctx.new_page()
        try:
            page.goto(url)
            page.wait_for_selector("#generate", timeout=30_000)

            # Nothing uploaded yet: a clear message, no crash.
            page.click("#generate")
            page.get_by_text("Upload a portrait image").first.wait_for(timeout=15_000)

            # A file that is not an image: talkfast's own message, upload path shortened to the name.
            broken = tmp_path / "broken.png"
            broken.write_bytes(b"this is not an image")
            page.locator("#portrait input[type=file]").set_input_files(str(broken))
            page.locator("#speech input[type=file]").set_input_files(str(SPEECH))
            page.wait_for_selector("#portrait img[src*='broken.png']", state="attached", timeout=15_000)
            page.locator("#speech").get_by_text("0:04").first.wait_for(timeout=15_000)  # the 4.4 s speech is in
            page.click("#generate")
            page.get_by_text("broken.png is not a recognised image").first.wait_for(timeout=15_000)

            page.locator("#portrait input[type=file]").set_input_files(str(PORTRAIT))
            page.wait_for_selector("#portrait img[src*='portrait.png']", timeout=15_000)
            page.locator("#preset").get_by_label("fast").check()
            steps = page.locator("#steps input[type=number]")
            steps.fill("4")
            steps.press("Enter")
            page.evaluate(WATCH_PROGRESS)
            page.click("#generate")

            page.wait_for_function(VIDEO_READY, timeout=300_000)  # an outer bound only
            src = page.locator("#result video").get_attribute("src")
            body = page.request.get(src).body()
            assert body[4:8] == b"ftyp", "the served result is not an mp4"
            duration = page.evaluate("() => document.querySelector('#result video').duration")
            assert duration == pytest.approx(4.4, abs=0.2)  # the bundled speech is 4.4 s

            summary = page.locator("#summary")
            summary.get_by_text("reduced").first.wait_for(timeout=10_000)
            text = summary.inner_text()
            # 28 clips x 4 steps; keys: step 0 and the last (every 6th + last)
            assert "Preset fast" in text and "56 full + 56 reduced" in text
            assert "estimated time without acceleration" in text and "estimate" in text
            assert page.evaluate("() => window.__sawProgress"), "no progress was shown while generating"
            page.screenshot(path=str(shots / "demo_result.png"), full_page=True)
        except Exception:
            page.screenshot(path=str(shots / "demo_failure.png"), full_page=True)
            raise
        finally:
            ctx.close()
    assert demo.server_name == "127.0.0.1"
    assert list(demo.engine.out_dir.glob("*.mp4"))


# ---------------------------------------------------------------------------------------------
# the live stream: a playable segment per clip while the rest is generated
# ---------------------------------------------------------------------------------------------


def decode_rgb(path: Path) -> np.ndarray:
    import imageio_ffmpeg

    reader = imageio_ffmpeg.read_frames(str(path))
    meta = next(reader)
    w, h = meta["size"]
    frames = np.stack([np.frombuffer(f, np.uint8).reshape(h, w, 3) for f in reader])
    return frames


def test_stream_yields_a_playable_segment_per_clip(tiny_pipe, short_wav: Path, tmp_path: Path) -> None:
    """Each clip becomes a small MPEG-TS file (H.264 + AAC) on one timeline as soon as it is ready;
    the segments' frames add up to the final video's, which is the plain generation's video."""
    from talkfast.io.video import probe_video

    engine = DemoEngine(tiny_pipe, out_dir=tmp_path / "out")
    seen: list[tuple[int, int, float, int]] = []
    last = None
    for item in engine.stream(str(PORTRAIT), str(short_wav), "fast", 2):
        last = item
        if isinstance(item, demo_app.DemoSegment):
            assert item.path.parent.parent == engine.out_dir and item.path.suffix == ".ts"
            info = probe_video(item.path)  # decodes the segment: video and audio
            assert info.has_audio and info.audio_duration > 0
            assert engine.segment_seconds(item.path) == pytest.approx(item.seconds)
            seen.append((item.clip, len(decode_rgb(item.path)), item.start_seconds, item.frames))
    assert isinstance(last, demo_app.DemoResult)
    assert [c for c, *_ in seen] == list(range(len(seen))) and len(seen) >= 2
    assert all(n == frames for _, n, _, frames in seen)  # every frame of a segment decodes
    final = decode_rgb(last.video)
    assert sum(n for _, n, _, _ in seen) == len(final) == last.sidecar["frames"]
    fps = last.sidecar["options"]["fps"]
    starts = np.cumsum([0] + [n for _, n, _, _ in seen[:-1]]) / fps
    assert [s for _, _, s, _ in seen] == pytest.approx(list(starts))  # one timeline, no gap
    # Segment files and their folder are gone once the run ended.
    assert not list(engine.out_dir.glob("segments-*")) and not list(engine.out_dir.rglob("*.ts"))
    assert "reduced" in last.markdown or "full" in last.markdown

    plain = engine.generate(str(PORTRAIT), str(short_wav), "fast", 2)
    np.testing.assert_array_equal(decode_rgb(plain.video), final)  # the same frames as without the live stream
    assert plain.report["steps"] == last.report["steps"]


# The live player has data to show (or is playing) - hls.js appends the segments it fetched.
LIVE_PLAYABLE = """() => {
  const v = document.querySelector('#live video');
  return !!v && (v.readyState >= 2 || v.currentTime > 0);
}"""


def test_browser_plays_the_first_clip_while_the_rest_is_generated(server, browser_tools, short_wav: Path,
                                                                  tmp_path: Path) -> None:
    """The generation is held after its first clip (in the generating thread) until the page has
    a playable live video: that it plays before the run ends is a matter of order, not timing."""
    sync_playwright, exe = browser_tools
    demo, url = server
    engine = demo.engine
    held, release = threading.Event(), threading.Event()
    clips_seen: list[int] = []

    def hold(segment) -> None:
        clips_seen.append(segment.clip)
        if segment.clip == 0:
            held.set()
            release.wait(600)  # released by the test below (an outer bound only)

    engine.between_clips = hold
    shots = artifacts_dir()
    try:
        with sync_playwright() as pw:
            ctx = pw.chromium.launch_persistent_context(str(tmp_path / "profile"), executable_path=exe, headless=True,
                                                        args=CHROMIUM_FLAGS, viewport={"width": 1280, "height": 1100})
            page = ctx.new_page()
            try:
                page.goto(url)
                page.wait_for_selector("#generate", timeout=30_000)
                page.locator("#portrait input[type=file]").set_input_files(str(PORTRAIT))
                page.locator("#speech input[type=file]").set_input_files(str(short_wav))
                page.wait_for_selector("#portrait img[src*='portrait.png']", timeout=15_000)
                page.locator("#speech").get_by_text("0:00").first.wait_for(timeout=15_000)  # the 0.3 s speech is in
                page.locator("#preset").get_by_label("fast").check()
                steps = page.locator("#steps input[type=number]")
                steps.fill("2")
                steps.press("Enter")
                page.click("#generate")

                # whichever comes first: a playable live video, or the final video (the run over)
                page.wait_for_function(f"() => ({LIVE_PLAYABLE})() || ({VIDEO_READY})()", timeout=300_000)
                assert page.evaluate(LIVE_PLAYABLE), "no playable live video before the generation ended"
                assert held.is_set() and not release.is_set() and clips_seen == [0]
                assert page.locator("#result video").count() == 0  # no final video yet: the run is not over
                assert "while the rest is generated" in page.locator("#summary").inner_text()
                assert (page.locator("#live video").get_attribute("src") or "").startswith("blob:")  # hls.js (MSE)
                page.screenshot(path=str(shots / "demo_live.png"), full_page=True)
                release.set()

                page.wait_for_function(VIDEO_READY, timeout=300_000)
                assert clips_seen == list(range(len(clips_seen))) and len(clips_seen) >= 2
                duration = page.evaluate("() => document.querySelector('#result video').duration")
                assert duration == pytest.approx(0.3, abs=0.1)
                page.locator("#summary").get_by_text("wall time").first.wait_for(timeout=30_000)
                # The live stream got every clip, on one timeline: one buffered range to the video's end.
                page.wait_for_function("""() => { const v = document.querySelector('#live video');
                    return v.buffered.length > 0 && v.buffered.end(v.buffered.length - 1) >= 0.28; }""",
                                       timeout=120_000)
                ranges = page.evaluate("""() => { const b = document.querySelector('#live video').buffered;
                    return Array.from({length: b.length}, (_, i) => [b.start(i), b.end(i)]); }""")
                assert len(ranges) == 1 and ranges[0][0] < 0.1, ranges
            except Exception:
                page.screenshot(path=str(shots / "demo_live_failure.png"), full_page=True)
                raise
            finally:
                ctx.close()
    finally:
        release.set()
        engine.between_clips = None
    assert not list(engine.out_dir.glob("segments-*"))  # the segments were cleaned up


def test_stream_left_early_aborts_and_cleans_up(tiny_pipe, short_wav: Path, tmp_path: Path) -> None:
    """A page closed mid-run (Gradio closes the iterator): no final video, no segment left, the
    network restored and the lock free for the next run."""
    engine = DemoEngine(tiny_pipe, out_dir=tmp_path / "out")
    run = engine.stream(str(PORTRAIT), str(short_wav), "fast", 2)
    first = next(run)
    assert isinstance(first, demo_app.DemoSegment) and first.path.is_file()
    run.close()
    assert sorted(p.name for p in engine.out_dir.iterdir()) == []
    assert engine.segment_seconds(first.path) is None
    assert engine._lock.acquire(blocking=False)  # released (not waited for: that could hang)
    engine._lock.release()
    again = engine.generate(str(PORTRAIT), str(short_wav), "fast", 2)
    assert again.video.is_file()


def test_live_player_only_with_gradio_631s_streaming_hooks():
    """The live player replaces Gradio 6.31's Video.stream_output hooks; a Gradio whose hooks
    differ gets the video at the end instead (never Gradio's own chunk encoding)."""
    import gradio as gr

    assert demo_app.segments_servable(gr.Video)

    class Renamed:  # gr.Video's hooks, one with a changed signature (not a gr.Video subclass: Gradio
        # would write a .pyi stub of it beside this file)
        stream_output = gr.Video.stream_output
        flush_stream_output = gr.Video.flush_stream_output
        end_stream_output = gr.Video.end_stream_output

    assert demo_app.segments_servable(Renamed)

    async def changed(self, value, output_id, first_chunk, extra=None):
        return None

    Renamed.stream_output = changed

    class Missing:
        pass

    assert not demo_app.segments_servable(Renamed)
    assert not demo_app.segments_servable(Missing)
