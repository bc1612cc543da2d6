"""Tiny seeded models with the structures structured pruning must follow (importable as ``tests.helpers.tiny_prune_models:NAME``).

``tiny_resnet``: residual adds (identity and projection), a channel concatenation and a depthwise conv.
``tiny_bert``: a 2-layer BERT (4 heads, FFN 64) inside trtopt's sentence encoder (token ids + mask in).
``hardcoded_reshape``: flattens with a hard-coded feature count, which no channel pruning can follow.
``grouped_shuffle`` / ``grouped_no_shuffle``: stem 3→48, grouped conv 48→48 (groups=6), a ShuffleNet channel
shuffle (or none), a second grouped conv and a head (issue 19's silent-rewiring case).
"""

from __future__ import annotations

import torch
from torch import nn

from trtopt.models.spec import InputSpec


def _cbr(cin: int, cout: int, stride: int = 1, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, groups=groups, bias=False), nn.BatchNorm2d(cout), nn.ReLU())


class TinyResNet(nn.Module):
    """(N, 3, 16, 16) → (N, 10): stem, identity block, depthwise-separable block, projection block, concat."""

    trtopt_inputs = (InputSpec("input", (3, 16, 16), "float32", -1.0, 1.0),)

    def __init__(self) -> None:
        super().__init__()
        self.stem = _cbr(3, 32)
        self.block1 = nn.Sequential(_cbr(32, 32), nn.Conv2d(32, 32, 3, 1, 1, bias=False), nn.BatchNorm2d(32))
        self.dw = _cbr(32, 32, groups=32)
        self.pw = nn.Sequential(nn.Conv2d(32, 32, 1, bias=False), nn.BatchNorm2d(32))
        self.block2 = nn.Sequential(_cbr(32, 64, stride=2), nn.Conv2d(64, 64, 3, 1, 1, bias=False), nn.BatchNorm2d(64))
        self.down = nn.Sequential(nn.Conv2d(32, 64, 1, 2, bias=False), nn.BatchNorm2d(64))
        self.branch_a = _cbr(64, 32)
        self.branch_b = _cbr(64, 32)
        self.fc = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = torch.relu(x + self.block1(x))
        x = torch.relu(x + self.pw(self.dw(x)))
        x = torch.relu(self.down(x) + self.block2(x))
        x = torch.cat([self.branch_a(x), self.branch_b(x)], dim=1)
        return self.fc(x.mean(dim=(2, 3)))


class HardcodedReshape(nn.Module):
    """(N, 3, 8, 8) → (N, 10), flattening with ``reshape(-1, 16 * 64)``: pruning conv3 breaks the reshape."""

    trtopt_inputs = (InputSpec("input", (3, 8, 8), "float32", -1.0, 1.0),)

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, padding=1)
        self.conv2 = nn.Conv2d(16, 16, 3, padding=1)
        self.conv3 = nn.Conv2d(16, 16, 3, padding=1)
        self.fc = nn.Linear(16 * 64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.conv3(torch.relu(self.conv2(torch.relu(self.conv1(x))))))
        return self.fc(x.reshape(-1, 16 * 64))


class GroupedShuffle(nn.Module):
    """(N, 3, 16, 16) → (N, 10): stem, grouped conv (groups=6), optional channel shuffle, grouped conv, head."""

    trtopt_inputs = (InputSpec("input", (3, 16, 16), "float32", -1.0, 1.0),)

    def __init__(self, shuffle: bool = True, groups: int = 6) -> None:
        super().__init__()
        self.shuffle, self.groups = shuffle, groups
        self.stem = _cbr(3, 48)
        self.gconv1 = _cbr(48, 48, groups=groups)
        self.gconv2 = _cbr(48, 48, groups=groups)
        self.head = nn.Linear(48, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.gconv1(self.stem(x))
        if self.shuffle:
            n, c, h, w = x.shape
            x = x.view(n, self.groups, c // self.groups, h, w).transpose(1, 2).reshape(n, c, h, w)
        return self.head(self.gconv2(x).mean(dim=(2, 3)))


def grouped_shuffle() -> nn.Module:
    torch.manual_seed(0)
    return GroupedShuffle(shuffle=True).eval()


def grouped_no_shuffle() -> nn.Module:
    torch.manual_seed(0)
    return GroupedShuffle(shuffle=False).eval()


def tiny_resnet() -> nn.Module:
    torch.manual_seed(0)
    return TinyResNet().eval()


def hardcoded_reshape() -> nn.Module:
    torch.manual_seed(0)
    return HardcodedReshape().eval()


def tiny_bert() -> nn.Module:
    """A 2-layer, 4-head BERT (hidden 32, FFN 64, vocab 100) in `trtopt.models.nets.SentenceEncoder`, seeded."""
    from transformers import BertConfig, BertModel

    from trtopt.models.nets import SentenceEncoder

    torch.manual_seed(0)
    config = BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                        max_position_embeddings=32, attn_implementation="eager")
    model = SentenceEncoder(BertModel(config, add_pooling_layer=False)).eval()
    model.trtopt_inputs = (InputSpec("input_ids", (16,), "int64", 0, 100), InputSpec("attention_mask", (16,), "int64", 1, 2))
    return model
