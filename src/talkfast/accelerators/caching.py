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
  injection (``0.003 * z_T`` added to the latent once t < 500).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..models.unet import StagePlan
from ..sampling.loop import StepAction
from ..sampling.scheduler import noise_to, previous_timestep
from .base import Accelerator, CapturePlan, ShallowPlan, cut_points, key_prediction
from .schedule import KeySchedule


@dataclass(frozen=True)
class CachingConfig:
    keys: KeySchedule = field(default_factory=lambda: KeySchedule("uniform", interval=3))
    branch: int = 0  # cache point (0 = shallowest: the input of the last up layer)
    estimation: bool = True  # LightningCP input-latent estimation; False: non-key steps get z_k
    combine: str = "chain"  # "chain": steps chained from the true z_{k+1}; "each": from own estimate
    chunk: int = 0  # most steps per reduced call (0: the whole group in one call)
    noise_injection: float = 0.003  # FasterDiffusion only
    injection_below: int = 500

    def __post_init__(self):
        if self.combine not in ("chain", "each"):
            raise ValueError(f"combine must be 'chain' or 'each', not {self.combine!r}")
        if self.chunk < 0:
            raise ValueError("chunk must be >= 0")


class LightningCP(Accelerator):
    name = "lightningcp"
    batched = True  # the steps of a group share one call
    decoder_only = False  # FasterDiffusion: the reduced path is the whole decoder

    def __init__(self, cfg: CachingConfig = CachingConfig()):
        super().__init__()
        self.cfg = cfg
        self.actions: dict[int, StepAction] = {}
        self.capture: CapturePlan | None = None
        self.key_index = -1
        self.key_latents: torch.Tensor | None = None
        self.x0: torch.Tensor | None = None
        self.eps: torch.Tensor | None = None

    def cut(self) -> tuple[int, int]:
        unet = self.net.denoising_unet
        if self.decoder_only:
            first_up = next(i for i, s in enumerate(unet.stages) if s.name.startswith("up."))
            return 0, first_up
        return cut_points(unet, self.cfg.branch)

    def reset(self, scheduler) -> None:
        super().reset(scheduler)
        self.capture, self.key_index = None, -1
        self.key_latents = self.x0 = self.eps = None
        self.actions = {}
        for key, group in self.cfg.keys.groups(self.num_steps):
            self.actions[key] = StepAction((key,), True)
            size = (self.cfg.chunk or len(group)) if self.batched else 1
            for start in range(0, len(group), max(1, size)):
                chunk = group[start : start + size]
                self.actions[chunk[0]] = StepAction(chunk, False)

    def next_action(self, index: int) -> StepAction:
        return self.actions[index]

    def stage_plan(self, action: StepAction) -> StagePlan | None:
        d, u = self.cut()
        if action.full:
            self.shared.phase = "key"
            self.capture = CapturePlan(u, keep_skips=self.decoder_only)
            return self.capture
        if self.capture is None or self.capture.h is None:
            raise RuntimeError(f"{self.name}: reduced step {action.steps} before any key step")
        self.shared.phase = "shallow"
        rs = self.net.ref_state
        return ShallowPlan(d, u, self.capture, self.shared.key_layout, lambda: rs.layout)

    def after_step(self, action: StepAction, index: int, output: torch.Tensor, latents: torch.Tensor) -> None:
        if not action.full:
            return
        self.key_index = index
        self.key_latents = latents
        self.shared.key_layout = self.net.ref_state.layout
        self.x0, self.eps = key_prediction(self.scheduler, output, latents, self.scheduler.timesteps[index])

    def estimate(self, step: int) -> torch.Tensor:
        """Input latent of ``step`` from the key step's prediction: where chained DDIM steps with
        that fixed (x0, eps) would put it (the scheduler's own previous-timestep rule)."""
        t_before = int(self.scheduler.timesteps[step - 1])
        return noise_to(self.scheduler, self.x0, self.eps, previous_timestep(self.scheduler, t_before))

    def batch_latents(self, action: StepAction, latents: torch.Tensor) -> torch.Tensor:
        if not self.cfg.estimation:
            return self.key_latents.expand(len(action.steps), *latents.shape[1:])
        parts = [latents if j == self.key_index + 1 else self.estimate(j) for j in action.steps]
        return torch.cat(parts)

    def chain(self, action: StepAction) -> bool:
        return self.cfg.combine == "chain"


class DeepCache(LightningCP):
    """Key steps cache the deep feature; the other steps run the shallow path one by one on
    their true latents (no estimation, no batching)."""

    name = "deepcache"
    batched = False

    def batch_latents(self, action: StepAction, latents: torch.Tensor) -> torch.Tensor:
        return latents  # the true latent of this (single) step


class FasterDiffusion(LightningCP):
    """Encoder propagation: decoder-only reduced steps, batched over the group, plus prior
    noise injection."""

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

    def post_step(self, index: int, latents: torch.Tensor) -> torch.Tensor:
        a = self.cfg.noise_injection
        if a and self.z_T is not None and int(self.scheduler.timesteps[index]) < self.cfg.injection_below:
            return latents + a * self.z_T
        return latents
