"""``talkfast bench --model echomimic`` (issue 15): the EchoMimic windowed loop in the speed
bench, at tiny width on CPU (timed, with the degenerate setting exact) and on the meta device
(FLOPs only: what the full-size FLOP ratios are counted with)."""

import math

import pytest
import torch
from test_echomimic import TINY_ECHO, randomized

from talkfast.accelerators import AccelConfig, CachingConfig, KeySchedule
from talkfast.eval.bench_methods import BenchMethod
from talkfast.eval.speed import run_speed_bench, speed_setup
from talkfast.models.net import build_net
from talkfast.sampling.windows import WindowedPredictor

pytestmark = pytest.mark.usefixtures("one_torch_thread")

STEPS = 4  # a key step every 3rd: keys 0 and 3, steps 1 and 2 reduced


def _lcp(interval: int) -> AccelConfig:
    return AccelConfig("lightningcp", CachingConfig(keys=KeySchedule("uniform", interval=interval)))


def test_echomimic_setup_runs_the_windowed_predictor():
    setup = speed_setup(randomized(TINY_ECHO, seed=2), frames=15, size=64, guidance=2.5)
    assert setup.frames == 15 and setup.noise.shape == (1, TINY_ECHO.latent_channels, 15, 8, 8)
    predict = setup.predictor(torch.tensor([999, 500]))
    assert isinstance(predict, WindowedPredictor) and len(predict.windows) == 2  # 15 frames: windows at 0 and 9


def test_tiny_echomimic_bench_every_step_a_key_step_is_the_baseline():
    net = randomized(TINY_ECHO, seed=2)
    setup = speed_setup(net, frames=15, size=64, guidance=2.5)
    methods = [BenchMethod("baseline"), BenchMethod("lcp-all", _lcp(1)), BenchMethod("lcp-3", _lcp(3))]
    result = run_speed_bench("echomimic_tiny", methods=methods, steps=STEPS, setup=setup, guidance=2.5, warmup=False)
    rows = {m.name: m for m in result.methods}
    assert rows["lcp-all"].cases[0].extra["latent_max_abs_diff_to_baseline"] == 0.0
    assert rows["lcp-3"].key_steps == 2 and rows["lcp-3"].cases[0].extra["latent_max_abs_diff_to_baseline"] > 0
    assert rows["lcp-3"].flops_ratio < 1.0 and all(r.cases[0].extra["finite"] for r in result.methods)


def test_meta_device_counts_the_same_flops_without_timing():
    """On the meta device the bench counts FLOPs only (no seconds), and the counts equal those of
    the same tiny network on the CPU (one window of 12 frames: meta kernels run in Python, slowly)."""
    methods = [BenchMethod("baseline"), BenchMethod("lcp-3", _lcp(3))]
    cpu = run_speed_bench("echomimic_tiny", methods=methods, steps=STEPS, guidance=2.5, warmup=False,
                          setup=speed_setup(randomized(TINY_ECHO, seed=2), frames=12, size=64, guidance=2.5))
    meta_net = build_net(TINY_ECHO, device="meta")
    meta = run_speed_bench("echomimic_tiny", methods=methods, steps=STEPS, guidance=2.5,
                           setup=speed_setup(meta_net, frames=12, size=64, guidance=2.5))
    for a, b in zip(cpu.methods, meta.methods):
        assert a.flops == b.flops and a.flops > 0
        assert math.isnan(b.seconds) and b.speedup is None
    assert meta.meta["flops_on"] == "meta" and "FLOPs only" in meta.notes[0]
    assert (meta.methods[0].key_steps, meta.methods[1].key_steps) == (STEPS, 2)
