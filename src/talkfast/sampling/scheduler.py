"""The samplers of the model families, built from diffusers' schedulers, and what the one
denoising loop and the accelerators need of them (one step, and the split of a model output into
the clean-sample and noise predictions it implies).

- DDIM as Hallo configures it (hallo_family.md §5; EchoMimic the same): diffusers' DDIMScheduler.
- Rectified-flow Euler as MEMO runs it (echomimic_memo.md §2.5; memoavatar/memo a5aee30,
  ``inference.py``: ``FlowMatchEulerDiscreteScheduler()`` with its defaults): diffusers'
  FlowMatchEulerDiscreteScheduler for the timesteps (``linspace(1000, 1, S)``, floats) and sigmas
  (``t / 1000``, then 0); the model predicts the velocity v = eps - x0 of x_sigma = sigma eps +
  (1 - sigma) x0. Its update is diffusers' ``step`` (z + (sigma_next - sigma) v in fp32, stored in
  the model dtype), computed here from the step index: diffusers' ``step`` keeps a step counter
  inside the scheduler, which one scheduler shared by every clip (and a reduced step applied out
  of its call) would have to reset; tests/test_sampling.py checks the two agree.
- DPM-Solver++ (2M) and UniPC (bh2), diffusers' multistep solvers, in each family's training
  configuration (:mod:`.solvers`): ``--sampler dpmpp2m|unipc``. Their ``step`` keeps a history
  (state), so the loop resets it at the start of every :func:`~.loop.denoise` (:func:`reset_state`)
  and steps them in order through diffusers' own ``step``.

Sampler names (:data:`SAMPLERS`) are what the user picks; the scheduler *kind* adds the family's
parameterisation: ``dpmpp2m`` on a DDIM family is kind "dpmpp2m", on MEMO (flow) "flow-dpmpp2m"
(:func:`sampler_kind`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from diffusers import DDIMScheduler, FlowMatchEulerDiscreteScheduler

from .solvers import MULTISTEP, is_multistep, make_multistep, reset_multistep


@dataclass(frozen=True)
class SchedulerConfig:
    num_train_timesteps: int = 1000
    beta_start: float = 0.00085
    beta_end: float = 0.012
    beta_schedule: str = "linear"
    prediction_type: str = "v_prediction"
    rescale_betas_zero_snr: bool = True
    timestep_spacing: str = "trailing"
    clip_sample: bool = False
    steps_offset: int = 1
    set_alpha_to_one: bool = True


SAMPLERS = ("ddim", "flow", *MULTISTEP)  # what --sampler accepts (a family takes its own + MULTISTEP)
KINDS = ("ddim", "flow", *MULTISTEP, *(f"flow-{m}" for m in MULTISTEP))


def family_samplers(family: str) -> tuple[str, ...]:
    """The samplers a model family (its own sampler: "ddim" or "flow") can run: its own first."""
    return (family, *MULTISTEP)


def sampler_kind(family: str, sampler: str | None = None) -> str:
    """The scheduler kind (:data:`KINDS`) of ``sampler`` (None: the family's own) on a family
    whose own sampler is ``family`` ("ddim": Hallo, EchoMimic, talkfast's models; "flow": MEMO)."""
    sampler = family if sampler is None else str(sampler).strip()
    if sampler not in family_samplers(family):
        raise ValueError(f"--sampler must be one of {', '.join(family_samplers(family))} for this model "
                         f"(its own sampler is {family}), not {sampler!r}")
    return f"flow-{sampler}" if family == "flow" and sampler != "flow" else sampler


def sampler_name(kind: str) -> str:
    """The sampler name of a scheduler kind ("flow-unipc" -> "unipc")."""
    return kind[len("flow-"):] if kind.startswith("flow-") else kind


def make_scheduler(num_steps: int, cfg: SchedulerConfig = SchedulerConfig(), device=None, kind: str = "ddim"):
    """A scheduler with ``num_steps`` inference steps set. ``kind`` "ddim": a DDIMScheduler whose
    ``step`` uses the previous timestep ``t - num_train_timesteps // num_steps`` (Hallo's rule),
    with alpha_prev = 1 below 0. "flow": MEMO's FlowMatchEulerDiscreteScheduler (defaults).
    "dpmpp2m" / "unipc" (and their "flow-" forms): diffusers' multistep solvers configured as the
    DDIM family (``cfg``) or MEMO is trained (:func:`.solvers.make_multistep`)."""
    if num_steps < 1:
        raise ValueError("steps must be at least 1")
    if kind == "flow":
        sched = FlowMatchEulerDiscreteScheduler()
    elif kind == "ddim":
        sched = DDIMScheduler(**asdict(cfg))
    elif kind in KINDS:
        return make_multistep(sampler_name(kind), num_steps, asdict(cfg), flow=kind.startswith("flow-"), device=device)
    else:
        raise ValueError(f"sampler must be one of {', '.join(KINDS)}, not {kind!r}")
    sched.set_timesteps(num_steps, device=device)
    return sched


def scheduler_kind(sched) -> str:
    """The kind (:data:`KINDS`) a scheduler of :func:`make_scheduler` was made as."""
    if isinstance(sched, FlowMatchEulerDiscreteScheduler):
        return "flow"
    if isinstance(sched, DDIMScheduler):
        return "ddim"
    name = "dpmpp2m" if type(sched).__name__.startswith("DPMSolver") else "unipc"
    return f"flow-{name}" if is_flow(sched) else name


def reset_state(sched) -> None:
    """Forget what a stateful (multistep) solver kept from an earlier run: its history of
    predictions, its step counter (the next ``step`` is step 0) and UniPC's corrector input. DDIM
    and flow Euler keep nothing. :func:`~.loop.denoise` calls it before every schedule (per clip,
    per EchoMimic window run)."""
    if is_multistep(sched):
        reset_multistep(sched)


def is_flow(sched) -> bool:
    """Flow-matching parameterisation (MEMO): the Euler scheduler or a solver with flow sigmas."""
    return isinstance(sched, FlowMatchEulerDiscreteScheduler) or bool(getattr(sched.config, "use_flow_sigmas", False))


def _sigma(sched, t) -> float:
    """Flow matching: the noise level of timestep ``t`` (t / num_train_timesteps; MEMO's shift is 1)."""
    return float(t) / sched.config.num_train_timesteps


def scheduler_step(sched, output: torch.Tensor, index: int, sample: torch.Tensor) -> torch.Tensor:
    """The latent after step ``index`` (timestep ``sched.timesteps[index]``) from ``sample``."""
    if is_multistep(sched):
        if sched.step_index != index and not (index == 0 and sched.step_index is None):
            raise RuntimeError(f"multistep solver at step {sched.step_index}, asked for step {index}: its state "
                               "was not reset for this schedule (sampling.scheduler.reset_state)")
        return sched.step(output, sched.timesteps[index], sample).prev_sample
    if is_flow(sched):
        d = sched.sigmas[index + 1] - sched.sigmas[index]  # a 0-d tensor, as diffusers computes it
        return (sample.to(torch.float32) + d * output).to(output.dtype)
    return sched.step(output, sched.timesteps[index], sample, eta=0.0).prev_sample


def input_timestep(sched, index: int):
    """The timestep at which the latent entering step ``index`` (> 0) lies, by the sampler's own
    rule: DDIM (Hallo) ``t_{index-1} - num_train_timesteps // S``, which is ``timesteps[index]`` or
    one off it; flow matching and the multistep solvers ``timesteps[index]``."""
    if is_flow(sched) or is_multistep(sched):
        return float(sched.timesteps[index])
    return previous_timestep(sched, int(sched.timesteps[index - 1]))


def previous_timestep(sched: DDIMScheduler, t: int) -> int:
    return int(t) - sched.config.num_train_timesteps // sched.num_inference_steps


def alpha_bar(sched: DDIMScheduler, t: int) -> float:
    """Cumulative alpha at ``t``; at ``t < 0`` the final alpha (1 with set_alpha_to_one)."""
    t = int(t)
    return float(sched.alphas_cumprod[t]) if t >= 0 else float(sched.final_alpha_cumprod)


def split_prediction(sched, model_output: torch.Tensor, sample: torch.Tensor, t):
    """(x0_hat, eps_hat) from a model output at timestep ``t``, for eps-, v- or x0-prediction
    (DDIM), or the flow velocity: x0 = z - sigma v, eps = z + (1 - sigma) v."""
    if is_flow(sched):
        s = _sigma(sched, t)
        return sample - s * model_output, sample + (1 - s) * model_output
    a = alpha_bar(sched, t)
    sa, sb = a**0.5, (1 - a) ** 0.5
    kind = sched.config.prediction_type
    if kind == "v_prediction":
        return sa * sample - sb * model_output, sa * model_output + sb * sample
    if kind == "epsilon":
        return (sample - sb * model_output) / sa, model_output
    if kind == "sample":
        return model_output, (sample - sa * model_output) / sb
    raise ValueError(f"unsupported prediction type {kind!r}")


def noise_to(sched, x0: torch.Tensor, eps: torch.Tensor, t) -> torch.Tensor:
    """The deterministic (eta 0) point at timestep ``t`` on the path through (x0, eps); flow
    matching: sigma eps + (1 - sigma) x0 (the straight line of the Euler steps with a fixed v)."""
    if is_flow(sched):
        s = _sigma(sched, t)
        return s * eps + (1 - s) * x0
    a = alpha_bar(sched, t)
    return a**0.5 * x0 + (1 - a) ** 0.5 * eps


def output_for(sched, x0: torch.Tensor, sample: torch.Tensor, t) -> torch.Tensor:
    """The model output that, at ``sample`` and timestep ``t``, predicts ``x0`` (the inverse of
    :func:`split_prediction` for a given x0; its eps follows from the sample)."""
    if is_flow(sched):
        return (sample - x0) / _sigma(sched, t)
    a = alpha_bar(sched, t)
    sa, sb = a**0.5, (1 - a) ** 0.5
    kind = sched.config.prediction_type
    if kind == "v_prediction":
        return (sa * sample - x0) / sb
    if kind == "epsilon":
        return (sample - sa * x0) / sb
    if kind == "sample":
        return x0
    raise ValueError(f"unsupported prediction type {kind!r}")
