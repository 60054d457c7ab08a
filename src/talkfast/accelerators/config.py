"""One dataclass for every accelerator setting, named presets, and the factory."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from .base import Accelerator
from .caching import CachingConfig, DeepCache, FasterDiffusion, LightningCP
from .dfa import DFA, DFAConfig, ReferenceRemoval
from .schedule import KeySchedule

METHODS = {"off": Accelerator, "lightningcp": LightningCP, "deepcache": DeepCache, "fasterdiffusion": FasterDiffusion}


@dataclass(frozen=True)
class AccelConfig:
    method: str = "off"
    caching: CachingConfig = field(default_factory=CachingConfig)
    dfa: DFAConfig | None = None  # None: off
    drop_ref: bool = False
    drop_ref_layers: tuple[str, ...] | None = None  # None with drop_ref: the shallow layer(s)

    def __post_init__(self):
        if self.method not in METHODS:
            raise ValueError(f"unknown accelerator {self.method!r}; choose from {sorted(METHODS)}")
        if self.method == "off" and (self.dfa is not None or self.drop_ref):
            raise ValueError("DFA and reference removal need a caching method (e.g. lightningcp)")

    def replace(self, **kw) -> "AccelConfig":
        return dataclasses.replace(self, **kw)

    def describe(self) -> dict:
        return dataclasses.asdict(self)

    @staticmethod
    def from_dict(d: dict) -> "AccelConfig":
        """Inverse of :meth:`describe` (a JSON round trip gives an equal config). Unknown keys
        are an error, so a setting written by a newer talkfast is not silently misread; so is a
        value of the wrong type (``"2"`` or ``true`` for an interval, NaN): a
        :class:`~talkfast.io.records.RecordError` (a ValueError) naming the field."""
        from ..io.records import check, dataclass_spec

        check(d, dataclass_spec(AccelConfig))

        def build(cls, data, nested=None):
            if not isinstance(data, dict):
                raise ValueError(f"{cls.__name__}: expected an object, got {data!r}")
            names = {f.name for f in dataclasses.fields(cls)}
            unknown = sorted(set(data) - names)
            if unknown:
                raise ValueError(f"{cls.__name__}: unknown settings {unknown}")
            kw = dict(data)
            for key, sub in (nested or {}).items():
                if kw.get(key) is not None:
                    kw[key] = sub(kw[key])
            for key in ("steps", "drop_ref_layers"):
                if isinstance(kw.get(key), list):
                    kw[key] = tuple(kw[key])
            return cls(**kw)

        keys = lambda x: build(KeySchedule, x)  # noqa: E731
        caching = lambda x: build(CachingConfig, x, {"keys": keys})  # noqa: E731
        dfa = lambda x: build(DFAConfig, x)  # noqa: E731
        return build(AccelConfig, d, {"caching": caching, "dfa": dfa})


def _preset(interval: int, dfa: DFAConfig | None = None, drop_ref: bool = False, **caching) -> AccelConfig:
    keys = KeySchedule("uniform", interval=interval, final=True)
    return AccelConfig("lightningcp", CachingConfig(keys=keys, forecast=1, **caching), dfa=dfa, drop_ref=drop_ref)


# The fallback of --accel quality|balanced|fast for a model that 'talkfast tune' has not measured:
# LightningCP at the model's own step count, the last step a key step, reduced steps forecasting
# the cached feature (on the embedded model both beat plain reuse by several dB: docs/BENCHMARKS.md).
PRESETS: dict[str, AccelConfig] = {
    "off": AccelConfig(),
    "quality": _preset(3),
    "balanced": _preset(4, dfa=DFAConfig(), drop_ref=True),
    "fast": _preset(6, dfa=DFAConfig(temporal=True), drop_ref=True, guidance_reuse=True),
}


def get_preset(name: str) -> AccelConfig:
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown accelerator preset {name!r}; choose from {sorted(PRESETS)}") from None


def build_accelerator(cfg: AccelConfig | str) -> Accelerator:
    cfg = get_preset(cfg) if isinstance(cfg, str) else cfg
    plugins = []
    if cfg.dfa is not None:
        plugins.append(DFA(cfg.dfa))
    if cfg.drop_ref:
        plugins.append(ReferenceRemoval(cfg.drop_ref_layers))
    acc = Accelerator() if cfg.method == "off" else METHODS[cfg.method](cfg.caching)
    acc.plugins = plugins
    acc.config = cfg
    return acc
