"""trtopt.trt.engine: sidecars, engine-cache keys, mismatch refusals, parser errors, calibration batches,
layer summaries and trtexec statistics (pure Python: no TensorRT, no GPU)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.helpers.trt_fixtures import conv_model
from trtopt.data import iter_batches
from trtopt.errors import TrtoptError
from trtopt.models.spec import InputSpec
from trtopt.trt.build import format_parser_errors
from trtopt.trt.calibrator import CalibrationBatches
from trtopt.trt.engine import (
    check_engine_file,
    check_engine_matches,
    engine_cache_key,
    machine_identity,
    make_sidecar,
    read_sidecar,
    sidecar_path,
    summarize_layers,
)
from trtopt.trt.plan import BuildOptions, ShapeProfile, make_plan
from trtopt.trt.timing import trtexec_stats

ORIN = {"name": "Orin", "compute_capability": "8.7"}
H200 = {"name": "NVIDIA H200", "compute_capability": "9.0"}


@pytest.fixture(scope="module")
def plan(tmp_path_factory):
    model = conv_model(tmp_path_factory.mktemp("eng") / "m.onnx", "int8")
    return make_plan(model, BuildOptions(shapes=(ShapeProfile("input", (1, 3, 8, 8), (4, 3, 8, 8), (8, 3, 8, 8)),)), "10.3")


def sidecar_for(plan, identity, **plan_changes):
    from dataclasses import replace

    p = replace(plan, **plan_changes) if plan_changes else plan
    return make_sidecar(p, identity, "ab" * 32, 1234, 12.5, {"runtime_version": 12060, "driver_version": 12060})


# --- cache keys


def test_engine_cache_key_changes_with_every_bound_field(plan):
    base = machine_identity("10.3.0", ORIN)
    key = engine_cache_key(plan.onnx_sha256, plan.plan_hash(), base)
    assert key == engine_cache_key(plan.onnx_sha256, plan.plan_hash(), dict(base))
    variants = [("0" * 64, plan.plan_hash(), base), (plan.onnx_sha256, "1" * 64, base),
                (plan.onnx_sha256, plan.plan_hash(), machine_identity("10.16.1", ORIN)),
                (plan.onnx_sha256, plan.plan_hash(), machine_identity("10.3.0", {**ORIN, "name": "Xavier"})),
                (plan.onnx_sha256, plan.plan_hash(), machine_identity("10.3.0", {**ORIN, "compute_capability": "7.2"}))]
    assert len({key, *(engine_cache_key(*v) for v in variants)}) == 6


# --- sidecars and refusals


def test_sidecar_records_what_the_engine_is_bound_to(plan):
    s = sidecar_for(plan, machine_identity("10.3.0", ORIN))
    assert s["trt_version"] == "10.3.0" and s["gpu_name"] == "Orin" and s["compute_capability"] == "8.7"
    assert s["onnx_sha256"] == plan.onnx_sha256 and s["plan_sha256"] == plan.plan_hash()
    assert s["plan"]["precision"] == "int8" and s["build_time_s"] == 12.5 and s["cuda_runtime_version"] == 12060
    json.dumps(s)


def test_engine_from_another_trt_version_is_refused_naming_the_field(plan):
    s = sidecar_for(plan, machine_identity("10.3.0", ORIN))
    with pytest.raises(TrtoptError, match=r"built for TensorRT version 10\.3\.0, this machine has 10\.16\.1") as err:
        check_engine_matches(s, machine_identity("10.16.1", ORIN), "m.engine")
    assert "\n" not in str(err.value) and "rebuild" in str(err.value)


def test_engine_from_another_gpu_is_refused_naming_the_field(plan):
    s = sidecar_for(plan, machine_identity("10.3.0", ORIN))
    with pytest.raises(TrtoptError, match=r"built for GPU Orin, this machine has NVIDIA H200 \(also compute capability\)"):
        check_engine_matches(s, machine_identity("10.3.0", H200))
    check_engine_matches(s, machine_identity("10.3.0", ORIN))  # same machine: accepted


def test_portability_flags_are_honoured(plan):
    s = sidecar_for(plan, machine_identity("10.3.0", H200), builder_flags=("VERSION_COMPATIBLE",))
    check_engine_matches(s, machine_identity("10.16.1", H200))  # later TensorRT: allowed
    with pytest.raises(TrtoptError, match="TensorRT version"):
        check_engine_matches(s, machine_identity("10.3.0", H200) | {"trt_version": "10.2.0"})
    s = sidecar_for(plan, machine_identity("10.16.1", H200), hardware_compatibility_level="AMPERE_PLUS")
    check_engine_matches(s, machine_identity("10.16.1", {"name": "NVIDIA A100", "compute_capability": "8.0"}))
    with pytest.raises(TrtoptError, match="GPU"):
        check_engine_matches(s, machine_identity("10.16.1", {"name": "Tesla T4", "compute_capability": "7.5"}))


def test_engine_file_must_match_its_sidecar(plan, tmp_path):
    import hashlib

    engine = tmp_path / "m.engine"
    engine.write_bytes(b"engine-bytes")
    s = make_sidecar(plan, machine_identity("10.3.0", ORIN), hashlib.sha256(b"engine-bytes").hexdigest(), 12, 1.0, {})
    sidecar_path(engine).write_text(json.dumps(s))
    check_engine_file(engine, read_sidecar(engine))
    engine.write_bytes(b"engine-byteX")
    with pytest.raises(TrtoptError, match="does not match its sidecar"):
        check_engine_file(engine, read_sidecar(engine))
    sidecar_path(engine).unlink()
    with pytest.raises(TrtoptError, match="has no sidecar m.engine.json"):
        read_sidecar(engine)


# --- parser errors


class _Err:
    def __init__(self, node, op, desc):
        self._n, self._o, self._d = node, op, desc

    def node_name(self):
        return self._n

    def node_operator(self):
        return self._o

    def desc(self):
        return self._d

    def node(self):
        return 7


class _Parser:
    def __init__(self, errors):
        self.errors = errors
        self.num_errors = len(errors)

    def get_error(self, i):
        return self.errors[i]


def test_parser_errors_name_nodes_in_one_line():
    parser = _Parser([_Err("/layer1/Gather", "Gather", "Assertion failed:\n indices must be int32"),
                      _Err("", "", "unsupported"), _Err("a", "Add", "x"), _Err("b", "Mul", "y")])
    text = format_parser_errors(parser, "model.onnx")
    assert text.startswith("TensorRT's ONNX parser rejected model.onnx: node '/layer1/Gather' (Gather): "
                           "Assertion failed: indices must be int32; node #7: unsupported")
    assert text.endswith("; and 1 more") and "\n" not in text


# --- calibration batches


INPUT = InputSpec("input", (3, 8, 8), "float32")


def chunks(sizes, seed=0):
    rng = np.random.default_rng(seed)
    return [{"input": rng.standard_normal((n, 3, 8, 8))} for n in sizes]


def test_calibration_batches_regroup_chunks_in_order():
    source = chunks([3, 5, 4, 2])
    batches = CalibrationBatches(source, [INPUT], batch_size=4)
    got = [b["input"] for b in iter(batches.next_batch, None)]
    assert [g.shape for g in got] == [(4, 3, 8, 8)] * 3 and batches.batches_served == 3
    assert all(g.dtype == np.float32 and g.flags["C_CONTIGUOUS"] for g in got)
    np.testing.assert_array_equal(np.concatenate(got), np.concatenate([c["input"] for c in source])[:12].astype(np.float32))
    assert batches.dropped == 2  # the partial batch at the end is not fed (TensorRT needs full batches)


def test_calibration_batches_stop_at_max_samples_and_take_arrays():
    arrays = [c["input"] for c in chunks([6, 6])]
    batches = CalibrationBatches(arrays, [INPUT], batch_size=4, max_samples=8)
    assert sum(1 for _ in iter(batches.next_batch, None)) == 2 and batches.dropped == 0


def test_calibration_batches_from_trtopt_data_loader():
    feed = {"input": np.arange(10 * 3 * 8 * 8, dtype=np.float32).reshape(10, 3, 8, 8)}
    batches = CalibrationBatches(iter_batches(feed, 3), [INPUT], batch_size=5)
    first, second = batches.next_batch(), batches.next_batch()
    np.testing.assert_array_equal(np.concatenate([first["input"], second["input"]]), feed["input"])
    assert batches.next_batch() is None


def test_calibration_batches_check_inputs():
    with pytest.raises(TrtoptError, match=r"'input' has shape \(2, 3, 9, 8\), the network's calibration profile "
                                          r"expects \(N, 3, 8, 8\)"):
        CalibrationBatches([{"input": np.zeros((2, 3, 9, 8))}], [INPUT], 2).next_batch()
    two = [INPUT, InputSpec("mask", (8,), "int64")]
    with pytest.raises(TrtoptError, match="calibration item 0 lack input 'mask'"):
        CalibrationBatches([{"input": np.zeros((2, 3, 8, 8))}], two, 2).next_batch()
    with pytest.raises(TrtoptError, match="different sample counts"):
        CalibrationBatches([{"input": np.zeros((2, 3, 8, 8)), "mask": np.zeros((3, 8), np.int64)}], two, 2).next_batch()
    with pytest.raises(TrtoptError, match=r"'mask' has dtype float64, .* expects int64"):
        CalibrationBatches([{"input": np.zeros((2, 3, 8, 8)), "mask": np.zeros((2, 8))}], two, 2).next_batch()
    with pytest.raises(TrtoptError, match=r"calibration item 0 is a ndarray, not a dict of arrays \(the network has 2"):
        CalibrationBatches([np.zeros((2, 3, 8, 8))], two, 2).next_batch()


# --- layer summary


def test_summarize_layers_counts_precisions():
    info = {"Layers": [
        {"Name": "conv1", "Outputs": [{"Name": "a", "Format/Datatype": "Channel major FP16 format where channel % 8 == 0"}]},
        {"Name": "conv2", "Outputs": [{"Name": "b", "Format/Datatype": "Row major linear Int8 format"}]},
        {"Name": "conv3", "Outputs": [{"Name": "c", "Format/Datatype": "Thirty-two wide channel vectorized row major Int8 format"}]},
        {"Name": "head", "Outputs": [{"Name": "d", "Format/Datatype": "Row major linear FP32"}]},
        "reformat (names only)"]}
    assert summarize_layers(json.dumps(info)) == {"layers": 5, "by_precision": {"FP16": 1, "FP32": 1, "INT8": 2,
                                                                                "unknown": 1}}


# --- statistics


def test_trtexec_stats_match_hand_computed_values():
    compute = [1.0, 2.0, 3.0, 4.0]
    stats = trtexec_stats([0.1] * 4, compute, [0.2] * 4, wall_s=0.02, batch_size=8, transfers=True, cuda_graph=False)
    assert stats["throughput_qps"] == pytest.approx(200.0) and stats["throughput_samples_per_s"] == pytest.approx(1600.0)
    assert stats["compute_ms"] == pytest.approx({"min": 1.0, "mean": 2.5, "median": 2.5, "p90": 3.7, "p95": 3.85,
                                                 "p99": 3.97, "max": 4.0})
    assert stats["latency_ms"]["median"] == pytest.approx(2.8) and stats["h2d_ms"]["max"] == pytest.approx(0.1)
    assert stats["compute_cov_percent"] == pytest.approx(np.std(compute, ddof=1) / 2.5 * 100)
    assert len(stats["warnings"]) == 1 and "coefficient of variation" in stats["warnings"][0]


def test_trtexec_stats_stable_run_has_no_warning_and_no_transfers():
    stats = trtexec_stats([5.0] * 3, [1.0, 1.01, 0.99], [5.0] * 3, wall_s=1.0, batch_size=1, transfers=False,
                          cuda_graph=True)
    assert stats["warnings"] == [] and stats["h2d_ms"]["max"] == 0.0 and stats["latency_ms"]["mean"] == pytest.approx(1.0)
    assert stats["transfers_included"] is False and stats["cuda_graph"] is True
