"""Tests for trtopt.data: random feeds, files, image folders, iterables, batching, and their errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from trtopt.data import (
    SKIMAGE_PHOTOS,
    check_feed,
    from_iterable,
    image_size,
    iter_batches,
    iter_photo_crops,
    load_feed,
    load_image_folder,
    preprocess_image,
    random_feed,
    take_batch,
)
from trtopt.errors import TrtoptError
from trtopt.models.spec import IMAGENET_MEAN, IMAGENET_STD, ImagePreprocess, InputSpec

CNN_INPUTS = (InputSpec("input", (3, 32, 32), "float32", -1.0, 1.0),)
MLP_INPUTS = (InputSpec("features", (6,), "float32", -1.0, 1.0), InputSpec("mask", (6,), "float32", 0.0, 1.0))
TOKEN_INPUTS = (InputSpec("input_ids", (16,), "int64", 0, 30522), InputSpec("attention_mask", (16,), "int64", 1, 2))


def rng_array(shape, seed=0, dtype=np.float32):
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


def grey_value(level: int, channel: int) -> float:
    return (level / 255.0 - IMAGENET_MEAN[channel]) / IMAGENET_STD[channel]


# --- random ----------------------------------------------------------------------------------------


def test_random_feed_is_deterministic_per_seed():
    a = random_feed(CNN_INPUTS, 4, seed=3)
    b = random_feed(CNN_INPUTS, 4, seed=3)
    c = random_feed(CNN_INPUTS, 4, seed=4)
    np.testing.assert_array_equal(a["input"], b["input"])
    assert not np.array_equal(a["input"], c["input"])


def test_random_feed_shapes_dtypes_and_float_range():
    feed = random_feed(MLP_INPUTS, 50, seed=0)
    assert set(feed) == {"features", "mask"}
    for spec in MLP_INPUTS:
        arr = feed[spec.name]
        assert arr.shape == (50, 6) and arr.dtype == np.float32
        assert arr.min() >= spec.low and arr.max() < spec.high
    assert feed["features"].min() < 0  # the range is used, not [0, 1)


def test_random_feed_integer_inputs_respect_range():
    feed = random_feed(TOKEN_INPUTS, 20, seed=1)
    ids, mask = feed["input_ids"], feed["attention_mask"]
    assert ids.dtype == np.int64 and mask.dtype == np.int64
    assert ids.shape == (20, 16)
    assert ids.min() >= 0 and ids.max() < 30522
    assert len(np.unique(ids)) > 100
    assert (mask == 1).all()  # [1, 2) for integers is exactly 1


def test_load_feed_random_default_count_and_seed():
    feed = load_feed(None, CNN_INPUTS)
    assert feed["input"].shape == (8, 3, 32, 32)
    np.testing.assert_array_equal(load_feed("random", CNN_INPUTS, count=3, seed=5)["input"],
                                  random_feed(CNN_INPUTS, 3, seed=5)["input"])


# --- .npy / .npz -----------------------------------------------------------------------------------


def test_load_npy_single_input_casts_to_model_dtype(tmp_path):
    data = rng_array((5, 3, 32, 32), dtype=np.float64)
    path = tmp_path / "x.npy"
    np.save(path, data)
    feed = load_feed(path, CNN_INPUTS)
    assert list(feed) == ["input"]
    assert feed["input"].dtype == np.float32
    np.testing.assert_allclose(feed["input"], data, rtol=1e-6)


def test_load_npz_named_inputs(tmp_path):
    features, mask = rng_array((4, 6), 1), (rng_array((4, 6), 2) > 0).astype(np.float32)
    path = tmp_path / "x.npz"
    np.savez(path, mask=mask, features=features)
    feed = load_feed(str(path), MLP_INPUTS)
    np.testing.assert_array_equal(feed["features"], features)
    np.testing.assert_array_equal(feed["mask"], mask)


def test_load_npz_single_array_for_single_input(tmp_path):
    data = rng_array((3, 3, 32, 32))
    path = tmp_path / "x.npz"
    np.savez(path, images=data)  # the key need not match the input name
    np.testing.assert_array_equal(load_feed(path, CNN_INPUTS)["input"], data)


def test_load_npz_for_tiny_two_input_model_runs_it(tmp_path):
    from trtopt.models.load import load_model

    m = load_model("tests.helpers.tiny_models:two_input_mlp")
    path = tmp_path / "x.npz"
    np.savez(path, features=rng_array((3, 6)), mask=np.ones((3, 6), np.float32))
    feed = load_feed(path, m.inputs)
    with torch.no_grad():
        out = m.module(*(torch.from_numpy(feed[s.name]) for s in m.inputs))
    assert out.shape == (3, 4)


def test_count_truncates_real_data(tmp_path):
    data = rng_array((10, 3, 32, 32))
    path = tmp_path / "x.npy"
    np.save(path, data)
    feed = load_feed(path, CNN_INPUTS, count=4)
    np.testing.assert_array_equal(feed["input"], data[:4])
    assert load_feed(path, CNN_INPUTS, count=100)["input"].shape[0] == 10


# --- image folders and photos ----------------------------------------------------------------------


@pytest.fixture
def image_folder(tmp_path):
    """Four images of different sizes and formats (one nested, one greyscale), plus a non-image file."""
    root = tmp_path / "images"
    (root / "sub").mkdir(parents=True)
    Image.new("RGB", (300, 200), (128, 128, 128)).save(root / "a_grey.png")
    Image.new("RGB", (100, 150), (255, 0, 0)).save(root / "b_red.jpg", quality=100)
    Image.new("L", (224, 224), 0).save(root / "sub" / "c_black.PNG")
    Image.new("RGB", (640, 480), (0, 0, 255)).save(root / "z_blue.jpeg", quality=100)
    (root / "notes.txt").write_text("not an image", encoding="utf-8")
    return root


def test_image_folder_shape_order_and_normalization(image_folder):
    inputs = (InputSpec("input", (3, 224, 224), "float32", -2.0, 2.5),)
    feed = load_feed(image_folder, inputs)
    x = feed["input"]
    assert x.shape == (4, 3, 224, 224) and x.dtype == np.float32
    # sorted by relative path: a_grey.png, b_red.jpg, sub/c_black.PNG, z_blue.jpeg
    for c in range(3):
        np.testing.assert_allclose(x[0, c], grey_value(128, c), atol=1e-5)  # mid-grey, exact (PNG)
        np.testing.assert_allclose(x[2, c], grey_value(0, c), atol=1e-5)  # black greyscale → 3 channels
    np.testing.assert_allclose(x[0, :, 0, 0], [0.0741, 0.2052, 0.4265], atol=1e-4)
    red, blue = x[1].mean(axis=(1, 2)), x[3].mean(axis=(1, 2))
    np.testing.assert_allclose(red, [grey_value(255, 0), grey_value(0, 1), grey_value(0, 2)], atol=0.05)
    np.testing.assert_allclose(blue, [grey_value(0, 0), grey_value(0, 1), grey_value(255, 2)], atol=0.05)


def test_image_folder_uses_given_preprocess(image_folder):
    pre = ImagePreprocess(size=64, resize=72, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    x = load_image_folder(image_folder, pre)
    assert x.shape == (4, 3, 64, 64)
    np.testing.assert_allclose(x[2], -1.0, atol=1e-6)  # black → (0 - 0.5) / 0.5


def test_preprocess_image_resizes_shorter_side_and_center_crops():
    # a 512x256 image whose left and right quarters are white and middle half is black:
    # resize → 448x224, center crop 224 → all black
    img = np.full((256, 512, 3), 255, np.uint8)
    img[:, 128:384] = 0
    pre = ImagePreprocess(size=224, resize=224, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
    x = preprocess_image(Image.fromarray(img), pre)
    assert x.shape == (3, 224, 224)
    np.testing.assert_allclose(x[:, :, 2:-2], 0.0, atol=1e-6)


def test_skimage_photos():
    pytest.importorskip("skimage")
    feed = load_feed("skimage:photos", (InputSpec("input", (3, 224, 224)),))
    x = feed["input"]
    assert len(SKIMAGE_PHOTOS) == 19
    assert x.shape == (19, 3, 224, 224) and x.dtype == np.float32
    assert np.isfinite(x).all()
    assert -2.2 < x.min() < -1.5 and 2.0 < x.max() < 2.7  # normalized pixels span ImageNet's range
    assert len({float(v) for v in x.mean(axis=(1, 2, 3))}) == 19  # 19 different photos
    assert load_feed("skimage:photos", (InputSpec("input", (3, 224, 224)),), count=5)["input"].shape[0] == 5


def test_image_sources_follow_the_model_input_size(image_folder):
    """A 256-px model (timm mobilevit_xxs) gets 256-px photos, crops and folder images; a rectangular input
    gets rectangular ones (issue 14: they were always 224)."""
    pytest.importorskip("skimage")
    square = (InputSpec("input", (3, 256, 256)),)
    assert load_feed("skimage:photos", square, count=2)["input"].shape == (2, 3, 256, 256)
    assert load_feed("skimage:crops:3", square)["input"].shape == (3, 3, 256, 256)
    wide = (InputSpec("input", (3, 40, 64)),)
    x = load_feed(image_folder, wide)["input"]
    assert x.shape == (4, 3, 40, 64)
    np.testing.assert_allclose(x[0, 0], grey_value(128, 0), atol=1e-5)  # uniform grey stays uniform
    assert load_feed("skimage:crops:2", wide)["input"].shape == (2, 3, 40, 64)
    assert image_size((InputSpec("input", ("N", "H", "W")),)) == (224, 224)  # symbolic: the preprocessing's size
    assert image_size((InputSpec("input", (3, "H", "W")),), ImagePreprocess(size=96)) == (96, 96)


def test_square_crop_is_the_shorter_side_resize_and_center_crop_at_any_size():
    """At the model's size the crop keeps the preprocessing's resize ratio (256/224 by default)."""
    img = np.zeros((300, 600, 3), np.uint8)
    img[:, 300:] = 255  # right half white
    pre = ImagePreprocess(mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
    x = preprocess_image(Image.fromarray(img), pre, (128, 128))
    # shorter side → 128 × 256/224 = 146 px, width 292; the 128-px center crop spans x = 82..210 of 292:
    # the left 64 columns are black, the right 64 white
    assert x.shape == (3, 128, 128)
    np.testing.assert_allclose(x[:, :, :63], 0.0, atol=1e-6)
    np.testing.assert_allclose(x[:, :, 65:], 1.0, atol=1e-6)
    same = preprocess_image(Image.fromarray(img), pre)  # default: pre.size square, as before
    assert same.shape == (3, 224, 224)


def test_photo_crops_default_to_the_preprocessing_size():
    pytest.importorskip("skimage")
    batch = next(iter_photo_crops(2, pre=ImagePreprocess(size=96, resize=110)))
    assert batch["input"].shape == (2, 3, 96, 96)


# --- errors ----------------------------------------------------------------------------------------


def test_missing_path(tmp_path):
    path = tmp_path / "nope.npy"
    with pytest.raises(TrtoptError, match="does not exist") as e:
        load_feed(path, CNN_INPUTS)
    assert str(path) in str(e.value)


def test_unknown_suffix(tmp_path):
    path = tmp_path / "data.csv"
    path.write_text("1,2,3\n", encoding="utf-8")
    with pytest.raises(TrtoptError, match="unknown type '.csv'") as e:
        load_feed(path, CNN_INPUTS)
    assert str(path) in str(e.value)


@pytest.mark.parametrize("name", ["bad.npy", "bad.npz"])
def test_corrupt_numpy_file(tmp_path, name):
    path = tmp_path / name
    path.write_bytes(b"this is not numpy data at all" * 10)
    with pytest.raises(TrtoptError, match="not a readable numpy file") as e:
        load_feed(path, CNN_INPUTS)
    assert str(path) in str(e.value)


def test_pickled_npy_is_refused(tmp_path):
    path = tmp_path / "obj.npy"
    np.save(path, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(TrtoptError, match="holds an object array .* which trtopt does not load"):
        load_feed(path, CNN_INPUTS)


def test_a_file_without_numpy_header_is_not_advised_to_be_unpickled(tmp_path):
    """numpy reads a file with no .npy header as a pickle and advises allow_pickle; trtopt names the file instead."""
    path = tmp_path / "notes.npy"
    path.write_text("hello", encoding="utf-8")
    with pytest.raises(TrtoptError, match="notes.npy is not a readable numpy file \\(no .npy header") as e:
        load_feed(path, CNN_INPUTS)
    assert "allow_pickle" not in str(e.value) and "pickle" not in str(e.value)


def test_wrong_per_sample_shape_names_input_and_both_shapes(tmp_path):
    path = tmp_path / "x.npy"
    np.save(path, rng_array((2, 3, 64, 64)))
    with pytest.raises(TrtoptError) as e:
        load_feed(path, CNN_INPUTS)
    msg = str(e.value)
    assert "'input'" in msg and "(2, 3, 64, 64)" in msg and "(N, 3, 32, 32)" in msg
    assert "--input-shape" in msg


def test_missing_batch_axis_is_a_shape_error():
    with pytest.raises(TrtoptError, match=r"'features' has shape \(6,\)"):
        check_feed({"features": np.zeros(6), "mask": np.zeros((1, 6))}, MLP_INPUTS)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_data(tmp_path, bad):
    data = rng_array((3, 3, 32, 32))
    data[1, 2, 3, 4] = bad
    path = tmp_path / "x.npy"
    np.save(path, data)
    with pytest.raises(TrtoptError, match="NaN or inf") as e:
        load_feed(path, CNN_INPUTS)
    assert "'input'" in str(e.value) and str(path) in str(e.value)


def test_zero_samples(tmp_path):
    path = tmp_path / "x.npy"
    np.save(path, np.zeros((0, 3, 32, 32), np.float32))
    with pytest.raises(TrtoptError, match="no samples for input 'input'"):
        load_feed(path, CNN_INPUTS)


def test_missing_input_name(tmp_path):
    path = tmp_path / "x.npz"
    np.savez(path, features=rng_array((2, 6)))
    with pytest.raises(TrtoptError, match="lack input 'mask'") as e:
        load_feed(path, MLP_INPUTS)
    assert "have features" in str(e.value)


def test_unexpected_input_name(tmp_path):
    path = tmp_path / "x.npz"
    np.savez(path, features=rng_array((2, 6)), mask=rng_array((2, 6)), labels=np.zeros(2))
    with pytest.raises(TrtoptError, match="unexpected input 'labels'") as e:
        load_feed(path, MLP_INPUTS)
    assert "features, mask" in str(e.value)


def test_two_arrays_for_single_input_model(tmp_path):
    path = tmp_path / "x.npz"
    np.savez(path, input=rng_array((2, 3, 32, 32)), labels=np.zeros(2))
    with pytest.raises(TrtoptError, match="unexpected input 'labels'"):
        load_feed(path, CNN_INPUTS)


def test_mismatched_sample_counts(tmp_path):
    path = tmp_path / "x.npz"
    np.savez(path, features=rng_array((4, 6)), mask=rng_array((3, 6)))
    with pytest.raises(TrtoptError, match=r"different sample counts per input \[3, 4\]"):
        load_feed(path, MLP_INPUTS)


def test_empty_image_folder(tmp_path):
    folder = tmp_path / "empty"
    folder.mkdir()
    (folder / "readme.txt").write_text("no images here", encoding="utf-8")
    with pytest.raises(TrtoptError, match="holds no images") as e:
        load_feed(folder, CNN_INPUTS)
    assert str(folder) in str(e.value)


def test_unreadable_image(image_folder):
    broken = image_folder / "sub" / "broken.png"
    broken.write_bytes(b"\x89PNG not really")
    with pytest.raises(TrtoptError, match="cannot be read") as e:
        load_feed(image_folder, (InputSpec("input", (3, 224, 224)),))
    assert str(broken) in str(e.value)


def test_truncated_image(tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    good = folder / "cut.jpg"
    Image.new("RGB", (300, 300), (10, 200, 30)).save(good)
    good.write_bytes(good.read_bytes()[:200])
    with pytest.raises(TrtoptError, match="cannot be read") as e:
        load_image_folder(folder, ImagePreprocess())
    assert "cut.jpg" in str(e.value)


# --- iterables -------------------------------------------------------------------------------------


def test_from_iterable_of_dicts():
    batches = [{"features": rng_array((2, 6), i), "mask": np.ones((2, 6), np.float32)} for i in range(3)]
    feed = load_feed(iter(batches), MLP_INPUTS)
    assert feed["features"].shape == (6, 6) and feed["mask"].shape == (6, 6)
    np.testing.assert_array_equal(feed["features"][2:4], batches[1]["features"])


def test_from_iterable_of_arrays():
    batches = [rng_array((n, 3, 32, 32), n) for n in (1, 2, 3)]
    feed = load_feed(batches, CNN_INPUTS, count=5)
    assert feed["input"].shape == (5, 3, 32, 32)
    np.testing.assert_array_equal(feed["input"], np.concatenate(batches)[:5])


def test_from_iterable_of_torch_tensors():
    tensors = [torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(i)) for i in range(2)]
    feed = load_feed((t for t in tensors), CNN_INPUTS)
    assert isinstance(feed["input"], np.ndarray) and feed["input"].dtype == np.float32
    np.testing.assert_array_equal(feed["input"], torch.cat(tensors).numpy())


def test_from_iterable_of_tensor_dicts_requiring_grad():
    batch = {"features": torch.ones(2, 6, requires_grad=True), "mask": torch.zeros(2, 6)}
    feed = from_iterable([batch], MLP_INPUTS)
    np.testing.assert_array_equal(feed["features"], np.ones((2, 6)))


def test_from_iterable_empty():
    with pytest.raises(TrtoptError, match="yielded nothing"):
        load_feed(iter([]), CNN_INPUTS)


def test_from_iterable_checks_the_result():
    with pytest.raises(TrtoptError, match="iterable lack input 'mask'"):
        load_feed([{"features": np.zeros((1, 6))}], MLP_INPUTS)


# --- batching --------------------------------------------------------------------------------------


def test_take_batch_wraps_around():
    feed = {"a": np.arange(3), "b": np.arange(3) * 10}
    batch = take_batch(feed, 5, start=2)
    np.testing.assert_array_equal(batch["a"], [2, 0, 1, 2, 0])
    np.testing.assert_array_equal(batch["b"], [20, 0, 10, 20, 0])
    assert batch["a"].flags["C_CONTIGUOUS"]
    np.testing.assert_array_equal(take_batch(feed, 2)["a"], [0, 1])


def test_iter_batches_covers_every_sample_once():
    feed = {"features": rng_array((10, 6)), "mask": rng_array((10, 6), 1)}
    batches = list(iter_batches(feed, 4))
    assert [len(b["features"]) for b in batches] == [4, 4, 2]
    for name in feed:
        np.testing.assert_array_equal(np.concatenate([b[name] for b in batches]), feed[name])
    assert len(list(iter_batches(feed, 10))) == 1
    assert len(list(iter_batches(feed, 32))) == 1


def test_npz_object_arrays_and_archives_posing_as_npy_are_refused(tmp_path):
    objects = tmp_path / "obj.npz"
    np.savez(objects, input=np.array([object(), 1], dtype=object))
    with pytest.raises(TrtoptError, match="obj.npz holds an object array"):
        load_feed(objects, CNN_INPUTS)
    archive = tmp_path / "archive.npy"
    with open(archive, "wb") as f:
        np.savez(f, input=rng_array((2, 3, 32, 32)))
    with pytest.raises(TrtoptError, match=r"archive.npy is not a readable numpy file .*an \.npz archive"):
        load_feed(archive, CNN_INPUTS)


# --- random integer inputs respect the tables they index ---------------------------------------------

def _embedding_graph(path, tables=(50,), through=("Cast", "Unsqueeze")):
    """ids (N, 12) int64 → [Cast → Unsqueeze →] Gather on each table (rows × 4) → Concat."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    nodes, inits, name = [], [], "ids"
    for op in through:
        if op == "Cast":
            nodes.append(helper.make_node("Cast", [name], ["cast"], to=TensorProto.INT32))
            name = "cast"
        elif op == "Unsqueeze":
            inits.append(numpy_helper.from_array(np.array([2], np.int64), "axes"))
            nodes.append(helper.make_node("Unsqueeze", [name, "axes"], ["unsq"]))
            name = "unsq"
        elif op == "Add":
            inits.append(numpy_helper.from_array(np.array(1, np.int64), "one"))
            nodes.append(helper.make_node("Add", [name, "one"], ["shifted"]))
            name = "shifted"
    outs = []
    for i, rows in enumerate(tables):
        inits.append(numpy_helper.from_array(np.ones((rows, 4), np.float32), f"table{i}"))
        nodes.append(helper.make_node("Gather", [f"table{i}", name], [f"e{i}"]))
        outs.append(f"e{i}")
    nodes.append(helper.make_node("Concat", outs, ["y"], axis=-1))
    graph = helper.make_graph(nodes, "emb", [helper.make_tensor_value_info("ids", TensorProto.INT64, ["n", 12]),
                                             helper.make_tensor_value_info("mask", TensorProto.INT64, ["n", 12])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return onnx.load(str(path))


def test_integer_inputs_are_bounded_by_the_table_they_index(tmp_path):
    from trtopt.artifacts import inspect_onnx
    from trtopt.data import DEFAULT_INTEGER_HIGH, integer_input_limits
    from trtopt.measure.bench import onnx_input_specs

    model = _embedding_graph(tmp_path / "emb.onnx")
    assert integer_input_limits(model) == {"ids": 50}  # through Cast and Unsqueeze; the mask indexes nothing
    specs = {s.name: s for s in onnx_input_specs(inspect_onnx(tmp_path / "emb.onnx"))}
    assert specs["ids"].high == 50 and specs["mask"].high == DEFAULT_INTEGER_HIGH
    ids = random_feed(tuple(specs.values()), 512)["ids"]
    assert ids.min() >= 0 and ids.max() == 49


def test_the_smallest_table_wins_and_arithmetic_hides_the_table(tmp_path):
    from trtopt.data import integer_input_limits

    assert integer_input_limits(_embedding_graph(tmp_path / "two.onnx", tables=(50, 30), through=())) == {"ids": 30}
    assert integer_input_limits(_embedding_graph(tmp_path / "add.onnx", through=("Add",))) == {}
