"""Awkward inputs, bounded memory on a 20-minute recording, and A/V sync, with the tiny random model.

Where each hardened-input case is tested (one test each; the ones that already existed are reused):

==============================================  ==================================================================
case                                            test
==============================================  ==================================================================
no face: full-frame fallback + a warning        test_face.py::test_no_face_fallback (detector),
                                                test_pipeline.py::test_no_face_still_makes_a_video (video)
several faces: the largest wins                 test_face.py::test_keeps_the_largest_of_two_faces (detector),
                                                here: test_several_faces_the_crop_follows_the_largest
tiny face                                       test_face.py::test_small_image_small_face (detector),
                                                here: test_tiny_face (video; below the detector's limit: fallback)
non-square and very large (4000x3000) image     here: test_very_large_non_square_image;
                                                test_pipeline.py::test_image_variants[1600x900]
grayscale / RGBA / 16-bit PNG                   test_pipeline.py::test_image_variants[gray, rgba, gray16, rgb16],
                                                test_io.py::test_load_image_grayscale_and_16bit, ..._rgba_...
corrupt image, corrupt audio                    test_cli.py::test_bad_input_fails_cleanly[corrupt-image,
                                                corrupt-audio] (exit 2, no traceback, nothing written),
                                                test_io.py::test_load_image_errors, ..._random_bytes, ..._truncated_header
silent audio                                    test_cli.py::test_bad_input_fails_cleanly[silent-audio],
                                                test_io.py::test_load_audio_silent
8 / 22.05 / 44.1 / 48 kHz, stereo               test_io.py::test_load_audio_resamples_to_16k, ..._stereo_downmix_...;
                                                end to end: here test_av_sync (8k, 16k, 22.05k stereo, 48k stereo),
                                                test_pipeline.py::test_audio_variants (44.1k stereo, 8k)
unwritable output path                          here: test_unwritable_output_folder (exit 3);
                                                test_cli.py::test_bad_input_fails_cleanly[output-*]
interrupted / failing generation                here: test_interrupted_generation_leaves_nothing
long audio (20 min): memory does not grow with length  here: test_long_audio_memory_is_bounded
==============================================  ==================================================================
"""

from __future__ import annotations

import json
import logging
import math
import os
import subprocess
import sys
import tempfile
import time
import warnings
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from PIL import Image

from talkfast.app.cli import main
from talkfast.face.detect import detect_face
from talkfast.io.audio import load_audio
from talkfast.io.image import square_crop_box
from talkfast.io.video import probe_video
from talkfast.pipeline.generate import GenerateOptions
from talkfast.pipeline.loader import load_pipeline

pytestmark = pytest.mark.usefixtures("one_torch_thread", "restore_logging")

EXAMPLES = Path(__file__).resolve().parent.parent / "src" / "talkfast" / "assets" / "examples"
PORTRAIT = EXAMPLES / "portrait.png"
REPO = Path(__file__).resolve().parent.parent
FAST = dict(steps=1, guidance=1.0)


@pytest.fixture(scope="module")
def pipe():
    return load_pipeline(random_weights=True, preset="tiny", device="cpu", dtype="fp32")


def speech_like(n: int, rate: int, channels: int = 1, seed: int = 0) -> np.ndarray:
    """``n`` samples of a voiced, syllable-modulated tone plus a little noise, (n,) or (n, channels)."""
    t = np.arange(n) / rate
    f0 = 140.0 + 20.0 * np.sin(2 * np.pi * 1.3 * t)
    phase = 2 * np.pi * np.cumsum(f0) / rate
    voice = 0.5 * np.sin(phase) + 0.25 * np.sin(2 * phase) + 0.1 * np.sin(3 * phase)
    mono = 0.5 * voice * (0.55 + 0.45 * np.sin(2 * np.pi * 4.0 * t) ** 2)
    mono = (mono + 0.01 * np.random.default_rng(seed).standard_normal(n)).astype(np.float32)
    return mono if channels == 1 else np.stack([mono * (1.0 - 0.2 * c) for c in range(channels)], axis=1)


def write_wav(path: Path, seconds: float, rate: int = 16000, channels: int = 1) -> Path:
    sf.write(str(path), speech_like(int(round(seconds * rate)), rate, channels), rate, subtype="PCM_16")
    return path


def listing(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def portrait_on_canvas(canvas_size, placements, background=(200, 200, 200)) -> Image.Image:
    """The bundled portrait pasted at ``placements`` [(side, (x, y)), ...] on a plain canvas."""
    src = Image.open(PORTRAIT).convert("RGB")
    canvas = Image.new("RGB", canvas_size, background)
    for side, at in placements:
        canvas.paste(src.resize((side, side), Image.Resampling.LANCZOS), at)
    return canvas


def expected_crop_box(image: Image.Image, size: int) -> tuple[float, float, float, float]:
    """Where the face found in the whole image lands in the pipeline's square crop resized to ``size``."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        found = detect_face(image)
    assert found.detected
    x0, y0, x1, y1 = found.face.to_int()
    left, top, side = square_crop_box(image.width, image.height, ((x0 + x1) / 2, (y0 + y1) / 2))
    k = size / side
    return ((found.face.x0 - left) * k, (found.face.y0 - top) * k, (found.face.x1 - left) * k, (found.face.y1 - top) * k)


def center(box) -> tuple[float, float]:
    return ((box[0] + box[2]) / 2, (box[1] + box[3]) / 2)


# ---------------------------------------------------------------------------------------------
# faces
# ---------------------------------------------------------------------------------------------


def test_several_faces_the_crop_follows_the_largest(pipe) -> None:
    # A 200 px portrait (face ~55 px) on the left, a 400 px one (face ~110 px) on the right.
    image = portrait_on_canvas((900, 500), [(200, (30, 40)), (400, (450, 60))])
    por = pipe.portrait(image)
    assert por.regions.detected
    cx, cy = center(por.regions.face.to_int())
    ex, ey = center(expected_crop_box(image, pipe.cfg.image_size))
    assert abs(cx - ex) <= 2 and abs(cy - ey) <= 2
    # The crop (the 500x500 square on the right) holds the large face, not the small one.
    left, _, side = square_crop_box(900, 500, (655, 250))
    assert left == 400 and side == 500


def test_tiny_face(pipe, tmp_path: Path, caplog) -> None:
    """A ~27 px face in 640x480 is found and followed by the crop; a ~16 px one is below the
    detector's limit: full-frame fallback masks and a warning, and the video is still made."""
    image = tmp_path / "tiny_face.png"
    portrait_on_canvas((640, 480), [(100, (400, 250))]).save(image)
    wav = write_wav(tmp_path / "speech.wav", 0.3)
    out = tmp_path / "out" / "tiny.mp4"

    result = pipe.generate(image, wav, out, GenerateOptions(**FAST))

    assert result.sidecar["face_detected"] is True
    assert probe_video(out).num_frames == 8
    box = result.sidecar["face_box"]
    ex, ey = center(expected_crop_box(Image.open(image), pipe.cfg.image_size))
    assert abs(center(box)[0] - ex) <= 1.5 and abs(center(box)[1] - ey) <= 1.5

    smaller = portrait_on_canvas((640, 480), [(60, (400, 250))])
    with caplog.at_level(logging.WARNING):
        por = pipe.portrait(smaller, name="smaller.png")
    assert not por.regions.detected
    # The documented full-frame fallback (talkfast/face/masks.py): no background, face + lip everywhere.
    for full, face, lip in zip(por.masks.full, por.masks.face, por.masks.lip):
        assert float(full.abs().max()) == 0.0
        torch.testing.assert_close(face + lip, torch.ones_like(face))
    assert any("no face found" in r.getMessage() and "smaller.png" in r.getMessage() for r in caplog.records)


def test_very_large_non_square_image(pipe, tmp_path: Path) -> None:
    """4000x3000 with the face off-centre: the largest square around the face is used, and the face
    stays known in it even when the resized crop is too small to detect it again (it was lost
    before: the video fell back to full-frame masks)."""
    image = tmp_path / "large.png"
    portrait_on_canvas((4000, 3000), [(1200, (2500, 900))], background=(90, 120, 150)).save(image)
    wav = write_wav(tmp_path / "speech.wav", 0.3)
    out = tmp_path / "large.mp4"

    result = pipe.generate(image, wav, out, GenerateOptions(**FAST))

    info = probe_video(out)
    assert (info.width, info.height, info.num_frames) == (64, 64, 8)
    assert result.sidecar["face_detected"] is True
    expected = expected_crop_box(Image.open(image), pipe.cfg.image_size)
    assert np.allclose(result.sidecar["face_box"], expected, atol=1.0)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["large.json", "large.mp4", "large.png", "speech.wav"]


# ---------------------------------------------------------------------------------------------
# outputs: unwritable, interrupted
# ---------------------------------------------------------------------------------------------


def _unwritable_folder(tmp_path: Path) -> Path:
    """A folder in which creating a file fails: read-only for a normal user; for root (who may
    write anyway) a process folder of /proc."""
    folder = tmp_path / "readonly"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        with tempfile.NamedTemporaryFile(dir=folder):
            pass
    except OSError:
        return folder
    folder.chmod(0o755)
    if not Path("/proc/self").is_dir():
        pytest.skip("no way to make an unwritable folder here")
    return Path("/proc/self")


def test_unwritable_output_folder(capsys, tmp_path: Path) -> None:
    folder = _unwritable_folder(tmp_path)
    before = sorted(os.listdir(folder))
    wav = write_wav(tmp_path / "speech.wav", 0.3)
    out = folder / "talk.mp4"
    code = main(["generate", "--random-weights", "--model", "tiny", "--steps", "1", "-q", "-s", str(PORTRAIT),
                 "-a", str(wav), "-o", str(out)])
    err = capsys.readouterr().err
    assert code == 3, err
    assert err.startswith("error: ") and "not writable" in err and "Traceback" not in err
    assert not out.exists() and sorted(os.listdir(folder)) == before
    if folder != Path("/proc/self"):
        folder.chmod(0o755)


def test_interrupted_generation_leaves_nothing(pipe, tmp_path: Path) -> None:
    """Ctrl-C (or any error) after the first clip has been encoded: no output, no temporaries."""
    wav = write_wav(tmp_path / "speech.wav", 0.6)
    out_dir = tmp_path / "out"
    seen = []

    def interrupt(frames):
        seen.append(frames.shape[0])
        deadline = time.monotonic() + 300  # an outer bound only: the encoder starts in well under a second
        while not list(out_dir.glob(".talk.mp4.*")):  # the encoder has its temporary file open
            assert time.monotonic() < deadline, "the encoder never started"
            time.sleep(0.01)
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        pipe.generate(PORTRAIT, wav, out_dir / "talk.mp4", GenerateOptions(**FAST), on_clip=interrupt)
    assert seen == [4]
    assert listing(out_dir) == []


# ---------------------------------------------------------------------------------------------
# A/V sync
# ---------------------------------------------------------------------------------------------

# seconds -> (sample rate, channels) of the file: every length is also a resampling / downmix case.
SOURCES = {0.3: (8000, 1), 1.0: (16000, 1), 1.37: (22050, 2), 2.9: (48000, 2)}


@pytest.mark.parametrize("fps", [25, 30, 24])
@pytest.mark.parametrize("seconds", list(SOURCES))
def test_av_sync(pipe, tmp_path: Path, seconds: float, fps: int) -> None:
    """frames == ceil(duration * fps) (the pipeline's rule, clip length 4 does not divide it) and
    the audio track is as long as the video, within one frame."""
    rate, channels = SOURCES[seconds]
    wav = write_wav(tmp_path / "speech.wav", seconds, rate, channels)
    n = sf.info(str(wav)).frames
    frames = math.ceil(Fraction(n * fps, rate))  # from the file itself, exact
    assert frames == load_audio(wav).num_frames(fps)  # the pipeline's definition agrees
    out = tmp_path / "sync.mp4"

    result = pipe.generate(PORTRAIT, wav, out, GenerateOptions(fps=fps, **FAST))

    assert result.frames == frames
    info = probe_video(out)
    assert info.num_frames == frames
    assert info.fps == pytest.approx(fps)
    assert info.video_duration == pytest.approx(frames / fps)
    assert info.has_audio
    assert abs(info.audio_duration - info.video_duration) < 1.0 / fps
    assert info.audio_duration >= n / rate - 1e-3  # none of the speech is cut


# ---------------------------------------------------------------------------------------------
# a 20-minute recording: memory does not grow with the length
# ---------------------------------------------------------------------------------------------

# The measured process: the real pipeline on a real file, with constant-cost stand-ins for the
# networks and the per-clip audio features (each clip's features read a bounded window of the
# waveform: test_pipeline.py::test_clip_features_read_a_bounded_audio_segment). What runs for real
# is everything whose work grows with the length: decoding, downmixing and resampling the file,
# the loop over every clip, the encoder fed every frame, and the muxing of the whole audio track.
CHILD = r'''
import json, sys, time
import numpy as np, torch
torch.set_num_threads(1)
from talkfast.io.audio import Audio
from talkfast.pipeline.generate import GenerateOptions
from talkfast.pipeline.loader import load_pipeline

wav, out, portrait, fps = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
pipe = load_pipeline(random_weights=True, preset="tiny", device="cpu", dtype="fp32")
cfg = pipe.cfg
size, h = cfg.image_size, cfg.image_size // cfg.vae_scale_factor
pipe.encode = lambda pixels: torch.zeros(pixels.shape[0], cfg.latent_channels, h, h)
pipe.decode = lambda latents, chunk=1: torch.linspace(0, 1, size).expand(latents.shape[2], 3, size, size)  # not blank
pipe.net.write_reference = lambda *a, **k: None
pipe.net.denoise = lambda x, t, cond, plan: torch.zeros_like(x)
width = cfg.audio_window
feature_shape = (width, cfg.audio_layers, cfg.audio_feature_dim)
pipe.audio.clip = lambda audio, start, frames, fps=None: torch.zeros(frames, *feature_shape)
opts = GenerateOptions(steps=1, guidance=1.0, fps=fps)
pipe.generate(portrait, Audio(np.full(16000, 0.1, np.float32), 16000, 16000, 1), None, opts)  # warm-up


def peak_kb():
    with open("/proc/self/status") as fh:
        return next(int(line.split()[1]) for line in fh if line.startswith("VmHWM:"))


with open("/proc/self/clear_refs", "w") as fh:
    fh.write("5")  # reset the peak RSS: only the measured generation counts
start = peak_kb()
t0 = time.perf_counter()
result = pipe.generate(portrait, wav, out, opts)
print(json.dumps({"start_mb": start / 1024, "peak_mb": peak_kb() / 1024, "frames": result.frames,
                  "seconds": time.perf_counter() - t0}))
'''


def _write_long_wav(path: Path, seconds: int, rate: int) -> None:
    """Written a minute at a time, so this test process stays small too."""
    with sf.SoundFile(str(path), "w", samplerate=rate, channels=1, subtype="PCM_16") as f:
        for start in range(0, seconds, 60):
            f.write(speech_like(min(60, seconds - start) * rate, rate, seed=start))


def _peak_of_generation(tmp_path: Path, wav: Path, out: Path, fps: int) -> dict:
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(script), str(wav), str(out), str(PORTRAIT), str(fps)],
                          capture_output=True, text=True, timeout=400, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.slow  # a 20-minute recording through the pipeline: about half a minute
@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux /proc to measure peak RSS")
def test_long_audio_memory_is_bounded(tmp_path: Path) -> None:
    """A 20-minute 22.05 kHz recording against a 2-minute one, at 1 fps (1200 frames, 300 clips):
    the peak memory grows by no more than the 16 kHz waveform kept for the run (64 KB per second,
    230 MB per hour; 66 MiB more here). Before load_audio and save_wav streamed, a 1-hour file alone took 1.5 GB
    (source-rate float32 data, float64 downmix and resampling copies, then three float32 copies
    while writing the WAV to mux)."""
    rate, fps = 22050, 1
    short_s, long_s = 120, 1200
    inputs = tmp_path / "in"
    inputs.mkdir()
    _write_long_wav(inputs / "short.wav", short_s, rate)
    _write_long_wav(inputs / "long.wav", long_s, rate)
    out = tmp_path / "out"

    short = _peak_of_generation(tmp_path, inputs / "short.wav", out / "short.mp4", fps)
    long = _peak_of_generation(tmp_path, inputs / "long.wav", out / "long.mp4", fps)

    assert (short["frames"], long["frames"]) == (short_s * fps, long_s * fps)
    waveform_mb = (long_s - short_s) * 16000 * 4 / 2**20  # the extra 16 kHz float32 samples: 66 MiB
    growth = long["peak_mb"] - short["peak_mb"]
    assert growth <= waveform_mb + 48, (short, long)
    info = probe_video(out / "long.mp4")
    assert info.num_frames == long_s * fps and info.has_audio
    assert abs(info.audio_duration - long_s) < 1.0 / fps
    assert listing(out) == ["long.json", "long.mp4", "short.json", "short.mp4"]
