"""How many CPU threads torch uses, and how its idle threads wait.

Two things make a CPU run collapse when another program is busy on the same machine:

* **Too many threads.** torch (through OpenMP) starts one thread per CPU the process may run on,
  but a container's CPU quota (cgroup ``cpu.max`` / ``cpu.cfs_quota_us``) can allow fewer; the
  surplus threads are throttled in the middle of every parallel region. :func:`available_cores`
  is the smaller of the CPU affinity mask and the quota (whole CPUs, at least 1).
* **Spinning.** Between parallel regions OpenMP's worker threads busy-wait for the next one. On an
  idle machine that saves a wake-up; with a competing process they burn the CPU time the thread
  doing the work needs. :data:`WAIT_ENVIRONMENT` makes them sleep instead (GNU libgomp, which this
  torch build uses, reads ``OMP_WAIT_POLICY``; Intel's OpenMP reads ``KMP_BLOCKTIME``). OpenMP reads
  these once, when the library loads, so :func:`prepare_environment` must run before ``import
  torch``; the ``talkfast`` command does that first thing, and a variable the user set wins.

``--threads N`` (generate, batch, bench, ...) overrides the count; without it an
``OMP_NUM_THREADS`` the user exported is kept, else :func:`available_cores` is used.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from collections.abc import MutableMapping
from pathlib import Path

#: Idle OpenMP threads sleep instead of spinning (set only where the user has not set them).
WAIT_ENVIRONMENT = {"OMP_WAIT_POLICY": "PASSIVE", "KMP_BLOCKTIME": "0"}
MAX_THREADS = 1024

CGROUP_ROOT = Path("/sys/fs/cgroup")
PROC_CGROUP = Path("/proc/self/cgroup")


def affinity_cores() -> int:
    """CPUs this process may run on (its affinity mask; ``os.cpu_count()`` where there is none)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def _read(path: Path) -> str | None:
    try:
        return path.read_text(encoding="ascii", errors="replace").strip()
    except OSError:
        return None


def _ancestors(root: Path, inner: str) -> list[Path]:
    """``root/inner`` and each folder above it up to ``root`` (the limits of a parent group apply too)."""
    folder = root / inner.strip("/") if inner.strip("/") else root
    out = []
    while True:
        out.append(folder)
        if folder == root or root not in folder.parents:
            break
        folder = folder.parent
    return out


def cgroup_cpu_limit(proc_cgroup: Path = PROC_CGROUP, root: Path = CGROUP_ROOT) -> float | None:
    """The CPU quota of this process's cgroup in CPUs (e.g. ``1.5``), or None when there is none.

    cgroup v2: ``cpu.max`` (``"QUOTA PERIOD"`` or ``"max PERIOD"``) of the process's group and of
    every group above it; v1: ``cpu.cfs_quota_us`` / ``cpu.cfs_period_us`` (a quota of -1 is none)
    in the ``cpu`` hierarchy. The smallest limit found wins; unreadable files count as no limit.
    """
    text = _read(proc_cgroup)
    if text is None:
        return None
    limits: list[float] = []
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, inner = parts
        if controllers == "":  # v2 (unified)
            for folder in _ancestors(root, inner):
                value = _read(folder / "cpu.max")
                if not value:
                    continue
                fields = value.split()
                try:
                    if len(fields) == 2 and fields[0] != "max" and float(fields[1]) > 0:
                        limits.append(float(fields[0]) / float(fields[1]))
                except ValueError:
                    continue
        elif "cpu" in controllers.split(","):  # v1
            mounts = [root / name for name in ("cpu", "cpu,cpuacct", "cpuacct,cpu")]
            for mount in (m for m in mounts if m.is_dir()):
                for folder in _ancestors(mount, inner):
                    quota, period = _read(folder / "cpu.cfs_quota_us"), _read(folder / "cpu.cfs_period_us")
                    try:
                        if quota and period and float(quota) > 0 and float(period) > 0:
                            limits.append(float(quota) / float(period))
                    except ValueError:
                        continue
    return min(limits) if limits else None


def available_cores(affinity: int | None = None, quota: float | None | str = "read") -> int:
    """Whole CPUs this process can use: its affinity mask, capped by its cgroup quota (at least 1)."""
    cores = affinity_cores() if affinity is None else affinity
    limit = cgroup_cpu_limit() if quota == "read" else quota
    if limit is not None:
        cores = min(cores, max(1, math.floor(limit + 1e-9)))
    return max(1, int(cores))


def prepare_environment(environ: MutableMapping[str, str] | None = None) -> dict[str, str]:
    """Put :data:`WAIT_ENVIRONMENT` into ``environ`` (default ``os.environ``) where the user has not
    set those variables; returns what was set. Call it before torch is imported: OpenMP reads them
    once, when it loads (and child processes inherit them)."""
    env = os.environ if environ is None else environ
    added = {k: v for k, v in WAIT_ENVIRONMENT.items() if k not in env}
    env.update(added)
    return added


def exported_threads(environ: MutableMapping[str, str] | None = None) -> int | None:
    """A valid ``OMP_NUM_THREADS`` the user exported, else None."""
    env = os.environ if environ is None else environ
    value = env.get("OMP_NUM_THREADS", "").split(",")[0].strip()
    return int(value) if value.isdigit() and 1 <= int(value) <= MAX_THREADS else None


def default_threads(environ: MutableMapping[str, str] | None = None) -> int:
    """``OMP_NUM_THREADS`` when the user exported a valid count, else :func:`available_cores`."""
    exported = exported_threads(environ)
    return exported if exported is not None else available_cores()


def leave_core_for_decode(threads: int | None, device, environ: MutableMapping[str, str] | None = None,
                          cores: int | None = None) -> int | None:
    """``generate``'s default on a CPU: torch keeps one core fewer than the process may use, so that
    each clip is decoded and written on that core while the next clip samples
    (:mod:`talkfast.pipeline.publish`). Measured on the 2-core VM with the embedded model
    (README, Measured): 36.9 s with one torch thread and the decode beside it vs 49.6 s with two
    and the decode in line (2026-12-03); 19-25 s vs 21-28 s, three runs each (2026-12-05). Only when the user chose no count (``--threads``, ``OMP_NUM_THREADS``), on
    a CPU device, with at least 2 cores; returns the count set, or None when nothing changed."""
    import torch

    if threads is not None or exported_threads(environ) is not None or getattr(device, "type", device) != "cpu":
        return None
    n = (cores if cores is not None else available_cores()) - 1
    if n < 1:
        return None
    torch.set_num_threads(n)
    return n


def thread_count(text: str) -> int:
    """``--threads`` value: an integer from 1 to :data:`MAX_THREADS` (argparse type)."""
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number of threads, got {text!r}") from None
    if not 1 <= n <= MAX_THREADS:
        raise argparse.ArgumentTypeError(f"must be between 1 and {MAX_THREADS}, got {n}")
    return n


def add_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--threads", type=thread_count, default=None, metavar="N",
                        help="CPU threads for torch in this process (default: OMP_NUM_THREADS if set, else the "
                             "CPUs this process may use: affinity mask and cgroup quota; generate on a CPU keeps "
                             "one of them for decoding each clip while the next one samples)")


def apply(threads: int | None = None) -> int:
    """Set torch's intra-op thread count (``threads`` or :func:`default_threads`); returns it."""
    import torch

    n = threads if threads is not None else default_threads()
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    return n


def torch_loaded() -> bool:
    return "torch" in sys.modules
