"""The multistep samplers under the caching accelerators (degenerate settings exact, the
estimation following the solver) and through the pipeline, the bench controls and the tuner."""

import pytest
import torch
from tiny_pipeline import DEGENERATE, every_step, generated_frames, randomized_tiny_pipeline, tone_inputs

from talkfast.accelerators import AccelConfig, CachingConfig, KeySchedule, build_accelerator
from talkfast.sampling.loop import denoise
from talkfast.sampling.scheduler import make_scheduler, noise_to, output_for, split_prediction
from talkfast.sampling.solvers import held_path

STEPS = 4


@pytest.fixture(scope="module")
def pipe():
    return randomized_tiny_pipeline()


@pytest.fixture(scope="module")
def inputs():
    return tone_inputs(0.3)


def frames(pipe, inputs, sampler, acc=None):
    return generated_frames(pipe, inputs, acc, steps=STEPS, sampler=sampler)


@pytest.mark.parametrize("sampler", ["dpmpp2m", "unipc"])
def test_degenerate_settings_equal_the_plain_multistep_sampler(pipe, inputs, sampler):
    base = frames(pipe, inputs, sampler)
    assert not torch.equal(base, frames(pipe, inputs, "ddim"))  # the sampler is used
    cfgs = [*DEGENERATE.values(), every_step("lightningcp", forecast=1, guidance_reuse=True, pad=True)]
    for cfg in cfgs:
        torch.testing.assert_close(frames(pipe, inputs, sampler, build_accelerator(cfg)), base, rtol=0, atol=0)


@pytest.mark.parametrize("sampler", ["dpmpp2m", "unipc"])
def test_reduced_steps_run_on_multistep_samplers(pipe, inputs, sampler):
    base = frames(pipe, inputs, sampler)
    for caching in (dict(keys=KeySchedule("uniform", interval=2)), dict(keys=KeySchedule("uniform", interval=3), pad=True,
                    combine="x0"), dict(adaptive=0.05, forecast=1)):
        out = frames(pipe, inputs, sampler, build_accelerator(AccelConfig("lightningcp", CachingConfig(**caching))))
        assert out.shape == base.shape and torch.isfinite(out).all() and not torch.equal(out, base)


def test_dpmpp_held_prediction_is_the_ddim_like_path():
    """With the history holding only x0, DPM-Solver++ 2M's held update is the first-order one:
    the latents stay on the eta-0 path through (x0, eps) of the latent it starts from."""
    sched = make_scheduler(8, kind="dpmpp2m")
    g = torch.Generator().manual_seed(3)
    x0, z = torch.randn(1, 4, 1, 4, 4, generator=g), torch.randn(1, 4, 1, 4, 4, generator=g)
    denoise(lambda x, t, p: torch.zeros_like(x), sched, z)  # leaves a stale state: held_path must not need it
    from talkfast.sampling.scheduler import reset_state, scheduler_step
    reset_state(sched)
    for i in range(2):  # two real steps predicting x0: the history is [x0, x0]
        z = scheduler_step(sched, output_for(sched, x0, z, sched.timesteps[i]), i, z)
    path = held_path(sched, 2, z, x0, 4, output_for)
    _, eps = split_prediction(sched, output_for(sched, x0, z, sched.timesteps[2]), z, sched.timesteps[2])
    for k, est in enumerate(path):
        torch.testing.assert_close(est, noise_to(sched, x0, eps, sched.timesteps[3 + k]), rtol=1e-4, atol=1e-4)
    assert sched.step_index == 2  # the real solver's state is untouched


def test_bench_controls_per_sampler_and_old_names():
    from talkfast.eval.bench_methods import BenchMethod, control_methods, tuned_methods
    from talkfast.models.loading import EMBEDDED_DIR

    have = [BenchMethod("baseline"), BenchMethod("ddim@4", None, 4)]
    names = [m.name for m in control_methods([4, 2], ("flow", "dpmpp2m", "unipc"), have, 20, "flow")]
    assert names == ["flow@2", "dpmpp2m@4", "dpmpp2m@2", "unipc@4", "unipc@2"]  # flow@4: ddim@4 is the run's sampler
    assert BenchMethod("unipc@4", None, 4, "unipc").family_on("ddim") == "plain UniPC"
    assert BenchMethod("x", AccelConfig("lightningcp"), sampler="dpmpp2m").family_on("ddim") == "lightningcp on DPM-Solver++ 2M"
    assert BenchMethod("flow@4", None, 4).family_on("flow") == "plain flow Euler"
    # the bundled tuned settings: an entry without a sampler key (names like "ddim@2", written before
    # the sampler axis) reads as the family's own sampler (None), one with it as that sampler
    import json

    entries = json.loads((EMBEDDED_DIR / "model.json").read_text())["tuned"]
    rows = {m.name: m for m in tuned_methods(EMBEDDED_DIR)}
    assert set(rows) == {f"tuned:{b}" for b in entries}
    assert {rows[f"tuned:{b}"].sampler for b, e in entries.items() if "sampler" not in e} == {None}
    assert {b: rows[f"tuned:{b}"].sampler for b, e in entries.items() if "sampler" in e} == {"quality": "unipc"}


def test_tuner_sampler_axis_and_recorded_sampler(tmp_path):
    from talkfast.accelerators.tuned import resolve
    from talkfast.eval.tune import write_tuned
    from talkfast.eval.tune_space import search_space

    space = search_space("small", 15)
    assert {s.sampler for s in space} == {None, "dpmpp2m", "unipc"}
    assert any(s.name == "unipc@4" and s.plain for s in space)
    assert any(s.sampler == "dpmpp2m" and not s.plain for s in space)
    assert search_space("small", 20, "flow")[0].name.startswith("flow@")
    (tmp_path / "model.json").write_text("{}")
    write_tuned(tmp_path, {"balanced": {"name": "unipc@6", "steps": 6, "accel": AccelConfig().describe(),
                                        "sampler": "unipc"}})
    choice = resolve("balanced", tmp_path)
    assert choice.sampler == "unipc" and choice.steps == 6 and "UniPC" in choice.text()


def test_bench_runs_the_accelerated_rows_on_other_samplers(tmp_path, capsys):
    """``bench --samplers unipc``: every accelerated row again on UniPC, named ``<row>~unipc``, owned
    by "lightningcp on UniPC" on the frontier; a sampler the model has not is refused before work."""
    import json

    from talkfast.app.cli import main

    out = tmp_path / "b"
    assert main(["bench", "--quick", "--controls", "none", "--reference", "0", "--samplers", "unipc", "--no-flops",
                 "--out", str(out), "-q"]) == 0
    rows = {m["name"]: m for m in json.loads((out / "bench.json").read_text())["methods"]}
    assert list(rows) == ["baseline", "lightningcp", "lightningcp~unipc"]
    assert rows["lightningcp~unipc"]["sampler"] == "unipc" and rows["lightningcp"]["sampler"] == "ddim"
    assert rows["lightningcp~unipc"]["family"] == "lightningcp on UniPC"
    assert rows["lightningcp~unipc"]["seconds"] > 0
    capsys.readouterr()
    assert main(["bench", "--quick", "--samplers", "flow", "--out", str(tmp_path / "c"), "-q"]) != 0
    assert "--samplers" in capsys.readouterr().err and not (tmp_path / "c" / "bench.json").exists()
