"""Issue 26, item 4: speech that arrives while the generation runs (``generate -a -``, a named
pipe, a WAV still being written). The live reader gives the complete file's samples; a clip is
made as soon as its audio and the features' lookahead are there (ordering checked with events, no
deadline decides a verdict); the frames, the video file and its audio equal a run on the complete
WAV; a cut-off or garbage input is a clear InputError and leaves no output."""

from __future__ import annotations

import io
import os
import struct
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from test_stream import decode, decoded_audio
from tiny_pipeline import randomized_tiny_pipeline

from talkfast.errors import InputError
from talkfast.io.audio import Audio, load_audio
from talkfast.io.live import LiveAudio, is_live_input, open_live, read_audio
from talkfast.pipeline.clips import audio_sample, run_to_end
from talkfast.pipeline.conditioning import AudioConditioner
from talkfast.pipeline.generate import GenerateOptions

pytestmark = pytest.mark.usefixtures("one_torch_thread", "restore_logging")

ROOT = Path(__file__).resolve().parents[1]
PORTRAIT = ROOT / "src/talkfast/assets/examples/portrait.png"
FAST = GenerateOptions(steps=1, seed=5)
HANG = 120.0  # seconds: turns a hang into a failure; never a verdict


@pytest.fixture(scope="module")
def pipe():
    p = randomized_tiny_pipeline()  # tiny: 64 x 64, clips of 4 frames, 25 fps
    p.background_decode = False  # clip k is yielded once decoded (not once clip k + 1 has sampled)
    return p


def speech(seconds: float, rate: int = 16000, channels: int = 1) -> np.ndarray:
    t = np.arange(int(round(seconds * rate))) / rate
    rng = np.random.default_rng(3)
    wave = 0.4 * np.sin(2 * np.pi * 180 * t) * (0.5 + 0.5 * np.sin(2 * np.pi * 3 * t)) + 0.01 * rng.standard_normal(len(t))
    return np.repeat(wave[:, None], channels, axis=1).astype(np.float32) * np.linspace(1, 0.8, channels, dtype=np.float32)


def wav_bytes(x: np.ndarray, rate: int, subtype: str = "PCM_16", open_length: bool = True) -> bytes:
    """A WAV file's bytes; ``open_length``: RIFF and data sizes 0xFFFFFFFF, as a streaming writer puts them."""
    buf = io.BytesIO()
    sf.write(buf, x, rate, subtype=subtype, format="WAV")
    data = bytearray(buf.getvalue())
    if open_length:
        i = data.index(b"data")
        data[4:8] = data[i + 4 : i + 8] = struct.pack("<I", 0xFFFFFFFF)
    return bytes(data)


class Feeder(threading.Thread):
    """Writes ``parts`` to the write end of a pipe one by one; before part ``k > 0`` it waits for
    ``go[k - 1]`` (set by the test), then closes the pipe (``done`` set). ``read_fd``: the read end."""

    def __init__(self, parts: list[bytes]):
        super().__init__(daemon=True)
        self.read_fd, self._w = os.pipe()
        self.parts = parts
        self.go = [threading.Event() for _ in parts[1:]]
        self.done = threading.Event()

    def run(self) -> None:
        try:
            for k, part in enumerate(self.parts):
                if k:
                    self.go[k - 1].wait(HANG)
                os.write(self._w, part)
        finally:
            os.close(self._w)
            self.done.set()

    def release(self) -> None:
        for ev in self.go:
            ev.set()


def written(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


# ---------------------------------------------------------------------------------------------
# the reader
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("rate,channels,subtype", [(16000, 1, "PCM_16"), (44100, 2, "FLOAT"), (22050, 1, "PCM_32"),
                                                   (48000, 2, "DOUBLE")])
def test_live_reader_gives_the_complete_files_samples(tmp_path: Path, rate: int, channels: int, subtype: str) -> None:
    x = speech(0.7, rate, channels)
    reference = load_audio(written(tmp_path / "a.wav", wav_bytes(x, rate, subtype, open_length=False)))
    data = wav_bytes(x, rate, subtype)
    third = len(data) // 3
    feeder = Feeder([data[:third]] + [data[i : i + 999] for i in range(third, len(data), 999)])
    feeder.start()
    live = LiveAudio(feeder.read_fd, "pipe")
    first = live.wait(100)  # from the first part: the rest is written once released
    assert not live.ended and 100 <= len(first.samples) < len(reference.samples)
    feeder.release()
    whole = live.complete()
    assert live.ended and whole.sample_rate == 16000
    assert np.array_equal(whole.samples, reference.samples)
    np.testing.assert_array_equal(first.samples, reference.samples[: len(first.samples)])  # a prefix, unchanged


def test_ffmpeg_writing_to_a_pipe(tmp_path: Path) -> None:
    """A real streaming writer: ``ffmpeg -f wav -`` (open sizes, a LIST chunk before the data)."""
    import imageio_ffmpeg

    src = written(tmp_path / "in.wav", wav_bytes(speech(0.5, 22050, 2), 22050, open_length=False))
    proc = subprocess.Popen([imageio_ffmpeg.get_ffmpeg_exe(), "-nostdin", "-v", "error", "-i", str(src),
                             "-c:a", "pcm_s16le", "-f", "wav", "-"], stdout=subprocess.PIPE)
    try:
        live = LiveAudio(os.dup(proc.stdout.fileno()), "ffmpeg")
        samples = live.complete().samples
    finally:
        proc.stdout.close()
        proc.wait()
    assert np.array_equal(samples, load_audio(src).samples)


def test_what_is_read_live(tmp_path: Path) -> None:
    x = speech(0.3)
    complete = written(tmp_path / "done.wav", wav_bytes(x, 16000, open_length=False))
    growing = written(tmp_path / "growing.wav", wav_bytes(x, 16000))
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    assert is_live_input("-") and is_live_input(fifo) and is_live_input(growing)
    assert is_live_input(complete, idle=1.0)  # --audio-idle: follow it
    assert not is_live_input(complete) and not is_live_input(tmp_path) and not is_live_input(tmp_path / "missing")
    assert isinstance(read_audio(complete), Audio)


def test_a_growing_file_is_followed_until_it_stops(tmp_path: Path) -> None:
    x = speech(0.5)
    data = wav_bytes(x, 16000)
    path = tmp_path / "rec.wav"
    path.write_bytes(data[:3000])
    live = open_live(path, idle=0.3)
    assert len(live.wait(100).samples) >= 100 and not live.ended
    with open(path, "ab") as fh:  # the writer goes on
        fh.write(data[3000:])
    assert np.array_equal(live.complete().samples, load_audio(written(tmp_path / "c.wav", wav_bytes(x, 16000, open_length=False))).samples)


@pytest.mark.parametrize("trailer", [b"", b"LIST\x04\x00\x00\x00abcd"])
def test_a_file_whose_writer_fills_in_the_sizes_ends_at_them(tmp_path: Path, trailer: bytes) -> None:
    """ffmpeg on a file: the sizes it writes when it finishes end the input (read again once the
    file stops growing); a chunk after the data, read as audio while the length was open, is an error."""
    x = speech(0.4)
    final = wav_bytes(x, 16000, open_length=False)
    path = written(tmp_path / "rec.wav", wav_bytes(x, 16000) + trailer)
    live = open_live(path, idle=0.2)
    live.wait(10)
    path.write_bytes(final + trailer)
    if trailer:
        with pytest.raises(InputError, match="more was read"):
            live.complete()
    else:
        assert np.array_equal(live.complete().samples, load_audio(written(tmp_path / "c.wav", final)).samples)


@pytest.mark.parametrize("case,message", [
    ("garbage", "not a WAV stream"),
    ("header cut", "within its WAV header"),
    ("declared longer", "cut off.*bytes short"),
    ("mid-sample", "middle of a sample"),
    ("silent", "silent"),
    ("format", "not supported live"),
    ("over full scale", "beyond full scale"),
])
def test_unusable_live_input_is_an_input_error(case: str, message: str) -> None:
    x = speech(0.3)
    data = {
        "garbage": b"\x00\x01garbage, not audio" * 50,
        "header cut": wav_bytes(x, 16000)[:30],
        "declared longer": wav_bytes(x, 16000, open_length=False)[:-2000],
        "mid-sample": wav_bytes(x, 16000)[:-1],
        "silent": wav_bytes(np.zeros(8000, np.float32), 16000),
        "format": wav_bytes(x, 16000, "PCM_U8"),
        "over full scale": wav_bytes(x * 3, 16000, "FLOAT"),
    }[case]
    feeder = Feeder([data])
    feeder.start()
    with pytest.raises(InputError, match=message):
        LiveAudio(feeder.read_fd, "stdin").complete()


# ---------------------------------------------------------------------------------------------
# lookahead
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fps,frames", [(25, 3), (60, 4)])
def test_mel_lookahead_is_small_and_clip_features_read_no_further(fps: int, frames: int) -> None:
    """talkfast's log-mel conditioner: the window's radius plus 361 samples (120 ms at 25 fps); a
    clip's features do not change with what follows its lookahead, and (25 fps) do with one frame less."""
    cond = AudioConditioner("mel", fps=fps)
    assert cond.lookahead_frames() == frames == cond.radius + (1 if fps == 25 else 2)
    rate, F = 16000, 8
    x = speech(3.0)[:, 0]
    for start in (0, 24, 40):
        need = audio_sample(start + F + frames, fps, rate)
        other = x.copy()
        other[need:] = -other[need:]  # different audio past the lookahead
        a = cond.clip(Audio(x[:need].copy(), rate, rate, 1), start, F)
        b = cond.clip(Audio(other, rate, rate, 1), start, F)
        assert torch.equal(a, b)
        if fps == 25:  # tight there (elsewhere the bound is the worst case over a frame's phase)
            short = audio_sample(start + F + frames - 1, fps, rate)  # one frame less: the last window differs
            assert not torch.equal(cond.clip(Audio(x[:short].copy(), rate, rate, 1), start, F), a)


def test_families_whose_features_need_the_whole_input(pipe) -> None:
    from talkfast.pipeline.echomimic import EchoMimicPipeline
    from talkfast.pipeline.hallo import HalloPipeline
    from talkfast.pipeline.memo import MemoPipeline

    assert pipe.live_lookahead(25) == 3
    assert HalloPipeline.live_lookahead(pipe, 25) is None and MemoPipeline.live_lookahead(pipe, 25) is None
    assert EchoMimicPipeline.live_lookahead(pipe, 25) is None


# ---------------------------------------------------------------------------------------------
# the pipeline
# ---------------------------------------------------------------------------------------------


def test_clip_zero_comes_before_the_input_ends_and_the_run_equals_the_complete_file(pipe, tmp_path: Path) -> None:
    x = speech(0.62)  # 16 frames: 4 clips of 4
    data = wav_bytes(x, 16000)
    head = 44 + 2 * audio_sample(4 + pipe.live_lookahead(25), 25, 16000)  # clip 0 and its lookahead
    feeder = Feeder([data[:head], data[head:]])
    feeder.start()
    live_out, file_out = tmp_path / "live.mp4", tmp_path / "file.mp4"
    gen = pipe.stream(PORTRAIT, LiveAudio(feeder.read_fd, "stdin"), FAST, output=live_out)
    live_frames = []
    try:
        first = next(gen)
        assert first.index == 0 and not feeder.done.is_set()  # made from the first part alone
        live_frames.append(first.frames)
    finally:
        feeder.release()
    result = run_to_end(gen, live_frames.append)
    feeder.join(HANG)
    complete = written(tmp_path / "complete.wav", wav_bytes(x, 16000, open_length=False))
    file_frames = []
    reference = pipe.generate(PORTRAIT, complete, file_out, FAST, on_clip=file_frames.append)
    assert (result.frames, result.clips) == (reference.frames, reference.clips) == (16, 4)
    assert len(live_frames) == len(file_frames)
    assert all(torch.equal(a, b) for a, b in zip(live_frames, file_frames))
    assert np.array_equal(decode(live_out), decode(file_out))
    assert decoded_audio(live_out) == decoded_audio(file_out)
    for key in ("frames", "clips", "audio_seconds"):
        assert result.sidecar[key] == reference.sidecar[key], key


def test_a_family_that_needs_the_whole_input_reads_it_first(pipe, tmp_path: Path, monkeypatch) -> None:
    """Hallo, MEMO (live_lookahead None) and EchoMimic: the first clip once the input has ended."""
    x = speech(0.3)
    data = wav_bytes(x, 16000)
    feeder = Feeder([data[: len(data) // 2], data[len(data) // 2 :]])
    feeder.start()
    monkeypatch.setattr(type(pipe), "live_lookahead", lambda self, fps: None)
    reader = LiveAudio(feeder.read_fd, "stdin")
    gen = pipe.stream(PORTRAIT, reader, FAST)
    threading.Thread(target=lambda: (reader.wait(1), feeder.release()), daemon=True).start()  # after the header
    frames = [next(gen).frames]
    assert feeder.done.is_set()
    run_to_end(gen, frames.append)
    reference = []
    complete = written(tmp_path / "complete.wav", wav_bytes(x, 16000, open_length=False))
    pipe.generate(PORTRAIT, complete, None, FAST, on_clip=reference.append)
    assert len(frames) == len(reference) == 2 and all(torch.equal(a, b) for a, b in zip(frames, reference))


def test_a_named_pipe_path(pipe, tmp_path: Path) -> None:
    x = speech(0.3)
    fifo = tmp_path / "speech.fifo"
    os.mkfifo(fifo)

    def write() -> None:
        with open(fifo, "wb") as fh:  # waits for the reader
            fh.write(wav_bytes(x, 16000))

    threading.Thread(target=write, daemon=True).start()
    frames, reference = [], []
    result = pipe.generate(PORTRAIT, fifo, None, FAST, on_clip=frames.append)
    complete = written(tmp_path / "complete.wav", wav_bytes(x, 16000, open_length=False))
    pipe.generate(PORTRAIT, complete, None, FAST, on_clip=reference.append)
    assert result.frames == 8 and all(torch.equal(a, b) for a, b in zip(frames, reference))


def test_a_cut_off_input_stops_the_run_without_output(pipe, tmp_path: Path) -> None:
    data = wav_bytes(speech(0.62), 16000, open_length=False)
    cut = 44 + 2 * audio_sample(9 + pipe.live_lookahead(25), 25, 16000)  # clip 0 and 1 can be made, then it stops
    feeder = Feeder([data[:cut]])
    feeder.start()
    out = tmp_path / "out.mp4"
    with pytest.raises(InputError, match="cut off"):
        pipe.generate(PORTRAIT, LiveAudio(feeder.read_fd, "stdin"), out, FAST)
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_stream_option_with_a_live_input(pipe, tmp_path: Path) -> None:
    """``--stream``: the growing file has no audio track (the length is unknown), the final video has it."""
    x = speech(0.3)
    feeder = Feeder([wav_bytes(x, 16000)])
    feeder.start()
    out = tmp_path / "talk.mp4"
    result = pipe.generate(PORTRAIT, LiveAudio(feeder.read_fd, "stdin"), out, FAST, growing=True)
    assert result.frames == 8 and len(decode(out)) == 8 and len(decoded_audio(out)) == 2 * 8 * 640
    assert sorted(p.name for p in tmp_path.iterdir()) == ["talk.json", "talk.mp4"]


# ---------------------------------------------------------------------------------------------
# the CLI
# ---------------------------------------------------------------------------------------------


def cli(tmp_path: Path, stdin: bytes, out: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "talkfast", "generate", "--random-weights", "--model", "tiny", "-s", str(PORTRAIT),
         "-a", "-", "-o", str(out), "--steps", "1", "-q"],
        input=stdin, capture_output=True, timeout=300, env=env, cwd=str(tmp_path))


def test_cli_reads_speech_from_stdin(tmp_path: Path) -> None:
    out = tmp_path / "talk.mp4"
    proc = cli(tmp_path, wav_bytes(speech(0.3), 16000), out)
    assert proc.returncode == 0, proc.stderr.decode()[-3000:]
    assert proc.stdout.decode().startswith(f"wrote {out} (8 frames, 2 clips")
    assert len(decode(out)) == 8


def test_cli_garbage_on_stdin_is_a_clear_error(tmp_path: Path) -> None:
    out = tmp_path / "talk.mp4"
    proc = cli(tmp_path, b"this is not a wav file" * 10, out)
    err = proc.stderr.decode()
    assert proc.returncode != 0 and "error: Audio input stdin is not a WAV stream" in err
    assert "Traceback" not in err and not out.exists() and not out.with_suffix(".json").exists()
