"""diffusers' multistep solvers as samplers of the model families: DPM-Solver++ (2M) and UniPC.

Configuration (diffusers 0.42.1, ``schedulers/scheduling_dpmsolver_multistep.py`` and
``scheduling_unipc_multistep.py``):

- **DDIM families** (Hallo, EchoMimic, talkfast's models): the DDIM scheduler's training setup
  (linear betas 0.00085-0.012, v-prediction, ``rescale_betas_zero_snr`` -- diffusers then sets the
  last alpha_bar to 2**-24 instead of 0 so its first sigma is finite --, ``trailing`` spacing:
  timesteps 999, ... the same as DDIM's), second order, ``dpmsolver++`` with the ``midpoint``
  2M update, UniPC ``bh2`` with its corrector, ``lower_order_final``, final sigma 0.
- **MEMO** (rectified flow): ``prediction_type="flow_prediction"``, ``use_flow_sigmas`` with shift
  1, on MEMO's own time grid. diffusers' own flow grids are not MEMO's: DPM-Solver++ builds sigmas
  ``0.999 (S - i) / S`` (from 0.999, uniform, the last step from 0.999/S to 0) and UniPC
  ``linspace(1, 1/1000, S + 1)[:-1]``, both with timesteps cast to integers; MEMO's
  FlowMatchEulerDiscreteScheduler has sigmas ``linspace(1, 1/1000, S)`` then 0 and feeds the
  float timesteps ``1000 sigma`` to the network. So the solvers get MEMO's grid (its sigmas, its
  float timesteps) after ``set_timesteps``; only the first sigma 1 becomes ``1 - 1e-6`` inside
  the solver (diffusers' UniPC does the same to its flow sigmas: at sigma 1 alpha is 0 and the
  log-SNR infinite), while the network still sees timestep 1000. Every sampler of a family then
  walks the same times, so at many steps all of them converge to one output.

State: ``step`` keeps the last predictions (``model_outputs``), the warm-up counter
(``lower_order_nums``), its step index and, for UniPC, the sample its corrector starts from. The
loop steps each schedule in order and calls :func:`reset_multistep` before it, so one solver
serves every clip. A reduced (accelerated) step's prediction goes through the same ``step`` and
enters the history like a full step's.
"""

from __future__ import annotations

import copy

import torch
from diffusers import DPMSolverMultistepScheduler, FlowMatchEulerDiscreteScheduler, UniPCMultistepScheduler

MULTISTEP = ("dpmpp2m", "unipc")
FIRST_FLOW_SIGMA = 1.0 - 1e-6  # diffusers' UniPC: "to avoid inf torch.log(alpha_si)"


def make_multistep(name: str, num_steps: int, vp: dict, *, flow: bool = False, device=None):
    """``name`` "dpmpp2m" or "unipc" with ``num_steps`` steps set; ``vp``: the DDIM family's
    scheduler config (betas, prediction type, spacing); ``flow``: MEMO's flow configuration."""
    if name == "dpmpp2m":
        cls, extra = DPMSolverMultistepScheduler, {"algorithm_type": "dpmsolver++", "solver_type": "midpoint"}
    elif name == "unipc":
        cls, extra = UniPCMultistepScheduler, {"solver_type": "bh2", "predict_x0": True}
    else:
        raise ValueError(f"multistep sampler must be one of {', '.join(MULTISTEP)}, not {name!r}")
    common = {"solver_order": 2, "lower_order_final": True, "final_sigmas_type": "zero", **extra}
    if flow:
        sched = cls(num_train_timesteps=1000, prediction_type="flow_prediction", use_flow_sigmas=True,
                    flow_shift=1.0, **common)
        sched.set_timesteps(num_steps, device=device)
        euler = FlowMatchEulerDiscreteScheduler()  # MEMO's grid (shift 1)
        euler.set_timesteps(num_steps, device=device)
        sigmas = euler.sigmas.detach().to("cpu", torch.float32).clone()
        sigmas[0] = min(float(sigmas[0]), FIRST_FLOW_SIGMA)
        sched.sigmas = sigmas
        sched.timesteps = euler.timesteps.clone()
    else:
        keep = ("num_train_timesteps", "beta_start", "beta_end", "beta_schedule", "prediction_type",
                "rescale_betas_zero_snr", "timestep_spacing", "steps_offset")
        sched = cls(**{k: vp[k] for k in keep}, **common)
        sched.set_timesteps(num_steps, device=device)
    reset_multistep(sched)
    return sched


def is_multistep(sched) -> bool:
    return isinstance(sched, (DPMSolverMultistepScheduler, UniPCMultistepScheduler))


def reset_multistep(sched) -> None:
    """The state ``set_timesteps`` leaves (diffusers 0.42.1), without recomputing the grid; the
    begin index is 0, so the first ``step`` is step 0 whatever its timestep."""
    order = sched.config.solver_order
    sched.model_outputs = [None] * order
    sched.lower_order_nums = 0
    sched._step_index = None
    sched.set_begin_index(0)
    if isinstance(sched, UniPCMultistepScheduler):
        sched.timestep_list = [None] * order
        sched.last_sample = None
        sched.this_order = None


def solver_copy(sched):
    """A copy of the solver whose state (history, counter, corrector input) can advance without
    touching ``sched``'s (the schedule's tensors are shared, never written in place by ``step``)."""
    out = copy.copy(sched)
    out.model_outputs = list(sched.model_outputs)
    if hasattr(sched, "timestep_list"):
        out.timestep_list = list(sched.timestep_list)
    return out


def held_path(sched, index: int, sample: torch.Tensor, x0: torch.Tensor, count: int, output_for) -> list[torch.Tensor]:
    """The input latents of steps ``index + 1 .. index + count`` when a copy of the solver (at step
    ``index``, its history as the loop left it) runs on from ``sample`` (the true latent entering
    step ``index``) with every prediction's data (x0) part held at ``x0``: the model output fed to
    ``step`` is ``output_for(sched, x0, z, t)``, the output that predicts ``x0`` at ``z``.

    With a constant data prediction DPM-Solver++ 2M's correction term (m_0 - m_1) vanishes once the
    history holds only ``x0``, which leaves the first-order (DDIM, eta 0) update towards ``x0``; the
    first held step still reads the key step's own history. UniPC's corrector runs at every held
    step with the held prediction as the new model evaluation (so it re-corrects the latent that step
    starts from, as it does in a real run); its predictor then steps on from the corrected latent."""
    solver = solver_copy(sched)
    out, z = [], sample
    for j in range(index, index + count):
        t = sched.timesteps[j]
        z = solver.step(output_for(sched, x0, z, t), t, z).prev_sample
        out.append(z)
    return out
