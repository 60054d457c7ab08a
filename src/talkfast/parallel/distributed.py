"""One generation split over the processes of a ``torchrun`` job (``talkfast generate --parallel``).

Every rank runs the same pipeline and the same denoising loop (``sampling.loop.denoise``) on the
same seed, so all ranks hold identical latents at every step. Only the *model calls* are split, by
wrapping the clip's predictor (``TalkingHeadPipeline.generate(wrap_predictor=...)``):

- ``steps``: a reduced call (LightningCP's batched shallow path, FasterDiffusion's batched decoder,
  DeepCache's single shallow step) is cut along its batch-of-steps dimension into one contiguous
  shard per rank; the guided predictions are all-gathered. A full call (key step, or every step
  without an accelerator) runs once, on rank 0, which broadcasts its output and the cache it
  produced (the captured deep feature, FasterDiffusion's skips, DFA's attention outputs).
- ``cfg`` (2 ranks): rank h runs CFG half h (0 unconditional, 1 conditional) of every call, key
  steps included; each rank keeps the cache of its own half, so nothing but the raw half outputs
  is exchanged (and guided on every rank).
- ``steps+cfg`` (an even number of ranks): rank r runs half ``r % 2`` of shard ``r // 2``; the key
  step of a half runs on rank 0 or 1 and its cache is broadcast inside that half's ranks.

Ranks are synchronous: they call the same collectives in the same order, so the loop itself needs
no change. Backend: gloo on CPU, nccl on CUDA (device ``cuda:LOCAL_RANK``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from ..accelerators.base import CapturePlan, ShallowPlan
from ..accelerators.dfa import DFAProcessor
from ..pipeline.generate import half_layout

MODES = ("steps", "cfg", "steps+cfg")


class ParallelError(ValueError):
    """--parallel used where it cannot work (no torchrun, wrong world size, no CFG to split)."""


def shard_sizes(n: int, parts: int) -> list[int]:
    """Contiguous shard sizes of ``n`` items over ``parts`` ranks (the first ones get one more)."""
    return [n // parts + (1 if i < n % parts else 0) for i in range(parts)]


def layout_of(mode: str, world: int) -> tuple[int, int]:
    """(cfg ranks c, step shards s) with c * s == world, or a ParallelError."""
    if mode not in MODES:
        raise ParallelError(f"--parallel must be one of {', '.join(MODES)}, not {mode!r}")
    if world < 2:
        raise ParallelError("--parallel needs at least 2 processes (torchrun --nproc_per_node=N with N >= 2)")
    if mode == "steps":
        return 1, world
    if mode == "cfg":
        if world != 2:
            raise ParallelError(f"--parallel cfg runs the 2 CFG halves on 2 processes, got {world}; use steps+cfg")
        return 2, 1
    if world % 2:
        raise ParallelError(f"--parallel steps+cfg needs an even number of processes, got {world}")
    return 2, world // 2


class StepSplitter:
    """Wraps a pipeline's predictors so that their calls are split over the ranks of the default
    process group (see the module docstring)."""

    def __init__(self, mode: str, pipe):
        self.mode = mode
        self.net, self.dtype, self.device = pipe.net, pipe.dtype, pipe.device
        self.guided = True  # whether the wrapped predictor uses CFG (set by wrap)
        self.rank, self.world = dist.get_rank(), dist.get_world_size()
        self.c, self.s = layout_of(self.mode, self.world)
        self.half, self.shard = self.rank % self.c, self.rank // self.c
        # ranks of the same CFG half share a key step's cache; new_group is collective: every rank
        # creates every group, in the same order
        self.half_group = None
        if self.s > 1:
            groups = [dist.new_group([r for r in range(self.world) if r % self.c == h]) for h in range(self.c)]
            self.half_group = groups[self.half]

    # ------------------------------------------------------------------ wrapping
    def wrap(self, predict):
        guidance = getattr(predict, "guidance", None)
        if self.c == 2 and (guidance is None or getattr(predict, "model_output", None) is None):
            raise ParallelError(f"--parallel {self.mode} splits the CFG halves: it needs guidance (--cfg > 1)")
        self.guided = guidance is not None

        def parallel_predict(latents: torch.Tensor, t: torch.Tensor, plan) -> torch.Tensor:
            if isinstance(plan, ShallowPlan):
                return self._reduced(predict, latents, t, plan)
            if plan is None or isinstance(plan, CapturePlan):
                return self._full(predict, latents, t, plan)
            return predict(latents, t, plan)  # a plan this module does not know: every rank runs it

        parallel_predict.guidance = guidance
        return parallel_predict

    def _local(self, predict, latents, t, plan) -> torch.Tensor:
        """This rank's part: the guided output (steps) or the raw output of its CFG half."""
        if self.c == 1:
            return predict(latents, t, plan)
        return predict.model_output(latents, t, plan, (self.half,))

    def _guide(self, predict, halves: list[torch.Tensor]) -> torch.Tensor:
        if self.c == 1:
            return halves[0]
        v_u, v_c = halves
        return v_u + predict.guidance * (v_c - v_u)

    def _empty(self, like: torch.Tensor, n: int) -> torch.Tensor:
        return torch.zeros((n, *like.shape[1:]), dtype=self.dtype, device=like.device)

    # ------------------------------------------------------------------ reduced calls
    def _reduced(self, predict, latents, t, plan) -> torch.Tensor:
        n = latents.shape[0]
        sizes = shard_sizes(n, self.s)
        start, mine, most = sum(sizes[: self.shard]), sizes[self.shard], max(sizes)
        buf = self._empty(latents, most)
        if mine:
            plan.rows = (start, start + mine)  # which steps of the call this rank runs (forecast weights)
            try:
                buf[:mine] = self._local(predict, latents[start : start + mine], t[start : start + mine], plan)
            finally:
                plan.rows = None
        parts = [torch.empty_like(buf) for _ in range(self.world)]
        dist.all_gather(parts, buf)
        halves = [torch.cat([parts[k * self.c + h][: sizes[k]] for k in range(self.s) if sizes[k]])
                  for h in range(self.c)]
        return self._guide(predict, halves)

    # ------------------------------------------------------------------ full calls
    def _full(self, predict, latents, t, plan) -> torch.Tensor:
        owner = self.shard == 0  # ranks 0 (.. c-1) run the full call of their half
        # contiguous: the model's output is a permuted view, and collectives send raw memory
        out = self._local(predict, latents, t, plan).contiguous() if owner else self._empty(latents, latents.shape[0])
        if self.s > 1 and isinstance(plan, CapturePlan):
            self._share_cache(plan, latents.shape[0])
        halves = []
        for h in range(self.c):
            buf = out if self.rank == h else self._empty(latents, latents.shape[0])
            dist.broadcast(buf, src=h)
            halves.append(buf)
        return self._guide(predict, halves)

    def _dfa_processors(self) -> list[DFAProcessor]:
        out = []
        for m in self.net.denoising_unet.modules():
            proc = getattr(m, "processor", None)
            if isinstance(proc, DFAProcessor):
                out.append(proc)
        return out

    def _share_cache(self, plan: CapturePlan, n: int) -> None:
        """Broadcast a key step's cache from this half's owner to the other ranks of the half:
        the captured hidden state, the skips (FasterDiffusion), the audio stream (MEMO) and DFA's
        recorded outputs."""
        src = self.half  # global rank of the owner
        procs = self._dfa_processors()
        owner = self.shard == 0
        if owner:
            audio = [] if plan.audio is None else [plan.audio]
            tensors = [x.contiguous() for x in (plan.h, *(plan.skips or []), *audio, *[p.cache for p in procs])]
            meta = [None if plan.skips is None else len(plan.skips), len(audio),
                    [(tuple(x.shape), x.dtype) for x in tensors]]
        else:
            meta = [None, None, None]
        dist.broadcast_object_list(meta, src=src, group=self.half_group)
        skips, audio_count, shapes = meta
        if not owner:
            tensors = [torch.empty(shape, dtype=dt, device=self.device) for shape, dt in shapes]
        for x in tensors:
            dist.broadcast(x, src=src, group=self.half_group)
        if owner:
            return
        k = (skips or 0) + audio_count
        plan.h, plan.skips = tensors[0], (None if skips is None else list(tensors[1 : 1 + (skips or 0)]))
        plan.audio = tensors[k] if audio_count else None
        for proc, cache in zip(procs, tensors[1 + k :]):
            proc.cache = cache
        # what the owner's forward left in the reference state: the key step's item layout (read
        # by the accelerator's after_step as the layout its cache is indexed by)
        halves = (self.half,) if self.c == 2 else (0, 1) if self.guided else (1,)
        self.net.ref_state.layout = half_layout(n, halves, self.guided)


@dataclass
class ParallelRun:
    """A torchrun job's process group and this rank's part in it (``from_env``)."""

    mode: str
    rank: int
    world: int
    local_rank: int
    device: str

    @classmethod
    def from_env(cls, mode: str, device: str = "auto") -> "ParallelRun":
        """Join the process group torchrun describes in the environment (RANK, WORLD_SIZE,
        LOCAL_RANK, MASTER_ADDR, MASTER_PORT); gloo on CPU, nccl on CUDA (``cuda:LOCAL_RANK``)."""
        if mode not in MODES:
            raise ParallelError(f"--parallel must be one of {', '.join(MODES)}, not {mode!r}")
        if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
            raise ParallelError("--parallel needs a torchrun launch, e.g. "
                                "torchrun --nproc_per_node=2 -m talkfast generate ... --parallel " + mode)
        rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        local = int(os.environ.get("LOCAL_RANK", rank))
        layout_of(mode, world)  # fail before joining
        cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
        if cuda:
            torch.cuda.set_device(local)
            device = f"cuda:{local}"
        elif device == "auto":
            device = "cpu"
        if not dist.is_initialized():
            dist.init_process_group("nccl" if cuda else "gloo")
        return cls(mode, rank, world, local, device)

    def generate_kwargs(self, pipe) -> dict:
        """What ``pipe.generate`` gets on every rank: the predictor wrapper and a sidecar entry."""
        return {"wrap_predictor": StepSplitter(self.mode, pipe).wrap,
                "extra_sidecar": {"parallel": {"mode": self.mode, "world_size": self.world, "backend": dist.get_backend()}}}

    def close(self) -> None:
        if dist.is_initialized():
            dist.destroy_process_group()
