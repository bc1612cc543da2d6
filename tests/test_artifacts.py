"""trtopt.artifacts: ranges files are validated where they are read and where they are written."""

from __future__ import annotations

import json
import math

import pytest

from trtopt.artifacts import Ranges, TensorRange, check_ranges
from trtopt.errors import TrtoptError


def _ranges(**tensors: TensorRange) -> Ranges:
    return Ranges(dict(tensors), "entropy", 8, data_sha256="d" * 64, model_sha256="m" * 64)


def test_valid_ranges_round_trip_including_a_tensor_that_was_always_zero(tmp_path):
    ranges = _ranges(x=TensorRange(2.5, -2.5, 2.4), relu=TensorRange(6.0, 0.0, 6.0), dead=TensorRange(0.0, 0.0, 0.0))
    assert Ranges.load(ranges.save(tmp_path / "r.json")) == ranges


@pytest.mark.parametrize("bad,problem", [
    (TensorRange(math.nan, -1.0, 1.0), "NaN or infinite"), (TensorRange(math.inf, -1.0, 1.0), "NaN or infinite"),
    (TensorRange(1.0, -math.inf, 1.0), "NaN or infinite"), (TensorRange(-1.0, -1.0, 1.0), "amax is negative"),
    (TensorRange(0.0, -0.5, 0.5), "-amax <= min <= max <= amax"), (TensorRange(1.0, -2.0, 1.0), "-amax <= min"),
    (TensorRange(1.0, 0.5, 0.2), "-amax <= min <= max"),
])
def test_unusable_ranges_are_refused_at_write_and_at_read(tmp_path, bad, problem):
    ranges = _ranges(ok=TensorRange(1.0, -1.0, 1.0), conv_out=bad)
    with pytest.raises(TrtoptError, match="tensor 'conv_out'") as err:
        ranges.save(tmp_path / "r.json")
    assert problem in str(err.value) and not (tmp_path / "r.json").exists()
    path = tmp_path / "edited.json"
    path.write_text(json.dumps(ranges.to_dict()), encoding="utf-8")  # NaN and Infinity as Python writes them
    with pytest.raises(TrtoptError, match=f"{path}: tensor 'conv_out'") as err:
        Ranges.load(path)
    assert problem in str(err.value)


@pytest.mark.parametrize("edit,needle", [
    (lambda d: d.update(samples="8"), "field 'samples' is '8' (str), expected a non-negative integer"),
    (lambda d: d.update(samples=True), "field 'samples' is True (bool)"),
    (lambda d: d.update(method=3), "field 'method' is 3 (int), expected a string"),
    (lambda d: d.update(tensors={"x": [1, -1, 1]}), "tensor 'x' is [1, -1, 1], not an object with amax, min and max"),
    (lambda d: d.update(tensors={"x": {"amax": "1", "min": -1, "max": 1}}), "tensor 'x' field 'amax' is '1', not a number"),
    (lambda d: d.update(tensors={"x": {"amax": 1, "min": -1}}), "tensor 'x' field 'max' is None, not a number"),
])
def test_ranges_fields_of_the_wrong_type_are_named(edit, needle):
    data = _ranges(x=TensorRange(1.0, -1.0, 1.0)).to_dict()
    edit(data)
    with pytest.raises(TrtoptError) as err:
        Ranges.from_dict(data, where="r.json")
    assert needle in str(err.value) and err.value.fix


@pytest.mark.parametrize("text,needle", [("", "not valid JSON"), ("[" * 100000, "nested too deeply"),
                                         ("{\"version\": 1", "line 1 column 14")])
def test_unreadable_ranges_files_are_one_error(tmp_path, text, needle):
    path = tmp_path / "r.json"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(TrtoptError, match=needle):
        Ranges.load(path)


def test_check_ranges_accepts_what_calibration_writes():
    check_ranges({"x": TensorRange(3.0, -1.5, 3.0), "zero": TensorRange(0.0, 0.0, 0.0)})
