"""Edge backends: ExecuTorch (.pte, XNNPACK) and LiteRT (.tflite), FP32 and INT8, and their bad inputs.

The conversion tests need the optional extras (``trtopt[executorch]``, ``trtopt[litert]``) and are
skipped without them; the error paths (missing extra, bad suffix, sidecar checks) run everywhere.
"""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest

from trtopt.backends import get_backend, names
from trtopt.edge.artifact import inspect_edge
from trtopt.edge.convert import EdgeConfig
from trtopt.edge.export import export_edge
from trtopt.errors import TrtoptError
from trtopt.models.load import load_model
from trtopt.models.spec import InputSpec

HAS_ET = importlib.util.find_spec("executorch") is not None
HAS_LT = importlib.util.find_spec("litert_torch") is not None and importlib.util.find_spec("ai_edge_litert") is not None
needs_et = pytest.mark.skipif(not HAS_ET, reason="needs the executorch extra")
needs_lt = pytest.mark.skipif(not HAS_LT, reason="needs the litert extra")
SUFFIXES = [pytest.param("pte", marks=needs_et), pytest.param("tflite", marks=needs_lt)]


def _feed(n=8, seed=0):
    return {"input": np.random.default_rng(seed).uniform(-1, 1, (n, 3, 32, 32)).astype(np.float32)}


def _torch_out(loaded, x):
    import torch

    with torch.no_grad():
        return loaded.module(torch.from_numpy(x)).numpy()


def test_backends_registered_by_name_and_alias():
    assert {"executorch", "litert"} <= set(names())
    assert get_backend("pte").name == "executorch" and get_backend("tflite").name == "litert"
    assert get_backend("executorch").capabilities.dynamic_shapes is False


def test_edge_backend_probes_import_no_runtime():
    import json as _json
    import subprocess
    import sys

    code = ("import sys, json\nfrom trtopt.backends import get_backend\n"
            "[get_backend(n).availability() for n in ('executorch', 'litert')]\nprint(json.dumps(sorted(sys.modules)))")
    loaded = _json.loads(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)
    assert [m for m in ("torch", "executorch", "litert_torch", "ai_edge_litert", "onnx") if m in loaded] == []


def test_config_validation():
    with pytest.raises(TrtoptError, match="precision='fp16' is not one of fp32, int8"):
        EdgeConfig(precision="fp16")
    with pytest.raises(TrtoptError, match="batch_size=0 must be a positive integer"):
        EdgeConfig(batch_size=0)


def test_output_suffix_is_checked_first(tmp_path):
    with pytest.raises(TrtoptError, match="no edge suffix"):
        export_edge(load_model("tests.helpers.tiny_models:tiny_cnn"), tmp_path / "m.onnx")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("suffix,module,extra", [("pte", "executorch", "executorch"), ("tflite", "litert_torch", "litert")])
def test_missing_extra_names_the_extra(tmp_path, monkeypatch, suffix, module, extra):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == module else real(name, *a))
    with pytest.raises(TrtoptError, match=rf"needs the Python package '{module}'.*pip install 'trtopt\[{extra}\]'"):
        export_edge(load_model("tests.helpers.tiny_models:tiny_cnn"), tmp_path / f"m.{suffix}")
    assert list(tmp_path.iterdir()) == []


def test_inspect_edge_refuses_files_without_or_with_stale_sidecar(tmp_path):
    with pytest.raises(TrtoptError, match="not an edge model"):
        inspect_edge(tmp_path / "m.onnx")
    (tmp_path / "m.pte").write_bytes(b"not a program")
    with pytest.raises(TrtoptError, match="has no sidecar m.pte.json"):
        inspect_edge(tmp_path / "m.pte")
    (tmp_path / "m.pte.json").write_text(json.dumps({"version": 1, "precision": "fp32", "sha256": "0" * 64,
                                                     "inputs": [], "output_names": []}))
    with pytest.raises(TrtoptError, match="changed since m.pte.json was written"):
        inspect_edge(tmp_path / "m.pte")


def test_doctor_reports_edge_backends():
    from trtopt.doctor import diagnose

    found = diagnose()
    for name in ("executorch", "litert"):
        assert name in found["backends"]
        if not found["backends"][name]["available"]:
            assert any(f"trtopt[{name}]" in line for line in found["advice"])


@pytest.mark.parametrize("suffix", SUFFIXES)
def test_fp32_matches_pytorch_and_benches_interleaved(tmp_path, suffix):
    from trtopt.measure.bench import bench, open_candidate, run_all, torch_candidate
    from trtopt.measure.profile import TimingConfig

    loaded = load_model("tests.helpers.tiny_models:tiny_cnn")
    art = export_edge(loaded, tmp_path / f"m.{suffix}", EdgeConfig(batch_size=2))
    assert art.size_bytes > 0 and art.sidecar.is_file() and art.precision == "fp32"
    assert inspect_edge(art.path).sha256 == art.sha256
    feed = _feed(5)  # odd count: the static batch of 2 is padded and trimmed
    cand = open_candidate(str(art.path), threads=1)
    out = run_all(cand, feed)["output"]
    np.testing.assert_allclose(out, _torch_out(loaded, feed["input"]), atol=1e-4, rtol=1e-4)
    result = bench([torch_candidate(loaded, threads=1), cand], feed, [2],
                   TimingConfig(warmup_iterations=1, iterations=3, min_iterations=3))
    assert result["candidates"][1]["backend"] == art.backend
    shape_error = r"'input' has shape \(4, 3, 32, 32\), m\.\w+ expects \(2, 3, 32, 32\)"
    with pytest.raises(TrtoptError, match=shape_error) as err:
        cand.runner.check_feed({"input": feed["input"][:4]})
    assert "batches of exactly 2" in str(err.value) and "batch_size=2" in str(err.value)
    with cand.runner as runner:  # the sidecar's inputs, batch fixed; closed on exit
        assert runner.inputs == (InputSpec("input", (3, 32, 32), "float32", batch=2),) and runner.static_batch == 2
    assert getattr(runner, "method", None) is None and getattr(runner, "interpreter", None) is None
    with pytest.raises(TrtoptError, match="already exists"):
        export_edge(loaded, art.path, EdgeConfig(batch_size=2))


@pytest.mark.parametrize("suffix", SUFFIXES)
def test_int8_is_smaller_and_close(tmp_path, suffix):
    from trtopt.measure.bench import open_candidate, run_all
    from trtopt.measure.compare import Tolerances, compare_outputs

    loaded = load_model("tests.helpers.tiny_models:tiny_cnn")
    fp32 = export_edge(loaded, tmp_path / f"f.{suffix}", EdgeConfig(batch_size=4))
    int8 = export_edge(loaded, tmp_path / f"q.{suffix}", EdgeConfig(precision="int8", batch_size=4), calibration=_feed(16))
    assert int8.precision == "int8" and int8.size_bytes < fp32.size_bytes
    feed = _feed(8, seed=1)
    result = compare_outputs({"output": _torch_out(loaded, feed["input"])},
                             run_all(open_candidate(str(int8.path), threads=1), feed), Tolerances(atol=1.0, min_cosine=0.98))
    assert result["outputs"][0]["cosine"] > 0.98
    with pytest.raises(TrtoptError, match="int8 needs calibration data"):
        export_edge(loaded, tmp_path / f"x.{suffix}", EdgeConfig(precision="int8"))
    with pytest.raises(TrtoptError, match="fewer samples than one batch"):
        export_edge(loaded, tmp_path / f"y.{suffix}", EdgeConfig(precision="int8", batch_size=32), calibration=_feed(8))


class _Histogram:
    """A model with an op neither runtime has (aten.histc)."""

    def __new__(cls):
        import torch

        class Histogram(torch.nn.Module):
            def forward(self, x):
                return torch.histc(x, bins=4)

        return Histogram()


class _DataDependent:
    """Python control flow on a tensor value: torch.export (both converters' first step) rejects it."""

    def __new__(cls):
        import torch

        class Branchy(torch.nn.Module):
            def forward(self, x):
                return x * 2 if float(x.sum()) > 0 else x - 1

        return Branchy()


def _loaded(module, shape=(8,)):
    from trtopt.models.spec import LoadedModel

    return LoadedModel(module.eval(), "test:module", (InputSpec("input", shape, "float32", -1.0, 1.0),))


@pytest.mark.parametrize("suffix,target", [pytest.param("pte", "executorch", marks=needs_et),
                                           pytest.param("tflite", "litert", marks=needs_lt)])
def test_unsupported_op_names_op_and_target(tmp_path, suffix, target):
    with pytest.raises(TrtoptError, match=rf"op aten\.histc\.default is not supported by target {target}"):
        export_edge(_loaded(_Histogram()), tmp_path / f"h.{suffix}")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("suffix,target", [pytest.param("pte", "executorch", marks=needs_et),
                                           pytest.param("tflite", "litert", marks=needs_lt)])
def test_converter_rejects_data_dependent_model(tmp_path, suffix, target):
    with pytest.raises(TrtoptError, match=rf"target {target}"):
        export_edge(_loaded(_DataDependent()), tmp_path / f"d.{suffix}")
    assert list(tmp_path.iterdir()) == []


@needs_et
@pytest.mark.slow
def test_cli_edge_export_then_compare(tmp_path, cli_env):
    from tests.helpers.cli import run

    r = run(["edge-export", "tests.helpers.tiny_models:tiny_cnn", "-o", "m.pte", "--precision", "int8", "--batch-size", "2",
             "--samples", "8", "-q"], tmp_path, cli_env)
    assert r.returncode == 0, r.stderr
    assert "wrote" in r.stdout and (tmp_path / "m.pte.json").is_file()
    r = run(["compare", "tests.helpers.tiny_models:tiny_cnn", "m.pte", "--samples", "6", "--atol", "1", "--min-cosine", "0.98"],
            tmp_path, cli_env)
    assert r.returncode == 0, r.stderr + r.stdout
    r = run(["edge-export", "tests.helpers.tiny_models:tiny_cnn", "-o", "m.bin"], tmp_path, cli_env)
    assert r.returncode == 2 and "no edge suffix" in r.stderr
