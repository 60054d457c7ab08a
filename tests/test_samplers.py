"""The multistep samplers (DPM-Solver++ 2M, UniPC) against diffusers' own scheduler loops, their
state per run, and the convergence of every sampler of a family to one output."""

import numpy as np
import pytest
import torch
from diffusers import DPMSolverMultistepScheduler, FlowMatchEulerDiscreteScheduler, UniPCMultistepScheduler

from talkfast.sampling.loop import denoise
from talkfast.sampling.scheduler import (family_samplers, is_flow, make_scheduler, output_for, sampler_kind,
                                         scheduler_kind)

SHAPE = (1, 4, 2, 4, 4)
VP = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="linear",
          prediction_type="v_prediction", rescale_betas_zero_snr=True, timestep_spacing="trailing", steps_offset=1)


def tiny_model(x, t, plan=None):
    """A deterministic stand-in for the network: depends on the latent and the timestep."""
    return torch.sin(x) * (0.5 + t.float()[:, None, None, None, None] / 1000)


def diffusers_reference(kind: str, steps: int):
    """The scheduler as diffusers itself is configured for the family (not via talkfast)."""
    if kind == "dpmpp2m":
        return DPMSolverMultistepScheduler(**VP, solver_order=2, algorithm_type="dpmsolver++"), None
    if kind == "unipc":
        return UniPCMultistepScheduler(**VP, solver_order=2, solver_type="bh2"), None
    euler = FlowMatchEulerDiscreteScheduler()
    euler.set_timesteps(steps)
    if kind == "flow-unipc":  # UniPC takes MEMO's sigmas itself (and moves sigma 1 to 1 - 1e-6)
        s = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, solver_order=2)
        s.set_timesteps(sigmas=euler.sigmas[:-1].numpy())
        return s, euler.timesteps
    s = DPMSolverMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, solver_order=2)
    s.set_timesteps(steps)
    s.sigmas = torch.cat([torch.tensor([1 - 1e-6]), euler.sigmas[1:]]).float()
    return s, euler.timesteps


@pytest.mark.parametrize("kind", ["dpmpp2m", "unipc", "flow-dpmpp2m", "flow-unipc"])
def test_multistep_sampler_reproduces_diffusers_loop(kind):
    steps = 6
    z0 = torch.randn(SHAPE, generator=torch.Generator().manual_seed(1))
    sched = make_scheduler(steps, kind=kind)
    out = denoise(tiny_model, sched, z0)
    ref, model_t = diffusers_reference(kind, steps)
    if model_t is None:
        ref.set_timesteps(steps)
        model_t = ref.timesteps
    torch.testing.assert_close(sched.sigmas, ref.sigmas.float(), rtol=0, atol=0)
    z = z0
    for i, t in enumerate(model_t):
        z = ref.step(tiny_model(z, t[None]), ref.timesteps[i], z).prev_sample
    torch.testing.assert_close(out, z, rtol=0, atol=0)
    # the state is reset per run: the same scheduler run again (a second clip) gives the same output
    torch.testing.assert_close(denoise(tiny_model, sched, z0), out, rtol=0, atol=0)
    assert scheduler_kind(sched) == kind


def test_flow_solvers_walk_memos_time_grid():
    euler = make_scheduler(7, kind="flow")
    for kind in ("flow-dpmpp2m", "flow-unipc"):
        s = make_scheduler(7, kind=kind)
        torch.testing.assert_close(s.timesteps, euler.timesteps, rtol=0, atol=0)  # the network's timesteps (floats)
        torch.testing.assert_close(s.sigmas[1:], euler.sigmas[1:], rtol=0, atol=0)
        assert float(s.sigmas[0]) == pytest.approx(1 - 1e-6) and is_flow(s)


def test_a_stale_solver_state_is_refused():
    from talkfast.sampling.scheduler import scheduler_step

    sched = make_scheduler(4, kind="unipc")
    z = torch.zeros(SHAPE)
    scheduler_step(sched, z, 0, z)
    with pytest.raises(RuntimeError, match="not reset"):
        scheduler_step(sched, z, 0, z)


def test_sampler_names_per_family():
    assert family_samplers("ddim") == ("ddim", "dpmpp2m", "unipc")
    assert family_samplers("flow") == ("flow", "dpmpp2m", "unipc")
    assert sampler_kind("flow", "unipc") == "flow-unipc" and sampler_kind("flow") == "flow"
    assert sampler_kind("ddim", "dpmpp2m") == "dpmpp2m" and sampler_kind("ddim") == "ddim"
    with pytest.raises(ValueError, match="own sampler is flow"):
        sampler_kind("flow", "ddim")
    with pytest.raises(ValueError, match="--sampler"):
        sampler_kind("ddim", "euler")


def gaussian_model(sched, mean, var):
    """The exact denoiser of data N(mean, var) per element (its x0 = E[x0 | z_t]), as the family's
    model output: the probability-flow ODE it defines has one solution every sampler converges to."""

    def predict(z, t, plan=None):
        outs = []
        for k in range(z.shape[0]):
            tk, zk = float(t[k]), z[k : k + 1]
            if is_flow(sched):
                sg = tk / 1000
                a, s = 1 - sg, sg
            else:
                ab = float(sched.alphas_cumprod[int(tk)])
                a, s = ab**0.5, (1 - ab) ** 0.5
            x0 = mean + a * var / (a * a * var + s * s) * (zk - a * mean)
            outs.append(output_for(sched, x0, zk, tk))
        return torch.cat(outs)

    return predict


@pytest.mark.parametrize("family", ["ddim", "flow"])
def test_all_samplers_converge_to_one_output(family):
    """At 250 steps every sampler of a family is within 0.02 (max abs, latents of unit scale) of
    the others, and closer than at 25 steps."""
    g = torch.Generator().manual_seed(0)
    mean, z = torch.randn(SHAPE, generator=g) * 0.5, torch.randn(SHAPE, generator=g)

    def outputs(steps):
        res = {}
        for name in family_samplers(family):
            s = make_scheduler(steps, kind=sampler_kind(family, name))
            res[name] = denoise(gaussian_model(s, mean, 0.25), s, z)
        return res

    many, few = outputs(250), outputs(25)
    for a in many:
        for b in many:
            if a < b:
                gap = float((many[a] - many[b]).abs().max())
                assert gap < 0.02, (a, b, gap)
                assert gap < float((few[a] - few[b]).abs().max()), (a, b)
    assert np.isfinite(float(many["unipc"].abs().max()))
