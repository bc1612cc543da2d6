"""trtopt.feeds: the one check of a feed against a model's inputs, and the input descriptor it reads."""

from __future__ import annotations

import copy
import pickle

import numpy as np
import pytest
import torch

from trtopt.errors import TrtoptError
from trtopt.feeds import CheckedFeed, as_feed, check_feed
from trtopt.models.spec import InputSpec

IMAGE = InputSpec("input", (3, 4, 4))  # batch "N": any size
MLP = (InputSpec("features", (6,)), InputSpec("mask", (6,), "int64"))
TOKENS = InputSpec.from_dims("tokens", ["batch", "seq"], "int64")  # an ONNX signature: symbolic axes


def _images(n=2, dtype=np.float32):
    return np.arange(n * 48, dtype=dtype).reshape(n, 3, 4, 4)


def _mlp(n=3):
    return {"features": np.ones((n, 6), np.float32), "mask": np.ones((n, 6), np.int64)}


def _error(call, *needles):
    with pytest.raises(TrtoptError) as err:
        call()
    text = str(err.value)
    assert "\n" not in text and "; fix: " in text, text
    for needle in needles:
        assert needle in text, (needle, text)
    return text


# --- the descriptor -----------------------------------------------------------------------------------

def test_input_spec_from_full_dims():
    assert TOKENS == InputSpec("tokens", ("seq",), "int64", batch="batch") and TOKENS.dims == ("batch", "seq")
    engine = InputSpec.from_dims("x", (-1, 3, 8, 8), "float16")  # TensorRT: -1 is dynamic
    assert engine.batch == "?" and engine.shape == (3, 8, 8)
    static = InputSpec.from_dims("x", (2, 3, 8, 8), "float32")  # an edge sidecar / static ONNX
    assert static.batch == 2 and static.dims == (2, 3, 8, 8)
    assert InputSpec.from_dims("s", (), "float32").dims == () and InputSpec.from_dims("s", (), "float32").batch is None
    assert InputSpec.from_dims("x", (None, ""), "float32").dims == ("?", "?")
    assert IMAGE.dims == ("N", 3, 4, 4)  # a model's declaration: batch of any size


# --- what passes, and what comes out ------------------------------------------------------------------

def test_a_fitting_feed_is_cast_within_its_family_and_made_contiguous():
    features = np.asfortranarray(np.ones((3, 6)))  # float64, not C-contiguous
    checked = check_feed({"features": features, "mask": np.ones((3, 6), np.int32)}, MLP)
    assert isinstance(checked, CheckedFeed) and list(checked) == ["features", "mask"] and checked.samples == 3
    assert checked["features"].dtype == np.float32 and checked["mask"].dtype == np.int64
    masks = check_feed({"features": np.ones((3, 6), bool), "mask": np.ones((3, 6), bool)}, MLP)  # bool: 0/1 exactly
    assert masks["features"].dtype == np.float32 and masks["mask"].dtype == np.int64 and masks["mask"].sum() == 18
    assert all(a.flags.c_contiguous for a in checked.values())
    assert checked.inputs == MLP


def test_matching_arrays_are_not_copied():
    x = _images()
    assert check_feed({"input": x}, [IMAGE])["input"] is x


def test_symbolic_axes_take_any_length():
    for seq in (1, 7):
        assert check_feed({"tokens": np.zeros((2, seq), np.int64)}, [TOKENS]).samples == 2


def test_samples_of_static_and_scalar_inputs():
    static = (InputSpec.from_dims("x", (4, 3), "float32"), InputSpec.from_dims("y", (4,), "float32"))
    assert check_feed({"x": np.zeros((4, 3)), "y": np.zeros(4)}, static).samples == 4
    # a 0-d input has no batch axis; beside a batched input it does not count, alone it is one call
    scalar = InputSpec.from_dims("scale", (), "float32")
    checked = check_feed({"input": _images(5), "scale": np.float32(2.0)}, [IMAGE, scalar])
    assert checked.samples == 5 and checked["scale"].shape == ()
    assert check_feed({"scale": np.array(2.0)}, [scalar]).samples == 1


def test_unknown_dtype_takes_the_array_as_is():
    spec = InputSpec("x", (2,), "unknown")
    assert check_feed({"x": np.zeros((1, 2), np.int16)}, [spec])["x"].dtype == np.int16


# --- each failure, one line naming the input, expected and got, and a fix ----------------------------

def test_missing_input():
    _error(lambda: check_feed({"features": np.ones((2, 6), np.float32)}, MLP, model="mlp.onnx", source="x.npz"),
           "x.npz lack input 'mask' of mlp.onnx (have features)", "fix: provide arrays named features, mask")
    _error(lambda: check_feed({}, [IMAGE]), "inputs lack input 'input' (have none)")


def test_unexpected_input_is_refused_or_left_out():
    feed = {**_mlp(), "labels": np.zeros(3)}
    _error(lambda: check_feed(feed, MLP, model="mlp.onnx"),
           "inputs have unexpected input 'labels', which mlp.onnx does not take",
           "the model's inputs are features, mask")
    assert list(check_feed(feed, MLP, allow_extra=True)) == ["features", "mask"]


def test_wrong_rank():
    _error(lambda: check_feed({"input": np.zeros((2, 48), np.float32)}, [IMAGE], model="cnn.onnx"),
           "input 'input' has shape (2, 48), cnn.onnx expects (N, 3, 4, 4)", "--input-shape")
    _error(lambda: check_feed({"input": np.zeros((3, 4, 4), np.float32)}, [IMAGE]),  # no batch axis
           "input 'input' has shape (3, 4, 4), the model expects (N, 3, 4, 4)")


def test_wrong_fixed_dim():
    _error(lambda: check_feed({"tokens": np.zeros((2, 5, 1), np.int64)}, [TOKENS]),
           "input 'tokens' has shape (2, 5, 1), the model expects (batch, seq)")
    _error(lambda: check_feed({"input": np.zeros((2, 3, 4, 5), np.float32)}, [IMAGE], model="cnn.onnx"),
           "input 'input' has shape (2, 3, 4, 5), cnn.onnx expects (N, 3, 4, 4)", "samples on axis 0")


def test_wrong_fixed_batch_says_which_batch_size():
    static = InputSpec.from_dims("input", (2, 3, 4, 4), "float32")
    text = _error(lambda: check_feed({"input": _images(4)}, [static], model="m.pte"),
                  "input 'input' has shape (4, 3, 4, 4), m.pte expects (2, 3, 4, 4)", "batch_size=2")
    assert "--input-shape" not in text  # the per-sample shape is right: only the batch is


@pytest.mark.parametrize("given, expected", [(np.int32, "float32"), (np.uint8, "float32"), (np.float64, "int64"),
                                             (np.float32, "bool"), (np.int64, "bool")])
def test_dtype_of_another_family(given, expected):
    spec = InputSpec("x", (2,), expected)
    _error(lambda: check_feed({"x": np.zeros((1, 2), given)}, [spec], model="m.onnx"),
           f"input 'x' has dtype {np.dtype(given).name}, m.onnx expects {expected}",
           f"convert the data to {expected} (e.g. array.astype('{expected}'))")


def test_dtype_trtopt_cannot_feed():
    spec = InputSpec("text", (), "tensor(string)", batch="N")
    _error(lambda: check_feed({"text": np.array(["a", "b"])}, [spec], model="m.onnx"),
           "input 'text' of m.onnx has type tensor(string), which trtopt cannot feed")


def test_different_sample_counts():
    _error(lambda: check_feed({"features": np.ones((4, 6), np.float32), "mask": np.ones((3, 6), np.int64)}, MLP,
                              source="x.npz"),
           "x.npz have different sample counts per input [3, 4]", "give every input the same number of samples")


def test_no_samples():
    _error(lambda: check_feed({"input": _images(0)}, [IMAGE], source="x.npy"),
           "x.npy hold no samples for input 'input'", "provide at least one sample")


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nan_or_inf_names_the_input_and_sample(bad):
    x = _images(5)
    x[3, 1, 2, 0] = bad
    _error(lambda: check_feed({"input": x}, [IMAGE], source="calibration batch 2", first_sample=10),
           "input 'input' contains NaN or inf (sample 13) in calibration batch 2", "clean or drop those samples")
    assert np.isnan(check_feed({"input": x * np.nan}, [IMAGE], finite=False)["input"]).all()  # runners: values as given


def test_structure_is_checked_before_types():
    # a wrong count and a wrong dtype: the count is named (it is what the user got wrong first)
    _error(lambda: check_feed({"features": np.ones((4, 6)), "mask": np.ones((3, 6), np.float32)}, MLP),
           "different sample counts")


# --- the checked feed ---------------------------------------------------------------------------------

def test_a_checked_feed_is_read_only_and_copies_as_a_dict():
    checked = check_feed(_mlp(), MLP)
    for change in (lambda f: f.__setitem__("x", 1), lambda f: f.pop("mask"), lambda f: f.update(x=1),
                   lambda f: f.clear(), lambda f: f.__delitem__("mask"), lambda f: f.setdefault("x", 1)):
        with pytest.raises(TypeError, match="read-only"):
            change(checked)
    for twin in (dict(checked), copy.copy(checked), copy.deepcopy(checked), pickle.loads(pickle.dumps(checked))):
        assert type(twin) is dict and list(twin) == ["features", "mask"]
        np.testing.assert_array_equal(twin["features"], checked["features"])
        twin["x"] = 1  # a plain dict again


# --- one batch as a feed ------------------------------------------------------------------------------

def test_as_feed_takes_mappings_arrays_and_tensors():
    assert list(as_feed({"features": [1.0], "mask": torch.ones(1, requires_grad=True)}, MLP, "item 0")) == [
        "features", "mask"]
    x = _images()
    assert as_feed(x, [IMAGE], "item 0")["input"] is x
    assert as_feed(torch.ones(2, 3, 4, 4, requires_grad=True), [IMAGE], "item 0")["input"].dtype == np.float32


def test_as_feed_refuses_an_array_for_several_inputs_and_other_types():
    _error(lambda: as_feed(np.ones((2, 6)), MLP, "calibration batch 3", "mlp.onnx"),
           "calibration batch 3 is a ndarray, not a dict of arrays (mlp.onnx has 2 inputs)",
           "give dicts mapping features, mask to arrays")
    _error(lambda: as_feed([np.ones((2, 3, 4, 4))], [IMAGE], "item 0"), "item 0 is a list, not a dict of arrays")
