"""Reduced-step options of the caching accelerators (issue #12): combine modes, feature forecast,
guidance reuse, adaptive key steps, DeepCache's power schedule, FasterDiffusion's injection,
padding for torch.compile, and the checks the review found missing (the cut check, estimation
beating no estimation on trained weights, DFA in a reduced call)."""

import json

import numpy as np
import pytest
import torch
from tiny_pipeline import randomized_tiny_pipeline

from talkfast.accelerators import DFA, AccelConfig, CachingConfig, DFAConfig, KeySchedule, build_accelerator
from talkfast.accelerators.base import CapturePlan, ShallowPlan, take_rows
from talkfast.accelerators.caching import FasterDiffusion, LightningCP, lagrange_weights
from talkfast.accelerators.schedule import deepcache_power_keys
from talkfast.io.audio import Audio
from talkfast.io.image import load_image
from talkfast.pipeline.generate import GenerateOptions
from talkfast.sampling.loop import denoise
from talkfast.sampling.scheduler import make_scheduler, output_for, split_prediction

pytestmark = pytest.mark.usefixtures("one_torch_thread")

PORTRAIT = "src/talkfast/assets/examples/portrait.png"
STEPS = 8


@pytest.fixture(scope="module")
def pipe():
    return randomized_tiny_pipeline()


def _audio(seconds: float) -> Audio:
    sr = 16000
    t = np.arange(int(seconds * sr)) / sr
    wave = (0.3 * np.sin(2 * np.pi * 220 * t) * (0.6 + 0.4 * np.sin(2 * np.pi * 3 * t))).astype(np.float32)
    return Audio(wave, sr, sr, 1)


@pytest.fixture(scope="module")
def inputs():
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    return load_image(root / PORTRAIT), _audio(0.32)  # two 4-frame clips


def run(pipe, inputs, cfg=None, steps=STEPS):
    frames = []
    img, audio = inputs
    acc = build_accelerator(cfg) if cfg is not None else None
    pipe.generate(img, audio, None, GenerateOptions(steps=steps, seed=42), accelerator=acc, on_clip=frames.append)
    return torch.cat(frames), acc


@pytest.fixture(scope="module")
def baseline(pipe, inputs):
    return run(pipe, inputs)[0]


def lcp(interval=4, method="lightningcp", **kw):
    return AccelConfig(method, CachingConfig(keys=KeySchedule("uniform", interval=interval), **kw))


# ---------------------------------------------------------------- degenerate settings are exact
@pytest.mark.parametrize("kw", [dict(combine="x0"), dict(forecast=1), dict(forecast=2), dict(guidance_reuse=True),
                                dict(pad=True), dict(adaptive=0.05, max_interval=1)],
                         ids=["x0", "forecast1", "forecast2", "guidance-reuse", "pad", "adaptive-max1"])
def test_every_option_with_every_step_a_key_step_equals_the_baseline(pipe, inputs, baseline, kw):
    out, acc = run(pipe, inputs, lcp(1, **kw))
    torch.testing.assert_close(out, baseline, rtol=0, atol=0)
    assert acc.summary()["reduced_steps"] == 0


@pytest.mark.parametrize("kw", [dict(combine="x0"), dict(forecast=1), dict(forecast=2), dict(guidance_reuse=True),
                                dict(adaptive=0.05), dict(guidance_reuse=True, guidance_every=2, forecast=1)],
                         ids=["x0", "forecast1", "forecast2", "guidance-reuse", "adaptive", "guidance-every"])
def test_every_option_changes_a_reduced_run(pipe, inputs, baseline, kw):
    plain, _ = run(pipe, inputs, lcp(4))
    out, acc = run(pipe, inputs, lcp(4, **kw))
    assert torch.isfinite(out).all() and acc.summary()["reduced_steps"] > 0
    assert (out - plain).abs().max() > 1e-6


# ---------------------------------------------------------------- the cut check
def test_reduced_path_on_the_key_steps_own_latent_reproduces_the_full_output(pipe):
    """The shallow path fed with the key step's own cached feature, latent and timestep computes
    exactly what the full call computed (the cut loses nothing at the cut point)."""
    from talkfast.models.attention import ItemLayout
    from talkfast.models.unet import UNetCond

    net, cfg = pipe.net, pipe.net.cfg
    g = torch.Generator().manual_seed(0)
    side, frames = 16, cfg.clip_frames
    lat = torch.randn(1, cfg.latent_channels, frames, side, side, generator=g)
    net.write_reference(torch.randn(1 + cfg.motion_frames, cfg.latent_channels, side, side, generator=g),
                        torch.randn(2, cfg.image_tokens, cfg.unet.cross_attention_dim, generator=g))
    try:
        cond = UNetCond(context=torch.randn(1, cfg.image_tokens, cfg.unet.cross_attention_dim, generator=g),
                        audio=torch.randn(1, frames, cfg.audio_tokens, cfg.unet.audio_attention_dim, generator=g),
                        masks=tuple([torch.rand(1, (side >> i) ** 2, generator=g) for i in range(cfg.unet.num_levels)]
                                    for _ in range(3)),
                        layout=ItemLayout.cfg(1, False))
        t = torch.tensor([500])
        acc = LightningCP().attach(net)
        d, u = acc.cut()
        capture = CapturePlan(u)
        full = net.denoise(lat, t, cond, capture)
        shallow = net.denoise(lat, t, cond, ShallowPlan(d, u, capture, cond.layout, lambda: net.ref_state.layout))
        torch.testing.assert_close(shallow, full, rtol=0, atol=0)
        acc.detach()
    finally:
        net.clear_reference()


# ---------------------------------------------------------------- combine, forecast, guidance reuse
def test_output_for_inverts_split_prediction():
    sched = make_scheduler(10)
    g = torch.Generator().manual_seed(1)
    x0, sample = torch.randn(3, 5, generator=g), torch.randn(3, 5, generator=g)
    for t in (999, 500, 99):
        out = output_for(sched, x0, sample, t)
        torch.testing.assert_close(split_prediction(sched, out, sample, t)[0], x0, rtol=1e-5, atol=1e-5)


def test_lagrange_weights_by_hand():
    # line through (900, a), (800, b) at 700: 2b - a; parabola through 900/800/700 at 600: a - 3b + 3c
    assert lagrange_weights([900.0, 800.0], 700.0) == pytest.approx([-1.0, 2.0])
    assert lagrange_weights([900.0, 800.0, 700.0], 600.0) == pytest.approx([1.0, -3.0, 3.0])
    assert lagrange_weights([900.0, 800.0], 850.0) == pytest.approx([0.5, 0.5])


def test_forecast_extrapolates_a_feature_linear_in_the_timestep(pipe):
    """Two key steps whose cached features are a + b*t: the forecast at each later step of the
    group is a + b*t there, for the whole batched call and for one process's shard of it
    (``--parallel steps`` runs a contiguous part of the group's steps)."""
    from talkfast.models.attention import ItemLayout

    acc = LightningCP(CachingConfig(keys=KeySchedule("uniform", interval=3), forecast=1)).attach(pipe.net)
    try:
        sched = make_scheduler(9)
        acc.reset(sched)
        ts = sched.timesteps.tolist()
        key_layout = ItemLayout.cfg(1, True)
        a, b = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4)  # (uncond, cond) items, one frame
        for k in (0, 3):
            cap = acc.stage_plan(acc.next_action(k))
            cap.h, cap.layout = a + b * ts[k], key_layout
        action = acc.next_action(4)
        assert action.steps == (4, 5)
        feature = acc._forecast(action)
        want = torch.stack([a + b * ts[4], a + b * ts[5]], 1).reshape(4, 3, 4, 4)  # u4, u5, c4, c5
        torch.testing.assert_close(feature(ItemLayout.cfg(2, True), 1), want, rtol=1e-5, atol=1e-4)
        shard = feature(ItemLayout.cfg(1, True), 1, (1, 2))  # the second step only: u5, c5
        torch.testing.assert_close(shard, torch.stack([a[0] + b[0] * ts[5], a[1] + b[1] * ts[5]]), rtol=1e-5, atol=1e-4)
    finally:
        acc.detach()


def test_guidance_reuse_runs_the_conditional_half_only_at_reduced_steps(pipe, inputs):
    """Same key-step work; the reduced calls do about half the work (the conditional half, which
    also reads the reference tokens, so a little more than half)."""
    plain_acc, reuse_acc = build_accelerator(lcp(4)), build_accelerator(lcp(4, guidance_reuse=True))
    for acc in (plain_acc, reuse_acc):
        acc.count_flops = True
        pipe.generate(inputs[0], inputs[1], None, GenerateOptions(steps=STEPS), accelerator=acc)
    shallow = [sum(r.flops for r in a.records if r.kind == "shallow") for a in (plain_acc, reuse_acc)]
    full = [sum(r.flops for r in a.records if r.kind == "full") for a in (plain_acc, reuse_acc)]
    assert full[0] == full[1]
    assert 0.45 < shallow[1] / shallow[0] < 0.6


def test_guidance_reuse_arithmetic():
    """c + (s-1)(c_key - u_key) with a predictor whose halves are known in closed form."""
    acc = LightningCP(CachingConfig(guidance_reuse=True))

    def raw(x, t, plan, halves=(0, 1)):
        return torch.cat([x * (h + 1) + t.view(-1, 1) for h in halves])

    def predict(x, t, plan):
        u, c = raw(x, t, plan).chunk(2)
        return u + 3.0 * (c - u)

    predict.model_output, predict.guidance = raw, 3.0
    from talkfast.sampling.loop import StepAction

    x, t = torch.ones(1, 2), torch.tensor([7.0])
    torch.testing.assert_close(acc.call(predict, StepAction((0,), True), x, t, None), predict(x, t, None))
    x2 = torch.full((2, 2), 5.0)
    out = acc.call(predict, StepAction((1, 2), False), x2, torch.tensor([3.0, 1.0]), None)
    torch.testing.assert_close(out, 2 * x2 + torch.tensor([[3.0], [1.0]]) + 2.0 * (2 * x - x))


# ---------------------------------------------------------------- schedules
def test_deepcache_power_schedule_matches_deepcaches_function():
    """Values of DeepCache's sample_from_quad_center (run with numpy on 2026-12-01) for center
    15, power 1.4: 50 steps / 10 key steps, and the scaled center at 15 and 40 steps."""
    assert deepcache_power_keys(50, 10, 15, 1.4) == [0, 5, 9, 13, 17, 21, 26, 31, 37, 43]
    assert KeySchedule("power", interval=5).keys(50) == (0, 5, 9, 13, 17, 21, 26, 31, 37, 43)
    assert KeySchedule("power", interval=3).keys(15) == (0, 3, 4, 7, 11)
    assert KeySchedule("power", interval=4).keys(40) == (0, 4, 7, 11, 13, 17, 21, 25, 30, 34)
    assert KeySchedule("power", interval=1).keys(6) == tuple(range(6))
    assert KeySchedule.parse("power:5:0.3:1.4") == KeySchedule("power", interval=5, center=0.3, power=1.4)


def test_accel_config_json_round_trip():
    cfg = AccelConfig("deepcache", CachingConfig(keys=KeySchedule("power", interval=3), forecast=2, combine="x0",
                                                 guidance_reuse=True, adaptive=0.1), dfa=DFAConfig(temporal=True),
                      drop_ref=True, drop_ref_layers=("up_blocks.3.attentions.2",))
    assert AccelConfig.from_dict(json.loads(json.dumps(cfg.describe()))) == cfg
    with pytest.raises(ValueError, match="unknown settings"):
        AccelConfig.from_dict({"method": "off", "turbo": True})
    with pytest.raises(ValueError):
        CachingConfig(forecast=3)
    with pytest.raises(ValueError):
        CachingConfig(adaptive=float("nan"))


def test_adaptive_threshold_triggers_key_steps(pipe, inputs):
    """A threshold any change exceeds: after every key step one reduced step, then a key step."""
    _, acc = run(pipe, inputs, lcp(4, adaptive=1e-12))
    assert acc.summary()["key_steps_first_clip"] == [0, 2, 4, 6]


def test_adaptive_without_a_threshold_hit_is_deepcache_at_max_interval(pipe, inputs):
    """With a threshold never reached, adaptive key steps fall every max_interval steps and each
    reduced step runs on its true latent: exactly DeepCache with that uniform interval."""
    ada, acc = run(pipe, inputs, lcp(2, adaptive=1e9, max_interval=3))
    dc, _ = run(pipe, inputs, lcp(3, method="deepcache"))
    torch.testing.assert_close(ada, dc, rtol=0, atol=0)
    assert acc.summary()["key_steps_first_clip"] == [0, 3, 6]


# ---------------------------------------------------------------- FasterDiffusion injection
def test_fasterdiffusion_injects_before_steps_below_500_and_never_into_the_final_latent(pipe):
    """Every step a key step, with a closed-form predictor: the result equals a hand-written loop
    that adds 0.003 * z_T to the latent before each scheduler step whose timestep is < 500."""
    def predict(x, t, plan):
        return torch.tanh(x) * (t.view(-1, 1, 1, 1, 1).float() / 1000)

    z_T = torch.randn(1, 2, 1, 3, 3, generator=torch.Generator().manual_seed(5))
    acc = FasterDiffusion(CachingConfig(keys=KeySchedule("uniform", interval=1))).attach(pipe.net)
    try:
        out = denoise(predict, make_scheduler(10), z_T.clone(), acc)
    finally:
        acc.detach()
    sched = make_scheduler(10)
    z = z_T.clone()
    for t in sched.timesteps:
        v = predict(z, t.reshape(1), None)
        if int(t) < 500:
            z = z + 0.003 * z_T
        z = sched.step(v, t, z, eta=0.0).prev_sample
    torch.testing.assert_close(out, z, rtol=0, atol=0)


# ---------------------------------------------------------------- summary and compile
def test_key_steps_of_the_first_clip_only(pipe, inputs):
    _, acc = run(pipe, inputs, lcp(4))
    s = acc.summary()
    assert s["steps"] == 2 * STEPS  # two clips
    assert s["key_steps_first_clip"] == [0, 4]


def test_take_rows_equals_fancy_indexing():
    x = torch.arange(12.0).reshape(4, 3)
    for index in ([0, 0, 1, 1], [1, 0, 1], [3], [0, 1, 2, 3], [2, 2, 2]):
        torch.testing.assert_close(take_rows(x, index), x[index])


def test_padding_gives_the_same_video(pipe, inputs):
    padded, acc = run(pipe, inputs, lcp(4, pad=True), steps=10)  # groups of 3, 3, 1 -> 3, 3, 3
    unpadded, _ = run(pipe, inputs, lcp(4), steps=10)
    torch.testing.assert_close(padded, unpadded, rtol=1e-4, atol=1e-5)
    assert {r.items for r in acc.records if r.kind == "shallow"} == {3}


def test_padded_groups_compile_once(pipe, inputs):
    """10 steps with a key every 4th (groups 3, 3, 1), then FasterDiffusion's dense schedule at
    40 steps (groups of 1 to 9) on the same compiled UNet: with ``pad`` the shallow calls of a
    schedule all have one shape, so the first schedule makes one graph for key steps and one for
    reduced steps, whatever the group sizes, and the second adds at most one (its padded size)."""
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    unet = pipe.net.denoising_unet
    unet.forward = torch.compile(unet.forward, backend="eager", dynamic=False)
    img, audio = inputs
    one_clip = Audio(audio.samples[: 16000 * 4 // 25], 16000, 16000, 1)
    try:
        graphs = []
        for keys, steps in ((KeySchedule("uniform", interval=4), 10), (KeySchedule("dense"), 40)):
            acc = build_accelerator(AccelConfig("lightningcp", CachingConfig(keys=keys, pad=True)))
            pipe.generate(img, one_clip, None, GenerateOptions(steps=steps), accelerator=acc)
            assert len({r.items for r in acc.records if r.kind == "shallow"}) == 1  # one padded size
            graphs.append(counters["stats"]["unique_graphs"])
        assert graphs[0] == 2 and graphs[1] <= 3, graphs
    finally:
        del unet.forward
        torch._dynamo.reset()


# ---------------------------------------------------------------- DFA in a reduced call
def test_dfa_runs_its_foreground_path_in_reduced_calls(pipe, inputs, monkeypatch):
    calls = []
    original = DFA.foreground

    def counting(self, length, device):
        if self.shared is not None and self.shared.phase == "shallow":
            calls.append(length)
        return original(self, length, device)

    monkeypatch.setattr(DFA, "foreground", counting)
    out, acc = run(pipe, inputs, lcp(4).replace(dfa=DFAConfig(temporal=True)))
    assert calls and torch.isfinite(out).all()
    assert acc.summary()["reduced_steps"] > 0


# ---------------------------------------------------------------- trained weights
def test_estimation_beats_no_estimation_on_the_embedded_model():
    """The paper's input-latent-estimation ablation, on trained weights (random weights say
    nothing about quality): one clip of the bundled example, 15 steps, a key step every 4th;
    estimated inputs land closer to the unaccelerated video than the key step's latent reused."""
    from talkfast import examples
    from talkfast.eval import metrics
    from talkfast.io.audio import load_audio
    from talkfast.pipeline.loader import load_pipeline

    pipe = load_pipeline(device="cpu")
    audio = load_audio(examples.SPEECH)
    n = int(0.64 * audio.sample_rate)
    clip = Audio(audio.samples[:n].copy(), audio.sample_rate, audio.source_sample_rate, audio.source_channels)
    inputs = (load_image(examples.PORTRAIT), clip)

    def video(cfg):
        frames = []
        pipe.generate(*inputs, None, GenerateOptions(steps=15, seed=1),
                      accelerator=build_accelerator(cfg) if cfg else None, on_clip=lambda f: frames.append(f.float()))
        return torch.cat(frames)

    base = video(None)
    est = metrics.psnr(video(lcp(4)), base)
    no_est = metrics.psnr(video(lcp(4, estimation=False)), base)
    assert est > no_est + 0.2, (est, no_est)


def test_cli_flags_reach_the_accelerator_config():
    """The reduced-step options are reachable from the command line, on top of a preset."""
    from talkfast.app.cli import accel_config, build_parser

    args = build_parser().parse_args(["generate", "--random-weights", "--accel", "off", "--accel-method", "lightningcp",
                                      "--key-steps", "3+last", "--combine", "x0", "--forecast", "2",
                                      "--guidance-reuse", "--adaptive", "0.05"])
    cfg = accel_config(args)
    assert cfg.method == "lightningcp"
    assert cfg.caching.keys == KeySchedule("uniform", interval=3, final=True)
    assert (cfg.caching.combine, cfg.caching.forecast, cfg.caching.guidance_reuse, cfg.caching.adaptive) == ("x0", 2, True, 0.05)
    args = build_parser().parse_args(["generate", "--random-weights", "--accel", "off", "--key-steps", "power:4"])
    assert accel_config(args).caching.keys == KeySchedule("power", interval=4)
