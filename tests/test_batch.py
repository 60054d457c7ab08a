"""``talkfast batch``: manifest checks, one model load for every item, skip / fail / report, and
resuming a job killed with SIGKILL. Everything runs the tiny random-weights model with 1-2 steps."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

import talkfast.pipeline.loader as loader
from talkfast.app.cli import main
from talkfast.io.video import VideoWriter, probe_video, remove_stale_temporaries

pytestmark = pytest.mark.usefixtures("one_torch_thread", "restore_logging")

EXAMPLES = Path(__file__).resolve().parent.parent / "src" / "talkfast" / "assets" / "examples"
PORTRAIT = EXAMPLES / "portrait.png"
REPO = Path(__file__).resolve().parent.parent
TINY = ["--random-weights", "--model", "tiny", "--steps", "1", "--cfg", "1"]


def speech_like(seconds: float, rate: int = 16000) -> np.ndarray:
    n = int(round(seconds * rate))
    t = np.arange(n) / rate
    f0 = 140.0 + 20.0 * np.sin(2 * np.pi * 1.3 * t)
    voice = np.sin(2 * np.pi * np.cumsum(f0) / rate) + 0.3 * np.sin(4 * np.pi * np.cumsum(f0) / rate)
    return (0.3 * voice * (0.55 + 0.45 * np.sin(2 * np.pi * 4.0 * t) ** 2)).astype(np.float32)


def write_wav(path: Path, seconds: float, rate: int = 16000) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), speech_like(seconds, rate), rate, subtype="PCM_16")
    return path


def listing(folder: Path) -> list[str]:
    """Every entry under ``folder``, hidden temporaries included."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def run(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


# ---------------------------------------------------------------------------------------------
# manifest errors: before any work
# ---------------------------------------------------------------------------------------------

GOOD = {"image": "p.png", "audio": "a.wav", "output": "out/a.mp4"}

MANIFEST_ERRORS = {
    # name: (file name, content lines, words expected in the message)
    "bad-json-line": ("m.jsonl", [GOOD, "", '{"image": "p.png", "audio": "a.wav" "output": "b.mp4"}'],
                      ("line 3", "not valid JSON")),
    "not-an-object": ("m.jsonl", [GOOD, '["p.png", "a.wav", "b.mp4"]'], ("line 2", "JSON object")),
    "jsonl-missing-column": ("m.jsonl", [GOOD, {"image": "p.png", "output": "b.mp4"}],
                             ("line 2", "missing column", "audio")),
    "csv-missing-column": ("m.csv", ["image,audio", "p.png,a.wav"], ("line 1", "missing column", "output")),
    "unknown-column": ("m.jsonl", [{**GOOD, "step": 3}], ("line 1", "unknown column", "'step'")),
    "duplicate-output": ("m.jsonl", [GOOD, {**GOOD, "output": "out/../out/./a.mp4"}],
                         ("lines 1 and 2", "a.mp4")),
    "csv-duplicate-output": ("m.csv", ["image,audio,output", "p.png,a.wav,x.mp4", "p.png,a.wav,x.mp4", "p.png,a.wav,y.mp4"],
                             ("lines 2 and 3", "x.mp4")),
    "bad-int": ("m.csv", ["image,audio,output,steps", "p.png,a.wav,x.mp4,", "p.png,a.wav,y.mp4,many"],
                ("line 3", "'steps'", "integer", "many")),
    "steps-0": ("m.jsonl", [{**GOOD, "steps": 0}], ("line 1", "'steps'", "between 1 and 1000")),
    "fps-out-of-range": ("m.jsonl", [{**GOOD, "fps": 500}], ("line 1", "'fps'", "120")),
    "unknown-accel": ("m.jsonl", [{**GOOD, "accel": "warp"}], ("line 1", "accel", "warp", "balanced")),
    "empty-path": ("m.jsonl", [{**GOOD, "audio": ""}], ("line 1", "'audio'")),
    "not-mp4": ("m.jsonl", [{**GOOD, "output": "out/a.avi"}], ("line 1", ".mp4")),
    "empty": ("m.jsonl", ["", "# nothing"], ("no items",)),
    "unknown-format": ("m.txt", ["p.png a.wav x.mp4"], ("unknown format", ".txt")),
}


@pytest.mark.parametrize("case", list(MANIFEST_ERRORS))
def test_malformed_manifest_fails_before_any_work(capsys, tmp_path: Path, monkeypatch, case: str) -> None:
    name, lines, words = MANIFEST_ERRORS[case]
    manifest = write_jsonl(tmp_path / name, lines)
    monkeypatch.setattr(loader, "load_pipeline", lambda *a, **k: pytest.fail("the model was loaded"))
    before = listing(tmp_path)

    code, stdout, stderr = run(capsys, "batch", manifest, *TINY)

    assert code == 2, (code, stderr)
    assert stderr.startswith("error: ") and "Traceback" not in stderr
    for word in words:
        assert word in stderr, (word, stderr)
    assert listing(tmp_path) == before  # no report, no output folder


def test_missing_manifest(capsys, tmp_path: Path) -> None:
    code, _, stderr = run(capsys, "batch", tmp_path / "jobs.jsonl", *TINY)
    assert code == 2 and stderr.startswith("error: ") and "not found" in stderr
    assert listing(tmp_path) == []


# ---------------------------------------------------------------------------------------------
# a job in-process: one model load, per-item settings, relative paths, skip / fail, report
# ---------------------------------------------------------------------------------------------


def _snapshot(net) -> dict:
    """Attention processors and reference readers: what an accelerator changes while attached."""
    procs = {name: type(m.processor).__name__ for name, m in net.named_modules() if hasattr(m, "processor")}
    return {"processors": procs, "readers": {k: r.enabled for k, r in net.readers.items()}}


def test_batch_job(capsys, tmp_path: Path, monkeypatch) -> None:
    jobs = tmp_path / "jobs"
    (jobs / "in").mkdir(parents=True)
    (jobs / "in" / "p.png").write_bytes(PORTRAIT.read_bytes())
    write_wav(jobs / "in" / "short.wav", 0.5)  # 13 frames at 25 fps, 15 at 30
    write_wav(jobs / "in" / "other.wav", 0.3, rate=22050)  # 8 frames at 25 fps
    (jobs / "in" / "corrupt.wav").write_bytes(np.random.default_rng(0).bytes(3000))
    out = jobs / "out"
    out.mkdir()
    (out / "garbage.mp4").write_bytes(b"not a video" * 50)  # not a finished video: generated again,
    (out / "garbage.json").write_text('{"talkfast": "0.0"}')  # as talkfast wrote it (else it is refused)
    stale = out / ".plain.mp4.0123456789ab.video.mp4"  # what a killed run leaves behind
    stale.write_bytes(b"partial")
    manifest = jobs / "manifest.csv"
    manifest.write_text(
        "image,audio,output,steps,cfg,seed,accel,fps,size,id\n"
        "in/p.png,in/short.wav,out/plain.mp4,,,,,,,\n"
        "in/p.png,in/short.wav,out/custom.mp4,2,1.5,5,balanced,30,64,custom\n"
        "in/p.png,in/corrupt.wav,out/broken.mp4,,,,,,,\n"
        "in/p.png,in/other.wav,out/garbage.mp4,,,,,,,\n"
    )
    loads = []

    def counting_load(*args, **kwargs):
        pipe = real_load(*args, **kwargs)
        loads.append((pipe, _snapshot(pipe.net)))
        return pipe

    real_load = loader.load_pipeline
    monkeypatch.setattr(loader, "load_pipeline", counting_load)
    monkeypatch.chdir(tmp_path)  # relative paths follow the manifest, not the working folder

    code, stdout, stderr = run(capsys, "batch", manifest, *TINY)

    assert code == 1, stderr  # one item failed
    assert len(loads) == 1
    pipe, before = loads[0]
    assert _snapshot(pipe.net) == before  # the "balanced" item's accelerator was detached
    assert "Traceback" not in stderr
    rows = {line.split()[0]: line for line in stdout.splitlines() if line[:1].isdigit()}
    assert "done" in rows["2"] and "done" in rows["3"] and "done" in rows["5"]
    assert "failed" in rows["4"] and "corrupt.wav" in rows["4"]
    assert "3 done, 0 skipped, 1 failed" in stdout
    assert not stale.exists()
    expected = {"plain.mp4": (13, 25), "custom.mp4": (15, 30), "garbage.mp4": (8, 25)}
    for name, (frames, fps) in expected.items():
        info = probe_video(out / name)
        assert info.num_frames == frames and info.fps == pytest.approx(fps) and info.has_audio, name
        assert (info.width, info.height) == (64, 64)
    assert listing(out) == sorted(["custom.json", "custom.mp4", "garbage.json", "garbage.mp4", "plain.json", "plain.mp4"])
    sidecar = json.loads((out / "custom.json").read_text())
    assert sidecar["options"]["steps"] == 2 and sidecar["options"]["seed"] == 5
    assert sidecar["options"]["guidance"] == 1.5 and sidecar["options"]["fps"] == 30
    assert sidecar["accelerator"]["config"]["method"] == "lightningcp"
    assert sidecar["batch"] == {"manifest": str(manifest.resolve()), "line": 3, "id": "custom"}
    assert json.loads((out / "plain.json").read_text())["options"]["steps"] == 1  # the command line's default

    report = json.loads((jobs / "manifest.report.json").read_text())
    assert report["counts"] == {"done": 3, "skipped": 0, "failed": 1, "pending": 0}
    assert report["finished"] is not None
    by_line = {item["line"]: item for item in report["items"]}
    assert by_line[4]["status"] == "failed" and "corrupt.wav" in by_line[4]["reason"]
    assert by_line[3]["id"] == "custom" and by_line[3]["frames"] == 15
    assert by_line[2]["output"] == str(out / "plain.mp4")
    assert not (out / "broken.mp4").exists()

    # Run again: finished outputs are skipped (not rewritten), the failing item fails again.
    mtimes = {name: (out / name).stat().st_mtime_ns for name in expected}
    own_report = tmp_path / "reports" / "second.json"
    code, stdout, _ = run(capsys, "batch", manifest, *TINY, "--report", own_report, "-q")
    assert code == 1
    assert "0 done, 3 skipped, 1 failed" in stdout
    assert {name: (out / name).stat().st_mtime_ns for name in expected} == mtimes
    second = json.loads(own_report.read_text())
    assert [i["status"] for i in second["items"]] == ["skipped", "skipped", "failed", "skipped"]
    assert len(loads) == 2  # one more load for the second job


def test_all_done_exits_zero(capsys, tmp_path: Path) -> None:
    write_wav(tmp_path / "a.wav", 0.2)
    manifest = write_jsonl(tmp_path / "m.jsonl", [{"image": str(PORTRAIT), "audio": "a.wav", "output": "v/a.mp4"}])
    code, stdout, stderr = run(capsys, "batch", manifest, *TINY)
    assert code == 0, stderr
    assert "1 done, 0 skipped, 0 failed" in stdout
    assert probe_video(tmp_path / "v" / "a.mp4").num_frames == 5


# ---------------------------------------------------------------------------------------------
# temporaries of a killed writer
# ---------------------------------------------------------------------------------------------


def test_remove_stale_temporaries_touches_only_that_outputs_temporaries(tmp_path: Path) -> None:
    out = tmp_path / "talk.mp4"
    writer = VideoWriter(out, fps=25, size=(32, 32), sidecar={})
    names = [writer._partial.name, writer._video_tmp.name, writer._wav_tmp.name, writer._json_tmp.name,
             f".{writer._json_tmp.name}.k2j3h4.tmp"]  # the sidecar's own write_json_atomic temporary
    writer.abort()
    for name in names:
        (tmp_path / name).write_bytes(b"x")
    keep = ["talk.mp4", "talk.json", ".talk.mp4.notes", "other.mp4", ".other.mp4.0123456789ab.partial.mp4",
            ".talk.mp4.0123456789ab.partial.mp4.bak"]
    for name in keep:
        (tmp_path / name).write_bytes(b"y")

    removed = remove_stale_temporaries(out)

    assert sorted(p.name for p in removed) == sorted(names)
    assert listing(tmp_path) == sorted(keep)
    assert remove_stale_temporaries(tmp_path / "missing" / "x.mp4") == []


# ---------------------------------------------------------------------------------------------
# resuming after SIGKILL
# ---------------------------------------------------------------------------------------------


def _batch_cmd(manifest: Path) -> list[str]:
    return [sys.executable, "-m", "talkfast", "batch", str(manifest), *TINY, "-q"]


def test_resume_after_sigkill(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    write_wav(tmp_path / "first.wav", 0.3)
    write_wav(tmp_path / "long.wav", 0.6)  # 15 frames, 4 clips: the kill lands inside one of these
    out = tmp_path / "out"
    rows = [{"image": str(PORTRAIT), "audio": "first.wav", "output": "out/v1.mp4"}]
    rows += [{"image": str(PORTRAIT), "audio": "long.wav", "output": f"out/v{i}.mp4"} for i in (2, 3, 4)]
    manifest = write_jsonl(tmp_path / "jobs.jsonl", rows)
    frames = {"v1.mp4": 8, "v2.mp4": 15, "v3.mp4": 15, "v4.mp4": 15}

    proc = subprocess.Popen(_batch_cmd(manifest), cwd=tmp_path, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, start_new_session=True)
    try:
        # Kill once the first output is published and the second one is being encoded.
        deadline = time.monotonic() + 240
        while not ((out / "v1.mp4").exists() and list(out.glob(".v2.mp4.*"))):
            assert proc.poll() is None, proc.stderr.read().decode()[-3000:]
            assert time.monotonic() < deadline, "the first output never appeared"
            time.sleep(0.01)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the job and its ffmpeg encoder, with no chance to clean up
        proc.wait(timeout=60)
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    published = sorted(p.name for p in out.glob("*.mp4") if not p.name.startswith("."))
    assert "v4.mp4" not in published, "the job finished before it was killed; nothing was resumed"
    assert any(name.startswith(".v2.mp4.") for name in listing(out))  # the killed writer's temporaries
    for name in published:  # atomic publishing: whatever is at an output path is a finished video
        assert probe_video(out / name).num_frames == frames[name]
    assert json.loads((tmp_path / "jobs.report.json").read_text())["finished"] is None  # an unfinished job's report

    again = subprocess.run(_batch_cmd(manifest), cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)

    assert again.returncode == 0, again.stderr[-3000:]
    report = json.loads((tmp_path / "jobs.report.json").read_text())
    statuses = {Path(i["output"]).name: i["status"] for i in report["items"]}
    assert statuses == {name: "skipped" if name in published else "done" for name in frames}
    assert report["counts"]["failed"] == 0 and report["finished"] is not None
    # Every output exactly once, each a valid video of the right length, and nothing else left.
    assert listing(out) == sorted([*frames, *(n.replace(".mp4", ".json") for n in frames)])
    for name, n in frames.items():
        info = probe_video(out / name)
        assert info.num_frames == n and info.has_audio
        assert abs(info.audio_duration - info.video_duration) < 1 / 25
