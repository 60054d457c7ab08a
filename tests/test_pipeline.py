"""End-to-end tests of the talking-head pipeline with random weights and the ``tiny`` preset.

The pipeline is built once per module; the inputs are synthetic (speech-like tones, gradients) and
short (0.5 - 1.3 s) so that the whole file runs in seconds on 2 CPU cores.
"""

from __future__ import annotations

import json
import logging
import math
import warnings
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from PIL import Image

from talkfast.audio.features import window_features
from talkfast.io.audio import Audio, load_audio
from talkfast.io.video import probe_video
from talkfast.pipeline.conditioning import AudioConditioner
from talkfast.pipeline.generate import GenerateOptions
from talkfast.pipeline.loader import load_pipeline

pytestmark = pytest.mark.usefixtures("one_torch_thread")

EXAMPLES = Path(__file__).resolve().parent.parent / "src" / "talkfast" / "assets" / "examples"
PORTRAIT = EXAMPLES / "portrait.png"

# One denoising step keeps every run cheap; the code path is the same as with more steps.
FAST = dict(steps=1)


# ---------------------------------------------------------------------------------------------
# helpers and fixtures
# ---------------------------------------------------------------------------------------------


def speech_like(seconds: float, rate: int = 16000, channels: int = 1, seed: int = 0) -> np.ndarray:
    """A few harmonics of a wobbling pitch, amplitude-modulated at a syllable rate, plus noise."""
    n = int(round(seconds * rate))
    t = np.arange(n) / rate
    rng = np.random.default_rng(seed)
    f0 = 140.0 + 20.0 * np.sin(2 * np.pi * 1.3 * t)
    phase = 2 * np.pi * np.cumsum(f0) / rate
    voice = sum(a * np.sin(k * phase) for k, a in ((1, 0.5), (2, 0.25), (3, 0.15), (5, 0.08)))
    envelope = 0.55 + 0.45 * np.sin(2 * np.pi * 4.0 * t) ** 2
    mono = 0.4 * voice * envelope + 0.01 * rng.standard_normal(n)
    mono = np.clip(mono, -1.0, 1.0).astype(np.float32)
    if channels == 1:
        return mono
    # Slightly different channels, so downmixing is not a no-op.
    return np.stack([mono * (1.0 - 0.1 * c) for c in range(channels)], axis=1)


def write_speech(path: Path, seconds: float, rate: int = 16000, channels: int = 1) -> Path:
    sf.write(str(path), speech_like(seconds, rate, channels), rate, subtype="PCM_16")
    return path


def expected_frames(path: Path, fps: int) -> int:
    """``ceil(duration * fps)`` from the file itself (exact rational arithmetic)."""
    info = sf.info(str(path))
    return math.ceil(Fraction(info.frames) * fps / info.samplerate)


@pytest.fixture(scope="module")
def pipe():
    pipeline = load_pipeline(random_weights=True, preset="tiny", device="cpu", dtype="fp32")
    assert pipeline.cfg.name == "tiny"
    assert pipeline.cfg.image_size == 64 and pipeline.cfg.clip_frames == 4
    return pipeline


@pytest.fixture(scope="module")
def short_wav(tmp_path_factory) -> Path:
    return write_speech(tmp_path_factory.mktemp("audio") / "short.wav", 0.52)


def collect(pipe, image, audio, output=None, **opts):
    """Run ``generate`` and return (result, list of the clips handed to ``on_clip``)."""
    clips: list[torch.Tensor] = []
    result = pipe.generate(image, audio, output, GenerateOptions(**{**FAST, **opts}),
                           on_clip=lambda frames: clips.append(frames.detach().clone()))
    return result, clips


def check_video(path: Path, frames: int, fps: int, size: int = 64):
    assert path.is_file() and path.stat().st_size > 0
    info = probe_video(path)
    assert info.num_frames == frames
    assert (info.width, info.height) == (size, size)
    assert info.fps == pytest.approx(fps)
    assert info.has_audio
    return info


# ---------------------------------------------------------------------------------------------
# A/V sync and the sidecar
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fps", [25, 30])
@pytest.mark.parametrize("seconds", [0.52, 0.8, 1.3])
def test_av_sync_and_sidecar(pipe, tmp_path: Path, seconds: float, fps: int) -> None:
    wav = write_speech(tmp_path / "speech.wav", seconds)
    audio = load_audio(wav)
    frames = audio.num_frames(fps)
    assert frames == expected_frames(wav, fps)
    out = tmp_path / "out" / "talk.mp4"

    result = pipe.generate(PORTRAIT, wav, out, GenerateOptions(fps=fps, **FAST))

    assert result.path == out.resolve()
    assert result.frames == frames
    assert result.clips == math.ceil(frames / pipe.cfg.clip_frames)
    info = check_video(out, frames, fps)
    assert abs(info.audio_duration - info.video_duration) < 1.0 / fps
    assert abs(info.video_duration - frames / fps) < 1e-6

    sidecar_path = out.with_suffix(".json")
    assert sidecar_path.is_file()
    sidecar = json.loads(sidecar_path.read_text())
    for key in ("options", "seconds", "frames", "clips", "face_detected", "model", "audio_seconds"):
        assert key in sidecar, key
    assert sidecar["frames"] == frames
    assert sidecar["clips"] == result.clips
    assert sidecar["model"] == "tiny"
    assert sidecar["options"]["fps"] == fps
    assert sidecar["options"]["steps"] == FAST["steps"]
    assert sidecar["options"]["seed"] == 42
    assert sidecar["audio_seconds"] == pytest.approx(seconds, abs=1e-6)
    assert isinstance(sidecar["face_detected"], bool)
    assert sidecar["seconds"]["total"] > 0 and len(sidecar["seconds"]["clips"]) == result.clips
    # Nothing but the video and its sidecar is left in the output folder.
    assert sorted(p.name for p in out.parent.iterdir()) == ["talk.json", "talk.mp4"]


@pytest.mark.parametrize("fps", [25, 30])
def test_audio_features_follow_video_fps(pipe, short_wav: Path, fps: int) -> None:
    """The features fed to AudioProj for video frame i describe the audio around i / fps seconds."""
    audio = load_audio(short_wav)
    seen: list[torch.Tensor] = []
    handle = pipe.net.audioproj.register_forward_pre_hook(lambda _m, args: seen.append(args[0][0].detach().clone()))
    try:
        result, _ = collect(pipe, PORTRAIT, audio, fps=fps, guidance=1.0)
    finally:
        handle.remove()
    assert len(seen) == result.clips
    reference = AudioConditioner("mel", fps=fps)
    F = pipe.cfg.clip_frames
    valid = audio.num_frames(fps)
    for c, feats in enumerate(seen):
        expected = reference.clip(audio, c * F, F)
        n = min(F, valid - c * F)  # frames past the end of the audio are trimmed from the video
        torch.testing.assert_close(feats[:n].float(), expected[:n], rtol=1e-4, atol=1e-4)


# ---------------------------------------------------------------------------------------------
# determinism
# ---------------------------------------------------------------------------------------------


def test_same_seed_same_frames_other_seed_other_frames(pipe, short_wav: Path) -> None:
    audio = load_audio(short_wav)
    first, clips_a = collect(pipe, PORTRAIT, audio, seed=7)
    second, clips_b = collect(pipe, PORTRAIT, audio, seed=7)
    third, clips_c = collect(pipe, PORTRAIT, audio, seed=8)

    assert first.frames == second.frames == third.frames == 13
    assert len(clips_a) == len(clips_b) == len(clips_c) == first.clips == 4
    for a, b in zip(clips_a, clips_b):
        assert torch.equal(a, b)
    video_a, video_c = torch.cat(clips_a), torch.cat(clips_c)
    assert video_a.shape == video_c.shape == (13, 3, 64, 64)  # the last clip is trimmed to the audio
    assert torch.isfinite(video_a).all() and video_a.min() >= 0 and video_a.max() <= 1
    assert not torch.equal(video_a, video_c)
    assert (video_a - video_c).abs().mean() > 1e-3


def test_motion_frames_come_from_the_chosen_source(pipe, short_wav: Path, monkeypatch) -> None:
    """Every clip's reference input is [portrait latent, motion latents]: the portrait's latent
    repeated for the first clip; then the previous clip's last sampled latents ("latents") or its
    decoded frames encoded again ("pixels"), or the portrait's again ("reference", where the
    ReferenceNet then runs once per generation, not once per clip). The first clip is the same
    every way."""
    audio = load_audio(short_wav)
    written, sampled = [], []
    write, decode = pipe.net.write_reference, pipe.decode
    monkeypatch.setattr(pipe.net, "write_reference", lambda ref, *a, **k: (written.append(ref.clone()), write(ref, *a, **k))[1])
    monkeypatch.setattr(pipe, "decode", lambda lat, *a, **k: (sampled.append(lat.clone()), decode(lat, *a, **k))[1])
    m = pipe.cfg.motion_frames
    portrait = pipe.encode(pipe.portrait(Image.open(PORTRAIT), None).pixels[None])
    runs = {}
    for source in ("latents", "pixels", "reference"):
        written.clear(), sampled.clear()
        _, runs[source] = collect(pipe, PORTRAIT, audio, seed=3, motion_source=source)
        assert len(sampled) == 4 and len(written) == (1 if source == "reference" else 4)
        torch.testing.assert_close(written[0], portrait.repeat(1 + m, 1, 1, 1))
        for c in range(1, len(written)):
            torch.testing.assert_close(written[c][:1], portrait)
            last = sampled[c - 1][0, :, -m:].permute(1, 0, 2, 3)
            if source == "latents":
                torch.testing.assert_close(written[c][1:], last)
            else:
                frames = decode(sampled[c - 1])[-m:]
                torch.testing.assert_close(written[c][1:], pipe.encode(frames * 2 - 1))
                assert not torch.allclose(written[c][1:], last, atol=1e-3)  # the round trip is not lossless
    for other in ("pixels", "reference"):
        torch.testing.assert_close(runs["latents"][0], runs[other][0])
        assert not torch.allclose(runs["latents"][-1], runs[other][-1])


def test_motion_source_defaults_and_validation(tmp_path: Path) -> None:
    from talkfast.errors import CheckpointError
    from talkfast.models.loading import build_random, save_embedded

    assert GenerateOptions().resolved("small").motion_source == "latents"
    assert GenerateOptions().resolved("hallo").motion_source == "pixels"  # Hallo as released
    assert GenerateOptions().resolved("small", "reference").motion_source == "reference"  # the model's choice
    assert GenerateOptions(motion_source="pixels").resolved("small", "reference").motion_source == "pixels"
    with pytest.raises(ValueError, match="motion-source"):
        GenerateOptions(motion_source="frames").resolved("small")
    # A model folder names its default in model.json; the shipped model names one.
    net, vae = build_random("tiny")
    plain = save_embedded(net, vae, tmp_path / "plain")
    named = save_embedded(net, vae, tmp_path / "named", {"motion_source": "reference"})
    assert load_pipeline(plain).resolve().motion_source == "latents"
    assert load_pipeline(named).resolve().motion_source == "reference"
    assert load_pipeline().resolve().motion_source == json.loads((EXAMPLES.parent / "small" / "model.json").read_text())["motion_source"]
    broken = save_embedded(net, vae, tmp_path / "broken", {"motion_source": "video"})
    with pytest.raises(CheckpointError, match="motion_source"):
        load_pipeline(broken)


# ---------------------------------------------------------------------------------------------
# memory bounded by a clip: per-clip audio features == slices of the whole-file features
# ---------------------------------------------------------------------------------------------


def test_clip_features_match_whole_audio_features() -> None:
    audio = Audio(samples=speech_like(3.0), sample_rate=16000, source_sample_rate=16000, source_channels=1)
    cond = AudioConditioner("mel")
    total = audio.num_frames(25)
    assert total == 75
    whole = window_features(cond.extractor(25)(torch.from_numpy(audio.samples), total), cond.radius)
    frames = 16
    starts = [0, 16, 32, (total // frames) * frames]  # the last one is a partial clip (64..74)
    for start in starts:
        clip = cond.clip(audio, start, frames)
        assert clip.shape == (frames, *whole.shape[1:])
        n = min(frames, total - start)
        torch.testing.assert_close(clip[:n], whole[start : start + n], rtol=1e-5, atol=1e-5)
        assert torch.isfinite(clip).all()


def test_clip_features_read_a_bounded_audio_segment() -> None:
    """On long audio each clip reads only the waveform around it, never the whole file."""
    audio = Audio(samples=speech_like(12.0), sample_rate=16000, source_sample_rate=16000, source_channels=1)
    cond = AudioConditioner("mel")
    lengths: list[int] = []
    extractor = cond.extractor(25)

    def recording(seg, n):
        lengths.append(int(seg.shape[-1]))
        return extractor(seg, n)

    cond.extractor = lambda fps: recording
    frames = 16
    total = audio.num_frames(25)
    for start in range(0, total, frames):
        assert cond.clip(audio, start, frames).shape[0] == frames
    samples_per_frame = audio.sample_rate // 25
    bound = (frames + 2 * (cond.radius + cond.context)) * samples_per_frame
    assert len(lengths) == math.ceil(total / frames)
    assert max(lengths) <= bound < len(audio.samples)


# ---------------------------------------------------------------------------------------------
# awkward inputs
# ---------------------------------------------------------------------------------------------


def test_no_face_still_makes_a_video(pipe, tmp_path: Path, short_wav: Path, caplog) -> None:
    x = np.linspace(0.0, 1.0, 192)[None, :, None]
    y = np.linspace(0.0, 1.0, 192)[:, None, None]
    rgb = np.concatenate([x * np.ones_like(y), y * np.ones_like(x), 0.5 * (x + y) * np.ones((1, 1, 1))], axis=2)
    image = tmp_path / "gradient.png"
    Image.fromarray(np.round(rgb * 255).astype(np.uint8), "RGB").save(image)
    out = tmp_path / "noface.mp4"

    with warnings.catch_warnings(record=True) as caught, caplog.at_level(logging.WARNING):
        warnings.simplefilter("always")
        result = pipe.generate(image, short_wav, out, GenerateOptions(**FAST))

    check_video(out, 13, 25)
    sidecar = json.loads(out.with_suffix(".json").read_text())
    assert sidecar["face_detected"] is False
    assert result.sidecar["face_detected"] is False
    messages = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    messages += [str(w.message) for w in caught]
    assert any("face" in m.lower() for m in messages), messages


def _rgba(path: Path) -> Path:
    img = Image.open(PORTRAIT).convert("RGBA")
    alpha = np.tile(np.linspace(60, 255, img.width, dtype=np.uint8), (img.height, 1))
    img.putalpha(Image.fromarray(alpha, "L"))
    img.save(path)
    assert Image.open(path).mode == "RGBA"
    return path


def _gray(path: Path) -> Path:
    Image.open(PORTRAIT).convert("L").save(path)
    assert Image.open(path).mode == "L"
    return path


def _gray16(path: Path) -> Path:
    gray = np.asarray(Image.open(PORTRAIT).convert("L"), dtype=np.uint16) * 257
    Image.fromarray(gray).save(path)
    with Image.open(path) as img:
        assert img.mode in ("I;16", "I;16B", "I")
    return path


def _rgb16(path: Path) -> Path:
    import cv2

    rgb = np.asarray(Image.open(PORTRAIT).convert("RGB"), dtype=np.uint16) * 257
    assert cv2.imwrite(str(path), np.ascontiguousarray(rgb[:, :, ::-1]))
    assert cv2.imread(str(path), cv2.IMREAD_UNCHANGED).dtype == np.uint16
    return path


def _wide(path: Path) -> Path:
    x = np.linspace(30, 220, 1600, dtype=np.float32)[None, :]
    y = np.linspace(0.8, 1.0, 900, dtype=np.float32)[:, None]
    canvas = Image.fromarray(np.stack([x * y] * 3, axis=2).astype(np.uint8), "RGB")
    canvas.paste(Image.open(PORTRAIT).convert("RGB").resize((600, 600)), (900, 150))
    canvas.save(path)
    return path


@pytest.mark.parametrize("make", [_rgba, _gray, _gray16, _rgb16, _wide], ids=["rgba", "gray", "gray16", "rgb16", "1600x900"])
def test_image_variants(pipe, tmp_path: Path, short_wav: Path, make) -> None:
    image = make(tmp_path / "portrait.png")
    out = tmp_path / "video.mp4"
    result = pipe.generate(image, short_wav, out, GenerateOptions(**FAST))
    assert result.frames == 13
    check_video(out, 13, 25)


@pytest.mark.parametrize("rate,channels,seconds", [(44100, 2, 0.84), (8000, 1, 1.1)], ids=["stereo-44k1", "mono-8k"])
def test_audio_variants(pipe, tmp_path: Path, rate: int, channels: int, seconds: float) -> None:
    wav = write_speech(tmp_path / "speech.wav", seconds, rate=rate, channels=channels)
    info = sf.info(str(wav))
    assert (info.samplerate, info.channels) == (rate, channels)
    frames = expected_frames(wav, 25)
    assert frames == math.ceil(seconds * 25 - 1e-9)
    out = tmp_path / "video.mp4"
    result = pipe.generate(PORTRAIT, wav, out, GenerateOptions(**FAST))
    assert result.frames == frames
    video = check_video(out, frames, 25)
    assert abs(video.audio_duration - video.video_duration) < 1.0 / 25


def test_output_none_writes_nothing(pipe, tmp_path: Path, monkeypatch) -> None:
    inputs = tmp_path / "in"
    inputs.mkdir()
    wav = write_speech(inputs / "speech.wav", 0.52)
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    examples_before = sorted(EXAMPLES.iterdir())

    result, clips = collect(pipe, PORTRAIT, wav, None)

    assert result.path is None
    assert len(clips) == result.clips == 4
    assert sum(c.shape[0] for c in clips) == result.frames == 13
    assert all(c.shape[1:] == (3, 64, 64) for c in clips)
    assert list(work.iterdir()) == []
    assert sorted(p.name for p in inputs.iterdir()) == ["speech.wav"]
    assert sorted(EXAMPLES.iterdir()) == examples_before  # nothing written beside the portrait


def test_decode_batches_small_frames_with_the_same_result(pipe, monkeypatch) -> None:
    """decode() takes DECODE_PIXELS pixels a VAE call (tiny: 64x64 frames, 32 a call); the frames
    equal one-at-a-time decoding to float round-off, and large frames go one at a time."""
    from talkfast.pipeline import generate as gen_mod

    z = torch.randn(1, pipe.cfg.latent_channels, 5, pipe.cfg.latent_size, pipe.cfg.latent_size,
                    generator=torch.Generator().manual_seed(0))
    calls = []
    decode = pipe.vae.decode
    monkeypatch.setattr(pipe.vae, "decode", lambda x: calls.append(x.shape[0]) or decode(x))
    batched = pipe.decode(z)
    assert calls == [5]  # 64x64: 8 * 128 * 128 // 64 ** 2 = 32 frames a call
    calls.clear()
    torch.testing.assert_close(batched, pipe.decode(z, 1), rtol=0, atol=1e-5)
    assert calls == [1] * 5
    calls.clear()
    monkeypatch.setattr(gen_mod, "DECODE_PIXELS", 64 * 64 * 2)
    pipe.decode(z)
    assert calls == [2, 2, 1]


# ---------------------------------------------------------------------------------------------
# decoding clip k while clip k+1 samples (pipeline/publish.py)
# ---------------------------------------------------------------------------------------------


def test_background_decode_gives_the_same_video(pipe, tmp_path: Path, short_wav: Path, monkeypatch) -> None:
    """The worker decodes, writes and hands out every clip in order with the same frames as the
    inline decode; it runs on a thread other than the sampler's; off where the next clip needs the
    decoded pixels and for a single clip."""
    import threading

    threads: list[str] = []
    decode = pipe.decode
    monkeypatch.setattr(pipe, "decode", lambda z, *a: threads.append(threading.current_thread().name) or decode(z, *a))
    runs = {}
    try:
        for background in (False, True):
            pipe.background_decode = background
            threads.clear()
            out = tmp_path / f"bg{int(background)}.mp4"
            result, clips = collect(pipe, PORTRAIT, short_wav, out, motion_source="latents")
            assert result.sidecar["decode_in_background"] is background
            check_video(out, result.frames, 25)
            runs[background] = (clips, list(threads), result)
    finally:
        pipe.background_decode = None
    (inline, t_inline, r0), (worker, t_worker, r1) = runs[False], runs[True]
    assert len(inline) == len(worker) == r0.clips == 4
    for a, b in zip(inline, worker):
        assert torch.equal(a, b)
    assert set(t_inline) == {threading.main_thread().name}
    assert len(t_worker) == 4 and threading.main_thread().name not in t_worker
    assert "wait" in r1.seconds and "wait" not in r0.seconds
    assert json.loads((tmp_path / "bg1.json").read_text())["decode_in_background"] is True
    opts = pipe.resolve(GenerateOptions(motion_source="pixels"))
    pipe.background_decode = True
    try:
        assert not pipe.decode_in_background(opts, 4)
        assert not pipe.decode_in_background(pipe.resolve(GenerateOptions(motion_source="latents")), 1)
    finally:
        pipe.background_decode = None


def test_background_decode_failure_leaves_no_video(pipe, tmp_path: Path, short_wav: Path, monkeypatch) -> None:
    """A failure in the decoding thread stops the generation with that error and publishes nothing
    (no video, no sidecar, no temporaries); the main thread never runs past the failed clip's
    successor."""
    from talkfast.io.video import VideoWriter

    writes = []

    def failing_write(self, frames):
        writes.append(frames.shape[0])
        if len(writes) == 2:
            raise OSError("disk full (test)")
        return original(self, frames)

    original = VideoWriter.write
    monkeypatch.setattr(VideoWriter, "write", failing_write)
    steps = []
    pipe.background_decode = True
    try:
        with pytest.raises(OSError, match="disk full"):
            pipe.generate(PORTRAIT, short_wav, tmp_path / "x.mp4", GenerateOptions(**FAST, motion_source="latents"),
                          progress=lambda done, total: steps.append(done))
    finally:
        pipe.background_decode = None
    assert len(writes) == 2
    assert len(steps) <= 3  # clip 3 (0-based 2) may have sampled while clip 1 failed, not clip 4
    assert list(tmp_path.iterdir()) == []
