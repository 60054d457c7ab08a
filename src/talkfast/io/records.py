"""One check for everything talkfast reads back from files it wrote before.

The tune cache, the tuned settings in ``model.json`` / ``talkfast_tuned*.json``, training run
checkpoints and their summaries, batch reports: each reader declares a schema of the record
(types, ranges, required fields) with the specs below and checks the parsed data against it
before using any of it. A value that does not fit raises :class:`RecordError`, naming the field
by its path (``tuned.balanced.accel.caching.keys.interval``) and what was wrong; :func:`checked`
turns that into the caller's user-facing error naming the file too. Rules every spec follows:

- numbers are finite (no NaN or infinity, which Python's ``json`` would otherwise accept);
- ``bool`` is not a number (``true`` is no step count), and an integer field takes no ``2.0``
  nor ``"2"``;
- an object's unknown keys are refused unless the spec allows them (a record written by a newer
  talkfast is then not silently misread).

:func:`read_json` parses a file with NaN/Infinity refused. :func:`dataclass_spec` derives the
spec of a dataclass from its field annotations (e.g. :class:`~talkfast.accelerators.AccelConfig`,
whose own ``__post_init__`` then checks the ranges).
"""

from __future__ import annotations

import dataclasses
import json
import math
import types
import typing
from pathlib import Path
from typing import Any, Callable, Mapping

from ..errors import InputError, TalkfastError


class RecordError(ValueError):
    """A value that does not fit its schema: ``field`` (a path like ``a.b[2]``, "" for the whole
    record) and ``problem`` (what was expected and what was found)."""

    def __init__(self, field: str, problem: str):
        super().__init__(f"{field or 'the record'}: {problem}")
        self.field, self.problem = field, problem

    def within(self, prefix: str) -> "RecordError":
        """The same error with ``prefix`` in front of its field path."""
        return RecordError(_join(prefix, self.field), self.problem)


def _join(prefix: str, name: str) -> str:
    if not prefix:
        return name
    if not name:
        return prefix
    return f"{prefix}{name}" if name.startswith("[") else f"{prefix}.{name}"


def _shown(value: Any) -> str:
    text = json.dumps(value, default=lambda v: f"<{type(v).__name__}>") if not isinstance(value, float) else repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


class Spec:
    """A schema node: :meth:`check` returns the value (maybe normalised) or raises RecordError."""

    def check(self, value: Any, field: str) -> Any:  # pragma: no cover - abstract
        raise NotImplementedError

    def describe(self) -> str:  # pragma: no cover - abstract
        raise NotImplementedError


class Anything(Spec):
    """Any value (for parts another check owns, e.g. a state dict that ``load_state_dict`` checks)."""

    def check(self, value, field):
        return value

    def describe(self):
        return "anything"


class Num(Spec):
    """A finite number (int or float, not bool) in ``[lo, hi]``; ``above``: strictly above ``lo``."""

    def __init__(self, lo: float | None = None, hi: float | None = None, *, above: bool = False):
        self.lo, self.hi, self.above = lo, hi, above

    def describe(self):
        span = []
        if self.lo is not None:
            span.append(f"{'>' if self.above else '>='} {self.lo:g}")
        if self.hi is not None:
            span.append(f"<= {self.hi:g}")
        return "a finite number" + (f" {' and '.join(span)}" if span else "")

    def check(self, value, field):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise RecordError(field, f"must be {self.describe()}, got {_shown(value)}")
        if self.lo is not None and (value <= self.lo if self.above else value < self.lo):
            raise RecordError(field, f"must be {self.describe()}, got {_shown(value)}")
        if self.hi is not None and value > self.hi:
            raise RecordError(field, f"must be {self.describe()}, got {_shown(value)}")
        return value


class Int(Num):
    """An integer (not bool, not a float) in ``[lo, hi]``."""

    def describe(self):
        return super().describe().replace("a finite number", "an integer")

    def check(self, value, field):
        if isinstance(value, bool) or not isinstance(value, int):
            raise RecordError(field, f"must be {self.describe()}, got {_shown(value)}")
        return super().check(value, field)


class Str(Spec):
    def __init__(self, choices: typing.Iterable[str] | None = None, *, max_len: int = 100_000):
        self.choices, self.max_len = (tuple(choices) if choices is not None else None), max_len

    def describe(self):
        return "one of " + ", ".join(map(repr, self.choices)) if self.choices is not None else "a string"

    def check(self, value, field):
        if not isinstance(value, str) or len(value) > self.max_len or (self.choices is not None and value not in self.choices):
            raise RecordError(field, f"must be {self.describe()}, got {_shown(value)}")
        return value


class Bool(Spec):
    def describe(self):
        return "true or false"

    def check(self, value, field):
        if not isinstance(value, bool):
            raise RecordError(field, f"must be true or false, got {_shown(value)}")
        return value


class Null(Spec):
    """``inner`` or null (None)."""

    def __init__(self, inner: Spec):
        self.inner = inner

    def describe(self):
        return f"{self.inner.describe()} or null"

    def check(self, value, field):
        if value is None:
            return None
        try:
            return self.inner.check(value, field)
        except RecordError as err:
            if err.field == field:
                raise RecordError(field, f"must be {self.describe()}, got {_shown(value)}") from None
            raise


class List(Spec):
    """A list (a tuple too) of ``item``, with at most ``max_len`` items."""

    def __init__(self, item: Spec, *, min_len: int = 0, max_len: int | None = None):
        self.item, self.min_len, self.max_len = item, min_len, max_len

    def describe(self):
        return f"a list of {self.item.describe()}"

    def check(self, value, field):
        if not isinstance(value, (list, tuple)):
            raise RecordError(field, f"must be {self.describe()}, got {_shown(value)}")
        if len(value) < self.min_len or (self.max_len is not None and len(value) > self.max_len):
            raise RecordError(field, f"must have {self.min_len} to {self.max_len} items, has {len(value)}")
        return [self.item.check(v, f"{field}[{i}]") for i, v in enumerate(value)]


class Obj(Spec):
    """An object (dict with string keys) with the ``fields`` given; those in ``required`` must be
    there; other keys are refused unless ``extra`` (then kept unchecked)."""

    def __init__(self, fields: Mapping[str, Spec], required: typing.Iterable[str] = (), *, extra: bool = False):
        self.fields, self.required, self.extra = dict(fields), tuple(required), extra

    def describe(self):
        return "an object"

    def check(self, value, field):
        if not isinstance(value, dict):
            raise RecordError(field, f"must be an object, got {_shown(value)}")
        for name in self.required:
            if name not in value:
                raise RecordError(_join(field, name), "is missing")
        out = {}
        for name, v in value.items():
            spec = self.fields.get(name)
            if spec is None:
                if not self.extra:
                    known = ", ".join(sorted(self.fields)) or "none"
                    raise RecordError(_join(field, str(name)), f"is not a known field: unknown settings are refused (known: {known})")
                out[name] = v
            else:
                out[name] = spec.check(v, _join(field, name))
        return out


class MapOf(Spec):
    """An object whose keys are strings (``keys``: a spec for them, e.g. :class:`Str` with
    choices) and whose values are all ``value``; at most ``max_len`` keys."""

    def __init__(self, value: Spec, *, keys: Str | None = None, max_len: int | None = None):
        self.value, self.keys, self.max_len = value, keys or Str(), max_len

    def describe(self):
        return f"an object of {self.value.describe()}"

    def check(self, value, field):
        if not isinstance(value, dict):
            raise RecordError(field, f"must be {self.describe()}, got {_shown(value)}")
        if self.max_len is not None and len(value) > self.max_len:
            raise RecordError(field, f"must have at most {self.max_len} entries, has {len(value)}")
        out = {}
        for k, v in value.items():
            where = _join(field, str(k))
            try:
                self.keys.check(k, field)
            except RecordError as err:
                raise RecordError(where, f"is not a known entry (keys {err.problem.removeprefix('must be ')})") from None
            out[k] = self.value.check(v, where)
        return out


class Where(Spec):
    """``inner``, then ``test(value)`` true (else ``problem``), e.g. a tensor's dtype."""

    def __init__(self, test: Callable[[Any], bool], problem: str, inner: Spec | None = None):
        self.test, self.problem, self.inner = test, problem, inner or Anything()

    def describe(self):
        return self.problem

    def check(self, value, field):
        self.inner.check(value, field)
        try:
            ok = bool(self.test(value))
        except Exception:  # a test that cannot run on this value: the value does not fit
            ok = False
        if not ok:
            raise RecordError(field, f"must be {self.problem}")
        return value


def dataclass_spec(cls) -> Obj:
    """The spec of a dataclass's JSON form (``dataclasses.asdict``): one field per dataclass field,
    typed by its annotation (str, int, float, bool, tuples, nested dataclasses, ``X | None``), none
    required (the constructor's defaults fill them), unknown keys refused. Ranges are the
    dataclass's own business (its ``__post_init__``)."""
    hints = typing.get_type_hints(cls)
    return Obj({f.name: _spec_of(hints[f.name]) for f in dataclasses.fields(cls)})


def _spec_of(tp) -> Spec:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        rest = [a for a in args if a is not type(None)]
        inner = _spec_of(rest[0]) if len(rest) == 1 else Anything()
        return Null(inner) if type(None) in args else inner
    if origin in (tuple, list):
        return List(_spec_of(args[0]) if args else Anything())
    if tp is bool:
        return Bool()
    if tp is int:
        return Int()
    if tp is float:
        return Num()
    if tp is str:
        return Str()
    if dataclasses.is_dataclass(tp):
        return dataclass_spec(tp)
    return Anything()


def check(value: Any, spec: Spec, field: str = "") -> Any:
    """``value`` checked against ``spec`` (RecordError naming the field otherwise)."""
    return spec.check(value, field)


def checked(value: Any, spec: Spec, *, file: str | Path, error: type[TalkfastError] = InputError,
            what: str = "", field: str = "", hint: str = "") -> Any:
    """:func:`check`, a misfit raised as ``error`` naming ``file`` (``what``: what the file is, for
    the message) and the field; ``hint``: a sentence appended (what to do about it)."""
    try:
        return spec.check(value, field)
    except RecordError as err:
        raise error(describe_error(file, err, what) + (f"; {hint}" if hint else "")) from None


def describe_error(file: str | Path, err: RecordError, what: str = "") -> str:
    where = f"{what} {file}" if what else str(file)
    return f"{where}: {'field ' + repr(err.field) if err.field else 'the content'} {err.problem}"


def _no_constant(name: str):
    raise ValueError(f"{name} is not a finite number")


def parse_json(text: str) -> Any:
    """``json.loads`` refusing NaN, Infinity and -Infinity (ValueError)."""
    return json.loads(text, parse_constant=_no_constant)


def read_json(path: str | Path, *, error: type[TalkfastError] = InputError, what: str = "",
              max_bytes: int = 1 << 26) -> Any:
    """The JSON value in ``path`` (NaN/Infinity refused), or ``error`` naming the file (missing,
    unreadable, too large, not JSON)."""
    path = Path(path)
    where = f"{what} {path}" if what else str(path)
    try:
        if path.stat().st_size > max_bytes:
            raise error(f"{where} is larger than {max_bytes >> 20} MiB: not a file talkfast wrote")
        return parse_json(path.read_text(encoding="utf-8"))
    except OSError as err:
        raise error(f"cannot read {where}: {err.strerror or err}") from None
    except (UnicodeDecodeError, ValueError) as err:
        raise error(f"{where} is not valid JSON ({err})") from None
