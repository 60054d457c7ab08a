"""Step-caching accelerators: LightningCP (the paper's method) and the two baselines it is
measured against, DeepCache and FasterDiffusion, all on the same cut mechanism.

- **LightningCP**: at a key step run the full network and cache the feature entering the cache
  layer (f_U31 for branch 0). For the other steps of the key step's group, estimate their input
  latents in closed form from the key step's prediction and predict them all in ONE batched call
  of the shallow path (one timestep per item), then apply them with chained scheduler steps.
- **DeepCache**: same cache, but the non-key steps run the shallow path one at a time on their
  true latents.
- **FasterDiffusion**: cache the encoder side (every skip and the mid-block output) at key steps;
  the other steps of a group run the decoder only, batched, then chained; plus prior noise
  injection (``0.003 * z_T`` added to the latent a scheduler step starts from, for every step whose
  timestep is below 500).

Options on top of every method (``CachingConfig``): how reduced predictions are combined
(``chain``, ``each``, ``x0``), forecasting the cached feature from the last key steps instead of
reusing it (``forecast``), guidance reuse at reduced steps (``guidance_reuse``), adaptive key
steps (``adaptive``) and padding reduced calls to one size (``pad``, for torch.compile).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field

import torch

from ..models.unet import StagePlan
from ..sampling.loop import StepAction
from ..sampling.scheduler import input_timestep, noise_to, output_for, split_prediction
from ..sampling.solvers import held_path, is_multistep
from .base import (Accelerator, CapturePlan, ShallowPlan, cut_points, expand_items, gather_frames, key_items,
                   key_prediction)
from .schedule import KeySchedule

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CachingConfig:
    keys: KeySchedule = field(default_factory=lambda: KeySchedule("uniform", interval=3))
    branch: int = 0  # cache point (0 = shallowest: the input of the last up layer)
    estimation: bool = True  # LightningCP input-latent estimation; False: non-key steps get z_k
    # "chain": steps chained from the true z_{k+1}; "each": each from its own estimate; "x0": the
    # x0 each prediction makes of its own input, applied to the true chained latent
    combine: str = "chain"
    chunk: int = 0  # most steps per reduced call (0: the whole group in one call)
    noise_injection: float = 0.003  # FasterDiffusion only
    injection_below: int = 500
    # 0: reduced steps reuse the key step's cached feature; 1 / 2: extrapolate it (Lagrange
    # polynomial in the timestep through the last 2 / 3 key steps: a finite-difference Taylor forecast)
    forecast: int = 0
    guidance_reuse: bool = False  # reduced steps: conditional half only + the key step's guidance term
    # with guidance reuse: key steps run the unconditional half only at every n-th key step of a
    # clip (the first always); the others run the conditional half and reuse the last guidance term
    guidance_every: int = 1
    adaptive: float = 0.0  # > 0: key steps chosen online (threshold on the accumulated output change)
    max_interval: int = 8  # adaptive: at most this many steps from one key step to the next
    pad: bool = False  # pad every reduced call to the clip's largest group (one compiled graph)

    def __post_init__(self):
        if self.combine not in COMBINE_MODES:
            raise ValueError(f"combine must be one of {', '.join(COMBINE_MODES)}, not {self.combine!r}")
        if self.chunk < 0:
            raise ValueError("chunk must be >= 0")
        if self.forecast not in (0, 1, 2):
            raise ValueError(f"forecast must be 0, 1 or 2, not {self.forecast!r}")
        if not (self.adaptive >= 0 and math.isfinite(self.adaptive)):
            raise ValueError(f"adaptive threshold must be a finite number >= 0, not {self.adaptive!r}")
        if self.max_interval < 1:
            raise ValueError("max_interval must be >= 1")
        if self.guidance_every < 1:
            raise ValueError("guidance_every must be >= 1")
        if not math.isfinite(self.noise_injection):
            raise ValueError("noise_injection must be finite")


COMBINE_MODES = ("chain", "each", "x0")


def lagrange_weights(points: list[float], x: float) -> list[float]:
    """Weights w_m with p(x) = sum_m w_m * f(points[m]) for the polynomial through the points."""
    out = []
    for m, pm in enumerate(points):
        w = 1.0
        for l_, pl in enumerate(points):
            if l_ != m:
                w *= (x - pl) / (pm - pl)
        out.append(w)
    return out


class LightningCP(Accelerator):
    name = "lightningcp"
    batched = True  # the steps of a group share one call
    decoder_only = False  # FasterDiffusion: the reduced path is the whole decoder

    def __init__(self, cfg: CachingConfig = CachingConfig()):
        super().__init__()
        self.cfg = cfg
        self.actions: dict[int, StepAction] = {}
        self.capture: CapturePlan | None = None
        self.history: list[tuple[float, CapturePlan]] = []  # (timestep, capture) of recent key steps
        self.largest = 1
        self.key_index = -1
        self.key_latents: torch.Tensor | None = None
        self.x0: torch.Tensor | None = None
        self.eps: torch.Tensor | None = None
        self.guide_delta: torch.Tensor | None = None
        self._drift = 0.0
        self._last_out: torch.Tensor | None = None
        self._keys_seen = 0
        self._warned_reuse = False

    def cut(self) -> tuple[int, int]:
        unet = self.net.denoising_unet
        if self.decoder_only:
            first_up = next(i for i, s in enumerate(unet.stages) if s.name.startswith("up."))
            return 0, first_up
        return cut_points(unet, self.cfg.branch)

    def reset(self, scheduler) -> None:
        super().reset(scheduler)
        self.capture, self.key_index, self.history = None, -1, []
        self.key_latents = self.x0 = self.eps = self.guide_delta = None
        self._drift, self._last_out = 0.0, None
        self._keys_seen = 0
        self.actions = {}
        self.largest = 1
        if self.cfg.adaptive:
            return  # decided online (next_action)
        for key, group in self.cfg.keys.groups(self.num_steps):
            self.actions[key] = StepAction((key,), True)
            size = (self.cfg.chunk or len(group)) if self.batched else 1
            for start in range(0, len(group), max(1, size)):
                chunk = group[start : start + size]
                self.actions[chunk[0]] = StepAction(chunk, False)
                self.largest = max(self.largest, len(chunk))

    def next_action(self, index: int) -> StepAction:
        if not self.cfg.adaptive:
            return self.actions[index]
        since = index - self.key_index
        key = self.key_index < 0 or self._drift >= self.cfg.adaptive or since >= self.cfg.max_interval
        return StepAction((index,), key)

    def pad_to(self, action: StepAction) -> int:
        return self.largest if self.cfg.pad else len(action.steps)

    def stage_plan(self, action: StepAction) -> StagePlan | None:
        d, u = self.cut()
        self.shared.window = None  # a windowed predictor sets it per window call (for_window)
        if action.full:
            self.shared.phase = "key"
            self.capture = CapturePlan(u, keep_skips=self.decoder_only,
                                       keep_audio=self.net.cfg.unet.audio_module == "joint")
            self.capture.shared = self.shared
            t = float(self.scheduler.timesteps[action.steps[0]])
            self.history = (self.history + [(t, self.capture)])[-3:]
            return self.capture
        if self.capture is None or self.capture.h is None:
            raise RuntimeError(f"{self.name}: reduced step {action.steps} before any key step")
        self.shared.phase = "shallow"
        rs = self.net.ref_state
        plan = ShallowPlan(d, u, self.capture, self.shared.key_layout, lambda: rs.layout, self._forecast(action))
        plan.shared = self.shared
        return plan

    def _forecast(self, action: StepAction):
        """``feature(index, frames)`` extrapolating the cached feature to each step of ``action``
        (None: plain reuse). The weights are made here, outside the model call."""
        order = min(self.cfg.forecast, len(self.history) - 1)
        if order < 1:
            return None
        pts = self.history[-(order + 1):]
        steps = list(action.steps)
        steps += [steps[-1]] * (self.pad_to(action) - len(steps))
        ts = self.scheduler.timesteps
        weights = torch.tensor([lagrange_weights([p for p, _ in pts], float(ts[j])) for j in steps]).T  # (M, n)
        ref = pts[-1][1].h
        weights = weights.to(ref.device, ref.dtype)

        def feature(layout, frames: int, rows: tuple[int, int] | None = None, window=None) -> torch.Tensor:
            """``window``: (frames (n, f), L) of a windowed call: each key step's per-frame cache is
            regathered at the window's frames."""
            mine = weights if rows is None else weights[:, rows[0] : rows[1]]  # a shard's steps only
            w = mine.repeat(1, len(layout) // mine.shape[1]).repeat_interleave(frames, 1)  # (M, items*F)
            out = None
            for m, (_, cap) in enumerate(pts):  # each key call has its own items (guidance_every)
                idx = key_items(cap.layout, layout)
                cached = (expand_items(cap.h, frames, idx) if window is None
                          else gather_frames(cap.h, window[1], idx, window[0]))
                term = w[m].view(-1, *([1] * (cap.h.dim() - 1))) * cached
                out = term if out is None else out + term
            return out

        return feature

    def call(self, predict, action: StepAction, latents: torch.Tensor, t: torch.Tensor, plan) -> torch.Tensor:
        """The model call; with guidance reuse a key step keeps its (cond - uncond) and a reduced
        step runs the conditional half only: u + s (c - u) = c + (s - 1) (c_key - u_key)."""
        if not self.cfg.guidance_reuse:
            return predict(latents, t, plan)
        g, raw = getattr(predict, "guidance", None), getattr(predict, "model_output", None)
        if g is None:  # no CFG: nothing to reuse
            return predict(latents, t, plan)
        if raw is None:
            if not self._warned_reuse:
                log.warning("guidance reuse needs a predictor with separate CFG halves (not available "
                            "with --parallel); running full CFG calls")
                self._warned_reuse = True
            return predict(latents, t, plan)
        if action.full:
            self._keys_seen += 1
            if self.guide_delta is None or (self._keys_seen - 1) % self.cfg.guidance_every == 0:
                u, c = raw(latents, t, plan, (0, 1)).chunk(2)
                self.guide_delta = c - u
                return u + g * self.guide_delta
        return raw(latents, t, plan, (1,)) + (g - 1) * self.guide_delta

    def after_step(self, action: StepAction, index: int, output: torch.Tensor, latents: torch.Tensor) -> None:
        if self.cfg.adaptive:
            if action.full:
                self._drift = 0.0
            elif self._last_out is not None:
                prev = self._last_out
                self._drift += float((output - prev).abs().mean() / prev.abs().mean().clamp_min(1e-12))
            self._last_out = output
        if not action.full:
            return
        self.key_index = index
        self.key_latents = latents
        self.shared.key_layout = self.net.ref_state.layout
        if self.capture is not None:
            self.capture.layout = self.shared.key_layout
        self.x0, self.eps = key_prediction(self.scheduler, output, latents, self.scheduler.timesteps[index])

    def adjust_output(self, action: StepAction, index: int, output: torch.Tensor, own: torch.Tensor,
                      start: torch.Tensor) -> torch.Tensor:
        """``combine="x0"``: keep the x0 the prediction makes of the latent it was computed on and
        step the true latent towards it (its eps follows from the true latent)."""
        if self.cfg.combine != "x0" or action.full or own.data_ptr() == start.data_ptr():
            return output
        if index == self.key_index + 1 and (self.cfg.estimation or self.cfg.adaptive):
            return output  # this step's input was the true latent already
        if index == action.steps[0] and self.cfg.estimation and is_multistep(self.scheduler):
            return output  # a multistep solver's estimates start from the true latent of the call's first step
        t = self.scheduler.timesteps[index]
        x0, _ = split_prediction(self.scheduler, output, own, t)
        return output_for(self.scheduler, x0, start, t)

    def estimate(self, step: int) -> torch.Tensor:
        """Input latent of ``step`` from the key step's prediction: where chained scheduler steps
        with that fixed (x0, eps) would put it (DDIM with eta 0 and the scheduler's own
        previous-timestep rule; flow-matching Euler: the straight line z_k + (sigma - sigma_k) v_k)."""
        return noise_to(self.scheduler, self.x0, self.eps, input_timestep(self.scheduler, step))

    def batch_latents(self, action: StepAction, latents: torch.Tensor) -> torch.Tensor:
        if self.cfg.adaptive:
            return latents  # one step at a time: its true latent is known
        if not self.cfg.estimation:
            return self.key_latents.expand(len(action.steps), *latents.shape[1:])
        if is_multistep(self.scheduler):
            return torch.cat([latents, *self.multistep_estimates(action, latents)])
        parts = [latents if j == self.key_index + 1 else self.estimate(j) for j in action.steps]
        return torch.cat(parts)

    def multistep_estimates(self, action: StepAction, latents: torch.Tensor) -> list[torch.Tensor]:
        """A multistep solver's estimates of the input latents of ``action.steps[1:]``: the solver's
        own update and history (a copy of its state as the loop left it before ``action.steps[0]``,
        whose true input is ``latents``), every prediction's x0 held at the key step's
        (:func:`~talkfast.sampling.solvers.held_path`)."""
        first = action.steps[0]
        return held_path(self.scheduler, first, latents, self.x0, len(action.steps) - 1, output_for)

    def chain(self, action: StepAction) -> bool:
        return self.cfg.combine != "each"


class DeepCache(LightningCP):
    """Key steps cache the deep feature; the other steps run the shallow path one by one on
    their true latents (no estimation, no batching). Its non-uniform key steps are
    ``KeySchedule("power")``."""

    name = "deepcache"
    batched = False

    def batch_latents(self, action: StepAction, latents: torch.Tensor) -> torch.Tensor:
        return latents  # the true latent of this (single) step


class FasterDiffusion(LightningCP):
    """Encoder propagation: decoder-only reduced steps, batched over the group, plus prior
    noise injection as the official code applies it (hutaiHang/Faster-Diffusion, utils_sd.py at
    d64bfed, the key-time sampling loop): before every scheduler step whose timestep is below
    500, ``0.003 * z_T`` (the initial noise) is added to the latent that step starts from; the
    model input of a key step is the latent before injection, and the final latent is never
    injected."""

    name = "fasterdiffusion"
    decoder_only = True

    def __init__(self, cfg: CachingConfig = CachingConfig()):
        super().__init__(cfg)
        self.z_T: torch.Tensor | None = None

    def reset(self, scheduler) -> None:
        super().reset(scheduler)
        self.z_T = None

    def after_step(self, action, index, output, latents) -> None:
        if index == 0:
            self.z_T = latents
        super().after_step(action, index, output, latents)

    def batch_latents(self, action: StepAction, latents: torch.Tensor) -> torch.Tensor:
        # The decoder-only path never reads the latent; keep shapes consistent.
        return latents.expand(len(action.steps), *latents.shape[1:])

    def pre_step(self, index: int, latents: torch.Tensor) -> torch.Tensor:
        a = self.cfg.noise_injection
        if a and self.z_T is not None and int(self.scheduler.timesteps[index]) < self.cfg.injection_below:
            return latents + a * self.z_T
        return latents
