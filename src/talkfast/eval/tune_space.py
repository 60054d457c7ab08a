"""The search space of ``talkfast tune``: settings (step count x accelerator) to measure.

Two spaces around the model's default step count S:

- ``small`` (the default, at most 72 settings, feasible on a CPU), built from what was measured
  on the embedded model (docs/BENCHMARKS.md): plain DDIM at fewer steps (the control every
  accelerator must beat); short LightningCP schedules whose last step is a key step and whose
  reduced steps forecast the cached feature (2-4 key steps between about 0.2 S and 0.67 S
  steps), with guidance reuse (at reduced steps, and at key steps too: the unconditional half only
  at every 2nd or only at the first key step), x0 combining and a quadratic forecast on some of
  them; and at S
  steps the paper's settings for reference: LightningCP chain/each/x0, forecast, DFA + reference
  removal, DeepCache (uniform and its power schedule), FasterDiffusion, adaptive key steps and
  a deeper cache branch.
- ``full``: the product of more step counts, intervals, combine modes, forecast and guidance
  reuse, with the other axes on the ``each`` combine, and every plain step count below S.

A setting whose options this talkfast does not have (or rejects) is left out, so the space
follows the accelerator options that exist.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass

from ..accelerators import AccelConfig, CachingConfig, DFAConfig, KeySchedule
from ..accelerators.tuned import FIRST_KEY_ONLY

SPACES = ("small", "full")
SMALL_MAX = 72


@dataclass(frozen=True)
class Setting:
    """One candidate: a name, its step count and its accelerator (method "off": plain DDIM)."""

    name: str
    steps: int
    accel: AccelConfig
    sampler: str | None = None  # None: the model family's own (DDIM; MEMO: flow)

    @property
    def plain(self) -> bool:
        return self.accel.method == "off"

    def canonical(self) -> dict:
        """The setting without the options left at their defaults (stable when options are added)."""
        out = {"steps": int(self.steps), "accel": _strip_defaults(self.accel.describe(), AccelConfig().describe())}
        if self.sampler is not None:  # the family's own sampler keeps the keys of earlier caches
            out["sampler"] = self.sampler
        return out

    def key(self, *context) -> str:
        """A hash of the setting and ``context`` (samples, model, device): the cache key."""
        blob = json.dumps([self.canonical(), *context], sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:20]


def _strip_defaults(value: dict, default: dict) -> dict:
    out = {}
    for k, v in value.items():
        d = default.get(k, object())
        if isinstance(v, dict) and isinstance(d, dict):
            sub = _strip_defaults(v, d)
            if sub:
                out[k] = sub
        elif v != d:
            out[k] = v
    return out


def _accel(method: str, kind: str = "uniform", interval: int = 3, *, dfa: bool = False, drop_ref: bool = False,
           final: bool = False, **caching) -> AccelConfig | None:
    """The config, or None when this talkfast lacks (or rejects) one of the options."""
    try:
        keys = KeySchedule(kind, interval=interval, final=final)
        fields = {f.name for f in dataclasses.fields(CachingConfig)}
        if not set(caching) <= fields:
            return None
        return AccelConfig(method, CachingConfig(keys=keys, **caching), dfa=DFAConfig() if dfa else None, drop_ref=drop_ref)
    except (TypeError, ValueError):
        return None


def _name(steps: int, accel: AccelConfig, sampler: str | None = None, family: str = "ddim") -> str:
    """"ddim@6" / "flow@6" / "unipc@6" for a plain sampler; accelerated settings on a sampler other
    than the family's own get its name in front ("unipc:lightningcp@2L+fc1/6")."""
    if accel.method == "off":
        return f"{sampler or family}@{steps}"
    if sampler is not None:
        return f"{sampler}:{_name(steps, accel)}"
    c, d = accel.caching, CachingConfig()
    keys = c.keys
    if getattr(c, "adaptive", 0):
        tag = f"{accel.method}@adaptive{c.adaptive:g}"
    else:
        tag = f"{accel.method}@{keys.interval}" + ("p" if keys.kind == "power" else "") + ("L" if keys.final else "")
    extra = [c.combine] if c.combine != d.combine else []
    for field, short in (("forecast", "fc"), ("branch", "b")):
        if getattr(c, field, None) != getattr(d, field, None):
            extra.append(f"{short}{getattr(c, field)}")
    if getattr(c, "guidance_reuse", False):
        every = getattr(c, "guidance_every", 1)
        extra.append("gr" if every == 1 else "gr1st" if every >= FIRST_KEY_ONLY else f"gr{every}")
    if accel.dfa is not None:
        extra.append("dfa")
    if accel.drop_ref:
        extra.append("refdrop")
    return f"{tag}+{'+'.join(extra)}/{steps}" if extra else f"{tag}/{steps}"


def _steps_at(base: int, fractions) -> list[int]:
    return sorted({max(1, min(base, round(base * f))) for f in fractions}, reverse=True)


def search_space(kind: str, base_steps: int, family: str = "ddim") -> list[Setting]:
    """The settings of the ``small`` or ``full`` space for a model whose default is ``base_steps``
    steps of its own sampler ``family`` (DDIM; MEMO: flow); the baseline itself (that sampler at
    ``base_steps``) is not among them (the tuner always measures it first). The sampler is an
    axis: the multistep solvers (DPM-Solver++ 2M, UniPC) at fewer steps, plain and under short
    LightningCP schedules. Names are unique; order: the family's plain rows first (most steps
    first), then the rest."""
    from ..sampling.solvers import MULTISTEP

    if kind not in SPACES:
        raise ValueError(f"--space must be one of {', '.join(SPACES)}, not {kind!r}")
    if base_steps < 1:
        raise ValueError("the baseline needs at least one step")
    S = int(base_steps)
    out: list[tuple] = []
    if kind == "small":
        plain = sorted({k for k in _steps_at(S, (0.67, 0.53, 0.4, 0.33, 0.27, 0.2, 0.13)) if 2 <= k < S}, reverse=True)
        out += [(k, AccelConfig()) for k in plain]
        # short schedules, last step a key step, forecast feature: 2-4 key steps each
        short = sorted({k for k in _steps_at(S, (0.2, 0.27, 0.33, 0.4, 0.47, 0.53, 0.6, 0.67)) if k >= 3})
        for steps in short:
            for interval in (2, 3, 4):
                n_keys = len(KeySchedule("uniform", interval=interval, final=True).keys(steps))
                if interval < steps - 1 and 2 <= n_keys <= 4:
                    out.append((steps, _accel("lightningcp", interval=interval, final=True, forecast=1)))
        mid = short[len(short) // 3 : len(short) // 3 + 2]
        for steps in short[: len(short) // 3 + 2]:
            # guidance reuse also at key steps: the unconditional half at every 2nd key step, or at
            # the first only (guidance_every larger than any clip's key-step count)
            for every in (2, FIRST_KEY_ONLY):
                out.append((steps, _accel("lightningcp", interval=2, final=True, forecast=1, guidance_reuse=True,
                                          guidance_every=every)))
        # the sampler axis: each multistep solver alone at the fewer step counts, and under the short
        # LightningCP schedules (the estimation follows the solver: accelerators.caching)
        for sampler in MULTISTEP:
            out += [(k, AccelConfig(), sampler) for k in plain if k <= max(2, round(0.53 * S))]
            for steps in mid:
                out += [(steps, _accel("lightningcp", interval=i, final=True, forecast=1), sampler) for i in (2, 3)]
        for steps in mid:
            out += [(steps, _accel("lightningcp", interval=2, final=True, forecast=1, guidance_reuse=True)),
                    (steps, _accel("lightningcp", interval=3, final=True, forecast=1, combine="x0")),
                    (steps, _accel("lightningcp", interval=3, final=True, forecast=2))]
        # the paper's settings at the model's own step count (the report shows where they stand)
        for combine in ("chain", "each", "x0"):
            out.append((S, _accel("lightningcp", interval=4, combine=combine)))
        out += [(S, _accel("lightningcp", interval=4, forecast=1)),
                (S, _accel("lightningcp", interval=4, forecast=1, guidance_reuse=True)),
                (S, _accel("lightningcp", interval=4, forecast=1, dfa=True, drop_ref=True)),
                (S, _accel("lightningcp", interval=4, forecast=1, branch=1)),
                (S, _accel("lightningcp", forecast=1, adaptive=0.05)),
                (S, _accel("deepcache", interval=4)),
                (S, _accel("deepcache", "power", interval=4)),
                (S, _accel("fasterdiffusion", interval=4))]
    else:
        out += [(k, AccelConfig()) for k in range(S - 1, 1, -1)]
        for sampler in MULTISTEP:
            out += [(k, AccelConfig(), sampler) for k in range(S - 1, 1, -1)]
            for steps in _steps_at(S, (0.75, 0.6, 0.45, 0.3)):
                for interval in (2, 3, 4):
                    for forecast in (0, 1):
                        out.append((steps, _accel("lightningcp", interval=interval, final=True, forecast=forecast),
                                    sampler))
        for steps in _steps_at(S, (1.0, 0.75, 0.6, 0.45)):
            for interval in (2, 3, 4, 6):
                for combine in ("chain", "each", "x0"):
                    for forecast in (0, 1):
                        for reuse in (False, True):
                            out.append((steps, _accel("lightningcp", interval=interval, combine=combine,
                                                      forecast=forecast, guidance_reuse=reuse)))
                out += [(steps, _accel("lightningcp", interval=interval, combine="each", branch=1)),
                        (steps, _accel("lightningcp", interval=interval, combine="each", dfa=True)),
                        (steps, _accel("lightningcp", interval=interval, combine="each", dfa=True, drop_ref=True)),
                        (steps, _accel("lightningcp", "power", interval=interval, combine="each"))]
            for interval in (2, 3, 4):
                out += [(steps, _accel("deepcache", interval=interval)),
                        (steps, _accel("deepcache", "power", interval=interval)),
                        (steps, _accel("fasterdiffusion", interval=interval))]
            for threshold in (0.05, 0.1, 0.2):
                out.append((steps, _accel("lightningcp", combine="each", adaptive=threshold)))
    seen, settings = set(), []
    for steps, accel, *rest in out:
        sampler = rest[0] if rest else None
        if accel is None or steps < 1 or (accel.method == "off" and steps >= S):
            continue
        if accel.method != "off":
            try:
                accel.caching.keys.keys(steps)  # e.g. no power schedule for this step count
            except ValueError:
                continue
        s = Setting(_name(steps, accel, sampler, family), int(steps), accel, sampler)
        if s.name not in seen:
            seen.add(s.name)
            settings.append(s)
    if kind == "small":
        settings = settings[:SMALL_MAX]
    return settings
