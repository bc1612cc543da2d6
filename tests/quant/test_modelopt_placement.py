"""``quantize --target tensorrt --quantizer modelopt``: ModelOpt places Q/DQ, trtopt's ranges set the scales."""

from __future__ import annotations

import pytest

from trtopt.errors import TrtoptError
from trtopt.quant.quantize import QuantizeConfig, quantize

needs_modelopt = pytest.mark.skipif(__import__("importlib").util.find_spec("modelopt") is None,
                                    reason="needs nvidia-modelopt: pip install 'trtopt[modelopt]' (CI installs it)")


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    from trtopt.datasets import load_dataset
    from trtopt.export import export_onnx
    from trtopt.models.load import load_model
    from trtopt.quant.calibrate import CalibrationConfig, calibrate

    folder = tmp_path_factory.mktemp("digits")
    train, test = load_dataset("digits", "train"), load_dataset("digits", "test")
    fp32 = export_onnx(load_model("zoo:digits_cnn"), folder / "fp32.onnx", feed=train.inputs).path
    ranges = calibrate(fp32, {"input": train.inputs["input"][:256]}, CalibrationConfig(method="minmax"))
    return folder, fp32, ranges, test


def _accuracy(path, test) -> float:
    from trtopt.measure.bench import onnx_candidate, run_all
    from trtopt.metrics import topk_accuracy

    with onnx_candidate(path, threads=1) as candidate:
        return topk_accuracy(next(iter(run_all(candidate, test.inputs).values())), test.labels)


@needs_modelopt
def test_modelopt_places_qdq_with_trtopts_scales(digits):
    import onnx
    from onnx import numpy_helper

    folder, fp32, ranges, test = digits
    out = folder / "modelopt.onnx"
    art = quantize(fp32, ranges, out, QuantizeConfig(target="tensorrt", quantizer="modelopt"))
    model = onnx.load(str(out))
    meta = {p.key: p.value for p in model.metadata_props}
    assert meta["trtopt.quantize.target"] == "tensorrt" and meta["trtopt.quantize.quantizer"] == "modelopt"
    assert "ModelOpt's placement" in art.notes[0]
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    activations = [n for n in model.graph.node if n.op_type == "QuantizeLinear" and n.input[0] in ranges.tensors]
    assert activations
    for q in activations:  # every activation scale is trtopt's range: amax / 127 (float32)
        assert float(inits[q.input[1]]) == pytest.approx(ranges.tensors[q.input[0]].amax / 127, rel=1e-6)
    assert _accuracy(out, test) >= _accuracy(fp32, test) - 0.02


def test_modelopt_is_for_the_tensorrt_target_and_per_channel(digits):
    folder, fp32, ranges, _ = digits
    with pytest.raises(TrtoptError, match="not for target onnxruntime"):
        quantize(fp32, ranges, folder / "x.onnx", QuantizeConfig(target="onnxruntime", quantizer="modelopt"))
    with pytest.raises(TrtoptError, match="per_channel"):
        QuantizeConfig(target="tensorrt", quantizer="modelopt", per_channel=False)
    assert not (folder / "x.onnx").exists()


def test_a_model_modelopt_cannot_place_names_the_node_and_the_fallback(digits, monkeypatch):
    import onnx

    import trtopt.quant.modelopt_placement as placement

    folder, fp32, ranges, _ = digits
    node = onnx.load(str(fp32)).graph.node[0]

    monkeypatch.setattr(placement, "_quantize_in_child", lambda *_a: f"RuntimeError: unsupported pattern at {node.name}")
    out = folder / "refused.onnx"
    with pytest.raises(TrtoptError, match=rf"node {node.name} \({node.op_type}\).*--quantizer trtopt"):
        quantize(fp32, ranges, out, QuantizeConfig(target="tensorrt", quantizer="modelopt"))
    assert not out.exists() and not list(folder.glob("*.tmp*"))


def test_without_modelopt_the_error_names_the_extra(digits, monkeypatch):
    import trtopt._modelopt as mo

    folder, fp32, ranges, _ = digits
    monkeypatch.setattr(mo.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(TrtoptError, match=r"trtopt\[modelopt\]"):
        quantize(fp32, ranges, folder / "y.onnx", QuantizeConfig(target="tensorrt", quantizer="modelopt"))
    assert not (folder / "y.onnx").exists()


def test_modelopt_leaves_onnx_runtime_quantization_untouched_in_this_process(digits):
    """ModelOpt patches ONNX Runtime's quantization registries and calibrators for its whole process; it runs in a
    child so that trtopt's own placement in the same process (optimize: tensorrt then onnxruntime) is unchanged."""
    from onnxruntime.quantization.calibrate import CalibraterBase
    from onnxruntime.quantization.registry import QDQRegistry, QLinearOpsRegistry

    folder, fp32, ranges, _ = digits
    before = (dict(QDQRegistry), dict(QLinearOpsRegistry), CalibraterBase.__init__)
    quantize(fp32, ranges, folder / "isolated.onnx", QuantizeConfig(target="tensorrt", quantizer="modelopt"))
    assert (dict(QDQRegistry), dict(QLinearOpsRegistry), CalibraterBase.__init__) == before


@needs_modelopt
def test_an_excluded_node_keeps_only_itself_float(digits):
    """ModelOpt reads nodes_to_exclude as regular expressions matched at the start: excluding node_conv2d (the
    stem, e.g. by --keep-first-layer-fp32) also kept node_conv2d_1, ... float: "placed no Q/DQ node"."""
    import onnx

    from trtopt.quant.calibrate import CalibrationConfig, calibrate

    folder, fp32, _, test = digits
    model = onnx.load(str(fp32))
    convs = [n for n in model.graph.node if n.op_type == "Conv"]
    for i, node in enumerate(convs):  # conv, conv_1, conv_2: a name that prefixes the others
        node.name = "conv" + (f"_{i}" if i else "")
    convs = [n.name for n in convs]
    fp32 = folder / "prefix_names.onnx"
    onnx.save(model, str(fp32))
    ranges = calibrate(fp32, {"input": test.inputs["input"][:64]}, CalibrationConfig(method="minmax"))
    out = folder / "modelopt_first_fp32.onnx"
    quantize(fp32, ranges, out, QuantizeConfig(target="tensorrt", quantizer="modelopt", keep_first_layer_fp32=True))
    model = onnx.load(str(out))
    producers = {o: n.op_type for n in model.graph.node for o in n.output}
    fed = {n.name for n in model.graph.node if n.op_type == "Conv"
           and any(producers.get(i) == "DequantizeLinear" for i in n.input)}
    assert convs[0] not in fed and set(convs[1:]) <= fed
