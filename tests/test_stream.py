"""Issue 26, items 1 and 2: a generation as an iterator of clips (``pipe.stream``) for every family,
whose frames are the frames the file path writes, and ``generate --stream``: a fragmented MP4
beside the output (``talk.partial.mp4``) that a player can open after the first clip, the normal
mp4 at the output path at the end (decoded equal to a run without ``--stream``), and a playable
prefix, named partial, when the run is interrupted (nothing at the output path)."""

from __future__ import annotations

import math
import subprocess
import time
from pathlib import Path

import imageio_ffmpeg
import numpy as np
import pytest
import torch
from test_echomimic_pipeline import echo_folder, speech  # noqa: F401  (fixtures: a tiny EchoMimic folder)
from tiny_pipeline import randomized_tiny_pipeline, tone_inputs

from talkfast.app.cli import main
from talkfast.errors import OutputError
from talkfast.io.audio import save_wav
from talkfast.io.image import to_uint8
from talkfast.io.stream import GrowingVideo, check_stream_path, is_partial_by_talkfast, partial_path
from talkfast.io.video import VideoWriter, probe_video
from talkfast.pipeline.generate import GenerateOptions

pytestmark = pytest.mark.usefixtures("one_torch_thread", "restore_logging")

ROOT = Path(__file__).resolve().parents[1]
PORTRAIT = ROOT / "src/talkfast/assets/examples/portrait.png"
FAST = GenerateOptions(steps=1)
BOUND = 300.0  # an outer bound only (seconds): the growing file has its first frames well under a second


@pytest.fixture(scope="module")
def pipe():
    return randomized_tiny_pipeline()  # tiny: 64 x 64, clips of 4 frames, 25 fps


def decode(path: Path, size: int = 64, keyframes_only: bool = False) -> np.ndarray:
    """The decodable video frames of ``path`` (T, size, size, 3) uint8; a file still growing gives
    the frames of its complete fragments."""
    cmd = [imageio_ffmpeg.get_ffmpeg_exe(), "-nostdin", "-v", "quiet", *(["-skip_frame", "nokey"] if keyframes_only else []),
           "-i", str(path), "-map", "0:v:0", "-fps_mode", "passthrough", "-f", "rawvideo", "-pix_fmt", "rgb24", "-"]
    out = subprocess.run(cmd, capture_output=True, check=False).stdout
    n = len(out) // (size * size * 3)
    return np.frombuffer(out[: n * size * size * 3], np.uint8).reshape(n, size, size, 3)


def video_times(path: Path) -> tuple[float, np.ndarray]:
    """(time base, the decoding time of every video packet in seconds) of ``path``."""
    cmd = [imageio_ffmpeg.get_ffmpeg_exe(), "-nostdin", "-v", "error", "-i", str(path), "-map", "0:v:0", "-c", "copy",
           "-f", "framecrc", "-"]
    lines = subprocess.run(cmd, capture_output=True, check=True).stdout.decode().splitlines()
    num, den = next(line.split(":")[1].strip() for line in lines if line.startswith("#tb 0")).split("/")
    tb = int(num) / int(den)
    return tb, np.array([int(line.split(",")[1]) * tb for line in lines if line.startswith("0,")])


def decoded_audio(path: Path) -> bytes:
    cmd = [imageio_ffmpeg.get_ffmpeg_exe(), "-nostdin", "-v", "error", "-i", str(path), "-map", "0:a:0",
           "-f", "s16le", "-"]
    return subprocess.run(cmd, capture_output=True, check=True).stdout


def wait_for_frames(path: Path) -> int:
    """Poll the growing ``path`` until it decodes to at least one frame (no deadline on the
    verdict: the bound only turns a hang into a failure with its own message)."""
    end = time.monotonic() + BOUND
    while (n := len(decode(path))) == 0:
        assert time.monotonic() < end, f"{path} has no decodable frame after {BOUND:.0f} s"
        time.sleep(0.02)
    return n


def recorded_writes(monkeypatch) -> list[np.ndarray]:
    """Every frame array a VideoWriter is given from now on."""
    written: list[np.ndarray] = []
    original = VideoWriter.write

    def write(self, frames):
        written.append(np.array(frames, copy=True))
        return original(self, frames)

    monkeypatch.setattr(VideoWriter, "write", write)
    return written


def check_tiling(clips, frames_total: int, audio, fps: int) -> None:
    """Consecutive clips: contiguous frames from 0, audio spans tiling the file's audio track, each
    span holding the recording's samples (silence past its end)."""
    assert [c.index for c in clips] == list(range(len(clips)))
    assert clips[0].start_frame == 0 and clips[-1].end_frame == frames_total
    for a, b in zip(clips, clips[1:]):
        assert a.end_frame == b.start_frame and a.audio_end == b.audio_start
    assert clips[-1].audio_end == math.ceil(frames_total * audio.sample_rate / fps)
    for c in clips:
        want = np.zeros(c.audio_end - c.audio_start, np.float32)
        have = audio.samples[c.audio_start : c.audio_end]
        want[: len(have)] = have
        assert np.array_equal(c.audio, want) and c.sample_rate == audio.sample_rate
        assert c.start_seconds == c.start_frame / fps and c.elapsed > 0


# ------------------------------------------------------------------------------ item 1: the iterator
@pytest.mark.parametrize("motion, background", [("latents", False), ("latents", True), ("pixels", False),
                                                ("reference", False)])
def test_stream_yields_the_frames_the_file_path_writes(pipe, tmp_path, monkeypatch, motion, background):
    img, audio = tone_inputs(0.5)  # 13 frames: 4 clips of 4, the last cut to 1
    opts = GenerateOptions(steps=1, motion_source=motion)
    pipe.background_decode = background
    try:
        clips = list(pipe.stream(img, audio, opts))
        written = recorded_writes(monkeypatch)
        res = pipe.generate(img, audio, tmp_path / "talk.mp4", opts)
    finally:
        pipe.background_decode = None
    assert res.sidecar["decode_in_background"] is background
    assert [c.frames.shape[0] for c in clips] == [4, 4, 4, 1] and res.frames == 13
    assert len(written) == len(clips)
    for clip, frames in zip(clips, written):
        assert torch.equal(torch.from_numpy(to_uint8(clip.frames)), torch.from_numpy(frames))
    check_tiling(clips, res.frames, audio, 25)
    assert clips[-1].seconds["clips"] and len(clips[-1].seconds["clips"]) == 4


@pytest.mark.parametrize("background", [False, True])
def test_the_first_clip_is_yielded_before_the_second_samples(pipe, monkeypatch, background):
    # the time to the first frame is one clip's sampling and decode, with the decode in the
    # background too (which keeps the overlap for the later clips: clip k after clip k + 1 sampled);
    # what is counted is the sampler's steps, not time, so the verdict is the same at any load
    monkeypatch.setattr(pipe, "background_decode", background)
    steps: list[int] = []
    it = pipe.stream(*tone_inputs(0.5), GenerateOptions(steps=2), progress=lambda done, total: steps.append(done))
    seen = [(clip.index, steps[-1]) for clip in it]  # 4 clips of 2 steps
    later = [(1, 4), (2, 6), (3, 8)] if not background else [(1, 6), (2, 8), (3, 8)]
    assert seen == [(0, 2), *later]


def test_leaving_the_iterator_early_aborts_the_generation(pipe, tmp_path):
    img, audio = tone_inputs(0.5)
    it = pipe.stream(img, audio, FAST, output=tmp_path / "talk.mp4")
    next(it)
    it.close()
    assert list(tmp_path.iterdir()) == []  # no video, no sidecar, no temporaries


def test_echomimic_stream_emits_a_chunk_once_its_last_step_ran(echo_folder, speech, tmp_path, monkeypatch):  # noqa: F811
    from talkfast.io.audio import load_audio
    from talkfast.pipeline.loader import load_pipeline

    root, _ = echo_folder
    pipe = load_pipeline(root, device="cpu", dtype="fp32")
    pipe.max_frames = 8  # two chunks: the second starts at frame 8
    steps: list[int] = []
    opts = GenerateOptions(steps=2, fps=24)
    it = pipe.stream(PORTRAIT, speech, opts, progress=lambda done, total: steps.append(done))
    clips, seen = [], []
    for clip in it:
        clips.append(clip)
        seen.append(steps[-1])
    assert [c.start_frame for c in clips] == [0, 8] and seen == [2, 4]  # after each chunk's last step
    written = recorded_writes(monkeypatch)
    res = pipe.generate(PORTRAIT, speech, tmp_path / "echo.mp4", opts)
    assert len(written) == 2
    for clip, frames in zip(clips, written):
        assert torch.equal(torch.from_numpy(to_uint8(clip.frames)), torch.from_numpy(frames))
    check_tiling(clips, res.frames, load_audio(speech), 24)


def test_memo_stream_yields_the_frames_generate_hands_out():
    from test_memo import MEMO_MEL, _randomized
    from diffusers import AutoencoderKL

    from talkfast.models import loading
    from talkfast.pipeline.conditioning import AudioConditioner
    from talkfast.pipeline.memo import MemoPipeline

    pipe = MemoPipeline(_randomized(MEMO_MEL), AutoencoderKL(**loading.small_vae_config(MEMO_MEL)).eval(),
                        AudioConditioner("mel"), emotion="sad")
    img, audio = tone_inputs(0.3)  # 9 frames at 30 fps: three chained clips
    opts = GenerateOptions(steps=2)
    clips = list(pipe.stream(img, audio, opts))
    handed: list[torch.Tensor] = []
    res = pipe.generate(img, audio, None, opts, on_clip=handed.append)
    assert len(clips) == len(handed) == res.clips == 3
    for clip, frames in zip(clips, handed):
        assert torch.equal(clip.frames, frames)
    check_tiling(clips, res.frames, audio, 30)


# ------------------------------------------------------------------------------ item 2: --stream
@pytest.mark.parametrize("background", [False, True])
def test_growing_file_plays_after_the_first_clip_and_the_final_file_equals_a_plain_run(pipe, tmp_path, monkeypatch,
                                                                                        background):
    # with the decode in the background too: the first clip is yielded once it is decoded and
    # written, before the second is sampled, so nothing is in the worker while the generator is
    # paused after it (what the partial file holds then does not depend on the machine's load)
    monkeypatch.setattr(pipe, "background_decode", background)
    img, audio = tone_inputs(0.5)
    plain = pipe.generate(img, audio, tmp_path / "plain" / "talk.mp4", FAST).path
    out = tmp_path / "talk.mp4"
    partial = tmp_path / "talk.partial.mp4"
    it = pipe.stream(img, audio, FAST, output=out, growing=True)
    first = next(it)
    n = wait_for_frames(partial)  # while the generator is paused after the first clip
    assert 0 < n <= first.frames.shape[0]
    assert not out.exists() and is_partial_by_talkfast(partial)
    rest = list(it)
    assert len(rest) == 3
    assert out.is_file() and out.with_suffix(".json").is_file() and not partial.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["plain", "talk.json", "talk.mp4"]
    a, b = decode(plain), decode(out)
    assert a.shape == (13, 64, 64, 3) and np.array_equal(a, b)
    assert decoded_audio(plain) == decoded_audio(out)


def test_interrupted_stream_leaves_a_playable_partial_and_nothing_at_the_output(pipe, tmp_path, monkeypatch):
    img, audio = tone_inputs(2.0)  # 50 frames; only the first clip or two are made
    written = recorded_writes(monkeypatch)
    out = tmp_path / "talk.mp4"
    it = pipe.stream(img, audio, FAST, output=out, growing=True)
    next(it)
    wait_for_frames(tmp_path / "talk.partial.mp4")
    it.close()  # as Ctrl-C at this point (nothing is decoding in the background after the first clip)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["talk.partial.mp4"]
    frames = decode(tmp_path / "talk.partial.mp4")
    assert 0 < len(frames) <= sum(len(w) for w in written) == 4  # the first clip only, with or without the worker
    info = probe_video(tmp_path / "talk.partial.mp4")
    assert info.has_audio and info.audio_duration < 1.0  # cut near the frames, not the whole 2 s


def test_growing_video_is_fragmented_with_a_keyframe_per_clip_and_matching_audio(tmp_path):
    rng = np.random.default_rng(0)
    wav = save_wav(tmp_path / "a.wav", (0.1 * rng.standard_normal(16000 * 12 // 25)).astype(np.float32), 16000)
    g = GrowingVideo(tmp_path / "g.mp4", 25, (64, 64), wav, keyframe_every=4)
    for _ in range(3):
        g.write(rng.integers(0, 256, (4, 64, 64, 3), dtype=np.uint8))
    g.close()
    data = (tmp_path / "g.mp4").read_bytes()
    assert b"mvex" in data[:4096] and data.count(b"moof") >= 12  # an empty moov, a fragment per frame
    assert len(decode(tmp_path / "g.mp4")) == 12
    assert len(decode(tmp_path / "g.mp4", keyframes_only=True)) == 3
    # in sync: the AAC encoder's priming (1024 samples, no edit list in a fragmented file) comes
    # first in the audio track, and the video starts as late (its first frame shown that much longer)
    tb, times = video_times(tmp_path / "g.mp4")
    priming = 1024 / 16000
    assert times[0] == 0 and (times[1] - 1 / 25) == pytest.approx(priming, abs=tb)
    assert np.diff(times[1:]) == pytest.approx(np.full(10, 1 / 25), abs=tb)
    info = probe_video(tmp_path / "g.mp4")
    assert info.has_audio and priming + 12 / 25 <= info.audio_duration < 2 * priming + 12 / 25


def test_the_partial_path_follows_the_write_rule(pipe, tmp_path):
    out = tmp_path / "talk.mp4"
    partial = partial_path(out)
    assert partial == tmp_path / "talk.partial.mp4"
    partial.write_bytes(b"someone else's file")
    img, audio = tone_inputs(0.2)
    with pytest.raises(OutputError, match="talk.partial.mp4"):
        pipe.generate(img, audio, out, FAST, growing=True)
    assert partial.read_bytes() == b"someone else's file" and not out.exists()
    with pytest.raises(OutputError, match="never writes onto an input"):
        check_stream_path(out, overwrite=True, inputs=[partial])
    pipe.generate(img, audio, out, FAST, growing=True, overwrite=True)
    assert out.is_file() and not partial.exists()
    with pytest.raises(ValueError, match="needs an output"):
        pipe.generate(img, audio, None, FAST, growing=True)


def test_a_partial_file_talkfast_grew_is_replaced_without_overwrite(pipe, tmp_path):
    out = tmp_path / "talk.mp4"
    it = pipe.stream(*tone_inputs(2.0), FAST, output=out, growing=True)
    next(it)
    # until ffmpeg has written the first clip: the interrupt kills it, and the first clip is handed
    # out as soon as it is piped to ffmpeg, so how much of the file exists then depends on the load
    wait_for_frames(partial_path(out))
    it.close()
    assert is_partial_by_talkfast(partial_path(out))
    pipe.generate(*tone_inputs(0.2), out, FAST, growing=True)
    assert out.is_file() and not partial_path(out).exists()


def test_generate_stream_cli(capsys, tmp_path):
    img, audio = tone_inputs(0.2)
    wav = save_wav(tmp_path / "speech.wav", audio.samples, audio.sample_rate)
    out = tmp_path / "out" / "talk.mp4"
    code = main(["generate", "--random-weights", "--model", "tiny", "-s", str(PORTRAIT), "-a", str(wav),
                 "-o", str(out), "--steps", "1", "-q", "--stream"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "talk.partial.mp4" in captured.out and "wrote" in captured.out
    assert sorted(p.name for p in out.parent.iterdir()) == ["talk.json", "talk.mp4"]
    assert probe_video(out).num_frames == 5
