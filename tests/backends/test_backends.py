"""trtopt.backends: the registry, capability checks, and the ONNX Runtime / PyTorch / TensorRT backends."""

from __future__ import annotations

import sys
import typing
from collections import OrderedDict, namedtuple

import numpy as np
import onnxruntime
import pytest
import torch

import trtopt.backends.base
import trtopt.trt.cuda
import trtopt.trt.runtime
from trtopt import backends
from trtopt.backends.base import Runner
from trtopt.backends.ort import OrtConfig, OrtRunner
from trtopt.backends.torch import TorchRunner, flatten_outputs
from trtopt.data import random_feed
from trtopt.errors import TrtoptError
from trtopt.export import ExportConfig, export_onnx
from trtopt.models.spec import InputSpec, LoadedModel


class _ImportBlocker:
    """A meta-path finder that fails the test if ``tensorrt`` is imported while installed."""

    def find_spec(self, name, path=None, target=None):
        if name == "tensorrt" or name.startswith("tensorrt."):
            raise AssertionError(f"{name} was imported")
        return None


@pytest.fixture
def no_tensorrt_import(monkeypatch):
    monkeypatch.setattr(sys, "meta_path", [_ImportBlocker(), *sys.meta_path])
    monkeypatch.delitem(sys.modules, "tensorrt", raising=False)


@pytest.fixture(scope="module")
def cnn_onnx(tmp_path_factory):
    from trtopt.models.load import load_model

    loaded = load_model("tests.helpers.tiny_models:tiny_cnn")
    path = tmp_path_factory.mktemp("backends") / "tiny_cnn.onnx"
    return loaded, export_onnx(loaded, path, ExportConfig(exporter="torchscript", opset=17))


# --- registry ---


def test_registered_names():
    assert set(backends.names()) >= {"onnxruntime", "torch", "tensorrt"}


@pytest.mark.parametrize("alias, name", [("ort", "onnxruntime"), ("trt", "tensorrt"), ("pytorch", "torch"),
                                         ("onnxruntime", "onnxruntime"), ("torch", "torch")])
def test_aliases_resolve(alias, name):
    assert backends.get_backend(alias).name == name


def test_unknown_backend_lists_the_names():
    with pytest.raises(TrtoptError, match="unknown backend 'openvino'") as err:
        backends.get_backend("openvino")
    for name in ("onnxruntime", "torch", "tensorrt"):
        assert name in str(err.value)


def test_capabilities_are_declared():
    for name in backends.names():
        caps = backends.get_backend(name).capabilities.to_dict()
        assert set(caps) == {"model_formats", "precisions", "devices", "dynamic_shapes"}
        assert caps["model_formats"] and caps["precisions"] and caps["devices"]


@pytest.mark.parametrize("request_args, backend, what, supported", [
    (("torch", "torch", "int8", "cpu"), "torch", "precision 'int8'", "fp32"),
    (("tensorrt", "onnx", "fp16", "cpu"), "tensorrt", "device 'cpu'", "cuda"),
    (("onnxruntime", "torch", "fp32", "cpu"), "onnxruntime", "model format 'torch'", "onnx"),
])
def test_check_request_refuses_what_the_backend_cannot_do(request_args, backend, what, supported):
    with pytest.raises(TrtoptError) as err:
        backends.check_request(*request_args)
    message = str(err.value)
    assert f"backend {backend} does not support {what}" in message
    assert f"it supports {supported}" in message


def test_check_request_accepts_what_the_backend_can_do(no_tensorrt_import):
    assert backends.check_request("ort", "onnx", "int8", "cpu").name == "onnxruntime"
    assert backends.check_request("pytorch", "torch").name == "torch"
    assert backends.check_request("trt", "engine", "fp8", "cuda").name == "tensorrt"  # a check, not a load


# --- every runner: declared inputs, one feed check, a context manager ---


@pytest.mark.parametrize("name", backends.names())
def test_every_registered_backend_loads_a_runner(name, no_tensorrt_import):
    # the class `load` declares it returns: a concrete Runner, so it inherits the feed check and `with`
    runner_class = typing.get_type_hints(backends.get_backend(name).load)["return"]
    assert issubclass(runner_class, Runner) and not runner_class.__abstractmethods__
    assert runner_class.check_feed is Runner.check_feed and runner_class.infer is Runner.infer
    assert runner_class.__enter__ is Runner.__enter__ and runner_class.__exit__ is Runner.__exit__


def _spy_close(runner):
    calls = []
    close = runner.close
    runner.close = lambda: (calls.append(1), close())
    return calls


@pytest.mark.parametrize("name, dims", [("onnxruntime", ("batch", 3, 32, 32)), ("torch", ("N", 3, 32, 32))])
def test_runners_declare_their_inputs_and_close_on_exit(cnn_onnx, name, dims):
    loaded, art = cnn_onnx
    model = art if name == "onnxruntime" else loaded
    with backends.get_backend(name).load(model) as runner:
        closed = _spy_close(runner)
        assert [(s.name, s.dims, s.dtype) for s in runner.inputs] == [("input", dims, "float32")]
        assert all(isinstance(s, InputSpec) for s in runner.inputs)
        assert runner.infer(random_feed(loaded.inputs, 2))["output"].shape == (2, 10)
        assert closed == []
    assert closed == [1]
    with pytest.raises(TrtoptError, match="'input' has shape"):  # closed on an error too
        with backends.get_backend(name).load(model) as runner:
            closed = _spy_close(runner)
            runner.infer({"input": np.zeros((2, 3, 8, 8), np.float32)})
    assert closed == [1]


def test_a_runner_checks_each_feed_once(cnn_onnx, monkeypatch):
    from trtopt.measure.profile import TimingConfig, time_interleaved

    loaded, art = cnn_onnx
    calls = []
    check = trtopt.backends.base.check_feed
    monkeypatch.setattr(trtopt.backends.base, "check_feed", lambda *a, **k: (calls.append(1), check(*a, **k))[1])
    with OrtRunner(art.path, OrtConfig()) as runner, TorchRunner(loaded) as reference:
        raw = {"input": random_feed(loaded.inputs, 2)["input"].astype(np.float64)}
        checked = runner.check_feed(raw)
        assert len(calls) == 1 and checked["input"].dtype == np.float32
        for _ in range(3):
            runner.infer(checked)
        assert len(calls) == 1  # its own checked feed passes straight through
        runner.infer(reference.check_feed(raw))  # checked against other inputs: checked again
        assert len(calls) == 3
        calls.clear()
        time_interleaved({"ort": runner, "torch": reference}, raw, TimingConfig(warmup_iterations=2, iterations=5))
        assert len(calls) == 2  # once per runner, before any timed call


# --- ONNX Runtime ---


def test_ort_runner_matches_pytorch(cnn_onnx):
    loaded, art = cnn_onnx
    runner = backends.get_backend("onnxruntime").load(art)
    feed = random_feed(loaded.inputs, 4, seed=1)
    got = runner.infer(runner.check_feed(feed))
    expected = TorchRunner(loaded).infer(feed)
    assert list(got) == ["output"] and got["output"].shape == (4, 10)
    np.testing.assert_allclose(got["output"], expected["output"], atol=1e-4, rtol=0)
    runner.close()


def test_ort_check_feed_wrong_shape_names_input_and_shapes(cnn_onnx):
    _, art = cnn_onnx
    runner = OrtRunner(art.path, OrtConfig())
    with pytest.raises(TrtoptError) as err:
        runner.check_feed({"input": np.zeros((2, 3, 16, 16), np.float32)})
    message = str(err.value)
    assert "'input'" in message and "tiny_cnn.onnx" in message
    assert "(batch, 3, 32, 32)" in message and "(2, 3, 16, 16)" in message
    with pytest.raises(TrtoptError, match="'input'"):  # wrong rank too
        runner.check_feed({"input": np.zeros((3, 32, 32), np.float32)})


def test_ort_check_feed_missing_input(cnn_onnx):
    _, art = cnn_onnx
    runner = OrtRunner(art.path, OrtConfig())
    with pytest.raises(TrtoptError, match="lack input 'input' of tiny_cnn.onnx") as err:
        runner.check_feed({"image": np.zeros((1, 3, 32, 32), np.float32)})
    assert "(have image)" in str(err.value)


def test_ort_check_feed_casts_dtype(cnn_onnx):
    loaded, art = cnn_onnx
    runner = OrtRunner(art.path, OrtConfig())
    feed32 = random_feed(loaded.inputs, 2, seed=2)
    checked = runner.check_feed({"input": feed32["input"].astype(np.float64)})
    assert checked["input"].dtype == np.float32
    np.testing.assert_array_equal(checked["input"], feed32["input"])
    np.testing.assert_allclose(runner.infer(checked)["output"], runner.infer(feed32)["output"], atol=1e-6)


def test_ort_unknown_provider_lists_available(cnn_onnx):
    _, art = cnn_onnx
    with pytest.raises(TrtoptError, match="NoSuchExecutionProvider") as err:
        OrtRunner(art.path, OrtConfig(providers=("NoSuchExecutionProvider",)))
    for provider in onnxruntime.get_available_providers():
        assert provider in str(err.value)


def test_ort_settings_are_recorded(cnn_onnx):
    _, art = cnn_onnx
    runner = backends.get_backend("ort").load(
        art.path, config=OrtConfig(graph_optimization_level="basic", intra_op_threads=2, inter_op_threads=1))
    info = runner.describe()
    assert info["backend"] == "onnxruntime" and info["model"] == str(art.path)
    assert info["graph_optimization_level"] == "basic"
    assert info["intra_op_threads"] == 2 and info["inter_op_threads"] == 1
    assert info["providers"] == ["CPUExecutionProvider"]
    assert runner.session.get_session_options().intra_op_num_threads == 2


def test_ort_load_of_a_missing_file_names_it(tmp_path):
    missing = tmp_path / "missing.onnx"
    with pytest.raises(TrtoptError, match="does not exist") as err:
        backends.get_backend("onnxruntime").load(missing)
    assert str(missing) in str(err.value)


def test_ort_availability():
    ok, version = backends.get_backend("onnxruntime").availability()
    assert ok and version == onnxruntime.__version__


# --- PyTorch ---


class _TupleModel(torch.nn.Module):
    def forward(self, x):
        return x * 2, {"a": x + 1, "b": (x - 1, x.sum(dim=1))}


def test_flatten_outputs_of_tensors_tuples_and_dicts():
    x = torch.arange(6.0).reshape(2, 3)
    assert len(flatten_outputs(x)) == 1 and flatten_outputs(x)[0] is x
    flat = flatten_outputs(_TupleModel()(x))
    assert [t.shape for t in flat] == [(2, 3), (2, 3), (2, 3), (2,)]
    torch.testing.assert_close(flat[0], x * 2)
    torch.testing.assert_close(flat[2], x - 1)
    torch.testing.assert_close(flat[3], x.sum(dim=1))
    ordered = OrderedDict(logits=x, hidden=[x + 5])
    assert [t[0, 0].item() for t in flatten_outputs(ordered)] == [0.0, 5.0]
    Pair = namedtuple("Pair", "first second")
    assert [t[0, 0].item() for t in flatten_outputs(Pair(x, x + 3))] == [0.0, 3.0]


def test_torch_runner_names_outputs(tiny_cnn):
    runner = backends.get_backend("torch").load(tiny_cnn)
    feed = random_feed(tiny_cnn.inputs, 3, seed=0)
    out = runner.infer(feed)
    assert list(out) == ["output"] and out["output"].shape == (3, 10) and out["output"].dtype == np.float32
    with torch.inference_mode():
        expected = tiny_cnn.module(torch.from_numpy(feed["input"])).numpy()
    np.testing.assert_allclose(out["output"], expected, atol=1e-6)


def test_torch_runner_names_extra_outputs_by_position():
    loaded = LoadedModel(_TupleModel(), "test:tuple", (InputSpec("x", (3,)),), output_names=("doubled", "plus_one"))
    out = TorchRunner(loaded).infer({"x": np.ones((2, 3), np.float32)})
    assert list(out) == ["doubled", "plus_one", "output_2", "output_3"]
    np.testing.assert_allclose(out["doubled"], 2.0)
    np.testing.assert_allclose(out["output_2"], 0.0)
    np.testing.assert_allclose(out["output_3"], [3.0, 3.0])


def test_torch_runner_errors_name_the_input(tiny_cnn):
    runner = TorchRunner(tiny_cnn)
    with pytest.raises(TrtoptError, match="lack input 'input'"):
        runner.infer({"image": np.zeros((1, 3, 32, 32), np.float32)})
    with pytest.raises(TrtoptError, match=r"'input' has shape \(1, 5\), .* expects \(N, 3, 32, 32\)"):
        runner.infer({"input": np.zeros((1, 5), np.float32)})
    # inputs that fit the declaration but not the module: the module's own error, naming the shapes fed
    misdeclared = LoadedModel(tiny_cnn.module, "test:misdeclared", (InputSpec("input", (5,)),))
    with pytest.raises(TrtoptError, match=r"the model rejected inputs input\(1, 5\)"):
        TorchRunner(misdeclared).infer({"input": np.zeros((1, 5), np.float32)})


def test_torch_backend_rejects_unknown_options(tiny_cnn):
    with pytest.raises(TrtoptError, match="'providers'"):
        backends.get_backend("torch").load(tiny_cnn, providers=("CPUExecutionProvider",))


def test_torch_runner_describe(tiny_cnn):
    info = TorchRunner(tiny_cnn).describe()
    assert info["backend"] == "torch" and info["model"] == "tests.helpers.tiny_models:tiny_cnn"
    assert info["device"] == "cpu" and info["intra_op_threads"] == torch.get_num_threads()


# --- TensorRT (not installed here) ---


@pytest.mark.skipif(trtopt.trt.runtime.installed_version() is not None, reason="TensorRT is installed here")
def test_tensorrt_unavailable_names_the_extra(no_tensorrt_import):
    backend = backends.get_backend("tensorrt")
    ok, reason = backend.availability()
    assert ok is False
    assert "trtopt[tensorrt]" in reason
    with pytest.raises(TrtoptError, match=r"trtopt\[tensorrt\]") as err:
        backend.load("model.onnx")
    assert "tensorrt" in str(err.value).split(";")[0]
    assert "tensorrt" not in sys.modules


@pytest.mark.parametrize("distribution", ["tensorrt", "tensorrt-cu12"])
def test_tensorrt_installed_without_gpu_says_so(monkeypatch, no_tensorrt_import, distribution):
    versions = {distribution: "10.3.0"}
    monkeypatch.setattr(trtopt.trt.runtime, "package_version", versions.get)
    monkeypatch.setattr(trtopt.trt.cuda, "probe_gpus", lambda: {"available": False, "reason": "no CUDA device (test)"})
    backend = backends.get_backend("tensorrt")
    ok, reason = backend.availability()
    assert ok is False and "10.3.0" in reason and "no CUDA device (test)" in reason
    with pytest.raises(TrtoptError, match="cannot run here") as err:
        backend.load("model.onnx")
    assert "no CUDA device (test)" in str(err.value) and "GPU" in str(err.value)
    assert "pip install" not in str(err.value)  # it is installed: don't tell the user to install it
    assert "tensorrt" not in sys.modules


class _FailsWithoutMessage(torch.nn.Module):
    def forward(self, x):
        raise RuntimeError()  # str() is "": the error message must still be one line


def test_torch_runner_error_without_a_message_names_its_type():
    loaded = LoadedModel(_FailsWithoutMessage(), "test:fails", (InputSpec("x", (3,)),))
    with pytest.raises(TrtoptError, match=r"the model rejected inputs x\(2, 3\): RuntimeError; fix:"):
        TorchRunner(loaded).infer({"x": np.ones((2, 3), np.float32)})


def test_ort_load_error_without_a_message_names_its_type(tmp_path):
    from trtopt.backends.ort import load_error

    error = load_error(tmp_path / "m.onnx", RuntimeError(), onnxruntime.__version__)
    assert error.problem == f"ONNX Runtime cannot load {tmp_path / 'm.onnx'}: RuntimeError"
