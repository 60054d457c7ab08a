"""The method sets of ``talkfast bench``: named accelerator settings (:class:`BenchMethod`) and
the standard lists of them (default, ablation, key-step sweep)."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Sequence

from ..accelerators import AccelConfig, CachingConfig, DFAConfig, KeySchedule, build_accelerator
from ..accelerators.base import Accelerator
from ..accelerators.tuned import SAMPLER_TEXT

DEFAULT_KEYS = KeySchedule("uniform", interval=4)
DEFAULT_SWEEP = (2, 3, 4, 5, 6, 8)


@dataclass(frozen=True)
class BenchMethod:
    """A named accelerator setting; ``accel`` None (or method "off") is plain DDIM, every step a
    full step. ``steps``: this method's own number of denoising steps (None: the run's); plain
    DDIM with its own ``steps`` is a fewer-step control or a longer reference, not the baseline."""

    name: str
    accel: AccelConfig | None = None
    steps: int | None = None
    sampler: str | None = None  # None: the run's (the model family's own unless the options name one)

    def __post_init__(self):
        if self.steps is not None and int(self.steps) < 1:
            raise ValueError(f"{self.name}: steps must be >= 1, got {self.steps}")

    @property
    def is_plain(self) -> bool:
        """Plain DDIM: every step a full step."""
        return self.accel is None or self.accel.method == "off"

    @property
    def is_baseline(self) -> bool:
        return self.is_plain and self.steps is None

    @property
    def family(self) -> str:
        """"plain DDIM" or the accelerator's method name (the frontier's owners); see :meth:`family_on`."""
        return self.family_on(None)

    def family_on(self, run_sampler: str | None) -> str:
        """Who owns this row on the frontier, with the sampler it runs (its own, else the run's
        ``run_sampler``): "plain DDIM", "plain UniPC", "lightningcp", "lightningcp on UniPC" (the
        family's own sampler, DDIM or flow, is not named after a method)."""
        sampler = self.sampler or run_sampler
        text = SAMPLER_TEXT.get(sampler, sampler) if sampler is not None else "DDIM"
        if self.is_plain:
            return f"plain {text}"
        own = sampler in (None, "ddim", "flow")
        return self.accel.method if own else f"{self.accel.method} on {text}"

    def steps_for(self, run_steps: int) -> int:
        return int(self.steps) if self.steps is not None else int(run_steps)

    def build(self) -> Accelerator:
        """A fresh accelerator. Plain DDIM gets the plain :class:`Accelerator` (every step
        full), so it records its calls (time, FLOPs) exactly like the methods do."""
        return Accelerator() if self.is_plain else build_accelerator(self.accel)

    def key_steps(self, steps: int) -> int:
        """Full-network steps per clip of ``steps`` steps."""
        if self.is_plain:
            return steps
        return len(self.accel.caching.keys.keys(steps))

    def describe(self) -> dict:
        out = {"name": self.name, "accel": None if self.accel is None else self.accel.describe(), "steps": self.steps}
        if self.sampler is not None:
            out["sampler"] = self.sampler
        return out


PLAIN = "plain DDIM"


def is_plain_family(family: str) -> bool:
    """Whether a row's family (:meth:`BenchMethod.family_on`) is a plain sampler, no acceleration."""
    return family.startswith("plain ")


def control_method(steps: int, sampler: str = "ddim") -> BenchMethod:
    """Plain ``sampler`` at ``steps`` steps, no acceleration: a fewer-step control, named after its
    sampler ("ddim@4", "flow@4", "dpmpp2m@4", "unipc@4")."""
    return BenchMethod(f"{sampler}@{int(steps)}", None, int(steps), sampler)


def control_methods(ks, samplers: Sequence[str], methods: Sequence[BenchMethod], run_steps: int,
                    run_sampler: str) -> list[BenchMethod]:
    """The fewer-step controls: every sampler in ``samplers`` at every step count in ``ks`` that
    ``methods`` do not already have as a plain row of that sampler (most steps first)."""
    have = {(m.steps_for(run_steps), m.sampler or run_sampler) for m in methods if m.is_plain}
    return [control_method(k, s) for s in samplers for k in sorted(set(ks), reverse=True) if (k, s) not in have]


def on_samplers(methods: Sequence[BenchMethod], samplers: Sequence[str]) -> list[BenchMethod]:
    """Every accelerated row of ``methods`` again on each sampler of ``samplers`` (named
    ``<name>~<sampler>``, e.g. "tuned:balanced~unipc"): the same steps and accelerator on another
    solver. Plain rows are left out (the controls already run each sampler at fewer steps), and so
    is a row's own sampler."""
    return [dataclasses.replace(m, name=f"{m.name}~{s}", sampler=s) for m in methods if not m.is_plain
            for s in samplers if s != m.sampler]


def reference_method(base_steps: int, factor: int = 2) -> BenchMethod:
    """Plain DDIM at ``factor`` x the baseline's steps: the longer (more converged) reference."""
    return BenchMethod(f"reference@{int(base_steps) * int(factor)}", None, int(base_steps) * int(factor))


def control_steps(base_steps: int, speedups: Sequence[float], most: int = 6) -> list[int]:
    """Step counts k < ``base_steps`` for plain-DDIM controls whose cost ratios ``base_steps / k``
    span ``speedups`` (the accelerated rows' measured speedups: time and FLOPs): from the smallest
    k with ``base/k`` at least the largest speedup to the largest k with ``base/k`` at most the
    smallest one. Every speedup's two neighbours (the k just cheaper and just dearer than it) are
    always kept, so that each accelerated row is compared with the plain step counts on both sides
    of its cost; the rest of the range is spread evenly (both ends kept) up to ``most`` in all
    (more only when the neighbours alone are more). Empty when there is nothing to span (no
    speedups, or a one-step baseline)."""
    vals = [float(v) for v in speedups if v is not None and v > 0 and v == v and v != float("inf")]
    if not vals or base_steps < 2:
        return []

    def clamp(k: float) -> int:
        return max(1, min(base_steps - 1, int(k)))

    lo, hi = min(vals), max(vals)
    k_small = clamp(math.floor(base_steps / hi))  # base/k >= hi
    k_large = clamp(math.ceil(base_steps / max(lo, 1.0)))  # base/k <= lo (or the baseline's k-1)
    ks = list(range(k_small, max(k_small, k_large) + 1))
    if len(ks) <= most or most < 2:
        return ks
    needed = {clamp(f(base_steps / max(v, 1.0))) for v in vals for f in (math.floor, math.ceil)}
    spread = {ks[round(i * (len(ks) - 1) / (most - 1))] for i in range(most)}
    out = set(needed)
    for k in sorted(spread, key=lambda k: (k not in (ks[0], ks[-1]), k)):  # the ends first
        if len(out) >= most:
            break
        out.add(k)
    return sorted(out)


def tuned_methods(folder, variant: str | None = None) -> list[BenchMethod]:
    """The settings ``talkfast tune`` stored for a model folder (:func:`~talkfast.accelerators.tuned.
    tuned_file`; ``variant``: an EchoMimic folder's), one row per
    distinct setting, named after its budgets (``tuned:balanced``, ``tuned:balanced=fast``)."""
    from ..accelerators.tuned import BUDGETS, tuned_settings

    groups: dict[str, tuple] = {}
    # checked on read (budget names, types, the accelerator built): a bad file is a CheckpointError
    for budget, (entry, accel) in tuned_settings(folder, variant).items():
        steps, sampler = entry.get("steps"), entry.get("sampler")  # older files: no sampler
        sig = repr((steps, accel, sampler))
        groups.setdefault(sig, ([], steps, accel, sampler))[0].append(budget)
    out = []
    for budgets, steps, accel, sampler in groups.values():
        budgets = [b for b in BUDGETS if b in budgets]
        out.append(BenchMethod("tuned:" + "=".join(budgets), None if accel.method == "off" else accel, steps, sampler))
    return out


def _lcp(keys: KeySchedule, **caching) -> AccelConfig:
    return AccelConfig("lightningcp", CachingConfig(keys=keys, **caching))


def default_methods(keys: KeySchedule = DEFAULT_KEYS, dfa: DFAConfig = DFAConfig()) -> list[BenchMethod]:
    """The baseline, LightningCP and its variants (with the forecast feature too), DeepCache and
    FasterDiffusion, all with the same key steps."""
    return [
        BenchMethod("baseline"),
        BenchMethod("lightningcp", _lcp(keys)),
        BenchMethod("lightningcp+forecast", _lcp(keys, forecast=1)),
        BenchMethod("lightningcp+dfa", _lcp(keys).replace(dfa=dfa)),
        BenchMethod("lightningcp+dfa+refdrop", _lcp(keys).replace(dfa=dfa, drop_ref=True)),
        BenchMethod("lightningcp-noest", _lcp(keys, estimation=False)),
        BenchMethod("deepcache", AccelConfig("deepcache", CachingConfig(keys=keys))),
        BenchMethod("fasterdiffusion", AccelConfig("fasterdiffusion", CachingConfig(keys=keys))),
    ]


def ablation_methods(keys: KeySchedule = DEFAULT_KEYS, dfa: DFAConfig = DFAConfig()) -> list[BenchMethod]:
    """The paper's ablation: LightningCP only, +DFA, +DFA+reference removal, each with and
    without input-latent estimation (without: the reduced steps all get the key step's latent)."""
    out = [BenchMethod("baseline")]
    for est in (True, False):
        tag = "" if est else "-noest"
        out += [
            BenchMethod("lightningcp" + tag, _lcp(keys, estimation=est)),
            BenchMethod("lightningcp+dfa" + tag, _lcp(keys, estimation=est).replace(dfa=dfa)),
            BenchMethod("lightningcp+dfa+refdrop" + tag, _lcp(keys, estimation=est).replace(dfa=dfa, drop_ref=True)),
        ]
    return out


def sweep_methods(intervals: Sequence[int] = DEFAULT_SWEEP, template: AccelConfig | None = None,
                  name: str | None = None) -> list[BenchMethod]:
    """The baseline plus ``template`` (default: plain LightningCP) with a key step every
    ``k``-th step for each ``k`` in ``intervals`` (named ``<name>@k``)."""
    template = template or _lcp(DEFAULT_KEYS)
    if name is None:
        name = template.method + ("+dfa" if template.dfa is not None else "") + ("+refdrop" if template.drop_ref else "")
    out = [BenchMethod("baseline")]
    for k in intervals:
        if int(k) < 1:
            raise ValueError(f"key-step intervals must be >= 1, got {k}")
        caching = dataclasses.replace(template.caching, keys=KeySchedule("uniform", interval=int(k)))
        out.append(BenchMethod(f"{name}@{int(k)}", template.replace(caching=caching)))
    return out


def method_set(kind: str, keys: KeySchedule = DEFAULT_KEYS, intervals: Sequence[int] = DEFAULT_SWEEP) -> list[BenchMethod]:
    """``kind``: "default", "ablation", "sweep", "all" (their union, each name once) or
    "quick" (baseline + LightningCP)."""
    if kind == "default":
        return default_methods(keys)
    if kind == "ablation":
        return ablation_methods(keys)
    if kind == "sweep":
        return sweep_methods(intervals)
    if kind == "quick":
        return default_methods(keys)[:2]
    if kind == "all":
        seen, out = set(), []
        for m in default_methods(keys) + ablation_methods(keys) + sweep_methods(intervals):
            if m.name not in seen:
                seen.add(m.name)
                out.append(m)
        return out
    raise ValueError(f"unknown method set {kind!r}; choose default, ablation, sweep, all or quick")


def _baseline_first(methods: Sequence[BenchMethod]) -> list[BenchMethod]:
    methods = list(methods)
    names = [m.name for m in methods]
    if len(set(names)) != len(names):
        raise ValueError(f"method names must be unique: {names}")
    base = [m for m in methods if m.is_baseline]
    rest = [m for m in methods if not m.is_baseline]
    return [base[0] if base else BenchMethod("baseline")] + rest
