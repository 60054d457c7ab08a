"""Tests of the ``talkfast`` command line: ``generate`` (success and every kind of bad input) and
``doctor``. ``main([...])`` is called in-process; one test runs the real ``python -m talkfast``."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from PIL import Image

from talkfast.app.cli import main
from talkfast.io.video import probe_video

pytestmark = pytest.mark.usefixtures("one_torch_thread", "restore_logging")

EXAMPLES = Path(__file__).resolve().parent.parent / "src" / "talkfast" / "assets" / "examples"
PORTRAIT = EXAMPLES / "portrait.png"
REPO = Path(__file__).resolve().parent.parent

TINY = ["--random-weights", "--model", "tiny"]


# ---------------------------------------------------------------------------------------------
# helpers and fixtures
# ---------------------------------------------------------------------------------------------


def speech_like(seconds: float, rate: int = 16000) -> np.ndarray:
    """A few harmonics of a wobbling pitch, amplitude-modulated at a syllable rate, plus noise."""
    n = int(round(seconds * rate))
    t = np.arange(n) / rate
    rng = np.random.default_rng(1)
    f0 = 130.0 + 25.0 * np.sin(2 * np.pi * 1.1 * t)
    phase = 2 * np.pi * np.cumsum(f0) / rate
    voice = sum(a * np.sin(k * phase) for k, a in ((1, 0.5), (2, 0.3), (4, 0.1)))
    envelope = 0.5 + 0.5 * np.sin(2 * np.pi * 3.5 * t) ** 2
    return np.clip(0.4 * voice * envelope + 0.01 * rng.standard_normal(n), -1, 1).astype(np.float32)


@pytest.fixture(scope="module")
def speech_wav(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("inputs") / "speech.wav"
    sf.write(str(path), speech_like(0.52), 16000, subtype="PCM_16")
    return path


@pytest.fixture
def out_dir(tmp_path: Path) -> Path:
    d = tmp_path / "out"
    d.mkdir()
    return d


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def listing(folder: Path) -> list[str]:
    """Every entry under ``folder`` (hidden temporary files included), relative paths."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


# ---------------------------------------------------------------------------------------------
# success
# ---------------------------------------------------------------------------------------------


def test_generate_writes_a_playable_video(capsys, speech_wav: Path, out_dir: Path) -> None:
    out = out_dir / "talk.mp4"
    code, stdout, stderr = run(capsys, "generate", *TINY, "-s", PORTRAIT, "-a", speech_wav, "-o", out,
                               "--steps", "1", "--seed", "3")
    assert code == 0, stderr
    assert "error" not in stderr.lower()
    assert stdout.startswith("wrote ")
    assert str(out) in stdout and "13 frames" in stdout
    info = probe_video(out)
    assert info.num_frames == 13 > 0
    assert info.has_audio and info.audio_duration > 0
    assert (info.width, info.height) == (64, 64)
    assert listing(out_dir) == ["talk.json", "talk.mp4"]


def test_console_entry_generates(tmp_path: Path, speech_wav: Path) -> None:
    """The real console entry point, in a fresh interpreter."""
    out = tmp_path / "entry.mp4"
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "talkfast", "generate", *TINY, "-s", str(PORTRAIT), "-a", str(speech_wav),
         "-o", str(out), "--steps", "1", "-q"],
        capture_output=True, text=True, timeout=300, env=env, cwd=str(tmp_path),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.startswith("wrote ")
    info = probe_video(out)
    assert info.num_frames == 13 and info.has_audio
    assert out.with_suffix(".json").is_file()


def test_readme_default_command(capsys, tmp_path: Path, out_dir: Path) -> None:
    """`generate --random-weights` with the default (small, 128x128) model, kept cheap with --steps 2."""
    wav = tmp_path / "one_second.wav"
    sf.write(str(wav), speech_like(1.0), 16000, subtype="PCM_16")
    out = out_dir / "out.mp4"
    code, stdout, stderr = run(capsys, "generate", "--random-weights", "-s", PORTRAIT, "-a", wav, "-o", out,
                               "--steps", "2", "-q")
    assert code == 0, stderr
    assert stdout.startswith("wrote ") and "25 frames" in stdout
    info = probe_video(out)
    assert info.num_frames == 25 and info.has_audio
    assert (info.width, info.height) == (128, 128)
    assert listing(out_dir) == ["out.json", "out.mp4"]


# ---------------------------------------------------------------------------------------------
# bad input: a clear "error:" message, a non-zero exit code, nothing left behind
# ---------------------------------------------------------------------------------------------


def _random_bytes(path: Path, n: int = 4096) -> Path:
    path.write_bytes(np.random.default_rng(5).integers(0, 256, n, dtype=np.uint8).tobytes())
    return path


def _case(name: str, tmp: Path, wav: Path, out_dir: Path) -> tuple[list, Path, int, tuple[str, ...]]:
    """(extra argv, output path, expected exit code, words expected in the message) for one case."""
    out = out_dir / "video.mp4"
    image, audio, extra, code = PORTRAIT, wav, [], 2
    if name == "missing-image":
        image, words = tmp / "no_such_portrait.png", ("not found", "no_such_portrait.png")
    elif name == "corrupt-image":
        image, words = _random_bytes(tmp / "corrupt.png"), ("corrupt.png",)
    elif name == "tiny-image":
        image = tmp / "tiny.png"
        Image.new("RGB", (10, 10), (120, 90, 60)).save(image)
        words = ("too small", "10x10")
    elif name == "missing-audio":
        audio, words = tmp / "no_such_speech.wav", ("not found", "no_such_speech.wav")
    elif name == "corrupt-audio":
        audio, words = _random_bytes(tmp / "corrupt.wav"), ("corrupt.wav",)
    elif name == "empty-audio":
        audio = tmp / "empty.wav"
        sf.write(str(audio), np.zeros(0, np.float32), 16000, subtype="PCM_16")
        assert sf.info(str(audio)).frames == 0
        words = ("empty",)
    elif name == "silent-audio":
        audio = tmp / "silent.wav"
        sf.write(str(audio), np.zeros(16000, np.float32), 16000, subtype="PCM_16")
        words = ("silent",)
    elif name == "output-parent-is-file":
        blocker = out_dir / "blocker"
        blocker.write_text("not a folder")
        out, code, words = blocker / "video.mp4", 3, ("blocker",)
    elif name == "output-is-directory":
        out.mkdir()
        code, words = 3, ("directory",)
    elif name == "output-not-mp4":
        out, code, words = out_dir / "video.avi", 3, (".mp4",)
    elif name == "steps-0":
        extra, words = ["--steps", "0"], ("--steps",)
    elif name == "fps-0":
        extra, words = ["--fps", "0"], ("--fps",)
    elif name == "cfg-0.5":
        extra, words = ["--cfg", "0.5"], ("--cfg",)
    else:  # pragma: no cover
        raise AssertionError(name)
    argv = ["generate", *TINY, "-s", image, "-a", audio, "-o", out, "-q", *extra]
    return argv, out, code, words


BAD_INPUTS = [
    "missing-image", "corrupt-image", "tiny-image", "missing-audio", "corrupt-audio", "empty-audio",
    "silent-audio", "output-parent-is-file", "output-is-directory", "output-not-mp4", "steps-0", "fps-0",
    "cfg-0.5",
]


@pytest.mark.parametrize("case", BAD_INPUTS)
def test_bad_input_fails_cleanly(capsys, tmp_path: Path, speech_wav: Path, out_dir: Path, case: str) -> None:
    argv, out, expected_code, words = _case(case, tmp_path, speech_wav, out_dir)
    before = listing(out_dir)

    code, stdout, stderr = run(capsys, *argv)

    assert code == expected_code, (code, stderr)
    assert code != 0
    assert stderr.startswith("error: "), stderr
    assert "Traceback" not in stderr
    for word in words:
        assert word.lower() in stderr.lower(), (word, stderr)
    assert "wrote" not in stdout
    # Nothing at the output path (an existing directory stays an empty directory) ...
    if case == "output-is-directory":
        assert out.is_dir() and not any(out.iterdir())
    else:
        assert not out.exists()
    assert not out.with_suffix(".json").exists()
    # ... and no temporary / partial files next to it.
    assert listing(out_dir) == before
    if case == "output-parent-is-file":
        assert (out_dir / "blocker").read_text() == "not a folder"


def test_empty_checkpoint_folder_lists_what_is_missing(capsys, tmp_path: Path, speech_wav: Path,
                                                       out_dir: Path) -> None:
    empty = tmp_path / "pretrained_models"
    empty.mkdir()
    out = out_dir / "video.mp4"
    code, stdout, stderr = run(capsys, "generate", "--checkpoint", empty, "-s", PORTRAIT, "-a", speech_wav,
                               "-o", out, "-q")
    assert code == 4
    assert stderr.startswith("error: ")
    assert "Traceback" not in stderr
    for piece in ("net.pth", "VAE", "wav2vec2"):
        assert piece in stderr, (piece, stderr)
    assert str(empty) in stderr
    assert listing(out_dir) == []
    assert not any(empty.iterdir())


# ---------------------------------------------------------------------------------------------
# doctor
# ---------------------------------------------------------------------------------------------


def test_doctor(capsys) -> None:
    code, stdout, _ = run(capsys, "doctor")
    assert code == 0
    lines = stdout.splitlines()
    assert any(line.startswith("[ok] ffmpeg:") for line in lines), stdout
    assert any("face detector:" in line and line[:4] in ("[ok]", "[--]") for line in lines), stdout


def test_doctor_reports_an_incomplete_checkpoint(capsys, tmp_path: Path) -> None:
    code, stdout, _ = run(capsys, "doctor", "--checkpoint", tmp_path)
    assert code == 1
    line = next(line for line in stdout.splitlines() if "checkpoint" in line)
    assert line.startswith("[--]")
    assert "net.pth" in stdout and "wav2vec2" in stdout
