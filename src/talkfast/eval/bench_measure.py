"""Measurement helpers shared by the pipeline and speed benchmarks: FLOP counting once per call
signature, denormal flushing, device synchronisation and the environment record."""

from __future__ import annotations

import contextlib
import platform
from typing import Any, Callable

import torch

from .. import __version__
from ..accelerators.base import Accelerator

Log = Callable[[str], None]


def _quiet(_msg: str) -> None:
    pass



class FlopMemo:
    """``with FlopMemo(acc): <run the loop with acc>``: while active, the denoising loop counts
    FLOPs only for the first model call of each signature ``(full, number of steps in the
    call)``; the other calls' records get that count. It wraps the accelerator instance's
    ``stage_plan`` and ``record`` (restored on exit), so the accelerator itself is what the
    pipeline and the loop see."""

    _WRAPPED = ("stage_plan", "record")

    def __init__(self, acc: Accelerator):
        self.acc = acc
        self.memo: dict[tuple[bool, int], int] = {}
        self.counted_calls = 0
        self._saved: dict[str, Any] = {}

    @staticmethod
    def signature(action) -> tuple[bool, int]:
        return bool(action.full), len(action.steps)

    def __enter__(self) -> "FlopMemo":
        acc = self.acc
        self._saved = {k: acc.__dict__[k] for k in self._WRAPPED if k in acc.__dict__}
        self._saved_count = acc.count_flops
        plan_fn, record_fn = acc.stage_plan, acc.record

        def stage_plan(action):
            acc.count_flops = self.signature(action) not in self.memo
            return plan_fn(action)

        def record(action, seconds: float, items: int, flops: int | None) -> None:
            sig = self.signature(action)
            if flops is None:
                flops = self.memo.get(sig)
            else:
                self.memo[sig] = flops
                self.counted_calls += 1
            record_fn(action, seconds, items, flops)

        acc.stage_plan, acc.record = stage_plan, record
        return self

    def __exit__(self, *exc) -> None:
        acc = self.acc
        for k in self._WRAPPED:
            if k in self._saved:
                setattr(acc, k, self._saved[k])
            else:
                acc.__dict__.pop(k, None)
        acc.count_flops = self._saved_count


@contextlib.contextmanager
def flushed_denormals(enabled: bool):
    """While active (and ``enabled``), CPU float math flushes denormal numbers to zero
    (``torch.set_flush_denormal``). On CPU a model call that meets denormals can run 100x slower
    (seen with random weights: 17 s instead of 0.07 s per tiny-model call on some clips), which
    would make the timings measure the inputs' arithmetic accidents rather than the methods.
    Every method runs under the same setting, so the comparisons stay fair. Restored to the
    default (off) on exit."""
    on = bool(enabled) and torch.set_flush_denormal(True)
    try:
        yield on
    finally:
        if on:
            torch.set_flush_denormal(False)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)



def _environment(device: torch.device) -> dict:
    env = {"talkfast": __version__, "torch": torch.__version__, "python": platform.python_version(),
           "threads": torch.get_num_threads(), "cpu": platform.processor() or platform.machine()}
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
    return env

