"""Batch jobs: the item and result types and the single-process runner.

Shared by the manifest command (:mod:`talkfast.app.batch`, which re-exports these names) and the
Ray runner (:mod:`talkfast.parallel.ray_batch`); this module imports neither, so the two do not
import each other.
"""

from __future__ import annotations

import logging
import math
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TextIO

from ..errors import OutputError, TalkfastError

log = logging.getLogger(__name__)

#: Least seconds between two rewrites of the batch report while items run.
REPORT_EVERY_S = 2.0


@dataclass
class BatchItem:
    line: int  # 1-based line of the manifest (CSV: the data row's line)
    id: str
    image: Path
    audio: Path
    output: Path
    settings: dict[str, Any] = field(default_factory=dict)  # only what the manifest sets


@dataclass
class ItemResult:
    line: int
    id: str
    image: str
    audio: str
    output: str
    status: str = "pending"  # pending | done | skipped | failed
    reason: str = ""
    frames: int | None = None
    seconds: float | None = None
    settings: dict[str, Any] = field(default_factory=dict)


def existing_video(path: Path) -> tuple[bool, str]:
    """(True, what) if ``path`` is an output talkfast finished: our sidecar beside it
    (:func:`~talkfast.io.video.is_talkfast_output`) records its frame count, and the video probes
    with that many frames and with audio; else (False, why). A foreign video (no sidecar) or one
    whose length is not the sidecar's is not done, whatever it holds."""
    import json

    from ..io.video import is_talkfast_output, probe_video

    if not path.is_file():
        return False, "missing"
    sidecar = path.with_suffix(".json")
    if not is_talkfast_output(path):
        return False, "a symbolic link" if path.is_symlink() else f"no talkfast sidecar {sidecar.name} beside it"
    try:
        expected = json.loads(sidecar.read_text(encoding="utf-8")).get("frames")
    except (OSError, UnicodeDecodeError, ValueError) as err:  # changed since is_talkfast_output read it
        return False, f"its sidecar {sidecar.name} is unreadable ({err})"
    if isinstance(expected, bool) or not isinstance(expected, int) or expected < 1:
        return False, f"its sidecar {sidecar.name} records no frame count"
    try:
        info = probe_video(path)
    except TalkfastError as err:
        return False, str(err)
    if info.num_frames != expected or not info.has_audio:
        return False, (f"{info.num_frames} frames where its sidecar {sidecar.name} records {expected}, "
                       f"{'with' if info.has_audio else 'no'} audio")
    return True, f"{info.num_frames} frames, {info.video_duration:.2f} s"


def run_batch(items: list[BatchItem], pipe, defaults: dict[str, Any], *, report_path: Path | None = None,
              manifest: str | os.PathLike[str] | None = None, overwrite: bool = False, quiet: bool = False,
              stream: TextIO | None = None) -> list[ItemResult]:
    """Generate every item with ``pipe`` (loaded once by the caller); never raises for one item's
    failure. ``defaults`` holds the settings an item does not set (keys of :data:`SETTINGS`)."""
    from ..accelerators import build_accelerator
    from ..accelerators.tuned import resolve_for
    from ..io.video import is_talkfast_output, remove_stale_temporaries, write_json_atomic
    from ..pipeline.generate import GenerateOptions

    stream = stream if stream is not None else sys.stdout
    results = [ItemResult(it.line, it.id, str(it.image), str(it.audio), str(it.output),
                          settings={**defaults, **it.settings}) for it in items]
    started = _now()
    warned: set[str] = set()  # a fallback-preset warning is said once per job
    if any((r.settings.get("accel") or "auto") != "off" for r in results):
        resolve_for("auto", pipe)  # a bad tuned-settings file: its error now, before any item runs

    last_write = [-math.inf]

    def save_report(finished: bool, force: bool = False) -> None:
        """Written (and fsynced) whole, so at most every REPORT_EVERY_S seconds while items run
        (after every item the job's time grows with the square of its items), and always at the
        start, on an interrupt and at the end."""
        if report_path is None or not (finished or force or time.monotonic() - last_write[0] >= REPORT_EVERY_S):
            return
        last_write[0] = time.monotonic()
        write_json_atomic(report_path, _report(results, manifest, started, finished))

    save_report(False, force=True)
    for n, (item, res) in enumerate(zip(items, results), start=1):
        t0 = time.perf_counter()
        settings = res.settings
        acc = None
        try:
            removed = remove_stale_temporaries(item.output)
            if removed:
                log.warning("%s: removed %d temporary file(s) left by an interrupted run", item.output, len(removed))
            skip = False
            if item.output.exists() and not overwrite:
                skip, what = existing_video(item.output)
                if skip:
                    res.status, res.reason = "skipped", f"output exists ({what})"
                elif not is_talkfast_output(item.output):  # not ours: neither done nor ours to replace
                    raise OutputError(f"{item.output} exists and was not written by talkfast ({what}); it is not "
                                      "counted as done and is left as it is: choose another output path or pass "
                                      "--overwrite")
                else:
                    log.warning("%s exists but is not a finished video (%s); generating it again", item.output, what)
            if not skip:
                # --accel auto|quality|balanced|fast: the model's tuned setting (talkfast.accelerators.tuned)
                choice = resolve_for(settings.get("accel") or "auto", pipe, settings.get("steps"))
                if choice.warning and choice.warning not in warned:
                    warned.add(choice.warning)
                    log.warning("%s", choice.warning.removeprefix("warning: "))
                opts = GenerateOptions(steps=choice.steps, guidance=settings.get("cfg"),
                                       seed=settings.get("seed"), fps=settings.get("fps"))
                acc = build_accelerator(choice.accel) if choice.accel.method != "off" else None
                result = pipe.generate(item.image, item.audio, item.output, opts, size=settings.get("size"),
                                       accelerator=acc, overwrite=overwrite,
                                       extra_sidecar={"batch": {"manifest": _abs(manifest), "line": item.line, "id": item.id},
                                                      "accel_choice": choice.describe()})
                res.status, res.frames = "done", result.frames
                res.reason = f"{result.frames} frames, {result.clips} clips"
        except KeyboardInterrupt:
            res.reason = "interrupted"
            save_report(False, force=True)
            raise
        except Exception as err:  # one bad item must not stop the job
            res.status = "failed"
            res.reason = str(err) if isinstance(err, (TalkfastError, ValueError)) else f"{type(err).__name__}: {err}"
            log.debug("item %s failed", item.id, exc_info=True)
        finally:
            if acc is not None:
                acc.detach()  # the next item may run without an accelerator
            if res.status != "pending":
                res.seconds = round(time.perf_counter() - t0, 3)
        if not quiet or res.status == "failed":
            print(f"[{n}/{len(items)}] {res.status:<7} {_short(item.output, manifest)}  {res.reason}", file=stream, flush=True)
        save_report(False)
    save_report(True)
    return results


def _abs(manifest) -> str | None:
    return str(Path(manifest).expanduser().resolve()) if manifest is not None else None


def _report(results: list[ItemResult], manifest, started: str, finished: bool) -> dict:
    counts = {k: sum(r.status == k for r in results) for k in ("done", "skipped", "failed", "pending")}
    return {"manifest": _abs(manifest), "started": started,
            "finished": _now() if finished else None, "counts": counts, "items": [asdict(r) for r in results]}


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _short(path: str | Path, manifest) -> str:
    """``path`` relative to the manifest's folder when it lies inside it."""
    if manifest is None:
        return str(path)
    try:
        return str(Path(path).relative_to(Path(_abs(manifest)).parent))
    except ValueError:
        return str(path)
