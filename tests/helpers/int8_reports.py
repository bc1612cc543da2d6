"""Small seeded models made to match public INT8 bug reports (issue 13), as model specs
``tests.helpers.int8_reports:NAME``. Each docstring says which report it reproduces and on what data.
"""

from __future__ import annotations

import torch
from torch import nn

from trtopt.models.spec import InputSpec


class OffsetMLP(nn.Module):
    """Linear(8, 32) → ReLU → Linear(32, 4) fed sensor-style features uniform in [1, 2] (never near zero)."""

    trtopt_inputs = (InputSpec("input", (8,), "float32", 1.0, 2.0),)

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class PooledCNN(nn.Module):
    """Conv → ReLU → GlobalAveragePool → Linear: the pooled features never come near zero."""

    trtopt_inputs = (InputSpec("input", (3, 16, 16), "float32", 0.0, 1.0),)

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 16, 3, padding=1)
        with torch.no_grad():
            self.conv.bias.copy_(self.conv.bias.abs() + 0.2)  # every channel's mean activation is clearly positive
        self.head = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.conv(x)).mean(dim=(2, 3)))


class _PreLNBlock(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.norm2 = nn.LayerNorm(dim)
        self.ffn = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        return x + self.ffn(self.norm2(x))


class OutlierEncoder(nn.Module):
    """Two pre-LN encoder blocks, mean-pool, Linear, on 16 tokens × 32 channels; residual channel 0 is ×40.

    The outlier channel is what LLM-style activations have: LayerNorm input ranges are set by it, so a
    per-tensor INT8 range on the residual stream (or on the norm) wipes out every other channel.
    """

    trtopt_inputs = (InputSpec("input", (16, 32), "float32", -1.0, 1.0),)

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        scale = torch.ones(32)
        scale[0] = 40.0
        self.register_buffer("scale", scale)
        self.blocks = nn.Sequential(_PreLNBlock(32, 4), _PreLNBlock(32, 4))
        self.head = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(x * self.scale).mean(dim=1))


class GroupedDeconv(nn.Module):
    """Conv → ReLU → ConvTranspose(8 → 8, groups=2): per-channel weights crashed ONNX Runtime's quantizer."""

    trtopt_inputs = (InputSpec("input", (3, 8, 8), "float32", -1.0, 1.0),)

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.up = nn.ConvTranspose2d(8, 8, 2, stride=2, groups=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(torch.relu(self.conv(x)))


class SmallEmbedding(nn.Module):
    """Embedding(50, 16) over 12 int64 token ids → mean → Linear(16, 4): ids >= 50 are out of the table."""

    trtopt_inputs = (InputSpec("ids", (12,), "int64", 0, 50),)

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.embed = nn.Embedding(50, 16)
        self.head = nn.Linear(16, 4)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(self.embed(ids).mean(dim=1))


class ShiftedEmbedding(SmallEmbedding):
    """``embed(ids + 1)``: the Add hides the table from the input, so random ids can overflow it."""

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(self.embed(ids + 1).mean(dim=1))


class EmbeddingEncoder(nn.Module):
    """Embedding(4000, 32) over 16 token ids → a pre-LN encoder block → mean → Linear(32, 8): a sentence
    encoder whose word table (512 KB float) outweighs the rest (~40 KB), as all-MiniLM-L6-v2's does."""

    trtopt_inputs = (InputSpec("ids", (16,), "int64", 0, 4000),)

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.embed = nn.Embedding(4000, 32)
        self.block = _PreLNBlock(32, 4)
        self.head = nn.Linear(32, 8)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(self.block(self.embed(ids)).mean(dim=1))


def embedding_encoder() -> nn.Module:
    return EmbeddingEncoder()


def offset_mlp() -> nn.Module:
    return OffsetMLP()


def pooled_cnn() -> nn.Module:
    return PooledCNN()


def outlier_encoder() -> nn.Module:
    return OutlierEncoder()


def grouped_deconv() -> nn.Module:
    return GroupedDeconv()


def small_embedding() -> nn.Module:
    return SmallEmbedding()


def shifted_embedding() -> nn.Module:
    return ShiftedEmbedding()
