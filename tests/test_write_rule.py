"""Issue 30's write rule (talkfast.io.write_rule): every path talkfast writes refuses to land on an
input (even with --overwrite) and to replace a file talkfast did not write (without --overwrite),
checked before any work, written atomically. One test per case of the issue (N4, T5, T8, M13, B3,
B4), each ending in ``error:`` with nothing lost."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from talkfast.app.cli import main
from talkfast.errors import OutputError
from talkfast.io.write_rule import check_writes, json_with_keys, png_by_talkfast, write_text_atomic

pytestmark = pytest.mark.usefixtures("one_torch_thread")

PORTRAIT = Path(__file__).resolve().parent.parent / "src" / "talkfast" / "assets" / "examples" / "portrait.png"


def _snapshot(*paths: Path) -> dict[Path, bytes]:
    return {p: p.read_bytes() for p in paths}


def _unchanged(before: dict[Path, bytes]) -> None:
    for p, data in before.items():
        assert p.read_bytes() == data, f"{p} was changed"


# -- the rule itself ------------------------------------------------------------------------------


def test_check_writes_inputs_foreign_files_and_folders(tmp_path):
    image = tmp_path / "face.png"
    image.write_bytes(b"portrait")
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / "weights.bin").write_bytes(b"w")
    for overwrite in (False, True):  # an input, a file of an input folder: never
        with pytest.raises(OutputError, match="also an input"):
            check_writes([image], inputs=[image], overwrite=overwrite)
        with pytest.raises(OutputError, match="file of the input folder"):
            check_writes([ckpt / "weights.bin"], inputs=[ckpt], overwrite=overwrite)
    assert check_writes([ckpt / "new.json"], inputs=[ckpt]) == [ckpt / "new.json"]  # a new file beside them: fine
    notes = tmp_path / "notes.json"
    notes.write_text('{"mine": 1}')
    with pytest.raises(OutputError, match="was not written by talkfast"):
        check_writes([notes])
    assert check_writes([notes], overwrite=True) == [notes]
    report = tmp_path / "r.json"
    report.write_text('{"manifest": null, "counts": {}, "items": []}')
    assert check_writes([report], ours=json_with_keys("manifest", "counts", "items")) == [report]
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    with pytest.raises(OutputError, match="is a file, not a folder"):
        check_writes([a_file / "deeper" / "tune.md"], overwrite=True)
    assert image.read_bytes() == b"portrait" and notes.read_text() == '{"mine": 1}'


def test_write_text_atomic_leaves_no_half_file(tmp_path, monkeypatch):
    path = tmp_path / "tune.md"
    path.write_text("old")

    def broken(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("talkfast.io.write_rule.os.replace", broken)
    with pytest.raises(OutputError, match="No space left"):
        write_text_atomic(path, "new")
    assert path.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["tune.md"]


# -- N4: train export --to a folder holding the user's model.json and card -------------------------


def _fake_run(run: Path) -> None:
    """A run folder with tiny-model checkpoints, as ``train vae`` / ``train net`` leave them."""
    from talkfast.models.config import get_preset
    from talkfast.models.loading import build_random

    net, vae = build_random(get_preset("tiny"), 0)
    run.mkdir()
    torch.save({"model": vae.state_dict(), "scaling_factor": 1.0}, run / "vae_ckpt.pt")
    torch.save({"model": net.state_dict(), "step": 1, "history": [1.0], "config": {}}, run / "net_ckpt.pt")


def test_export_never_replaces_a_tuned_or_edited_model_folder(tmp_path, capsys):
    run, dest = tmp_path / "run", tmp_path / "dest"
    _fake_run(run)
    dest.mkdir()
    (dest / "model.json").write_text(json.dumps({"preset": "tiny", "my_note": "keep", "tuned": {"fast": {}}}))
    (dest / "MODEL_CARD.md").write_text("# my own card\n")
    before = _snapshot(dest / "model.json", dest / "MODEL_CARD.md")
    argv = ["train", "export", "--out", str(run), "--model", "tiny", "--to", str(dest)]
    assert main(argv) == 3
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "model.json" in err and "--overwrite" in err and "Traceback" not in err
    _unchanged(before)
    assert not (dest / "net.safetensors").exists()
    # a plain export is replaced by a new one without --overwrite; the user's folder with it
    plain = tmp_path / "plain"
    assert main(["train", "export", "--out", str(run), "--model", "tiny", "--to", str(plain)]) == 0
    assert main(["train", "export", "--out", str(run), "--model", "tiny", "--to", str(plain)]) == 0
    assert main(argv + ["--overwrite"]) == 0
    assert "my_note" not in json.loads((dest / "model.json").read_text())
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging folder left


# -- T5 / T8: tune --out ---------------------------------------------------------------------------


def test_tune_out_keeps_the_users_tune_files(folder, wav, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "tune.md").write_text("my notes on tuning\n")
    (out / "tune.json").write_text('{"mine": true}')
    before = _snapshot(out / "tune.md", out / "tune.json", folder / "model.json")
    argv = ["tune", "--checkpoint", str(folder), "--sample", str(PORTRAIT), str(wav), "--out", str(out), "-q",
            "--max-settings", "0"]
    assert main(argv) == 3
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "tune.md" in err and "Traceback" not in err
    _unchanged(before)
    assert main(argv + ["--overwrite"]) == 0
    assert (out / "tune.md").read_text().startswith("# talkfast tune: ")
    assert main(argv) == 0  # now talkfast's own report: replaced without --overwrite


def test_tune_out_onto_a_file_fails_before_the_baseline(folder, wav, tmp_path, capsys, monkeypatch):
    from talkfast.eval import tune

    calls = []
    monkeypatch.setattr(tune, "run_tune", lambda *a, **k: calls.append(1) or pytest.fail("the baseline ran"))
    out = tmp_path / "results.txt"
    out.write_text("keep me")
    argv = ["tune", "--checkpoint", str(folder), "--sample", str(PORTRAIT), str(wav), "--out", str(out), "-q"]
    assert main(argv) == 3
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "not a folder" in err and "Traceback" not in err
    assert calls == [] and out.read_text() == "keep me"
    # --out inside the checkpoint, onto its model.json: an input, refused even with --overwrite
    assert main(["tune", "--checkpoint", str(folder), "--sample", str(PORTRAIT), str(wav), "--out",
                 str(folder / "model.json"), "--overwrite", "-q"]) == 3
    assert calls == []


def test_write_tuned_keeps_a_foreign_tuned_file(tmp_path):
    from talkfast.eval import tune

    ckpt = tmp_path / "hallo"
    ckpt.mkdir()
    (ckpt / "talkfast_tuned.json").write_text("my own notes, not JSON")
    with pytest.raises(OutputError, match="talkfast_tuned.json"):
        tune.write_tuned(ckpt, {"fast": {"steps": 4}})
    assert (ckpt / "talkfast_tuned.json").read_text() == "my own notes, not JSON"
    tune.write_tuned(ckpt, {"fast": {"steps": 4}}, overwrite=True)
    (ckpt / "talkfast_tuned.json").write_text(json.dumps({"tuned": {}, "kept": 1}))
    tune.write_tuned(ckpt, {"fast": {"steps": 4}})  # a JSON object: only "tuned" replaced
    assert json.loads((ckpt / "talkfast_tuned.json").read_text()) == {"tuned": {"fast": {"steps": 4}}, "kept": 1}


# -- M13: generate's sidecar onto the checkpoint's model.json --------------------------------------


def test_generate_sidecar_never_replaces_a_checkpoint_file(folder, wav, capsys):
    before = _snapshot(folder / "model.json")
    argv = ["generate", "--checkpoint", str(folder), "-s", str(PORTRAIT), "-a", str(wav), "--steps", "1",
            "--accel", "off", "-q"]
    assert main(argv + ["-o", str(folder / "model.mp4"), "--overwrite"]) == 3
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "model.json" in err and "input" in err and "Traceback" not in err
    _unchanged(before)
    assert not (folder / "model.mp4").exists()
    # a new name inside the folder is no input: written, and replaced by a later run
    assert main(argv + ["-o", str(folder / "talk.mp4")]) == 0
    assert main(argv + ["-o", str(folder / "talk.mp4")]) == 0
    from talkfast.models.loading import load_embedded

    load_embedded(folder)  # the folder still loads


# -- B3 / B4: batch --report onto an input ---------------------------------------------------------


@pytest.mark.parametrize("onto", ["image", "manifest"])
def test_batch_report_never_replaces_an_input(tmp_path, wav, capsys, onto):
    face = tmp_path / "face.png"
    shutil.copy(PORTRAIT, face)
    manifest = tmp_path / "jobs.jsonl"
    manifest.write_text(json.dumps({"image": "face.png", "audio": str(wav), "output": "out/a.mp4"}) + "\n")
    report = face if onto == "image" else manifest
    before = _snapshot(face, manifest)
    for extra in ([], ["--overwrite"]):
        assert main(["batch", str(manifest), "--report", str(report), "--random-weights", "--model", "tiny",
                     "--steps", "1", "--accel", "off", "-q", *extra]) == 3
        err = capsys.readouterr().err
        assert err.startswith("error: ") and "input" in err and "Traceback" not in err
        _unchanged(before)
    assert not (tmp_path / "out").exists()


def test_batch_report_keeps_a_foreign_file_without_overwrite(tmp_path, wav, capsys):
    manifest = tmp_path / "jobs.jsonl"
    manifest.write_text(json.dumps({"image": str(PORTRAIT), "audio": str(wav), "output": "a.mp4"}) + "\n")
    notes = tmp_path / "notes.json"
    notes.write_text('{"my": "notes"}')
    argv = ["batch", str(manifest), "--report", str(notes), "--random-weights", "--model", "tiny", "--steps", "1",
            "--accel", "off", "-q"]
    assert main(argv) == 3
    assert "was not written by talkfast" in capsys.readouterr().err and notes.read_text() == '{"my": "notes"}'
    assert main(argv + ["--overwrite"]) == 0
    assert main(argv) == 0  # talkfast's own report now
    assert set(json.loads(notes.read_text())) >= {"manifest", "counts", "items"}


# -- bench --out ------------------------------------------------------------------------------------


def test_bench_out_keeps_the_users_files(tmp_path, capsys):
    from talkfast.eval.report import check_outputs

    out = tmp_path / "bench_out"
    out.mkdir()
    (out / "bench.png").write_bytes(b"\x89PNG\r\n\x1a\nmy plot")
    with pytest.raises(OutputError, match="bench.png"):
        check_outputs(out)
    assert check_outputs(out, overwrite=True)
    with pytest.raises(OutputError, match="input"):
        check_outputs(out, inputs=[out / "bench.png"], overwrite=True)
    assert (out / "bench.png").read_bytes().endswith(b"my plot")


def test_bench_outputs_are_recognised_as_talkfasts(tmp_path):
    from talkfast.eval.bench_results import BenchResult
    from talkfast.eval.report import write_outputs

    result = BenchResult("tiny", "speed", {}, [], [])
    first = write_outputs(result, tmp_path)
    again = write_outputs(result, tmp_path)  # its own three files: replaced without --overwrite
    assert first == again and all(p.is_file() for p in again.values())
    assert png_by_talkfast(again["png"])  # the plot carries talkfast's PNG text chunk
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bench.json", "bench.md", "bench.png"]
