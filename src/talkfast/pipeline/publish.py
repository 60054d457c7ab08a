"""Decoding and publishing a generation's clips in order, optionally one clip behind the sampler.

On a CPU the VAE decode of clip k needs nothing of clip k+1, and (unless the next clip's motion
frames are re-encoded from decoded pixels) clip k+1's sampling needs nothing of clip k's
pixels. With a core left over by torch's intra-op threads, :class:`ClipPublisher` decodes and
writes clip k on a worker thread (the generation yields it on its own thread after the next
:meth:`~ClipPublisher.submit`, :mod:`.clips`) while the main thread samples clip k+1: the
decode leaves the end-to-end critical path except for the last clip. The frames are computed by
the same calls in the same order as without the worker, so the output is identical; at most one
clip waits in the worker, so memory stays bounded by two clips.
"""

from __future__ import annotations

import time
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Callable

import torch


def flushes_denormals() -> bool:
    """Whether the calling thread flushes denormal floats to zero (``torch.set_flush_denormal``
    sets it per thread, and it changes results: the worker must match the caller)."""
    return bool((torch.tensor([1e-39], dtype=torch.float32) * 1.0).item() == 0.0)


def _compute_like(threads: int, flush: bool) -> None:
    torch.set_num_threads(threads)  # also sizes this thread's OpenMP team
    torch.set_flush_denormal(flush)


class ClipPublisher:
    """``publish(latents, keep, *extra) -> frames`` run in submission order; in the background when
    ``background`` (then :meth:`submit` returns None and a failure of the worker is raised by the
    next :meth:`submit` or by :meth:`wait`; :meth:`close` always stops the worker). ``timings["wait"]`` collects the seconds the caller
    spent waiting for the worker."""

    def __init__(self, publish: Callable[..., torch.Tensor], background: bool, timings: dict):
        self._publish = publish
        self._timings = timings
        self._pool = None
        if background:  # the worker computes as the caller's thread does: thread count, denormal flushing
            self._pool = ThreadPoolExecutor(1, thread_name_prefix="talkfast-decode", initializer=_compute_like,
                                            initargs=(torch.get_num_threads(), flushes_denormals()))
        self._pending: Future | None = None

    def submit(self, latents: torch.Tensor, keep: int, *extra) -> torch.Tensor | None:
        if self._pool is None:
            return self._publish(latents, keep, *extra)
        self.wait()  # one clip in flight at most
        self._pending = self._pool.submit(self._publish, latents, keep, *extra)
        return None

    def wait(self) -> None:
        """Until the clip in the worker is published (raising its failure)."""
        pending, self._pending = self._pending, None
        if pending is not None:
            t0 = time.perf_counter()
            try:
                pending.result()
            finally:
                self._timings["wait"] = self._timings.get("wait", 0.0) + time.perf_counter() - t0

    def close(self) -> None:
        """Stop the worker after the clip it holds (its failure, if any, is dropped: for the error
        path, where the generation's own exception is the one to report)."""
        if self._pool is not None:
            pool, self._pool = self._pool, None
            pool.shutdown(wait=True)
            self._pending = None
