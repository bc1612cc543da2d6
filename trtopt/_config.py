"""Config plumbing shared by every stage: (de)serialization and the one validator set.

Configs are frozen dataclasses. :func:`from_dict` builds one from plain data (a recipe section, a JSON
record), rejects unknown keys (a typo is an error, not a silently ignored option) and coerces nested
dicts and lists; :func:`merge` applies overrides (defaults < recipe file < CLI flags) and re-validates.
Every config validates its fields in ``__post_init__`` with the ``check_*`` validators below (and
:func:`field_error` for rules between fields). Each raises a one-line `TrtoptError` "KEY=VALUE ...; fix: ..."
that carries the field's key relative to its config ("opset"); :func:`from_dict` prefixes the section's
path to it ("export.opset"), so a recipe reader points at the line holding the field without parsing the
message.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import types
import typing
from collections.abc import Collection
from typing import Any, TypeVar

from trtopt.errors import TrtoptError

C = TypeVar("C")

#: Largest batch size trtopt runs: exported models declare their dynamic batch axis as 1..65536.
MAX_BATCH_SIZE = 65536
#: Most elements one sample of one input may have: 2**31 - 1, the int32 index limit of TensorRT and of many
#: ONNX Runtime kernels (3x224x224 is 150,528).
MAX_SAMPLE_ELEMENTS = 2**31 - 1


def field_error(key: str, value: Any, problem: str, fix: str) -> TrtoptError:
    """The error for config field ``key`` holding ``value``: one line "KEY=VALUE PROBLEM; fix: FIX".

    The error carries ``key`` (relative to the config that raised it; :func:`from_dict` prefixes the section
    path to both the key and the message). Use it for rules the ``check_*`` validators cannot express,
    e.g. one field's value ruled out by another's.
    """
    return TrtoptError(f"{key}={value!r} {problem}", fix, key=key)


def check_choice(key: str, value: Any, allowed: Collection[str], *, fix: str | None = None) -> None:
    """Raise unless ``value`` is one of ``allowed``."""
    if value not in allowed:
        raise field_error(key, value, f"is not one of {', '.join(allowed)}", fix or f"set {key} to one of those")


def check_int(key: str, value: Any, minimum: int = 1, maximum: int | None = None, *, optional: bool = False,
              fix: str | None = None) -> None:
    """Raise unless ``value`` is an integer (not a bool) in ``minimum..maximum`` (or None when ``optional``)."""
    if optional and value is None:
        return
    ok = isinstance(value, int) and not isinstance(value, bool) and minimum <= value
    if not ok or (maximum is not None and value > maximum):
        what = (f"an integer in {minimum}..{maximum}" if maximum is not None
                else "a positive integer" if minimum == 1 else f"an integer >= {minimum}")
        raise field_error(key, value, f"must be {what}" + (" or None" if optional else ""),
                          fix or f"set {key} to {what}")


def check_number(key: str, value: Any, low: float | None = None, high: float | None = None, *, low_open: bool = False,
                 high_open: bool = False, optional: bool = False, fix: str | None = None) -> None:
    """Raise unless ``value`` is a finite real number (not a bool) inside the interval ``low``..``high``.

    ``low_open``/``high_open`` exclude the bound itself, e.g. ``check_number("ratio", r, 0, 1, high_open=True)``
    is [0, 1); a bound of None is unbounded. None passes when ``optional``.
    """
    if optional and value is None:
        return
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
    if ok and low is not None:
        ok = value > low if low_open else value >= low
    if ok and high is not None:
        ok = value < high if high_open else value <= high
    if not ok:
        if low is not None and high is not None:
            what = f"a number in {'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
        elif low is not None:
            what = f"a number {'>' if low_open else '>='} {low}"
        elif high is not None:
            what = f"a number {'<' if high_open else '<='} {high}"
        else:
            what = "a finite number"
        raise field_error(key, value, f"must be {what}" + (" or None" if optional else ""),
                          fix or f"set {key} to {what}")


def check_ints(key: str, value: Any, minimum: int = 1, maximum: int | None = None, *, nonempty: bool = False,
               fix: str | None = None) -> None:
    """Raise unless ``value`` is a list/tuple of integers (not bools) in ``minimum..maximum``, e.g. batch sizes."""
    ok = isinstance(value, (list, tuple)) and (bool(value) or not nonempty) and all(
        isinstance(v, int) and not isinstance(v, bool) and v >= minimum and (maximum is None or v <= maximum)
        for v in value)
    if not ok:
        bounds = f">= {minimum}" if maximum is None else f"in {minimum}..{maximum}"
        what = f"{'a non-empty' if nonempty else 'a'} list of integers {bounds}"
        raise field_error(key, value, f"must be {what}", fix or f"write {key} as {what}, e.g. [1, 8]")


def check_shape(key: str, value: Any) -> None:
    """Raise unless ``value`` is a non-empty list/tuple of positive integers (one sample's shape, without the
    batch axis) of at most :data:`MAX_SAMPLE_ELEMENTS` elements."""
    check_ints(key, value, nonempty=True,
               fix=f"write {key} as the positive dimensions of one sample, e.g. [3, 224, 224]")
    if math.prod(value) > MAX_SAMPLE_ELEMENTS:
        raise field_error(key, value, f"has {math.prod(value):,} elements per sample, more than "
                          f"{MAX_SAMPLE_ELEMENTS:,} (TensorRT's and ONNX Runtime's int32 index limit)",
                          "check the dimensions")


def check_names(key: str, value: Any, *, nonempty: bool = False, fix: str | None = None) -> None:
    """Raise unless ``value`` is a list/tuple of strings (a single string is the usual mistake)."""
    ok = isinstance(value, (list, tuple)) and (bool(value) or not nonempty) and all(isinstance(v, str) for v in value)
    if not ok:
        what = f"{'a non-empty' if nonempty else 'a'} list of names"
        raise field_error(key, value, f"must be {what}", fix or f"write {key} as a list, e.g. [a, b]")


def field_default(cls: type, name: str) -> Any:
    """The default of field ``name`` of the config class ``cls`` (its ``default_factory`` called if it has one).

    What the CLI shows and uses as a flag's default, so the two never disagree. Raises KeyError for a field
    ``cls`` does not have and ValueError for a field without a default.
    """
    f = cls.__dataclass_fields__[name]
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    raise ValueError(f"{cls.__name__}.{name} has no default")


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

    ``where`` is the dotted path of ``cls`` in the enclosing data ("export." for a recipe's export section).
    Raises TrtoptError naming the offending key by its full dotted path (``TrtoptError.key``): an unknown
    key (with the valid keys), a value of the wrong type, or a value the config's own validation refuses.
    """
    data = dict(data or {})
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names, key=str)
    if unknown:
        raise TrtoptError(f"unknown key {where + str(unknown[0])!r} in {cls.__name__}",
                          f"valid keys: {', '.join(sorted(names))}", key=where + str(unknown[0]))
    kwargs = {k: _coerce(hints[k], _over_default(cls, k, v), f"{where}{k}.") for k, v in data.items()}
    try:
        return cls(**kwargs)
    except TypeError as e:
        raise TrtoptError(f"invalid {cls.__name__}: {e}", "check the recipe against the documented keys",
                          key=where.rstrip(".") or None) from e
    except TrtoptError as e:
        if not where:
            raise
        if e.key is None:  # a rule about the section as a whole: point at the section
            raise TrtoptError(e.problem, e.fix, key=where.rstrip(".")) from e
        # the config's validators name its fields relatively ("opset=5 ..."); say where the field is
        problem = where + e.problem if e.problem.startswith(f"{e.key}=") else e.problem
        raise TrtoptError(problem, e.fix, key=where + e.key) from e

def _over_default(cls: type, name: str, value: Any) -> Any:
    """A mapping given for a field whose default is a config: the mapping merged over that default, so a
    nested section changes only the keys it names (``qat: {training: {epochs: 2}}`` keeps QAT's own
    learning rate and schedule rather than `DistillConfig`'s)."""
    if not isinstance(value, dict):
        return value
    try:
        default = field_default(cls, name)
    except ValueError:  # a field without a default
        return value
    if not dataclasses.is_dataclass(default):
        return value
    # not _merge_dicts: in data, None is a value ("epochs: null" with max_steps), not "flag not given"
    return {**to_dict(default), **value}

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
