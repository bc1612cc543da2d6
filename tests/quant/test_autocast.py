"""FP16 by ModelOpt AutoCast beside onnxconverter-common (``to_fp16(converter=...)``)."""

from __future__ import annotations

import pytest

from trtopt.errors import TrtoptError
from trtopt.quant.quantize import to_fp16

needs_modelopt = pytest.mark.skipif(__import__("importlib").util.find_spec("modelopt") is None,
                                    reason="needs nvidia-modelopt: pip install 'trtopt[modelopt]' (CI installs it)")


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    from trtopt.datasets import load_dataset
    from trtopt.export import export_onnx
    from trtopt.models.load import load_model

    folder = tmp_path_factory.mktemp("fp16")
    test = load_dataset("digits", "test")
    return folder, export_onnx(load_model("zoo:digits_cnn"), folder / "fp32.onnx", feed=test.inputs).path, test


def _outputs(path, feed):
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, feed)[0]


@needs_modelopt
@pytest.mark.parametrize("converter", ["autocast", "onnxconverter"])
def test_both_converters_give_a_loadable_fp16_model_close_to_fp32(digits, converter):
    import onnx

    from trtopt.metrics import cosine_similarity

    folder, fp32, test = digits
    out = folder / f"{converter}.onnx"
    art = to_fp16(fp32, out, converter=converter)
    model = onnx.load(str(out))
    meta = {p.key: p.value for p in model.metadata_props}
    assert meta["trtopt.precision"] == "fp16" and meta["trtopt.fp16.converter"] == converter
    assert f"converter {converter}" in art.notes[0]
    halves = [t for t in model.graph.initializer if t.data_type == onnx.TensorProto.FLOAT16]
    assert halves  # weights stored in float16
    ref, out16 = _outputs(fp32, test.inputs), _outputs(out, test.inputs)
    assert out16.dtype == ref.dtype  # float32 inputs/outputs kept
    assert cosine_similarity(ref, out16) > 0.9999
    assert (ref.argmax(1) == out16.argmax(1)).mean() > 0.99


def test_unknown_converter_and_missing_modelopt(digits, monkeypatch):
    import trtopt._modelopt as mo

    folder, fp32, _ = digits
    with pytest.raises(TrtoptError, match="converter='x'"):
        to_fp16(fp32, folder / "x.onnx", converter="x")
    monkeypatch.setattr(mo.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(TrtoptError, match=r"trtopt\[modelopt\]"):
        to_fp16(fp32, folder / "y.onnx", converter="autocast")
    assert not (folder / "x.onnx").exists() and not (folder / "y.onnx").exists()
