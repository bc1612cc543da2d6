"""Pruning: each method on tiny seeded models, counting, the 2:4 pattern and its ONNX checker, export parity,
saving/loading pruned models, error paths, and the CLI end to end. Real models are marked slow."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from trtopt.compress.config import PruneConfig
from trtopt.compress.prune import count_macs, prune, prune_loaded
from trtopt.compress.sparsity import apply_masks_, mask_2to4, sparsity_masks
from trtopt.errors import TrtoptError
from trtopt.models.load import load_model
from trtopt.models.module_file import save_module
from trtopt.models.nets import DigitsCNN
from trtopt.trt.sparsity import check_2to4


def small_digits() -> nn.Module:
    torch.manual_seed(0)
    model = DigitsCNN(widths=(16, 32, 64)).eval()
    with torch.no_grad():  # distinct BN scales so "bn" importance has something to rank
        for bn in (model.bn1, model.bn2, model.bn3):
            bn.weight.uniform_(0.1, 2.0)
    return model


DIGITS_INPUT = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(1))


def onnx_outputs(path, feed):
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(None, feed)


# ---- config validation -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("ratio", [-0.1, 1.0, 1.5, float("nan")])
def test_ratio_outside_unit_interval_is_refused(ratio):
    with pytest.raises(TrtoptError, match=r"^ratio=.* must be a number in \[0, 1\)"):
        PruneConfig(ratio=ratio)


def test_unknown_importance_and_method_are_refused():
    with pytest.raises(TrtoptError, match="importance='fisher'"):
        PruneConfig(importance="fisher")
    with pytest.raises(TrtoptError, match="method='4:8'"):
        PruneConfig(method="4:8")
    with pytest.raises(TrtoptError, match="ranks single weights"):
        PruneConfig(method="unstructured", importance="bn")


# ---- counting --------------------------------------------------------------------------------------------------

def test_count_macs_of_known_layers_per_sample():
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1, groups=8), nn.Flatten(),
                          nn.Linear(8 * 8 * 8, 10))
    macs = count_macs(model, torch.zeros(2, 3, 8, 8))
    assert macs == {"0": 8 * 8 * 8 * 3 * 9, "1": 8 * 8 * 8 * 1 * 9, "3": 10 * 512}


# ---- unstructured ----------------------------------------------------------------------------------------------

def test_unstructured_layerwise_zeroes_ratio_of_each_layer_permanently():
    model = small_digits()
    original = {k: v.clone() for k, v in model.state_dict().items()}
    result = prune(model, DIGITS_INPUT, PruneConfig("unstructured", 0.6))
    for row in result.layers:
        numel = math.prod(row["weight_shape_after"])
        assert row["sparsity"] == pytest.approx(round(0.6 * numel) / numel)
    pruned = result.module
    assert not any(name.endswith("_orig") for name, _ in pruned.named_parameters())  # prune.remove ran
    assert all(not m._forward_pre_hooks for m in pruned.modules())
    # the kept weights are the largest-magnitude ones of each layer
    w0, w1 = model.conv2.weight.detach().abs(), pruned.conv2.weight.detach()
    assert w0[w1 != 0].min() >= w0[w1 == 0].max()
    # the input model is untouched, and shapes/MACs stay (sparse weights in dense kernels)
    assert all(torch.equal(original[k], v) for k, v in model.state_dict().items())
    assert result.parameters_after == result.parameters_before and result.macs_after == result.macs_before
    assert result.macs_after_nonzero < 0.45 * result.macs_before
    weights = sum(math.prod(r["weight_shape_after"]) for r in result.layers)
    assert result.pruning_rate_percent == pytest.approx(100 * 0.6 * weights / result.parameters_before, rel=0.01)


def test_unstructured_global_ranks_across_layers_and_respects_ignored():
    model = small_digits()
    result = prune(model, DIGITS_INPUT, PruneConfig("unstructured", 0.5, global_pruning=True, ignored_layers=("fc",)))
    rows = {r["name"]: r for r in result.layers}
    assert rows["fc"]["sparsity"] == 0.0
    zeros = sum(r["sparsity"] * math.prod(r["weight_shape_after"]) for n, r in rows.items() if n != "fc")
    total = sum(math.prod(r["weight_shape_after"]) for n, r in rows.items() if n != "fc")
    assert zeros / total == pytest.approx(0.5, abs=1e-3)
    assert len({round(r["sparsity"], 3) for n, r in rows.items() if n != "fc"}) > 1  # layers lose different shares


# ---- structured ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("importance", ["l1", "l2", "bn", "taylor"])
def test_structured_digits_removes_channels_rounded_and_keeps_interface(importance):
    model = small_digits()
    result = prune(model, DIGITS_INPUT, PruneConfig("structured", 0.5, importance=importance))
    pruned = result.module
    assert pruned.conv1.out_channels == 16  # first layer protected
    assert pruned.conv2.out_channels == 16 and pruned.conv3.out_channels == 32
    assert pruned.fc.out_features == 10 and pruned.fc.in_features == 32  # classifier outputs kept, inputs follow
    assert pruned.bn2.num_features == 16 and pruned.bn3.num_features == 32
    assert pruned(DIGITS_INPUT).shape == (4, 10)
    assert result.parameters_after < result.parameters_before
    assert result.pruning_rate_percent == pytest.approx(
        100 * (result.parameters_before - result.parameters_after) / result.parameters_before)
    assert result.channel_ratio == pytest.approx(1 - (16 + 32) / (32 + 64))  # over the layers allowed to shrink
    assert result.macs_after == sum(count_macs(pruned, DIGITS_INPUT).values())


def test_structured_importance_choice_changes_which_channels_go():
    model = small_digits()
    kept = {}
    for importance in ("l1", "bn"):
        pruned = prune(model, DIGITS_INPUT, PruneConfig("structured", 0.5, importance=importance)).module
        kept[importance] = sorted(pruned.bn2.weight.detach().tolist())
    assert kept["l1"] != kept["bn"]
    # BN-scale importance keeps exactly the channels with the largest |gamma|
    assert kept["bn"] == sorted(model.bn2.weight.detach().abs().sort(descending=True).values[:16].tolist())


def test_structured_resnet_like_follows_residuals_concat_depthwise_and_exports(tmp_path):
    from trtopt.export import export_onnx

    loaded = load_model("tests.helpers.tiny_prune_models:tiny_resnet")
    pruned, result = prune_loaded(loaded, PruneConfig("structured", 0.5))
    m = pruned.module
    assert all(r["weight_shape_after"][0] % 8 == 0 for r in result.layers if r["name"] != "fc")
    assert m.dw[0].groups == m.dw[0].in_channels == m.dw[0].out_channels  # depthwise stays depthwise
    assert m.down[0].out_channels == m.block2[1].out_channels  # both sides of the residual add
    assert m.fc.in_features == m.branch_a[0].out_channels + m.branch_b[0].out_channels  # the concat
    assert m.fc.out_features == 10 and m.block2[0][0].out_channels < 64
    assert result.parameters_after < 0.5 * result.parameters_before
    art = export_onnx(pruned, tmp_path / "p.onnx")
    assert all(p["passed"] for p in art.parity.values())
    x = np.random.default_rng(0).uniform(-1, 1, (3, 3, 16, 16)).astype(np.float32)
    with torch.no_grad():
        expected = m(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(onnx_outputs(art.path, {"input": x})[0], expected, atol=1e-4, rtol=1e-3)


def test_structured_global_uses_different_ratios_per_layer():
    result = prune(load_model("tests.helpers.tiny_prune_models:tiny_resnet").module, torch.randn(2, 3, 16, 16),
                   PruneConfig("structured", 0.5, global_pruning=True))
    ratios = {r["weight_shape_after"][0] / r["weight_shape_before"][0] for r in result.layers if r["pruned"]}
    assert len(ratios) > 1


def test_structured_transformer_removes_heads_and_ffn_width_keeps_hidden(tmp_path):
    from trtopt.export import export_onnx

    loaded = load_model("tests.helpers.tiny_prune_models:tiny_bert")
    pruned, result = prune_loaded(loaded, PruneConfig("structured", 0.5))
    assert {v["after"] for v in result.heads.values()} == {2} and {v["before"] for v in result.heads.values()} == {4}
    layer = pruned.module.encoder.encoder.layer[0]
    assert layer.attention.self.query.out_features == 16 and layer.attention.self.all_head_size == 16
    assert layer.intermediate.dense.out_features == 32
    assert layer.output.dense.out_features == 32 and layer.attention.output.dense.out_features == 32  # hidden kept
    art = export_onnx(pruned, tmp_path / "bert.onnx")
    assert all(p["passed"] for p in art.parity.values())


# ---- the pruned model proves itself (mask equivalence) ------------------------------------------------------------

@pytest.mark.parametrize("name", ["tiny_resnet", "tiny_bert", "grouped_no_shuffle"])
def test_structured_prune_equals_masked_original_and_reports_residual(name):
    loaded = load_model(f"tests.helpers.tiny_prune_models:{name}")
    config = PruneConfig("structured", 0.5, round_to=1 if name == "grouped_no_shuffle" else 8,
                         protect_first_last=name != "grouped_no_shuffle", ignored_layers=("head",) if name == "grouped_no_shuffle" else ())
    _, result = prune_loaded(loaded, config)
    check = result.to_dict()["equivalence"]
    assert check["layers_compared"] >= 4 and check["max_layer_residual"] < 1e-5 and check["output_residual"] < 1e-5
    assert set(check["layer_residuals"]) <= {r["name"] for r in result.layers}
    assert result.parameters_after < result.parameters_before


def test_channel_shuffle_is_refused_naming_where_it_happens():
    model = load_model("tests.helpers.tiny_prune_models:grouped_shuffle").module
    x = torch.randn(2, 3, 16, 16)
    for ratio in (0.3, 0.5):
        with pytest.raises(TrtoptError, match=r"channel shuffle right after 'gconv1.2'.*fix: prune this model with --method unstructured"):
            prune(model, x, PruneConfig("structured", ratio, round_to=1, protect_first_last=False, ignored_layers=("head",)))
    # the suggested fix works
    assert prune(model, x, PruneConfig("unstructured", 0.5)).pruning_rate_percent > 40


def test_wrong_rewiring_that_slips_past_the_graph_names_the_first_diverging_layer(monkeypatch):
    import trtopt.compress.prune_check as prune_check

    # without the shuffle guard, Torch-Pruning maps the shuffle as if channels kept their order: the check catches it
    monkeypatch.setattr(prune_check, "find_channel_shuffle", lambda model, args: None)
    model = load_model("tests.helpers.tiny_prune_models:grouped_shuffle").module
    with pytest.raises(TrtoptError, match=r"not the original with the removed channels masked: layer 'gconv2.0' differs by "
                                          r"[0-9.]+e(-0[0-2]|\+0[0-9])"):
        prune(model, torch.randn(2, 3, 16, 16),
              PruneConfig("structured", 0.5, round_to=1, protect_first_last=False, ignored_layers=("head",)))


def test_ratio_that_constraints_prevent_is_reported_with_the_reason():
    model = load_model("tests.helpers.tiny_prune_models:grouped_no_shuffle").module
    x = torch.randn(2, 3, 16, 16)
    result = prune(model, x, PruneConfig("structured", 0.7, round_to=8, protect_first_last=False, ignored_layers=("head",)))
    assert result.channel_ratio == 0.0
    note = {n["layer"]: n for n in result.ratio_notes}["stem.0"]
    assert note["ratio_got"] == 0.0 and note["ratio_asked"] == 0.7
    assert "grouped conv 'gconv1.0' (groups=6)" in note["reason"] and "round_to=8" in note["reason"]
    # groups=6, no rounding: 0.3 asked becomes 18 of 48 channels (multiples of 6), and says so
    result = prune(model, x, PruneConfig("structured", 0.3, round_to=1, protect_first_last=False, ignored_layers=("head",)))
    assert result.channel_ratio == pytest.approx(18 / 48)
    assert "groups=6" in {n["layer"]: n for n in result.ratio_notes}["stem.0"]["reason"]
    # a ratio that fits the constraints leaves no note
    assert prune(model, x, PruneConfig("structured", 0.5, round_to=1, protect_first_last=False,
                                       ignored_layers=("head",))).ratio_notes == []


def test_timm_vit_attention_loses_whole_heads_and_keeps_num_heads_consistent(tmp_path):
    import timm

    from trtopt.export import export_onnx
    from trtopt.models.spec import InputSpec, LoadedModel

    torch.manual_seed(0)
    vit = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8, depth=2, num_classes=10).eval()
    x = torch.randn(2, 3, 32, 32)
    result = prune(vit, x, PruneConfig("structured", 0.5, round_to=1))
    assert result.heads == {f"blocks.{i}.attn": {"before": 3, "after": 1} for i in range(2)}
    for block in result.module.blocks:
        attn = block.attn
        assert attn.num_heads == 1 and attn.attn_dim == attn.head_dim == 64
        assert attn.qkv.out_features == 3 * 64 and attn.proj.in_features == 64 and attn.proj.out_features == 192
        assert block.mlp.fc1.out_features == 384 and block.mlp.fc2.out_features == 192  # FFN pruned, width kept
    assert result.module(x).shape == (2, 10) and result.equivalence.max_layer_residual < 1e-5
    loaded = LoadedModel(result.module, "timm vit tiny", (InputSpec("input", (3, 32, 32), "float32", -1.0, 1.0),))
    art = export_onnx(loaded, tmp_path / "vit.onnx")
    assert all(p["passed"] for p in art.parity.values())


def test_a_high_ratio_keeps_one_head_of_each_attention():
    """Before: at 0.7 Torch-Pruning removed ceil(0.7 × 3) = 3 of 3 heads and the prune failed."""
    import timm

    torch.manual_seed(0)
    vit = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8, depth=1, num_classes=10).eval()
    x = torch.randn(2, 3, 32, 32)
    result = prune(vit, x, PruneConfig("structured", 0.7, round_to=1))
    assert result.heads == {"blocks.0.attn": {"before": 3, "after": 1}}
    assert result.module(x).shape == (2, 10) and result.equivalence.max_layer_residual < 1e-5


def test_multihead_attention_is_kept_whole_with_the_reason_and_its_ffn_pruned():
    class Encoder(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inp = nn.Linear(16, 32)
            self.enc = nn.TransformerEncoderLayer(32, 4, 64, dropout=0.0, batch_first=True)
            self.head = nn.Linear(32, 5)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(self.enc(self.inp(x)).mean(1))

    torch.manual_seed(0)
    result = prune(Encoder().eval(), torch.randn(2, 6, 16), PruneConfig("structured", 0.5, round_to=1))
    attn = result.module.enc.self_attn
    assert (attn.embed_dim, attn.num_heads, attn.in_proj_weight.shape) == (32, 4, (96, 32))
    assert result.module.enc.linear1.out_features == 32 and result.module.enc.linear2.out_features == 32
    assert [s["name"] for s in result.skipped] == ["enc.self_attn"]
    assert "embed_dim is the model width" in result.skipped[0]["reason"]
    assert result.equivalence.output_residual < 1e-5


def test_ratio_zero_changes_nothing():
    result = prune(small_digits(), DIGITS_INPUT, PruneConfig("structured", 0.0))
    assert result.parameters_after == result.parameters_before and result.pruning_rate_percent == 0.0


# ---- 2:4 -------------------------------------------------------------------------------------------------------

@settings(max_examples=40, deadline=None)
@given(out=st.integers(1, 5), groups_in=st.integers(1, 4), kernel=st.sampled_from([(), (1,), (3, 3)]),
       seed=st.integers(0, 2**16))
def test_mask_2to4_keeps_the_two_largest_of_every_group_of_four(out, groups_in, kernel, seed):
    weight = torch.randn((out, 4 * groups_in, *kernel), generator=torch.Generator().manual_seed(seed))
    mask = mask_2to4(weight)
    assert mask.shape == weight.shape and mask.dtype == torch.bool
    w = weight.abs().movedim(1, -1).reshape(-1, 4)
    m = mask.movedim(1, -1).reshape(-1, 4)
    assert (m.sum(1) == 2).all()
    kept_min = torch.where(m, w, torch.inf).min(1).values
    dropped_max = torch.where(~m, w, -torch.inf).max(1).values
    assert (kept_min >= dropped_max).all()


def test_2to4_digits_passes_checker_dense_fails_and_violation_is_named(tmp_path):
    from trtopt.export import export_onnx

    model = small_digits()
    result = prune(model, DIGITS_INPUT, PruneConfig("2:4"))
    assert result.skipped == [{"name": "conv1", "reason": "input dimension 1 is not a multiple of 4"}]
    assert {r["name"]: r["sparsity"] for r in result.layers if r["name"] != "conv1"} == {"conv2": 0.5, "conv3": 0.5, "fc": 0.5}
    loaded = load_model("zoo:digits_cnn")
    sparse = export_onnx(loaded.__class__(result.module, "sparse", loaded.inputs), tmp_path / "sparse.onnx")
    check = check_2to4(sparse.path)
    assert check.ok and len(check.layers) == 3 and check.violating == []
    assert [s["weight"] for s in check.skipped] == ["conv1.weight"]
    dense = check_2to4(export_onnx(loaded.__class__(model, "dense", loaded.inputs), tmp_path / "dense.onnx").path)
    assert not dense.ok and len(dense.violating) == 3
    # one extra nonzero in one group of one layer is caught, and only that layer is named
    broken = result.module
    with torch.no_grad():
        group = broken.conv3.weight[0, 0:4, 1, 1]
        group[group == 0] = 0.5
    bad = check_2to4(export_onnx(loaded.__class__(broken, "broken", loaded.inputs), tmp_path / "broken.onnx").path)
    assert not bad.ok and len(bad.violating) == 1
    row = next(r for r in bad.layers if not r["ok"])
    assert row["groups_over_2_nonzero"] == 1 and row["shape"][:2] == [64, 32]


def test_sparsity_masks_keep_the_2to4_pattern_through_training_steps():
    model = prune(small_digits(), DIGITS_INPUT, PruneConfig("2:4")).module
    masks = sparsity_masks(model)
    assert set(masks) == {"conv2", "conv3", "fc"}
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    model.train()
    for _ in range(3):
        opt.zero_grad()
        nn.functional.cross_entropy(model(DIGITS_INPUT), torch.tensor([0, 1, 2, 3])).backward()
        opt.step()
        apply_masks_(model, masks)
    for name in masks:
        w = getattr(model, name).weight.detach()
        assert ((w != 0) <= masks[name]).all()  # nothing regrew outside the mask
        assert ((w.movedim(1, -1).reshape(-1, 4) != 0).sum(1) <= 2).all()


def test_check_2to4_reads_gemm_transposition_and_matmul_axis(tmp_path):
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rows = np.array([[1, 1, 0, 0], [0, 1, 1, 0]], dtype=np.float32)  # 2:4 along axis 1 (K when transB=1)
    nodes = [helper.make_node("Gemm", ["x", "B"], ["y"], transB=1, name="gemm_t"),
             helper.make_node("MatMul", ["y4", "W"], ["z"], name="matmul")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4]),
                                            helper.make_tensor_value_info("y4", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2]),
                               helper.make_tensor_value_info("z", TensorProto.FLOAT, [1, 2])],
                              [numpy_helper.from_array(rows, "B"), numpy_helper.from_array(rows.T.copy(), "W")])
    onnx.save(helper.make_model(graph), tmp_path / "ok.onnx")
    check = check_2to4(tmp_path / "ok.onnx")
    assert check.ok and [r["input_axis"] for r in check.layers] == [1, 0]
    graph.initializer[1].CopyFrom(numpy_helper.from_array(np.ones((4, 2), dtype=np.float32), "W"))
    onnx.save(helper.make_model(graph), tmp_path / "bad.onnx")
    assert check_2to4(tmp_path / "bad.onnx").violating == ["matmul"]


def test_check_2to4_missing_or_bad_file(tmp_path):
    with pytest.raises(TrtoptError, match="does not exist"):
        check_2to4(tmp_path / "nope.onnx")
    (tmp_path / "junk.onnx").write_bytes(b"not onnx at all")
    with pytest.raises(TrtoptError, match="not a readable ONNX model"):
        check_2to4(tmp_path / "junk.onnx")


# ---- errors ----------------------------------------------------------------------------------------------------

def test_model_the_graph_cannot_follow_names_the_layer():
    loaded = load_model("tests.helpers.tiny_prune_models:hardcoded_reshape")
    with pytest.raises(TrtoptError, match=r"pruned model failed in layer 'fc' \(Linear\)"):
        prune_loaded(loaded, PruneConfig("structured", 0.5))
    # ignoring the layer feeding the reshape makes it prunable
    pruned, _ = prune_loaded(loaded, PruneConfig("structured", 0.5, ignored_layers=("conv3",)))
    assert pruned.module.conv2.out_channels == 8 and pruned.module.conv3.out_channels == 16


def test_unknown_ignored_layer_and_bn_without_batchnorm():
    with pytest.raises(TrtoptError, match="ignored layer 'conv9' is not a module of the model.*conv1"):
        prune(small_digits(), DIGITS_INPUT, PruneConfig(ignored_layers=("conv9",)))
    with pytest.raises(TrtoptError, match="no BatchNorm layer"):
        prune(load_model("tests.helpers.tiny_prune_models:hardcoded_reshape").module, torch.randn(2, 3, 8, 8),
              PruneConfig("structured", 0.5, importance="bn", ignored_layers=("conv3",)))


def test_wrong_example_inputs_name_the_layer():
    with pytest.raises(TrtoptError, match="in layer 'conv1'"):
        prune(small_digits(), torch.randn(2, 3, 8, 8), PruneConfig())


# ---- saving and loading ----------------------------------------------------------------------------------------

def test_pruned_model_saves_whole_and_loads_with_load_model(tmp_path):
    loaded = load_model("tests.helpers.tiny_prune_models:tiny_resnet")
    pruned, result = prune_loaded(loaded, PruneConfig("structured", 0.5))
    save_module(pruned, tmp_path / "p.pt", metadata={"prune": result.to_dict()})
    with pytest.raises(TrtoptError, match="already exists"):
        save_module(pruned, tmp_path / "p.pt")
    with pytest.raises(TrtoptError, match="--trust-code"):  # its architecture is a factory: code the file names
        load_model(str(tmp_path / "p.pt"))
    back = load_model(str(tmp_path / "p.pt"), trust_code=True)
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(back.module(x), pruned.module(x))
    assert back.inputs == loaded.inputs
    assert back.extra["metadata"]["prune"]["parameters_after"] == result.parameters_after


def test_speedup_search_prunes_and_reports_each_step():
    from trtopt.speedup_search import SpeedupSearchConfig, search_speedup

    loaded = load_model("tests.helpers.tiny_prune_models:tiny_resnet")
    before = {k: v.clone() for k, v in loaded.module.state_dict().items()}
    # a tolerance this wide accepts the first step whatever the timing noise: the plumbing is what is tested
    seen = []
    search = search_speedup(loaded, PruneConfig("structured"), SpeedupSearchConfig(
        target_speedup=1.2, tolerance=0.95, iterations=5, warmup_iterations=1, strength_step=0.25), on_step=seen.append)
    assert search.reached and len(search.steps) == 1 and search.chosen == 0 and seen == search.steps
    step = search.chosen_step
    assert step.strength == 0.25 and step.compression["ratio"] == 0.25 and search.knob == "ratio"
    assert step.speedup_ci_low <= step.speedup <= step.speedup_ci_high
    assert step.compression["macs"] == search.result.macs_after and step.compression["macs_reduction"] > 1
    assert search.module is search.result.module
    assert search.to_dict()["steps"][0]["chosen"] and search.to_dict()["chosen_strength"] == 0.25
    assert all(torch.equal(v, before[k]) for k, v in loaded.module.state_dict().items())  # the input model is untouched
    with pytest.raises(TrtoptError, match="needs structured pruning"):
        search_speedup(loaded, PruneConfig("2:4"))
    with pytest.raises(TrtoptError, match=r"target_speedup=0.8 must be a number > 1"):
        SpeedupSearchConfig(target_speedup=0.8)


# ---- CLI -------------------------------------------------------------------------------------------------------

def run(args, cwd, env):
    return subprocess.run([sys.executable, "-m", "trtopt", "-q", *args], check=False, cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)


def assert_one_line_error(result, *needles):
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("trtopt: error: ") and "fix:" in lines[0], result.stderr
    for needle in needles:
        assert needle in lines[0]


def test_cli_prune_export_and_check_2to4_end_to_end(tmp_path, cli_env):
    r = run(["prune", "tests.helpers.tiny_prune_models:tiny_resnet", "-o", "p.pt", "--ratio", "0.5", "--json", "p.json"], tmp_path, cli_env)
    assert r.returncode == 0, r.stderr
    report = json.loads((tmp_path / "p.json").read_text())["result"]
    assert report["method"] == "structured" and report["parameters_after"] < report["parameters_before"]
    assert "pruning rate" in r.stdout
    r = run(["prune", "tests.helpers.tiny_prune_models:tiny_resnet", "-o", "s.pt", "--method", "2:4"], tmp_path, cli_env)
    assert r.returncode == 0, r.stderr
    assert_one_line_error(run(["export", "s.pt", "-o", "s.onnx"], tmp_path, cli_env), "s.pt", "--trust-code")
    assert run(["export", "s.pt", "-o", "s.onnx", "--trust-code"], tmp_path, cli_env).returncode == 0
    r = run(["check-2to4", "s.onnx", "--json", "c.json"], tmp_path, cli_env)
    assert r.returncode == 0 and json.loads((tmp_path / "c.json").read_text())["ok"]


def test_cli_prune_bad_inputs_one_line_and_no_output(tmp_path, cli_env):
    cases = [
        (["--ratio", "1.0"], ["ratio=1.0 must be a number in [0, 1)"]),
        (["--ratio", "0.5", "--ignore", "nope"], ["ignored layer 'nope'"]),
    ]
    for extra, needles in cases:
        assert_one_line_error(run(["prune", "tests.helpers.tiny_prune_models:tiny_resnet", "-o", "x.pt", *extra], tmp_path, cli_env), *needles)
    (tmp_path / "junk.pt").write_bytes(b"garbage")
    assert_one_line_error(run(["prune", "zoo:digits_cnn", "--checkpoint", "junk.pt", "-o", "x.pt"], tmp_path, cli_env),
                          "cannot be read")
    assert_one_line_error(run(["prune", "tests.helpers.tiny_prune_models:hardcoded_reshape", "-o", "x.pt"], tmp_path, cli_env), "'fc'")
    assert not (tmp_path / "x.pt").exists()


# ---- real models -----------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_resnet50_structured_prune_exports_with_parity(tmp_path):
    from trtopt.export import export_onnx

    loaded = load_model("torchvision:resnet50")
    pruned, result = prune_loaded(loaded, PruneConfig("structured", 0.5))
    assert pruned.module.fc.out_features == 1000 and pruned.module.conv1.out_channels == 64
    assert result.macs_reduction > 3.0 and result.channel_ratio == pytest.approx(0.5, abs=0.02)
    art = export_onnx(pruned, tmp_path / "r50.onnx")
    assert all(p["passed"] for p in art.parity.values())


@pytest.mark.slow
def test_minilm_heads_and_ffn_pruned_runs_and_exports(tmp_path):
    from trtopt.export import export_onnx

    loaded = load_model("zoo:minilm_l6")
    pruned, result = prune_loaded(loaded, PruneConfig("structured", 0.5))
    assert {v["after"] for v in result.heads.values()} == {6}
    assert pruned.module.encoder.encoder.layer[0].intermediate.dense.out_features == 768
    art = export_onnx(pruned, tmp_path / "m.onnx")
    assert all(p["passed"] for p in art.parity.values())


class _Boom(nn.Module):
    def forward(self, x):
        raise RuntimeError()  # str() is "": the error message must still be one line


def test_layer_failing_without_a_message_is_named_with_its_type():
    model = nn.Sequential(nn.Linear(4, 4), _Boom())
    with pytest.raises(TrtoptError, match=r"example inputs failed in layer '1' \(_Boom\): RuntimeError; fix:"):
        prune(model, torch.zeros(1, 4), PruneConfig("unstructured", 0.5))


def test_missing_torch_pruning_says_it_is_a_core_dependency(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch_pruning", None)  # makes `import torch_pruning` raise ImportError
    with pytest.raises(TrtoptError, match="structured pruning needs the Python package 'torch-pruning'") as err:
        prune(DigitsCNN(), torch.zeros(1, 1, 8, 8), PruneConfig("structured", 0.5))
    assert "pip install 'torch-pruning'" in err.value.fix and "reinstalling trtopt" in err.value.fix
    assert "trtopt[" not in str(err.value)  # no extra brings it: it is in pyproject's dependencies
