"""TensorRT on a real GPU: build, run, time a tiny engine and compare it with ONNX Runtime.

Marked ``gpu``; skipped (not faked) where there is no NVIDIA GPU or no TensorRT.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.helpers.trt_fixtures import conv_model
from trtopt.errors import TrtoptError
from trtopt.trt.cuda import probe_gpus
from trtopt.trt.plan import ShapeProfile
from trtopt.trt.runtime import installed_version

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(installed_version() is None or not probe_gpus()["available"],
                                 reason="needs an NVIDIA GPU and TensorRT")]

SHAPES = ShapeProfile("input", (1, 3, 8, 8), (4, 3, 8, 8), (8, 3, 8, 8))


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    import tensorrt

    from trtopt.trt.build import build_engine
    from trtopt.trt.plan import BuildOptions, make_plan

    root = tmp_path_factory.mktemp("gpu")
    model = conv_model(root / "m.onnx", "fp32")
    plan = make_plan(model, BuildOptions(shapes=(SHAPES,), timing_cache=str(root / "t.cache")),
                     tensorrt.__version__)
    return root, model, plan, build_engine(plan, root / "m.engine", cache_dir=root / "cache")


def test_engine_matches_onnxruntime(built):
    import onnxruntime as ort

    from trtopt.trt.runner import TensorRTRunner

    root, model, _, build = built
    assert build.path.is_file() and (root / "t.cache").stat().st_size > 0
    assert build.sidecar["layers"]["layers"] >= 1 and json.loads((root / "m.engine.layers.json").read_text())
    x = np.random.default_rng(0).standard_normal((4, 3, 8, 8)).astype(np.float32)
    expected = ort.InferenceSession(str(model)).run(None, {"input": x})[0]
    runner = TensorRTRunner(build.path)
    try:
        got = runner.infer({"input": x})["output"]
        np.testing.assert_allclose(got, expected, rtol=1e-3, atol=1e-3)  # TF32 is on by default
        got2 = runner.infer({"input": x[:2]})["output"]  # another shape within the profile
        np.testing.assert_allclose(got2, expected[:2], rtol=1e-3, atol=1e-3)
        stats = runner.profile({"input": x}, iterations=50, warmup=5)
        assert stats["iterations"] == 50 and stats["compute_ms"]["median"] > 0 and stats["throughput_qps"] > 0
        graph = runner.profile({"input": x}, iterations=20, warmup=5, transfers=False, cuda_graph=True)
        assert graph["cuda_graph"] and graph["h2d_ms"]["max"] == 0.0
        with pytest.raises(TrtoptError, match="outside engine"):
            runner.infer({"input": np.zeros((16, 3, 8, 8), np.float32)})
    finally:
        runner.close()


def test_engine_cache_reuses_and_refuses_stale(built):
    from trtopt.trt.build import build_engine
    from trtopt.trt.runner import TensorRTRunner

    root, _, plan, _ = built
    again = build_engine(plan, root / "again.engine", cache_dir=root / "cache")
    assert again.cache_hit and again.path.read_bytes() == (root / "m.engine").read_bytes()
    side = json.loads((root / "again.engine.json").read_text())
    side["trt_version"] = "10.0.0"
    (root / "again.engine.json").write_text(json.dumps(side))
    with pytest.raises(TrtoptError, match="built for TensorRT version 10.0.0"):
        TensorRTRunner(root / "again.engine")


def test_unparseable_onnx_and_dla_on_a_gpu_are_one_line_errors(built, tmp_path):
    import onnx
    import tensorrt
    from onnx import TensorProto, helper

    from trtopt.trt.build import build_engine
    from trtopt.trt.plan import BuildOptions, make_plan

    node = helper.make_node("NoSuchOp", ["input"], ["output"], domain="com.example")
    graph = helper.make_graph([node], "bad", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3])],
                              [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 3])])
    bad = tmp_path / "bad.onnx"
    onnx.save_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                            helper.make_opsetid("com.example", 1)]), str(bad))
    plan = make_plan(bad, BuildOptions(), tensorrt.__version__)
    with pytest.raises(TrtoptError, match="ONNX parser rejected bad.onnx") as err:
        build_engine(plan, tmp_path / "bad.engine")
    assert "\n" not in str(err.value) and not (tmp_path / "bad.engine").exists()
    gpu = probe_gpus()["devices"][0]
    if not gpu["integrated"]:
        model = built[1]
        with pytest.raises(TrtoptError, match="has no DLA"):  # refused by the plan (no DLA in this version) or the build
            dla = make_plan(model, BuildOptions(shapes=(SHAPES,), target="jetson-orin", dla_core=0),
                            tensorrt.__version__)
            build_engine(dla, tmp_path / "dla.engine")
