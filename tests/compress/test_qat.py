"""QAT / QAD with ModelOpt fake quantization: calibration, training, resume, both INT8 layouts, errors."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("modelopt", reason="needs nvidia-modelopt: pip install 'trtopt[modelopt]' (CI installs it)")

import torch  # noqa: E402
from torch import nn  # noqa: E402

from trtopt.compress.config import DistillConfig, QATConfig  # noqa: E402
from trtopt.errors import TrtoptError  # noqa: E402
from trtopt.models.spec import InputSpec, LoadedModel  # noqa: E402


class DepthwiseNet(nn.Module):
    """A tiny MobileNet-style classifier: stem conv, one depthwise-separable block with a residual add, head."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.dw = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1, groups=8), nn.BatchNorm2d(8), nn.ReLU())
        self.pw = nn.Conv2d(8, 8, 1)
        self.head = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = x + self.pw(self.dw(x))
        return self.head(x.mean((2, 3)))


def _net() -> nn.Module:
    torch.manual_seed(0)
    return DepthwiseNet()


def _data(n: int = 64) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    return rng.standard_normal((n, 1, 8, 8)).astype(np.float32), rng.integers(0, 4, n).astype(np.int64)


def _train(steps: int, **kw) -> DistillConfig:
    return DistillConfig(epochs=None, max_steps=steps, batch_size=16, lr=1e-3, scheduler="none", **kw)


class SamePadConv2d(nn.Conv2d):
    """A Conv2d subclass with its own ``forward`` (pad, then conv), as EfficientNet-Lite's Conv2dStaticSamePadding."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.conv2d(nn.functional.pad(x, (1, 1, 1, 1)), self.weight, self.bias, groups=self.groups)


def test_fake_quant_covers_conv_subclasses_with_own_forward():
    from trtopt.compress.qat import insert_fake_quant, quantizer_counts

    net = _net()
    net.dw[0] = SamePadConv2d(8, 8, 3, groups=8)
    x = torch.from_numpy(_data(16)[0])
    with torch.no_grad():
        fp32 = net(x)
        fake = insert_fake_quant(net, x)
    # ModelOpt alone skips a subclass that overrides forward: 3 weight quantizers, the depthwise conv in FP32
    assert quantizer_counts(fake) == {"weight": 4, "input": 4}
    assert fake.dw[0].weight_quantizer.amax.numel() == 8  # per output channel of the depthwise conv
    assert float(fake.dw[0].input_quantizer.amax) > 0  # calibrated
    with torch.no_grad():
        quantized = fake(x)
        fake.dw[0].weight_quantizer.disable()
        without_dw = fake(x)
    assert not torch.equal(quantized, without_dw) and not torch.equal(quantized, fp32)


def test_qat_inserts_calibrated_quantizers_and_trains():
    from trtopt.compress.qat import qat, quantizer_counts

    x, y = _data()
    result = qat(_net(), (x, y), QATConfig(calibration_samples=32, training=_train(4)))
    # stem conv, dw conv, pw conv, head: per-channel weight quantizers and per-tensor input quantizers
    assert result.quantizers == {"weight": 4, "input": 4} == quantizer_counts(result.model)
    assert result.calibration_samples == 32 and result.training.steps == 4
    assert all(np.isfinite(result.training.step_losses))
    amax = result.model.stem[0].input_quantizer.amax
    assert float(amax) == pytest.approx(float(np.abs(x[:32]).max()), rel=1e-5)  # max calibration on the first 32
    assert result.to_dict()["mode"] == "qat"


@pytest.mark.parametrize("freeze", [True, False])
def test_qat_keeps_batchnorm_statistics_unless_told(freeze):
    from trtopt.compress.qat import qat

    x, y = _data()
    before = _net().stem[1].running_mean.clone()
    result = qat(_net(), (x, y), QATConfig(calibration_samples=32, training=_train(3), freeze_batchnorm=freeze))
    bn = result.model.stem[1]
    assert torch.equal(bn.running_mean, before) is freeze  # statistics frozen with the calibrated ranges
    assert not torch.equal(bn.weight, torch.ones_like(bn.weight))  # BatchNorm's affine weights train either way
    assert not bn._forward_pre_hooks and bn.training is False  # the freezing hooks are gone; eval mode as returned


def test_frozen_batchnorm_everything_turns_dropout_off_while_training():
    from trtopt.compress.trainer import frozen_batchnorm

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.9), nn.BatchNorm1d(4)).train()
    x = torch.randn(8, 4)
    expected = model.eval()(x)
    model.train()
    with frozen_batchnorm(model, everything=True):
        assert torch.equal(model(x), expected)  # the training forward is the inference forward
    model.train()
    with frozen_batchnorm(model):
        assert not torch.equal(model(x), expected)  # BatchNorm only: dropout still drops


def test_qat_resume_is_bit_for_bit(tmp_path):
    from trtopt.compress.qat import qat

    x, y = _data()
    straight = qat(_net(), (x, y), QATConfig(training=_train(6)))
    qat(_net(), (x, y), QATConfig(training=_train(3, checkpoint_dir=str(tmp_path))))
    resumed = qat(_net(), (x, y), QATConfig(training=_train(6, checkpoint_dir=str(tmp_path), resume_from=str(tmp_path))))
    assert resumed.training.step_losses == straight.training.step_losses
    a, b = straight.model.state_dict(), resumed.model.state_dict()
    assert any(k.endswith("_amax") for k in a)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_qad_learns_from_the_fp32_model_without_labels():
    from trtopt.compress.qat import qat

    x, _ = _data()
    fp32 = _net().eval()
    result = qat(_net(), (x, None), QATConfig(mode="qad", training=_train(3, temperature=1.0)),
                 eval_data=(x[:32], None))
    assert result.mode == "qad" and result.training.best_metric is not None
    # the eval metric is top-1 agreement with the FP32 model, which fake quantization barely changes here
    with torch.no_grad():
        agree = (result.model(torch.from_numpy(x[:32])).argmax(1) == fp32(torch.from_numpy(x[:32])).argmax(1)).float().mean()
    assert float(agree) >= 0.8


def test_errors_come_before_training():
    from trtopt.compress.qat import qat

    x, y = _data()
    with pytest.raises(TrtoptError, match="no labels"):
        qat(_net(), (x, None), QATConfig(mode="qat", training=_train(2)))
    with pytest.raises(TrtoptError, match=r"one sample shaped \(1, 3, 8, 8\).*does not fit"):
        qat(_net(), (np.zeros((8, 3, 8, 8), np.float32), y[:8]), QATConfig(training=_train(2)))
    with pytest.raises(TrtoptError, match="empty"):
        qat(_net(), (np.zeros((0, 1, 8, 8), np.float32), y[:0]), QATConfig(training=_train(2)))
    with pytest.raises(TrtoptError, match="mode="):
        QATConfig(mode="ptq")


def test_missing_modelopt_names_the_extra(monkeypatch):
    import trtopt._modelopt as mo

    monkeypatch.setattr(mo.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(TrtoptError, match=r"nvidia-modelopt.*pip install 'trtopt\[modelopt\]'"):
        mo.import_modelopt("modelopt.torch.quantization", "quantization-aware training")


def test_export_writes_both_layouts_with_the_trained_ranges(tmp_path):
    import onnx
    import onnxruntime as ort

    from trtopt.compress.qat import qat
    from trtopt.quant.calibrate import CalibrationConfig
    from trtopt.quant.qat_export import export_qat, strip_qdq

    x, y = _data()
    result = qat(_net(), (x, y), QATConfig(training=_train(2)))
    loaded = LoadedModel(module=result.model, spec="test:depthwise", inputs=(InputSpec("input", (1, 8, 8)),))
    paths = {"tensorrt": tmp_path / "m.trt.onnx", "onnxruntime": tmp_path / "m.ort.onnx"}
    arts = export_qat(loaded, paths, {"input": x[:32]}, CalibrationConfig(method="minmax"))
    trt = onnx.load(str(paths["tensorrt"]))
    ops = [n.op_type for n in trt.graph.node]
    assert ops.count("QuantizeLinear") == 8 and ops.count("DequantizeLinear") == 8  # 4 weights + 4 activations
    meta = {p.key: p.value for p in trt.metadata_props}
    assert meta["trtopt.quantize.target"] == "tensorrt"
    # the first activation Q/DQ carries the trained scale: amax / 127
    q = next(n for n in trt.graph.node if n.op_type == "QuantizeLinear" and n.input[0] == "input")
    scale = next(onnx.numpy_helper.to_array(n.attribute[0].t) for n in trt.graph.node if n.output and n.output[0] == q.input[1])
    assert float(scale) * 127 == pytest.approx(float(result.model.stem[0].input_quantizer.amax), rel=1e-5)
    # the CPU layout runs, uses uint8 activations on the trained grid (scale amax / 127, zero point 0 after a
    # ReLU, 128 for a signed tensor), and agrees with the fake-quantized PyTorch model
    ort_model = onnx.load(str(paths["onnxruntime"]))
    _, learned = strip_qdq(onnx.load(str(paths["tensorrt"])))
    consts = {t.name: onnx.numpy_helper.to_array(t) for t in ort_model.graph.initializer}
    grid = {n.input[0]: (float(consts[n.input[1]]), int(consts[n.input[2]]), consts[n.input[2]].dtype)
            for n in ort_model.graph.node if n.op_type == "QuantizeLinear" and n.input[0] in learned}
    assert len(grid) >= 3 and "input" in grid
    for tensor, (scale, _, dtype) in grid.items():
        assert scale == pytest.approx(learned[tensor] / 127, rel=1e-6) and dtype == np.uint8, tensor
    assert grid["input"][1] == 128 and {z for _, z, _ in grid.values()} == {0, 128}  # signed input; ReLU outputs
    assert {p.key: p.value for p in ort_model.metadata_props}["trtopt.quantize.target"] == "onnxruntime"
    assert "ranges from training" in " ".join(arts["onnxruntime"].notes)
    out = ort.InferenceSession(str(paths["onnxruntime"]), providers=["CPUExecutionProvider"]).run(None, {"input": x[:32]})[0]
    with torch.no_grad():
        ref = result.model(torch.from_numpy(x[:32])).numpy()
    assert (out.argmax(1) == ref.argmax(1)).mean() >= 0.9
    assert not list(tmp_path.glob("*.tmp*"))


class _Scaled(nn.Module):
    def __init__(self, k: float) -> None:
        super().__init__()
        self.k = k

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1) * self.k


def test_qdq_parity_scales_atol_with_the_outputs():
    from trtopt.quant.qat_export import QDQ_PARITY, qdq_parity

    x = np.full((16, 1, 2, 2), 0.5, np.float32)
    x[3] = -2.0
    x[12] = 100.0  # beyond the first 8 samples: does not set the scale

    def loaded(k: float) -> LoadedModel:
        return LoadedModel(module=_Scaled(k), spec="test:scaled", inputs=(InputSpec("input", (1, 2, 2)),))

    big = qdq_parity(loaded(10.0), {"input": x})
    assert big.atol == pytest.approx(QDQ_PARITY.atol * 20.0)  # max |output| = 2 * 10
    assert (big.rtol, big.min_cosine) == (QDQ_PARITY.rtol, QDQ_PARITY.min_cosine)
    assert qdq_parity(loaded(0.1), {"input": x}) == QDQ_PARITY  # outputs below 1 keep the absolute tolerance


def test_strip_qdq_keeps_names_and_returns_amax():
    from onnx import TensorProto, helper, numpy_helper

    from trtopt.quant.qat_export import strip_qdq

    scale = numpy_helper.from_array(np.array(0.5, np.float32), "s")
    zero = numpy_helper.from_array(np.array(0, np.int8), "z")
    w = numpy_helper.from_array(np.array([[1.2, -0.3], [0.74, 100.0]], np.float32), "w")
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["xq"]), helper.make_node("DequantizeLinear", ["xq", "s", "z"], ["xd"]),
             helper.make_node("QuantizeLinear", ["w", "s", "z"], ["wq"]), helper.make_node("DequantizeLinear", ["wq", "s", "z"], ["wd"]),
             helper.make_node("MatMul", ["xd", "wd"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2])], [scale, zero, w])
    model, learned = strip_qdq(helper.make_model(graph))
    assert [(n.op_type, list(n.input)) for n in model.graph.node] == [("MatMul", ["x", "w"])]
    assert learned == {"x": pytest.approx(63.5)}
    # the weight is what its Q/DQ pair computed: the int8 grid of scale 0.5, clipped at code 127
    assert numpy_helper.to_array(model.graph.initializer[2]).tolist() == [[1.0, -0.5], [0.5, 63.5]]


class NormNet(nn.Module):
    """Linear → residual add → LayerNorm → Linear: a transformer block's shape."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.norm, self.fc2 = nn.Linear(8, 8), nn.LayerNorm(8), nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.norm(x + self.fc1(x)))


def test_fake_quant_keeps_normalization_layers_float():
    from trtopt.compress.qat import insert_fake_quant, quantizer_counts

    torch.manual_seed(0)
    fake = insert_fake_quant(NormNet(), torch.randn(32, 8))
    assert not fake.norm.input_quantizer.is_enabled  # ModelOpt's default quantizes it; TensorRT's rules do not
    assert fake.fc1.input_quantizer.is_enabled and fake.fc2.input_quantizer.is_enabled
    assert quantizer_counts(fake) == {"weight": 2, "input": 2}


def test_qat_can_start_from_trtopt_ranges():
    from trtopt.compress.qat import insert_fake_quant, qat, set_amax_
    from trtopt.quant.calibrate import CalibrationConfig
    from trtopt.quant.qat_export import calibrated_amax

    x, y = _data(32)
    fake = insert_fake_quant(_net(), torch.from_numpy(x))
    loaded = LoadedModel(module=fake, spec="test:depthwise", inputs=(InputSpec("input", (1, 8, 8)),))
    amax = calibrated_amax(loaded, {"input": x}, CalibrationConfig(method="minmax"))
    # the four Conv/Linear input quantizers, named by module path; the image's range is its max |x|
    assert set(amax) == {"stem.0.input_quantizer", "dw.0.input_quantizer", "pw.input_quantizer", "head.input_quantizer"}
    assert amax["stem.0.input_quantizer"] == pytest.approx(float(np.abs(x).max()), rel=1e-5)
    halved = {name: value / 2 for name, value in amax.items()}
    result = qat(_net(), (x, y), QATConfig(training=_train(1)), set_ranges=lambda m: set_amax_(m, halved))
    assert float(result.model.head.input_quantizer.amax) == pytest.approx(halved["head.input_quantizer"], rel=1e-6)
    with pytest.raises(TrtoptError, match="no quantizer 'nope.input_quantizer'"):
        set_amax_(fake, {"nope.input_quantizer": 1.0})
