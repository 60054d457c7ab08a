"""What every accelerator shares: the step-planner defaults, where the network is cut, the
caches keyed by reference group (CFG half), per-call statistics and ``summary()``.

An accelerator is a :class:`~talkfast.sampling.loop.StepPlanner` (it tells the one denoising loop
"full step" or "batch of steps") that also hands the UNet a :class:`StagePlan` for each call and,
for attention-level methods, swaps attention processors while attached. Nothing else in the
model changes.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..models.attention import ItemLayout
from ..models.net import TalkingHeadNet
from ..models.unet import RunState, Stage, StagePlan, TalkingUNet
from ..sampling.loop import StepAction
from ..sampling.scheduler import split_prediction


def cut_points(unet: TalkingUNet, branch: int) -> tuple[int, int]:
    """(d, u) for a cache point: the shallow path runs stages [0, d) and [u, end).

    ``branch`` 0 is the shallowest (DeepCache's numbering): u is the last up layer (Hallo's U32,
    whose input is f_U31) and the down side is conv_in alone. Branch b adds the b next
    skip-producing stages on the way down and the b previous up layers on the way up.
    """
    names = [s.name for s in unet.stages]
    ups = [i for i, n in enumerate(names) if n.startswith("up.") and not n.endswith(".sample")]
    pushes = [i for i, n in enumerate(names) if n == "conv_in" or n.startswith("down.")]
    if not 0 <= branch < len(ups):
        raise ValueError(f"cache branch must be in 0..{len(ups) - 1}, got {branch}")
    return pushes[branch] + 1, ups[len(ups) - 1 - branch]


def key_items(key_layout: ItemLayout, layout: ItemLayout) -> list[int]:
    """For each item of ``layout``, the key-step item with the same reference group."""
    by_group = {g: i for i, g in enumerate(key_layout.group)}
    try:
        return [by_group[g] for g in layout.group]
    except KeyError as err:
        raise RuntimeError(f"no key-step item for reference group {err}") from None


def take_rows(x: torch.Tensor, index: list[int] | tuple[int, ...]) -> torch.Tensor:
    """``x[index]`` along dim 0 for a Python index, built from slices and expands of runs of equal
    entries: no index tensor is made, so nothing is created on the device inside a model call and
    torch.compile sees only constants (a lazily filled cache of index tensors made the first
    compiled calls recompile)."""
    index = list(index)
    if index == list(range(x.shape[0])):
        return x
    parts, start = [], 0
    for i in range(1, len(index) + 1):
        if i == len(index) or index[i] != index[start]:
            g = index[start]
            parts.append(x[g : g + 1].expand(i - start, *x.shape[1:]))
            start = i
    return parts[0].contiguous() if len(parts) == 1 else torch.cat(parts)


def expand_items(cached: torch.Tensor, frames: int, index: list[int]) -> torch.Tensor:
    """Frame-flattened key-step tensor (K*F, ...) -> (len(index)*F, ...) following ``index``."""
    per_item = cached.reshape(-1, frames, *cached.shape[1:])
    return take_rows(per_item, index).reshape(-1, *cached.shape[1:])


@dataclass
class CallRecord:
    steps: tuple[int, ...]
    kind: str  # "full" | "shallow" | "decoder"
    items: int
    timing: object  # seconds (float), or a sampling.loop.CudaTiming read on demand
    flops: int | None = None

    @property
    def seconds(self) -> float:
        return self.timing if isinstance(self.timing, float) else self.timing.seconds()


@dataclass
class SharedState:
    """Read by processors (DFA) during a call: which phase and which items."""

    phase: str = "off"  # "key" | "shallow" | "off"
    key_layout: ItemLayout | None = None
    frames: int = 1
    # on a windowed predictor, the window call running now: (window number, frames (n, f) absolute
    # indices per item, L frames in all); None for a call over the whole clip
    window: tuple[int, torch.Tensor, int] | None = None


class Accelerator:
    """Base planner: every step is a full step (the degenerate setting of every method)."""

    name = "off"

    def __init__(self, plugins: list | None = None) -> None:
        self.plugins = list(plugins or [])  # DFA, ReferenceRemoval: attach/detach/begin/reset
        self.config = None  # the AccelConfig it was built from, if any
        self.net: TalkingHeadNet | None = None
        self.shared = SharedState()
        self.records: list[CallRecord] = []
        self.count_flops = False
        self.sync_timing = False
        self.num_steps = 0
        self.scheduler = None
        self.first_clip_calls: int | None = None  # records of the first clip (set when the 2nd starts)

    # ----------------------------------------------------------- lifecycle
    def attach(self, net: TalkingHeadNet) -> "Accelerator":
        if self.net is not None and self.net is not net:
            raise RuntimeError(f"{self.name} is already attached to another network")
        if self.net is None:
            self.net = net
            for p in self.plugins:
                p.attach(net, self)
        return self

    def detach(self) -> None:
        for p in reversed(self.plugins):
            p.detach()
        self.net = None

    def cut(self) -> tuple[int, int]:
        raise RuntimeError(f"{self.name} does not cut the network; attention plug-ins need a caching method")

    def begin(self, pipeline, portrait) -> None:
        """Called once per generation, before the first clip: drop every statistic."""
        self.records.clear()
        self.first_clip_calls = None
        for p in self.plugins:
            p.begin(pipeline, portrait)

    def reset(self, scheduler) -> None:
        """Called at the start of every clip's denoising: drop every cache."""
        self.scheduler = scheduler
        self.num_steps = len(scheduler.timesteps)
        if self.records and self.first_clip_calls is None:
            self.first_clip_calls = len(self.records)
        self.shared.phase = "off"
        self.shared.key_layout = None
        for p in self.plugins:
            p.reset()

    # ----------------------------------------------------------- planner protocol
    def next_action(self, index: int) -> StepAction:
        return StepAction((index,), True)

    def stage_plan(self, action: StepAction) -> StagePlan | None:
        return None

    def batch_latents(self, action: StepAction, latents: torch.Tensor) -> torch.Tensor:
        return latents.expand(len(action.steps), *latents.shape[1:])

    def after_step(self, action: StepAction, index: int, output: torch.Tensor, latents: torch.Tensor) -> None:
        pass

    def chain(self, action: StepAction) -> bool:
        return True

    def pre_step(self, index: int, latents: torch.Tensor) -> torch.Tensor:
        return latents

    def record(self, action: StepAction, timing, items: int, flops: int | None) -> None:
        kind = "full" if action.full else "shallow"
        self.records.append(CallRecord(action.steps, kind, items, timing, flops))

    # ----------------------------------------------------------- reporting
    def describe(self) -> dict:
        return self.config.describe() if self.config is not None else {"method": self.name}

    def summary(self) -> dict:
        """Which steps were full / reduced, time per step, FLOPs done vs an all-full run."""
        recs = self.records
        first = recs[: self.first_clip_calls] if self.first_clip_calls is not None else recs
        full = [r for r in recs if r.kind == "full"]
        steps_full = sum(len(r.steps) for r in full)
        steps_all = sum(len(r.steps) for r in recs)
        secs = sum(r.seconds for r in recs)  # on CUDA: reads the call events (after the loop)
        out = {
            "method": self.name,
            "steps": steps_all,
            "full_steps": steps_full,
            "reduced_steps": steps_all - steps_full,
            "model_calls": len(recs),
            "model_seconds": secs,
            "seconds_per_step": secs / steps_all if steps_all else 0.0,
            "key_steps_first_clip": [r.steps[0] for r in first if r.kind == "full"],
        }
        if recs and all(r.flops is not None for r in recs) and full:
            per_full_step = sum(r.flops for r in full) / steps_full
            done = sum(r.flops for r in recs)
            out.update(flops=done, baseline_flops=per_full_step * steps_all, flops_ratio=done / (per_full_step * steps_all))
        if full and steps_all > steps_full:
            full_s = sum(r.seconds for r in full) / steps_full
            out["estimated_baseline_seconds"] = full_s * steps_all
        return out

    def summary_text(self) -> str:
        s = self.summary()
        line = (f"{s['method']}: {s['full_steps']} full + {s['reduced_steps']} reduced steps in "
                f"{s['model_calls']} model calls, {s['model_seconds']:.2f} s in the model")
        if "estimated_baseline_seconds" in s:
            line += f" (all-full estimate {s['estimated_baseline_seconds']:.2f} s)"
        if "flops_ratio" in s:
            line += f", FLOPs {100 * s['flops_ratio']:.1f}% of all-full"
        return line


def gather_frames(full: torch.Tensor, length: int, key_index: list[int], frames: torch.Tensor) -> torch.Tensor:
    """Rows of a per-frame cache for one window call: ``full`` (K*L, ...) holds L frames per key
    item; call item r reads key item ``key_index[r]`` at the frames ``frames[r % n]`` ((n, f)
    absolute indices, n items per CFG half). Returns (len(key_index) * f, ...)."""
    per = full.reshape(-1, length, *full.shape[1:])
    idx = frames.to(full.device)
    n = idx.shape[0]
    return torch.cat([per[key_index[r], idx[r % n]] for r in range(len(key_index))])


def scatter_frames(total: torch.Tensor, per: torch.Tensor, frames: torch.Tensor,
                   count: torch.Tensor | None = None) -> None:
    """Add one window call's rows into a per-frame store: ``per`` (K, f, ...) into ``total``
    (K, L, ...) at the frames ``frames[r % n]`` ((n, f) absolute indices, n items per CFG half) of
    each item r; ``count`` (K, L), when given, counts the additions per frame."""
    idx = frames.to(per.device)
    n = idx.shape[0]
    for r in range(per.shape[0]):
        total[r, idx[r % n]] += per[r]
        if count is not None:
            count[r, idx[r % n]] += 1


class CapturePlan(StagePlan):
    """Runs everything; keeps the hidden state entering stage ``index`` (and the skips, and with
    ``keep_audio`` the audio stream: MEMO's joint audio modules carry one, which the modules after
    the cut read).

    On a windowed predictor (:mod:`talkfast.sampling.windows`) each window call gets its own
    capture (``for_window``); the windows' features are added up per absolute frame and divided by
    the per-frame count (as the model outputs are), so after the call ``h`` holds (K*L, ...): every
    one of the L frames of each of the K items, as a call over all L frames would.
    """

    def __init__(self, index: int, keep_skips: bool = False, keep_audio: bool = False):
        self.index, self.keep_skips, self.keep_audio = index, keep_skips, keep_audio
        self.h: torch.Tensor | None = None
        self.skips: list[torch.Tensor] | None = None
        self.audio: torch.Tensor | None = None  # (K*F, T, D): the audio stream entering stage index
        self.layout: ItemLayout | None = None  # the key call's items (set by the accelerator)
        self.length: int | None = None  # windowed: frames per item of h
        self.shared: SharedState | None = None  # told which window runs (for the DFA processors)
        self._pending: tuple[CapturePlan, torch.Tensor] | None = None
        self._sums: list[torch.Tensor] | None = None
        self._count: torch.Tensor | None = None

    def before(self, index: int, stage: Stage, state: RunState) -> None:
        if index == self.index:
            self.h = state.h
            if self.keep_skips:
                self.skips = list(state.skips)
            if self.keep_audio:
                self.audio = state.audio

    def for_window(self, window: int, frames: torch.Tensor, length: int) -> CapturePlan:
        if self.keep_audio:
            raise NotImplementedError("a carried audio stream is not kept per frame on the windowed path")
        self._fold()
        self.length = length
        if self.shared is not None:
            self.shared.window = (window, frames, length)
        sub = CapturePlan(self.index, self.keep_skips)
        self._pending = (sub, frames)
        return sub

    def _fold(self) -> None:
        if self._pending is None:
            return
        sub, frames = self._pending
        self._pending = None
        parts = [sub.h] + list(sub.skips or [])
        f = frames.shape[1]
        k = sub.h.shape[0] // f
        if self._sums is None:
            self._sums = [p.new_zeros((k, self.length, *p.shape[1:])) for p in parts]
            self._count = sub.h.new_zeros((k, self.length))
        for j, (total, p) in enumerate(zip(self._sums, parts)):
            scatter_frames(total, p.reshape(k, f, *p.shape[1:]), frames, self._count if j == 0 else None)

    def after_windows(self) -> None:
        self._fold()
        if self._sums is None:
            return
        shape = (-1,) + (1,) * (self._sums[0].dim() - 2)
        out = [(s / self._count.reshape(*self._count.shape, *shape[1:])).reshape(-1, *s.shape[2:]) for s in self._sums]
        self.h = out[0]
        self.skips = out[1:] if self.keep_skips else None
        self._sums = self._count = None


class ShallowPlan(StagePlan):
    """Runs stages [0, d) and [u, end); before stage u the hidden state (and optionally the skip
    stack) is replaced by the key step's cache, expanded to this call's items. ``feature(layout,
    frames, rows)``, when given, supplies that hidden state instead (a forecast of the cached
    feature). ``rows``: (start, stop) when this call runs only those steps of the planned group
    (a shard of ``--parallel steps``), else None."""

    def __init__(self, d: int, u: int, cache: CapturePlan, key_layout: ItemLayout, layout_of, feature=None):
        self.d, self.u, self.cache, self.key_layout, self.layout_of = d, u, cache, key_layout, layout_of
        self.feature = feature
        self.rows: tuple[int, int] | None = None
        self.shared: SharedState | None = None  # told which window runs (for the DFA processors)

    def active(self, index: int, stage: Stage) -> bool:
        return index < self.d or index >= self.u

    def for_window(self, window: int, frames: torch.Tensor, length: int) -> WindowShallowPlan:
        if self.cache.length != length:
            raise RuntimeError("a reduced windowed call needs its key step's per-frame cache "
                               f"(key step over {self.cache.length} frames, this call over {length})")
        if self.shared is not None:
            self.shared.window = (window, frames, length)
        return WindowShallowPlan(self, frames, length)

    def before(self, index: int, stage: Stage, state: RunState) -> None:
        if index != self.u:
            return
        if self.cache.length is not None:
            raise RuntimeError("the key step was windowed: this reduced call must be windowed too")
        layout = self.layout_of()
        idx = key_items(self.key_layout, layout)
        if self.feature is not None:
            state.h = self.feature(layout, state.frames, self.rows)
        else:
            state.h = expand_items(self.cache.h, state.frames, idx)
        if self.cache.skips is not None:
            state.skips = [expand_items(s, state.frames, idx) for s in self.cache.skips]
        if self.cache.audio is not None:  # the key step's audio stream (it depends on the noisy latent)
            state.audio = expand_items(self.cache.audio, state.frames, idx)


class WindowShallowPlan(StagePlan):
    """One window call of a reduced step on the windowed path: the shallow path of ``parent``,
    with the cached feature of each call item regathered at this window's absolute frames from the
    key step's per-frame cache (:class:`CapturePlan` ``for_window``). The key step's windows sat
    elsewhere (the windows shift every step), so each frame gets its window-averaged feature
    computed in other temporal contexts: an approximation that the dense (every step a key step)
    setting never uses."""

    def __init__(self, parent: ShallowPlan, frames: torch.Tensor, length: int):
        self.parent, self.frames, self.length = parent, frames, length

    def active(self, index: int, stage: Stage) -> bool:
        return self.parent.active(index, stage)

    def before(self, index: int, stage: Stage, state: RunState) -> None:
        p = self.parent
        if index != p.u:
            return
        layout = p.layout_of()
        window = (self.frames, self.length)
        if p.feature is not None:
            state.h = p.feature(layout, state.frames, p.rows, window)
        else:
            state.h = gather_frames(p.cache.h, self.length, key_items(p.key_layout, layout), self.frames)
        if p.cache.skips is not None:
            idx = key_items(p.key_layout, layout)
            state.skips = [gather_frames(s, self.length, idx, self.frames) for s in p.cache.skips]


def key_prediction(scheduler, output: torch.Tensor, latents: torch.Tensor, t) -> tuple[torch.Tensor, torch.Tensor]:
    """(x0_hat, eps_hat) of a key step's guided output."""
    return split_prediction(scheduler, output, latents, t)
