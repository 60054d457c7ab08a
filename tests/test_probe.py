"""Defects a hostile probe of the command line found (issue 17): each test fails without its fix."""

import io
import json
import math
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from talkfast.app.cli import main
from talkfast.errors import CheckpointError

pytestmark = pytest.mark.usefixtures("one_torch_thread", "restore_logging")


class _Planted:
    """Unpickling this creates ``marker`` (by calling ``open(marker, "w")``): a stand-in for a
    pickle that runs code."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def _plant(path: Path, marker: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": {}, "payload": _Planted(marker)}, path)
    assert not marker.exists()


# ---------------------------------------------------------------------------------------------
# 1. run-folder checkpoints are never unpickled with full pickle
# ---------------------------------------------------------------------------------------------


def test_planted_pickle_is_sanity_checked_by_full_unpickling(tmp_path):
    """The planted file really runs code under full pickle (so the tests below can fail)."""
    ckpt, marker = tmp_path / "vae_ckpt.pt", tmp_path / "marker"
    _plant(ckpt, marker)
    torch.load(ckpt, weights_only=False)
    assert marker.exists()


def test_train_export_refuses_a_planted_vae_checkpoint(tmp_path, capsys):
    run, marker = tmp_path / "run", tmp_path / "marker"
    _plant(run / "vae_ckpt.pt", marker)
    code = main(["train", "export", "--out", str(run), "--model", "tiny"])
    err = capsys.readouterr().err
    assert code == CheckpointError.exit_code and "error:" in err and "vae_ckpt.pt" in err
    assert "Traceback" not in err
    assert not marker.exists()
    assert not (run / "model").exists()


def test_train_export_refuses_a_planted_net_checkpoint(tmp_path, capsys):
    """A genuine VAE checkpoint beside a planted network checkpoint."""
    from talkfast.models.loading import build_random
    from talkfast.train.loop import _save

    run, marker = tmp_path / "run", tmp_path / "marker"
    _, vae = build_random("tiny")
    run.mkdir()
    _save(run / "vae_ckpt.pt", {"model": vae.state_dict(), "step": 1})
    _plant(run / "net_ckpt.pt", marker)
    code = main(["train", "export", "--out", str(run), "--model", "tiny"])
    err = capsys.readouterr().err
    assert code == CheckpointError.exit_code and "net_ckpt.pt" in err and "Traceback" not in err
    assert not marker.exists()


def test_resuming_training_refuses_a_planted_checkpoint(tmp_path):
    from talkfast.models.loading import build_random
    from talkfast.train.loop import TrainConfig, train_vae

    marker = tmp_path / "marker"
    _plant(tmp_path / "run" / "vae_ckpt.pt", marker)
    _, vae = build_random("tiny")
    frames = lambda g: torch.rand(1, 3, 64, 64, generator=g) * 2 - 1  # noqa: E731
    with pytest.raises(CheckpointError, match="vae_ckpt.pt"):
        train_vae(vae, frames, TrainConfig(steps=1), tmp_path / "run")
    assert not marker.exists()


def test_training_checkpoint_loads_with_weights_only(tmp_path):
    """What the loop writes (model, AdamW state, RNG state, history, config) is plain data."""
    from talkfast.models.loading import build_random
    from talkfast.train.loop import TrainConfig, train_vae

    _, vae = build_random("tiny")
    frames = lambda g: torch.rand(1, 3, 32, 32, generator=g) * 2 - 1  # noqa: E731
    train_vae(vae, frames, TrainConfig(steps=2, warmup=1), tmp_path)
    state = torch.load(tmp_path / "vae_ckpt.pt", weights_only=True)
    assert state["step"] == 2 and state["opt"]["state"] and len(state["history"]) == 2


# ---------------------------------------------------------------------------------------------
# 3-5. every option finite and in range, a clear "error:" for each bad value, before any work
# ---------------------------------------------------------------------------------------------

EXAMPLES = Path(__file__).resolve().parent.parent / "src" / "talkfast" / "assets" / "examples"
TINY = ["--random-weights", "--model", "tiny", "--accel", "off"]  # off: no "auto" notice on stderr


def _speech(seconds: float = 0.52, rate: int = 16000) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (0.3 * np.sin(2 * np.pi * 150 * t) * (0.5 + 0.5 * np.sin(2 * np.pi * 3 * t))).astype(np.float32)


@pytest.fixture(scope="module")
def speech_wav(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("probe") / "speech.wav"
    sf.write(str(path), _speech(), 16000, subtype="PCM_16")
    return path


BAD_OPTIONS = {
    "cfg-inf": (["--cfg", "inf"], "--cfg"),
    "cfg-nan": (["--cfg", "nan"], "--cfg"),
    "cfg-huge": (["--cfg", "1e9"], "--cfg"),
    "pose-weight-nan": (["--pose-weight", "nan"], "--pose-weight"),
    "lip-weight-inf": (["--lip-weight=-inf"], "--lip-weight"),
    "steps-huge": (["--steps", "100000"], "--steps"),
    "seed-huge": (["--seed", str(10**30)], "--seed"),
    "seed-negative": (["--seed", "-1"], "--seed"),
    "size-0": (["--size", "0"], "--size"),
    "size-huge": (["--size", "100032"], "--size"),
    "size-4096": (["--size", "4096"], "--size"),
    "size-odd": (["--size", "65"], "--size"),
    "key-steps-letters": (["--key-steps", "a,b"], "--key-steps"),
    "device-unknown": (["--device", "tpu9"], "tpu9"),
}


@pytest.mark.parametrize("case", sorted(BAD_OPTIONS))
def test_bad_option_is_an_error_before_any_work(capsys, tmp_path, monkeypatch, speech_wav, case):
    import talkfast.pipeline.generate as generate

    monkeypatch.setattr(generate, "read_audio", lambda *a, **k: pytest.fail("the audio was read"))
    extra, word = BAD_OPTIONS[case]
    out = tmp_path / "out" / "video.mp4"
    code = main(["generate", *TINY, "-s", str(EXAMPLES / "portrait.png"), "-a", str(speech_wav), "-o", str(out),
                 "-q", *extra])
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.startswith("error: ") and word in err and "Traceback" not in err
    assert not out.exists()


@pytest.mark.parametrize("value", ["Infinity", "NaN", "1e400", "-Infinity"])
def test_batch_manifest_rejects_non_finite_cfg(tmp_path, value):
    from talkfast.app.batch import read_manifest
    from talkfast.errors import InputError

    manifest = tmp_path / "jobs.jsonl"
    manifest.write_text(f'{{"image": "a.png", "audio": "a.wav", "output": "a.mp4", "cfg": {value}}}\n')
    with pytest.raises(InputError, match="line 1.*'cfg'"):
        read_manifest(manifest)


def test_batch_size_is_bounded_by_the_model_before_any_item_runs(capsys, tmp_path, monkeypatch, speech_wav):
    import talkfast.pipeline.generate as generate

    monkeypatch.setattr(generate, "read_audio", lambda *a, **k: pytest.fail("an item ran"))
    manifest = tmp_path / "jobs.jsonl"
    portrait = EXAMPLES / "portrait.png"
    manifest.write_text(json.dumps({"image": str(portrait), "audio": str(speech_wav), "output": "a.mp4"}) + "\n"
                        + json.dumps({"image": str(portrait), "audio": str(speech_wav), "output": "b.mp4",
                                      "size": 100032}) + "\n")
    code = main(["batch", str(manifest), *TINY, "-q"])
    err = capsys.readouterr().err
    assert code == 2 and "line 2" in err and "'size'" in err and "Traceback" not in err
    assert not (tmp_path / "a.mp4").exists()


def test_corrupt_or_empty_model_json_is_a_checkpoint_error(capsys, tmp_path, speech_wav):
    import shutil

    from talkfast.models.loading import EMBEDDED_DIR

    for text in ("{}", "{not json", '{"preset": "huge"}', "[]"):
        folder = tmp_path / "model"
        shutil.rmtree(folder, ignore_errors=True)
        (folder / "vae").mkdir(parents=True)
        (folder / "net.safetensors").write_bytes(b"")
        shutil.copy(EMBEDDED_DIR / "vae" / "config.json", folder / "vae" / "config.json")
        (folder / "model.json").write_text(text)
        code = main(["generate", "--checkpoint", str(folder), "-a", str(speech_wav), "-o", str(tmp_path / "o.mp4"), "-q"])
        err = capsys.readouterr().err
        assert code == CheckpointError.exit_code, (text, err)
        assert err.startswith("error: ") and "model.json" in err and "Traceback" not in err, (text, err)


def test_huge_float_samples_are_normalised(tmp_path):
    """A float WAV of speech x 1e20 (finite) loads as the speech at peak 1."""
    from talkfast.io.audio import load_audio

    speech = _speech()
    path = tmp_path / "loud.wav"
    sf.write(str(path), speech.astype(np.float64) * 1e20, 16000, subtype="FLOAT")
    audio = load_audio(path)
    assert np.all(np.isfinite(audio.samples)) and np.abs(audio.samples).max() <= 1.0 + 1e-6
    expected = torch.from_numpy(speech / np.abs(speech).max())
    torch.testing.assert_close(torch.from_numpy(audio.samples), expected, rtol=1e-5, atol=1e-6)


def test_blank_video_is_an_error_and_nothing_is_published(capsys, tmp_path, monkeypatch, speech_wav):
    """A model that produces only black (NaN) frames: exit 5, no video, no sidecar, no temporaries."""
    from talkfast.pipeline.generate import TalkingHeadPipeline

    def black(self, latents, chunk=1):
        f, s = latents.shape[2], latents.shape[-1] * self.cfg.vae_scale_factor
        return torch.full((f, 3, s, s), math.nan)

    monkeypatch.setattr(TalkingHeadPipeline, "decode", black)
    out_dir = tmp_path / "out"
    out = out_dir / "video.mp4"
    code = main(["generate", *TINY, "-s", str(EXAMPLES / "portrait.png"), "-a", str(speech_wav), "-o", str(out),
                 "-q", "--steps", "1"])
    err = capsys.readouterr().err
    assert code == 5 and err.startswith("error: ") and "blank" in err, err
    assert list(out_dir.iterdir()) == []


def test_video_writer_blank_rule():
    """Flat frames (one colour, +-2 levels) are blank; one frame with any content is enough."""
    import tempfile

    from talkfast.io.video import BlankVideoError, VideoWriter

    with tempfile.TemporaryDirectory() as tmp:
        flat = np.full((3, 32, 32, 3), 40, np.uint8)
        flat[:, 0, 0, 0] = 42
        w = VideoWriter(Path(tmp) / "a.mp4", 25, (32, 32), reject_blank=True)
        w.write(flat)
        with pytest.raises(BlankVideoError):
            w.close()
        assert sorted(p.name for p in Path(tmp).iterdir()) == []
        w = VideoWriter(Path(tmp) / "b.mp4", 25, (32, 32), reject_blank=True)
        w.write(flat)
        varied = flat[:1].copy()
        varied[0, 5, 5] = 200
        w.write(varied)
        w.close()
        assert (Path(tmp) / "b.mp4").is_file()
        w = VideoWriter(Path(tmp) / "c.mp4", 25, (32, 32))  # off by default
        w.write(flat)
        w.close()


# ---------------------------------------------------------------------------------------------
# 2. no silent overwrites
# ---------------------------------------------------------------------------------------------


def _generate(out: Path, wav: Path, *extra, image: Path = EXAMPLES / "portrait.png") -> int:
    return main(["generate", *TINY, "-s", str(image), "-a", str(wav), "-o", str(out), "-q", "--steps", "1",
                 "--cfg", "1", *extra])


def test_a_users_json_beside_the_output_is_not_replaced(capsys, tmp_path, speech_wav):
    out, notes = tmp_path / "notes.mp4", tmp_path / "notes.json"
    notes.write_text('{"mine": true}')
    assert _generate(out, speech_wav) == 3
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "notes.json" in err and "--overwrite" in err
    assert notes.read_text() == '{"mine": true}' and not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.json"]
    assert _generate(out, speech_wav, "--overwrite") == 0  # asked for: replaced
    assert json.loads(notes.read_text())["talkfast"]
    capsys.readouterr()
    assert _generate(out, speech_wav) == 0  # what talkfast wrote is replaced without asking


def test_an_output_that_is_the_input_is_refused(capsys, tmp_path, speech_wav):
    from PIL import Image

    image = tmp_path / "x.mp4"  # a PNG under an .mp4 name
    Image.open(EXAMPLES / "portrait.png").save(image, format="PNG")
    before = image.read_bytes()
    for extra in ([], ["--overwrite"]):
        assert _generate(image, speech_wav, *extra, image=image) == 3
        err = capsys.readouterr().err
        assert err.startswith("error: ") and "input" in err
        assert image.read_bytes() == before


def test_a_symlinked_output_never_replaces_its_target(tmp_path):
    from talkfast.errors import OutputError
    from talkfast.io.video import VideoWriter, check_output_path

    target = tmp_path / "precious.mp4"
    target.write_bytes(b"precious")
    link = tmp_path / "link.mp4"
    link.symlink_to(target)
    with pytest.raises(OutputError, match="symbolic link"):
        check_output_path(link, overwrite=False)
    with VideoWriter(link, 25, (32, 32), overwrite=True) as w:  # asked to overwrite: the link is replaced
        w.write(np.random.default_rng(0).integers(0, 255, (2, 32, 32, 3), dtype=np.uint8))
    assert target.read_bytes() == b"precious"
    assert not link.is_symlink() and link.stat().st_size > 100


@pytest.mark.parametrize("case", ["outside", "case-duplicate", "report", "input"])
def test_batch_outputs_are_confined_and_distinct(capsys, tmp_path, monkeypatch, case):
    import talkfast.pipeline.loader as loader

    monkeypatch.setattr(loader, "load_pipeline", lambda *a, **k: pytest.fail("the model was loaded"))
    jobs = tmp_path / "jobs"
    jobs.mkdir()
    (tmp_path / "elsewhere").mkdir()
    config = tmp_path / "elsewhere" / "config.json"
    config.write_text("{}")
    row = {"image": str(EXAMPLES / "portrait.png"), "audio": "a.wav"}
    outputs = {"outside": ["../elsewhere/config.mp4"], "case-duplicate": ["c.MP4", "c.mp4"],
               "report": ["jobs.report.mp4"], "input": ["a.mp4", "b.mp4"]}[case]
    rows = [{**row, "output": o} for o in outputs]
    if case == "input":
        rows[1]["audio"] = "a.mp4"
    (jobs / "jobs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    code = main(["batch", str(jobs / "jobs.jsonl"), *TINY])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and "Traceback" not in err, err
    assert {"outside": "--allow-outside", "case-duplicate": "lines 1 and 2", "report": "report",
            "input": "audio of line 2"}[case] in err
    assert config.read_text() == "{}"
    if case == "outside":  # allowed when asked for; the user's config.json is still protected
        from talkfast.app.batch import read_manifest

        assert read_manifest(jobs / "jobs.jsonl", allow_outside=True)[0].output.parent == config.parent


# ---------------------------------------------------------------------------------------------
# 6. interrupted runs
# ---------------------------------------------------------------------------------------------

REPO = Path(__file__).resolve().parent.parent


def test_sigterm_unwinds_like_ctrl_c(tmp_path):
    """SIGTERM during encoding: exit 143, "interrupted", no output and no temporaries left."""
    import os
    import signal
    import subprocess
    import sys
    import time

    wav = tmp_path / "long.wav"
    sf.write(str(wav), _speech(4.0), 16000, subtype="PCM_16")
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "talkfast", "generate", *TINY, "-s", str(EXAMPLES / "portrait.png"),
                             "-a", str(wav), "-o", str(out_dir / "talk.mp4"), "-q", "--steps", "1", "--cfg", "1"],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 240
        while not list(out_dir.glob(".talk.mp4.*")):
            assert proc.poll() is None, proc.stderr.read().decode()[-3000:]
            assert time.monotonic() < deadline, "the writer never started"
            time.sleep(0.01)
        proc.send_signal(signal.SIGTERM)  # the process only, as `kill PID` does
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 128 + signal.SIGTERM, err.decode()[-2000:]
    assert "interrupted" in err.decode() and "Traceback" not in err.decode()
    assert list(out_dir.iterdir()) == []


def test_generate_removes_a_killed_runs_temporaries_but_not_a_running_writers(capsys, tmp_path, speech_wav):
    from talkfast.io.video import VideoWriter, remove_stale_temporaries

    out = tmp_path / "talk.mp4"
    stale = [tmp_path / f".talk.mp4.0123456789ab.{kind}" for kind in ("video.mp4", "audio.wav", "partial.mp4")]
    for f in stale:
        f.write_bytes(b"left by SIGKILL")
    running = VideoWriter(out, 25, (32, 32))  # another writer for the same output, still at work
    assert running._video_tmp.exists()
    assert sorted(remove_stale_temporaries(out)) == sorted(stale)
    assert running._video_tmp.exists()  # the running writer's file is left alone
    running.abort()
    assert list(tmp_path.iterdir()) == []
    for f in stale:
        f.write_bytes(b"left by SIGKILL")
    assert _generate(out, speech_wav) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["talk.json", "talk.mp4"]


# ---------------------------------------------------------------------------------------------
# 7. messages and performance traps
# ---------------------------------------------------------------------------------------------


def test_audio_without_an_audio_stream_says_so(tmp_path):
    import subprocess

    import imageio_ffmpeg

    from talkfast.errors import InputError
    from talkfast.io.audio import load_audio

    silent = tmp_path / "silent.mp4"
    subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-v", "error", "-f", "lavfi", "-i", "color=c=red:s=32x32:d=0.2",
                    "-y", str(silent)], check=True)
    for path in (EXAMPLES / "portrait.png", silent):
        with pytest.raises(InputError, match="no audio stream") as info:
            load_audio(path)
        assert "Error opening output files" not in str(info.value)


def test_doctor_reads_the_checkpoint_not_just_its_file_names(capsys, tmp_path):
    from talkfast.models.loading import EMBEDDED_DIR

    hallo = tmp_path / "pretrained_models"
    (hallo / "hallo").mkdir(parents=True)
    (hallo / "hallo" / "net.pth").write_bytes(b"")
    for sub in ("sd-vae-ft-mse", "wav2vec/wav2vec2-base-960h"):
        (hallo / sub).mkdir(parents=True)
        (hallo / sub / "config.json").write_text("{}")
    assert main(["doctor", "--checkpoint", str(hallo)]) == 1
    line = next(x for x in capsys.readouterr().out.splitlines() if "checkpoint" in x)
    assert line.startswith("[--]") and "net.pth" in line
    assert main(["doctor", "--checkpoint", str(EMBEDDED_DIR)]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("[ok] checkpoint"))
    assert "shapes match 'small'" in line


def test_half_precision_on_cpu_warns(caplog):
    import logging

    from talkfast.pipeline.loader import resolve_dtype

    with caplog.at_level(logging.WARNING):
        assert resolve_dtype("fp32", torch.device("cpu")) == torch.float32
        assert not caplog.records
        for name, dt in (("fp16", torch.float16), ("bf16", torch.bfloat16)):
            assert resolve_dtype(name, torch.device("cpu")) == dt
            assert name in caplog.records[-1].getMessage() and "slower" in caplog.records[-1].getMessage()


@pytest.mark.parametrize("every, writes", [(math.inf, 2), (0.0, 1 + 40 + 1)])
def test_batch_report_is_not_rewritten_after_every_item(tmp_path, monkeypatch, every, writes):
    """40 failing items: the report is written at the start and at the end, and in between at most
    every REPORT_EVERY_S seconds (0: after every item, the old quadratic behaviour)."""
    import talkfast.app.jobs as jobs
    import talkfast.io.video as video
    from talkfast.errors import InputError

    class Failing:
        def generate(self, *a, **k):
            raise InputError("no such audio")

    count = []
    real = video.write_json_atomic
    monkeypatch.setattr(video, "write_json_atomic", lambda *a: (count.append(1), real(*a))[1])
    monkeypatch.setattr(jobs, "REPORT_EVERY_S", every)
    items = [jobs.BatchItem(i, str(i), tmp_path / "p.png", tmp_path / "a.wav", tmp_path / f"{i}.mp4")
             for i in range(1, 41)]
    report = tmp_path / "report.json"
    results = jobs.run_batch(items, Failing(), {}, report_path=report, quiet=True, stream=io.StringIO())
    assert [r.status for r in results] == ["failed"] * 40
    assert len(count) == writes
    assert json.loads(report.read_text())["counts"]["failed"] == 40


@pytest.mark.parametrize("extra", [["--lr", "nan"], ["--lr", "0"], ["--lip-weight", "inf"], ["--motion-noise", "nan"],
                                   ["--steps", "0"]])
def test_train_numbers_are_checked_before_any_work(capsys, tmp_path, extra):
    code = main(["train", "net", "--data", str(tmp_path / "no_corpus"), "--out", str(tmp_path / "run"), "--model", "tiny",
                 "--device", "cpu", *extra])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and extra[0] in err, err
    assert not (tmp_path / "run").exists()


CPU_OOM = "DefaultCPUAllocator: can't allocate memory: you tried to allocate 7340032000 bytes"


@pytest.mark.parametrize("exc", [MemoryError(), RuntimeError(CPU_OOM)])
def test_running_out_of_memory_is_an_error_not_a_traceback(capsys, tmp_path, monkeypatch, speech_wav, exc):
    from talkfast.pipeline.generate import TalkingHeadPipeline

    def exhausted(*a, **k):
        raise exc

    monkeypatch.setattr(TalkingHeadPipeline, "generate", exhausted)
    assert _generate(tmp_path / "o.mp4", speech_wav) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: out of memory") and "--size" in err and "Traceback" not in err
