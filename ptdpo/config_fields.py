"""JSON config values checked against a dataclass's field annotations.

One checker for every typed config section: ``TrainConfig`` and ``PTDConfig``, the run config's own
sections (``ptdpo.run_config``), and the dataclasses of other parts that the run config composes
(``DatasetSpec``, ``GenerationConfig``, ``AuditConfig``, the hint generators' constructors). The type a
field declares is the check, as JSON gives values:

- ``bool``: ``true`` or ``false`` only (the string ``"false"`` is truthy in Python);
- ``int``: an integer, not a boolean, a number with a fraction or a string;
- ``float``: any number (an integer too), not a boolean;
- ``str``; ``Literal[...]`` (the allowed values are listed in the message); ``X | None``; unions;
- ``list[T]``; ``tuple[A, B]`` (an array of exactly that length); ``tuple[T, ...]``; ``dict[str, T]``;
- a nested dataclass: an object checked field by field, recursively;
- ``Annotated[T, Range(...)]`` (and :data:`PositiveInt` etc.): a range, checked once the type is right;
  ``Annotated[T, Doc("...")]`` says what the value is in the message.

Every problem names the key path (``train.ptd.lambda_ptd``) and the offending value with its JSON type,
and every problem of a section is collected (:func:`problems_for`) before anything is built
(:func:`build`): a config is fixed in one go, not one error per attempt.
"""

from __future__ import annotations

import dataclasses
import json
import math
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Annotated, Any, Literal, TypeVar, Union

T = TypeVar("T")


@dataclass(frozen=True)
class Range:
    """Bounds of a number: ``Range(gt=0)``, ``Range(ge=0, le=1)``..."""

    gt: float | None = None
    ge: float | None = None
    lt: float | None = None
    le: float | None = None

    def text(self) -> str:
        low = f"> {self.gt}" if self.gt is not None else f">= {self.ge}" if self.ge is not None else None
        high = f"< {self.lt}" if self.lt is not None else f"<= {self.le}" if self.le is not None else None
        if low and high:
            lo_b, hi_b = ("(" if self.gt is not None else "["), (")" if self.lt is not None else "]")
            lo_v = self.gt if self.gt is not None else self.ge
            hi_v = self.lt if self.lt is not None else self.le
            return f"in {lo_b}{_num(lo_v)}, {_num(hi_v)}{hi_b}"
        return low or high or "any number"

    def holds(self, v: float) -> bool:
        if isinstance(v, float) and not math.isfinite(v):
            return False
        return ((self.gt is None or v > self.gt) and (self.ge is None or v >= self.ge)
                and (self.lt is None or v < self.lt) and (self.le is None or v <= self.le))


@dataclass(frozen=True)
class Doc:
    """What a value is, for the message: ``Annotated[int, Doc("the number of training nodes"), ...]``."""

    text: str


@dataclass(frozen=True)
class NonEmpty:
    """A string that is not blank, or a list with at least one element."""


def _num(v: float) -> str:
    return str(int(v)) if float(v).is_integer() else str(v)


PositiveInt = Annotated[int, Range(ge=1)]
NonNegativeInt = Annotated[int, Range(ge=0)]
PositiveFloat = Annotated[float, Range(gt=0)]
NonNegativeFloat = Annotated[float, Range(ge=0)]
Probability = Annotated[float, Range(ge=0, le=1)]
Fraction = Annotated[float, Range(gt=0, le=1)]  # a share that cannot be zero (top_p, tau_ptd)
Name = Annotated[str, NonEmpty()]


# ------------------------------------------------------------------------------------------ messages
def _json_kind(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "a boolean"
    if isinstance(v, int):
        return "an integer"
    if isinstance(v, float):
        return "a number"
    if isinstance(v, str):
        return "a string"
    if isinstance(v, list | tuple):
        return "an array"
    if isinstance(v, Mapping):
        return "an object"
    return f"a {type(v).__name__}"


def show(v: Any) -> str:
    """The value as the user wrote it (JSON), shortened, with its JSON type: ``"0.05" (a string)``."""
    try:
        text = json.dumps(v, default=str)
    except (TypeError, ValueError):
        text = repr(v)
    if len(text) > 80:
        text = text[:77] + "..."
    return f"{text} ({_json_kind(v)})"


def _strip(hint: Any) -> tuple[Any, list[Any]]:
    """(the type under ``Annotated``, its metadata)."""
    if typing.get_origin(hint) is Annotated:
        base, *meta = typing.get_args(hint)
        inner, more = _strip(base)
        return inner, list(meta) + more
    return hint, []


def expected(hint: Any) -> str:
    """The type in words: ``an integer``, ``true or false``, ``one of ['fp32', 'bf16']``..."""
    base, _ = _strip(hint)
    origin, args = typing.get_origin(base), typing.get_args(base)
    if base is Any:
        return "anything"
    if base is type(None):
        return "null"
    if base is bool:
        return "true or false"
    if base is int:
        return "an integer"
    if base is float:
        return "a number"
    if base is str:
        return "a string"
    if origin is Literal:
        return f"one of {list(args)}"
    if origin in (Union, types.UnionType):
        return _any_of(args)
    if origin is list or base is list:
        return f"an array of {_plural(args[0])}" if args else "an array"
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return f"an array of {_plural(args[0])}"
        if len(set(map(expected, args))) == 1:
            return f"an array of {len(args)} {_plural(args[0])}"
        return f"an array of {len(args)} ({', '.join(expected(a) for a in args)})"
    if origin is dict or base is dict or dataclasses.is_dataclass(base):
        return "an object"
    return f"a {getattr(base, '__name__', base)}"


def _any_of(args: tuple[Any, ...]) -> str:
    return " or ".join(expected(a) for a in args)


def _plural(hint: Any) -> str:
    words = expected(hint)
    for article in ("an ", "a "):
        if words.startswith(article):
            return words[len(article):] + "s"
    return words


# ------------------------------------------------------------------------------------------- checks
def check_value(value: Any, hint: Any, where: str) -> list[str]:
    """Problems of ``value`` (from JSON, or an attribute of a dataclass instance) as a ``hint``."""
    base, meta = _strip(hint)
    doc = next((m.text for m in meta if isinstance(m, Doc)), None)
    problems = _type_problems(value, base, where)
    if problems:
        if doc and len(problems) == 1 and problems[0].startswith(f"{where}: "):
            problems = [f"{where}: {doc}: {problems[0][len(where) + 2:]}"]
        return problems
    for m in meta:
        if isinstance(m, Range) and value is not None and not m.holds(value):
            problems.append(f"{where}: {doc + ': ' if doc else ''}must be {m.text()}, got {show(value)}")
        elif isinstance(m, NonEmpty) and value is not None and not (value.strip() if isinstance(value, str) else value):
            problems.append(f"{where}: {doc + ': ' if doc else ''}must not be empty, got {show(value)}")
    return problems


def _type_problems(value: Any, base: Any, where: str) -> list[str]:
    origin, args = typing.get_origin(base), typing.get_args(base)
    wrong = [f"{where}: expected {expected(base)}, got {show(value)}"]
    if base is Any:
        return []
    if base is type(None):
        return [] if value is None else wrong
    if base is bool:
        return [] if isinstance(value, bool) else wrong
    if base is int:
        return [] if isinstance(value, int) and not isinstance(value, bool) else wrong
    if base is float:
        return [] if isinstance(value, int | float) and not isinstance(value, bool) else wrong
    if base is str:
        return [] if isinstance(value, str) else wrong
    if origin is Literal:
        if any(value == a and type(value) is type(a) for a in args):
            return []
        return [f"{where}: {show(value)} is not one of {list(args)}"]
    if origin in (Union, types.UnionType):
        return _union_problems(value, args, where)
    if origin is list or base is list:
        if not isinstance(value, list):
            return wrong
        return [p for i, v in enumerate(value) for p in (check_value(v, args[0], f"{where}[{i}]") if args else [])]
    if origin is tuple:
        if not isinstance(value, list | tuple):
            return wrong
        if len(args) == 2 and args[1] is Ellipsis:
            return [p for i, v in enumerate(value) for p in check_value(v, args[0], f"{where}[{i}]")]
        if len(value) != len(args):
            return [f"{where}: expected {expected(base)}, got {show(value)} with {len(value)} element(s)"]
        return [p for i, (v, a) in enumerate(zip(value, args)) for p in check_value(v, a, f"{where}[{i}]")]
    if origin is dict or base is dict:
        if not isinstance(value, Mapping):
            return wrong
        key_t, val_t = args if args else (Any, Any)
        out = []
        for k, v in value.items():
            out += check_value(k, key_t, f"{where} key {k!r}") + check_value(v, val_t, key_path(where, k))
        return out
    if dataclasses.is_dataclass(base):
        if isinstance(value, base):
            return instance_problems(value, where)
        return problems_for(base, value, where)
    if isinstance(base, type):
        return [] if isinstance(value, base) else wrong
    return []  # a type this checker does not know (a Protocol, a Callable): left to the code that uses it


def _union_problems(value: Any, args: tuple[Any, ...], where: str) -> list[str]:
    if value is None:
        return [] if type(None) in args else [f"{where}: expected {_any_of(args)}, got {show(value)}"]
    per_member = [(a, check_value(value, a, where)) for a in args if a is not type(None)]
    if any(not p for _, p in per_member):
        return []
    # The value has the right type for one member but breaks its range or its elements: say that,
    # not "expected X or Y".
    for a, p in per_member:
        if not _type_problems(value, _strip(a)[0], where) or _shallow_match(value, _strip(a)[0]):
            return p
    return [f"{where}: expected {_any_of(args)}, got {show(value)}"]


def _shallow_match(value: Any, base: Any) -> bool:
    origin = typing.get_origin(base) or base
    if origin in (list, tuple):
        return isinstance(value, list | tuple)
    if origin is dict or dataclasses.is_dataclass(base):
        return isinstance(value, Mapping)
    return False


def key_path(where: str, key: Any) -> str:
    """``train.ptd`` + ``k`` -> ``train.ptd.k``; a top-level key (``where`` empty) is just its name."""
    return f"{where}.{key}" if where else str(key)


def field_hints(cls: type) -> dict[str, Any]:
    """The resolved annotations of a dataclass's init fields (``Annotated`` metadata kept)."""
    hints = typing.get_type_hints(cls, include_extras=True)
    return {f.name: hints.get(f.name, Any) for f in dataclasses.fields(cls) if f.init}


def unknown_keys_problem(where: str, unknown: list[str], known: list[str]) -> str:
    what = f"unknown key {unknown[0]!r}" if len(unknown) == 1 else f"unknown keys {unknown}"
    return f"{where or 'config'}: {what}; known: {sorted(known)}"


def problems_for(cls: type, data: Any, where: str, *, partial: bool = False,
                 ranges: Mapping[str, Range] | None = None) -> list[str]:
    """Every problem of ``data`` (a JSON object) as the dataclass ``cls``: not an object, unknown keys,
    missing required fields (unless ``partial``), and each value against its field's annotation.
    ``ranges`` adds bounds to fields of a class whose annotations carry none."""
    if not isinstance(data, Mapping):
        return [f"{where}: expected an object, got {show(data)}"]
    hints = field_hints(cls)
    problems = []
    unknown = sorted(set(data) - set(hints))
    if unknown:
        problems.append(unknown_keys_problem(where, unknown, list(hints)))
    if not partial:
        for f in dataclasses.fields(cls):
            if f.init and f.name not in data and f.default is dataclasses.MISSING \
                    and f.default_factory is dataclasses.MISSING:
                problems.append(f"{key_path(where, f.name)}: missing ({expected(hints[f.name])})")
    for name, value in data.items():
        if name in hints:
            hint = hints[name]
            if ranges and name in ranges:
                hint = Annotated[hint, ranges[name]]
            problems += check_value(value, hint, key_path(where, name))
    return problems


def instance_problems(obj: Any, where: str) -> list[str]:
    """Every field of a dataclass instance against its annotation (a config built in code)."""
    return [p for name, hint in field_hints(type(obj)).items()
            for p in check_value(getattr(obj, name), hint, key_path(where, name))]


def convert(value: Any, hint: Any, where: str = "") -> Any:
    """A checked JSON value as the annotation's Python type: arrays -> tuples, objects -> nested
    dataclasses (built with :func:`build`)."""
    base, _ = _strip(hint)
    origin, args = typing.get_origin(base), typing.get_args(base)
    if value is None:
        return None
    if origin in (Union, types.UnionType):
        for a in args:
            if a is not type(None) and not check_value(value, a, ""):
                return convert(value, a, where)
        return value
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(convert(v, args[0], f"{where}[{i}]") for i, v in enumerate(value))
        return tuple(convert(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
    if origin is list and args:
        return [convert(v, args[0], f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict and args:
        return {k: convert(v, args[1], key_path(where, k)) for k, v in value.items()}
    if dataclasses.is_dataclass(base) and isinstance(value, Mapping):
        return build(base, value, where)
    return value


def build(cls: type[T], data: Mapping[str, Any], where: str,
          check: Callable[[T, str], list[str]] | None = None) -> T:
    """``cls`` from a JSON object, or :class:`FieldProblems` listing every problem found (the typed
    checks first; ``check(obj, where)`` adds the checks that need several fields)."""
    problems = problems_for(cls, data, where)
    if problems:
        raise FieldProblems(problems)
    hints = field_hints(cls)
    try:
        obj = cls(**{k: convert(v, hints[k], key_path(where, k)) for k, v in data.items()})
    except (TypeError, ValueError) as e:
        raise FieldProblems([f"{where}: {e}"]) from e
    if check is not None:
        problems = check(obj, where)
        if problems:
            raise FieldProblems(problems)
    return obj


class FieldProblems(ValueError):
    """Values that do not fit their fields; ``problems`` lists them all, each naming its key path."""

    def __init__(self, problems: list[str]):
        self.problems = list(problems)
        super().__init__("; ".join(self.problems))
