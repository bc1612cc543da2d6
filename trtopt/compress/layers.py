"""Which layers a torch-side stage may act on, chosen by capability rather than by class name.

A layer qualifies when it *is* one of the stage's base types (``isinstance``: subclasses such as
EfficientNet's ``Conv2dStaticSamePadding``, timm's padded convs or a user's own subclass count) **and** its
``weight`` is the tensor its forward computes with: a parameter registered on the layer itself, not one
rebuilt before every forward from other tensors (``torch.nn.utils.parametrize``, the old
``weight_norm`` hook with ``weight_g``/``weight_v``, ``torch.nn.utils.prune`` with ``weight_orig``) -
editing such a weight would be undone or ignored.

Stages that only change weight *values* (pruning to zeros, weight sharing) may act on any qualifying
layer, whatever its forward does around the weight. A stage that *replaces* the layer by plain layers
(low-rank factorization) also needs to know the forward; :func:`forward_form` tells:

- ``"plain"``: the forward is the base class's own (``nn.Conv2d.forward``, ``nn.Linear.forward``);
- ``"padded"``: the forward pads its input with a child padding module and then runs the base class's
  convolution - checked numerically on a probe input, not trusted from names; the replacement keeps
  that padding module in front;
- ``"custom"``: anything else (weight standardization, fake quantization, …): the layer is left alone
  and the reason says so.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from trtopt.errors import TrtoptError

#: Base types, by name, each stage can act on (resolved to ``torch.nn`` classes when used).
PRUNABLE = ("Conv1d", "Conv2d", "Conv3d", "Linear")
CLUSTERABLE = ("Linear", "Conv1d", "Conv2d", "Conv3d", "ConvTranspose1d", "ConvTranspose2d", "ConvTranspose3d",
               "Embedding")
FACTORIZABLE = ("Linear", "Conv2d")
#: The layers ModelOpt fake-quantizes (weights and inputs) under ``INT8_DEFAULT_CFG`` (`trtopt.compress.qat`).
QUANTIZABLE = ("Linear", "Conv1d", "Conv2d", "Conv3d", "ConvTranspose1d", "ConvTranspose2d", "ConvTranspose3d")


def _classes(kinds: Iterable[str]) -> tuple[type, ...]:
    from torch import nn

    return tuple(getattr(nn, k) for k in kinds)


def base_type(module: Any, kinds: Sequence[str]) -> str | None:
    """Name of the first of ``kinds`` (``torch.nn`` class names) that ``module`` is an instance of, else None.

    The most derived match wins when kinds are related (a ``ConvTranspose2d`` is not a ``Conv2d`` in torch,
    so the order of ``kinds`` only matters for user classes inheriting from two of them).
    """
    for kind, cls in zip(kinds, _classes(kinds)):
        if isinstance(module, cls):
            return kind
    return None


def weight_problem(module: Any) -> str | None:
    """Why ``module.weight`` is not the tensor the layer's forward computes with, or None when it is.

    Checks that the weight is a parameter registered on the module itself and not produced by a
    parametrization or recomputed by a forward pre-hook from other parameters.
    """
    from torch.nn.utils import parametrize

    if parametrize.is_parametrized(module, "weight"):
        return "its weight is computed by a parametrization (torch.nn.utils.parametrize) from other tensors"
    if "weight" not in module._parameters or module._parameters["weight"] is None:
        others = [n for n in module._parameters if n.startswith("weight")]
        source = f" from {', '.join(others)}" if others else ""
        return (f"its weight is not a parameter of the layer (rebuilt before each forward{source}, "
                "e.g. weight_norm or torch pruning hooks)")
    return None


def weight_layers(model: Any, kinds: Sequence[str] = PRUNABLE) -> dict[str, Any]:
    """Layers of ``model`` (name → module, in ``named_modules`` order) that are instances of one of ``kinds``
    and whose weight is what their forward uses (:func:`weight_problem` is None)."""
    classes = _classes(kinds)
    return {n: m for n, m in model.named_modules() if isinstance(m, classes) and weight_problem(m) is None}


def select_layers(model: Any, kinds: Sequence[str], names: Sequence[str], exclude: Sequence[str],
                  stage: str) -> list[tuple[str, Any, str | None]]:
    """Candidate layers of a stage: ``(name, module, reason skipped or None)`` in ``named_modules`` order.

    Args:
        model: the ``nn.Module``.
        kinds: base types the stage supports (``torch.nn`` class names, e.g. `CLUSTERABLE`).
        names: module names the user asked for (empty: every layer of those types).
        exclude: module names to leave out.
        stage: the stage's name for messages ("weight sharing", "low-rank factorization").

    Returns:
        Every layer of a supported type (or every named one), with a reason when its weight cannot be
        used (see :func:`weight_problem`), so reports can list it as skipped instead of silently.

    Raises:
        TrtoptError: a name in ``names``/``exclude`` that the model lacks, or a named layer of another type.
    """
    modules = dict(model.named_modules())
    for name in list(names) + list(exclude):
        if name not in modules:
            raise TrtoptError(f"the model has no module named {name!r}",
                              f"use names from model.named_modules(), e.g. {', '.join(list(modules)[1:4])}")
    for name in names:
        if base_type(modules[name], kinds) is None:
            raise TrtoptError(f"layer {name!r} is a {type(modules[name]).__name__}, which {stage} does not support",
                              f"name layers of these types (or their subclasses): {', '.join(kinds)}")
    chosen = [(n, modules[n]) for n in names] if names else [
        (n, m) for n, m in modules.items() if base_type(m, kinds) is not None]
    dropped = set(exclude)
    return [(n, m, weight_problem(m)) for n, m in chosen if n not in dropped]


def forward_form(module: Any, kind: str, in_hw: Sequence[int] | None = None) -> tuple[str, Any, str | None]:
    """How a layer's forward uses its weight: ``(form, padding module or None, reason when "custom")``.

    Args:
        module: a layer that is an instance of ``torch.nn.<kind>``.
        kind: its base type name ("Linear", "Conv2d", ...).
        in_hw: for convolutions, the spatial size the probe input uses (default: 2·kernel + 3, odd so an
            asymmetric "same" padding shows).

    Returns:
        ``("plain", None, None)``, ``("padded", pad_module, None)`` (a Conv whose forward is
        ``base_forward(pad_module(x))``, verified on a random probe within float32 rounding) or
        ``("custom", None, reason)``.
    """
    import torch

    base = getattr(torch.nn, kind)
    cls = type(module)
    same_conv = getattr(cls, "_conv_forward", None) is getattr(base, "_conv_forward", None)
    if cls.forward is base.forward and same_conv:
        return "plain", None, None
    why = f"{cls.__name__} overrides {kind}.forward and is not a padding wrapper around it"
    children = list(module.children())
    if not kind.startswith("Conv") or kind.startswith("ConvTranspose") or len(children) != 1 or not same_conv:
        return "custom", None, why
    pad = children[0]
    if any(True for _ in pad.parameters()):
        return "custom", None, why
    w = module.weight
    dims = w.dim() - 2
    size = list(in_hw) if in_hw else [2 * k + 3 for k in w.shape[2:]]
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(1, module.in_channels, *size[-dims:], generator=gen).to(w.device, w.dtype)
    try:
        with torch.no_grad():
            got = module(x)
            want = base.forward(module, pad(x))
    except (RuntimeError, TypeError, ValueError) as e:
        return "custom", None, f"{why} (probe failed: {type(e).__name__})"
    if got.shape == want.shape and torch.allclose(got, want, rtol=1e-4, atol=1e-5):
        return "padded", pad, None
    return "custom", None, why

