"""The one denoising loop.

The loop asks a :class:`StepPlanner` what to do next. The plain planner answers "one full step" at
every step. A caching accelerator answers "full step" at key steps and "a batch of steps" for the
steps of a key step's group: the loop then predicts all of them in ONE model call (one timestep
per batch item, latents chosen by the planner) and applies them with ordinary scheduler steps.

Optional planner hooks (looked up with ``getattr``, so a plain planner needs none of them):
``call(predict, action, latents, t, plan)`` runs the model call itself (guidance reuse),
``pad_to(action)`` pads a reduced call's batch to a fixed size (one compiled graph for every
group), ``adjust_output(action, j, output, own_input, start)`` rewrites a prediction before its
scheduler step (x0-anchored combining), ``record(...)`` receives each call's time and FLOPs.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Protocol

import torch
from diffusers import DDIMScheduler

from ..models.unet import StagePlan
from .scheduler import reset_state, scheduler_step

# predict(latents (n, C, F, h, w), timesteps (n,), stage_plan) -> guided model output (n, C, F, h, w)
Predictor = Callable[[torch.Tensor, torch.Tensor, "StagePlan | None"], torch.Tensor]


def guided(model_output: Callable, guidance: float) -> Predictor:
    """``predict(latents, t, plan)``: the CFG combination ``u + guidance (c - u)`` of
    ``model_output(latents, t, plan, halves)`` (raw outputs of the listed CFG halves, half-major),
    or the conditional half alone when ``guidance`` <= 1. ``predict.model_output`` and
    ``predict.guidance`` (None without CFG) stay readable for wrappers that split the halves
    (guidance reuse, :mod:`talkfast.parallel`)."""
    cfg_on = guidance > 1.0

    def predict(latents: torch.Tensor, t: torch.Tensor, plan: StagePlan | None) -> torch.Tensor:
        if not cfg_on:
            return model_output(latents, t, plan, (1,))
        v_u, v_c = model_output(latents, t, plan, (0, 1)).chunk(2)
        return v_u + guidance * (v_c - v_u)

    predict.model_output = model_output
    predict.guidance = guidance if cfg_on else None
    return predict


@dataclass(frozen=True)
class StepAction:
    """``steps``: indices into the scheduler's timesteps, run by one model call.
    ``full``: whether that call runs the whole network (a key step) or a reduced path."""

    steps: tuple[int, ...]
    full: bool = True


class StepPlanner(Protocol):
    def reset(self, scheduler: DDIMScheduler) -> None: ...

    def next_action(self, index: int) -> StepAction: ...

    def stage_plan(self, action: StepAction) -> StagePlan | None: ...

    def batch_latents(self, action: StepAction, latents: torch.Tensor) -> torch.Tensor: ...

    def after_step(self, action: StepAction, index: int, output: torch.Tensor, latents: torch.Tensor) -> None: ...

    def chain(self, action: StepAction) -> bool: ...

    def pre_step(self, index: int, latents: torch.Tensor) -> torch.Tensor: ...


class FullSteps:
    """The unaccelerated planner: every step runs the full network."""

    def reset(self, scheduler: DDIMScheduler) -> None:
        pass

    def next_action(self, index: int) -> StepAction:
        return StepAction((index,), True)

    def stage_plan(self, action: StepAction) -> StagePlan | None:
        return None

    def batch_latents(self, action: StepAction, latents: torch.Tensor) -> torch.Tensor:
        return latents

    def after_step(self, action, index, output, latents) -> None:
        pass

    def chain(self, action: StepAction) -> bool:
        return True

    def pre_step(self, index: int, latents: torch.Tensor) -> torch.Tensor:
        return latents


def attention_flop_mapping() -> dict:
    """Extra FlopCounterMode formulas: ``aten._scaled_dot_product_flash_attention_for_cpu`` (what
    ``scaled_dot_product_attention`` runs on CPU) gets the formula torch uses for its CUDA flash
    kernel; torch's own registry leaves it out, so CPU counts would miss every attention matmul."""
    from torch.utils import flop_counter as fc

    op = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)
    formula = fc.flop_registry.get(torch.ops.aten._scaled_dot_product_flash_attention)
    if op is None or formula is None or op in fc.flop_registry:
        return {}

    def registered(*args, **kwargs):  # the registry's formula already takes raw arguments
        return formula(*args, **kwargs)

    registered._get_raw = True  # tells FlopCounterMode not to wrap it a second time
    return {op: registered}


def flop_counter():
    """A FlopCounterMode (no display) that also counts CPU attention (:func:`attention_flop_mapping`)."""
    from torch.utils.flop_counter import FlopCounterMode

    return FlopCounterMode(display=False, custom_mapping=attention_flop_mapping())


class CudaTiming:
    """The device time of one call from two CUDA events, read only when asked (after the loop),
    so timing never synchronises the host inside the step loop."""

    def __init__(self, device: torch.device):
        self.start = torch.cuda.Event(enable_timing=True)
        self.end = torch.cuda.Event(enable_timing=True)
        self.start.record(torch.cuda.current_stream(device))

    def stop(self, device: torch.device) -> "CudaTiming":
        self.end.record(torch.cuda.current_stream(device))
        return self

    def seconds(self) -> float:
        self.end.synchronize()
        return self.start.elapsed_time(self.end) / 1000.0


def _measured(call, inputs, t, plan, count_flops: bool, sync: bool):
    """Run one model call, timing it (and counting FLOPs when asked). Returns (output, timing,
    flops); timing is seconds, or on CUDA without ``sync`` a :class:`CudaTiming` whose events
    are read after the loop (a host clock would only see kernel launches)."""
    cuda = inputs.is_cuda
    if sync and cuda:
        torch.cuda.synchronize(inputs.device)
    events = CudaTiming(inputs.device) if cuda and not sync else None
    t0 = time.perf_counter()
    flops = None
    if count_flops:
        with flop_counter() as counter:
            out = call(inputs, t, plan)
        flops = counter.get_total_flops()
    else:
        out = call(inputs, t, plan)
    if events is not None:
        return out, events.stop(inputs.device), flops
    if sync and cuda:
        torch.cuda.synchronize(inputs.device)
    return out, time.perf_counter() - t0, flops


def _padded(inputs: torch.Tensor, t: torch.Tensor, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Repeat the last item until the batch has ``size`` items (their outputs are dropped)."""
    extra = size - inputs.shape[0]
    if extra <= 0:
        return inputs, t
    return (torch.cat([inputs, inputs[-1:].expand(extra, *inputs.shape[1:])]),
            torch.cat([t, t[-1:].expand(extra)]))


def denoise(
    predict: Predictor,
    scheduler,
    latents: torch.Tensor,
    planner: StepPlanner | None = None,
    on_step: Callable[[int], None] | None = None,
) -> torch.Tensor:
    """Run the whole schedule from ``latents`` (1, C, F, h, w); returns the final latents.
    ``scheduler``: DDIM, flow matching or a multistep solver (:mod:`talkfast.sampling.scheduler`);
    a multistep solver's state is reset first (:func:`~.scheduler.reset_state`: a fresh history per
    call, i.e. per clip and per EchoMimic window run), and every prediction, a reduced step's too,
    goes through its ``step`` in step order and enters its history.

    For a reduced action the planner supplies one input latent per step (``batch_latents``); the
    outputs are applied one after the other. With ``chain(action)`` True (the default of the
    accelerators) each scheduler step starts from the result of the previous one; otherwise each
    starts from its own input latent. ``pre_step`` may change the latent a scheduler step starts
    from (FasterDiffusion's noise injection); the final latent is never changed after its step.
    """
    planner = planner or FullSteps()
    reset_state(scheduler)
    planner.reset(scheduler)
    timesteps = scheduler.timesteps
    on_device = timesteps.to(latents.device)  # sliced per action: no host-device copy in the loop
    n = len(timesteps)
    record = getattr(planner, "record", None)
    custom_call = getattr(planner, "call", None)
    pad_to = getattr(planner, "pad_to", None)
    adjust = getattr(planner, "adjust_output", None)
    i = 0
    while i < n:
        action = planner.next_action(i)
        steps = action.steps
        if not steps or steps[0] != i or list(steps) != list(range(i, i + len(steps))):
            raise RuntimeError(f"planner returned steps {steps} at step {i}")
        inputs = latents if action.full else planner.batch_latents(action, latents)
        t = on_device[i : i + len(steps)]
        x, tt = (inputs, t) if action.full or pad_to is None else _padded(inputs, t, pad_to(action))
        plan = planner.stage_plan(action)
        call = predict if custom_call is None else (lambda a, b, c, _act=action: custom_call(predict, _act, a, b, c))
        if record is None:
            out = call(x, tt, plan)
        else:
            out, seconds, flops = _measured(call, x, tt, plan, getattr(planner, "count_flops", False),
                                            getattr(planner, "sync_timing", False))
            record(action, seconds, x.shape[0], flops)
        chain = planner.chain(action)
        for k, j in enumerate(steps):
            own = inputs[k : k + 1]
            start = latents if (chain or len(steps) == 1) else own
            o = out[k : k + 1]
            if adjust is not None:
                o = adjust(action, j, o, own, start)
            planner.after_step(action, j, o, start)
            start = planner.pre_step(j, start)
            latents = scheduler_step(scheduler, o, j, start)
            if on_step is not None:
                on_step(j)
        i = steps[-1] + 1
    return latents
