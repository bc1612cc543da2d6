"""Export of models as users bring them (issue 14's reproductions): declared inputs, dynamic axes beyond the
batch, dict outputs, dropped inputs, a batch baked in by a per-image loop, detection heads, offline backbones."""

from __future__ import annotations

import onnx
import pytest

from tests.helpers.cli import assert_one_line_error, run_here
from trtopt.errors import TrtoptError
from trtopt.export import ExportConfig, export_onnx
from trtopt.models.inputs import parse_declarations
from trtopt.models.load import load_model, offline_downloads

FACTORIES = "tests.helpers.byom_models"


def _signature(path):
    graph = onnx.load(str(path)).graph
    dims = lambda v: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]  # noqa: E731
    return {v.name: dims(v) for v in graph.input}, {v.name: dims(v) for v in graph.output}


def test_two_int64_inputs_without_a_declaration_name_the_missing_input_and_the_flag(tmp_path, capsys):
    result = run_here(["export", f"{FACTORIES}:bert_tiny", "-o", tmp_path / "b.onnx",
                       "--input-shape", "input_ids:2x12"], capsys)
    assert_one_line_error(result, "forward() takes input 'attention_mask', which has no declared shape",
                          "--input-shape input_ids:2x12,attention_mask:1xDIMS")
    assert "traceable" not in result.stderr and list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_token_inputs_declared_without_a_dtype_say_which_flag_declares_it(tmp_path, capsys):
    result = run_here(["export", f"{FACTORIES}:bert_tiny", "-o", tmp_path / "b.onnx",
                       "--input-shape", "input_ids:2x12", "--input-shape", "attention_mask:2x12"], capsys)
    assert_one_line_error(result, "takes integer ids (an embedding lookup), but input 'input_ids' is declared float32",
                          "--input-dtype input_ids:int64,attention_mask:int64")
    assert "traceable" not in result.stderr


@pytest.mark.slow
def test_bert_from_a_config_exports_with_declared_inputs_and_a_dynamic_sequence(tmp_path, capsys):
    out = tmp_path / "bert.onnx"
    result = run_here(["export", f"{FACTORIES}:bert_tiny", "-o", out, "--input-shape", "input_ids:2x12,attention_mask:2x12",
                       "--input-dtype", "input_ids:int64,attention_mask:int64", "--input-range", "input_ids:[0,99]",
                       "--input-range", "attention_mask:[0,1]", "--dynamic", "input_ids:1=seq,attention_mask:1=seq",
                       "--json", tmp_path / "bert.json"], capsys)
    assert result.returncode == 0, result.stderr
    inputs, outputs = _signature(out)
    assert inputs == {"input_ids": ["batch", "seq"], "attention_mask": ["batch", "seq"]}
    assert outputs == {"output": ["batch", "seq", 32]}
    assert "seq_6: max abs" in result.stdout  # parity at a second sequence length (half of 12)
    assert result.stderr == ""  # exporter output only under --debug


def test_dynamic_height_and_width_are_checked_at_two_sizes(tmp_path):
    loaded = load_model("tests.helpers.tiny_models:tiny_cnn",
                        inputs=parse_declarations(["input:2x3x32x32"], dynamic=["input:2=height,input:3=width"]))
    art = export_onnx(loaded, tmp_path / "hw.onnx", ExportConfig(exporter="torchscript", opset=17))
    assert _signature(art.path)[0] == {"input": ["batch", 3, "height", "width"]}
    assert set(art.parity) == {"batch_1", "batch_8", "height_16", "width_16"}
    assert all(r["passed"] for r in art.parity.values())


def test_a_per_image_loop_says_the_batch_got_baked_in_and_static_batch_fixes_it(tmp_path, capsys):
    args = ["export", f"{FACTORIES}:per_image_loop", "-o", tmp_path / "loop.onnx", "--input-shape", "input:2x3x16x16"]
    result = run_here(args, capsys)
    assert_one_line_error(result, "forward depends on the batch size", "for img in x.unbind(0)",
                          "baked batch 2 into the graph", "fix: export with --static-batch")
    assert "pass data of that shape" not in result.stderr and "m.onnx" not in result.stderr
    assert list(tmp_path.iterdir()) == []
    assert run_here([*args, "--static-batch"], capsys).returncode == 0
    assert _signature(tmp_path / "loop.onnx")[0] == {"input": [2, 3, 16, 16]}


def test_samples_that_fail_at_the_example_batch_too_are_a_parity_error_not_a_baked_batch(tmp_path):
    import numpy as np
    import torch

    from trtopt.models.spec import InputSpec, LoadedModel

    class BranchOnValues(torch.nn.Module):  # tracing keeps the branch the example batch took
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x * 2 if float(x.abs().max()) < 10 else x * 3

    feed = {"input": np.ones((8, 4), np.float32)}
    feed["input"][2:] = 50.0  # in the batch-8 check, not in the example batch (samples 0-1)
    loaded = LoadedModel(module=BranchOnValues(), spec="test:branch", inputs=(InputSpec("input", (4,)),))
    with pytest.raises(TrtoptError) as err:
        export_onnx(loaded, tmp_path / "b.onnx", ExportConfig(exporter="torchscript", opset=17), feed=feed)
    assert "differs from PyTorch at batch 8" in str(err.value)
    assert "batch size" not in str(err.value) and "--static-batch" not in str(err.value)
    assert list(tmp_path.iterdir()) == []


def test_an_unused_forward_argument_is_named_in_a_warning(tmp_path, capsys):
    result = run_here(["export", f"{FACTORIES}:unused_argument", "-o", tmp_path / "u.onnx",
                       "--input-shape", "x:2x8,scale:2x8"], capsys)
    assert result.returncode == 0, result.stderr
    assert "warning: input 'scale' is unused by" in result.stdout and "the ONNX model takes only x" in result.stdout
    assert list(_signature(tmp_path / "u.onnx")[0]) == ["x"]


def test_dict_outputs_keep_their_keys_as_onnx_output_names(tmp_path, capsys):
    result = run_here(["export", f"{FACTORIES}:dict_output", "-o", tmp_path / "d.onnx", "--input-shape", "input:2x3x32x32"],
                      capsys)
    assert result.returncode == 0, result.stderr
    assert list(_signature(tmp_path / "d.onnx")[1]) == ["embedding", "label"]
    assert "outputs named after the dict keys forward returns: embedding, label" in result.stdout
    assert result.stderr == ""


@pytest.mark.slow
def test_a_detection_head_is_one_line_naming_post_processing(tmp_path, capsys):
    result = run_here(["export", f"{FACTORIES}:ssdlite", "-o", tmp_path / "ssd.onnx", "--input-shape", "input:2x3x96x96"],
                      capsys)
    assert_one_line_error(result, "detection post-processing (per-image Python loops, NMS",
                          "a factory returning model.backbone")
    assert result.stdout == "" and list(tmp_path.iterdir()) == []


@pytest.mark.slow
@pytest.mark.parametrize("name", ["deeplabv3_mobilenet_v3_large", "ssdlite320_mobilenet_v3_large"])
def test_torchvision_backbones_load_offline(monkeypatch, name):
    import torch.hub

    def no_network(*args, **kwargs):
        raise AssertionError(f"tried to download {args[0]}")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_network)
    loaded = load_model(f"torchvision:{name}")
    assert "random init" in loaded.description


def test_a_failed_download_is_the_offline_error():
    import urllib.error

    with pytest.raises(TrtoptError, match="loading torchvision:x tried to download weights .* not possible offline; "
                                          "fix: load it without --pretrained"):
        with offline_downloads("torchvision:x"):
            raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")
