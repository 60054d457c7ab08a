"""``talkfast batch MANIFEST --ray``: a local Ray instance (2 CPUs), actors with the tiny random
model, every output produced exactly once; an actor killed in the middle of an item loses and
duplicates nothing (the item is retried on a fresh actor, no temporaries are left)."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

ray = pytest.importorskip("ray", reason="Ray is not installed (pip install 'talkfast[ray]')")
pytestmark = pytest.mark.slow  # a Ray instance and actors with a loaded model each: ~15-80 s a test

from talkfast.app.batch import read_manifest  # noqa: E402
from talkfast.app.cli import main  # noqa: E402
from talkfast.io.video import probe_video  # noqa: E402

PORTRAIT = Path(__file__).resolve().parent.parent / "src" / "talkfast" / "assets" / "examples" / "portrait.png"
TINY = ["--random-weights", "--model", "tiny", "--steps", "1", "--cfg", "1", "--device", "cpu"]
MODEL = {"random_weights": True, "preset": "tiny", "device": "cpu", "dtype": "fp32"}
OUTER_TIMEOUT_S = 900  # only a stuck run reaches it (an actor starts and loads the model in seconds)


@pytest.fixture(scope="module", autouse=True)
def local_ray():
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def wav(path: Path, seconds: float) -> Path:
    t = np.arange(int(seconds * 16000)) / 16000
    sf.write(str(path), (0.3 * np.sin(2 * np.pi * 180 * t)).astype(np.float32), 16000, subtype="PCM_16")
    return path


def manifest(tmp: Path, seconds: list[float]) -> Path:
    rows = []
    for i, s in enumerate(seconds):
        wav(tmp / f"a{i}.wav", s)
        rows.append({"image": str(PORTRAIT), "audio": f"a{i}.wav", "output": f"out/v{i}.mp4", "id": f"item{i}"})
    path = tmp / "jobs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def check_outputs(tmp: Path, seconds: list[float]) -> None:
    names = sorted(p.name for p in (tmp / "out").iterdir())
    assert names == sorted([f"v{i}.{ext}" for i in range(len(seconds)) for ext in ("json", "mp4")]), names  # no temporaries
    for i, s in enumerate(seconds):
        info = probe_video(tmp / "out" / f"v{i}.mp4")
        assert info.num_frames == int(np.ceil(s * 25)) and info.has_audio


def test_items_over_two_actors_each_once_then_all_skipped(tmp_path, capsys):
    seconds = [0.2, 0.3, 0.2, 0.25]
    m = manifest(tmp_path, seconds)
    code = main(["batch", str(m), "--ray", "local", "--workers", "2", *TINY])
    out = capsys.readouterr().out
    assert code == 0, out
    check_outputs(tmp_path, seconds)
    report = json.loads((tmp_path / "jobs.report.json").read_text())
    assert report["counts"] == {"done": 4, "skipped": 0, "failed": 0, "pending": 0}
    assert not any("attempt" in it["reason"] for it in report["items"])  # each item ran once
    assert report["finished"] is not None
    # the same command again: every output exists, nothing is generated
    assert main(["batch", str(m), "--ray", "local", "--workers", "2", *TINY]) == 0
    report = json.loads((tmp_path / "jobs.report.json").read_text())
    assert report["counts"]["skipped"] == 4


def test_killed_actor_mid_item_is_retried_without_loss_or_duplicates(tmp_path):
    from talkfast.parallel.ray_batch import run_ray_batch

    seconds = [0.2, 2.0, 0.2, 0.2]  # item1 (13 clips) is the one whose actor gets killed
    m = manifest(tmp_path, seconds)
    items = read_manifest(m)
    killed = []

    def on_submit(item, actor, attempt):
        """Kill item1's first actor once it is writing item1's video: its hidden temporaries beside
        the output are the marker (they exist from the writer's start until the video is published,
        i.e. while all 13 clips sample). No deadline decides the verdict: the wait ends on that
        marker, or on the published video (the marker was missed), or after OUTER_TIMEOUT_S, which
        only a stuck Ray or model load reaches and which fails with its own message."""
        if item.id != "item1" or attempt != 1:
            return
        out = item.output
        give_up = time.monotonic() + OUTER_TIMEOUT_S
        while True:
            if out.parent.exists() and any(p.name.startswith(f".{out.name}.") for p in out.parent.iterdir()):
                ray.kill(actor, no_restart=True)
                killed.append("while writing")
                return
            if out.exists():
                killed.append("after it was published")
                return
            if time.monotonic() > give_up:
                ray.kill(actor, no_restart=True)
                pytest.fail(f"item1's actor wrote nothing beside {out} in {OUTER_TIMEOUT_S} s: Ray or the model load "
                            "is stuck")
            time.sleep(0.02)

    results = run_ray_batch(items, {"steps": 1, "cfg": 1.0}, MODEL, workers=2, retries=2,
                            report_path=tmp_path / "report.json", manifest=m, quiet=True, on_submit=on_submit)
    assert killed == ["while writing"]  # killed while item1's temporaries existed
    assert [r.status for r in results] == ["done"] * 4, [r.reason for r in results]
    assert "attempt 2 of 3" in results[1].reason
    assert all("attempt" not in r.reason for i, r in enumerate(results) if i != 1)
    check_outputs(tmp_path, seconds)
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["counts"]["done"] == 4


def test_bad_item_fails_after_bounded_retries(tmp_path):
    from talkfast.parallel.ray_batch import run_ray_batch

    m = manifest(tmp_path, [0.2])
    (tmp_path / "a0.wav").write_bytes(b"not audio")
    results = run_ray_batch(read_manifest(m), {"steps": 1, "cfg": 1.0}, MODEL, workers=1, retries=1, quiet=True)
    assert results[0].status == "failed" and "attempt 2 of 2" in results[0].reason
    assert not (tmp_path / "out" / "v0.mp4").exists()
