"""Config plumbing shared by every stage: (de)serialization and the one validator set.

Configs are frozen dataclasses. :func:`from_dict` builds one from plain data (a recipe section, a JSON
record), rejects unknown keys (a typo is an error, not a silently ignored option) and coerces nested
dicts and lists; :func:`merge` applies overrides (defaults < recipe file < CLI flags) and re-validates.
The ``check_*`` validators raise a `TrtoptError` that carries the dotted key of the field it judged,
so a recipe reader points at the line holding it without parsing the message.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from typing import Any, TypeVar

from trtopt.errors import TrtoptError

C = TypeVar("C")


def check_choice(key: str, value: Any, allowed: tuple[str, ...]) -> None:
    """Raise unless ``value`` is one of ``allowed``."""
    if value not in allowed:
        raise TrtoptError(f"{key}={value!r} is not one of {', '.join(allowed)}", f"set {key} to one of those", key=key)


def check_int(key: str, value: Any, minimum: int = 1, optional: bool = False, example: Any = None) -> None:
    """Raise unless ``value`` is an integer (not a bool) >= ``minimum`` (or None when ``optional``)."""
    if optional and value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        what = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
        hint = f"e.g. {example}" if example is not None else f"set {key} to {minimum} or more"
        raise TrtoptError(f"{key}={value!r} must be {what}", hint, key=key)


def check_number(key: str, value: Any, low: float | None = None, high: float | None = None, *,
                 low_open: bool = False, high_open: bool = False, optional: bool = False, example: Any = None) -> None:
    """Raise unless ``value`` is a finite real number inside the interval given by ``low``/``high``.

    ``low_open``/``high_open`` exclude the bound itself, e.g. ``check_number("prune.ratio", r, 0, 1,
    high_open=True)`` is [0, 1).
    """
    if optional and value is None:
        return
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if ok and low is not None:
        ok = value > low if low_open else value >= low
    if ok and high is not None:
        ok = value < high if high_open else value <= high
    if not ok:
        interval = f"{'(' if low_open else '['}{'-inf' if low is None else low}, {'inf' if high is None else high}{')' if high_open else ']'}"
        hint = f"e.g. {example}" if example is not None else f"give a number in {interval}"
        raise TrtoptError(f"{key}={value!r} is not a number in {interval}", hint, key=key)


def check_names(key: str, value: Any) -> None:
    """Raise unless ``value`` is a tuple/list of strings (a single string is the usual mistake)."""
    if isinstance(value, str) or not all(isinstance(v, str) for v in value):
        raise TrtoptError(f"{key}={value!r} is not a list of names", f"write {key} as a list, e.g. [a, b]", key=key)


def to_dict(config: Any) -> Any:
    """A config (or nested configs) as plain JSON/YAML-able data (tuples become lists)."""
    if dataclasses.is_dataclass(config):
        return {f.name: to_dict(getattr(config, f.name)) for f in dataclasses.fields(config)}
    if isinstance(config, (list, tuple)):
        return [to_dict(v) for v in config]
    if isinstance(config, dict):
        return {k: to_dict(v) for k, v in config.items()}
    return config

def from_dict(cls: type[C], data: dict[str, Any] | None, where: str = "") -> C:
    """Build the frozen config ``cls`` from plain data, rejecting unknown keys and coercing lists.

    Raises TrtoptError naming the offending key (with its dotted path) and the valid keys.
    """
    data = dict(data or {})
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names, key=str)
    if unknown:
        raise TrtoptError(f"unknown key {where + str(unknown[0])!r} in {cls.__name__}",
                          f"valid keys: {', '.join(sorted(names))}", key=where + str(unknown[0]))
    kwargs = {k: _coerce(hints[k], v, f"{where}{k}.") for k, v in data.items()}
    try:
        return cls(**kwargs)
    except TypeError as e:
        raise TrtoptError(f"invalid {cls.__name__}: {e}", "check the recipe against the documented keys",
                          key=where.rstrip(".") or None) from e
    except TrtoptError as e:
        if e.key is None:  # a field's own validation: point at the field it names, else at this section
            named = [n for n in names if f"{n}=" in e.problem or f".{n} " in e.problem or f"{n} " in e.problem]
            e.key = where + max(named, key=len) if named else (where.rstrip(".") or None)
        elif where and not e.key.startswith(where):
            e.key = where + e.key.rpartition(".")[2]
        raise

def _coerce(hint: Any, value: Any, where: str) -> Any:
    """Convert YAML/JSON data to the annotated type: nested configs, tuples, dicts of tuples."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None:
            return None
        non_none = [a for a in args if a is not type(None)]
        return _coerce(non_none[0], value, where) if len(non_none) == 1 else value
    if dataclasses.is_dataclass(hint):
        if isinstance(value, hint):
            return value
        if not isinstance(value, dict):
            raise TrtoptError(f"{where.rstrip('.')} must be a mapping", f"write it as keys of {hint.__name__}")
        return from_dict(hint, value, where)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise _type_error(where, value, "a list")
        inner = args[0] if args else Any
        return tuple(_coerce(inner, v, where) for v in value)
    if origin is dict:
        if not isinstance(value, dict):
            raise _type_error(where, value, "a mapping")
        inner = args[1] if len(args) == 2 else Any
        return {k: _coerce(inner, v, where) for k, v in value.items()}
    if hint is bool and not isinstance(value, bool):
        raise _type_error(where, value, "true or false")
    if hint is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise _type_error(where, value, "an integer")
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise _type_error(where, value, "a number")
        return float(value)
    if hint is str and not isinstance(value, str):
        raise _type_error(where, value, "a string")
    return value

def _type_error(where: str, value: Any, expected: str) -> TrtoptError:
    key = where.rstrip(".")
    return TrtoptError(f"{key} is {value!r} ({type(value).__name__}), expected {expected}",
                       f"write {key} as {expected}", key=key)

def merge(config: C, overrides: dict[str, Any]) -> C:
    """Return ``config`` with ``overrides`` applied (None values are ignored: "flag not given").

    Nested configs take nested dicts, at any depth: ``merge(recipe, {"export": {"opset": 17}})`` changes
    only ``export.opset`` and keeps the rest of ``recipe.export``.
    """
    return from_dict(type(config), _merge_dicts(to_dict(config), overrides))

def _merge_dicts(current: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """``current`` updated by ``overrides`` at any depth, skipping None values."""
    merged = dict(current)
    for key, value in overrides.items():
        if value is None:
            continue
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge_dicts(merged[key], value)
        else:
            merged[key] = value
    return merged
