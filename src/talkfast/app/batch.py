"""``talkfast batch MANIFEST``: many portrait + speech pairs with one model load.

The manifest is JSON Lines (``.jsonl``/``.ndjson``, one object per line) or CSV (``.csv``, a header
row). Columns:

* ``image``, ``audio``, ``output`` (required): relative paths resolve against the manifest's folder;
  ``output`` must end in ``.mp4`` and appear only once.
* ``steps``, ``cfg``, ``seed``, ``accel`` (auto, off, quality, balanced, fast), ``fps``, ``size``
  (optional, per item): an empty CSV cell or a JSON ``null`` takes the command line's value.
* ``id`` (optional): a label for the report (default: the manifest line number).

The whole manifest is checked before the model is loaded: a missing or unknown column, an invalid
JSON line or value, or two items writing the same output is an error naming the line, and nothing
is generated. Then every item runs in turn:

* an output talkfast finished (its sidecar beside it, and the video probes with audio and the
  frame count the sidecar records) is **skipped**, so a killed job resumes by running the same
  command again (``--overwrite`` regenerates everything); an existing output that is not (a foreign
  video without our sidecar, or one of another length) is never counted as done;
* hidden temporaries that a killed run left next to an output are deleted before it is generated;
  the video itself is published with an atomic rename (:class:`~talkfast.io.video.VideoWriter`),
  so an output path holds either nothing or a finished video;
* a failing item is recorded with its reason and the job goes on.

Outputs stay inside the manifest's folder (``--allow-outside`` lifts that); no two items may write
the same video or ``.json`` sidecar (compared ignoring case), and no output may be the report, the
manifest or an input. An existing file that talkfast did not write (no talkfast sidecar beside it)
is never replaced without ``--overwrite``: such an item fails with that reason. The report follows
the same rule (:func:`check_report`): never the manifest, an input or a checkpoint file, and an
existing file that is not a talkfast batch report only with ``--overwrite``.

The end is a table of done / skipped / failed items and a JSON report (``<manifest>.report.json``
beside the manifest, or ``--report PATH``), rewritten at most every ``REPORT_EVERY_S`` seconds
(:mod:`talkfast.app.jobs`) while items run and at the end, so that a killed job leaves a recent one.
The exit code is 1 when an item failed, else 0. Run one job per set of outputs at a time: a running
writer's temporaries are locked and left alone, but two jobs would still both generate each output.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

from ..errors import InputError
from .jobs import (BatchItem, ItemResult, _abs, _now, _report, _short,  # noqa: F401  (re-exported)
                   existing_video, run_batch)

log = logging.getLogger(__name__)

REQUIRED = ("image", "audio", "output")
#: Per-item settings (manifest column -> type); the command line's flags of the same names are their defaults.
SETTINGS: dict[str, type] = {"steps": int, "cfg": float, "seed": int, "accel": str, "fps": int, "size": int}
COLUMNS = (*REQUIRED, *SETTINGS, "id")
JSONL_SUFFIXES = (".jsonl", ".ndjson")


# ---------------------------------------------------------------------------------------------
# the manifest
# ---------------------------------------------------------------------------------------------


def read_manifest(path: str | os.PathLike[str], *, allow_outside: bool = False,
                  report: str | os.PathLike[str] | None = None) -> list[BatchItem]:
    """Parse and check a manifest; raises :class:`InputError` (naming the line) on any problem.

    Besides each value: every output lies inside the manifest's folder (unless ``allow_outside``);
    no two items write the same video or sidecar, compared case-insensitively (``c.MP4`` and
    ``c.mp4`` share ``c.json``); no output or sidecar is the report (``report``, default
    :func:`default_report_path`), the manifest or any item's input."""
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
    _check_outputs(manifest, base, items, allow_outside,
                   Path(report).expanduser().resolve() if report is not None else default_report_path(manifest))
    return items


def _check_outputs(manifest: Path, base: Path, items: list[BatchItem], allow_outside: bool, report: Path) -> None:
    """The write policy of a batch job (see :func:`read_manifest`); file systems may ignore case,
    so paths are compared case-folded."""
    def key(p: Path) -> str:
        return os.path.normcase(str(p)).casefold()

    reserved = {key(manifest.resolve()): "the manifest", key(report): "the batch report"}
    for item in items:
        for what in ("image", "audio"):
            reserved.setdefault(key(getattr(item, what)), f"the {what} of line {item.line}")
    written: dict[str, int] = {}
    for item in items:
        where = f"Manifest {manifest} line {item.line}"
        if not allow_outside and not item.output.is_relative_to(base):
            raise InputError(f"{where}: output {item.output} is outside the manifest's folder {base}; "
                             "pass --allow-outside to write there.")
        for path in (item.output, item.output.with_suffix(".json")):
            k = key(path)
            if k in written:
                raise InputError(f"Manifest {manifest}: lines {written[k]} and {item.line} both write {path} "
                                 "(paths are compared ignoring case, sidecars included); every item needs its own output.")
            if k in reserved:
                raise InputError(f"{where}: {path} would replace {reserved[k]}; choose another output.")
            written[k] = item.line


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
        raw = base / Path(value.strip()).expanduser()
        # inputs: the file itself; the output: its folder resolved, a link at the name not followed
        paths[key] = raw.resolve() if key != "output" else Path(os.path.normpath(raw.parent.resolve() / raw.name))
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
    from ..pipeline.generate import MAX_GUIDANCE, MAX_STEPS

    checks = {  # the ranges of GenerateOptions.resolved; NaN and infinity fail every one
        "steps": (lambda v: 1 <= v <= MAX_STEPS, f"between 1 and {MAX_STEPS}"),
        "cfg": (lambda v: 1.0 <= v <= MAX_GUIDANCE, f"a number from 1.0 (1.0 disables guidance) to {MAX_GUIDANCE:g}"),
        "fps": (lambda v: 1 <= v <= 120, "between 1 and 120"),
        "size": (lambda v: v >= 1, "a positive number of pixels"),
        "seed": (lambda v: 0 <= v < 2**63, "between 0 and 2**63 - 1"),
    }
    if key == "accel":
        from ..accelerators.tuned import NAMES

        if out not in NAMES:
            raise InputError(f"{where}: unknown accel preset {out!r}; choose from {', '.join(NAMES)}.")
    elif not checks[key][0](out):
        raise InputError(f"{where}: {key!r} must be {checks[key][1]}, got {value!r}.")
    return out


# ---------------------------------------------------------------------------------------------
# running
# ---------------------------------------------------------------------------------------------


def default_report_path(manifest: str | os.PathLike[str]) -> Path:
    m = Path(manifest).expanduser().resolve()
    return m.with_name(f"{m.stem}.report.json")


#: What marks a batch report as talkfast's (:func:`talkfast.app.jobs._report`'s keys).
REPORT_KEYS = ("manifest", "counts", "items")


def check_report(report: Path, manifest, items: list[BatchItem], *, checkpoint=None, overwrite: bool = False) -> Path:
    """The write rule (:func:`talkfast.io.write_rule.check_writes`) for the report: never the
    manifest, an item's image or audio, or a file of the ``checkpoint`` folder (even with
    ``overwrite``); an existing file that is not a talkfast batch report (a JSON object with
    :data:`REPORT_KEYS`) only with ``overwrite``. Its folder is created."""
    from ..io.write_rule import check_writes, json_with_keys

    inputs = [manifest, checkpoint, *(p for item in items for p in (item.image, item.audio))]
    return check_writes([report], inputs=inputs, overwrite=overwrite, ours=json_with_keys(*REPORT_KEYS),
                        mark="not a talkfast batch report")[0]


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
    p.add_argument("--overwrite", action="store_true",
                   help="regenerate outputs that already exist, replacing files talkfast did not write too")
    p.add_argument("--allow-outside", action="store_true", help="let outputs lie outside the manifest's folder")
    g = p.add_argument_group("defaults for items that do not set them")
    g.add_argument("--steps", type=int, default=None, help="denoising steps (default: the model's)")
    g.add_argument("--cfg", type=float, default=None, help="classifier-free guidance scale (1 disables)")
    g.add_argument("--seed", type=int, default=None, help="noise seed (default: the model's: 42; 420 for EchoMimic)")
    g.add_argument("--accel", default="auto",
                   help="auto (= balanced), quality, balanced, fast (the model's tuned setting, else the preset), "
                        "or off (default: auto)")
    g.add_argument("--fps", type=int, default=None, help="frame rate (default: the model's: 25; EchoMimic 24, MEMO 30)")
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

    report = Path(args.report).expanduser().resolve() if args.report else default_report_path(args.manifest)
    # every manifest error comes before the model load
    items = read_manifest(args.manifest, allow_outside=args.allow_outside, report=report)
    where = "command line"
    defaults = {k: _setting(where, k, kind, getattr(args, k)) for k, kind in SETTINGS.items()
                if getattr(args, k) is not None}
    check_report(report, args.manifest, items, checkpoint=args.checkpoint, overwrite=args.overwrite)
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
        for item in items:  # the model bounds the size: every item is checked before any runs
            try:
                pipe.check_size(item.settings.get("size", defaults.get("size")))
            except ValueError as err:
                where = f"Manifest {args.manifest} line {item.line}" if "size" in item.settings else "command line"
                named = "'size'" if "size" in item.settings else "--size"
                raise InputError(f"{where}: {err}".replace("--size", named)) from None
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
