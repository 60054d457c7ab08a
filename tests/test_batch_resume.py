"""Resuming a batch counts an output as done only when talkfast finished it: our sidecar beside it
and the frame count it records (issue 30 B5: a foreign mp4 of another length, no sidecar, was
"skipped" and the job exited 0)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from talkfast.app.cli import main
from talkfast.io.video import probe_video

pytestmark = pytest.mark.usefixtures("one_torch_thread", "restore_logging")

PORTRAIT = Path(__file__).resolve().parent.parent / "src" / "talkfast" / "assets" / "examples" / "portrait.png"
TINY = ["--random-weights", "--model", "tiny", "--steps", "1", "--cfg", "1", "--size", "64"]


def _wav(path: Path, seconds: float, rate: int = 16000) -> str:
    t = np.arange(int(seconds * rate)) / rate
    sf.write(str(path), (0.3 * np.sin(2 * np.pi * 150 * t)).astype(np.float32), rate, subtype="PCM_16")
    return path.name


def _batch(capsys, manifest: Path) -> tuple[int, dict, str, str]:
    code = main(["batch", str(manifest), *TINY])
    out, err = capsys.readouterr()
    report = json.loads(manifest.with_name(f"{manifest.stem}.report.json").read_text())
    return code, {Path(i["output"]).name: i for i in report["items"]}, out, err


def test_resume_does_not_count_a_foreign_or_wrong_length_output_as_done(capsys, tmp_path: Path) -> None:
    first = tmp_path / "first.jsonl"
    first.write_text(json.dumps({"image": str(PORTRAIT), "audio": _wav(tmp_path / "short.wav", 0.2),
                                 "output": "out/short.mp4"}) + "\n")
    code, items, _, err = _batch(capsys, first)
    assert code == 0 and items["short.mp4"]["status"] == "done", err
    out = tmp_path / "out"
    assert probe_video(out / "short.mp4").num_frames == 5

    # A finished video of 5 frames with audio, at outputs whose items want 13 frames:
    shutil.copy(out / "short.mp4", out / "foreign.mp4")  # not ours: no sidecar
    shutil.copy(out / "short.mp4", out / "stale.mp4")  # ours, but its sidecar records another length
    sidecar = json.loads((out / "short.json").read_text())
    (out / "stale.json").write_text(json.dumps({**sidecar, "frames": 13}))
    foreign = (out / "foreign.mp4").read_bytes()
    long = _wav(tmp_path / "long.wav", 0.5)
    second = tmp_path / "second.jsonl"
    second.write_text("".join(json.dumps({"image": str(PORTRAIT), "audio": long, "output": f"out/{name}"}) + "\n"
                              for name in ("foreign.mp4", "stale.mp4", "short.mp4")))

    code, items, stdout, stderr = _batch(capsys, second)

    assert code == 1, stdout  # an item did not get its video
    assert "Traceback" not in stderr
    assert items["foreign.mp4"]["status"] == "failed"
    assert "not written by talkfast" in items["foreign.mp4"]["reason"]
    assert "foreign.json" in items["foreign.mp4"]["reason"] and "--overwrite" in items["foreign.mp4"]["reason"]
    assert (out / "foreign.mp4").read_bytes() == foreign and not (out / "foreign.json").exists()  # left as it was
    assert items["stale.mp4"]["status"] == "done"  # ours: generated again, at its length
    assert probe_video(out / "stale.mp4").num_frames == 13
    assert json.loads((out / "stale.json").read_text())["frames"] == 13
    assert items["short.mp4"]["status"] == "skipped"  # finished and ours (another audio now: not checked)
    assert "1 done, 1 skipped, 1 failed" in stdout
