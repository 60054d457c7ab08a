"""Shifting context windows over a long latent video (EchoMimic v1's sampler), as a predictor.

EchoMimic v1 (antgroup/echomimic at a53e970: ``src/pipelines/context.py`` ``uniform`` and the step
loop of ``src/pipelines/pipeline_echo_mimic.py``; echomimic_memo.md §1.5) denoises all L frames of
a video at once, but calls its UNet on windows of 12 frames:

* the windows are built once: starts 0, 9, 18, ... < L (12 frames, overlap 3), each taken mod L
  (closed loop); with L <= 12 one window of all frames;
* at step i every index becomes ``(index + shift * i) mod L`` (shift 2; 3 for the pose pipelines);
* per window one model call on [uncond; cond]; the outputs of both halves are added into an
  L-frame buffer with a per-frame counter, in window order, and divided by the counter;
* then guidance and one scheduler step on all L frames.

:class:`WindowedPredictor` is that per-step work behind the one loop's
:data:`~talkfast.sampling.loop.Predictor` signature: the loop sees a predictor over the full
L-frame latent and runs its usual scheduler steps. The step index of each batch item comes from
its timestep (the scheduler's timesteps are distinct), so a batched call of several steps (a
caching accelerator's reduced call) shifts each item by its own step.

A :class:`~talkfast.models.unet.StagePlan` reaches every window call. A plan with the optional
hooks ``for_window(window, frames, length)`` / ``after_windows()`` (the accelerators' per-frame
caches) is asked for the plan of each window (``windows``: the window number, ``frames``: (n, f)
absolute frame indices per item) and told when the call's windows are done.

Without guidance EchoMimic's non-acc pipelines (``pipeline_echo_mimic.py``,
``pipeline_echo_mimic_pose.py``) add the windows up and never divide by the counter (frames in
two windows get the sum of both outputs); the acc pipelines divide. ``average_unguided=False``
reproduces the former; the default (True) always takes the average.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from .loop import guided

# window_output(latents (n, C, f, h, w), timesteps (n,), plan, halves, frames (n, f)) -> raw
# model output of the listed CFG halves, half-major: (len(halves) * n, C, f, h, w)
WindowOutput = Callable[..., torch.Tensor]


def uniform_windows(length: int, size: int = 12, overlap: int = 3) -> list[list[int]]:
    """EchoMimic's closed-loop uniform schedule at step 0 (``context_stride`` 1): windows of
    ``size`` frames starting at 0, size - overlap, ... < length, indices taken mod ``length``."""
    if length < 1 or size < 1 or not 0 <= overlap < size:
        raise ValueError(f"need length >= 1, size >= 1 and 0 <= overlap < size; got {length}, {size}, {overlap}")
    if length <= size:
        return [list(range(length))]
    return [[(s + k) % length for k in range(size)] for s in range(0, length, size - overlap)]


def shifted_windows(windows: list[list[int]], step: int, length: int, shift: int = 2) -> list[list[int]]:
    """The windows at step ``step``: every index moved by ``shift * step`` mod ``length``."""
    return [[(i + shift * step) % length for i in w] for w in windows]


class WindowedPredictor:
    """``predict(latents (n, C, L, h, w), t (n,), plan)`` over shifting windows of the L frames.

    ``window_output`` runs one model call on a window (see :data:`WindowOutput`); ``timesteps``
    are the scheduler's (step i has timestep ``timesteps[i]``); ``guidance`` > 1 enables CFG.
    ``model_output(latents, t, plan, halves)`` is the window-averaged raw output of the listed
    halves (what guidance reuse and the CFG-splitting wrappers read); ``calls`` counts window calls.
    ``average_unguided=False`` (EchoMimic's non-acc pipelines): without CFG the window outputs are
    summed, not averaged.
    """

    def __init__(self, window_output: WindowOutput, timesteps, length: int, guidance: float, *,
                 size: int = 12, overlap: int = 3, shift: int = 2, average_unguided: bool = True) -> None:
        self.window_output = window_output
        self.length, self.shift = int(length), int(shift)
        self.windows = uniform_windows(self.length, size, overlap)
        self.step_of = {int(v): i for i, v in enumerate(torch.as_tensor(timesteps).tolist())}
        self._predict = guided(self.model_output, guidance)
        self.guidance = self._predict.guidance
        self.average_unguided = bool(average_unguided)
        self.calls = 0

    def step_index(self, t: torch.Tensor) -> list[int]:
        if t.device.type == "meta":  # no values (FLOP counting on shapes): step 0's windows, the same shapes
            return [0] * t.shape[0]
        try:
            return [self.step_of[int(v)] for v in t.tolist()]
        except KeyError as err:
            raise RuntimeError(f"timestep {err} is not one of the scheduler's") from None

    def frames(self, window: int, steps: list[int]) -> torch.Tensor:
        """(n, f) absolute frame indices of window ``window`` for items at the given steps."""
        base = torch.tensor(self.windows[window])
        return torch.stack([(base + self.shift * s) % self.length for s in steps])

    @torch.no_grad()
    def model_output(self, latents: torch.Tensor, t: torch.Tensor, plan=None,
                     halves: tuple[int, ...] = (0, 1)) -> torch.Tensor:
        n, k = latents.shape[0], len(halves)
        if latents.shape[2] != self.length:
            raise ValueError(f"latents have {latents.shape[2]} frames, the windows cover {self.length}")
        steps = self.step_index(t)
        total = latents.new_zeros((k * n, *latents.shape[1:]))
        counter = latents.new_zeros((n, self.length))
        hooks = plan is not None and hasattr(plan, "for_window")
        rows = torch.arange(n)[:, None]
        for w in range(len(self.windows)):
            idx = self.frames(w, steps)  # (n, f)
            dev_idx = idx.to(latents.device)
            x = latents.permute(0, 2, 1, 3, 4)[rows.to(latents.device), dev_idx].permute(0, 2, 1, 3, 4)
            out = self.window_output(x, t, plan.for_window(w, idx, self.length) if hooks else plan, halves, idx)
            self.calls += 1
            for r in range(k * n):  # EchoMimic: noise_pred[:, :, c] = noise_pred[:, :, c] + pred
                total[r][:, dev_idx[r % n]] = total[r][:, dev_idx[r % n]] + out[r]
            counter[rows.to(latents.device), dev_idx] += 1
        if hooks and hasattr(plan, "after_windows"):
            plan.after_windows()
        if self.guidance is None and not self.average_unguided:
            return total  # EchoMimic's non-acc pipelines without CFG: noise_pred, never / counter
        scale = counter.repeat(k, 1)[:, None, :, None, None]
        return total / scale

    def __call__(self, latents: torch.Tensor, t: torch.Tensor, plan=None) -> torch.Tensor:
        return self._predict(latents, t, plan)
