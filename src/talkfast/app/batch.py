"""``talkfast batch MANIFEST``: many portrait + speech pairs with one model load.

The manifest is JSON Lines (``.jsonl``/``.ndjson``, one object per line) or CSV (``.csv``, a header
row). Columns:

* ``image``, ``audio``, ``output`` (required): relative paths resolve against the manifest's folder;
  ``output`` must end in ``.mp4`` and appear only once.
* ``steps``, ``cfg``, ``seed``, ``accel`` (preset: off, quality, balanced, fast), ``fps``, ``size``
  (optional, per item): an empty CSV cell or a JSON ``null`` takes the command line's value.
* ``id`` (optional): a label for the report (default: the manifest line number).

The whole manifest is checked before the model is loaded: a missing or unknown column, an invalid
JSON line or value, or two items writing the same output is an error naming the line, and nothing
is generated. Then every item runs in turn:

* an output that already exists and probes as a video with frames and audio is **skipped**, so a
  killed job resumes by running the same command again (``--overwrite`` regenerates everything);
* hidden temporaries that a killed run left next to an output are deleted before it is generated;
  the video itself is published with an atomic rename (:class:`~talkfast.io.video.VideoWriter`),
  so an output path holds either nothing or a finished video;
* a failing item is recorded with its reason and the job goes on.

The end is a table of done / skipped / failed items and a JSON report (``<manifest>.report.json``
beside the manifest, or ``--report PATH``), rewritten after every item so that a killed job leaves
an up-to-date one. The exit code is 1 when an item failed, else 0. Run one job per set of
outputs at a time: two jobs writing the same outputs would delete each other's temporaries.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TextIO

from ..errors import InputError, OutputError, TalkfastError

log = logging.getLogger(__name__)

REQUIRED = ("image", "audio", "output")
#: Per-item settings (manifest column -> type); the command line's flags of the same names are their defaults.
SETTINGS: dict[str, type] = {"steps": int, "cfg": float, "seed": int, "accel": str, "fps": int, "size": int}
COLUMNS = (*REQUIRED, *SETTINGS, "id")
JSONL_SUFFIXES = (".jsonl", ".ndjson")


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


# ---------------------------------------------------------------------------------------------
# the manifest
# ---------------------------------------------------------------------------------------------


def read_manifest(path: str | os.PathLike[str]) -> list[BatchItem]:
    """Parse and check a manifest; raises :class:`InputError` (naming the line) on any problem."""
    manifest = Path(path).expanduser()
    if not manifest.is_file():
        raise InputError(f"Manifest not found: {manifest}" if not manifest.exists() else f"Manifest {manifest} is not a file.")
    suffix = manifest.suffix.lower()
    try:
        text = manifest.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as err:
        raise InputError(f"Manifest {manifest} is not UTF-8 text ({err.reason} at byte {err.start}).") from err
    except OSError as err:
        raise InputError(f"Manifest {manifest} cannot be read: {err.strerror or err}.") from err
    if suffix in JSONL_SUFFIXES:
        rows = _jsonl_rows(manifest, text)
    elif suffix == ".csv":
        rows = _csv_rows(manifest, text)
    else:
        raise InputError(f"Manifest {manifest}: unknown format {suffix or '(no extension)'!r}; "
                         "use .jsonl (one JSON object per line) or .csv (with a header row).")
    if not rows:
        raise InputError(f"Manifest {manifest} has no items.")
    base = manifest.resolve().parent
    items = [_item(manifest, base, line, row) for line, row in rows]
    seen: dict[Path, int] = {}
    for item in items:
        if item.output in seen:
            raise InputError(f"Manifest {manifest}: lines {seen[item.output]} and {item.line} both write "
                             f"{item.output}; every item needs its own output.")
        seen[item.output] = item.line
    return items


def _jsonl_rows(manifest: Path, text: str) -> list[tuple[int, dict]]:
    rows = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise InputError(f"Manifest {manifest} line {number}: not valid JSON ({err.msg} at column {err.colno}).") from err
        if not isinstance(row, dict):
            raise InputError(f"Manifest {manifest} line {number}: expected a JSON object "
                             f'{{"image": ..., "audio": ..., "output": ...}}, got {type(row).__name__}.')
        _check_columns(manifest, number, row.keys())
        rows.append((number, row))
    return rows


def _csv_rows(manifest: Path, text: str) -> list[tuple[int, dict]]:
    reader = csv.reader(text.splitlines())
    try:
        header = next(reader)
    except StopIteration:
        return []
    except csv.Error as err:
        raise InputError(f"Manifest {manifest} line 1: {err}.") from err
    header = [h.strip() for h in header]
    if len(set(header)) != len(header):
        dup = sorted({h for h in header if header.count(h) > 1})
        raise InputError(f"Manifest {manifest} line 1: column(s) {', '.join(dup)} appear more than once.")
    _check_columns(manifest, 1, [h for h in header if h])
    rows = []
    try:
        for cells in reader:
            number = reader.line_num
            if not any(c.strip() for c in cells):
                continue
            if len(cells) > len(header):
                raise InputError(f"Manifest {manifest} line {number}: {len(cells)} values for {len(header)} columns.")
            rows.append((number, {h: c.strip() for h, c in zip(header, cells) if h}))
    except csv.Error as err:
        raise InputError(f"Manifest {manifest} line {reader.line_num}: {err}.") from err
    return rows


def _check_columns(manifest: Path, number: int, keys) -> None:
    keys = list(keys)
    unknown = [k for k in keys if k not in COLUMNS]
    if unknown:
        raise InputError(f"Manifest {manifest} line {number}: unknown column(s) {', '.join(map(repr, unknown))}; "
                         f"known: {', '.join(COLUMNS)}.")
    missing = [k for k in REQUIRED if k not in keys]
    if missing:
        raise InputError(f"Manifest {manifest} line {number}: missing column(s) {', '.join(missing)} "
                         f"(required: {', '.join(REQUIRED)}).")


def _item(manifest: Path, base: Path, line: int, row: dict) -> BatchItem:
    where = f"Manifest {manifest} line {line}"
    paths = {}
    for key in REQUIRED:
        value = row.get(key)
        if not isinstance(value, str) or not value.strip():
            raise InputError(f"{where}: {key!r} must be a non-empty path, got {value!r}.")
        paths[key] = (base / Path(value.strip()).expanduser()).resolve()
    if paths["output"].suffix.lower() != ".mp4":
        raise InputError(f"{where}: output {row['output']!r} must end in .mp4.")
    settings = {}
    for key, kind in SETTINGS.items():
        value = row.get(key)
        if value is None or (isinstance(value, str) and not value.strip()):
            continue
        settings[key] = _setting(where, key, kind, value)
    label = row.get("id")
    return BatchItem(line, str(label) if label not in (None, "") else str(line), paths["image"], paths["audio"],
                     paths["output"], settings)


def _setting(where: str, key: str, kind: type, value: Any) -> Any:
    """A per-item setting converted and range-checked like the command line's flag."""
    bad = InputError(f"{where}: {key!r} must be {'an integer' if kind is int else 'a number' if kind is float else 'text'}, "
                     f"got {value!r}.")
    if isinstance(value, bool):
        raise bad
    if kind is str:
        if not isinstance(value, str):
            raise bad
        out: Any = value.strip()
    elif kind is int:
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        try:
            out = int(value.strip()) if isinstance(value, str) else value
        except ValueError:
            raise bad from None
        if not isinstance(out, int):
            raise bad
    else:
        try:
            out = float(value.strip()) if isinstance(value, str) else value
        except ValueError:
            raise bad from None
        if not isinstance(out, (int, float)):
            raise bad
        out = float(out)
    checks = {
        "steps": (lambda v: v >= 1, "at least 1"),
        "cfg": (lambda v: v >= 1.0, "at least 1.0 (1.0 disables guidance)"),
        "fps": (lambda v: 1 <= v <= 120, "between 1 and 120"),
        "size": (lambda v: v >= 1, "a positive number of pixels"),
        "seed": (lambda v: 0 <= v < 2**63, "between 0 and 2**63 - 1"),
    }
    if key == "accel":
        from ..accelerators import PRESETS

        if out not in PRESETS:
            raise InputError(f"{where}: unknown accel preset {out!r}; choose from {', '.join(PRESETS)}.")
    elif not checks[key][0](out):
        raise InputError(f"{where}: {key!r} must be {checks[key][1]}, got {value!r}.")
    return out


# ---------------------------------------------------------------------------------------------
# running
# ---------------------------------------------------------------------------------------------


def default_report_path(manifest: str | os.PathLike[str]) -> Path:
    m = Path(manifest).expanduser().resolve()
    return m.with_name(f"{m.stem}.report.json")


def existing_video(path: Path) -> tuple[bool, str]:
    """(True, what) if ``path`` is a finished video (it probes, has frames and audio), else (False, why)."""
    from ..io.video import probe_video

    if not path.is_file():
        return False, "missing"
    try:
        info = probe_video(path)
    except TalkfastError as err:
        return False, str(err)
    if info.num_frames < 1 or not info.has_audio:
        return False, f"{info.num_frames} frames, {'with' if info.has_audio else 'no'} audio"
    return True, f"{info.num_frames} frames, {info.video_duration:.2f} s"


def run_batch(items: list[BatchItem], pipe, defaults: dict[str, Any], *, report_path: Path | None = None,
              manifest: str | os.PathLike[str] | None = None, overwrite: bool = False, quiet: bool = False,
              stream: TextIO | None = None) -> list[ItemResult]:
    """Generate every item with ``pipe`` (loaded once by the caller); never raises for one item's
    failure. ``defaults`` holds the settings an item does not set (keys of :data:`SETTINGS`)."""
    from ..accelerators import build_accelerator
    from ..io.video import remove_stale_temporaries, write_json_atomic
    from ..pipeline.generate import GenerateOptions

    stream = stream if stream is not None else sys.stdout
    results = [ItemResult(it.line, it.id, str(it.image), str(it.audio), str(it.output),
                          settings={**defaults, **it.settings}) for it in items]
    started = _now()

    def save_report(finished: bool) -> None:
        if report_path is not None:
            write_json_atomic(report_path, _report(results, manifest, started, finished))

    save_report(False)
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
                else:
                    log.warning("%s exists but is not a finished video (%s); generating it again", item.output, what)
            if not skip:
                opts = GenerateOptions(steps=settings.get("steps"), guidance=settings.get("cfg"),
                                       seed=settings.get("seed", 42), fps=settings.get("fps", 25))
                preset = settings.get("accel") or "off"
                acc = build_accelerator(preset) if preset != "off" else None
                result = pipe.generate(item.image, item.audio, item.output, opts, size=settings.get("size"),
                                       accelerator=acc,
                                       extra_sidecar={"batch": {"manifest": _abs(manifest), "line": item.line, "id": item.id}})
                res.status, res.frames = "done", result.frames
                res.reason = f"{result.frames} frames, {result.clips} clips"
        except KeyboardInterrupt:
            res.reason = "interrupted"
            save_report(False)
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


def format_table(results: list[ItemResult], manifest=None) -> str:
    rows = [("line", "id", "status", "output", "frames", "seconds", "reason")]
    for r in results:
        rows.append((str(r.line), r.id, r.status, _short(r.output, manifest), "" if r.frames is None else str(r.frames),
                     "" if r.seconds is None else f"{r.seconds:.1f}", r.reason))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)) + "  " + row[-1] for row in rows]
    counts = {k: sum(r.status == k for r in results) for k in ("done", "skipped", "failed")}
    lines.append(f"{counts['done']} done, {counts['skipped']} skipped, {counts['failed']} failed")
    return "\n".join(line.rstrip() for line in lines)


# ---------------------------------------------------------------------------------------------
# command line
# ---------------------------------------------------------------------------------------------


def add_parser(sub) -> None:
    p = sub.add_parser("batch", help="generate every item of a JSONL/CSV manifest with one model load (resumable)",
                       description="Columns: image, audio, output (required); steps, cfg, seed, accel, fps, size, "
                                   "id (optional). Relative paths resolve against the manifest's folder. Outputs "
                                   "that already exist are skipped, so re-running a killed job resumes it.")
    p.add_argument("manifest", help="a .jsonl (one JSON object per line) or .csv (header row) file")
    p.add_argument("--report", default=None, help="JSON report path (default: <manifest>.report.json beside it)")
    p.add_argument("--overwrite", action="store_true", help="regenerate outputs that already exist")
    g = p.add_argument_group("defaults for items that do not set them")
    g.add_argument("--steps", type=int, default=None, help="denoising steps (default: the model's)")
    g.add_argument("--cfg", type=float, default=None, help="classifier-free guidance scale (1 disables)")
    g.add_argument("--seed", type=int, default=42)
    g.add_argument("--accel", default="off", help="accelerator preset: off, quality, balanced, fast")
    g.add_argument("--fps", type=int, default=25)
    g.add_argument("--size", type=int, default=None, help="output side in pixels (default: the model's)")
    m = p.add_argument_group("model (as for generate)")
    m.add_argument("--checkpoint", default=None, help="a Hallo pretrained_models folder or a talkfast model folder")
    m.add_argument("--random-weights", action="store_true", help="random weights (a smoke test; the videos are noise)")
    m.add_argument("--model", default="small", help="preset for --random-weights: small, tiny")
    m.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    m.add_argument("--dtype", default="auto", help="auto (fp16 on CUDA, fp32 on CPU), fp32, fp16, bf16")
    p.add_argument("-q", "--quiet", action="store_true", help="print only failures and the final table")
    r = p.add_argument_group("Ray (talkfast.parallel.ray_batch; pip install 'talkfast[ray]')")
    r.add_argument("--ray", default=None, metavar="ADDRESS|local",
                   help="run the items on Ray actors, one loaded model each: 'local', 'auto' or HOST:PORT")
    r.add_argument("--workers", type=int, default=None, help="actors (default: GPUs / --gpus-per-worker, else CPUs)")
    r.add_argument("--gpus-per-worker", type=float, default=0.0, help="GPUs per actor (0: CPU actors)")
    r.add_argument("--retries", type=int, default=2, help="tries of a failed item (or of a dead worker's) after the first")


def run(args) -> int:
    from ..pipeline.loader import load_pipeline

    items = read_manifest(args.manifest)  # every manifest error comes before the model load
    where = "command line"
    defaults = {k: _setting(where, k, kind, getattr(args, k)) for k, kind in SETTINGS.items()
                if getattr(args, k) is not None}
    report = Path(args.report).expanduser().resolve() if args.report else default_report_path(args.manifest)
    try:
        report.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise OutputError(f"Cannot create the folder of the report {report}: {err.strerror or err}.") from err
    if getattr(args, "ray", None):
        from ..parallel.ray_batch import run_ray_batch

        model = {"checkpoint": args.checkpoint, "random_weights": args.random_weights, "preset": args.model,
                 "device": args.device, "dtype": args.dtype}

        def execute():
            return run_ray_batch(items, defaults, model, address=args.ray, workers=args.workers,
                                 gpus_per_worker=args.gpus_per_worker, retries=args.retries, report_path=report,
                                 manifest=args.manifest, overwrite=args.overwrite, quiet=args.quiet)
    else:
        pipe = load_pipeline(args.checkpoint, random_weights=args.random_weights, preset=args.model,
                             device=args.device, dtype=args.dtype)
        if not args.quiet:
            print(f"{len(items)} items, model {pipe.cfg.name} ({pipe.source}) on {pipe.device}", flush=True)

        def execute():
            return run_batch(items, pipe, defaults, report_path=report, manifest=args.manifest,
                             overwrite=args.overwrite, quiet=args.quiet)
    try:
        results = execute()
    except KeyboardInterrupt:
        print(f"interrupted; finished items are kept and listed in {report}; "
              "run the same command again to resume", file=sys.stderr)
        return 130
    print(format_table(results, args.manifest))
    print(f"report: {report}")
    return 1 if any(r.status == "failed" for r in results) else 0
