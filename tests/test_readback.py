"""What talkfast reads back from files it wrote before (issue 30): the tune cache, the tuned
settings, training run checkpoints. Each bad file ends in ``error:`` naming the file and the
field (a tune cache: set aside with a warning and measured again), never a traceback, never a
forged number published as measured."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from talkfast.accelerators import AccelConfig, CachingConfig, KeySchedule
from talkfast.accelerators import tuned as tuned_mod
from talkfast.app.cli import main
from talkfast.errors import CheckpointError, InputError
from talkfast.eval import tune
from talkfast.eval.tune_space import Setting
from talkfast.io import records
from talkfast.io.records import Int, List, MapOf, Null, Num, Obj, RecordError, Str

pytestmark = pytest.mark.usefixtures("one_torch_thread", "restore_logging")

PORTRAIT = Path(__file__).resolve().parent.parent / "src" / "talkfast" / "assets" / "examples" / "portrait.png"


# ---------------------------------------------------------------------------------------------
# the schema helper
# ---------------------------------------------------------------------------------------------


def test_schema_names_the_field_and_refuses_bool_nan_and_strings_for_numbers():
    spec = Obj({"a": MapOf(Obj({"n": Int(1, 10), "x": Null(Num(0.0)), "s": Str(("p", "q")), "l": List(Num())}))},
               required=("a",))
    good = {"a": {"k": {"n": 3, "x": None, "s": "p", "l": [1, 2.5]}}}
    assert records.check(good, spec) == good
    for bad, field in ((True, "a.k.n"), ("3", "a.k.n"), (3.0, "a.k.n"), (11, "a.k.n")):
        with pytest.raises(RecordError) as err:
            records.check({"a": {"k": {"n": bad}}}, spec)
        assert err.value.field == field
    for bad in (math.nan, math.inf, -1.0, "1"):
        with pytest.raises(RecordError, match=r"a\.k\.x"):
            records.check({"a": {"k": {"x": bad}}}, spec)
    with pytest.raises(RecordError, match=r"a\.k\.l\[1\]"):
        records.check({"a": {"k": {"l": [1, "two"]}}}, spec)
    with pytest.raises(RecordError, match=r"a\.k\.zz.*not a known field"):
        records.check({"a": {"k": {"zz": 1}}}, spec)
    with pytest.raises(RecordError, match="a.*missing"):
        records.check({}, spec)
    with pytest.raises(InputError, match=r"f\.json: field 'a\.k\.s'"):
        records.checked({"a": {"k": {"s": "r"}}}, spec, file="f.json")


def test_read_json_refuses_nan_and_infinity(tmp_path):
    for text in ('{"a": NaN}', '{"a": Infinity}', '[-Infinity]', "{not json"):
        (tmp_path / "f.json").write_text(text)
        with pytest.raises(CheckpointError, match="f.json"):
            records.read_json(tmp_path / "f.json", error=CheckpointError)


def test_accel_config_from_dict_checks_types():
    d = AccelConfig("lightningcp").describe()
    assert AccelConfig.from_dict(json.loads(json.dumps(d))) == AccelConfig("lightningcp")
    for value in ("2", True, 2.0, None):
        d["caching"]["keys"]["interval"] = value
        with pytest.raises(ValueError, match=r"caching\.keys\.interval"):
            AccelConfig.from_dict(d)


# ---------------------------------------------------------------------------------------------
# training run checkpoints (N1, N2)
# ---------------------------------------------------------------------------------------------


def _run_folder(tmp_path: Path, net_extra: dict) -> Path:
    from talkfast.models.loading import build_random
    from talkfast.train.loop import _save

    run = tmp_path / "run"
    run.mkdir()
    net, vae = build_random("tiny")
    _save(run / "vae_ckpt.pt", {"model": vae.state_dict(), "step": 1})
    _save(run / "net_ckpt.pt", {"model": net.state_dict(), **net_extra})
    return run


@pytest.mark.parametrize("case", ["no-step", "history-strings", "step-float", "history-nan"])
def test_train_export_of_a_bad_net_checkpoint_is_an_error(tmp_path, capsys, case):
    extra = {"no-step": {"history": [0.5]}, "history-strings": {"step": 2, "history": ["a", "b"]},
             "step-float": {"step": 2.5, "history": [0.5]}, "history-nan": {"step": 1, "history": [math.nan]}}[case]
    field = {"no-step": "'step' is missing", "history-strings": "'history[0]'", "step-float": "'step'",
             "history-nan": "'history[0]'"}[case]
    run = _run_folder(tmp_path, extra)
    code = main(["train", "export", "--out", str(run), "--model", "tiny"])
    err = capsys.readouterr().err
    assert code == CheckpointError.exit_code, err
    assert err.startswith("error: ") and "net_ckpt.pt" in err and field in err and "Traceback" not in err
    assert not (run / "model").exists()


def test_train_export_of_a_bad_training_summary_is_an_error(tmp_path, capsys):
    run = _run_folder(tmp_path, {"step": 1, "history": [0.5]})
    (run / "net_train.json").write_text(json.dumps({"steps": "3", "of": 3, "final_loss": 0.1, "first_loss": 0.2,
                                                    "seconds": 1.0}))
    code = main(["train", "export", "--out", str(run), "--model", "tiny"])
    err = capsys.readouterr().err
    assert code == CheckpointError.exit_code and "net_train.json" in err and "'steps'" in err and "Traceback" not in err
    assert not (run / "model").exists()


def test_resuming_from_a_checkpoint_without_its_optimizer_state_is_an_error(tmp_path):
    from talkfast.models.loading import build_random
    from talkfast.train.loop import TrainConfig, _save, train_vae

    _, vae = build_random("tiny")
    (tmp_path / "run").mkdir()
    _save(tmp_path / "run" / "vae_ckpt.pt", {"model": vae.state_dict(), "step": 1, "history": [0.1]})
    frames = lambda g: torch.rand(1, 3, 32, 32, generator=g) * 2 - 1  # noqa: E731
    with pytest.raises(CheckpointError, match=r"vae_ckpt\.pt: field 'opt' is missing"):
        train_vae(vae, frames, TrainConfig(steps=2), tmp_path / "run")


def test_what_the_loop_writes_passes_the_checks(tmp_path):
    from talkfast.models.loading import build_random
    from talkfast.train.loop import TrainConfig, load_checkpoint, read_summary, train_vae

    _, vae = build_random("tiny")
    frames = lambda g: torch.rand(1, 3, 32, 32, generator=g) * 2 - 1  # noqa: E731
    train_vae(vae, frames, TrainConfig(steps=1, warmup=1), tmp_path)
    state = load_checkpoint(tmp_path / "vae_ckpt.pt", need=("opt", "rng", "history", "step"))
    assert state["step"] == 1 and read_summary(tmp_path / "vae_train.json")["steps"] == 1
    train_vae(vae, frames, TrainConfig(steps=2, warmup=1), tmp_path)  # resumes through the checks
    assert load_checkpoint(tmp_path / "vae_ckpt.pt")["step"] == 2


# ---------------------------------------------------------------------------------------------
# the tune cache (T2, T3, T6, T7)
# ---------------------------------------------------------------------------------------------

LCP = AccelConfig("lightningcp", CachingConfig(keys=KeySchedule("uniform", interval=2)))
SETTING = Setting("lightningcp@2/2", 2, LCP)


def _measured(name="lightningcp@2/2", steps=2, accel=LCP, seconds=1.5, psnr=31.0) -> dict:
    return {"name": name, "steps": steps, "accel": accel.describe(), "full_steps": 4, "stage_seconds": {"sample": 1.0},
            "cases": 1, "date": "2026-12-07T00:00:00+00:00", "case_lipsync": [None], "case_psnr": [psnr],
            "seconds": seconds, "model_seconds": 1.0, "psnr_base": psnr, "ssim_base": 0.9, "psnr_gt": None,
            "ssim_gt": None, "l1_gt": None, "lipsync": None}


def _cache_file(tmp_path, text: str) -> Path:
    path = tmp_path / "out" / tune.CACHE_NAME
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def _aside(path: Path) -> list[Path]:
    return sorted(path.parent.glob(f"{path.name}.untrusted-*"))


@pytest.mark.parametrize("text", ["[]", '{"version": 2, "entries": 5}', '{"version": 1, "entries": 5}',
                                  '{"version": 2, "entries": {"k": NaN}}', "{not json", "null"])
def test_a_cache_of_the_wrong_shape_is_set_aside_with_a_warning(tmp_path, text):
    path = _cache_file(tmp_path, text)
    said = []
    cache = tune.TuneCache(path, warn=said.append)
    assert cache.entries == {} and not path.exists()
    (aside,) = _aside(path)
    assert aside.read_text() == text  # kept, not deleted
    assert len(said) == 1 and "not trusted" in said[0] and aside.name in said[0]
    cache.put("k", _measured(), "fp")  # and the cache starts over
    assert json.loads(path.read_text())["entries"]["k"]["digest"]


@pytest.mark.parametrize("field,value", [("seconds", "fast"), ("seconds", 0), ("psnr_base", True),
                                         ("steps", "2"), ("case_psnr", "x")])
def test_a_cache_entry_that_fails_the_schema_sets_the_file_aside(tmp_path, field, value):
    good, bad = _measured(), _measured()
    bad[field] = value
    path = _cache_file(tmp_path, json.dumps({"version": tune.CACHE_VERSION,
                                             "entries": {"good": dict(good, digest="x"), "bad": dict(bad, digest="x")}}))
    said = []
    cache = tune.TuneCache(path, warn=said.append)
    assert set(cache.entries) == {"good"} and len(_aside(path)) == 1 and f"entries.bad.{field}" in said[0]


def test_a_cache_entry_with_a_bad_accelerator_sets_the_file_aside(tmp_path):
    bad = _measured()
    bad["accel"]["caching"]["keys"]["interval"] = "2"
    path = _cache_file(tmp_path, json.dumps({"version": tune.CACHE_VERSION, "entries": {"bad": dict(bad, digest="x")}}))
    said = []
    assert tune.TuneCache(path, warn=said.append).entries == {} and "entries.bad.accel" in said[0]


def test_an_edited_or_foreign_cache_entry_is_not_trusted(tmp_path):
    path = tmp_path / "out" / tune.CACHE_NAME
    said = []
    cache = tune.TuneCache(path, warn=said.append)
    cache.put("k", _measured(), "fp-this-model")
    assert tune.TuneCache(path).get("k", "fp-this-model", SETTING)["seconds"] == 1.5  # written, read back
    # another model's (or samples', or talkfast's) fingerprint: the digest does not match
    assert tune.TuneCache(path, warn=said.append).get("k", "fp-other-model", SETTING) is None
    assert len(_aside(path)) == 1 and "digest" in said[-1]
    # a hand-edited number
    cache = tune.TuneCache(path)
    cache.put("k", _measured(), "fp-this-model")
    data = json.loads(path.read_text())
    data["entries"]["k"]["seconds"] = 0.01
    path.write_text(json.dumps(data))
    assert tune.TuneCache(path, warn=said.append).get("k", "fp-this-model", SETTING) is None
    # an entry moved under another setting's key, digest and all: not the setting it names
    other = Setting("lightningcp@3/2", 2, AccelConfig("lightningcp"))
    cache = tune.TuneCache(path)
    cache.put("k", _measured(), "fp-this-model")
    assert tune.TuneCache(path, warn=said.append).get("k", "fp-this-model", other) is None
    assert len(_aside(path)) == 3


def test_the_fingerprint_covers_the_weights_and_the_talkfast_version(tmp_path, monkeypatch):
    class Pipe:
        cfg = type("C", (), {"name": "tiny"})()
        source = str(tmp_path)

    (tmp_path / "net.safetensors").write_bytes(b"weights one")
    first = tune.model_signature(Pipe())
    (tmp_path / "net.safetensors").write_bytes(b"weights two!")
    second = tune.model_signature(Pipe())
    assert first["weights_sha256"] != second["weights_sha256"]
    fp = tune.fingerprint([second])
    monkeypatch.setattr(tune, "__version__", "99.0")
    assert tune.fingerprint([second]) != fp


def test_tune_does_not_trust_a_forged_cache_entry(folder, wav, tmp_path, capsys):
    """T7: the numbers of a measured setting edited in the cache (0.01 s, 99 dB): the next tune
    sets the cache aside, measures the setting again and writes its real numbers."""
    out = tmp_path / "out"
    argv = ["tune", "--checkpoint", str(folder), "--sample", str(PORTRAIT), str(wav), "--out", str(out), "-q",
            "--max-settings", "1"]
    assert main(argv) == 0, capsys.readouterr().err
    capsys.readouterr()
    path = out / tune.CACHE_NAME
    data = json.loads(path.read_text())
    report = json.loads((out / "tune.json").read_text())
    (row,) = report["rows"]
    entry = data["entries"][row["key"]]
    entry.update(seconds=0.01, model_seconds=0.01, psnr_base=99.0, ssim_base=1.0)
    path.write_text(json.dumps(data))
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert "warning:" in err and "not trusted" in err and "Traceback" not in err
    report = json.loads((out / "tune.json").read_text())
    assert report["meta"]["measured_now"] == 1 and report["meta"]["from_cache"] == 0
    (row,) = report["rows"]
    assert row["seconds"] != 0.01 and row["psnr_base"] != 99.0 and row["speedup"] < 100
    card = json.loads((folder / "model.json").read_text())
    assert all(e["measured"]["psnr_base"] != 99.0 for e in card["tuned"].values())
    assert len(_aside(path)) == 1


# ---------------------------------------------------------------------------------------------
# tuned settings (M7, M8, M9, bad steps)
# ---------------------------------------------------------------------------------------------


def _tuned(folder: Path, **changes) -> None:
    entry = {"name": "lightningcp@2/2", "steps": 2, "accel": LCP.describe(), "date": "2026-12-07",
             "measured": {"speedup": 2.0, "psnr_base": 34.0, "baseline_steps": 4}}
    for key, value in changes.items():
        if key == "interval":
            entry["accel"]["caching"]["keys"]["interval"] = value
        else:
            entry[key] = value
    card = json.loads((folder / "model.json").read_text())
    card["tuned"] = {"balanced": entry}
    (folder / "model.json").write_text(json.dumps(card))


BAD_TUNED = {
    "measured-list": ({"measured": [1]}, "tuned.balanced.measured"),  # M7
    "speedup-list": ({"measured": {"speedup": [1]}}, "tuned.balanced.measured.speedup"),  # M8
    "interval-string": ({"interval": "2"}, "tuned.balanced.accel.caching.keys.interval"),  # M9
    "interval-zero": ({"interval": 0}, "tuned.balanced.accel"),
    "steps-zero": ({"steps": 0}, "tuned.balanced.steps"),
    "steps-huge": ({"steps": 100000}, "tuned.balanced.steps"),
    "steps-string": ({"steps": "2"}, "tuned.balanced.steps"),
    "speedup-negative": ({"measured": {"speedup": -3.0}}, "tuned.balanced.measured.speedup"),
}


@pytest.mark.parametrize("case", sorted(BAD_TUNED))
def test_generate_with_a_bad_tuned_setting_is_an_error_before_any_work(folder, wav, tmp_path, capsys, case):
    changes, field = BAD_TUNED[case]
    _tuned(folder, **changes)
    out = tmp_path / "talk.mp4"
    code = main(["generate", "--checkpoint", str(folder), "-s", str(PORTRAIT), "-a", str(wav), "-o", str(out), "-q"])
    err = capsys.readouterr().err
    assert code == CheckpointError.exit_code, err
    assert err.startswith("error: ") and "model.json" in err and repr(field)[:-1] in err, err
    assert "--steps" not in err and "Traceback" not in err
    assert not out.exists() and not out.with_suffix(".json").exists()


def test_a_nan_tuned_step_count_is_an_error_naming_the_file(folder, wav, tmp_path, capsys):
    card = json.loads((folder / "model.json").read_text())
    card["tuned"] = {"balanced": {"steps": "NAN", "accel": LCP.describe()}}
    (folder / "model.json").write_text(json.dumps(card).replace('"NAN"', "NaN"))
    code = main(["generate", "--checkpoint", str(folder), "-s", str(PORTRAIT), "-a", str(wav), "-o",
                 str(tmp_path / "t.mp4"), "-q"])
    err = capsys.readouterr().err
    assert code == CheckpointError.exit_code and "model.json" in err and "NaN" in err and "Traceback" not in err
    assert "cannot convert" not in err


def test_batch_with_a_bad_tuned_setting_stops_before_any_item(folder, wav, tmp_path, capsys):
    _tuned(folder, measured={"speedup": [1]})
    jobs = tmp_path / "jobs"
    jobs.mkdir()
    (jobs / "jobs.jsonl").write_text(json.dumps({"image": str(PORTRAIT), "audio": str(wav), "output": "a.mp4"}) + "\n")
    code = main(["batch", str(jobs / "jobs.jsonl"), "--checkpoint", str(folder), "-q"])
    err = capsys.readouterr().err
    assert code == CheckpointError.exit_code and "model.json" in err and "measured.speedup" in err
    assert "Traceback" not in err and not (jobs / "a.mp4").exists()


def test_another_projects_tuned_file_is_checked_too(tmp_path):
    (tmp_path / "talkfast_tuned.json").write_text(json.dumps({"tuned": {"balanced": {"steps": 2, "accel": "fast"}}}))
    with pytest.raises(CheckpointError, match=r"talkfast_tuned\.json: field 'tuned\.balanced\.accel'"):
        tuned_mod.resolve("auto", tmp_path)
    (tmp_path / "talkfast_tuned.json").write_text(json.dumps({"tuned": {"turbo": {"accel": LCP.describe()}}}))
    with pytest.raises(CheckpointError, match=r"'tuned\.turbo' is not a known entry"):
        tuned_mod.read_tuned(tmp_path)


def test_what_tune_writes_passes_the_tuned_checks(folder):
    """tuned_entries' form (every field filled) reads back through the schema."""
    base = dict(_measured(name="baseline", steps=4, accel=AccelConfig(), seconds=3.0, psnr=100.0), lipsync=0.5)
    row = dict(_measured(), lipsync=0.49)
    for r in (base, row):
        r.update(speedup=base["seconds"] / r["seconds"], model_speedup=1.0)
    result = tune.TuneResult(base, [row], {"quality": None, "balanced": row, "fast": row},
                             {"baseline_steps": 4, "samples": ["a"], "device": "cpu", "threads": 1})
    entries = tune.tuned_entries(result, "small")
    tune.write_tuned(folder, entries)
    choice = tuned_mod.resolve("auto", folder)
    assert choice.source == "tuned" and choice.accel == LCP and choice.steps == 2 and "2.00x" in choice.text()
    card = json.loads((folder / "model.json").read_text())
    card["tuned"]["fast"]["measured"]["psnr_gt"] = "high"  # one field of another budget spoils the file
    (folder / "model.json").write_text(json.dumps(card))
    with pytest.raises(CheckpointError, match=r"field 'tuned\.fast\.measured\.psnr_gt'"):
        tuned_mod.resolve("auto", folder)


def test_the_tuned_step_limit_is_the_pipelines():
    from talkfast.pipeline.generate import MAX_STEPS

    assert tuned_mod.MAX_STEPS == MAX_STEPS


@pytest.mark.parametrize("corpus,field", [({"identities": 4, "sentences": 2, "seed": 0, "size": "big",
                                            "test_fraction": 0.5}, "'corpus.size'"),
                                          ({"identities": 4, "sentences": 2, "seed": 0, "size": 64,
                                            "test_fraction": 2.0}, "'corpus.test_fraction'"),
                                          ([1], "'corpus'")])
def test_tune_with_a_bad_corpus_in_the_model_card_is_an_error_before_the_model_loads(folder, tmp_path, capsys,
                                                                                      monkeypatch, corpus, field):
    import talkfast.pipeline.loader as loader

    monkeypatch.setattr(loader, "load_pipeline", lambda *a, **k: pytest.fail("the model was loaded"))
    card = json.loads((folder / "model.json").read_text())
    card["corpus"] = corpus
    (folder / "model.json").write_text(json.dumps(card))
    code = main(["tune", "--checkpoint", str(folder), "--corpus-cache", str(tmp_path / "cache"),
                 "--out", str(tmp_path / "out"), "-q"])
    err = capsys.readouterr().err
    assert code == CheckpointError.exit_code and "model.json" in err and field in err and "Traceback" not in err
    assert not (tmp_path / "cache").exists()
