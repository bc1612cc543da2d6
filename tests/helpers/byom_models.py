"""Bring-your-own-model factories for tests: models the way users write them, without ``trtopt_inputs``.

Tiny and seeded by the loader (random init); each stands for a whole kind of model (see issue 14).
"""

from __future__ import annotations

import torch
from torch import nn


class BertEncoder(nn.Module):
    """A 2-layer BERT from ``transformers.BertConfig`` (hidden 32): inputs ``input_ids``, ``attention_mask``
    (int64, batch × sequence); returns the last hidden state (batch × sequence × 32)."""

    def __init__(self) -> None:
        super().__init__()
        from transformers import BertConfig, BertModel

        config = BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                            intermediate_size=64, max_position_embeddings=64)
        self.bert = BertModel(config, add_pooling_layer=False)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state


def bert_tiny() -> nn.Module:
    return BertEncoder().eval()


class PerImageLoop(nn.Module):
    """DETR-style: a per-image Python loop over the batch, then ``torch.cat`` (bakes the batch into a trace)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.conv(img.unsqueeze(0)).mean(dim=(2, 3)) for img in x.unbind(0)])


def per_image_loop() -> nn.Module:
    return PerImageLoop()


class UnusedArgument(nn.Module):
    """``forward(x, scale)`` that never reads ``scale``: the exporters drop it from the ONNX graph."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        return self.fc(x)


def unused_argument() -> nn.Module:
    return UnusedArgument()


class DictOutput(nn.Module):
    """An embedding model returning ``{"embedding": normalized features, "label": argmax}``."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.fc = nn.Linear(8, 5)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        features = self.fc(torch.relu(self.conv(x)).mean(dim=(2, 3)))
        return {"embedding": features / features.norm(dim=1, keepdim=True), "label": features.argmax(dim=1)}


def dict_output() -> nn.Module:
    return DictOutput()


def ssdlite() -> nn.Module:
    """torchvision's SSDlite320 detector as a user's factory would build it (no downloads)."""
    import torchvision

    return torchvision.models.detection.ssdlite320_mobilenet_v3_large(weights=None, weights_backbone=None)
