"""Proof that a structured prune rewired nothing: the pruned model must compute exactly what the original
computes with the removed channels cut off.

Structured pruning removes output channels of some layers and the matching input channels of the layers
that read them. If the dependency graph maps channels wrongly through some op (a channel shuffle, a
reshape it misreads, an unequal split), the pruned model still runs, but its layers read the wrong
channels: a silently different model. The check (always on; two forward passes) runs

- the original with the removed *input* channels of every pruned layer zeroed (a forward pre-hook; this is
  the "original with the removed channels masked", and it does not depend on how the pruner rewired), and
- the pruned model,

and compares the output of every Conv/Linear layer on its kept output channels, in execution order, and
the model outputs. The residual of a layer is max |pruned − masked| / max |masked| (relative max error,
float32). Up to float summation order the two are equal; a wrong rewiring shows up as a residual of
~1e-2 or more at the first layer that reads a misplaced channel.

:func:`find_channel_shuffle` spots a channel shuffle (``view(n, g, c/g, …)`` then a transpose of the two
channel axes, as in ShuffleNet) before pruning: Torch-Pruning maps channels through it as if they kept
their order, which rewires them.

Imports torch: import this module lazily.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from trtopt.compress.sparsity import weight_layers
from trtopt.errors import TrtoptError

# Relative max error above which a layer counts as diverging. float32 sums in another order differ by
# ~1e-6 relative per layer (measured: ≤ 1e-5 over ResNet-50, see benchmarks/results/prune_equivalence.json);
# a misplaced channel gives ~1e-2 and more.
EQUIVALENCE_TOLERANCE = 1e-4


@dataclass(frozen=True)
class EquivalenceCheck:
    """Pruned model vs the original with the removed channels masked, on the example inputs.

    Attributes:
        output_residual: relative max error of the model outputs (max |Δ| / max |masked|).
        max_layer_residual: the largest relative max error over the compared Conv/Linear layers.
        layers_compared: Conv/Linear layers whose outputs were compared (on their kept channels).
        tolerance: the relative max error allowed.
        layer_residuals: relative max error per compared layer, by name, in execution order.
        seconds: wall time the check took (its two forward passes), what being always on costs.
    """

    output_residual: float
    max_layer_residual: float
    layers_compared: int
    tolerance: float
    layer_residuals: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary (per-layer residuals included)."""
        return {"output_residual": self.output_residual, "max_layer_residual": self.max_layer_residual,
                "layers_compared": self.layers_compared, "tolerance": self.tolerance, "seconds": self.seconds,
                "layer_residuals": self.layer_residuals}


def _channel_dim(layer: nn.Module) -> int:
    """Axis of the channels in a layer's input/output: 1 for a Conv (N, C, …), the last for a Linear (…, C)."""
    return -1 if isinstance(layer, nn.Linear) else 1


def _residual(masked: torch.Tensor, pruned: torch.Tensor) -> float:
    scale = float(masked.detach().abs().max()) if masked.numel() else 0.0
    diff = float((pruned.detach().float() - masked.detach().float()).abs().max()) if masked.numel() else 0.0
    return diff / scale if scale > 0 else diff


def _first_outputs(module: nn.Module, args: tuple[Any, ...],
                   pre_hooks: dict[str, Callable[..., Any]] | None = None) -> tuple[dict[str, torch.Tensor], list[str], Any]:
    """Run ``module`` once; return the first output of every Conv/Linear layer, their call order, the output."""
    layers = weight_layers(module)
    outputs: dict[str, torch.Tensor] = {}
    order: list[str] = []
    handles = []
    for name, layer in layers.items():
        def keep(_layer: nn.Module, _inputs: Any, out: Any, name: str = name) -> None:
            if name not in outputs and isinstance(out, torch.Tensor):
                outputs[name] = out.detach()
                order.append(name)
        handles.append(layer.register_forward_hook(keep))
        if pre_hooks and name in pre_hooks:
            handles.append(layer.register_forward_pre_hook(pre_hooks[name]))
    try:
        with torch.no_grad():
            result = module(*args)
    finally:
        for h in handles:
            h.remove()
    return outputs, order, result


def _zero_channels_hook(dim: int, idxs: list[int]) -> Callable[..., Any]:
    index = torch.tensor(sorted(idxs), dtype=torch.long)

    def hook(_layer: nn.Module, inputs: tuple[Any, ...]) -> tuple[Any, ...]:
        x = inputs[0].clone()
        x.index_fill_(dim % x.dim(), index.to(x.device), 0.0)
        return (x, *inputs[1:])
    return hook


def check_equivalence(original: nn.Module, pruned: nn.Module, args: tuple[Any, ...],
                      removed_in: dict[str, list[int]], removed_out: dict[str, list[int]],
                      flatten: Callable[[Any], list[torch.Tensor]],
                      tolerance: float = EQUIVALENCE_TOLERANCE) -> EquivalenceCheck:
    """Compare ``pruned`` with ``original`` whose removed channels are masked; raise at the first divergence.

    Args:
        original: the model before pruning (not modified; hooks are removed afterwards).
        pruned: the pruned model (same module names).
        args: positional example inputs of ``forward``.
        removed_in: per Conv/Linear layer name, the input-channel indices the pruning removed (indices in
            the original layer's input; channel axis 1 for a Conv, the last for a Linear).
        removed_out: per Conv/Linear layer name, the output-channel indices removed.
        flatten: turns a model output into its list of tensors.
        tolerance: largest relative max error (max |Δ| / max |masked|) allowed per layer and output.

    Returns:
        The residuals (see `EquivalenceCheck`).

    Raises:
        TrtoptError: naming the first layer (in execution order) whose kept output channels differ from the
            masked original's by more than ``tolerance``, or the outputs if no layer does.
    """
    started = time.perf_counter()
    layers = weight_layers(original)
    pre = {n: _zero_channels_hook(_channel_dim(layers[n]), idxs) for n, idxs in removed_in.items() if idxs and n in layers}
    masked_out, order, masked_result = _first_outputs(original, args, pre)
    pruned_out, _, pruned_result = _first_outputs(pruned, args)
    residuals: dict[str, float] = {}
    for name in order:
        if name not in pruned_out:
            continue
        ref = masked_out[name]
        dim = _channel_dim(layers[name]) % ref.dim()
        drop = set(removed_out.get(name, ()))
        keep = torch.tensor([i for i in range(ref.shape[dim]) if i not in drop], dtype=torch.long)
        ref = ref.index_select(dim, keep)
        got = pruned_out[name]
        if got.shape != ref.shape:
            raise TrtoptError(f"the pruned layer {name!r} outputs shape {tuple(got.shape)} but the masked original "
                              f"keeps {tuple(ref.shape)}: the pruning rewired its channels",
                              f"add {name!r} to the ignored layers (--ignore {name})")
        residuals[name] = _residual(ref, got)
        if residuals[name] > tolerance:
            raise TrtoptError(f"the pruned model is not the original with the removed channels masked: layer {name!r} "
                              f"differs by {residuals[name]:.2e} (relative max error; allowed {tolerance:.0e}), so the "
                              "pruning rewired the channels it reads (an op between it and the layers before it that "
                              "the dependency graph maps wrongly)", _ignore_fix(name, removed_in))
    outs = [_residual(a, b) for a, b in zip(flatten(masked_result), flatten(pruned_result), strict=False)
            if a.shape == b.shape and a.is_floating_point()]
    output_residual = max(outs, default=0.0)
    if output_residual > tolerance:
        raise TrtoptError(f"the pruned model is not the original with the removed channels masked: its outputs differ "
                          f"by {output_residual:.2e} (relative max error; allowed {tolerance:.0e}) although every "
                          "Conv/Linear layer matches, so an op after them reads removed channels",
                          "add the last pruned layers to the ignored layers (--ignore NAME)")
    return EquivalenceCheck(output_residual, max(residuals.values(), default=0.0), len(residuals), tolerance, residuals,
                            time.perf_counter() - started)


def _ignore_fix(name: str, removed_in: dict[str, list[int]]) -> str:
    if removed_in.get(name):
        return (f"keep the channels that reach {name!r}: add the layers that produce them to the ignored layers "
                "(--ignore NAME for each), or prune with --method unstructured / 2:4 (shapes stay)")
    return f"add {name!r} to the ignored layers (--ignore {name})"


class _ShuffleFinder(TorchFunctionMode):
    """Notes a view/reshape that splits the channel axis (N, C, …) → (N, g, C/g, …) followed by a transpose
    or permute that swaps the two channel axes: a channel shuffle."""

    def __init__(self, where: Callable[[], str]) -> None:
        super().__init__()
        self.where = where
        self.split: set[int] = set()
        self.found: list[str] = []

    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        name = getattr(func, "__name__", "")
        if not args or not isinstance(args[0], torch.Tensor) or not isinstance(out, torch.Tensor):
            return out
        x = args[0]
        if name in ("view", "reshape") and x.dim() >= 3 and out.dim() == x.dim() + 1 and out.shape[0] == x.shape[0] \
                and out.shape[1] > 1 and out.shape[2] > 1 and out.shape[1] * out.shape[2] == x.shape[1] \
                and tuple(out.shape[3:]) == tuple(x.shape[2:]):
            self.split.add(id(out))
        elif id(x) in self.split and name in ("transpose", "swapaxes", "permute"):
            rest = tuple(args[1:]) or tuple((kwargs or {}).values())
            if name == "permute":
                dims = list(rest[0]) if len(rest) == 1 and not isinstance(rest[0], int) else list(rest)
                swapped = [d % x.dim() for d in dims[1:3]] == [2, 1]
            else:
                swapped = sorted(d % x.dim() for d in rest[:2]) == [1, 2]
            if swapped:
                self.found.append(self.where())
        return out


def find_channel_shuffle(model: nn.Module, args: tuple[Any, ...]) -> str | None:
    """Where the first channel shuffle in ``model``'s forward happens ("in 'stage2.0' (InvertedResidual) right
    after 'stage2.0.branch2.7'": the module running it and the last layer run before it), or None.

    A channel shuffle is a view/reshape of an (N, C, …) tensor to (N, g, C/g, …) followed by a transpose
    of axes 1 and 2 (ShuffleNet). Runs one no-grad forward pass.
    """
    names = {m: n for n, m in model.named_modules()}
    running: list[nn.Module] = []
    last = ["the model input"]

    def enter(layer: nn.Module, _i: Any) -> None:
        running.append(layer)

    def done(layer: nn.Module, _i: Any, _o: Any) -> None:
        if running:
            running.pop()
        if not any(True for _ in layer.children()):
            last[0] = names.get(layer, type(layer).__name__)

    def where() -> str:
        inside = next((m for m in reversed(running) if names.get(m)), None)
        return (f"in {names[inside]!r} ({type(inside).__name__}) " if inside is not None else "") + f"right after {last[0]!r}"
    handles = [m.register_forward_pre_hook(enter) for m in model.modules()]
    handles += [m.register_forward_hook(done) for m in model.modules()]
    finder = _ShuffleFinder(where)
    try:
        with torch.no_grad(), finder:
            model(*args)
    finally:
        for h in handles:
            h.remove()
    return finder.found[0] if finder.found else None
