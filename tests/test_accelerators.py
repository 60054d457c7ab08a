"""Accelerators on the tiny preset: degenerate settings equal the baseline, the pieces of
LightningCP are individually right, and state never leaks between runs."""

import pytest
import torch
from tiny_pipeline import DEGENERATE, generated_frames, randomized_tiny_pipeline, tone_inputs

from talkfast.accelerators import (
    DFA,
    AccelConfig,
    CachingConfig,
    DFAConfig,
    KeySchedule,
    LightningCP,
    ReferenceRemoval,
    build_accelerator,
)
from talkfast.io.audio import Audio
from talkfast.pipeline.generate import GenerateOptions
from talkfast.pipeline.loader import load_pipeline
from talkfast.sampling.scheduler import make_scheduler, previous_timestep

STEPS = 8


@pytest.fixture(scope="module")
def pipe():
    return randomized_tiny_pipeline()


@pytest.fixture(scope="module")
def inputs():
    return tone_inputs(0.3)  # 8 frames: several chained clips of the tiny model


def run(pipe, inputs, acc=None, steps=STEPS, seed=42):
    return generated_frames(pipe, inputs, acc, steps, seed)


@pytest.fixture(scope="module")
def baseline(pipe, inputs):
    return run(pipe, inputs)


@pytest.mark.parametrize("cfg", [
    *DEGENERATE.values(),
    AccelConfig("lightningcp", CachingConfig(keys=KeySchedule("explicit", steps=tuple(range(STEPS))))),
], ids=[*DEGENERATE.keys(), "explicit-all"])
def test_every_step_a_key_step_equals_the_baseline(pipe, inputs, baseline, cfg):
    acc = build_accelerator(cfg)
    out = run(pipe, inputs, acc)
    torch.testing.assert_close(out, baseline, rtol=0, atol=0)
    s = acc.summary()
    assert s["reduced_steps"] == 0 and s["full_steps"] == s["steps"]


def test_reduced_steps_change_the_result_and_skip_work(pipe, inputs, baseline):
    acc = build_accelerator(AccelConfig("lightningcp", CachingConfig(keys=KeySchedule("uniform", interval=4))))
    acc.count_flops = True
    out = run(pipe, inputs, acc)
    s = acc.summary()
    clips = s["steps"] // STEPS
    assert s["full_steps"] == 2 * clips and s["reduced_steps"] == 6 * clips
    assert s["model_calls"] == 4 * clips  # key, batch of 3, key, batch of 3
    assert s["flops_ratio"] < 0.6
    assert 0 < (out - baseline).abs().max() < 0.5


class AllForegroundDFA(DFA):
    def begin(self, pipeline, portrait):
        super().begin(pipeline, None)  # regions None -> every token is foreground


def test_all_ones_dfa_mask_equals_lightningcp(pipe, inputs):
    cfg = CachingConfig(keys=KeySchedule("uniform", interval=3))
    plain = run(pipe, inputs, LightningCP(cfg))
    acc = LightningCP(cfg)
    acc.plugins = [AllForegroundDFA(DFAConfig(temporal=True))]
    torch.testing.assert_close(run(pipe, inputs, acc), plain, rtol=1e-5, atol=1e-6)
    # A real face mask keeps the background from the key step, so the result moves.
    acc = LightningCP(cfg)
    acc.plugins = [DFA(DFAConfig(temporal=True))]
    assert (run(pipe, inputs, acc) - plain).abs().max() > 1e-6


def test_empty_reference_removal_list_changes_nothing(pipe, inputs):
    cfg = CachingConfig(keys=KeySchedule("uniform", interval=3))
    plain = run(pipe, inputs, LightningCP(cfg))
    acc = LightningCP(cfg)
    acc.plugins = [ReferenceRemoval(())]
    torch.testing.assert_close(run(pipe, inputs, acc), plain, rtol=0, atol=0)
    acc = LightningCP(cfg)
    acc.plugins = [ReferenceRemoval()]  # default: the shallow layer
    assert (run(pipe, inputs, acc) - plain).abs().max() > 1e-6
    assert all(r.enabled for r in pipe.net.readers.values())  # detach restored every reader
    with pytest.raises(ValueError, match="unknown reference layers"):
        ReferenceRemoval(("nope",)).attach(pipe.net, LightningCP(cfg).attach(pipe.net))


@pytest.mark.parametrize("steps", [10, 40])
def test_closed_form_estimate_equals_chained_steps_with_a_fixed_prediction(steps):
    sched = make_scheduler(steps)
    g = torch.Generator().manual_seed(3)
    x0, eps = torch.randn(1, 4, 2, 4, 4, generator=g), torch.randn(1, 4, 2, 4, 4, generator=g)
    acc = LightningCP()
    acc.reset(sched)
    acc.x0, acc.eps, acc.key_index = x0, eps, 2
    ts = sched.timesteps.tolist()
    a = sched.alphas_cumprod
    z = a[ts[2]].sqrt() * x0 + (1 - a[ts[2]]).sqrt() * eps
    for j in range(3, steps):
        t = ts[j - 1]
        v = a[t].sqrt() * eps - (1 - a[t]).sqrt() * x0  # the v whose (x0, eps) stay fixed
        z = sched.step(v, t, z, eta=0.0).prev_sample
        torch.testing.assert_close(acc.estimate(j), z, rtol=1e-5, atol=1e-5)


def test_estimate_respects_the_schedulers_previous_timestep_rule():
    sched = make_scheduler(30)  # 966 -> 933 while the next listed timestep is 932
    acc = LightningCP()
    acc.reset(sched)
    acc.x0, acc.eps = torch.zeros(1), torch.ones(1)
    j = sched.timesteps.tolist().index(932)
    t_prev = previous_timestep(sched, 966)
    torch.testing.assert_close(acc.estimate(j), (1 - sched.alphas_cumprod[t_prev]).sqrt().reshape(1))


def test_batched_shallow_prediction_equals_one_at_a_time(pipe, inputs):
    keys = KeySchedule("uniform", interval=4)
    batched = run(pipe, inputs, LightningCP(CachingConfig(keys=keys)))
    single = run(pipe, inputs, LightningCP(CachingConfig(keys=keys, chunk=1)))
    torch.testing.assert_close(batched, single, rtol=1e-4, atol=1e-5)


def test_ablation_switches_change_the_result(pipe, inputs):
    keys = KeySchedule("uniform", interval=4)
    ref = run(pipe, inputs, LightningCP(CachingConfig(keys=keys)))
    no_est = run(pipe, inputs, LightningCP(CachingConfig(keys=keys, estimation=False)))
    each = run(pipe, inputs, LightningCP(CachingConfig(keys=keys, combine="each")))
    assert (no_est - ref).abs().max() > 1e-6 and (each - ref).abs().max() > 1e-6


@pytest.mark.parametrize("preset", ["balanced", "fast"])
def test_same_seed_twice_gives_identical_video(pipe, inputs, preset):
    first = run(pipe, inputs, build_accelerator(preset))
    second = run(pipe, inputs, build_accelerator(preset))
    torch.testing.assert_close(first, second, rtol=0, atol=0)
    acc = build_accelerator(preset)  # one object reused across generations resets too
    torch.testing.assert_close(run(pipe, inputs, acc), first, rtol=0, atol=0)
    torch.testing.assert_close(run(pipe, inputs, acc), first, rtol=0, atol=0)


def test_deepcache_and_fasterdiffusion_reduce_work(pipe, inputs, baseline):
    for method, calls in (("deepcache", 8), ("fasterdiffusion", 4)):
        acc = build_accelerator(AccelConfig(method, CachingConfig(keys=KeySchedule("uniform", interval=4))))
        acc.count_flops = True
        out = run(pipe, inputs, acc)
        s = acc.summary()
        assert s["model_calls"] == calls * s["steps"] // STEPS
        assert s["flops_ratio"] < 0.9
        assert (out - baseline).abs().max() > 0


def test_key_schedules():
    assert KeySchedule("uniform", interval=3).keys(10) == (0, 3, 6, 9)
    assert KeySchedule("dense").keys(50) == (0, 1, 2, 3, 5, 10, 15, 25, 35)
    assert KeySchedule("dense").keys(25) == (0, 1, 2, 5, 8, 12, 18)
    assert KeySchedule.parse("2,5") == KeySchedule("explicit", steps=(2, 5))
    assert KeySchedule.parse("2,5").keys(8) == (0, 2, 5)
    assert KeySchedule("uniform", interval=4).groups(10) == [(0, (1, 2, 3)), (4, (5, 6, 7)), (8, (9,))]
    with pytest.raises(ValueError):
        KeySchedule("explicit", steps=(12,)).keys(10)


def test_dfa_needs_a_caching_method():
    with pytest.raises(ValueError):
        AccelConfig("off", dfa=DFAConfig())


def _processors(net):
    return [(name, type(m.processor).__name__) for name, m in net.named_modules() if hasattr(m, "processor")]


def test_generate_detaches_what_it_attached(pipe, inputs, baseline):
    """An accelerator passed to generate() unattached is detached again at the end (its DFA and
    reference-removal processors gone), so a later plain call equals the baseline; one the
    caller attached stays attached."""
    before = _processors(pipe.net)
    img, audio = inputs
    acc = build_accelerator(AccelConfig("lightningcp", CachingConfig(keys=KeySchedule("uniform", interval=3)),
                                        dfa=DFAConfig(temporal=True), drop_ref=True))
    pipe.generate(img, audio, None, GenerateOptions(steps=STEPS), accelerator=acc)
    assert acc.net is None and _processors(pipe.net) == before
    torch.testing.assert_close(run(pipe, inputs), baseline, rtol=0, atol=0)
    acc.attach(pipe.net)
    try:
        during = _processors(pipe.net)
        assert during != before
        pipe.generate(img, audio, None, GenerateOptions(steps=STEPS), accelerator=acc)
        assert acc.net is pipe.net and _processors(pipe.net) == during
    finally:
        acc.detach()
    assert _processors(pipe.net) == before


def test_generate_detaches_when_the_writer_cannot_start(pipe, inputs, tmp_path, monkeypatch):
    """The accelerator is detached also when generate() stops before sampling, here because the
    video writer cannot start (the encoder missing, a folder gone): no processor stays behind."""
    import talkfast.pipeline.generate as generate_module

    def no_writer(*_a, **_k):
        raise OSError("the encoder cannot start")

    monkeypatch.setattr(generate_module, "open_writer", no_writer)
    before = _processors(pipe.net)
    img, audio = inputs
    acc = build_accelerator(AccelConfig("lightningcp", CachingConfig(keys=KeySchedule("uniform", interval=3)),
                                        dfa=DFAConfig(), drop_ref=True))
    with pytest.raises(OSError, match="encoder cannot start"):
        pipe.generate(img, audio, tmp_path / "out.mp4", GenerateOptions(steps=STEPS), accelerator=acc)
    assert acc.net is None and _processors(pipe.net) == before


@pytest.mark.slow  # dynamo traces the UNet twice: about a minute on one core
def test_compiled_unet_does_not_recompile_per_step(pipe, inputs):
    """torch.compile (dynamo; the eager backend keeps the test fast) of the denoising UNet under
    LightningCP: one graph for the key-step call and one for the batched shallow call, and no
    new compilation however many steps and clips follow."""
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    unet = pipe.net.denoising_unet
    unet.forward = torch.compile(unet.forward, backend="eager", dynamic=False)
    try:
        img, audio = inputs
        acc = build_accelerator(AccelConfig("lightningcp", CachingConfig(keys=KeySchedule("uniform", interval=4))))
        short = Audio(audio.samples[: 16000 * 4 // 25], 16000, 16000, 1)  # exactly one 4-frame clip
        pipe.generate(img, short, None, GenerateOptions(steps=8), accelerator=acc)
        after_first = counters["stats"]["unique_graphs"]
        pipe.generate(img, audio, None, GenerateOptions(steps=12), accelerator=acc)  # more steps and clips
        assert after_first == 2
        assert counters["stats"]["unique_graphs"] == after_first
    finally:
        del unet.forward  # back to the class method
        torch._dynamo.reset()
        acc.detach()


@pytest.mark.parametrize("dtype", ["bf16", "fp16"])
def test_half_precision_with_every_plugin(inputs, dtype):
    p = load_pipeline(random_weights=True, preset="tiny", device="cpu", dtype=dtype)
    acc = build_accelerator("fast")
    frames = []
    img, audio = inputs
    one_clip = Audio(audio.samples[: 16000 * 4 // 25], 16000, 16000, 1)  # CPU half kernels are slow
    p.generate(img, one_clip, None, GenerateOptions(steps=7), accelerator=acc, on_clip=frames.append)
    video = torch.cat(frames)
    assert torch.isfinite(video).all() and video.shape[0] == 4
    assert acc.summary()["reduced_steps"] > 0


def test_hallo_size_model_runs_every_method_on_the_meta_device():
    """The full-size hallo preset, shapes only: key steps, batched shallow calls with DFA
    (temporal too) and reference removal, DeepCache and FasterDiffusion calls all line up."""
    from talkfast.models.attention import ItemLayout
    from talkfast.models.config import HALLO
    from talkfast.models.net import build_net
    from talkfast.models.unet import UNetCond
    from talkfast.sampling.loop import denoise

    net = build_net(HALLO, device="meta")
    lat, f = 64, HALLO.clip_frames
    meta = dict(device="meta")
    net.write_reference(torch.randn(3, 4, lat, lat, **meta), torch.randn(2, 4, 768, **meta))
    masks = tuple([torch.rand(1, (lat // 2**i) ** 2, **meta) for i in range(4)] for _ in range(3))

    def predict(x, t, plan):
        n = x.shape[0]
        cond = UNetCond(context=torch.randn(2 * n, 4, 768, **meta), audio=torch.randn(2 * n, f, 32, 768, **meta),
                        masks=tuple([m.expand(2 * n, -1) for m in kind] for kind in masks),
                        face_feature=torch.randn(2 * n, 320, 1, lat, lat, **meta), layout=ItemLayout.cfg(n, True))
        v = net.denoise(torch.cat([x, x]), torch.cat([t, t]), cond, plan)
        assert v.shape == (2 * n, 4, f, lat, lat)
        u, c = v.chunk(2)
        return u + 3.5 * (c - u)

    for name in ("lightningcp", "deepcache", "fasterdiffusion"):
        cfg = AccelConfig(name, CachingConfig(keys=KeySchedule("uniform", interval=4)))
        if name == "lightningcp":
            cfg = cfg.replace(dfa=DFAConfig(temporal=True), drop_ref=True)
        acc = build_accelerator(cfg).attach(net)
        acc.begin(None, None)
        out = denoise(predict, make_scheduler(8), torch.randn(1, 4, f, lat, lat, **meta), acc)
        assert out.shape == (1, 4, f, lat, lat) and acc.summary()["reduced_steps"] == 6
        acc.detach()
