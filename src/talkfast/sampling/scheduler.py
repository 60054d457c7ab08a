"""DDIM as Hallo configures it (hallo_family.md §5), built from diffusers' DDIMScheduler."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from diffusers import DDIMScheduler


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


def make_scheduler(num_steps: int, cfg: SchedulerConfig = SchedulerConfig(), device=None) -> DDIMScheduler:
    """A DDIMScheduler with ``num_steps`` inference steps set. Its ``step`` uses the previous
    timestep ``t - num_train_timesteps // num_steps`` (Hallo's rule), with alpha_prev = 1 below 0."""
    if num_steps < 1:
        raise ValueError("steps must be at least 1")
    sched = DDIMScheduler(**asdict(cfg))
    sched.set_timesteps(num_steps, device=device)
    return sched


def previous_timestep(sched: DDIMScheduler, t: int) -> int:
    return int(t) - sched.config.num_train_timesteps // sched.num_inference_steps


def alpha_bar(sched: DDIMScheduler, t: int) -> float:
    """Cumulative alpha at ``t``; at ``t < 0`` the final alpha (1 with set_alpha_to_one)."""
    return float(sched.alphas_cumprod[t]) if t >= 0 else float(sched.final_alpha_cumprod)


def split_prediction(sched: DDIMScheduler, model_output: torch.Tensor, sample: torch.Tensor, t: int):
    """(x0_hat, eps_hat) from a model output at timestep ``t``, for eps-, v- or x0-prediction."""
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


def noise_to(sched: DDIMScheduler, x0: torch.Tensor, eps: torch.Tensor, t: int) -> torch.Tensor:
    """The deterministic (eta 0) point at timestep ``t`` on the path through (x0, eps)."""
    a = alpha_bar(sched, t)
    return a**0.5 * x0 + (1 - a) ** 0.5 * eps


def output_for(sched: DDIMScheduler, x0: torch.Tensor, sample: torch.Tensor, t: int) -> torch.Tensor:
    """The model output that, at ``sample`` and timestep ``t``, predicts ``x0`` (the inverse of
    :func:`split_prediction` for a given x0; its eps follows from the sample)."""
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
