"""Named quality budgets, and what ``--accel quality|balanced|fast|auto`` means for a model.

``talkfast tune`` measures settings (step count x accelerator) on calibration samples and writes,
per budget, the fastest one that meets it into the model folder's ``model.json`` (a folder of
another project's checkpoint, Hallo, EchoMimic or MEMO, has none: its settings go into
``talkfast_tuned.json`` there, ``talkfast_tuned_<variant>.json`` for an EchoMimic variant other
than the default; :func:`tuned_file`)::

    "tuned": {"balanced": {"steps": 6, "accel": {...AccelConfig.describe()...},
                           "name": "ddim@6", "measured": {...}, "date": "2026-12-01T12:00:00+00:00"}, ...}

A budget is a floor on the PSNR of the video against the model's default-step, unaccelerated
output (:data:`BUDGETS`), with lip sync at least the baseline's minus :data:`LIPSYNC_TOLERANCE`.
:func:`resolve` turns a name into a :class:`Choice`: the tuned setting (its step count too, unless
the caller gives one), or, when the model folder has none, the documented preset of the same
name (:data:`talkfast.accelerators.PRESETS`) with a warning. ``auto`` is ``balanced``. Any other
name (``off``) is the preset itself. Used by ``generate``, ``batch`` and the demo.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..errors import CheckpointError
from ..io.records import (
    Anything,
    Int,
    MapOf,
    Null,
    Num,
    Obj,
    RecordError,
    Str,
    checked,
    describe_error,
    read_json,
)
from ..sampling.scheduler import SAMPLERS
from .config import PRESETS, AccelConfig, get_preset

BUDGETS: dict[str, float] = {"quality": 36.0, "balanced": 33.0, "fast": 30.0}  # dB vs the baseline output
LIPSYNC_TOLERANCE = 0.02
# How ``talkfast tune`` applies a budget to its calibration samples, so that the pick still meets
# it on samples it never saw: the PSNR floor plus a margin; no single sample's lip sync more than
# LIPSYNC_WORST_DROP below that sample's baseline (a setting can fail on a few samples while the
# mean holds: measured on the embedded model, docs/BENCHMARKS.md); end-to-end times within
# TIME_TIE of each other count as equal (the higher PSNR wins), which is also what keeps a stricter
# budget's pick for a looser budget when it costs no more.
PSNR_MARGIN_DB = 0.5
LIPSYNC_WORST_DROP = 0.10
TIME_TIE = 0.03
AUTO = "balanced"
# guidance_every at least this: the unconditional half runs at a clip's first key step only (no
# clip of a tuned schedule has that many key steps)
FIRST_KEY_ONLY = 99
NAMES = ("auto", "off", *BUDGETS)


SAMPLER_TEXT = {"ddim": "DDIM", "flow": "flow Euler", "dpmpp2m": "DPM-Solver++ 2M", "unipc": "UniPC"}


def describe_setting(steps: int | None, accel: AccelConfig, sampler: str | None = None) -> str:
    """A short human form: "6 steps, plain DDIM (no acceleration)" or "15 steps, lightningcp,
    key step every 4th, combine each, +DFA, +ref removal" ("15 steps, UniPC, lightningcp, ..." with
    a ``sampler``; None: the model family's own, named DDIM when plain)."""
    head = f"{steps} step{'s' if steps != 1 else ''}, " if steps is not None else ""
    name = SAMPLER_TEXT.get(sampler, sampler) if sampler is not None else None
    if accel.method == "off":
        return head + f"plain {name or 'DDIM'} (no acceleration)"
    if name is not None:
        head += f"{name}, "
    c = accel.caching
    k = c.keys
    keys = {"uniform": f"key step every {k.interval}", "dense": "dense-early key steps",
            "power": f"power key schedule (every {k.interval} on average)"}.get(k.kind, f"key steps {list(k.steps)}")
    if k.final:
        keys += " and the last"
    parts = [accel.method, keys, f"combine {c.combine}"]
    defaults = type(c)()
    if c.branch != defaults.branch:
        parts.append(f"branch {c.branch}")
    if not c.estimation:
        parts.append("no estimation")
    for name, label in (("forecast", "forecast order"), ("adaptive", "adaptive threshold")):
        if getattr(c, name, 0):
            parts.append(f"{label} {getattr(c, name)}")
    if getattr(c, "guidance_reuse", False):
        every, what = c.guidance_every, "guidance reuse"
        if every >= FIRST_KEY_ONLY:
            what += " (unconditional half at the first key step only)"
        elif every > 1:
            what += f" (unconditional half every {every} key steps)"
        parts.append(what)
    if accel.dfa is not None:
        parts.append("+DFA" + (" (temporal)" if getattr(accel.dfa, "temporal", False) else ""))
    if accel.drop_ref:
        parts.append("+ref removal")
    return head + ", ".join(parts)


@dataclass(frozen=True)
class Choice:
    """What an ``--accel`` name resolved to. ``steps`` None: the model's default (or the caller's)."""

    requested: str
    accel: AccelConfig
    steps: int | None
    source: str  # "tuned" (the model folder's measured setting) or "preset"
    budget: str | None = None  # the budget behind it (quality / balanced / fast), None for off
    model: str | None = None  # the model folder the tuned setting came from
    measured: dict | None = None
    date: str | None = None
    warning: str | None = None
    sampler: str | None = None  # the tuned setting's sampler (None: the model family's own)

    def describe(self) -> dict:
        """For the sidecar JSON."""
        return {"requested": self.requested, "budget": self.budget, "source": self.source, "steps": self.steps,
                "sampler": self.sampler,
                "accel": self.accel.describe(), "setting": describe_setting(self.steps, self.accel, self.sampler),
                "model": self.model, "measured": self.measured, "date": self.date}

    def text(self) -> str:
        """One line saying which setting runs and why."""
        what = describe_setting(self.steps, self.accel, self.sampler)
        name = self.requested if self.budget in (None, self.requested) else f"{self.requested} = {self.budget}"
        if self.source == "tuned":
            m = self.measured or {}
            nums = []
            if m.get("speedup") is not None:
                nums.append(f"{m['speedup']:.2f}x")
            if m.get("psnr_base") is not None:
                nums.append(f"{m['psnr_base']:.1f} dB vs the {m.get('baseline_steps', '?')}-step baseline")
            return (f"accel {name}: tuned for this model ({self.date or 'undated'}): {what}"
                    + (f" [measured {', '.join(nums)}]" if nums else ""))
        return f"accel {name}: preset: {what}"


TUNED_FILE = "talkfast_tuned{}.json"


def tuned_file(folder: str | Path, variant: str | None = None) -> Path:
    """Where ``folder``'s tuned settings live: its ``model.json`` (a talkfast model folder), else
    ``talkfast_tuned.json`` (``talkfast_tuned_<variant>.json`` for a non-default EchoMimic variant:
    each variant has its own weights and step count)."""
    folder = Path(folder)
    if (folder / "model.json").is_file():
        return folder / "model.json"
    return folder / TUNED_FILE.format("" if variant in (None, "default") else f"_{variant}")


MAX_STEPS = 1000  # the schedulers' training timesteps (talkfast.pipeline.generate.MAX_STEPS)
_SPEED, _SCORE = Null(Num(0.0, above=True)), Null(Num())
# What ``talkfast tune`` writes per budget (talkfast.eval.tune.tuned_entries); checked on every read
TUNED_ENTRY = Obj({
    "name": Str(max_len=200), "steps": Null(Int(1, MAX_STEPS)), "accel": Anything(), "date": Null(Str(max_len=100)),
    "sampler": Null(Str(SAMPLERS)),  # older files have none: the family's own
    "budget": Obj({k: Num(0.0) for k in ("min_psnr_db", "lipsync_tolerance", "calibration_margin_db",
                                          "lipsync_worst_drop", "time_tie")}),
    "measured": Obj({**{k: _SPEED for k in ("speedup", "model_speedup", "seconds", "baseline_seconds")},
                     **{k: _SCORE for k in ("psnr_base", "ssim_base", "lipsync", "baseline_lipsync", "psnr_gt",
                                            "baseline_psnr_gt")},
                     "baseline_steps": Null(Int(1, MAX_STEPS)), "samples": Null(Int(0)), "threads": Null(Int(0)),
                     "device": Null(Str(max_len=100)), "space": Null(Str(max_len=100))}),
}, required=("accel",))
TUNED = MapOf(TUNED_ENTRY, keys=Str(BUDGETS))


def check_tuned(tuned, path: str | Path, field: str = "tuned") -> dict[str, tuple[dict, AccelConfig]]:
    """``tuned`` (the entry of :func:`tuned_file` ``path``) checked against :data:`TUNED`, each
    budget's accelerator built and its key schedule tried on its step count: {budget: (entry,
    AccelConfig)}, or a :class:`~talkfast.errors.CheckpointError` naming the file and the field."""
    tuned = checked(tuned, TUNED, file=path, error=CheckpointError, what="the tuned settings in", field=field,
                    hint=_REDO)
    out = {}
    for budget, entry in tuned.items():
        where = f"{field}.{budget}.accel"
        try:
            accel = accel_record(entry["accel"], where)
            steps = entry.get("steps")
            if accel.method != "off":
                keys = accel.caching.keys
                try:
                    keys.keys(steps if steps is not None else max([keys.interval, *keys.steps, 0]) + 1)
                except (TypeError, ValueError) as err:
                    raise RecordError(where, f"is not a usable setting ({err})") from None
        except RecordError as err:
            raise CheckpointError(describe_error(path, err, "the tuned settings in") + f"; {_REDO}") from None
        out[budget] = (entry, accel)
    return out


def accel_record(value, field: str) -> AccelConfig:
    """An accelerator setting read back from a file (``AccelConfig.describe()``'s dict) built, any
    problem with it a :class:`~talkfast.io.records.RecordError` at ``field``."""
    try:
        return AccelConfig.from_dict(value)
    except RecordError as err:
        raise err.within(field) from None
    except (TypeError, ValueError) as err:
        raise RecordError(field, f"is not a usable setting ({err})") from None


_REDO = "run 'talkfast tune' again to measure them (or delete the 'tuned' entry)"


def read_tuned(folder: str | Path | None, variant: str | None = None) -> dict:
    """The ``tuned`` entry of :func:`tuned_file` ({} when there is no folder, file or entry),
    checked (:func:`check_tuned`): a file that is not JSON, or whose ``tuned`` entry does not fit
    the schema, is a :class:`~talkfast.errors.CheckpointError` naming the file and the field."""
    return {budget: entry for budget, (entry, _) in tuned_settings(folder, variant).items()}


def tuned_settings(folder: str | Path | None, variant: str | None = None) -> dict[str, tuple[dict, AccelConfig]]:
    """As :func:`read_tuned`, each budget's entry with its accelerator built:
    {budget: (entry, AccelConfig)} (:func:`check_tuned`)."""
    if folder is None:
        return {}
    path = tuned_file(folder, variant)
    if not path.is_file():
        return {}
    data = read_json(path, error=CheckpointError, what="the tuned settings in")
    if not isinstance(data, dict) or "tuned" not in data:
        return {}  # a model.json the loader checks; no tuned settings in it
    return check_tuned(data["tuned"], path)


def model_folder(checkpoint: str | Path | None, random_weights: bool = False) -> Path | None:
    """The model folder a run uses (the embedded model's without ``checkpoint``; a talkfast folder
    or another project's checkpoint folder), or None (random weights)."""
    if random_weights:
        return None
    if checkpoint is None:
        from ..models.loading import EMBEDDED_DIR

        return EMBEDDED_DIR
    folder = Path(checkpoint).expanduser()
    return folder if folder.is_dir() else None


def folder_of(pipe) -> Path | None:
    """The model folder a loaded pipeline came from (its ``source``), or None (random weights)."""
    source = str(getattr(pipe, "source", "") or "")
    if not source or source.startswith("random:"):
        return None
    folder = Path(source)
    return folder if folder.is_dir() else None


def resolve(name: str, folder: str | Path | None, steps: int | None = None, variant: str | None = None) -> Choice:
    """``name``: auto, quality, balanced, fast (the model's tuned setting, else the preset with a
    warning) or off. ``steps`` given: it wins over a tuned step count. ``variant``: an EchoMimic
    folder's variant (its own tuned settings)."""
    name = (name or "auto").strip()
    if name not in NAMES:
        raise ValueError(f"unknown --accel {name!r}; choose from {', '.join(NAMES)}")
    if name == "off":
        return Choice("off", get_preset("off"), steps, "preset")
    budget = AUTO if name == "auto" else name
    tuned = tuned_settings(folder, variant)  # a bad file: CheckpointError naming it and the field
    if budget in tuned:
        entry, accel = tuned[budget]
        return Choice(name, accel, steps if steps is not None else entry.get("steps"), "tuned", budget, str(folder),
                      entry.get("measured"), entry.get("date"), sampler=entry.get("sampler"))
    why = "has no tuned settings" if folder is not None else None
    return _fallback(name, budget, folder, why, steps)


def resolve_for(name: str, pipe, steps: int | None = None) -> Choice:
    """:func:`resolve` for a loaded pipeline: the folder it came from and its variant (EchoMimic)."""
    return resolve(name, folder_of(pipe), steps, getattr(pipe, "variant", None))


def _fallback(name: str, budget: str, folder, why: str | None, steps: int | None) -> Choice:
    accel = PRESETS[budget]
    where = (f"model folder {folder} {why}" if folder is not None
             else "this model (random weights) has no tuned settings")
    warning = f"warning: {where}; --accel {name} uses the documented preset '{budget}' ({describe_setting(None, accel)})"
    if folder is not None:
        hint = "talkfast tune" + (f" --checkpoint {folder}" if not _is_embedded(folder) else "")
        warning += f"; run '{hint}' to measure this model's own"
    return Choice(name, accel, steps, "preset", budget, None if folder is None else str(folder), warning=warning)


def _is_embedded(folder) -> bool:
    from ..models.loading import EMBEDDED_DIR

    try:
        return Path(folder).resolve() == EMBEDDED_DIR.resolve()
    except OSError:
        return False
