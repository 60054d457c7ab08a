"""``talkfast tune`` and what ``--accel auto|quality|balanced|fast`` resolves to: budgets pick the
fastest setting that meets them (hand-made measurements), the search space, a tiny tune that
writes model.json and resumes from its cache, the preset fallback with its warning, and
``generate`` using the tuned setting by default."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from talkfast.accelerators import PRESETS, AccelConfig, CachingConfig, KeySchedule
from talkfast.accelerators import tuned as tuned_mod
from talkfast.app.cli import main
from talkfast.eval import tune
from talkfast.eval.tune_space import SMALL_MAX, Setting, search_space

pytestmark = pytest.mark.usefixtures("one_torch_thread")

PORTRAIT = Path(__file__).resolve().parent.parent / "src" / "talkfast" / "assets" / "examples" / "portrait.png"


def row(name, seconds, psnr, lipsync, method="lightningcp", steps=15):
    accel = AccelConfig() if method == "off" else AccelConfig(method)
    return {"name": name, "steps": steps, "accel": accel.describe(), "seconds": seconds, "psnr_base": psnr,
            "lipsync": lipsync}


def test_budgets_pick_the_fastest_setting_that_meets_them():
    base = row("baseline", 10.0, 100.0, 0.80, "off")
    rows = [row("lcp-a", 3.0, 34.0, 0.79), row("ddim@5", 4.0, 36.5, 0.80, "off", 5),
            row("lcp-c", 2.0, 31.0, 0.70),  # fast and good enough in PSNR, but lip sync drops by 0.10
            row("lcp-d", 2.5, 30.5, 0.785), row("lcp-e", 3.0, 35.0, 0.80)]  # as fast as lcp-a, better: wins the tie
    picks = tune.pick(base, rows)
    assert {k: v["name"] for k, v in picks.items()} == {"quality": "ddim@5", "balanced": "lcp-e", "fast": "lcp-d"}
    # without a lip-sync metric only PSNR counts: lcp-c becomes the fastest >= 30 dB
    nolip = [dict(r, lipsync=None) for r in rows]
    assert tune.pick(dict(base, lipsync=None), nolip)["fast"]["name"] == "lcp-c"
    # nothing faster meets the top budget: the baseline itself
    assert tune.pick(base, [row("x", 1.0, 35.9, 0.8)])["quality"] is base
    text = tune.pick_sentence("quality", picks["quality"], base)
    assert "plain DDIM at fewer steps" in text and "ddim@5" in text


def test_pick_keeps_a_margin_checks_every_sample_and_treats_near_times_as_equal():
    base = dict(row("baseline", 10.0, 100.0, 0.80, "off"), case_lipsync=[0.8, 0.7, 0.9])
    # 36.2 dB meets the 36 dB floor but not floor + margin: the slower 36.6 dB setting is the quality pick
    rows = [row("thin", 3.0, 36.2, 0.80), row("safe", 4.0, 36.6, 0.80)]
    assert tune.pick(base, rows)["quality"]["name"] == "safe"
    assert tune.pick(base, rows, margin=0.0)["quality"]["name"] == "thin"
    # the mean lip sync holds (0.79 >= 0.78) but one sample falls 0.15 below its baseline
    one_bad = dict(row("one-bad", 2.0, 31.0, 0.79), case_lipsync=[0.86, 0.55, 0.96])
    fine = dict(row("fine", 2.5, 30.6, 0.79), case_lipsync=[0.79, 0.68, 0.9])
    assert tune.pick(base, [one_bad, fine])["fast"]["name"] == "fine"
    assert tune.pick(base, [one_bad, fine], worst=None)["fast"]["name"] == "one-bad"
    # times within 3% are a tie: the better of the two wins; beyond it the faster wins
    assert tune.pick(base, [row("a", 3.00, 31.0, 0.8), row("b", 3.05, 32.0, 0.8)])["fast"]["name"] == "b"
    assert tune.pick(base, [row("a", 3.00, 31.0, 0.8), row("b", 3.30, 32.0, 0.8)])["fast"]["name"] == "a"
    # a stricter budget's pick that costs no more than the looser's own (within the tie) is kept for it:
    # here quality's 36.8 dB setting at 3.02 s would otherwise sit beside balanced's 34 dB one at 3.0 s
    picks = tune.pick(base, [row("bal", 3.0, 34.0, 0.8), row("q", 3.02, 36.8, 0.8), row("f", 2.0, 30.8, 0.8)],
                      tie=0.0)
    assert (picks["quality"]["name"], picks["balanced"]["name"], picks["fast"]["name"]) == ("q", "bal", "f")
    picks = tune.pick(base, [row("bal", 3.0, 34.0, 0.8), row("q", 3.06, 36.8, 0.8), row("f", 2.0, 30.8, 0.8)])
    assert (picks["quality"]["name"], picks["balanced"]["name"], picks["fast"]["name"]) == ("q", "q", "f")
    # the same through the second rule alone: q (3.15 s) is not within 3% of balanced's fastest (3.0 s),
    # but within 3% of balanced's own pick (3.08 s, the better of the two tied ones)
    rows = [row("x", 3.0, 33.6, 0.8), row("l", 3.08, 35.0, 0.8), row("q", 3.15, 36.8, 0.8)]
    assert tune.pick(base, rows)["balanced"]["name"] == "q"
    assert tune.pick(base, rows[:2])["balanced"]["name"] == "l"


def test_search_space():
    small = search_space("small", 15)
    names = [s.name for s in small]
    assert 10 <= len(small) <= SMALL_MAX and len(set(names)) == len(names)
    plain = [s for s in small if s.plain]
    assert plain and all(2 <= s.steps < 15 for s in plain)  # fewer-step controls, never the baseline itself
    assert {s.accel.method for s in small} >= {"off", "lightningcp", "deepcache", "fasterdiffusion"}
    assert len({s.steps for s in small if not s.plain}) >= 2  # caching on a shorter schedule too
    assert len(search_space("full", 15)) > len(small)
    with pytest.raises(ValueError, match="--space"):
        search_space("huge", 15)
    # the cache key ignores options left at their defaults, and differs for a different setting
    a = Setting("a", 15, AccelConfig("lightningcp", CachingConfig(keys=KeySchedule("uniform", interval=3))))
    b = Setting("b", 15, AccelConfig("lightningcp"))
    assert a.key("ctx") == b.key("ctx") and a.key("ctx") != a.key("other") and a.key("ctx") != Setting("c", 9, a.accel).key("ctx")


def test_refine_takes_the_fastest_settings_that_reach_each_floor():
    space = [Setting(n, 5, AccelConfig("lightningcp")) for n in ("a", "b", "c", "d", "e", "f")]
    rows = [row("a", 5.0, 37.0, 0.8), row("b", 4.0, 36.1, 0.1), row("c", 3.0, 33.2, 0.8),  # b: lip sync not checked
            row("d", 2.0, 30.2, 0.8), row("e", 1.0, 29.9, 0.8), row("f", 3.5, 34.0, 0.8)]
    screening = tune.TuneResult(row("baseline", 10.0, 100.0, 0.8, "off"), rows, {})
    # per budget the fastest reaching its floor: quality b; balanced c; fast d (e is below every floor)
    assert [s.name for s in tune.refine_candidates(screening, space, 1)] == ["b", "c", "d"]
    # two per budget: quality b, a; balanced c, f; fast d, c
    assert [s.name for s in tune.refine_candidates(screening, space, 2)] == ["a", "b", "c", "d", "f"]
    # the model's current picks are finalists whatever their screening times (e: below every floor on
    # the short clips; a name not in the space is ignored)
    assert [s.name for s in tune.refine_candidates(screening, space, 1, keep=["e", "gone"])] == ["b", "c", "d", "e"]


def test_tune_writes_model_json_and_resumes(folder, wav, tmp_path, capsys, monkeypatch):
    out = tmp_path / "out"
    argv = ["tune", "--checkpoint", str(folder), "--sample", str(PORTRAIT), str(wav), "--out", str(out), "-q"]
    assert main(argv + ["--max-settings", "3"]) == 0, capsys.readouterr().err
    card = json.loads((folder / "model.json").read_text())
    assert card["preset"] == "tiny"  # the rest of the card is kept
    report = json.loads((out / "tune.json").read_text())
    assert report["meta"]["measured_now"] == 3 and report["meta"]["from_cache"] == 0
    assert set(card["tuned"]) == {"quality", "balanced", "fast"}
    rows = {r["name"]: r for r in [report["baseline"], *report["rows"]]}
    for budget, entry in card["tuned"].items():
        chosen = rows[entry["name"]]
        assert report["picks"][budget] == entry["name"] and entry["steps"] == chosen["steps"]
        assert AccelConfig.from_dict(entry["accel"]) == AccelConfig.from_dict(chosen["accel"])
        assert entry["measured"]["psnr_base"] >= tuned_mod.BUDGETS[budget]
        # no faster measured setting meets the budget
        faster = [r for r in rows.values() if r["seconds"] < chosen["seconds"]]
        assert not any(r["meets"][budget] for r in faster)
    assert (out / "tune.md").read_text().startswith("# talkfast tune: tiny")

    calls = []
    real = tune.measure_setting
    monkeypatch.setattr(tune, "measure_setting", lambda *a, **k: calls.append(a[1].name) or real(*a, **k))
    assert main(argv + ["--max-settings", "4"]) == 0
    report = json.loads((out / "tune.json").read_text())
    assert report["meta"]["measured_now"] == 1 and report["meta"]["from_cache"] == 3 and len(calls) == 1
    assert calls == [search_space("small", 4)[3].name]


def test_refine_screens_on_short_clips_and_picks_from_whole_samples(folder, tmp_path, capsys, monkeypatch):
    real = tune.refine_candidates  # random weights reach no real floor: lower them to choose candidates
    monkeypatch.setattr(tune, "refine_candidates",
                        lambda sc, st, k, **kw: real(sc, st, k, budgets={"quality": 25.0, "balanced": 15.0, "fast": 0.0},
                                                     **kw))
    wav2 = tmp_path / "two_clips.wav"
    t = np.arange(int(0.32 * 16000)) / 16000  # two 4-frame clips of the tiny model at 25 fps
    sf.write(str(wav2), (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32), 16000)
    out = tmp_path / "out"
    argv = ["tune", "--checkpoint", str(folder), "--sample", str(PORTRAIT), str(wav2), "--out", str(out), "-q",
            "--max-settings", "3", "--seconds", "0.16"]
    assert main(argv + ["--refine", "1"]) == 0, capsys.readouterr().err
    report = json.loads((out / "tune.json").read_text())
    screened, final = report["screening"], report
    assert screened["meta"]["settings"] == 3 and screened["meta"]["seconds"] == 0.16
    # one to three settings (the fastest per budget may coincide), measured again
    assert 1 <= final["meta"]["settings"] <= 3 and final["meta"]["refine_per_budget"] == 1
    assert final["meta"]["measured_now"] == final["meta"]["settings"]
    names = {r["name"] for r in final["rows"]}
    assert names <= {r["name"] for r in screened["rows"]}
    assert set(report["picks"].values()) <= names | {"baseline"}
    # the whole sample is two clips, the screening's one: twice the baseline's full steps
    assert final["baseline"]["full_steps"] == 2 * screened["baseline"]["full_steps"]
    card = json.loads((folder / "model.json").read_text())
    assert {e["name"] for e in card["tuned"].values()} <= names | {"baseline"}
    text = (out / "tune.md").read_text()
    assert "## Screening: every setting on the first 0.16 s" in text
    capsys.readouterr()
    assert main(argv[:-2] + ["--refine", "1"]) == 2
    assert "--refine K needs" in capsys.readouterr().err

    # a re-tune measures the model's current pick again on the whole samples: with every floor out
    # of reach on the short clips, the only finalist is the setting model.json names
    incumbent = screened["rows"][-1]
    tune.write_tuned(folder, {"balanced": {k: incumbent[k] for k in ("name", "steps", "accel")}})
    monkeypatch.setattr(tune, "refine_candidates",
                        lambda sc, st, k, **kw: real(sc, st, k, budgets={"quality": 1e9}, **kw))
    assert main(argv + ["--refine", "1"]) == 0, capsys.readouterr().err
    again = json.loads((out / "tune.json").read_text())
    assert again["meta"]["refine_kept"] == [incumbent["name"]]
    assert [r["name"] for r in again["rows"]] == [incumbent["name"]]


def test_current_picks_of_a_retune_read_the_tuned_file_and_a_bad_one_only_warns(folder):
    """The finalists a --refine re-tune keeps: the names in model.json's tuned entries; a tuned file
    that fails its checks (it is about to be replaced) gives none and a warning naming the file."""
    from talkfast.eval.tune_cli import _current_picks

    said = []
    assert _current_picks(folder, None, said.append) == [] and not said  # no tuned settings yet
    entry = {"name": "ddim@2", "steps": 2, "accel": AccelConfig().describe()}
    tune.write_tuned(folder, {"fast": entry, "balanced": {**entry, "name": "ddim@3", "steps": 3}})
    assert sorted(_current_picks(folder, None, said.append)) == ["ddim@2", "ddim@3"] and not said
    card = json.loads((folder / "model.json").read_text())
    card["tuned"]["fast"]["steps"] = "2"
    (folder / "model.json").write_text(json.dumps(card))
    assert _current_picks(folder, None, said.append) == []
    assert len(said) == 1 and said[0].startswith("warning:") and "model.json" in said[0] and "tuned.fast.steps" in said[0]


def test_resolve_falls_back_to_the_presets_with_a_warning(folder):
    for name, budget in (("auto", "balanced"), ("fast", "fast")):
        choice = tuned_mod.resolve(name, folder)
        assert choice.source == "preset" and choice.accel == PRESETS[budget] and choice.steps is None
        assert "no tuned settings" in choice.warning and f"talkfast tune --checkpoint {folder}" in choice.warning
    nomodel = tuned_mod.resolve("auto", None)
    assert nomodel.accel == PRESETS["balanced"] and "random weights" in nomodel.warning
    off = tuned_mod.resolve("off", folder, 7)
    assert off.accel == PRESETS["off"] and off.warning is None and off.steps == 7
    with pytest.raises(ValueError, match="unknown --accel"):
        tuned_mod.resolve("turbo", folder)


def _write_tuned(folder: Path, steps: int, accel: AccelConfig) -> None:
    card = json.loads((folder / "model.json").read_text())
    card["tuned"] = {"balanced": {"name": "x", "steps": steps, "accel": accel.describe(), "date": "2026-01-01",
                                  "measured": {"speedup": 3.0, "psnr_base": 34.0, "baseline_steps": 4}}}
    (folder / "model.json").write_text(json.dumps(card))


def test_resolve_reads_the_tuned_setting(folder):
    lcp = AccelConfig("lightningcp", CachingConfig(keys=KeySchedule("uniform", interval=2), combine="each"))
    _write_tuned(folder, 2, lcp)
    auto = tuned_mod.resolve("auto", folder)
    assert auto.source == "tuned" and auto.budget == "balanced" and auto.accel == lcp and auto.steps == 2
    assert auto.warning is None and "tuned for this model" in auto.text() and "3.00x" in auto.text()
    assert tuned_mod.resolve("balanced", folder, 3).steps == 3  # an explicit --steps wins
    assert tuned_mod.resolve("quality", folder).source == "preset"  # no tuned 'quality': the preset


def test_bench_rows_of_the_tuned_settings(folder):
    from talkfast.eval import bench

    assert bench.tuned_methods(folder) == []
    lcp = AccelConfig("lightningcp", CachingConfig(keys=KeySchedule("uniform", interval=2)))
    card = json.loads((folder / "model.json").read_text())
    card["tuned"] = {b: {"steps": s, "accel": a.describe()} for b, s, a in
                     (("quality", 4, lcp), ("balanced", 3, AccelConfig()), ("fast", 3, AccelConfig()))}
    (folder / "model.json").write_text(json.dumps(card))
    rows = bench.tuned_methods(folder)
    assert [(m.name, m.steps, m.is_plain) for m in rows] == [("tuned:quality", 4, False), ("tuned:balanced=fast", 3, True)]
    assert rows[0].accel == lcp


def test_generate_uses_the_tuned_setting_by_default(folder, wav, tmp_path, capsys):
    lcp = AccelConfig("lightningcp", CachingConfig(keys=KeySchedule("uniform", interval=2)))
    _write_tuned(folder, 2, lcp)
    out = tmp_path / "talk.mp4"
    assert main(["generate", "--checkpoint", str(folder), "-s", str(PORTRAIT), "-a", str(wav), "-o", str(out), "-q"]) == 0
    captured = capsys.readouterr()
    assert "accel auto = balanced: tuned for this model" in captured.out and "warning" not in captured.err
    side = json.loads(out.with_suffix(".json").read_text())
    assert side["accel_choice"]["source"] == "tuned" and side["options"]["steps"] == 2
    assert AccelConfig.from_dict(side["accelerator"]["config"]) == lcp
    # the same folder without tuned settings: the balanced preset, with the warning
    card = json.loads((folder / "model.json").read_text())
    del card["tuned"]
    (folder / "model.json").write_text(json.dumps(card))
    out2 = tmp_path / "talk2.mp4"
    assert main(["generate", "--checkpoint", str(folder), "-s", str(PORTRAIT), "-a", str(wav), "-o", str(out2), "-q"]) == 0
    captured = capsys.readouterr()
    assert "no tuned settings" in captured.err and "accel auto = balanced: preset" in captured.out
    side = json.loads(out2.with_suffix(".json").read_text())
    assert side["accel_choice"]["source"] == "preset" and AccelConfig.from_dict(side["accelerator"]["config"]) == PRESETS["balanced"]


def test_demo_defaults_to_the_tuned_setting(folder, wav, tmp_path):
    from talkfast.app.demo import DemoEngine
    from talkfast.pipeline.loader import load_pipeline

    lcp = AccelConfig("lightningcp", CachingConfig(keys=KeySchedule("uniform", interval=2)))
    _write_tuned(folder, 2, lcp)
    engine = DemoEngine(load_pipeline(str(folder), device="cpu", dtype="fp32"), out_dir=tmp_path / "demo")
    res = engine.generate(str(PORTRAIT), str(wav), steps=engine.default_steps())  # the form's defaults
    choice = res.sidecar["accel_choice"]
    assert choice["requested"] == "auto" and choice["source"] == "tuned" and res.sidecar["options"]["steps"] == 2
    assert AccelConfig.from_dict(res.sidecar["accelerator"]["config"]) == lcp and "tuned for this model" in res.markdown
    moved = engine.generate(str(PORTRAIT), str(wav), "auto", steps=3)  # the slider moved: its steps win
    assert moved.sidecar["options"]["steps"] == 3 and moved.sidecar["accel_choice"]["source"] == "tuned"


def test_batch_uses_the_tuned_setting_unless_an_item_names_another(folder, wav, tmp_path, capsys):
    lcp = AccelConfig("lightningcp", CachingConfig(keys=KeySchedule("uniform", interval=2)))
    _write_tuned(folder, 2, lcp)
    jobs = tmp_path / "jobs"
    jobs.mkdir()
    rows = [{"image": str(PORTRAIT), "audio": str(wav), "output": "a.mp4"},
            {"image": str(PORTRAIT), "audio": str(wav), "output": "b.mp4", "accel": "off"}]
    (jobs / "jobs.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    assert main(["batch", str(jobs / "jobs.jsonl"), "--checkpoint", str(folder), "-q"]) == 0, capsys.readouterr().err
    a, b = (json.loads((jobs / f"{n}.json").read_text()) for n in "ab")
    assert a["accel_choice"]["source"] == "tuned" and a["options"]["steps"] == 2
    assert AccelConfig.from_dict(a["accelerator"]["config"]) == lcp
    assert b["accel_choice"]["requested"] == "off" and b["options"]["steps"] == 4 and "accelerator" not in b


def test_bench_on_a_tuned_folder_has_the_budget_rows(folder, tmp_path, capsys):
    lcp = AccelConfig("lightningcp", CachingConfig(keys=KeySchedule("uniform", interval=2)))
    card = json.loads((folder / "model.json").read_text())
    card["tuned"] = {"quality": {"steps": 4, "accel": AccelConfig().describe()},  # the baseline itself: no row
                     "balanced": {"steps": 4, "accel": lcp.describe()}, "fast": {"steps": 2, "accel": AccelConfig().describe()}}
    (folder / "model.json").write_text(json.dumps(card))
    out = tmp_path / "bench"
    assert main(["bench", "--quick", "--checkpoint", str(folder), "--seconds", "0.16", "--out", str(out), "-q"]) == 0
    data = json.loads((out / "bench.json").read_text())
    rows = {m["name"]: m for m in data["methods"]}
    assert data["target"] == "checkpoint" and data["meta"]["steps"] == 4 and "tuned:quality" not in rows
    assert rows["tuned:balanced"]["role"] == "tuned" and rows["tuned:balanced"]["family"] == "lightningcp"
    fast = rows["tuned:fast"]
    assert fast["role"] == "tuned" and fast["steps"] == 2 and fast["accel"] is None and fast["frontier"] in (True, False)
    assert "ddim@2" not in rows  # the tuned row is that control already
    capsys.readouterr()
