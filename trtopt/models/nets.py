"""Small network architectures that trtopt trains and ships itself (imports torch: import lazily).

`SentenceEncoder` wraps a Hugging Face encoder for ``zoo:minilm_l6``; it lives here, at module level, so a
(pruned) copy can be saved as a trtopt model file and rebuilt (`trtopt.models.module_file.save_module`).

`DigitsCNN` is the classifier behind ``zoo:digits_cnn`` (scikit-learn digits, see `trtopt.datasets`).
Its layers are plain named attributes, not one ``nn.Sequential``, so structured pruning can follow the
conv → BN → conv dependencies by name and distillation frameworks that reject a bare ``Sequential``
student accept it; the channel widths are arguments so a pruned or smaller student of the same shape
can be built directly (``DigitsCNN(widths=(16, 32, 64))``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


class DigitsCNN(nn.Module):
    """(N, 1, 8, 8) normalized digit images → (N, num_classes) logits.

    conv3×3(1→w0)-BN-ReLU, conv3×3(w0→w1)-BN-ReLU, maxpool 2 (8×8 → 4×4), conv3×3(w1→w2)-BN-ReLU,
    global average pool, dropout, linear(w2→num_classes); convs have no bias (BN follows). Default widths
    (32, 64, 128): 94,186 parameters (+ 448 BN running statistics).
    """

    def __init__(self, widths: Sequence[int] = (32, 64, 128), num_classes: int = 10, dropout: float = 0.2,
                 in_channels: int = 1):
        super().__init__()
        w0, w1, w2 = (int(w) for w in widths)
        self.conv1 = nn.Conv2d(in_channels, w0, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(w0)
        self.conv2 = nn.Conv2d(w0, w1, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(w1)
        self.pool = nn.MaxPool2d(2)
        self.conv3 = nn.Conv2d(w1, w2, 3, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(w2)
        self.relu = nn.ReLU()
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(w2, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.relu(self.bn2(self.conv2(x)))
        x = self.pool(x)
        x = self.relu(self.bn3(self.conv3(x)))
        x = torch.flatten(self.gap(x), 1)
        return self.fc(self.dropout(x))


class SentenceEncoder(nn.Module):
    """BERT encoder + attention-masked mean pooling + L2 normalization (sentence-transformers' recipe).

    (N, T) token ids and (N, T) attention mask (int64) → (N, hidden) unit-length embeddings.
    """

    def __init__(self, encoder: nn.Module):
        super().__init__()
        self.encoder = encoder

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        return torch.nn.functional.normalize(pooled, p=2.0, dim=1)
