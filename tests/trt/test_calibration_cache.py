"""trtopt.trt.calibration_cache: TensorRT calibration cache text, version integers, ranges, inspection, conversion."""

from __future__ import annotations

import math
import struct

import numpy as np
import pytest

from trtopt.artifacts import Ranges, TensorRange
from trtopt.errors import TrtoptError
from trtopt.trt.calibration_cache import (
    CalibrationCache,
    cache_to_ranges,
    convert_cache,
    format_cache,
    inspect_cache,
    parse_cache,
    ranges_to_cache,
    read_cache,
    version_code,
    version_string,
    write_cache,
)


def hex32(x: float) -> str:
    """Big-endian float32 bits of ``x`` as 8 lowercase hex digits (the cache's encoding)."""
    return struct.pack(">f", x).hex()


def f32(x: float) -> float:
    return struct.unpack(">f", struct.pack(">f", x))[0]


HEADER = "TRT-100300-EntropyCalibration2"


def cache_text(*lines: str, header: str = HEADER) -> str:
    return "\n".join([header, *lines]) + "\n"


# ------------------------------------------------------------------------------------ parsing


def test_parse_hand_written_cache():
    text = cache_text(f"input: {hex32(1 / 127)}", f"/conv1/Conv_output_0: {hex32(0.5)}",
                      f"input_1:0: {hex32(2.0 / 127)}")
    assert hex32(1 / 127) == "3c010204"  # the value seen in real caches for an input in [0, 1]
    cache = parse_cache(text)
    assert (cache.trt_version, cache.version_code, cache.algorithm) == ("10.3.0", 100300, "EntropyCalibration2")
    assert list(cache.scales) == ["input", "/conv1/Conv_output_0", "input_1:0"]  # file order kept
    assert cache.scales["input"] == pytest.approx(0.0078740157, rel=1e-7)
    assert cache.scales["/conv1/Conv_output_0"] == 0.5
    amax = cache.amax()
    assert amax["input"] == pytest.approx(1.0, rel=2**-23)
    assert amax["/conv1/Conv_output_0"] == 63.5
    assert amax["input_1:0"] == pytest.approx(2.0, rel=2**-23)


@pytest.mark.parametrize("header, version, code, algorithm", [
    ("TRT-100300-EntropyCalibration2", "10.3.0", 100300, "EntropyCalibration2"),
    ("TRT-8601-MinMaxCalibration", "8.6.1", 8601, "MinMaxCalibration"),
    ("TRT-8502-EntropyCalibration2", "8.5.2", 8502, "EntropyCalibration2"),
    ("TRT-8510-EntropyCalibration2", "8.5.10", 8510, "EntropyCalibration2"),  # 8.5.1 would be 8501
    ("TRT-7202-EntropyCalibration", "7.2.2", 7202, "EntropyCalibration"),
    ("TRT-101600-LegacyCalibration", "10.16.0", 101600, "LegacyCalibration"),
])
def test_header_variants(header, version, code, algorithm):
    cache = parse_cache(cache_text(f"x: {hex32(0.25)}", header=header))
    assert (cache.trt_version, cache.version_code, cache.algorithm) == (version, code, algorithm)
    assert cache.header == header


@pytest.mark.parametrize("text", [
    f"{HEADER}\nx: 3e800000\ny:0: 3f000000",          # no trailing newline
    f"{HEADER}\nx: 3e800000\ny:0: 3f000000\n",        # trailing newline
    f"{HEADER}\r\nx: 3e800000\r\ny:0: 3f000000\r\n",  # Windows line endings
    f"{HEADER}\nx: 3E800000\n\ny:0: 3f000000\n\n",    # upper-case hex, blank lines
])
def test_line_ending_and_layout_variants_parse_the_same(text):
    cache = parse_cache(text)
    assert cache.scales == {"x": 0.25, "y:0": 0.5}
    assert parse_cache(text.encode("utf-8")) == cache


def test_names_with_colons_slashes_and_spaces_split_on_the_last_colon():
    names = ["input_1:0", "/backbone/layer1/0/conv1/Conv_output_0", "a: b: c",
             "(Unnamed Layer* 48) [Constant]_output", "módulo/ñ"]
    cache = parse_cache(cache_text(*(f"{n}: {hex32(0.125)}" for n in names)))
    assert list(cache.scales) == names
    assert set(cache.scales.values()) == {0.125}


def test_format_then_parse_is_the_identity_on_text():
    text = cache_text(f"input: {hex32(1 / 127)}", f"a:b/c: {hex32(3.5e-3)}", "tiny: 00000001",
                      f"big: {hex32(3.0e38)}", header="TRT-8601-MinMaxCalibration")
    cache = parse_cache(text)
    assert format_cache(cache) == text
    assert parse_cache(format_cache(cache)) == cache
    assert format_cache(parse_cache(text.rstrip("\n"))) == text  # the canonical form ends with a newline


def test_cache_record_rounds_scales_to_float32_and_checks_its_header():
    cache = CalibrationCache("10.3.0", 100300, "EntropyCalibration2", {"x": 0.1})
    assert cache.scales["x"] == f32(0.1) != 0.1
    assert parse_cache(format_cache(cache)) == cache
    with pytest.raises(TrtoptError, match="does not match its integer"):
        CalibrationCache("10.3.0", 100400, "EntropyCalibration2", {})
    with pytest.raises(TrtoptError, match="not a TensorRT calibrator"):
        CalibrationCache("10.3.0", 100300, "Percentile", {})
    with pytest.raises(TrtoptError, match="does not fit a float32"):
        CalibrationCache("10.3.0", 100300, "EntropyCalibration2", {"x": 1e300})


# ------------------------------------------------------------------------------------ malformed input

GOOD = f"input: {hex32(0.5)}"


@pytest.mark.parametrize("data, line, fragment", [
    (b"\x7fELF\x02\x01\x01\x00\x00binary", 1, "binary"),
    (b"\x89PNG\r\n\x1a\n\xff\xfe\xfd", 1, "binary"),
    (cache_text(GOOD).encode() + b"x: \xff\xfe\xfd\xfc\n", 3, "binary"),
    ("", 1, "empty"),
    ("\n\n", 1, "empty"),
    (f"{GOOD}\n", 1, "not a calibration cache header"),
    ('{"tensors": {}}', 1, "not a calibration cache header"),
    (cache_text(GOOD, header="TRT-8XXX-EntropyCalibration2"), 1, "not a TensorRT version integer"),
    (cache_text(GOOD, header="TRT-100300-Entropy"), 1, "not a TensorRT calibrator"),
    (cache_text(GOOD, header="TRT-90200-EntropyCalibration2"), 1, "not a TensorRT version integer"),
    (cache_text(GOOD, header="TRT-12-EntropyCalibration2"), 1, "not a TensorRT version integer"),
    (cache_text("input: 3c01020g"), 2, "not hexadecimal"),
    (cache_text(GOOD, "x: 3c0102"), 3, "6 hex digits, not 8"),
    (cache_text(GOOD, "x: 3c01020400"), 3, "10 hex digits, not 8"),
    (cache_text(GOOD, "x:3c010204"), 3, "is not '<tensor name>: <8 hex digits>'"),
    (cache_text(GOOD, ": 3c010204"), 3, "is not '<tensor name>: <8 hex digits>'"),
    (cache_text(GOOD, "x: 3c010204", GOOD), 4, "appears twice (first on line 2)"),
    (f"{HEADER}\n", 2, "no tensor scales"),
])
def test_malformed_caches_name_the_file_and_line(data, line, fragment):
    with pytest.raises(TrtoptError) as err:
        parse_cache(data, where="calib/model.cache")
    message = str(err.value)
    assert message.startswith(f"calib/model.cache line {line}: ")
    assert fragment in message
    assert "; fix: " in message and "\n" not in message


def test_read_cache_reports_a_missing_or_binary_file_by_path(tmp_path):
    with pytest.raises(TrtoptError, match="does not exist"):
        read_cache(tmp_path / "missing.cache")
    engine = tmp_path / "model.engine"
    engine.write_bytes(bytes(range(256)))
    with pytest.raises(TrtoptError, match=rf"{engine} line 1: is binary"):
        read_cache(engine)


# ------------------------------------------------------------------------------------ files


def test_write_then_read_round_trips_and_refuses_to_overwrite(tmp_path):
    cache = parse_cache(cache_text(GOOD, f"b:0: {hex32(0.75)}"))
    target = tmp_path / "out" / "model.cache"
    assert write_cache(cache, target) == target
    assert target.read_text(encoding="utf-8") == format_cache(cache)
    assert read_cache(target) == cache
    other = convert_cache(cache, "10.16.0")
    with pytest.raises(TrtoptError, match="already exists.*--force"):
        write_cache(other, target)
    assert read_cache(target) == cache  # untouched
    assert sorted(p.name for p in target.parent.iterdir()) == ["model.cache"]  # no temp file left
    write_cache(other, target, force=True)
    assert read_cache(target) == other
    assert sorted(p.name for p in target.parent.iterdir()) == ["model.cache"]


# ------------------------------------------------------------------------------------ versions


@pytest.mark.parametrize("version, code", [
    ("10.3.0", 100300), ("8.6.1", 8601), ("10.16.0", 101600), ("11.1.0", 110100),
    ("8.5.10", 8510), ("7.0.0", 7000), ("10.16.1", 101601), ("11.0.0", 110000),
])
def test_version_code_both_ways(version, code):
    assert version_code(version) == code
    assert version_string(code) == version


def test_version_code_accepts_short_and_build_forms():
    assert version_code("10.3") == 100300
    assert version_code("10.3.0.26") == 100300  # tensorrt.__version__ with a build number
    assert version_code(" 8.6.1 ") == 8601


@pytest.mark.parametrize("version", ["", "abc", "10", "ten.3.0", "10.3.0-rc", "9.2.0", "6.0.1", "0.1.0",
                                     "8.10.0", "8.6.100", "10.100.0", "10.3.100", "100.0.0"])
def test_version_code_rejects_nonsense(version):
    with pytest.raises(TrtoptError):
        version_code(version)


@pytest.mark.parametrize("code", [0, -1, 12, 6999, 9000, 90200, 99999, 1000000, True, 100300.0, "100300"])
def test_version_string_rejects_nonsense(code):
    with pytest.raises(TrtoptError):
        version_string(code)


# ------------------------------------------------------------------------------------ ranges


def make_ranges(amaxes: dict[str, float], method: str = "entropy") -> Ranges:
    return Ranges({n: TensorRange(a, -a, a) for n, a in amaxes.items()}, method, samples=8)


def test_ranges_to_cache_to_ranges_is_exact_for_127_times_a_float32():
    # amax = 127 * s with s a float32: the scale s is stored bit-exactly, and 127 * s is exact in float64.
    scales = [0.5, 2.0**-7, f32(0.1), f32(1 / 127), f32(3.3e-5), f32(12345.678), 2.0**-126]
    amaxes = {f"t{i}:0": 127.0 * s for i, s in enumerate(scales)}
    cache = ranges_to_cache(make_ranges(amaxes))
    assert list(cache.scales.values()) == scales
    back = cache_to_ranges(cache)
    assert {n: r.amax for n, r in back.tensors.items()} == amaxes
    assert all(r.min == -r.amax and r.max == r.amax for r in back.tensors.values())


def test_ranges_round_trip_keeps_the_float32_scale_bits_for_any_amax():
    rng = np.random.default_rng(0)
    amaxes = {f"/layer{i}/Relu_output_0": float(a) for i, a in enumerate(10.0 ** rng.uniform(-6, 6, 500))}
    cache = ranges_to_cache(make_ranges(amaxes))
    back = cache_to_ranges(cache)
    for name, amax in amaxes.items():
        again = back.tensors[name].amax
        assert hex32(again / 127) == hex32(amax / 127)  # exact at float32 precision of the scale
        assert again == pytest.approx(amax, rel=2**-23)
    # after one rounding the scale bits are a fixed point: ranges -> cache -> ranges -> cache
    assert format_cache(ranges_to_cache(back)) == format_cache(cache)


def test_cache_to_ranges_records_where_the_ranges_came_from():
    cache = parse_cache(cache_text(GOOD, header="TRT-8601-MinMaxCalibration"))
    ranges = cache_to_ranges(cache)
    assert ranges.method == "tensorrt-cache:MinMaxCalibration"
    assert ranges.settings == {"trt_version": "8.6.1", "version_code": 8601, "algorithm": "MinMaxCalibration"}
    assert ranges.tensors["input"] == TensorRange(63.5, -63.5, 63.5)
    assert Ranges.from_dict(ranges.to_dict()) == ranges  # saveable as a trtopt ranges file
    again = ranges_to_cache(ranges, trt_version="8.6.1")  # the cache's algorithm is kept
    assert format_cache(again) == format_cache(cache)


@pytest.mark.parametrize("method, algorithm", [
    ("entropy", "EntropyCalibration2"), ("minmax", "MinMaxCalibration"),
    ("percentile", "EntropyCalibration2"), ("mse", "EntropyCalibration2"),
])
def test_ranges_method_chooses_the_header_algorithm(method, algorithm):
    cache = ranges_to_cache(make_ranges({"x": 1.0}, method))
    assert cache.header == f"TRT-100300-{algorithm}"


def test_ranges_to_cache_options_and_refusals():
    ranges = make_ranges({"x": 1.0}, "minmax")
    assert ranges_to_cache(ranges, "8.6.1", "EntropyCalibration2").header == "TRT-8601-EntropyCalibration2"
    assert ranges_to_cache(ranges, "10.16").trt_version == "10.16.0"
    with pytest.raises(TrtoptError, match="11.1.0 removed INT8 calibrators.*trtopt quantize --target tensorrt"):
        ranges_to_cache(ranges, "11.1.0")
    with pytest.raises(TrtoptError, match="has no TensorRT calibrator"):
        ranges_to_cache(make_ranges({"x": 1.0}, "histogram"))
    with pytest.raises(TrtoptError, match="not a TensorRT calibrator"):
        ranges_to_cache(ranges, algorithm="Percentile")
    with pytest.raises(TrtoptError, match=r"3 tensor\(s\) have no usable range.*dead, neg, nan"):
        ranges_to_cache(make_ranges({"ok": 1.0, "dead": 0.0, "neg": -1.0, "nan": math.nan}))


# ------------------------------------------------------------------------------------ inspection


@pytest.fixture
def conv_onnx(tmp_path):
    """input -> Conv (weight + bias initializers) -> Relu -> output, plus a MatMul on a folded constant."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((4, 3, 3, 3)).astype(np.float32), "conv.weight")
    b = numpy_helper.from_array(np.zeros(4, np.float32), "conv.bias")
    m = numpy_helper.from_array(rng.standard_normal((8, 8)).astype(np.float32), "fc.weight")
    nodes = [
        helper.make_node("Conv", ["input", "conv.weight", "conv.bias"], ["/conv/Conv_output_0"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["/conv/Conv_output_0"], ["/relu/Relu_output_0"]),
        helper.make_node("Transpose", ["fc.weight"], ["fc.weight.T"]),  # constant-folded by TensorRT
        helper.make_node("MatMul", ["/relu/Relu_output_0", "fc.weight.T"], ["output"]),
    ]
    graph = helper.make_graph(
        nodes, "tiny", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 4, 8, 8])], initializer=[w, b, m])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    path = tmp_path / "tiny.onnx"
    onnx.save(model, str(path))
    return path


MATCHING = cache_text(f"input: {hex32(1 / 127)}", f"/conv/Conv_output_0: {hex32(0.03)}",
                      f"/relu/Relu_output_0: {hex32(0.02)}", f"output: {hex32(0.05)}")


def test_inspect_matching_cache_has_no_warnings(conv_onnx):
    info = inspect_cache(parse_cache(MATCHING), conv_onnx, expected_trt_version="10.3")
    assert info["warnings"] == []
    assert (info["trt_version"], info["version_code"], info["algorithm"]) == ("10.3.0", 100300, "EntropyCalibration2")
    assert info["tensor_count"] == 4
    assert info["amax_min"] == pytest.approx(1.0, rel=2**-23)
    assert info["amax_max"] == pytest.approx(0.05 * 127, rel=2**-23)
    assert info["not_in_onnx"] == [] and info["unscaled_compute_inputs"] == []


def test_inspect_internal_tensorrt_names_are_counted_not_warned(conv_onnx):
    text = MATCHING + f"(Unnamed Layer* 3) [Shuffle]_output: {hex32(0.05)}\n"
    info = inspect_cache(parse_cache(text), conv_onnx)
    assert info["warnings"] == [] and info["internal_tensors"] == 1


def test_inspect_warns_on_version_mismatch():
    (warning,) = inspect_cache(parse_cache(MATCHING), expected_trt_version="10.16.0")["warnings"]
    assert warning == ("TensorRT 10.16.0 ignores a cache written for 10.3.0: "
                       "recalibrate or convert with trtopt cache convert")


def test_inspect_warns_on_a_tensorrt_11_target():
    warnings = inspect_cache(parse_cache(MATCHING), expected_trt_version="11.1")["warnings"]
    assert any("11.1.0 has no implicit INT8 calibration" in w and "Q/DQ" in w for w in warnings)
    cache_for_11 = parse_cache(MATCHING.replace(HEADER, "TRT-110100-EntropyCalibration2"))
    (warning,) = inspect_cache(cache_for_11)["warnings"]
    assert "11.1.0, which has no implicit INT8 calibration" in warning and "Q/DQ" in warning


def test_inspect_warns_on_unknown_names_and_unscaled_conv_inputs(conv_onnx):
    stale = [f"/old/layer{i}/Conv_output_0" for i in range(7)]
    text = cache_text(f"/relu/Relu_output_0: {hex32(0.02)}", *(f"{n}: {hex32(0.1)}" for n in stale))
    info = inspect_cache(parse_cache(text), conv_onnx)
    unknown, unscaled = info["warnings"]
    assert unknown.startswith("7 cache tensor(s) are not in tiny.onnx: /old/layer0/Conv_output_0")
    assert "(2 more)" in unknown and "/old/layer6" not in unknown
    assert unscaled.startswith("1 input(s) of Conv/MatMul/Gemm have no scale") and ": input;" in unscaled
    assert info["not_in_onnx"] == stale
    assert info["unscaled_compute_inputs"] == ["input"]  # weights, folded constants and scaled inputs are fine


def test_inspect_warns_on_bad_scales_and_non_trtexec_algorithm():
    text = cache_text(GOOD, "zero: 00000000", "neg: bf000000", "nan: 7fc00000", "inf: 7f800000",
                      header="TRT-100300-MinMaxCalibration")
    info = inspect_cache(parse_cache(text))
    trtexec, bad = info["warnings"]
    assert "trtexec --calib" in trtexec and "MinMaxCalibration" in trtexec
    assert bad.startswith("4 tensor(s) have a scale that is not finite and positive: zero, neg, nan, inf")
    assert info["bad_scales"] == ["zero", "neg", "nan", "inf"]
    assert info["amax_min"] == info["amax_max"] == 63.5  # statistics over usable scales only


def test_inspect_reports_a_missing_or_unreadable_onnx(tmp_path):
    cache = parse_cache(MATCHING)
    with pytest.raises(TrtoptError, match="does not exist"):
        inspect_cache(cache, tmp_path / "missing.onnx")
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"\xff" * 64)
    with pytest.raises(TrtoptError, match="not a readable ONNX model"):
        inspect_cache(cache, junk)


# ------------------------------------------------------------------------------------ conversion


def test_convert_cache_to_another_10x_keeps_scales_and_changes_the_header():
    cache = parse_cache(MATCHING)
    newer = convert_cache(cache, "10.16.0")
    assert (newer.trt_version, newer.version_code) == ("10.16.0", 101600)
    assert newer.header == "TRT-101600-EntropyCalibration2"
    assert newer.scales == cache.scales and list(newer.scales) == list(cache.scales)
    assert format_cache(newer).split("\n")[1:] == MATCHING.split("\n")[1:]
    assert inspect_cache(newer, expected_trt_version="10.16")["warnings"] == []
    minmax = parse_cache(MATCHING.replace(HEADER, "TRT-100300-MinMaxCalibration"))
    assert convert_cache(minmax, algorithm="EntropyCalibration2").header == HEADER


def test_convert_cache_refuses_tensorrt_11():
    with pytest.raises(TrtoptError) as err:
        convert_cache(parse_cache(MATCHING), "11.0")
    assert "11.0.0 removed INT8 calibrators" in str(err.value)
    assert "trtopt quantize --target tensorrt" in str(err.value)


@pytest.mark.parametrize("word,shown", [("7fc00000", "nan"), ("7f800000", "inf"), ("00000000", "0.0"),
                                        ("bf800000", "-1.0")])
def test_unusable_scales_are_refused_by_reading_converting_and_writing_but_inspected(tmp_path, word, shown):
    path = tmp_path / "bad.cache"
    path.write_text(f"TRT-100300-EntropyCalibration2\ninput: 3c010204\nconv: {word}\n", encoding="utf-8")
    with pytest.raises(TrtoptError, match=rf"1 tensor\(s\) have a scale that is not finite and positive: conv \(conv: {shown}\)"):
        read_cache(path)
    cache = read_cache(path, check_scales=False)
    for refuse in (lambda: cache_to_ranges(cache), lambda: convert_cache(cache, trt_version="10.16.0"),
                   lambda: write_cache(cache, tmp_path / "out.cache")):
        with pytest.raises(TrtoptError, match="not finite and positive"):
            refuse()
    assert not (tmp_path / "out.cache").exists()
    assert inspect_cache(cache)["bad_scales"] == ["conv"]
