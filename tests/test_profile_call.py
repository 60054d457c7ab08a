"""benchmarks/profile_call.py: its per-(stage, component) rows account for every FLOP of a call."""

import importlib.util
from pathlib import Path

import pytest
import torch

from talkfast.models.loading import build_random
from talkfast.sampling.loop import flop_counter

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "profile_call.py"


@pytest.fixture(scope="module")
def prof():
    spec = importlib.util.spec_from_file_location("profile_call", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize("shallow", [False, True])
def test_rows_sum_to_the_flop_counter_total(prof, shallow):
    net, _ = build_random("tiny")
    x, t, cond = prof.make_inputs(net, 1)
    plan = None
    if shallow:  # the batched reduced pass of two steps after a key call
        plan = prof.shallow_plan(net, x, t, cond)
        x, t, cond = prof.make_inputs(net, 2, seed=1, reference=False)
    with torch.no_grad(), flop_counter() as counter:
        net.denoise(x, t, cond, plan)
    total = counter.get_total_flops()
    res = prof.profile_call(net, x, t, cond, plan, repeat=1)
    assert total > 0 and res["flops"] == total
    assert sum(r["flops"] for r in res["rows"]) == total
    stages = {r["stage"] for r in res["rows"]}
    comps = {r["component"] for r in res["rows"] if r["flops"]}
    names = [s.name for s in net.denoising_unet.stages]
    if shallow:  # the skipped stages run nothing
        assert stages <= {"prepare", "finish"} | {n for i, n in enumerate(names) if plan.active(i, None)}
        assert "mid" not in stages
    else:
        assert {"conv_in", "mid", "out"} <= stages
    assert {"resnet", "spatial.self_ref_attn", "spatial.ff", "motion.attn"} <= comps
    assert all(r["time_s"] >= 0 for r in res["rows"])


def test_a_deep_copy_of_the_unet_runs_its_own_modules():
    """(benchmarks/profile_call.py compares copies of a net.) The stage closures hold the modules
    they call; a copy changed after copying must compute with its own weights."""
    import copy

    net, _ = build_random("tiny")
    x = torch.randn(1, net.cfg.latent_channels, 2, net.cfg.latent_size, net.cfg.latent_size)
    cond = dict(context=torch.randn(1, net.cfg.image_tokens, net.cfg.unet.cross_attention_dim))
    from talkfast.models.unet import UNetCond

    ref = net.reference_unet
    other = copy.deepcopy(ref)
    with torch.no_grad():
        for p in other.down_blocks.parameters():
            p.mul_(0.5)
        net.ref_state.mode = "write"
        ref(x[:, :, 0], 0, UNetCond(**cond))
        mine = {k: v.clone() for k, v in net.ref_state.banks.items()}
        other.ref_state.mode = "write"
        other(x[:, :, 0], 0, UNetCond(**cond))
        theirs = other.ref_state.banks
    assert other.ref_state is not ref.ref_state
    key = "down_blocks.1.attentions.0"
    assert key in theirs and not torch.equal(mine[key], theirs[key])
