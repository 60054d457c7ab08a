"""``talkfast tune``: measure settings on calibration samples, pick the fastest per quality budget.

For one model and fixed samples the tuner measures the model's default-step, unaccelerated
baseline, then every setting of a search space (:mod:`talkfast.eval.tune_space`): end-to-end
and model seconds, PSNR/SSIM of the frames against the baseline's, lip sync and, when the
samples have them, PSNR/SSIM/L1 against ground truth. Per named budget
(:data:`talkfast.accelerators.tuned.BUDGETS`: PSNR vs the baseline at least the floor, lip sync
at least the baseline's minus 0.02) the fastest setting that meets it wins (:func:`pick`); plain
DDIM at fewer steps competes like any other setting. :func:`write_tuned` stores the winners in
the model folder's ``model.json`` under ``tuned``, which ``--accel quality|balanced|fast|auto``
then reads (:mod:`talkfast.accelerators.tuned`).

Measurements go into a JSON cache (one entry per setting, keyed by a hash of the setting, the
samples, the model and the device), written after every setting, so an interrupted search
resumes where it stopped. The baseline runs again on every start (its frames are the quality
reference) but keeps its cached timings, so speedups compare measurements of one session where
they can.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import platform
import sys
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Sequence

import torch

from .. import __version__
from ..accelerators import AccelConfig
from ..accelerators.tuned import (
    BUDGETS,
    LIPSYNC_TOLERANCE,
    LIPSYNC_WORST_DROP,
    MAX_STEPS,
    PSNR_MARGIN_DB,
    SAMPLER_TEXT,
    TIME_TIE,
    accel_record,
    describe_setting,
)
from ..errors import OutputError
from ..io.records import (
    Anything,
    Int,
    List,
    MapOf,
    Null,
    Num,
    Obj,
    RecordError,
    Str,
    check,
    parse_json,
)
from ..io.video import write_json_atomic
from ..io.write_rule import (
    check_writes,
    json_with_keys,
    text_starting_with,
    write_text_atomic,
)
from ..paths import display_source
from ..sampling.scheduler import SAMPLERS
from .bench import BenchCase, BenchMethod, Runner, flushed_denormals, frontier_flags
from .tune_space import Setting

CACHE_NAME = "tune_cache.json"
CACHE_VERSION = 2  # 2: entries with a digest (talkfast tune sets a version 1 cache aside)
FIELDS = ("seconds", "model_seconds", "psnr_base", "ssim_base", "psnr_gt", "ssim_gt", "l1_gt", "lipsync")


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt")
_HASHES: dict[tuple, str] = {}  # (path, size, mtime_ns, inode) -> sha256, for this process


def file_sha256(path: str | Path) -> str:
    """The sha256 of a file's bytes, computed once per process for a file whose size, modification
    time and inode have not changed."""
    path = Path(path)
    st = path.stat()
    ident = (str(path.resolve()), st.st_size, st.st_mtime_ns, st.st_ino)
    if ident not in _HASHES:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        _HASHES[ident] = h.hexdigest()
    return _HASHES[ident]


def model_signature(pipe) -> dict:
    """What identifies the model: its name, folder, variant and a hash of its weights (every
    weights file under the folder: ``net.safetensors`` and the VAE's of a talkfast folder, all of
    another project's checkpoint), so that cached measurements of other weights are not taken for
    this model's."""
    source = str(getattr(pipe, "source", ""))
    sig = {"model": pipe.cfg.name, "source": source, "variant": getattr(pipe, "variant", None)}
    folder = Path(source) if source and not source.startswith("random:") else None
    if folder is not None and folder.is_dir():
        files = sorted(p for p in folder.rglob("*") if p.suffix in WEIGHT_SUFFIXES and p.is_file())
        h = hashlib.sha256()
        for p in files:
            h.update(f"{p.relative_to(folder).as_posix()}\0{file_sha256(p)}\0".encode())
        sig["weights_sha256"] = h.hexdigest()
    return sig


def samples_signature(run: Runner) -> dict:
    """What identifies the samples and the generation options they run with."""
    cases = []
    for c in run.cases:
        _, audio = run.loaded[c.name]
        cases.append([c.name, len(audio.samples), int(audio.sample_rate)])
    o = run.opts
    return {"cases": cases, "seed": o.seed, "guidance": o.guidance, "fps": o.fps, "size": run.size,
            "motion_source": o.motion_source}


_SCORE = Null(Num(-1.0, 1.0))
_DB = Null(Num(-1000.0, 1000.0))
_LIST = List(Null(Num(-1000.0, 1000.0)), max_len=100_000)
# One measured setting as :func:`_entry` writes it, and the digest that ties it to what it measured
CACHE_ENTRY = Obj({
    "name": Str(max_len=200), "steps": Int(1, MAX_STEPS), "accel": Anything(), "full_steps": Int(0),
    "stage_seconds": MapOf(Null(Num(0.0)), max_len=1000), "cases": Int(1), "date": Str(max_len=100),
    "case_lipsync": _LIST, "case_psnr": _LIST,
    "seconds": Null(Num(0.0, above=True)), "model_seconds": Null(Num(0.0, above=True)),
    "psnr_base": _DB, "ssim_base": _SCORE, "psnr_gt": _DB, "ssim_gt": _SCORE, "l1_gt": Null(Num(0.0)),
    "lipsync": _SCORE, "digest": Str(max_len=200), "sampler": Null(Str(SAMPLERS)),
}, required=("name", "steps", "accel", "seconds", "model_seconds", "psnr_base", "digest"))
CACHE_FILE = Obj({"version": Int(), "entries": MapOf(Anything(), keys=Str(max_len=200))},
                 required=("version", "entries"))  # each entry then checked against CACHE_ENTRY


def fingerprint(context) -> str:
    """What a cached measurement is tied to: a hash of the run's ``context`` (the model and its
    weights' hash, the samples and options, device, dtype, threads, repeats) and this talkfast's
    version."""
    blob = json.dumps([__version__, *context], sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def _digest(key: str, entry: dict, fp: str) -> str:
    body = {k: v for k, v in entry.items() if k != "digest"}
    blob = json.dumps([key, body], sort_keys=True, allow_nan=False)
    return hmac.new(fp.encode(), blob.encode(), hashlib.sha256).hexdigest()


class TuneCache:
    """The measured settings, a JSON file rewritten (atomically) after every setting.

    Nothing in it is trusted as it stands. On opening, the file must fit :data:`CACHE_FILE` (this
    version, every entry typed and in range, numbers finite); each entry is also tied to what it
    measured: its key hashes the setting with the run's context, and its ``digest`` is an HMAC of
    the key and the entry's content keyed by :func:`fingerprint` (model weights' hash, samples,
    options, device, talkfast version), checked by :meth:`get` along with the setting the entry
    says it measured. This guards against accidental and naive edits (a changed number, an entry
    copied from another model's cache), not against a determined forger, who can recompute the
    digest from the same inputs. A file that fails any check is set aside (renamed to
    ``tune_cache.json.untrusted-<time>``, never deleted) with a warning; its entries that did fail
    are measured again, the others kept."""

    def __init__(self, path: str | Path, warn: Callable[[str], None] | None = None):
        self.path = Path(path)
        self.warn = warn or (lambda m: print(f"warning: {m}", file=sys.stderr, flush=True))
        self.entries: dict[str, dict] = {}
        if not self.path.exists():
            return
        try:
            data = parse_json(self.path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError) as err:
            self._set_aside(f"it cannot be read ({err})")
            return
        if isinstance(data, dict) and data.get("version") != CACHE_VERSION:
            self._set_aside(f"it is not a version {CACHE_VERSION} cache (from another talkfast)")
            return
        try:
            check(data, CACHE_FILE)
        except RecordError as err:
            self._set_aside(f"{err.field or 'its content'} {err.problem}")
            return
        bad = []
        for key, entry in data["entries"].items():
            try:
                check(entry, CACHE_ENTRY, f"entries.{key}")
            except RecordError as err:
                bad.append(str(err))
                continue
            try:
                accel_record(entry["accel"], f"entries.{key}.accel")
            except RecordError as err:
                bad.append(str(err))
                continue
            self.entries[key] = entry
        if bad:
            self._set_aside(f"{len(bad)} entr{'y does' if len(bad) == 1 else 'ies do'} not fit the schema "
                            f"({bad[0]}{'; ...' if len(bad) > 1 else ''})")

    def _set_aside(self, why: str) -> None:
        stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S")
        target = self.path.with_name(f"{self.path.name}.untrusted-{stamp}")
        n = 1
        while target.exists():
            n += 1
            target = self.path.with_name(f"{self.path.name}.untrusted-{stamp}-{n}")
        try:
            self.path.rename(target)
        except FileNotFoundError:
            return
        except OSError as err:
            raise OutputError(f"the tune cache {self.path} is not trusted ({why}) and cannot be set aside: "
                              f"{err.strerror or err}") from None
        self.warn(f"the tune cache {self.path} is not trusted: {why}; set aside as {target.name}, and what it "
                  "held is measured again")

    def get(self, key: str, fp: str | None = None, setting: Setting | None = None) -> dict | None:
        """The entry under ``key`` if its digest matches ``fp`` (:func:`fingerprint`) and it
        measured ``setting``; an entry that fails either is dropped (the file set aside) and None
        is returned, so the setting is measured again."""
        entry = self.entries.get(key)
        if entry is None or fp is None:
            return entry
        why = None
        if not hmac.compare_digest(str(entry.get("digest", "")), _digest(key, entry, fp)):
            why = (f"the entry {key} ({entry.get('name')}) does not match its digest (edited, or from another "
                   "model, samples or talkfast)")
        elif setting is not None and (entry["steps"] != setting.steps
                                      or AccelConfig.from_dict(entry["accel"]) != setting.accel):
            why = f"the entry {key} ({entry.get('name')}) is not the setting {setting.name} its key names"
        if why is None:
            return {k: v for k, v in entry.items() if k != "digest"}
        del self.entries[key]
        self._set_aside(why)
        return None

    def put(self, key: str, entry: dict, fp: str | None = None) -> None:
        entry = dict(entry)
        if fp is not None:
            entry["digest"] = _digest(key, entry, fp)
        self.entries[key] = entry
        self.path.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(self.path, {"version": CACHE_VERSION, "entries": self.entries})


def _entry(setting: Setting, mr) -> dict:
    out = {"name": setting.name, "steps": setting.steps, "accel": setting.accel.describe(),
           **({"sampler": setting.sampler} if setting.sampler is not None else {}),
           "full_steps": sum(c.full_steps for c in mr.cases), "stage_seconds": mr.stage_seconds,
           "cases": len(mr.cases), "date": _now(),
           "case_lipsync": [c.lipsync for c in mr.cases], "case_psnr": [c.psnr_base for c in mr.cases]}
    for k in FIELDS:
        v = getattr(mr, k)
        out[k] = None if v is None or (isinstance(v, float) and v != v) else v
    return out


def measure_setting(run: Runner, setting: Setting, *, warm: bool = True, repeats: int = 1) -> dict:
    """One setting on the runner's cases: an untimed first clip of the first case (warm-up, when
    ``warm``), then one timed generation per case, compared with the baseline's frames."""
    method = BenchMethod(setting.name, None if setting.plain else setting.accel, setting.steps, setting.sampler)
    if warm:
        acc = method.build()
        try:
            run.generate(acc, run.cases[0], run.options(method), first_clip_only=True)
        finally:
            acc.detach()
    return _entry(setting, run.measure(method, count_flops=False, warm=False, repeats=repeats))


@dataclass
class TuneResult:
    baseline: dict
    rows: list[dict]  # every measured setting, with speedup / model_speedup / frontier / meets
    picks: dict[str, dict | None]  # budget -> the chosen row (None: nothing met it)
    meta: dict = field(default_factory=dict)


def _relate(baseline: dict, rows: list[dict]) -> None:
    for r in [baseline, *rows]:
        r["speedup"] = baseline["seconds"] / r["seconds"] if r.get("seconds") else None
        r["model_speedup"] = baseline["model_seconds"] / r["model_seconds"] if r.get("model_seconds") else None
    everything = [baseline, *rows]
    for r, flag in zip(everything, frontier_flags([(r["speedup"], r.get("psnr_base")) for r in everything])):
        r["frontier"] = flag


def meets(row: dict, baseline: dict, floor: float, tolerance: float = LIPSYNC_TOLERANCE, *,
          margin: float = PSNR_MARGIN_DB, worst: float | None = LIPSYNC_WORST_DROP) -> bool:
    """PSNR vs the baseline at least ``floor + margin``; mean lip sync at least the baseline's
    minus ``tolerance``; and (``worst`` not None, both rows with per-sample lip sync) no sample's
    lip sync more than ``worst`` below that sample's baseline. Lip sync is not checked when the
    samples have no lip-sync metric."""
    if row.get("psnr_base") is None or row["psnr_base"] < floor + margin:
        return False
    if baseline.get("lipsync") is None:
        return True
    if row.get("lipsync") is None or row["lipsync"] < baseline["lipsync"] - tolerance:
        return False
    mine, theirs = row.get("case_lipsync"), baseline.get("case_lipsync")
    if worst is not None and mine and theirs and len(mine) == len(theirs):
        for a, b in zip(mine, theirs):
            if b is not None and (a is None or a < b - worst):
                return False
    return True


def pick(baseline: dict, rows: Sequence[dict], budgets: dict[str, float] = BUDGETS,
         tolerance: float = LIPSYNC_TOLERANCE, *, margin: float = PSNR_MARGIN_DB,
         worst: float | None = LIPSYNC_WORST_DROP, tie: float = TIME_TIE) -> dict[str, dict | None]:
    """Per budget, among the baseline and ``rows`` that meet it (:func:`meets`), the fastest
    end-to-end, where times within a factor ``1 + tie`` of the fastest count as equal and the
    higher PSNR wins among them. Then, from the strictest budget down, a looser budget takes the
    stricter budget's pick when that costs at most ``1 + tie`` times its own (better quality for
    no measurable time), so the picks never leave one budget's setting dominated by another's."""
    out: dict[str, dict | None] = {}
    for name, floor in budgets.items():
        ok = [r for r in [baseline, *rows] if r.get("seconds") and meets(r, baseline, floor, tolerance,
                                                                          margin=margin, worst=worst)]
        if not ok:
            out[name] = None
            continue
        fastest = min(r["seconds"] for r in ok)
        tied = [r for r in ok if r["seconds"] <= fastest * (1.0 + tie)]
        out[name] = max(tied, key=lambda r: (r.get("psnr_base") or 0.0, -r["seconds"]))
    order = sorted(budgets, key=lambda n: -budgets[n])
    for stricter, looser in zip(order, order[1:]):
        s, l = out[stricter], out[looser]
        if s is not None and l is not None and s["seconds"] <= l["seconds"] * (1.0 + tie):
            out[looser] = s
    return out


def run_tune(pipe, cases: Sequence[BenchCase], settings: Sequence[Setting], options=None, *,
             cache_path: str | Path, size: int | None = None, progress: bool = True, warm: bool = True,
             repeats: int = 1, log: Callable[[str], None] | None = None) -> TuneResult:
    """Measure the baseline and ``settings`` (skipping those in the cache), then pick per budget."""
    from tqdm import tqdm

    log = log or (lambda _m: None)
    flush = pipe.device.type == "cpu"
    with flushed_denormals(flush):
        run = Runner(pipe, cases, options, size=size, log=lambda _m: None)
        S = run.opts.steps
        context = [model_signature(pipe), samples_signature(run), str(pipe.device), str(pipe.dtype),
                   torch.get_num_threads(), repeats, __version__]
        fp = fingerprint(context)
        cache = TuneCache(cache_path)
        base_setting = Setting("baseline", S, AccelConfig())
        base_key = base_setting.key(*context)
        if warm:
            run.warm_up()
        log(f"baseline: {S} steps, plain DDIM, on {len(run.cases)} samples")
        fresh = _entry(base_setting, run.measure(BenchMethod("baseline"), count_flops=False, warm=False, keep="base",
                                                 repeats=repeats))
        baseline = cache.get(base_key, fp, base_setting)
        if baseline is None:
            baseline = fresh
            cache.put(base_key, baseline, fp)
        rows, measured, cached, failed = [], 0, 0, []
        bar = tqdm(total=len(settings), unit="setting", desc="tune", disable=not progress, dynamic_ncols=True)
        try:
            for s in settings:
                key = s.key(*context)
                entry = cache.get(key, fp, s)
                if entry is None:
                    bar.set_postfix_str(s.name)
                    try:
                        entry = measure_setting(run, s, warm=warm, repeats=repeats)
                    except (ValueError, RuntimeError) as err:  # a setting this model cannot run: say so, go on
                        failed.append(f"{s.name}: {err}")
                        log(f"{s.name}: failed ({err}); left out")
                        bar.update(1)
                        continue
                    cache.put(key, entry, fp)
                    measured += 1
                else:
                    cached += 1
                rows.append(dict(entry, key=key))
                bar.update(1)
        finally:
            bar.close()
    baseline = dict(baseline, key=base_key)
    _relate(baseline, rows)
    picks = pick(baseline, rows)
    for name, floor in BUDGETS.items():
        for r in [baseline, *rows]:
            r.setdefault("meets", {})[name] = meets(r, baseline, floor)  # with the margins pick() uses
    meta = {"model": pipe.cfg.name, "weights": display_source(getattr(pipe, "source", "")), "device": str(pipe.device),
            "dtype": str(pipe.dtype).replace("torch.", ""), "threads": torch.get_num_threads(),
            "cpu": platform.processor() or platform.machine(), "torch": torch.__version__,
            "baseline_steps": S, "samples": [c.name for c in run.cases], "settings": len(settings),
            "measured_now": measured, "from_cache": cached, "failed": failed, "cache": str(cache.path), "date": _now(),
            "fresh_baseline_seconds": fresh["seconds"], "lipsync_checked": baseline.get("lipsync") is not None}
    return TuneResult(baseline, rows, picks, meta)


def refine_candidates(screening: TuneResult, settings: Sequence[Setting], per_budget: int,
                      budgets: dict[str, float] = BUDGETS, keep: Sequence[str] = ()) -> list[Setting]:
    """The settings worth measuring again on whole samples after a screening run on short clips:
    per budget, the ``per_budget`` fastest screened settings whose PSNR reaches the budget's floor
    (without the calibration margin and without the lip-sync checks, which short clips do not
    predict well: the picks are made on the re-measured rows), in the space's order; plus the
    settings named in ``keep`` (the model's current picks), whatever their screening times: on a
    shared 2-core machine the same computation screened 9-34 % apart (docs/BENCHMARKS.md, the
    2026-12-07 re-tune), enough to drop an incumbent before the whole-sample comparison."""
    chosen: set[str] = set(keep)
    for floor in budgets.values():
        ok = [r for r in screening.rows if r.get("seconds") and r.get("psnr_base") is not None and r["psnr_base"] >= floor]
        chosen.update(r["name"] for r in sorted(ok, key=lambda r: r["seconds"])[:per_budget])
    return [s for s in settings if s.name in chosen]


def tuned_entries(result: TuneResult, space: str = "") -> dict[str, dict]:
    """The ``tuned`` entry of model.json: per budget that has a pick, its setting and numbers."""
    b, out = result.baseline, {}
    for name, row in result.picks.items():
        if row is None:
            continue
        out[name] = {
            "name": row["name"], "steps": row["steps"], "accel": row["accel"],
            **({"sampler": row["sampler"]} if row.get("sampler") is not None else {}), "date": result.meta.get("date") or _now(),
            "budget": {"min_psnr_db": BUDGETS[name], "lipsync_tolerance": LIPSYNC_TOLERANCE,
                       "calibration_margin_db": PSNR_MARGIN_DB, "lipsync_worst_drop": LIPSYNC_WORST_DROP,
                       "time_tie": TIME_TIE},
            "measured": {"speedup": row["speedup"], "model_speedup": row["model_speedup"], "seconds": row["seconds"],
                         "baseline_seconds": b["seconds"], "psnr_base": row["psnr_base"], "ssim_base": row["ssim_base"],
                         "lipsync": row.get("lipsync"), "baseline_lipsync": b.get("lipsync"),
                         "psnr_gt": row.get("psnr_gt"), "baseline_psnr_gt": b.get("psnr_gt"),
                         "baseline_steps": result.meta.get("baseline_steps"), "samples": len(result.meta.get("samples", [])),
                         "device": result.meta.get("device"), "threads": result.meta.get("threads"), "space": space},
        }
    return out


def check_tuned_file(folder: str | Path, variant: str | None = None, *, overwrite: bool = False) -> Path:
    """The write rule for the tuned settings file (:func:`~talkfast.accelerators.tuned.tuned_file`),
    a deliberate edit inside the model folder: only its ``tuned`` entry is replaced, every other key
    kept, so an existing file is "ours" when it is a JSON object (nothing else in it is lost); any
    other existing file (not JSON, a list, a link) is replaced only with ``overwrite``. The folder
    must be writable. Raises :class:`OutputError` with the ``--no-write`` hint."""
    from ..accelerators.tuned import tuned_file
    from ..io.write_rule import check_writes, json_object

    path = tuned_file(folder, variant)
    try:
        return check_writes([path], overwrite=overwrite, ours=lambda p: json_object(p) is not None,
                             mark="not a JSON object: its content would be lost")[0]
    except OutputError as err:
        raise OutputError(f"{err} (tune with --no-write to only report, or copy the model folder and "
                          f"tune the copy with --checkpoint)") from err


def write_tuned(folder: str | Path, entries: dict[str, dict], variant: str | None = None, *,
                overwrite: bool = False) -> Path:
    """Replace the ``tuned`` entry of the folder's :func:`~talkfast.accelerators.tuned.tuned_file`
    (``model.json``, the rest of it kept; or ``talkfast_tuned.json`` beside another project's
    checkpoint), atomically, after :func:`check_tuned_file`; a folder that cannot be written is an
    :class:`OutputError` naming the file (``--no-write`` avoids it)."""
    path = check_tuned_file(folder, variant, overwrite=overwrite)
    try:
        data = json.loads(path.read_text()) if path.is_file() else {}
    except (OSError, ValueError):
        data = {}
    if not isinstance(data, dict):
        data = {}
    data["tuned"] = entries
    try:
        return write_json_atomic(path, data)
    except OutputError as err:
        raise OutputError(f"{err} (tune with --no-write to only report, or copy the model folder and "
                          f"tune the copy with --checkpoint)") from err


def _n(v, fmt: str, unit: str = "") -> str:
    return "n/a" if v is None else format(v, fmt) + unit


def pick_sentence(name: str, row: dict | None, baseline: dict) -> str:
    if row is None:
        return f"{name} (>= {BUDGETS[name]:g} dB): no setting meets it."
    what = describe_setting(row["steps"], AccelConfig.from_dict(row["accel"]), row.get("sampler"))
    why = ""
    if row is baseline or row.get("name") == "baseline":
        why = " (nothing faster meets it: the baseline itself)"
    elif row["accel"].get("method") == "off":
        plain = SAMPLER_TEXT.get(row.get("sampler"), "DDIM")
        why = f" (plain {plain} at fewer steps: no accelerated setting that meets this budget is faster)"
    return (f"{name} (>= {BUDGETS[name]:g} dB): {row['name']} = {what}; {_n(row.get('speedup'), '.2f', 'x')} end-to-end, "
            f"{_n(row['psnr_base'], '.2f', ' dB')}, lip sync {_n(row.get('lipsync'), '.3f')}{why}.")


def to_markdown(result: TuneResult, command: str = "", screening: TuneResult | None = None) -> str:
    m, b = result.meta, result.baseline
    lines = [f"# talkfast tune: {m['model']} ({m['weights']})", "",
             f"{m['date']}, {m['device']} {m['dtype']}, {m['threads']} threads, torch {m['torch']}; baseline "
             f"{m['baseline_steps']} steps ({_n(b['seconds'], '.2f', ' s')} for {len(m['samples'])} samples); "
             f"{m['settings']} settings ({m['measured_now']} measured now, {m['from_cache']} from the cache)."]
    if command:
        lines += ["", f"Command: `{command}`"]
    if m.get("failed"):
        lines += ["", "Left out (failed to run): " + "; ".join(m["failed"]) + "."]
    lines += ["", f"Budgets: PSNR of the video vs the baseline's at least the floor + {PSNR_MARGIN_DB:g} dB (a margin on "
              f"these calibration samples, so that other samples still meet the floor), mean lip sync at least the "
              f"baseline's minus {LIPSYNC_TOLERANCE:g} and no sample's more than {LIPSYNC_WORST_DROP:g} below its baseline"
              + ("" if m.get("lipsync_checked") else " (lip sync not checked: no lip-sync metric for these samples)")
              + f"; the fastest setting that meets it wins (times within {TIME_TIE:.0%} count as equal: the higher "
              "PSNR wins), and a looser budget keeps a stricter budget's pick when that costs no more.", ""]
    lines += [f"- {pick_sentence(name, row, b)}" for name, row in result.picks.items()]
    lines += ["", *_table(result)]
    if screening is not None:
        sm = screening.meta
        lines += ["", f"## Screening: every setting on the first {sm.get('seconds'):g} s of each sample", "",
                  f"{sm['settings']} settings ({sm['measured_now']} measured now, {sm['from_cache']} from the cache), "
                  f"baseline {_n(screening.baseline['seconds'], '.2f', ' s')}; per budget the "
                  f"{m.get('refine_per_budget')} fastest that reach its floor were measured again on the whole "
                  "samples above, and the picks come from those runs.", "", *_table(screening)]
    return "\n".join(lines) + "\n"


def _table(result: TuneResult) -> list[str]:
    cols = ("setting", "steps", "total s", "speedup", "model speedup", "PSNR base dB", "SSIM base", "lip-sync",
            "PSNR GT dB", "frontier", *BUDGETS)
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for r in sorted([result.baseline, *result.rows], key=lambda r: r["seconds"] or float("inf")):
        lines.append("| " + " | ".join([
            r["name"], str(r["steps"]), _n(r["seconds"], ".2f"), _n(r["speedup"], ".2f", "x"),
            _n(r["model_speedup"], ".2f", "x"), _n(r["psnr_base"], ".2f"), _n(r["ssim_base"], ".4f"),
            _n(r.get("lipsync"), ".3f"), _n(r.get("psnr_gt"), ".2f"),
            "n/a" if r.get("frontier") is None else ("yes" if r["frontier"] else "no"),
            *("yes" if r["meets"][k] else "no" for k in BUDGETS)]) + " |")
    return lines


#: The files ``tune --out`` holds (checked together before any work: :func:`talkfast.eval.tune_cli.check_tune_writes`).
REPORT_FILES = ("tune.md", "tune.json", CACHE_NAME)
_OURS = {"tune.md": text_starting_with("# talkfast tune: "), "tune.json": json_with_keys("meta", "picks", "rows"),
         CACHE_NAME: json_with_keys("version", "entries")}


def ours_report(path: Path) -> bool:
    """Whether ``path`` (one of :data:`REPORT_FILES`) is one talkfast wrote, by its content: the
    markdown's title line, the JSON report's or the cache's keys."""
    check = _OURS.get(path.name)
    return check is not None and check(path)


def write_report(result: TuneResult, out_dir: str | Path, command: str = "",
                 screening: TuneResult | None = None, *, checked: list[Path] | None = None) -> dict[str, Path]:
    """tune.md and tune.json in ``out_dir``, each atomically; ``screening``: the short-clip run
    ``--refine`` chose the measured settings from (reported below the picks' table). Without
    ``checked`` (what the write rule allowed before the work started) they are checked here, and an
    existing file talkfast did not write is an :class:`OutputError`."""
    out = Path(out_dir)
    if checked is None:
        check_writes([out / n for n in REPORT_FILES[:2]], ours=ours_report, mark="not a talkfast tune report")
    md = out / "tune.md"
    write_text_atomic(md, to_markdown(result, command, screening))
    js = out / "tune.json"
    data = {"meta": result.meta, "command": command, "budgets": BUDGETS,
            "lipsync_tolerance": LIPSYNC_TOLERANCE, "baseline": result.baseline,
            "picks": {k: (None if v is None else v["name"]) for k, v in result.picks.items()},
            "rows": result.rows}
    if screening is not None:
        data["screening"] = {"meta": screening.meta, "baseline": screening.baseline, "rows": screening.rows}
    write_text_atomic(js, json.dumps(data, indent=2, allow_nan=False))
    return {"markdown": md, "json": js}
