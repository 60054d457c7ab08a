"""``talkfast batch MANIFEST --ray ADDRESS|local``: the items of a manifest over Ray actors.

Each actor loads the model once (CPU, or ``num_gpus`` GPUs) and runs one item at a time through
the single-process batch code (:func:`talkfast.app.jobs.run_batch` on a one-item list), so the
behaviour per item is that of ``talkfast batch``: an output that is already a finished video is
skipped, a killed run's temporaries are removed first, the video is published by an atomic rename.

The driver (this process) keeps a queue: every idle actor gets the next item. When an item fails,
or its actor dies (killed, OOM, node lost), the item goes back to the queue until it has been tried
``1 + retries`` times; a dead actor is replaced by a fresh one. Because an item's output is only
ever renamed into place by the attempt that finished it, and the next attempt first removes the
temporaries a dead one left, an output is produced exactly once and no partial file survives. The
report (``<manifest>.report.json``) is rewritten after every item, as in the single-process job.
"""

from __future__ import annotations

import collections
import io
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable, TextIO

from ..app.jobs import BatchItem, ItemResult, _now, _report, _short, run_batch

log = logging.getLogger(__name__)


def _require_ray():
    try:
        import ray
    except ImportError:
        raise ImportError("--ray needs Ray: pip install 'talkfast[ray]'") from None
    return ray


class BatchWorker:
    """The actor: one loaded pipeline; ``run`` generates one manifest item."""

    def __init__(self, model: dict):
        from ..pipeline.loader import load_pipeline

        self.pipe = load_pipeline(model.get("checkpoint"), random_weights=model.get("random_weights", False),
                                  preset=model.get("preset", "small"), device=model.get("device", "auto"),
                                  dtype=model.get("dtype", "auto"))

    def pid(self) -> int:
        return os.getpid()

    def run(self, item: BatchItem, defaults: dict, manifest: str | None, overwrite: bool) -> ItemResult:
        return run_batch([item], self.pipe, defaults, manifest=manifest, overwrite=overwrite, quiet=True,
                         stream=io.StringIO())[0]


def _first_line(err: BaseException) -> str:
    lines = [x.strip() for x in str(err).splitlines() if x.strip()]
    return lines[0][:200] if lines else ""


def connect(address: str, num_cpus: int | None = None):
    """``local``: start a Ray instance in this process (no dashboard); else join ``address``
    (``auto`` or ``HOST:PORT`` of ``ray start --head``). Already connected: keep it."""
    ray = _require_ray()
    if not ray.is_initialized():
        if address == "local":
            ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False)
        else:
            ray.init(address=address, log_to_driver=False)
    return ray


def run_ray_batch(items: list[BatchItem], defaults: dict[str, Any], model: dict, *, address: str = "local",
                  workers: int | None = None, gpus_per_worker: float = 0.0, retries: int = 2,
                  report_path: Path | None = None, manifest: str | os.PathLike[str] | None = None,
                  overwrite: bool = False, quiet: bool = False, stream: TextIO | None = None,
                  on_submit: Callable[[BatchItem, Any, int], None] | None = None) -> list[ItemResult]:
    """Run every item on Ray actors; returns one :class:`ItemResult` per item (manifest order).

    ``model``: load_pipeline's arguments (checkpoint, random_weights, preset, device, dtype).
    ``workers``: number of actors (default: the cluster's GPUs / ``gpus_per_worker`` when GPUs are
    asked for, else its CPUs, at most one per item). ``on_submit(item, actor, attempt)`` is called
    after an item is handed to an actor (tests use it to kill that actor).
    """
    from ..io.video import remove_stale_temporaries, write_json_atomic

    if retries < 0:
        raise ValueError("--retries must be >= 0")
    stream = stream if stream is not None else sys.stdout
    ray = connect(address)
    if workers is None:
        res = ray.cluster_resources()
        workers = int(res.get("GPU", 0) // gpus_per_worker) if gpus_per_worker else int(res.get("CPU", 1))
    workers = max(1, min(workers, len(items)))
    remote = ray.remote(num_cpus=1, num_gpus=gpus_per_worker, max_restarts=0)(BatchWorker)
    manifest_s = str(Path(manifest).expanduser().resolve()) if manifest is not None else None

    results = [ItemResult(it.line, it.id, str(it.image), str(it.audio), str(it.output),
                          settings={**defaults, **it.settings}) for it in items]
    attempts = [0] * len(items)
    started = _now()

    def save_report(finished: bool) -> None:
        if report_path is not None:
            write_json_atomic(report_path, _report(results, manifest, started, finished))

    save_report(False)
    queue = collections.deque(range(len(items)))
    idle = [remote.remote(model) for _ in range(workers)]
    running: dict[Any, tuple[int, Any, float]] = {}  # object ref -> (item index, actor, start)
    done_count = 0
    try:
        while queue or running:
            while queue and idle:
                i = queue.popleft()
                actor = idle.pop()
                attempts[i] += 1
                ref = actor.run.remote(items[i], defaults, manifest_s, overwrite)
                running[ref] = (i, actor, time.perf_counter())
                if on_submit is not None:
                    on_submit(items[i], actor, attempts[i])
            ready, _ = ray.wait(list(running), num_returns=1)
            ref = ready[0]
            i, actor, t0 = running.pop(ref)
            try:
                res: ItemResult = ray.get(ref)
                idle.append(actor)
            except ray.exceptions.RayActorError as err:  # the actor died: replace it
                res = ItemResult(**{**results[i].__dict__, "status": "failed",
                                    "reason": f"worker died ({type(err).__name__}: {_first_line(err)})"})
                ray.kill(actor, no_restart=True)
                idle.append(remote.remote(model))
            except Exception as err:  # the task raised outside run_batch's own handling
                res = ItemResult(**{**results[i].__dict__, "status": "failed", "reason": f"{type(err).__name__}: {err}"})
                idle.append(actor)
            if res.status == "failed" and attempts[i] <= retries:
                log.warning("item %s failed on attempt %d (%s); retrying", items[i].id, attempts[i], res.reason)
                if not quiet:
                    print(f"[retry {attempts[i]}/{retries}] {_short(items[i].output, manifest)}  {res.reason}",
                          file=stream, flush=True)
                queue.append(i)
                continue
            res.settings = results[i].settings
            res.seconds = round(time.perf_counter() - t0, 3) if res.seconds is None else res.seconds
            if attempts[i] > 1:
                res.reason = f"{res.reason} (attempt {attempts[i]} of {1 + retries})"
            results[i] = res
            done_count += 1
            if not quiet or res.status == "failed":
                print(f"[{done_count}/{len(items)}] {res.status:<7} {_short(items[i].output, manifest)}  {res.reason}",
                      file=stream, flush=True)
            save_report(False)
    finally:
        for actor in idle + [a for _, a, _ in running.values()]:
            ray.kill(actor, no_restart=True)
    # a dead attempt's encoder may have outlived it: its temporaries go now that nothing writes
    for it in items:
        remove_stale_temporaries(it.output)
    save_report(True)
    return results
