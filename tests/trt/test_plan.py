"""trtopt.trt.plan: build plans per TensorRT version, profile validation, trtexec lines (no TensorRT needed)."""

from __future__ import annotations

import json

import pytest

from tests.helpers.trt_fixtures import conv_model
from trtopt.errors import TrtoptError
from trtopt.trt.calibration_cache import ranges_to_cache, write_cache
from trtopt.trt.plan import BuildOptions, BuildPlan, ShapeProfile, make_plan, parse_profiles, resolve_version
from trtopt.trt.trtexec import TrtexecTiming, trtexec_args, unverified_flags

VERSIONS = ("10.3", "10.16", "11.1")
PROFILE = ShapeProfile("input", (1, 3, 8, 8), (4, 3, 8, 8), (16, 3, 8, 8))


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("trt_plan")
    return {kind: conv_model(root / f"{kind}.onnx", kind) for kind in ("fp32", "fp16", "int8")}


@pytest.fixture(scope="module")
def cache_103(tmp_path_factory):
    from trtopt.artifacts import Ranges, TensorRange

    ranges = Ranges({"input": TensorRange(2.0, -2.0, 2.0), "y": TensorRange(4.0, -4.0, 4.0)}, "entropy", 8)
    path = tmp_path_factory.mktemp("cache") / "model.cache"
    write_cache(ranges_to_cache(ranges, trt_version="10.3.0"), path)
    return path


def plan(model, version, **kw):
    return make_plan(model, BuildOptions(shapes=(PROFILE,), **kw), version)


def test_resolve_version_accepts_short_full_and_wheel_versions():
    assert resolve_version("10.3") == "10.3.0"
    assert resolve_version("10.3.0.26") == "10.3.0"
    assert resolve_version("10.16.0") == "10.16.1"
    assert resolve_version("11.1.0.106") == "11.1.0"
    with pytest.raises(TrtoptError, match="not one trtopt's TensorRT code is checked against"):
        resolve_version("8.6.1")


@pytest.mark.parametrize("version", VERSIONS)
def test_fp32_plan_needs_no_precision_flags(models, version):
    p = plan(models["fp32"], version)
    assert p.precision == "fp32" and p.builder_flags == () and p.int8_source is None
    assert p.typing == ("strong" if version == "11.1" else "weak")
    assert p.network_flags == ()  # 11.x: create_network(0); STRONGLY_TYPED is ignored there


def test_fp16_on_10x_uses_the_builder_flag_on_fp32_onnx(models):
    for version in ("10.3", "10.16"):
        p = plan(models["fp32"], version, precision="fp16")
        assert p.builder_flags == ("FP16",) and p.typing == "weak" and p.network_flags == ()
        assert any("deprecated" in n for n in p.notes)


def test_fp16_on_11x_requires_the_cast_onnx(models):
    with pytest.raises(TrtoptError, match=r"FP16 asked for fp32\.onnx on TensorRT 11\.1\.0.*--precision fp16"):
        plan(models["fp32"], "11.1", precision="fp16")
    p = plan(models["fp16"], "11.1", precision="fp16")
    assert p.precision == "fp16" and p.builder_flags == () and p.typing == "strong"


@pytest.mark.parametrize("version", ("10.3", "10.16"))
def test_cast_fp16_onnx_on_10x_builds_strongly_typed(models, version):
    p = plan(models["fp16"], version)
    assert p.precision == "fp16" and p.network_flags == ("STRONGLY_TYPED",) and p.builder_flags == ()
    weak = plan(models["fp16"], version, typing="weak")
    assert weak.network_flags == () and weak.builder_flags == ("FP16",)


@pytest.mark.parametrize("version", VERSIONS)
def test_qdq_onnx_builds_int8_on_every_version(models, version):
    p = plan(models["int8"], version)
    assert p.precision == "int8" and p.int8_source == "qdq" and p.builder_flags == ()
    assert p.network_flags == (("STRONGLY_TYPED",) if version != "11.1" else ())


@pytest.mark.parametrize("version", ("10.3", "10.16"))
def test_weakly_typed_qdq_on_10x_sets_int8(models, version):
    p = plan(models["int8"], version, typing="weak")
    assert p.builder_flags == ("INT8",) and p.network_flags == ()
    assert plan(models["int8"], version, typing="weak", mixed_fp16=True).builder_flags == ("INT8", "FP16")


def test_int8_on_11x_without_qdq_is_a_clear_error(models, cache_103):
    with pytest.raises(TrtoptError, match=r"INT8 asked for fp32\.onnx on TensorRT 11\.1\.0.*no Q/DQ.*--target tensorrt"):
        plan(models["fp32"], "11.1", precision="int8")
    with pytest.raises(TrtoptError, match="calibrators and calibration caches were removed in 11.0"):
        plan(models["fp32"], "11.1", calib_cache=str(cache_103))
    with pytest.raises(TrtoptError, match="removed in 11.0"):
        plan(models["fp32"], "11.1", precision="int8", calibrate=True)


def test_implicit_int8_from_cache_on_103(models, cache_103):
    p = plan(models["fp32"], "10.3", calib_cache=str(cache_103))
    assert p.precision == "int8" and p.int8_source == "calibration-cache" and p.builder_flags == ("INT8",)
    assert p.typing == "weak" and len(p.calib_cache_sha256) == 64


def test_cache_for_another_version_is_refused_with_the_convert_command(models, cache_103):
    with pytest.raises(TrtoptError, match=r"is for TensorRT 10\.3\.0.*silently ignore.*trtopt cache convert"):
        plan(models["fp32"], "10.16", calib_cache=str(cache_103))


def test_implicit_int8_needs_scales(models):
    with pytest.raises(TrtoptError, match="needs scales"):
        plan(models["fp32"], "10.3", precision="int8")


def test_calibrator_route_on_10x(models):
    p = plan(models["fp32"], "10.16", precision="int8", calibrate=True)
    assert p.int8_source == "calibrator" and p.builder_flags == ("INT8",)
    assert p.calib_batch_size == 4  # the OPT batch of input:1x3x8x8,4x3x8x8,16x3x8x8: TensorRT calibrates there


def test_precision_that_contradicts_the_graph_is_refused(models):
    with pytest.raises(TrtoptError, match="holds Q/DQ nodes.*builds it as INT8, not fp32"):
        plan(models["int8"], "11.1", precision="fp32")
    with pytest.raises(TrtoptError, match="strongly typed network takes its precision from the graph"):
        plan(models["fp32"], "10.3", precision="fp16", typing="strong")
    with pytest.raises(TrtoptError, match="always strongly typed"):
        plan(models["fp32"], "11.1", typing="weak")


# --- profiles


def test_parse_profiles_trtexec_forms():
    assert parse_profiles(["x:8x3"]) == (ShapeProfile("x", (8, 3), (8, 3), (8, 3)),)
    assert parse_profiles(["a:b:8x3"]) == (ShapeProfile("a:b", (8, 3), (8, 3), (8, 3)),)  # names may hold ':'
    # trtexec: commas separate inputs; Polygraphy's brackets are read too
    two = parse_profiles(min_shapes=["ids:1x8,mask:[1,8]"], opt_shapes=["ids:4x64,mask:4x64"],
                         max_shapes=["ids:8x128", "mask:8x128"])
    assert two == (ShapeProfile("ids", (1, 8), (4, 64), (8, 128)), ShapeProfile("mask", (1, 8), (4, 64), (8, 128)))
    with pytest.raises(TrtoptError, match=r"older MIN,OPT,MAX form.*fix: write --minShapes x:1x3 --optShapes x:2x3 "
                                          r"--maxShapes x:4x3$"):
        parse_profiles(["x:1x3,2x3,4x3"])
    with pytest.raises(TrtoptError, match="needs the input name"):
        parse_profiles(["1x3x8x8"])
    with pytest.raises(TrtoptError, match="input 'mask' has no --maxShapes"):
        parse_profiles(min_shapes=["mask:1x8"], opt_shapes=["mask:1x8"], max_shapes=["ids:1x8"])


def _profile(spec):
    name, _, rest = spec.rpartition(":")
    return (name, *(tuple(int(d) for d in part.split("x")) for part in rest.split(",")))


@pytest.mark.parametrize("spec, message", [
    ("nope:1x3x8x8,4x3x8x8,16x3x8x8", "names input 'nope'.*its inputs are input"),
    ("input:1x3x8,4x3x8,16x3x8", "has rank 3, the model's input has rank 4"),
    ("input:8x3x8x8,4x3x8x8,16x3x8x8", "axis 0: min 8, opt 4, max 16 is not min <= opt <= max"),
    ("input:1x3x8x8,4x3x8x8,16x3x9x8", "axis 2 is 8,8,9 but the model fixes it to 8"),
    ("input:0x3x8x8,4x3x8x8,16x3x8x8", "non-positive dimension"),
])
def test_inconsistent_profiles_are_one_line_errors(models, spec, message):
    with pytest.raises(TrtoptError, match=message) as err:
        make_plan(models["fp32"], BuildOptions(shapes=(ShapeProfile(*_profile(spec)),)), "10.3")
    assert "\n" not in str(err.value)


def test_dynamic_input_without_profile_is_refused_but_static_needs_none(models, tmp_path):
    with pytest.raises(TrtoptError, match=r"input 'input' of fp32\.onnx has dynamic dimensions \(batchx3x8x8\)"):
        make_plan(models["fp32"], BuildOptions(), "11.1")
    static = conv_model(tmp_path / "static.onnx", static=True)
    assert make_plan(static, BuildOptions(), "11.1").profiles == ()


# --- options


@pytest.mark.parametrize("kw, message", [
    ({"dla_core": 0}, "dla_core=0 asks for a DLA core, but target 'server' has no DLA"),
    ({"opt_level": 7}, "opt_level=7 must be an integer in 0..5"),
    ({"hardware_compatibility": "ampere+", "target": "jetson-orin"}, "not Jetson"),
    ({"exclude_lean_runtime": True}, "needs version_compatible"),
    ({"workspace_bytes": 1000}, r"workspace_bytes=1000 must be an integer >= 1048576 .*; fix: give at least 1 MiB"),
    ({"precision": "fp16", "calibrate": True}, "calibration is for --precision int8"),
])
def test_options_refuse_what_makes_no_sense(kw, message):
    with pytest.raises(TrtoptError, match=message):
        BuildOptions(**kw)


def test_dla_plan_on_jetson(models):
    p = plan(models["int8"], "10.3", target="jetson-orin", dla_core=0)
    assert p.device_type == "DLA" and p.dla_core == 0 and "GPU_FALLBACK" in p.builder_flags


# --- JSON and hashing


def test_plan_json_round_trip_and_hash(models, tmp_path):
    p = plan(models["fp32"], "10.3", precision="fp16", sparse=True, opt_level=5, workspace_bytes=1 << 30)
    path = p.save(tmp_path / "p.json")
    again = BuildPlan.load(path)
    assert again == p and again.plan_hash() == p.plan_hash()
    moved = p.relocated("models/fp32.onnx")
    assert moved.onnx_path == "models/fp32.onnx" and moved.plan_hash() == p.plan_hash()
    assert plan(models["fp32"], "10.16", precision="fp16").plan_hash() != p.plan_hash()
    data = json.loads(path.read_text())
    data["builder_flags"] = ["INT8"]
    with pytest.raises(TrtoptError, match="was edited"):
        BuildPlan.from_dict(data)


# --- trtexec


def test_trtexec_10_3_fp16_line(models):
    p = plan(models["fp32"], "10.3", precision="fp16", workspace_bytes=1 << 30, timing_cache="t.cache", opt_level=4,
             sparse=True)
    args = trtexec_args(p, engine="m.engine", layer_info="m.layers.json")
    assert args[:3] == ["trtexec", f"--onnx={models['fp32']}", "--saveEngine=m.engine"]
    for flag in ("--fp16", "--minShapes=input:1x3x8x8", "--optShapes=input:4x3x8x8", "--maxShapes=input:16x3x8x8",
                 "--memPoolSize=workspace:1024M", "--timingCacheFile=t.cache", "--builderOptimizationLevel=4",
                 "--sparsity=enable", "--profilingVerbosity=detailed", "--exportLayerInfo=m.layers.json",
                 "--noDataTransfers", "--useCudaGraph", "--useSpinWait", "--warmUp=500", "--iterations=200",
                 "--duration=3", "--avgRuns=10"):
        assert flag in args, flag
    assert "--int8" not in args and "--stronglyTyped" not in args
    assert unverified_flags(args, 10) == []


def test_trtexec_11_1_line_has_no_precision_flags(models):
    args = trtexec_args(plan(models["int8"], "11.1"), engine="m.engine")
    for gone in ("--fp16", "--int8", "--best", "--stronglyTyped", "--noDataTransfers", "--useSpinWait"):
        assert gone not in args
    assert "--useCudaGraph" in args and "--optShapes=input:4x3x8x8" in args
    e2e = trtexec_args(plan(models["int8"], "11.1"), timing=TrtexecTiming(mode="end-to-end"))
    assert "--includeDataTransfers" in e2e and "--noCudaGraph" in e2e
    assert unverified_flags(e2e, 11) == ["--includeDataTransfers", "--noCudaGraph"]


def test_trtexec_calibration_dla_and_portability_flags(models, cache_103):
    args = trtexec_args(plan(models["fp32"], "10.3", calib_cache=str(cache_103)), engine="e")
    assert "--int8" in args and f"--calib={cache_103}" in args and "--fp16" not in args
    args = trtexec_args(plan(models["int8"], "10.3", target="jetson-orin", dla_core=1), engine="e")
    assert "--useDLACore=1" in args and "--allowGPUFallback" in args and "--int8" in args and "--stronglyTyped" not in args
    args = trtexec_args(plan(models["int8"], "11.1", version_compatible=True, exclude_lean_runtime=True,
                             hardware_compatibility="ampere+"), engine="e")
    assert {"--versionCompatible", "--excludeLeanRuntime", "--hardwareCompatibilityLevel=ampere+"} <= set(args)
    e2e_10 = trtexec_args(plan(models["fp32"], "10.16"), timing=TrtexecTiming(mode="end-to-end"))
    assert "--useSpinWait" in e2e_10 and "--noDataTransfers" not in e2e_10 and "--useCudaGraph" not in e2e_10


def test_trtexec_quotes_names_with_colons(tmp_path):
    model = conv_model(tmp_path / "colon.onnx", input_name="in:0")
    p = make_plan(model, BuildOptions(shapes=(ShapeProfile("in:0", (1, 3, 8, 8), (2, 3, 8, 8), (4, 3, 8, 8)),)), "10.3")
    assert "--minShapes='in:0':1x3x8x8" in trtexec_args(p)


def _two_token_inputs(path):
    import onnx
    from onnx import TensorProto, helper

    inputs = [helper.make_tensor_value_info(n, TensorProto.INT64, ["batch", "seq"]) for n in ("ids", "mask")]
    out = helper.make_tensor_value_info("out", TensorProto.INT64, ["batch", "seq"])
    graph = helper.make_graph([helper.make_node("Add", ["ids", "mask"], ["out"])], "g", inputs, [out])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def test_inputs_sharing_a_named_dim_need_one_profile_for_it(tmp_path):
    model = _two_token_inputs(tmp_path / "tokens.onnx")
    # trtexec's form: commas separate inputs (was misparsed as MIN,OPT,MAX of one input)
    fixed = make_plan(model, BuildOptions(shapes=parse_profiles(["ids:8x64,mask:8x64"])), "10.3")
    assert [(p.name, p.min, p.max) for p in fixed.profiles] == [("ids", (8, 64), (8, 64)), ("mask", (8, 64), (8, 64))]
    assert fixed.dynamic_axes == {"ids": {"0": "batch", "1": "seq"}, "mask": {"0": "batch", "1": "seq"}}
    with pytest.raises(TrtoptError) as err:
        make_plan(model, BuildOptions(shapes=parse_profiles(min_shapes=["ids:1x8,mask:1x8"], opt_shapes=["ids:4x64,mask:4x32"],
                                                             max_shapes=["ids:8x128,mask:8x128"])), "10.3")
    assert str(err.value) == ("dim 'seq' is shared by input 'ids' (axis 1) and input 'mask' (axis 1), but their profiles "
                              "give it 8,64,128 and 8,32,128 (min,opt,max); fix: give seq the same min/opt/max values "
                              "in every input's shapes")
