"""Quality and resource metrics for the benchmarks.

Videos are float tensors shaped (T, 3, H, W) with values in [0, 1] (what
:meth:`TalkingHeadPipeline.generate` hands to ``on_clip``).

- :func:`psnr` / :func:`ssim`: torchmetrics' PSNR and SSIM (data range 1), computed **per frame and
  averaged**. PSNR of identical frames is infinite; every per-frame value is capped at
  :data:`PSNR_CAP` dB (100 dB) before averaging, so a table never shows ``inf`` and an identical
  video reads exactly ``PSNR_CAP``.
- :func:`l1`: mean absolute error.
- :class:`PeakMemory`: the peak memory of a block of code.

  * CUDA: ``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats`` — bytes held by
    live tensors at the worst moment (weights included; the caching allocator's reserve and the
    CUDA context are not). ``growth`` is that peak minus what was allocated when the block began.
  * CPU: the process's resident set size (RSS), so it includes everything the process holds
    (weights, Python, libraries). Before the block the garbage collector runs and glibc's
    ``malloc_trim(0)`` hands freed heap pages back to the OS (otherwise memory freed by an earlier
    run would be reused silently and hide the growth). The peak is the kernel's own high-water
    mark (``VmHWM``, reset through ``/proc/self/clear_refs``) where Linux allows it, else the
    maximum of ``psutil`` samples taken every 2 ms by a thread. ``growth`` is the peak minus the
    RSS at the start: the working memory of the block (activations, caches, decoded frames).
    It is indicative: the allocator may keep some memory from earlier blocks.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import os
import threading
import time
from dataclasses import dataclass

import torch

PSNR_CAP = 100.0  # dB; the value reported for identical frames

MB = 1024.0 * 1024.0


def _check_pair(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    if a.ndim == 3:
        a = a[None]
    if b.ndim == 3:
        b = b[None]
    if a.ndim != 4 or a.shape[1] != 3:
        raise ValueError(f"expected a video (T, 3, H, W), got shape {tuple(a.shape)}")
    if a.shape != b.shape:
        raise ValueError(f"videos differ in shape: {tuple(a.shape)} vs {tuple(b.shape)}")
    return a.detach().to("cpu", torch.float32), b.detach().to("cpu", torch.float32)


def psnr_per_frame(a: torch.Tensor, b: torch.Tensor, cap: float = PSNR_CAP) -> torch.Tensor:
    """PSNR (dB, data range 1) of every frame, each capped at ``cap``."""
    from torchmetrics.functional.image import peak_signal_noise_ratio

    a, b = _check_pair(a, b)
    v = peak_signal_noise_ratio(a, b, data_range=1.0, reduction="none", dim=(1, 2, 3))
    v = torch.nan_to_num(v.reshape(-1), nan=cap, posinf=cap)
    return v.clamp(max=cap)


def psnr(a: torch.Tensor, b: torch.Tensor, cap: float = PSNR_CAP) -> float:
    """Mean over frames of the per-frame PSNR (dB), each frame capped at ``cap`` (identical -> cap)."""
    return float(psnr_per_frame(a, b, cap).mean())


def _ssim_kernel(h: int, w: int) -> int:
    k = min(11, h, w)
    return k if k % 2 else k - 1


def ssim_per_frame(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """SSIM (Gaussian window 11, sigma 1.5, data range 1) of every frame."""
    from torchmetrics.functional.image import structural_similarity_index_measure

    a, b = _check_pair(a, b)
    k = _ssim_kernel(a.shape[-2], a.shape[-1])
    if k < 3:
        raise ValueError(f"frames of {a.shape[-2]}x{a.shape[-1]} are too small for SSIM")
    out = []
    for i in range(0, a.shape[0], 16):  # bounded memory for long videos
        out.append(structural_similarity_index_measure(a[i : i + 16], b[i : i + 16], data_range=1.0,
                                                       kernel_size=k, reduction="none").reshape(-1))
    return torch.cat(out)


def ssim(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean over frames of the per-frame SSIM."""
    return float(ssim_per_frame(a, b).mean())


def l1(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean absolute error over every pixel of every frame."""
    a, b = _check_pair(a, b)
    return float((a - b).abs().mean())


def align(video: torch.Tensor, reference: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Both videos cut to their common number of frames (ground truth may run a frame longer or
    shorter than the generated video); spatial sizes must match."""
    n = min(video.shape[0], reference.shape[0])
    if n == 0:
        raise ValueError("cannot compare an empty video")
    return video[:n], reference[:n]


def clip_boundary_ratio(frames: torch.Tensor, clip_frames: int) -> dict:
    """Continuity across generated clips: the mean absolute frame-to-frame change (pixels in
    [0, 1]) between the last frame of a clip and the first of the next (``boundary``), the same
    inside clips (``within``), and their ratio (about 1 when clips join as smoothly as frames
    follow each other inside a clip). ``frames`` (N, C, H, W)."""
    if frames.ndim != 4 or clip_frames < 1:
        raise ValueError("expected frames (N, C, H, W) and clip_frames >= 1")
    if frames.shape[0] <= clip_frames:
        raise ValueError(f"{frames.shape[0]} frames make no clip boundary at {clip_frames} frames per clip")
    change = (frames[1:].float() - frames[:-1].float()).abs().flatten(1).mean(1)  # change[i]: frame i -> i + 1
    at_boundary = (torch.arange(change.shape[0]) + 1) % clip_frames == 0
    boundary, within = float(change[at_boundary].mean()), float(change[~at_boundary].mean())
    return {"boundary": boundary, "within": within, "ratio": boundary / max(within, 1e-12)}


# ---------------------------------------------------------------------------------------------
# memory
# ---------------------------------------------------------------------------------------------

_LIBC = None


def _malloc_trim() -> bool:
    """Give freed heap memory back to the OS (glibc only). True when it ran."""
    global _LIBC
    try:
        if _LIBC is None:
            name = ctypes.util.find_library("c") or "libc.so.6"
            _LIBC = ctypes.CDLL(name)
        _LIBC.malloc_trim(0)
        return True
    except (OSError, AttributeError):
        _LIBC = False  # not glibc: never try again
        return False


def _reset_hwm() -> bool:
    """Reset the kernel's peak-RSS counter of this process (Linux >= 4.0)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _read_status_kb(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return None


def current_rss() -> int:
    """Resident set size of this process in bytes (/proc on Linux, else psutil)."""
    kb = _read_status_kb("VmRSS")
    if kb is not None:
        return kb * 1024
    import psutil

    return int(psutil.Process(os.getpid()).memory_info().rss)


@dataclass
class MemoryReading:
    kind: str  # "cuda-allocated" | "cpu-rss-hwm" | "cpu-rss-sampled"
    peak_mb: float  # absolute peak (CUDA: allocated tensors; CPU: process RSS)
    growth_mb: float  # peak minus the level when the block started

    def as_dict(self) -> dict:
        return {"kind": self.kind, "peak_mb": self.peak_mb, "growth_mb": self.growth_mb}


class PeakMemory:
    """``with PeakMemory(device) as pm: ...`` then ``pm.reading`` (a :class:`MemoryReading`).
    See the module docstring for exactly what is measured on each device."""

    def __init__(self, device: torch.device | str = "cpu", sample_every: float = 0.002):
        self.device = torch.device(device)
        self.sample_every = sample_every
        self.reading: MemoryReading | None = None
        self._start = 0
        self._peak = 0
        self._hwm = False
        self._stop: threading.Event | None = None
        self._thread: threading.Thread | None = None

    def __enter__(self) -> "PeakMemory":
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._start = torch.cuda.memory_allocated(self.device)
            return self
        _malloc_trim()
        self._start = current_rss()
        self._peak = self._start
        self._hwm = _reset_hwm() and _read_status_kb("VmHWM") is not None
        if not self._hwm:
            self._stop = threading.Event()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _sample(self) -> None:
        import psutil

        proc = psutil.Process(os.getpid())
        while not self._stop.is_set():
            try:
                self._peak = max(self._peak, proc.memory_info().rss)
            except psutil.Error:
                return
            time.sleep(self.sample_every)

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            peak = torch.cuda.max_memory_allocated(self.device)
            self.reading = MemoryReading("cuda-allocated", peak / MB, (peak - self._start) / MB)
            return
        if self._hwm:
            kb = _read_status_kb("VmHWM")
            peak = max(self._start, kb * 1024 if kb is not None else 0, current_rss())
            kind = "cpu-rss-hwm"
        else:
            self._stop.set()
            self._thread.join()
            peak = max(self._peak, current_rss())
            kind = "cpu-rss-sampled"
        self.reading = MemoryReading(kind, peak / MB, (peak - self._start) / MB)


def describe_memory(kind: str) -> str:
    return {
        "cuda-allocated": "peak CUDA memory held by tensors (torch.cuda.max_memory_allocated, weights included); "
                          "growth = peak minus the memory allocated when the run started",
        "cpu-rss-hwm": "peak resident set size of the process (kernel high-water mark VmHWM, reset before each run); "
                       "growth = peak minus the RSS when the run started (after gc + malloc_trim)",
        "cpu-rss-sampled": "peak resident set size of the process (psutil, sampled every 2 ms); "
                           "growth = peak minus the RSS when the run started (after gc + malloc_trim)",
    }.get(kind, kind)
