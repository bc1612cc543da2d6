"""trtopt.quant.calibrate: streaming histograms, the four range methods, and calibration of an ONNX model."""

from __future__ import annotations

import math
import os

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper

from trtopt.artifacts import Ranges
from trtopt.errors import TrtoptError
from trtopt.export import ExportConfig, export_onnx
from trtopt.models.load import load_model
from trtopt.quant.calibrate import CalibrationConfig, calibrate, calibration_tensors
from trtopt.quant.histogram import (
    StreamingHistogram,
    amax_entropy,
    amax_minmax,
    amax_mse,
    amax_percentile,
    entropy_divergences,
    mse_errors,
)


def hist_of(values, num_bins=2048):
    h = StreamingHistogram(num_bins)
    h.update(values)
    return h


# --- config -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("field, value", [("method", "kl"), ("percentile", 0.0), ("percentile", 101.0),
                                          ("num_bins", 100), ("num_bins", 2048.0), ("batch_size", 0),
                                          ("max_samples", -1)])
def test_config_rejects_bad_values_naming_the_field(field, value):
    with pytest.raises(TrtoptError, match=f"^{field}={value!r} ") as err:
        CalibrationConfig(**{field: value})
    assert err.value.key == field


def test_config_to_dict_round_trips():
    cfg = CalibrationConfig(method="percentile", percentile=99.9, batch_size=4, max_samples=100)
    assert CalibrationConfig(**cfg.to_dict()) == cfg
    assert CalibrationConfig().to_dict()["method"] == "auto"


# --- the histogram ----------------------------------------------------------------------------------

def test_streaming_with_growing_range_equals_one_shot_binning_on_the_final_edges():
    rng = np.random.default_rng(0)
    batches = [rng.standard_normal(5000).astype(np.float32) * (2.0 ** k) * (1 + k % 3) for k in range(12)]
    streamed = StreamingHistogram(2048)
    for b in batches:
        streamed.update(b)
        assert streamed.counts.shape == (2048,)
    everything = np.concatenate(batches)
    # One-shot binning of all the data on the final edges j * width (exact: the width is a power of two).
    edges = np.arange(2049, dtype=np.float64) * streamed.bin_width
    one_shot, _ = np.histogram(np.abs(everything).astype(np.float64), bins=edges)
    np.testing.assert_array_equal(streamed.counts, one_shot)
    assert streamed.counts.sum() == everything.size == streamed.count
    # ... and what a single update of everything gives: the histogram does not depend on batching.
    whole = hist_of(everything)
    assert whole.exponent == streamed.exponent
    np.testing.assert_array_equal(whole.counts, streamed.counts)
    assert (streamed.min, streamed.max) == (float(everything.min()), float(everything.max()))
    # the largest value sits in the upper half of the bins (range not wasted), never past the end
    top = np.flatnonzero(streamed.counts)[-1]
    assert 1024 <= top < 2048


def test_merges_are_exact_for_a_num_bins_that_is_not_a_power_of_two():
    rng = np.random.default_rng(1)
    h = StreamingHistogram(1000)
    data = [rng.uniform(-s, s, 3000).astype(np.float32) for s in (0.5, 3.0, 7.0, 1000.0)]
    for d in data:
        h.update(d)
    edges = np.arange(1001, dtype=np.float64) * h.bin_width
    expected, _ = np.histogram(np.abs(np.concatenate(data)).astype(np.float64), bins=edges)
    np.testing.assert_array_equal(h.counts, expected)


def test_histogram_memory_does_not_grow_with_the_number_of_values():
    rng = np.random.default_rng(2)
    small, large = StreamingHistogram(), StreamingHistogram()
    small.update(rng.standard_normal(1000))
    for _ in range(20):
        large.update(rng.standard_normal(100_000).astype(np.float32))
    assert small.nbytes == large.nbytes == 2048 * 8
    assert large.count == 2_000_000


def test_zeros_first_then_values_and_all_zero_tensor():
    h = StreamingHistogram()
    h.update(np.zeros(10, np.float32))
    assert h.bin_width == 0.0 and h.counts[0] == 10 and h.absmax == 0.0
    h.update(np.array([0.5, -2.0], np.float32))
    assert h.counts[0] == 10 and h.counts.sum() == 12 and h.absmax == 2.0
    assert amax_minmax(h.counts, h.bin_width, absmax=h.absmax) == 2.0


def test_histogram_rejects_nan_and_inf():
    for bad in (np.nan, np.inf):
        with pytest.raises(ValueError, match="NaN or inf"):
            hist_of(np.array([1.0, bad], np.float32))


def test_float16_and_float64_values():
    h16 = hist_of(np.array([0.5, -1.5, 3.0], np.float16))
    h64 = hist_of(np.array([0.5, -1.5, 3.0], np.float64))
    np.testing.assert_array_equal(h16.counts, h64.counts)
    assert h16.absmax == h64.absmax == 3.0


# --- the methods ------------------------------------------------------------------------------------

def test_minmax_is_the_largest_absolute_value():
    x = np.random.default_rng(3).standard_normal(50_000).astype(np.float32)
    h = hist_of(x)
    assert amax_minmax(h.counts, h.bin_width, absmax=h.absmax) == float(np.abs(x).max())
    # from the histogram alone: the upper edge of the last used bin, within one bin above
    assert 0 <= amax_minmax(h.counts, h.bin_width) - np.abs(x).max() < h.bin_width


@pytest.mark.parametrize("p", [50.0, 99.0, 99.99])
def test_percentile_of_a_uniform_distribution_is_p_times_the_max(p):
    x = np.random.default_rng(4).uniform(-4.0, 4.0, 2_000_000).astype(np.float32)
    h = hist_of(x)
    got = amax_percentile(h.counts, h.bin_width, p, absmax=h.absmax)
    assert got == pytest.approx(p / 100 * 4.0, abs=4e-3)
    assert got == pytest.approx(np.percentile(np.abs(x), p), abs=h.bin_width)


def test_percentile_100_is_the_max():
    x = np.random.default_rng(5).standard_normal(10_000).astype(np.float32)
    h = hist_of(x)
    assert amax_percentile(h.counts, h.bin_width, 100.0, absmax=h.absmax) == h.absmax


def _gaussian_with_outliers(n=400_000, sigma=1.0, outlier=20.0):
    """N(0, sigma) with five outliers at 16..20 sigma (a 20-sigma value has probability ~1e-88)."""
    x = np.random.default_rng(6).normal(0.0, sigma, n).astype(np.float32)
    x[:5] = [outlier, -outlier, outlier * 0.9, outlier * 0.95, -outlier * 0.8]
    return x


def test_entropy_clips_outliers_and_keeps_the_gaussian():
    h = hist_of(_gaussian_with_outliers())
    amax = amax_entropy(h.counts, h.bin_width, absmax=h.absmax)
    assert 3.0 < amax < 6.0  # well below the outliers at 16..20, above ~3 sigma


def test_entropy_after_relu_is_not_pulled_down_by_the_zeros():
    x = _gaussian_with_outliers()
    signed, relu = hist_of(x), hist_of(np.maximum(x, 0))
    amax_signed = amax_entropy(signed.counts, signed.bin_width, absmax=signed.absmax)
    amax_relu = amax_entropy(relu.counts, relu.bin_width, absmax=relu.absmax)
    assert amax_relu == pytest.approx(amax_signed, rel=0.05)
    # without NVIDIA's bin-0 replacement the zero spike drives it to the first candidate (128 bins)
    literal = amax_entropy(relu.counts, relu.bin_width, absmax=relu.absmax, zero_bin_as_neighbor=False)
    assert literal == 128 * relu.bin_width


def test_mse_lies_between_entropy_and_the_max():
    h = hist_of(_gaussian_with_outliers())
    mse = amax_mse(h.counts, h.bin_width, absmax=h.absmax)
    entropy = amax_entropy(h.counts, h.bin_width, absmax=h.absmax)
    # squared error weighs the clipped outliers heavily, so MSE clips less than KL but still clips
    assert 3.0 < entropy < mse < 0.9 * h.absmax


def test_methods_on_a_tensor_using_few_bins_return_its_range():
    h = hist_of(np.array([0.0, 1.0, 1.0, 1.0], np.float32))  # one non-zero bin near the top
    for fn in (amax_entropy, amax_mse):
        assert fn(h.counts, h.bin_width, absmax=h.absmax) == 1.0
    empty = np.zeros(2048)
    assert amax_entropy(empty, 0.1) == amax_mse(empty, 0.1) == amax_percentile(empty, 0.1) == 0.0


def _entropy_reference(hist, start_bin=128, levels=128, zero_bin_as_neighbor=True):
    """The published EntropyCalibration2 pseudocode, literally (one candidate, one bin at a time)."""
    hist = np.asarray(hist, np.float64).copy()
    if zero_bin_as_neighbor:
        hist[0] = hist[1]
    n = int(np.flatnonzero(hist)[-1]) + 1
    out = []
    for i in range(start_bin, n + 1):
        p = hist[:i].copy()
        p[i - 1] += hist[i:].sum()  # outliers folded into the last kept bin
        q = np.zeros(i)
        for c in range(levels):  # quantize into 128 levels, expand back, empty bins stay empty
            lo, hi = math.ceil(c * i / levels), math.ceil((c + 1) * i / levels)
            chunk = hist[lo:hi]
            nonzero = chunk > 0
            if nonzero.any():
                q[lo:hi][nonzero] = chunk.sum() / nonzero.sum()
        p, q = p / p.sum(), q / q.sum() if q.sum() else q
        mask = p > 0
        out.append(np.inf if (q[mask] == 0).any() else float(np.sum(p[mask] * np.log(p[mask] / q[mask]))))
    return np.arange(start_bin, n + 1), np.array(out)


@pytest.mark.parametrize("seed, zero_bin_as_neighbor", [(0, True), (1, True), (2, False), (3, False)])
def test_vectorized_entropy_equals_the_literal_algorithm(seed, zero_bin_as_neighbor):
    rng = np.random.default_rng(seed)
    hist = rng.poisson(rng.uniform(0, 50), 700).astype(np.int64) * (rng.uniform(size=700) > 0.3)
    hist[0] += 5000  # a zero spike, as after ReLU
    hist[650] = 3  # an isolated outlier bin
    cand, div = entropy_divergences(hist, zero_bin_as_neighbor=zero_bin_as_neighbor)
    ref_cand, ref = _entropy_reference(hist, zero_bin_as_neighbor=zero_bin_as_neighbor)
    np.testing.assert_array_equal(cand, ref_cand)
    assert np.array_equal(np.isinf(div), np.isinf(ref)) and np.isfinite(ref).sum() > 100
    finite = np.isfinite(ref)
    np.testing.assert_allclose(div[finite], ref[finite], rtol=1e-7, atol=1e-10)


def test_mse_matches_the_empirical_quantization_error():
    x = np.random.default_rng(7).laplace(0.0, 1.0, 400_000).astype(np.float32)
    h = hist_of(x)
    cand, err = mse_errors(h.counts, h.bin_width)
    for k in (0, len(cand) // 4, len(cand) // 2):
        amax = cand[k] * h.bin_width
        scale = amax / 127
        q = np.clip(np.round(x / scale), -127, 127) * scale
        empirical = float(np.mean((x.astype(np.float64) - q) ** 2))
        assert err[k] == pytest.approx(empirical, rel=0.03)


# --- calibrating a model ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def cnn(tmp_path_factory):
    """The tiny CNN, exported once (dynamo, BN folded into the convs), with 40 seeded samples."""
    loaded = load_model("tests.helpers.tiny_models:tiny_cnn")
    art = export_onnx(loaded, tmp_path_factory.mktemp("calib") / "tiny_cnn.onnx")
    x = np.random.default_rng(0).uniform(-1, 1, (40, 3, 32, 32)).astype(np.float32)
    return loaded, art, {"input": x}


def _intermediates(path, names, feed):
    """Run ``path`` in ONNX Runtime with ``names`` as extra outputs (an independent augmentation)."""
    model = onnx.load(str(path))
    for n in names:
        if n not in [o.name for o in model.graph.output]:
            model.graph.output.append(onnx.ValueInfoProto(name=n))
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    wanted = [o.name for o in sess.get_outputs() if o.name in names]
    return dict(zip(wanted, sess.run(wanted, feed), strict=True))


def test_default_tensors_cover_every_conv_input_and_output(cnn):
    _, art, feed = cnn
    model = onnx.load(str(art.path))
    convs = [n for n in model.graph.node if n.op_type == "Conv"]
    assert len(convs) == 2
    ranges = calibrate(art, feed, CalibrationConfig(method="minmax"))
    for conv in convs:
        assert conv.input[0] in ranges.tensors and conv.output[0] in ranges.tensors
        assert conv.input[1] not in ranges.tensors  # weights are not calibrated
    assert list(ranges.tensors) == calibration_tensors(art.path)
    assert "input" in ranges.tensors and "output" in ranges.tensors
    assert ranges.samples == 40 and ranges.method == "minmax" and ranges.model_sha256 == art.sha256


def test_minmax_equals_the_activations_computed_independently(cnn):
    loaded, art, feed = cnn
    ranges = calibrate(art.path, feed, CalibrationConfig(method="minmax", batch_size=7))
    acts = _intermediates(art.path, list(ranges.tensors), feed)
    acts["input"] = feed["input"]
    for name, r in ranges.tensors.items():
        a = acts[name]
        assert r.amax == pytest.approx(float(np.abs(a).max()), rel=1e-6), name
        assert (r.min, r.max) == (pytest.approx(float(a.min()), rel=1e-6), pytest.approx(float(a.max()), rel=1e-6))
    # and against PyTorch: the ReLU outputs and the logits (BN is folded in ONNX, ReLUs are not)
    relus = {}
    hooks = [m.register_forward_hook(lambda mod, i, o, k=k: relus.__setitem__(k, o.abs().max().item()))
             for k, m in enumerate(loaded.module.modules()) if isinstance(m, torch.nn.ReLU)]
    with torch.inference_mode():
        logits = loaded.module(torch.from_numpy(feed["input"]))
    for h in hooks:
        h.remove()
    model = onnx.load(str(art.path))
    relu_outputs = [n.output[0] for n in model.graph.node if n.op_type == "Relu"]
    assert [ranges.tensors[n].amax for n in relu_outputs] == pytest.approx(list(relus.values()), rel=1e-4)
    assert ranges.tensors["output"].amax == pytest.approx(logits.abs().max().item(), rel=1e-4)


@pytest.mark.parametrize("method", ["minmax", "entropy", "percentile", "mse"])
def test_every_method_gives_ranges_within_the_observed_extremes(cnn, method):
    _, art, feed = cnn
    ranges = calibrate(art, feed, CalibrationConfig(method=method))
    reference = calibrate(art, feed, CalibrationConfig(method="minmax"))
    for name, r in ranges.tensors.items():
        assert 0 < r.amax <= reference.tensors[name].amax
        assert -r.amax <= r.min <= r.max <= r.amax
    assert ranges.settings["method"] == method


def test_same_data_gives_identical_ranges_and_fingerprint(cnn):
    _, art, feed = cnn
    a = calibrate(art, feed)
    b = calibrate(art, {"input": feed["input"].copy()})
    assert a == b and len(a.data_sha256) == 64
    other = {"input": feed["input"].copy()}
    other["input"][3, 0, 0, 0] += 1e-3
    assert calibrate(art, other).data_sha256 != a.data_sha256


@pytest.mark.parametrize("method", ["minmax", "entropy"])
def test_batch_size_does_not_change_ranges_or_fingerprint(cnn, method):
    _, art, feed = cnn
    one = calibrate(art, feed, CalibrationConfig(method=method, batch_size=1))
    many = calibrate(art, feed, CalibrationConfig(method=method, batch_size=16))
    assert one.tensors == many.tensors
    assert one.data_sha256 == many.data_sha256


def test_iterable_of_batches_equals_the_dict(cnn):
    _, art, feed = cnn
    x = feed["input"]
    from_dict = calibrate(art, feed, CalibrationConfig(batch_size=8))
    batches = ({"input": x[s:s + 8]} for s in range(0, 40, 8))
    assert calibrate(art, batches, CalibrationConfig(batch_size=8)) == from_dict
    # arrays (single-input model), torch tensors and uneven batches work too
    uneven = [x[:3], torch.from_numpy(x[3:30]), x[30:]]
    assert calibrate(art, iter(uneven), CalibrationConfig(batch_size=8)).tensors == from_dict.tensors


def test_iterable_is_consumed_lazily_up_to_max_samples(cnn):
    _, art, feed = cnn
    pulled = []

    def batches():
        for s in range(0, 40, 4):
            pulled.append(s)
            yield {"input": feed["input"][s:s + 4]}

    progress = []
    ranges = calibrate(art, batches(), CalibrationConfig(batch_size=4, max_samples=10),
                       on_progress=lambda *call: progress.append(call))
    assert ranges.samples == 10 and len(pulled) == 3
    assert progress == [("calibration", 4, -1), ("calibration", 8, -1), ("calibration", 10, -1)]
    assert ranges == calibrate(art, {"input": feed["input"][:10]}, CalibrationConfig(batch_size=4, max_samples=10))


def test_progress_reports_the_total_of_a_dict(cnn):
    _, art, feed = cnn
    seen = []
    calibrate(art, feed, CalibrationConfig(batch_size=16), on_progress=lambda *call: seen.append(call))
    assert seen == [("calibration", 16, 40), ("calibration", 32, 40), ("calibration", 40, 40)]


def test_selected_tensors_only_and_graph_inputs_need_no_run(cnn):
    _, art, feed = cnn
    only_input = calibrate(art, feed, CalibrationConfig(method="minmax"), tensors=["input"])
    assert list(only_input.tensors) == ["input"]
    assert only_input.tensors["input"].amax == float(np.abs(feed["input"]).max())
    two = calibrate(art, feed, CalibrationConfig(method="minmax"), tensors=["output", "input"])
    assert list(two.tensors) == ["output", "input"]


def test_ranges_json_round_trip(cnn, tmp_path):
    _, art, feed = cnn
    ranges = calibrate(art, feed, CalibrationConfig(method="percentile", percentile=99.9))
    path = ranges.save(tmp_path / "ranges.json")
    assert Ranges.load(path) == ranges


def test_external_data_and_nothing_written_to_the_cwd(cnn, tmp_path, monkeypatch):
    _, art, feed = cnn
    model = onnx.load(str(art.path))
    ext = tmp_path / "model" / "ext.onnx"
    ext.parent.mkdir()
    onnx.save(model, str(ext), save_as_external_data=True, location="ext.onnx.data")
    assert (ext.parent / "ext.onnx.data").is_file()
    work = tmp_path / "cwd"
    work.mkdir()
    monkeypatch.chdir(work)
    before = sorted(os.listdir(ext.parent))
    ranges = calibrate(ext, feed, CalibrationConfig(method="minmax"))
    assert ranges.tensors == calibrate(art, feed, CalibrationConfig(method="minmax")).tensors
    assert os.listdir(work) == [] and sorted(os.listdir(ext.parent)) == before


def test_temporary_files_are_removed_after_success_and_error(cnn, tmp_path, monkeypatch):
    _, art, feed = cnn
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr("tempfile.tempdir", str(scratch))
    during = []
    calibrate(art, feed, CalibrationConfig(method="minmax"), on_progress=lambda *_: during.append(os.listdir(scratch)))
    assert during[0]  # the augmented model lived there while calibrating
    bad = {"input": feed["input"].copy()}
    bad["input"][-1] = np.nan
    with pytest.raises(TrtoptError, match="NaN"):
        calibrate(art, bad, CalibrationConfig(batch_size=8))
    assert os.listdir(scratch) == []


def _tree(root):
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


@pytest.mark.parametrize("location", ["../outside/w.bin", "sub/../../outside/w.bin", "ABSOLUTE"])
def test_external_data_outside_the_model_folder_is_refused_and_nothing_is_created(cnn, tmp_path, monkeypatch, location):
    """A location climbing out of the model's folder (or absolute) is refused when the model is read, so
    calibrate/quantize never link or copy files by that name outside their temporary folder."""
    from trtopt.artifacts import inspect_onnx
    from trtopt.quant.quantize import QuantizeConfig, quantize

    _, art, feed = cnn
    model = onnx.load(str(art.path))
    (tmp_path / "outside").mkdir()
    onnx.save(model, str(tmp_path / "outside" / "m.onnx"), save_as_external_data=True, location="w.bin")
    location = str(tmp_path / "outside" / "w.bin") if location == "ABSOLUTE" else location
    evil = onnx.load(str(tmp_path / "outside" / "m.onnx"), load_external_data=False)
    external = [t for t in evil.graph.initializer if t.data_location == TensorProto.EXTERNAL]
    for tensor in external:
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = location
    (tmp_path / "models" / "sub").mkdir(parents=True)
    onnx.save(evil, str(tmp_path / "models" / "evil.onnx"))
    scratch = tmp_path / "scratch" / "tmp"  # the system temp folder: "../outside" from a folder in it is scratch/outside
    scratch.mkdir(parents=True)
    monkeypatch.setattr("tempfile.tempdir", str(scratch))
    ranges = calibrate(art, feed, CalibrationConfig(method="minmax"))
    before = _tree(tmp_path)
    for run in (lambda: inspect_onnx(tmp_path / "models" / "evil.onnx"),
                lambda: calibrate(tmp_path / "models" / "evil.onnx", feed, CalibrationConfig(method="minmax")),
                lambda: quantize(tmp_path / "models" / "evil.onnx", ranges, tmp_path / "q.onnx", QuantizeConfig())):
        with pytest.raises(TrtoptError, match="not a relative path inside the model's folder") as err:
            run()
        assert repr(location) in str(err.value) and repr(external[0].name) in str(err.value)
    assert _tree(tmp_path) == before


def test_two_input_model(tmp_path):
    loaded = load_model("tests.helpers.tiny_models:two_input_mlp")
    art = export_onnx(loaded, tmp_path / "mlp.onnx", ExportConfig(exporter="torchscript", opset=17))
    rng = np.random.default_rng(0)
    feed = {"features": rng.uniform(-1, 1, (10, 6)).astype(np.float32),
            "mask": (rng.uniform(size=(10, 6)) > 0.5).astype(np.float32)}
    ranges = calibrate(art, feed, CalibrationConfig(method="minmax"))
    assert ranges.tensors["mask"].amax == 1.0
    with pytest.raises(TrtoptError, match="lack input 'mask'"):
        calibrate(art, {"features": feed["features"]})
    with pytest.raises(TrtoptError, match="different sample counts"):
        calibrate(art, {"features": feed["features"], "mask": feed["mask"][:5]})
    with pytest.raises(TrtoptError, match="not a dict of arrays"):
        calibrate(art, [feed["features"]])


# --- errors -----------------------------------------------------------------------------------------

def _one_line(err):
    return "\n" not in str(err.value) and "fix:" in str(err.value)


def test_empty_data_is_an_error(cnn):
    _, art, _ = cnn
    for data in ({"input": np.zeros((0, 3, 32, 32), np.float32)}, iter([])):
        with pytest.raises(TrtoptError, match="no samples") as err:
            calibrate(art, data)
        assert _one_line(err)


def test_nan_or_inf_in_the_data_names_the_input_and_sample(cnn):
    _, art, feed = cnn
    x = feed["input"].copy()
    x[21, 1, 2, 3] = np.inf
    with pytest.raises(TrtoptError, match="'input' contains NaN or inf \\(sample 21\\)") as err:
        calibrate(art, {"input": x}, CalibrationConfig(batch_size=8))
    assert _one_line(err)


def test_wrong_shape_names_the_input_expected_and_got(cnn):
    _, art, _ = cnn
    bad = np.zeros((4, 3, 28, 28), np.float32)
    expected = r"'input' has shape \(4, 3, 28, 28\), .* expects \(batch, 3, 32, 32\)"
    with pytest.raises(TrtoptError, match=expected) as err:
        calibrate(art, {"input": bad})
    assert _one_line(err)
    with pytest.raises(TrtoptError, match="has shape \\(4, 3072\\)"):  # flattened images: wrong rank
        calibrate(art, {"input": np.zeros((4, 3072), np.float32)})


def test_wrong_dtype_names_the_input_expected_and_got(cnn):
    _, art, feed = cnn
    with pytest.raises(TrtoptError, match="'input' has dtype int32, .* expects float32") as err:
        calibrate(art, {"input": np.zeros((2, 3, 32, 32), np.int32)})
    assert _one_line(err)
    # float64 data is the same kind: cast, same ranges as the float32 data it rounds to
    as64 = {"input": feed["input"].astype(np.float64)}
    assert calibrate(art, as64).tensors == calibrate(art, feed).tensors


def test_fixed_batch_axis_error_says_which_batch_size(tmp_path):
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])])
    path = tmp_path / "fixed.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    x = np.arange(12, dtype=np.float32).reshape(3, 4) - 6
    with pytest.raises(TrtoptError, match="batch_size=1"):
        calibrate(path, {"x": x})
    ranges = calibrate(path, {"x": x}, CalibrationConfig(method="minmax", batch_size=1))
    assert ranges.tensors["y"].amax == 5.0 and ranges.tensors["y"].min == 0.0


def test_model_without_float_tensors_is_an_error(tmp_path):
    graph = helper.make_graph([helper.make_node("Neg", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.INT64, ["n", 4])],
                              [helper.make_tensor_value_info("y", TensorProto.INT64, ["n", 4])])
    path = tmp_path / "ints.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    with pytest.raises(TrtoptError, match="no float tensors to calibrate") as err:
        calibrate(path, {"x": np.ones((2, 4), np.int64)})
    assert _one_line(err)


def test_missing_or_corrupt_model_is_an_error(tmp_path):
    with pytest.raises(TrtoptError, match="does not exist"):
        calibrate(tmp_path / "nope.onnx", {"input": np.zeros((1, 3, 32, 32), np.float32)})
    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(b"\x00\x01 not a model")
    with pytest.raises(TrtoptError, match="not a readable ONNX model"):
        calibrate(corrupt, {"input": np.zeros((1, 3, 32, 32), np.float32)})


def test_bad_tensor_requests_and_data_types_are_errors(cnn):
    _, art, feed = cnn
    model = onnx.load(str(art.path))
    weight = model.graph.initializer[0].name
    with pytest.raises(TrtoptError, match="'nope' is not in"):
        calibrate(art, feed, tensors=["nope"])
    with pytest.raises(TrtoptError, match="is an initializer"):
        calibrate(art, feed, tensors=[weight])
    with pytest.raises(TrtoptError, match="no tensors to calibrate"):
        calibrate(art, feed, tensors=[])
    with pytest.raises(TrtoptError, match="load_feed"):
        calibrate(art, "data.npy")
    with pytest.raises(TrtoptError, match="unexpected|does not take"):
        calibrate(art, {"input": feed["input"], "extra": feed["input"]})


def test_activation_that_becomes_infinite_is_named(tmp_path):
    """A quantized tensor (a MatMul input) that becomes inf: the error names it, the node and the fix."""
    graph = helper.make_graph([helper.make_node("Reciprocal", ["x"], ["y"]),
                               helper.make_node("MatMul", ["y", "w"], ["z"], name="mm")], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 2])],
                              [helper.make_tensor_value_info("z", TensorProto.FLOAT, ["n", 2])],
                              [helper.make_tensor("w", TensorProto.FLOAT, [2, 2], [1.0, 0.0, 0.0, 1.0])])
    path = tmp_path / "recip.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    with pytest.raises(TrtoptError, match="tensor 'y' becomes NaN or inf.*node mm.*--exclude mm") as err:
        calibrate(path, {"x": np.array([[1.0, 0.0]], np.float32)})
    assert _one_line(err)
    with pytest.raises(TrtoptError, match="tensor 'y' becomes NaN or inf on the calibration data; "):
        calibrate(path, {"x": np.array([[1.0, 0.0]], np.float32)}, tensors=["y"])
