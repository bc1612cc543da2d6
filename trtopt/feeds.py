"""Feeds, and the one check of a feed against a model's inputs.

A *feed* is a dict from input name to a numpy array whose axis 0 is the batch (sample) axis. Whatever
hands arrays to a model checks them here, against the model's :class:`~trtopt.models.spec.InputSpec`
declarations: data loading, export, calibration (ONNX Runtime and TensorRT) and every runner
(`trtopt.backends.base.Runner.check_feed`). One function, so one feed gets the same verdict and the same
one-line error everywhere.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, NoReturn

import numpy as np

from trtopt.errors import TrtoptError
from trtopt.models.spec import InputSpec

Feed = dict[str, np.ndarray]

# dtype kinds a feed may be cast between without changing what its values mean: float64 data for a
# float32 input, int32 token ids for an int64 input, and bool masks (0/1) for any numeric input. Other
# casts across families (floats into an int input, ints such as uint8 pixels into a float input) would
# truncate or skip the model's preprocessing, so they are errors.
_FAMILIES = {"f": "float", "i": "integer", "u": "integer", "b": "bool"}


class CheckedFeed(dict):
    """A feed :func:`check_feed` accepted: arrays cast to the inputs' dtypes and C-contiguous.

    Read-only, so a runner handed it again (every timed call of a benchmark) trusts it without checking
    it again: a runner re-checks only a feed checked against other inputs. Copies and pickles as a plain
    dict. Attributes: ``inputs``, the specs it was checked against; ``samples``, its batch size.
    """

    __slots__ = ("inputs", "samples")

    def __init__(self, arrays: Mapping[str, np.ndarray], inputs: tuple[InputSpec, ...], samples: int):
        super().__init__(arrays)
        self.inputs = inputs
        self.samples = samples

    def _read_only(self, *args: Any, **kwargs: Any) -> NoReturn:
        raise TypeError("a checked feed is read-only; copy it with dict(feed) to change it")

    __setitem__ = __delitem__ = __ior__ = clear = pop = popitem = setdefault = update = _read_only

    def __reduce__(self) -> tuple[type, tuple[dict]]:
        return dict, (dict(self),)


def as_feed(item: Any, inputs: Sequence[InputSpec], source: str, model: str | None = None) -> Feed:
    """One batch as a feed: a mapping as is (torch tensors to numpy), an array for a single-input model.

    Raises TrtoptError naming ``source`` for anything else (an array for a multi-input model, a list).
    """
    if isinstance(item, Mapping):
        return {str(k): _to_numpy(v) for k, v in item.items()}
    if len(inputs) == 1 and (isinstance(item, np.ndarray) or hasattr(item, "__array__") or hasattr(item, "detach")):
        return {inputs[0].name: _to_numpy(item)}
    names = ", ".join(s.name for s in inputs)
    raise TrtoptError(f"{source} is a {type(item).__name__}, not a dict of arrays "
                      f"({model or 'the model'} has {len(inputs)} input{'s' if len(inputs) != 1 else ''})",
                      f"give dicts mapping {names} to arrays (axis 0 = samples)")


def check_feed(feed: Mapping[str, Any], inputs: Sequence[InputSpec], *, model: str | None = None,
               source: str = "inputs", allow_extra: bool = False, finite: bool = True,
               first_sample: int = 0) -> CheckedFeed:
    """Check ``feed`` against ``inputs`` and cast it to their dtypes.

    Checks, in this order, each failure a one-line TrtoptError naming the input with what was expected
    and what was got: every input present (and, unless ``allow_extra``, no other); each array's rank and
    fixed dims (symbolic dims take any length; a fixed batch axis must match exactly); the same sample
    count on every input whose batch axis is symbolic; a dtype of the input's family (float, integer or
    bool; within it the array is cast, e.g. float64 → float32, int32 → int64; bool is cast to any numeric
    input); at least one sample; with ``finite``, no NaN or inf in float inputs.

    Args:
        feed: input name → array (or anything ``np.asarray`` takes); axis 0 is the batch axis.
        inputs: the model's inputs, in call order.
        model: how errors name the model ("resnet18.onnx"); default "the model".
        source: how errors name the feed ("calibration batch 3", "x.npz"); a plural noun phrase.
        allow_extra: leave out arrays no input takes (runners: one feed serves several models) instead of
            refusing them (data files, calibration data: a stray array is a mistake).
        finite: refuse NaN and inf (data for calibration, export and evaluation); runners leave values alone.
        first_sample: index of the feed's first sample in the whole data, so a NaN error names the sample.

    Returns:
        A read-only :class:`CheckedFeed` of exactly ``inputs``' arrays, with ``samples``: the common
        length of the symbolic batch axes; without any, the fixed batch when all inputs agree, else 1.

    Raises:
        TrtoptError: as listed above; also for an input whose dtype trtopt cannot feed (strings, sequences).
    """
    inputs = tuple(inputs)
    names = [s.name for s in inputs]
    the_model = model or "the model"
    missing = [n for n in names if n not in feed]
    if missing:
        of = f" of {model}" if model else ""
        raise TrtoptError(f"{source} lack input {missing[0]!r}{of} (have {', '.join(map(str, feed)) or 'none'})",
                          f"provide arrays named {', '.join(names)}")
    extra = [k for k in feed if k not in names]
    if extra and not allow_extra:
        raise TrtoptError(f"{source} have unexpected input {extra[0]!r}, which {the_model} does not take",
                          f"the model's inputs are {', '.join(names)}")
    arrays = {s.name: np.asarray(feed[s.name]) for s in inputs}
    for spec in inputs:
        _check_shape(arrays[spec.name], spec, the_model)
    counts = {arrays[s.name].shape[0] for s in inputs if isinstance(s.batch, str)}
    if len(counts) > 1:
        raise TrtoptError(f"{source} have different sample counts per input {sorted(counts)}",
                          "give every input the same number of samples")
    fixed = {s.batch if isinstance(s.batch, int) else 1 for s in inputs if not isinstance(s.batch, str)}
    samples = counts.pop() if counts else (fixed.pop() if len(fixed) == 1 else 1)
    out = {}
    for spec in inputs:
        arr = _cast(arrays[spec.name], spec, the_model)
        out[spec.name] = arr if arr.flags.c_contiguous else np.ascontiguousarray(arr)
    if samples == 0:
        empty = next((s.name for s in inputs if isinstance(s.batch, str)), names[0])
        raise TrtoptError(f"{source} hold no samples for input {empty!r}", "provide at least one sample")
    if finite:
        for name, arr in out.items():
            if arr.dtype.kind == "f" and arr.size:
                rows = np.isfinite(arr).reshape(arr.shape[0] if arr.ndim else 1, -1).all(axis=1)
                if not rows.all():
                    sample = first_sample + int(np.argmin(rows))
                    raise TrtoptError(f"input {name!r} contains NaN or inf (sample {sample}) in {source}",
                                      "clean or drop those samples")
    return CheckedFeed(out, inputs, samples)


def _check_shape(arr: np.ndarray, spec: InputSpec, model: str) -> None:
    dims = spec.dims
    if arr.ndim == len(dims) and all(not isinstance(d, int) or d == n for d, n in zip(dims, arr.shape)):
        return
    if arr.ndim == len(dims) and isinstance(spec.batch, int) and \
            all(not isinstance(d, int) or d == n for d, n in zip(dims[1:], arr.shape[1:])):
        fix = (f"{model} is built for batches of exactly {spec.batch}: feed {spec.batch} at a time "
               f"(batch_size={spec.batch}), or re-export it for the batch size you need")
    else:
        fix = "pass data of the model's input shape, samples on axis 0, or set --input-shape to the shape the data has"
    raise TrtoptError(f"input {spec.name!r} has shape {tuple(arr.shape)}, {model} expects "
                      f"({', '.join(map(str, dims))})", fix)


def _cast(arr: np.ndarray, spec: InputSpec, model: str) -> np.ndarray:
    if spec.dtype == "unknown" or arr.dtype.name == spec.dtype:
        return arr
    try:
        expected = np.dtype(spec.dtype)
    except TypeError:
        expected = None
    if expected is None or expected.kind not in _FAMILIES:
        raise TrtoptError(f"input {spec.name!r} of {model} has type {spec.dtype}, which trtopt cannot feed",
                          "trtopt feeds bool, integer and floating-point tensors; run this model with its own runtime")
    if _FAMILIES.get(arr.dtype.kind) != _FAMILIES[expected.kind] and arr.dtype.kind != "b":
        raise TrtoptError(f"input {spec.name!r} has dtype {arr.dtype.name}, {model} expects {spec.dtype}",
                          f"convert the data to {spec.dtype} (e.g. array.astype('{spec.dtype}'))")
    return arr.astype(expected)


def _to_numpy(value: Any) -> np.ndarray:
    if hasattr(value, "detach"):  # a torch tensor, possibly on the GPU or requiring grad
        value = value.detach().cpu().numpy()
    return np.asarray(value)
