"""Sparsity masks on a PyTorch model: NVIDIA's 2:4 mask, the zero masks a sparse model carries, and
re-applying them (so a pruned model's zeros stay fixed while it trains).

2:4: in every group of 4 consecutive weights along the input dimension keep the 2 largest magnitudes
(the pattern TensorRT's ``SPARSE_WEIGHTS`` accelerates on Ampere and later); for a conv, groups run along
the input channels at each kernel position, as NVIDIA's ASP does.
"""

from __future__ import annotations

import torch
from torch import nn

from trtopt.compress.layers import weight_layers
from trtopt.errors import TrtoptError


def mask_2to4(weight: torch.Tensor) -> torch.Tensor:
    """Boolean 2:4 mask of a Linear ``(out, in)`` or Conv ``(out, in/groups, *kernel)`` weight.

    In every group of 4 consecutive input-dimension weights (dim 1; for a conv, at each kernel position)
    the 2 of largest magnitude are kept (ties: the earlier one). dim 1 must be a multiple of 4.
    """
    if weight.dim() < 2 or weight.shape[1] % 4:
        raise TrtoptError(f"a weight of shape {tuple(weight.shape)} has no 2:4 pattern (input dimension not a multiple of 4)",
                          "skip the layer (it stays dense)")
    w = weight.detach().movedim(1, -1)  # (out, *kernel, in)
    groups = w.abs().reshape(-1, 4)
    keep = torch.zeros_like(groups, dtype=torch.bool)
    keep.scatter_(1, torch.topk(groups, 2, dim=1, sorted=False).indices, True)
    return keep.reshape(w.shape).movedim(-1, 1).contiguous()

def holds_2to4(weight: torch.Tensor) -> bool:
    """True when a Linear/Conv weight has zeros in NVIDIA's 2:4 pattern: at most 2 nonzeros in every group of 4
    along the input dimension (dim 1; for a conv, at each kernel position), dim 1 a multiple of 4."""
    if weight.dim() < 2 or weight.shape[1] % 4 or not bool((weight == 0).any()):
        return False
    return bool(weight.detach().movedim(1, -1).reshape(-1, 4).ne(0).sum(1).le(2).all())

def sparsity_masks(module: nn.Module) -> dict[str, torch.Tensor]:
    """Boolean masks (weight != 0) of every Conv/Linear weight that has zeros, by layer name.

    For fine-tuning or distilling a sparse (unstructured or 2:4) model: take the masks after pruning and
    call :func:`apply_masks_` after every optimizer step, so the zeros (and a 2:4 pattern) survive training.
    """
    return {n: (m.weight.detach() != 0) for n, m in weight_layers(module).items() if bool((m.weight == 0).any())}

def apply_masks_(module: nn.Module, masks: dict[str, torch.Tensor]) -> None:
    """Zero the masked-out weights of ``module`` in place (masks from :func:`sparsity_masks`)."""
    layers = weight_layers(module)
    with torch.no_grad():
        for name, mask in masks.items():
            layers[name].weight.mul_(mask.to(layers[name].weight.device, layers[name].weight.dtype))
