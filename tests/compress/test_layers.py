"""Layer selection by capability: subclassed and wrapped layers are found by every torch-side stage
(weight sharing, low-rank, pruning), layers whose weight is not what forward uses are skipped with the
reason, and low-rank replaces a subclass only where its forward is understood (a padding wrapper)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from trtopt.compress.config import LowRankConfig, PruneConfig, ShareConfig
from trtopt.compress.layers import CLUSTERABLE, forward_form, select_layers, weight_layers, weight_problem
from trtopt.compress.lowrank import factorize_
from trtopt.compress.prune import prune
from trtopt.compress.share import cluster_weights_


class SamePadConv(nn.Conv2d):
    """TensorFlow-style 'same' padding computed at construction, as EfficientNet-Lite's Conv2dStaticSamePadding."""

    def __init__(self, cin: int, cout: int, k: int, stride: int = 1, image_size: int = 16, **kw):
        super().__init__(cin, cout, k, stride, **kw)
        out = math.ceil(image_size / stride)
        pad = max((out - 1) * stride + k - image_size, 0)
        self.static_padding = nn.ZeroPad2d((pad // 2, pad - pad // 2, pad // 2, pad - pad // 2))

    def forward(self, x):
        return F.conv2d(self.static_padding(x), self.weight, self.bias, self.stride, self.padding, self.dilation,
                        self.groups)


class ScaledConv(nn.Conv2d):
    """A subclass whose forward changes the math (weight standardization-like): not a padding wrapper."""

    def forward(self, x):
        w = (self.weight - self.weight.mean()) / (self.weight.std() + 1e-5)
        return self._conv_forward(x, w, self.bias)


class Holder(nn.Module):
    """A wrapper holding a plain Conv2d (as quantization or LoRA wrappers do)."""

    def __init__(self, conv: nn.Conv2d):
        super().__init__()
        self.conv = conv

    def forward(self, x):
        return self.conv(x) * 1.0


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.stem = SamePadConv(3, 32, 3, stride=2, image_size=16, bias=False)
        self.wrapped = Holder(nn.Conv2d(32, 48, 3, padding=1))
        self.scaled = ScaledConv(48, 48, 3, padding=1)
        self.head = nn.Linear(48, 40)

    def forward(self, x):
        x = torch.relu(self.stem(x))
        x = torch.relu(self.wrapped(x))
        x = torch.relu(self.scaled(x))
        return self.head(x.mean((2, 3)))


def test_subclasses_and_wrapped_layers_are_selected():
    names = [n for n, _, reason in select_layers(Net(), CLUSTERABLE, (), (), "weight sharing") if reason is None]
    assert names == ["stem", "wrapped.conv", "scaled", "head"]
    assert list(weight_layers(Net())) == ["stem", "wrapped.conv", "scaled", "head"]


def test_parametrized_and_hook_rebuilt_weights_are_refused_with_the_reason():
    net = Net()
    torch.nn.utils.parametrizations.weight_norm(net.head)
    assert "parametrization" in weight_problem(net.head)
    from torch.nn.utils import prune as tprune

    tprune.l1_unstructured(net.scaled, "weight", amount=0.5)
    assert "weight_orig" in weight_problem(net.scaled)
    assert "head" not in weight_layers(net) and "scaled" not in weight_layers(net)
    _, report = cluster_weights_(net, ShareConfig(bits=4))
    skipped = {la.name: la.skipped for la in report.layers if la.skipped}
    assert "parametrization" in skipped["head.weight"] and "weight_orig" in skipped["scaled.weight"]


def test_forward_forms():
    net = Net()
    assert forward_form(net.wrapped.conv, "Conv2d")[0] == "plain"
    form, pad, _ = forward_form(net.stem, "Conv2d")
    assert form == "padded" and pad is net.stem.static_padding
    form, _, why = forward_form(net.scaled, "Conv2d")
    assert form == "custom" and "ScaledConv overrides Conv2d.forward" in why


def test_sharing_clusters_the_subclassed_and_wrapped_convs():
    net = Net()
    _, report = cluster_weights_(net, ShareConfig(bits=4))
    done = {la.name: la.module_type for la in report.layers if la.skipped is None}
    assert done == {"stem.weight": "SamePadConv", "wrapped.conv.weight": "Conv2d", "scaled.weight": "ScaledConv",
                    "head.weight": "Linear"}
    for name in ("stem", "scaled"):
        assert len(torch.unique(getattr(net, name).weight)) <= 16


def test_lowrank_keeps_the_padding_of_a_same_padding_subclass_and_skips_a_custom_forward():
    net = Net().eval()
    x = torch.randn(2, 3, 16, 16)
    ref = net(x)
    model, report = factorize_(net, LowRankConfig(energy=1.0, min_reduction=None, min_rank=1, conv="channel"),
                               example_inputs=x[:1])
    rows = {la.name: la for la in report.layers}
    assert rows["stem"].skipped is None and rows["wrapped.conv"].skipped is None
    assert isinstance(model.stem, nn.Sequential) and isinstance(model.stem[0], nn.ZeroPad2d)
    assert "ScaledConv overrides Conv2d.forward" in rows["scaled"].skipped
    assert isinstance(model.scaled, ScaledConv)
    # full energy: the factorized model computes the same function (padding included)
    torch.testing.assert_close(model(x), ref, rtol=1e-4, atol=1e-4)


def test_pruning_reaches_the_subclassed_and_wrapped_convs():
    net = Net().eval()
    result = prune(net, torch.randn(1, 3, 16, 16), PruneConfig(method="unstructured", ratio=0.5))
    rows = {r["name"]: r for r in result.layers}
    for name in ("stem", "wrapped.conv", "scaled"):
        assert rows[name]["sparsity"] == pytest.approx(0.5, abs=0.02)
