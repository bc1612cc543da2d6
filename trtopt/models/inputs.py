"""Input declarations: how a user says what a model takes, from flags, a recipe or the model itself.

One convention for shapes everywhere, trtexec's: ``NAME:DIMS`` with the batch axis included and dims
joined by ``x`` (``input:1x3x224x224``), several inputs separated by commas
(``input_ids:8x64,attention_mask:8x64``). Polygraphy's bracket form ``input:[1,3,224,224]`` is read too.
A declaration sets, per input name, any of: the full example shape (batch included), the dtype, the
value range of random data (integer inputs: token ids, masks) and the axes beyond the batch that are
dynamic, each with a symbol (``seq``, ``height``); axes sharing a symbol (``input_ids`` and
``attention_mask`` axis 1) have the same length.

Sources, applied by :func:`declare_inputs` over the model's own declaration:

- flags: ``--input-shape``, ``--input-dtype``, ``--input-range``, ``--dynamic`` (see :func:`parse_declarations`);
- a recipe's ``inputs:`` section, the same fields as a mapping (see :func:`declarations_from_dict`);
- the model: a ``trtopt_inputs`` attribute on the module (a sequence of
  :class:`~trtopt.models.spec.InputSpec`), read by `trtopt.models.load`; without one, a factory model's
  ``forward`` parameters name its inputs.

Torch-free: the CLI parses flags with it before any model is loaded.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from trtopt._config import MAX_BATCH_SIZE, MAX_SAMPLE_ELEMENTS
from trtopt.errors import TrtoptError
from trtopt.models.spec import InputSpec

#: dtypes an input can be declared with (numpy names).
DTYPES = ("float32", "float16", "float64", "int64", "int32", "int8", "uint8", "bool")

_BRACKET = re.compile(r"^\[(?P<dims>[^\]]*)\]$")


@dataclass(frozen=True)
class InputDeclaration:
    """What a user declares about one input; None fields keep what the model says.

    Attributes:
        name: input name ("" for the only input of a single-input model).
        shape: full example shape, batch axis included (``(1, 3, 224, 224)``).
        dtype: numpy dtype name, one of :data:`DTYPES`.
        low / high: value range of random data, both ends included (Polygraphy's ``--val-range``).
        dynamic_axes: ``((axis, symbol), ...)`` axes beyond the batch (axis >= 1) whose length may vary.
    """

    name: str
    shape: tuple[int, ...] | None = None
    dtype: str | None = None
    low: float | None = None
    high: float | None = None
    dynamic_axes: tuple[tuple[int, str], ...] | None = None


def _split_inputs(value: str) -> list[str]:
    """``a:1x2,b:[1,2]`` → ``["a:1x2", "b:[1,2]"]``: commas separate inputs except inside brackets."""
    items, depth, current = [], 0, ""
    for ch in value:
        depth += ch == "["
        depth -= ch == "]"
        if ch == "," and depth == 0:
            items.append(current)
            current = ""
        else:
            current += ch
    items.append(current)
    return [i.strip() for i in items if i.strip()]


def parse_dims(text: str, where: str) -> tuple[int, ...]:
    """``1x3x224x224`` (trtexec) or ``[1,3,224,224]`` (Polygraphy) → (1, 3, 224, 224).

    Raises TrtoptError naming ``where`` for an unreadable, empty or non-positive shape, or one of more
    elements than ONNX Runtime and TensorRT index.
    """
    bracket = _BRACKET.match(text.strip())
    parts = bracket["dims"].split(",") if bracket else text.strip().lower().split("x")
    try:
        dims = tuple(int(p) for p in parts)
    except ValueError:
        raise TrtoptError(f"cannot read shape {text!r} in {where}",
                          "write dims joined by x, batch first (trtexec), e.g. input:1x3x224x224, "
                          "or input:[1,3,224,224]") from None
    if not dims or any(d <= 0 for d in dims):
        raise TrtoptError(f"shape {text!r} in {where} has no or non-positive dimensions", "e.g. input:1x3x224x224")
    if math.prod(dims) > MAX_SAMPLE_ELEMENTS:
        raise TrtoptError(f"shape {text!r} in {where} has {math.prod(dims):,} elements, more than "
                          f"{MAX_SAMPLE_ELEMENTS:,} (TensorRT's and ONNX Runtime's int32 index limit)",
                          "give a smaller shape")
    return dims


def parse_shape_list(values: Sequence[str] | str | None, flag: str) -> dict[str, tuple[int, ...]]:
    """trtexec shapes: ``["input_ids:8x64,attention_mask:8x64"]`` → {name: full dims}; an unnamed
    single shape (``1x3x224x224``) is keyed "" (the model's only input).

    Raises TrtoptError naming ``flag`` for an unreadable shape or one input given twice.
    """
    shapes: dict[str, tuple[int, ...]] = {}
    for value in [values] if isinstance(values, str) else (values or []):
        for item in _split_inputs(value):
            name, sep, dims = item.rpartition(":") if not item.endswith("]") else _bracket_split(item)
            if name in shapes:
                raise TrtoptError(f"{flag} gives input {name or 'input'!r} twice", "give one shape per input")
            shapes[name] = parse_dims(dims, f"{flag} {value}")
    return shapes


def _bracket_split(item: str) -> tuple[str, str, str]:
    at = item.rfind("[")
    head = item[:at]
    return (head[:-1], ":", item[at:]) if head.endswith(":") else ("", "", item)


def parse_declarations(shapes: Sequence[str] | None = None, dtypes: Sequence[str] | None = None,
                       ranges: Sequence[str] | None = None, dynamic: Sequence[str] | None = None
                       ) -> tuple[InputDeclaration, ...]:
    """Declarations from the CLI flags, each a list of values (flags repeat; commas separate inputs).

    Args:
        shapes: ``--input-shape NAME:DIMS`` (trtexec form, batch included; Polygraphy's ``NAME:[d,...]``).
        dtypes: ``--input-dtype NAME:DTYPE`` (``input_ids:int64``).
        ranges: ``--input-range NAME:[LOW,HIGH]``, Polygraphy's ``--val-range`` form, both ends inclusive
            (``input_ids:[0,30521]``, ``attention_mask:[0,1]``).
        dynamic: ``--dynamic NAME:AXIS=SYMBOL`` (``input_ids:1=seq``): axes beyond the batch exported as dynamic.

    Raises:
        TrtoptError naming the flag and the value for anything unreadable.
    """
    fields: dict[str, dict[str, Any]] = {}
    for name, dims in parse_shape_list(shapes, "--input-shape").items():
        fields.setdefault(name, {})["shape"] = dims
    for name, text in _named(dtypes, "--input-dtype", "input_ids:int64"):
        if text not in DTYPES:
            raise TrtoptError(f"--input-dtype {name}:{text}: unknown dtype", f"use one of {', '.join(DTYPES)}")
        fields.setdefault(name, {})["dtype"] = text
    for name, text in _named(ranges, "--input-range", "input_ids:[0,30521]"):
        bracket = _BRACKET.match(text)
        try:
            low, high = (float(v) for v in bracket["dims"].split(",")) if bracket else (None, None)
        except ValueError:
            bracket = None
        if not bracket or low is None or not low <= high:
            raise TrtoptError(f"cannot read --input-range {name}:{text}",
                              "write NAME:[LOW,HIGH], both ends included, LOW <= HIGH, e.g. input_ids:[0,30521]")
        fields.setdefault(name, {}).update(low=low, high=high)
    for name, text in _named(dynamic, "--dynamic", "input_ids:1=seq"):
        axis, _, symbol = text.partition("=")
        if not axis.isdigit() or int(axis) < 1 or not symbol.isidentifier():
            raise TrtoptError(f"cannot read --dynamic {name}:{text}",
                              "write NAME:AXIS=SYMBOL with AXIS >= 1 (axis 0, the batch, is dynamic unless "
                              "--static-batch), e.g. input_ids:1=seq")
        entry = fields.setdefault(name, {})
        entry["dynamic_axes"] = (*entry.get("dynamic_axes", ()), (int(axis), symbol))
    return tuple(_declaration(name, f) for name, f in fields.items())


def _named(values: Sequence[str] | None, flag: str, example: str) -> list[tuple[str, str]]:
    out = []
    for value in values or []:
        for item in _split_inputs(value):
            name, sep, rest = item.partition(":")
            if not sep or not rest:
                raise TrtoptError(f"cannot read {flag} {item!r}", f"write NAME:VALUE, e.g. {flag} {example}")
            out.append((name, rest))
    return out


def _declaration(name: str, f: Mapping[str, Any]) -> InputDeclaration:
    return InputDeclaration(name, f.get("shape"), f.get("dtype"), f.get("low"), f.get("high"), f.get("dynamic_axes"))


def declarations_from_dict(section: Mapping[str, Any]) -> tuple[InputDeclaration, ...]:
    """A recipe's ``inputs:`` section → declarations; the same fields as the flags.

    ``{"input_ids": {"shape": [8, 64], "dtype": "int64", "range": [0, 30521], "dynamic": {1: "seq"}}}``:
    ``shape`` with the batch axis, ``range`` both ends inclusive, ``dynamic`` axis → symbol.

    Raises TrtoptError naming ``inputs.NAME.KEY`` for an unknown key or an unreadable value.
    """
    out = []
    for name, entry in section.items():
        if not isinstance(entry, Mapping):
            raise TrtoptError(f"inputs.{name} is {entry!r}, not a mapping",
                              "write inputs: {NAME: {shape: [1, 3, 224, 224], dtype: float32}}", key=f"inputs.{name}")
        unknown = set(entry) - {"shape", "dtype", "range", "dynamic"}
        if unknown:
            raise TrtoptError(f"inputs.{name} has unknown key {sorted(unknown)[0]!r}",
                              "use shape, dtype, range, dynamic", key=f"inputs.{name}")
        f: dict[str, Any] = {}
        if "shape" in entry:
            f["shape"] = parse_dims("[" + ",".join(str(d) for d in entry["shape"]) + "]", f"inputs.{name}.shape")
        if "dtype" in entry:
            if entry["dtype"] not in DTYPES:
                raise TrtoptError(f"inputs.{name}.dtype {entry['dtype']!r} is not a dtype trtopt feeds",
                                  f"use one of {', '.join(DTYPES)}", key=f"inputs.{name}.dtype")
            f["dtype"] = entry["dtype"]
        if "range" in entry:
            r = entry["range"]
            if not (isinstance(r, Sequence) and len(r) == 2 and all(isinstance(v, (int, float)) for v in r) and r[0] <= r[1]):
                raise TrtoptError(f"inputs.{name}.range {r!r} is not [LOW, HIGH]", "e.g. range: [0, 30521]",
                                  key=f"inputs.{name}.range")
            f.update(low=float(r[0]), high=float(r[1]))
        if "dynamic" in entry:
            d = entry["dynamic"]
            if not isinstance(d, Mapping) or not all(int(a) >= 1 and str(s).isidentifier() for a, s in d.items()):
                raise TrtoptError(f"inputs.{name}.dynamic {d!r} is not {{AXIS: SYMBOL}} with AXIS >= 1",
                                  "e.g. dynamic: {1: seq}", key=f"inputs.{name}.dynamic")
            f["dynamic_axes"] = tuple((int(a), str(s)) for a, s in d.items())
        out.append(_declaration(name, f))
    return tuple(out)


def declare_inputs(inputs: Sequence[InputSpec], declarations: Sequence[InputDeclaration], spec: str,
                   forward_parameters: Sequence[str] | None = None) -> tuple[InputSpec, ...]:
    """The model's inputs with ``declarations`` applied.

    Args:
        inputs: what the model declares (or, for a factory model without ``trtopt_inputs``, the guess: one image).
        declarations: what the user declares; fields left None keep the model's.
        spec: the model spec, for messages.
        forward_parameters: for a model whose inputs are a guess, the required parameters of its
            ``forward`` in call order: declarations naming them replace the guess, and every one must be
            declared (with a shape). None when the model declares its inputs itself.

    Returns:
        InputSpecs in call order: shapes without the batch axis (its declared length is an example, the
        batch stays dynamic), dtypes, ranges, dynamic axes.

    Raises:
        TrtoptError: a declaration names an input the model does not have; a shape lacks the batch
        axis (the message shows the corrected form) or an unnamed shape is given for a multi-input model;
        an undeclared forward parameter (the message names it and the flags that declare it); a dynamic
        axis outside the input's rank.
    """
    by_name = {d.name: d for d in declarations}
    if "" in by_name:
        if len(inputs) != 1 and not (forward_parameters and len(forward_parameters) == 1):
            names = [s.name for s in inputs] if forward_parameters is None else list(forward_parameters)
            raise TrtoptError(f"an unnamed --input-shape is for a single-input model; {spec} has inputs {', '.join(names)}",
                              "name each input: --input-shape " + ",".join(f"{n}:DIMS" for n in names))
        by_name[inputs[0].name] = replace(by_name.pop(""), name=inputs[0].name)
    current = list(inputs)
    if forward_parameters is not None and (len(forward_parameters) > 1 or any(n not in {s.name for s in inputs}
                                                                             for n in by_name)):
        current = [_from_forward(n, by_name, spec, forward_parameters) for n in forward_parameters]
    names = [s.name for s in current]
    unknown = [n for n in by_name if n not in names]
    if unknown:
        raise TrtoptError(f"input {unknown[0]!r} is declared, but {spec} takes {', '.join(names)}",
                          f"declare the model's inputs by their names ({', '.join(names)})")
    return tuple(_apply(s, by_name[s.name]) if s.name in by_name else s for s in current)


def _from_forward(name: str, by_name: Mapping[str, InputDeclaration], spec: str,
                  parameters: Sequence[str]) -> InputSpec:
    decl = by_name.get(name)
    if decl is None or decl.shape is None:
        shapes = ",".join(f"{p}:{'x'.join(map(str, by_name[p].shape)) if p in by_name and by_name[p].shape else '1xDIMS'}"
                          for p in parameters)
        raise TrtoptError(f"{spec}'s forward() takes input {name!r}, which has no declared shape",
                          f"declare every input: --input-shape {shapes} (with --input-dtype {name}:int64 for ids and "
                          "masks), or a trtopt_inputs attribute on the model (README: Declaring inputs)")
    dtype = decl.dtype or "float32"
    integer = not dtype.startswith("float")
    base = InputSpec(name, decl.shape[1:], dtype, 0.0, 2.0 if integer else 1.0)
    return _apply(base, replace(decl, shape=None, dtype=None))


def _apply(spec: InputSpec, decl: InputDeclaration) -> InputSpec:
    shape = spec.shape
    if decl.shape is not None:
        if spec.batch is not None and len(decl.shape) == len(spec.dims) - 1:
            raise TrtoptError(f"shape {'x'.join(map(str, decl.shape))} of input {spec.name!r} lacks the batch axis "
                              f"(the model's input has rank {len(spec.dims)}, batch included)",
                              f"include it, trtexec style: --input-shape {spec.name}:1x{'x'.join(map(str, decl.shape))}")
        if spec.batch is not None and decl.shape[0] > MAX_BATCH_SIZE:
            raise TrtoptError(f"shape {'x'.join(map(str, decl.shape))} of input {spec.name!r} has batch {decl.shape[0]:,}, "
                              f"beyond the largest batch trtopt runs ({MAX_BATCH_SIZE:,})",
                              f"give a batch (axis 0) from 1 to {MAX_BATCH_SIZE}, e.g. --input-shape "
                              f"{spec.name}:1x{'x'.join(map(str, decl.shape[1:]))}")
        shape = decl.shape[1:] if spec.batch is not None else decl.shape
    dtype = decl.dtype or spec.dtype
    low, high = spec.low, spec.high
    if decl.dtype is not None and decl.dtype != spec.dtype and decl.low is None:
        low, high = (0.0, 2.0) if not decl.dtype.startswith("float") else (low, high)
    if decl.low is not None:
        # InputSpec ranges of integers are [low, high) (numpy's integers); a declared range includes HIGH
        low, high = decl.low, decl.high + (0 if dtype.startswith("float") else 1)
    axes = spec.dynamic_axes if decl.dynamic_axes is None else decl.dynamic_axes
    for axis, symbol in axes:
        if axis > len(shape):
            raise TrtoptError(f"dynamic axis {axis} ({symbol}) of input {spec.name!r} is beyond its shape "
                              f"({'x'.join(map(str, (1, *shape)))}, batch axis 0)", "give an axis from 1 to the rank - 1")
    return InputSpec(spec.name, tuple(shape), dtype, low, high, spec.batch, tuple(axes))


def example_batch(declarations: Sequence[InputDeclaration]) -> int | None:
    """The batch (axis 0) the declared shapes agree on, or None without declared shapes.

    Raises TrtoptError when declared shapes give different batches.
    """
    batches = {d.shape[0] for d in declarations if d.shape}
    if len(batches) > 1:
        raise TrtoptError(f"declared shapes have different batches {sorted(batches)}",
                          "give every input the same batch (axis 0) in --input-shape")
    return batches.pop() if batches else None
