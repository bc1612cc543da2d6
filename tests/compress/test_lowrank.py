"""Low-rank factorization: the Eckart-Young error identity, exact full-rank rebuilds, shapes for all inputs,
rank rules (energy, parameter budget, explicit), skipped layers, ONNX export, and bad inputs."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from trtopt.compress.config import LowRankConfig
from trtopt.compress.lowrank import factorize_
from trtopt.errors import TrtoptError
from trtopt.models.nets import DigitsCNN


class _Wrap(nn.Module):
    def __init__(self, layer: nn.Module):
        super().__init__()
        self.layer = layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x)


@settings(max_examples=40, deadline=None)
@given(out_f=st.integers(1, 24), in_f=st.integers(1, 24), data=st.data(), seed=st.integers(0, 2**16))
def test_linear_error_equals_discarded_energy(out_f, in_f, data, seed):
    torch.manual_seed(seed)
    layer = nn.Linear(in_f, out_f).double()
    w = layer.weight.detach().clone()
    r = data.draw(st.integers(1, min(in_f, out_f)))
    model, report = factorize_(_Wrap(layer), LowRankConfig(method="ranks", ranks={"layer": r}, min_reduction=None, min_rank=1))
    first, second = model.layer
    assert first.weight.shape == (r, in_f) and second.weight.shape == (out_f, r)
    assert torch.equal(second.bias, layer.bias)
    s = torch.linalg.svdvals(w)
    discarded = float((s[r:] ** 2).sum())
    error = float(((w - second.weight.detach() @ first.weight.detach()) ** 2).sum())
    assert error == pytest.approx(discarded, rel=1e-6, abs=1e-10 * float((s ** 2).sum()))
    row = report.layers[0]
    assert row.rank == r and row.rel_error == pytest.approx((discarded / float((s ** 2).sum())) ** 0.5, abs=1e-6)


_conv_cases = st.fixed_dictionaries({
    "c": st.integers(1, 6), "o": st.integers(1, 6), "kh": st.integers(1, 4), "kw": st.integers(1, 4),
    "stride": st.tuples(st.integers(1, 3), st.integers(1, 3)), "padding": st.tuples(st.integers(0, 2), st.integers(0, 2)),
    "dilation": st.tuples(st.integers(1, 2), st.integers(1, 2)), "bias": st.booleans(),
    "scheme": st.sampled_from(["channel", "spatial", "tucker2"]), "energy": st.floats(0.05, 1.0),
    "batch": st.integers(1, 3), "h": st.integers(0, 9), "w": st.integers(0, 9)})


@settings(max_examples=60, deadline=None)
@given(case=_conv_cases, seed=st.integers(0, 2**16))
def test_factorized_conv_keeps_output_shape_for_any_input(case, seed):
    torch.manual_seed(seed)
    conv = nn.Conv2d(case["c"], case["o"], (case["kh"], case["kw"]), stride=case["stride"], padding=case["padding"],
                     dilation=case["dilation"], bias=case["bias"])
    h = (case["kh"] - 1) * case["dilation"][0] + 1 + case["h"]  # any size the kernel fits in
    w = (case["kw"] - 1) * case["dilation"][1] + 1 + case["w"]
    x = torch.randn(case["batch"], case["c"], h, w)
    expected = conv(x).shape
    model, report = factorize_(_Wrap(conv), LowRankConfig(energy=case["energy"], conv=case["scheme"], min_reduction=None, min_rank=1))
    assert model(x).shape == expected
    if report.layers[0].skipped is None:
        assert isinstance(model.layer, nn.Sequential)


@settings(max_examples=30, deadline=None)
@given(in_f=st.integers(1, 16), out_f=st.integers(1, 16), lead=st.lists(st.integers(1, 4), max_size=3),
       energy=st.floats(0.05, 1.0))
def test_factorized_linear_keeps_output_shape_for_any_leading_dims(in_f, out_f, lead, energy):
    layer = nn.Linear(in_f, out_f)
    x = torch.randn(*lead, in_f)
    model, _ = factorize_(_Wrap(layer), LowRankConfig(energy=energy, min_reduction=None, min_rank=1))
    assert model(x).shape == (*lead, out_f)


@pytest.mark.parametrize("scheme", ["channel", "spatial", "tucker2"])
def test_full_rank_rebuild_reproduces_the_conv(scheme):
    torch.manual_seed(0)
    conv = nn.Conv2d(5, 7, (3, 2), stride=(2, 1), padding=(1, 1), dilation=(1, 2)).double()
    x = torch.randn(2, 5, 11, 9, dtype=torch.float64)
    expected = conv(x)
    model, report = factorize_(_Wrap(conv), LowRankConfig(energy=1.0, conv=scheme, min_reduction=None, min_rank=1))
    assert report.layers[0].scheme == scheme
    assert torch.allclose(model(x), expected, atol=1e-10)


def test_channel_error_equals_discarded_energy_of_the_reshaped_kernel():
    torch.manual_seed(1)
    conv = nn.Conv2d(4, 6, 3, padding=1, bias=False).double()
    w = conv.weight.detach().clone()
    model, _ = factorize_(_Wrap(conv), LowRankConfig(method="ranks", ranks={"layer": 3}, conv="channel", min_reduction=None, min_rank=1))
    first, second = model.layer
    rebuilt = (second.weight.detach().reshape(6, 3) @ first.weight.detach().reshape(3, -1)).reshape(w.shape)
    s = torch.linalg.svdvals(w.reshape(6, -1))
    assert float(((w - rebuilt) ** 2).sum()) == pytest.approx(float((s[3:] ** 2).sum()), rel=1e-8)


def _cnn() -> DigitsCNN:
    torch.manual_seed(0)
    return DigitsCNN().eval()


def test_energy_rule_picks_the_smallest_rank_reaching_the_threshold():
    _, report = factorize_(_cnn(), LowRankConfig(energy=0.8, conv="channel", min_reduction=None, min_rank=1))
    model = _cnn()
    for row in report.layers:
        w = dict(model.named_modules())[row.name].weight.detach().double()
        s2 = torch.linalg.svdvals(w.reshape(w.shape[0], -1)) ** 2
        cum = torch.cumsum(s2, 0) / s2.sum()
        assert cum[row.rank - 1] >= 0.8 - 1e-9 and (row.rank == 1 or cum[row.rank - 2] < 0.8)
        assert row.energy_kept == pytest.approx(float(cum[row.rank - 1]))


def test_parameter_budget_is_respected_and_reported():
    model, report = factorize_(_cnn(), LowRankConfig(method="params", param_budget=0.3, exclude=("fc", "conv1")))
    rows = {r.name: r for r in report.layers}
    assert set(rows) == {"conv2", "conv3"}
    dense = 18432 + 73728
    assert sum(r.params_after for r in rows.values()) <= 0.3 * dense
    assert report.parameters_after == sum(p.numel() for p in model.parameters())
    assert report.parameters_before - report.parameters_after == sum(r.params_before - r.params_after for r in rows.values())
    d = report.to_dict()
    assert d["parameter_reduction"] == pytest.approx(report.parameter_reduction)
    assert d["bytes_fp32_before"] == 4 * report.parameters_before


def test_layers_that_would_not_shrink_are_skipped_with_the_reason():
    model, report = factorize_(_cnn(), LowRankConfig(energy=0.999), example_inputs=torch.randn(1, 1, 8, 8))
    skipped = [r for r in report.layers if r.skipped]
    assert skipped and all("reduction" in r.skipped for r in skipped)
    for r in skipped:
        assert isinstance(dict(model.named_modules())[r.name], (nn.Conv2d, nn.Linear))
        assert r.params_after == r.params_before


def test_macs_are_counted_with_example_inputs():
    _, report = factorize_(_cnn(), LowRankConfig(energy=0.7, conv="channel"), example_inputs=torch.randn(1, 1, 8, 8))
    conv3 = next(r for r in report.layers if r.name == "conv3")
    assert conv3.macs_before == 128 * 64 * 9 * 4 * 4  # 4×4 output after the pool
    assert conv3.macs_after == 4 * 4 * conv3.rank * (64 * 9 + 128)


def test_factorized_model_exports_to_onnx_with_parity(tmp_path):
    from trtopt.export import export_onnx
    from trtopt.models.spec import InputSpec, LoadedModel

    model, report = factorize_(_cnn(), LowRankConfig(energy=0.7))
    assert report.parameters_after < report.parameters_before
    loaded = LoadedModel(model, "factorized", (InputSpec("input", (1, 8, 8), "float32", -1.0, 2.0),))
    artifact = export_onnx(loaded, tmp_path / "f.onnx")
    assert artifact.parity and all(r["passed"] for r in artifact.parity.values())


def test_rank_larger_than_the_layer_allows_is_refused():
    with pytest.raises(TrtoptError, match=r"rank 11 for layer 'fc' is larger than it allows \(max 10"):
        factorize_(_cnn(), LowRankConfig(method="ranks", ranks={"fc": 11}))
    with pytest.raises(TrtoptError, match=r"max 9"):  # conv1: 32 outputs × (1·3·3) → at most 9
        factorize_(_cnn(), LowRankConfig(method="ranks", ranks={"conv1": 10}))


def test_unsupported_layer_type_is_named():
    with pytest.raises(TrtoptError, match="'bn2' is a BatchNorm2d, which low-rank factorization does not support"):
        factorize_(_cnn(), LowRankConfig(layers=("bn2",)))
    with pytest.raises(TrtoptError, match="'gap' is a AdaptiveAvgPool2d"):
        factorize_(_cnn(), LowRankConfig(method="ranks", ranks={"gap": 2}))
    with pytest.raises(TrtoptError, match="no module named 'conv9'"):
        factorize_(_cnn(), LowRankConfig(exclude=("conv9",)))


def test_grouped_conv_is_skipped_not_broken():
    conv = nn.Conv2d(4, 8, 3, groups=2)
    model, report = factorize_(_Wrap(conv), LowRankConfig(energy=0.5))
    assert model.layer is conv and "grouped" in report.layers[0].skipped


@pytest.mark.parametrize("kwargs,needle", [
    ({"method": "svd"}, "method"), ({"energy": 0.0}, "energy"), ({"energy": 1.5}, "energy"),
    ({"method": "params"}, "param_budget"), ({"method": "params", "param_budget": 1.0}, "param_budget"),
    ({"method": "ranks"}, "ranks={} is empty"), ({"conv": "cp"}, "conv"), ({"ranks": {"fc": 0}}, "positive"),
    ({"min_reduction": 1.0}, "min_reduction"), ({"rank_multiple": 0}, "rank_multiple")])
def test_bad_configs_name_the_field(kwargs, needle):
    with pytest.raises(TrtoptError, match=needle):
        LowRankConfig(**kwargs)


def test_infeasible_budget_is_refused():
    with pytest.raises(TrtoptError, match="budget"):
        factorize_(_cnn(), LowRankConfig(method="params", param_budget=0.001, min_reduction=None, min_rank=1))


def test_accuracy_degrades_gracefully_with_energy():
    """More energy kept → weights closer to the original → outputs closer (a monotone knob for users)."""
    x = torch.randn(32, 1, 8, 8)
    ref = _cnn()(x)
    errors = []
    for energy in (0.5, 0.8, 0.95):
        model, _ = factorize_(_cnn(), LowRankConfig(energy=energy, min_reduction=None, min_rank=1))
        errors.append(float((model(x) - ref).abs().mean()))
    assert errors[0] > errors[1] > errors[2]
    assert np.isfinite(errors).all()


def test_speedup_search_lowers_the_kept_energy_step_by_step():
    from trtopt.models.spec import InputSpec, LoadedModel
    from trtopt.speedup_search import SpeedupSearchConfig, search_speedup

    loaded = LoadedModel(_cnn(), "digits", (InputSpec("input", (1, 8, 8), "float32", -1.0, 2.0),))
    # a window this wide takes the first step, whatever the timing noise: the plumbing is what is tested
    search = search_speedup(loaded, LowRankConfig(min_reduction=None, min_rank=1), SpeedupSearchConfig(
        target_speedup=1.01, tolerance=0.99, iterations=3, warmup_iterations=1))
    assert search.reached and search.knob == "energy" and [s.strength for s in search.steps] == [0.1]
    step = search.chosen_step
    assert step.compression["energy"] == 0.9 == search.result.config.energy  # strength = 1 − kept energy
    kept = sum(p.numel() for p in search.module.parameters())
    assert step.compression["parameters"] == kept < sum(p.numel() for p in _cnn().parameters())
    assert isinstance(loaded.module.conv3, nn.Conv2d)  # the original is untouched
    with pytest.raises(TrtoptError, match="chooses the kept energy itself"):
        search_speedup(loaded, LowRankConfig(method="params", param_budget=0.5))


def test_speedup_search_missing_the_target_keeps_the_closest_energy():
    from trtopt.models.spec import InputSpec, LoadedModel
    from trtopt.speedup_search import SpeedupSearchConfig, search_speedup

    loaded = LoadedModel(_cnn(), "digits", (InputSpec("input", (1, 8, 8), "float32", -1.0, 2.0),))
    search = search_speedup(loaded, LowRankConfig(min_reduction=None, min_rank=1), SpeedupSearchConfig(
        target_speedup=1000.0, iterations=3, warmup_iterations=1, strength_step=0.4, max_strength=0.8))
    assert not search.reached and [s.compression["energy"] for s in search.steps] == [0.6, 0.2]
    assert search.chosen_step is search.fastest_step
    assert search.result.config.energy == search.chosen_step.compression["energy"]


def test_on_step_reports_each_layer_as_it_is_factorized():
    steps: list[str] = []
    _, report = factorize_(nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 64)),
                          LowRankConfig(method="energy", energy=0.5), on_step=steps.append)
    assert steps == ["factorizing 0", "factorizing 2"]
    assert [row.name for row in report.layers] == ["0", "2"]


def test_splits_thinner_than_min_rank_are_raised_or_skipped_with_the_reason():
    """Splits through < 16 channels ran slower than the dense layer in ONNX Runtime (lowrank_layers.json):
    a smaller rank is raised to ``min_rank``, and the layer is skipped, saying so, when that no longer pays."""
    torch.manual_seed(0)
    thin = nn.Conv2d(16, 96, 1)  # the shape of EfficientNet-Lite0's blocks.1 expand conv
    model, report = factorize_(_Wrap(thin), LowRankConfig(energy=0.5))
    assert model.layer is thin
    assert "rank 16 needs 1888 parameters vs 1632 dense" in report.layers[0].skipped
    assert "below min_rank 16 are raised to it" in report.layers[0].skipped
    assert factorize_(_Wrap(nn.Conv2d(16, 96, 1)), LowRankConfig(energy=0.5, min_rank=1))[1].layers[0].skipped is None

    low = nn.Linear(64, 64)
    with torch.no_grad():
        low.weight.copy_(torch.randn(64, 4) @ torch.randn(4, 64))  # rank 4: energy 0.9 needs at most rank 4
    raised = factorize_(_Wrap(copy.deepcopy(low)), LowRankConfig(energy=0.9))[1].layers[0]
    assert raised.rank == 16 and raised.energy_kept == pytest.approx(1.0) and raised.params_after == 16 * 128 + 64
    assert factorize_(_Wrap(copy.deepcopy(low)), LowRankConfig(energy=0.9, min_rank=1))[1].layers[0].rank <= 4
    budget = factorize_(_Wrap(copy.deepcopy(low)), LowRankConfig(method="params", param_budget=0.6))[1].layers[0]
    assert 16 <= budget.rank and budget.params_after <= 0.6 * 4160
    with pytest.raises(TrtoptError, match="lower min_rank"):  # rank 16 alone is over a 0.5 budget
        factorize_(_Wrap(copy.deepcopy(low)), LowRankConfig(method="params", param_budget=0.5))
    with pytest.raises(TrtoptError, match="min_rank"):
        LowRankConfig(min_rank=0)
