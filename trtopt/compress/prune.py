"""Pruning: unstructured magnitude, structured (physically smaller), and 2:4 semi-structured sparsity.

Three methods, one function: ``prune(model, example_inputs, PruneConfig(...)) -> PruneResult``. The input
model is never modified; the result holds a pruned copy and a report of what changed.

- ``unstructured``: zero the smallest-magnitude weights of every Conv/Linear layer (``ratio`` of each
  layer, or of all of them together with ``global_pruning``), made permanent (``torch.nn.utils.prune``
  then ``prune.remove``). The shapes stay, so dense kernels run exactly as fast as before.
- ``structured``: remove whole output channels (conv filters, linear features, attention heads, FFN
  width) together with every tensor that depends on them (BatchNorm/LayerNorm, the next layer's input
  channels, both sides of a residual add or concatenation, depthwise convs), using Torch-Pruning's
  dependency graph. The model really gets smaller, so the exported ONNX is smaller and faster.
  Channel counts are rounded to multiples of ``round_to`` (8: tensor-core friendly); the first layer and
  the final classifier keep their output channels by default (the model's interface stays the same).
  In transformers (Hugging Face BERT-style attention: ``query``/``key``/``value`` + ``num_attention_heads``;
  timm ``Attention`` as in ViT: fused ``qkv`` + ``num_heads``), whole attention heads and FFN width are
  removed and the head-count attributes follow; the residual stream (hidden size) is kept.
  ``nn.MultiheadAttention`` is kept whole (its head width is tied to the model width); the layers around
  it are pruned.
- ``2:4``: in every group of 4 consecutive weights along the input dimension keep the 2 largest
  magnitudes (NVIDIA's 2:4 pattern that TensorRT's ``SPARSE_WEIGHTS`` accelerates on Ampere and later);
  for a conv, groups run along the input channels at each kernel position, as NVIDIA's ASP does.
  `trtopt.trt.sparsity.check_2to4` proves the pattern on an exported ONNX file.

The pruning rate follows DESIGN.md: pruned *parameters* / total parameters × 100 (removed parameters
plus newly zeroed ones). The channel ratio is reported beside it, clearly named: removing 50 % of the
channels removes ~75 % of a conv's weights.

`trtopt.speedup_search.search_speedup` prunes step by step until the exported model, timed interleaved against the
unpruned model on ONNX Runtime, reaches a requested speedup (measured, not estimated from MACs).

Imports torch (and torch_pruning for ``structured``): import this module lazily.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from trtopt.compress.config import PruneConfig
from trtopt.compress.layers import weight_layers
from trtopt.compress.sparsity import mask_2to4
from trtopt.errors import TrtoptError, first_line


@dataclass
class PruneResult:
    """The pruned model and what changed.

    Attributes:
        module: the pruned ``nn.Module`` (a copy; eval mode, CPU).
        config: the configuration used.
        parameters_before / parameters_after: parameter counts (elements) of the whole model.
        nonzero_parameters_after: parameters that are not exactly zero after pruning.
        macs_before / macs_after: multiply-accumulates per sample of the Conv and Linear layers (dense
            count: a zeroed weight is still multiplied by a dense kernel).
        macs_after_nonzero: MACs with nonzero weights only (what a sparse kernel could at best skip).
        pruning_rate_percent: pruned parameters / parameters_before × 100, where pruned = removed
            parameters + parameters newly set to zero (DESIGN.md's pruning rate, counted in parameters).
        channel_ratio: fraction of output channels removed, summed over the Conv/Linear layers that
            were allowed to lose channels (structured; 0 for the other methods).
        layers: per Conv/Linear layer: name, type, weight shapes before/after, parameters before/after,
            ``sparsity`` (fraction of the weight that is zero after pruning), ``pruned`` (changed).
        skipped: layers left out, with the reason (2:4: input dimension not a multiple of 4, ignored).
        heads: transformers: attention heads per attention module before and after.
        equivalence: structured: the proof that the pruned model is the original with the removed channels
            masked (`trtopt.compress.prune_check.EquivalenceCheck`: residuals per layer and of the outputs).
        ratio_notes: structured: why layers lost fewer channels than ``config.ratio`` asked (groups,
            round-to, coupling to a protected layer), one entry per such layer.
    """

    module: Any
    config: PruneConfig
    parameters_before: int
    parameters_after: int
    nonzero_parameters_after: int
    macs_before: int
    macs_after: int
    macs_after_nonzero: int
    pruning_rate_percent: float
    channel_ratio: float
    layers: list[dict[str, Any]]
    skipped: list[dict[str, str]] = field(default_factory=list)
    heads: dict[str, dict[str, int]] = field(default_factory=dict)
    equivalence: Any = None
    ratio_notes: list[dict[str, Any]] = field(default_factory=list)

    @property
    def macs_reduction(self) -> float:
        """macs_before / macs_after (×; dense MACs)."""
        return self.macs_before / self.macs_after if self.macs_after else float("inf")

    def to_dict(self) -> dict[str, Any]:
        """The report as JSON-ready data (without the module)."""
        return {"method": self.config.method, "config": dataclasses.asdict(self.config),
                "parameters_before": self.parameters_before, "parameters_after": self.parameters_after,
                "nonzero_parameters_after": self.nonzero_parameters_after,
                "pruning_rate_percent": self.pruning_rate_percent, "channel_ratio": self.channel_ratio,
                "macs_before": self.macs_before, "macs_after": self.macs_after,
                "macs_after_nonzero": self.macs_after_nonzero, "macs_reduction": self.macs_reduction,
                "layers": self.layers, "skipped": self.skipped, "heads": self.heads,
                "equivalence": self.equivalence.to_dict() if self.equivalence is not None else None,
                "ratio_notes": self.ratio_notes}

def _as_args(example_inputs: Any) -> tuple[Any, ...]:
    """Example inputs as the positional arguments of ``forward``."""
    if isinstance(example_inputs, torch.Tensor):
        return (example_inputs,)
    if isinstance(example_inputs, (tuple, list)) and example_inputs and all(isinstance(t, torch.Tensor) for t in example_inputs):
        return tuple(example_inputs)
    raise TrtoptError(f"example inputs must be a tensor or a tuple of tensors, got {type(example_inputs).__name__}",
                      "pass the positional arguments of forward, e.g. (torch.randn(2, 3, 224, 224),)")

def count_macs(module: nn.Module, example_inputs: Any) -> dict[str, int]:
    """Multiply-accumulates per sample of every Conv and Linear layer, by layer name, from one forward pass.

    A Conv's MACs are output elements × (input channels / groups) × kernel size; a Linear's are output
    elements × in_features (so a Linear on a (N, T, C) sequence counts all T positions). Counts are per
    sample: divided by the batch size (axis 0 of the first input). Other ops (attention score matmuls,
    norms, activations) are not counted: they are a small share in CNNs and are reported as such.
    """
    args = _as_args(example_inputs)
    batch = int(args[0].shape[0]) if args[0].dim() else 1
    names = {m: n for n, m in module.named_modules()}
    macs: dict[str, int] = {}

    def hook(layer: nn.Module, _inputs: Any, output: Any) -> None:
        if isinstance(layer, nn.Linear):
            count = output.numel() * layer.in_features
        else:
            count = output.numel() * (layer.in_channels // layer.groups) * int(np.prod(layer.kernel_size))
        name = names[layer]
        macs[name] = macs.get(name, 0) + count // batch

    _forward_with_layer_hook(module, args, hook)
    return macs

def _forward_with_layer_hook(module: nn.Module, args: tuple[Any, ...], hook: Callable[..., Any]) -> None:
    """One no-grad forward pass with ``hook`` on every Conv/Linear layer (removed afterwards)."""
    handles = [m.register_forward_hook(hook) for m in weight_layers(module).values()]
    try:
        with torch.no_grad():
            module(*args)
    finally:
        for h in handles:
            h.remove()


def _zeros(module: nn.Module) -> int:
    return sum(int((p == 0).sum()) for p in module.parameters())

def _execution_order(module: nn.Module, args: tuple[Any, ...]) -> list[str]:
    """Names of the Conv/Linear layers in the order a forward pass calls them (each once)."""
    names = {m: n for n, m in module.named_modules()}
    order: list[str] = []
    _forward_with_layer_hook(module, args,
                             lambda layer, _i, _o: order.append(names[layer]) if names[layer] not in order else None)
    return order

@contextlib.contextmanager
def _naming_failures(module: nn.Module, what: str, fix: str) -> Iterator[None]:
    """Turn an exception inside ``module``'s forward into a TrtoptError naming the layer it happened in.

    Tracks the module being run (innermost) and the last leaf module that finished, so an error raised
    in a submodule names it, and one raised in a parent's own code (a reshape) names the layer before.
    """
    names = {m: n for n, m in module.named_modules()}
    stack: list[str] = []
    last_done: list[str] = []

    def pre(layer: nn.Module, _inputs: Any) -> None:
        stack.append(names.get(layer, type(layer).__name__))

    def post(layer: nn.Module, _inputs: Any, _output: Any) -> None:
        if stack:
            stack.pop()
        if not any(True for _ in layer.children()):
            last_done[:] = [names.get(layer, type(layer).__name__)]

    handles = [m.register_forward_pre_hook(pre) for m in module.modules()]
    handles += [m.register_forward_hook(post) for m in module.modules()]
    try:
        yield
    except TrtoptError:
        raise
    except Exception as e:
        inner = [s for s in stack if s]
        if inner:
            where = f"in layer {inner[-1]!r} ({type(dict(module.named_modules())[inner[-1]]).__name__})"
        elif last_done:
            where = f"right after layer {last_done[0]!r}"
        else:
            where = "before its first layer"
        raise TrtoptError(f"{what} failed {where}: {first_line(e, with_type=True)}", fix) from e
    finally:
        for h in handles:
            h.remove()

def prune(model: nn.Module, example_inputs: Any, config: PruneConfig = PruneConfig(),
          labels: torch.Tensor | None = None) -> PruneResult:
    """Prune a copy of ``model`` per ``config`` and report what changed (``model`` is not modified).

    Args:
        model: a PyTorch model (any mode; the result is in eval mode on the CPU).
        example_inputs: positional inputs of ``forward`` (a tensor or tuple of tensors, batch axis first)
            used to trace dependencies, count MACs, rank channels (Taylor) and check the pruned model.
        config: method, ratio, importance, protected/ignored layers.
        labels: class labels for the example inputs, used by Taylor importance (cross entropy); without
            them the model's own predictions serve as labels (2-D outputs), or the outputs' squared norm.

    Returns:
        The pruned copy and its report (parameters, MACs per sample, pruning rate, channel ratio, layers).

    Raises:
        TrtoptError: an ignored layer name that the model does not have; a model the dependency graph
            cannot handle or that fails after pruning (the message names the layer); structured pruning
            that would change the model's output shape.
    """
    args = _as_args(example_inputs)
    pruned = copy.deepcopy(model).cpu().eval()
    layers = weight_layers(pruned)
    all_names = {n for n, _ in pruned.named_modules()}
    unknown = [n for n in config.ignored_layers if n not in all_names]
    if unknown:
        close = sorted(layers)[:6]
        raise TrtoptError(f"ignored layer {unknown[0]!r} is not a module of the model",
                          f"use names from model.named_modules(), e.g. {', '.join(close)}")
    before_shapes = {n: tuple(m.weight.shape) for n, m in layers.items()}
    before_params = {n: sum(p.numel() for p in m.parameters(recurse=False)) for n, m in layers.items()}
    params_before = sum(p.numel() for p in pruned.parameters())
    zeros_before = _zeros(pruned)
    with _naming_failures(pruned, "running the model on the example inputs", "pass example inputs the model accepts"):
        macs_before = count_macs(pruned, args)
        with torch.no_grad():
            reference = pruned(*args)
    skipped: list[dict[str, str]] = []
    removal = _Removal(set(layers))
    if config.method == "unstructured":
        _unstructured_(pruned, config)
    elif config.method == "2:4":
        skipped = _two_four_(pruned, config)
    else:
        original = copy.deepcopy(pruned)
        removal = _structured_(pruned, args, config, labels)
    pruned.eval()
    with _naming_failures(pruned, "the pruned model", "add that layer to the ignored layers (--ignore NAME); "
                          "models that hard-code channel counts in reshapes can't be pruned structurally there"):
        macs_after = count_macs(pruned, args)
        with torch.no_grad():
            output = pruned(*args)
    _check_same_output_shape(reference, output)
    result = _report(pruned, config, before_shapes, before_params, params_before, zeros_before,
                     macs_before, macs_after, removal.allowed, skipped + removal.skipped, removal.heads)
    if config.method == "structured":
        from trtopt.compress.prune_check import check_equivalence

        result.equivalence = check_equivalence(original, pruned, args, removal.removed_in, removal.removed_out, _flat)
        result.ratio_notes = removal.ratio_notes
    return result

def _check_same_output_shape(reference: Any, output: Any) -> None:
    ref, out = _flat(reference), _flat(output)
    if [tuple(t.shape) for t in ref] != [tuple(t.shape) for t in out]:
        raise TrtoptError(f"pruning changed the model's output shapes from {[tuple(t.shape) for t in ref]} to "
                          f"{[tuple(t.shape) for t in out]}", "add the output layer to the ignored layers (--ignore NAME)")

def _flat(value: Any) -> list[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, dict):
        return [t for v in value.values() for t in _flat(v)]
    if isinstance(value, (tuple, list)):
        return [t for v in value for t in _flat(v)]
    if hasattr(value, "to_tuple"):  # Hugging Face ModelOutput
        return _flat(value.to_tuple())
    return []

def _report(pruned: nn.Module, config: PruneConfig, before_shapes: dict[str, tuple],
            before_params: dict[str, int], params_before: int, zeros_before: int, macs_before: dict[str, int],
            macs_after: dict[str, int], allowed: set[str], skipped: list[dict[str, str]],
            heads: dict[str, dict[str, int]]) -> PruneResult:
    layers_after = weight_layers(pruned)
    rows = []
    out_before = out_after = 0
    macs_nonzero = 0
    for name, shape in before_shapes.items():
        layer = layers_after.get(name)
        if layer is None:
            continue
        weight = layer.weight.detach()
        sparsity = float((weight == 0).sum()) / weight.numel()
        macs_nonzero += int(macs_after.get(name, 0) * (1.0 - sparsity))
        params = sum(p.numel() for p in layer.parameters(recurse=False))
        changed = tuple(weight.shape) != shape or sparsity > 0
        rows.append({"name": name, "type": type(layer).__name__, "weight_shape_before": list(shape),
                     "weight_shape_after": list(weight.shape), "parameters_before": before_params[name],
                     "parameters_after": params, "sparsity": sparsity, "pruned": changed})
        if name in allowed:
            out_before += shape[0]
            out_after += weight.shape[0]
    params_after = sum(p.numel() for p in pruned.parameters())
    zeros_after = _zeros(pruned)
    pruned_params = (params_before - params_after) + max(0, zeros_after - zeros_before)
    channel_ratio = 1.0 - out_after / out_before if config.method == "structured" and out_before else 0.0
    return PruneResult(pruned, config, params_before, params_after, params_after - zeros_after,
                       sum(macs_before.values()), sum(macs_after.values()), macs_nonzero,
                       100.0 * pruned_params / params_before if params_before else 0.0, channel_ratio, rows, skipped, heads)

def _unstructured_(model: nn.Module, config: PruneConfig) -> None:
    """Zero the ``config.ratio`` smallest-magnitude weights, per layer or globally, permanently."""
    from torch.nn.utils import prune as tprune

    targets = [(m, "weight") for n, m in weight_layers(model).items() if n not in config.ignored_layers]
    if not targets or config.ratio == 0:
        return
    if config.global_pruning:
        tprune.global_unstructured(targets, pruning_method=tprune.L1Unstructured, amount=float(config.ratio))
    else:
        for layer, attr in targets:
            tprune.l1_unstructured(layer, attr, amount=float(config.ratio))
    for layer, attr in targets:
        tprune.remove(layer, attr)

def _two_four_(model: nn.Module, config: PruneConfig) -> list[dict[str, str]]:
    """Apply the 2:4 pattern to every eligible Conv/Linear weight; returns the layers left dense and why."""
    from torch.nn.utils import prune as tprune

    skipped = []
    for name, layer in weight_layers(model).items():
        if name in config.ignored_layers:
            skipped.append({"name": name, "reason": "ignored by configuration"})
            continue
        if layer.weight.shape[1] % 4:
            skipped.append({"name": name, "reason": f"input dimension {layer.weight.shape[1]} is not a multiple of 4"})
            continue
        tprune.custom_from_mask(layer, "weight", mask_2to4(layer.weight))
        tprune.remove(layer, "weight")
    return skipped

@dataclass(frozen=True)
class _Attention:
    """An attention module whose heads structured pruning removes: its q/k/v projections (one fused ``qkv``
    Linear or three), the attribute holding its head count, and how to refresh the derived attributes."""

    module: nn.Module
    projections: tuple[str, ...]
    heads_attr: str

    @property
    def heads(self) -> int:
        return int(getattr(self.module, self.heads_attr))

    def set_heads_(self, heads: int) -> None:
        """Write the new head count and the widths derived from it (HF ``all_head_size``, timm ``attn_dim``)."""
        setattr(self.module, self.heads_attr, heads)
        if hasattr(self.module, "all_head_size"):  # Hugging Face BERT-style: the query width
            self.module.all_head_size = getattr(self.module, self.projections[0]).out_features
        if hasattr(self.module, "attn_dim"):  # timm Attention (head_dim is kept)
            self.module.attn_dim = heads * self.module.head_dim


def _attention_modules(model: nn.Module) -> dict[str, _Attention]:
    """Attention modules whose heads can be pruned: Hugging Face BERT-style self-attention (``query``/``key``/
    ``value`` Linear + ``num_attention_heads``) and timm's ``Attention`` (fused ``qkv`` Linear + ``num_heads`` +
    ``head_dim``, as in ViT)."""
    found = {}
    for name, m in model.named_modules():
        if all(isinstance(getattr(m, a, None), nn.Linear) for a in ("query", "key", "value")) \
                and isinstance(getattr(m, "num_attention_heads", None), int):
            found[name] = _Attention(m, ("query", "key", "value"), "num_attention_heads")
        elif isinstance(getattr(m, "qkv", None), nn.Linear) and isinstance(getattr(m, "num_heads", None), int) \
                and isinstance(getattr(m, "head_dim", None), int) and m.qkv.out_features == 3 * m.num_heads * m.head_dim:
            found[name] = _Attention(m, ("qkv",), "num_heads")
    return found


def _importance(config: PruneConfig) -> Any:
    import torch_pruning as tp

    if config.importance == "l1":
        return tp.importance.MagnitudeImportance(p=1)
    if config.importance == "l2":
        return tp.importance.MagnitudeImportance(p=2)
    if config.importance == "bn":
        return tp.importance.BNScaleImportance()
    return tp.importance.TaylorImportance()

@dataclass
class _Removal:
    """What structured pruning removed: layers allowed to shrink, heads before/after, removed channel indices
    per Conv/Linear layer name (input and output side), notes on layers that lost another ratio, and modules
    kept whole with the reason."""

    allowed: set[str]
    heads: dict[str, dict[str, int]] = field(default_factory=dict)
    removed_in: dict[str, list[int]] = field(default_factory=dict)
    removed_out: dict[str, list[int]] = field(default_factory=dict)
    ratio_notes: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[dict[str, str]] = field(default_factory=list)


def _structured_(model: nn.Module, args: tuple[Any, ...], config: PruneConfig, labels: torch.Tensor | None) -> _Removal:
    """Remove channels in place with Torch-Pruning; returns what was removed (see `_Removal`)."""
    try:
        import torch_pruning as tp
    except ImportError as e:
        from trtopt.errors import missing_dependency

        raise missing_dependency("torch-pruning", None, "structured pruning") from e
    from trtopt.compress.prune_check import find_channel_shuffle

    layers = weight_layers(model)
    by_name = dict(model.named_modules())
    ignored = set(config.ignored_layers)
    attention = _attention_modules(model)
    num_heads: dict[nn.Module, int] = {}
    qkv: set[str] = set()
    for name, att in attention.items():
        for proj in att.projections:
            num_heads[getattr(att.module, proj)] = att.heads
            qkv.add(f"{name}.{proj}" if name else proj)
    if attention:
        # Keep the residual stream: every Linear writing hidden-size features (attention output, FFN output).
        hidden = {getattr(att.module, att.projections[0]).in_features for att in attention.values()}
        ignored |= {n for n, m in layers.items() if isinstance(m, nn.Linear) and m.out_features in hidden and n not in qkv}
    # nn.MultiheadAttention's heads are embed_dim / num_heads wide with embed_dim also its input and output
    # width (the residual stream): a head can't go without narrowing the model, so these modules are kept.
    mha = {n for n, m in model.named_modules() if isinstance(m, nn.MultiheadAttention)}
    ignored |= mha | {n for n in layers if any(n.startswith(f"{m}.") for m in mha)}
    if config.protect_first_last:
        with _naming_failures(model, "running the model to find its first and last layers", "pass example inputs the model accepts"):
            order = _execution_order(model, args)
        if order:
            if order[0] not in qkv:
                ignored.add(order[0])
            ignored.add(order[-1])
    if config.importance == "bn" and not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()):
        raise TrtoptError("importance 'bn' ranks channels by BatchNorm scale, but the model has no BatchNorm layer",
                          "use importance l1, l2 or taylor")
    allowed = set(layers) - ignored
    heads_before = {n: a.heads for n, a in attention.items()}
    kept_mha = [{"name": n, "reason": "nn.MultiheadAttention: its head width is embed_dim / num_heads and embed_dim is "
                 "the model width, so heads are kept (the layers around it are pruned)"} for n in sorted(mha)]
    if config.ratio == 0:
        return _Removal(allowed, {n: {"before": h, "after": h} for n, h in heads_before.items()}, skipped=kept_mha)
    shuffle = find_channel_shuffle(model, args)
    if shuffle:
        # Torch-Pruning maps channels through view → transpose → reshape as if they kept their order (or fails
        # building its graph), which rewires them: refuse rather than ship a different model.
        raise TrtoptError(f"structured pruning can't follow the channel shuffle {shuffle} (view to (N, groups, C/groups, "
                          "…) then transpose): the dependency graph would rewire the shuffled channels",
                          "prune this model with --method unstructured or --method 2:4 (shapes stay), or "
                          "structured-prune a model without channel shuffles")
    kwargs: dict[str, Any] = {
        "importance": _importance(config), "pruning_ratio": float(config.ratio), "global_pruning": config.global_pruning,
        "max_pruning_ratio": config.max_layer_ratio if config.global_pruning else 1.0,
        "ignored_layers": [by_name[n] for n in sorted(ignored)],
        "round_to": config.round_to if config.round_to > 1 else None, "forward_fn": lambda m, x: m(*x)}
    if num_heads:
        kwargs.update(num_heads=num_heads, prune_num_heads=True, prune_head_dims=False, head_pruning_ratio=float(config.ratio),
                      # Torch-Pruning removes ceil(ratio × heads) heads: at a high ratio that is every head of a small
                      # attention (0.7 of 3), which leaves a zero-width projection; keep at least one head
                      head_pruning_ratio_dict={a.module: min(float(config.ratio), max(0.0, (a.heads - 1) / a.heads - 1e-9))
                                               for a in attention.values()})
    with warnings.catch_warnings(), _naming_failures(
            model, "building the dependency graph", "add that layer to the ignored layers (--ignore NAME) or prune another way"):
        warnings.simplefilter("ignore")
        pruner = tp.pruner.MetaPruner(model, args, **kwargs)
    if config.importance == "taylor":
        _taylor_gradients_(model, args, labels)
    names = {m: n for n, m in model.named_modules()}
    removal = _Removal(allowed)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for group in pruner.step(interactive=True):
                for dep, idxs in group:
                    name = names.get(dep.target.module)
                    if name not in layers:
                        continue
                    side = (removal.removed_out if pruner.DG.is_out_channel_pruning_fn(dep.handler)
                            else removal.removed_in if pruner.DG.is_in_channel_pruning_fn(dep.handler) else None)
                    if side is not None:
                        side[name] = sorted(set(side.get(name, [])) | {int(i) for i in idxs})
                group.prune()
    except Exception as e:
        raise TrtoptError(f"structured pruning failed while removing channels: {type(e).__name__}: {str(e)[:200]}",
                          "add the layer named in the message to the ignored layers (--ignore NAME)") from e
    model.zero_grad(set_to_none=True)
    for att in attention.values():
        att.set_heads_(pruner.num_heads[getattr(att.module, att.projections[0])])
    removal.heads = {n: {"before": h, "after": attention[n].heads} for n, h in heads_before.items()}
    removal.skipped = kept_mha
    if not config.global_pruning:
        removal.ratio_notes = _ratio_notes(pruner.DG, layers, names, ignored, qkv, removal.removed_out, config)
    return removal


def _ratio_notes(graph: Any, layers: dict[str, nn.Module], names: dict[nn.Module, str], ignored: set[str],
                 qkv: set[str], removed_out: dict[str, list[int]], config: PruneConfig) -> list[dict[str, Any]]:
    """One note per prunable layer whose removed fraction of output channels differs from ``config.ratio`` by more
    than 0.02, naming the constraints that tie its channels (protected/ignored layers, grouped convs, round-to,
    whole attention heads). ``graph`` is Torch-Pruning's dependency graph of the pruned model."""
    notes = []
    for name, layer in layers.items():
        if name in ignored or layer not in graph.module2node \
                or isinstance(layer, nn.Conv2d | nn.Conv1d | nn.Conv3d) and layer.groups == layer.in_channels > 1:
            continue  # depthwise convs follow their producer
        after = int(layer.weight.shape[0])
        before = after + len(removed_out.get(name, ()))
        got = 1.0 - after / before
        if abs(got - config.ratio) <= 0.02:
            continue
        pruner = graph.get_pruner_of_module(layer)
        group = graph.get_pruning_group(layer, pruner.prune_out_channels, list(range(after)))
        tied = [names[d.target.module] for d, _ in group
                if graph.is_out_channel_pruning_fn(d.handler) and names.get(d.target.module) in layers]
        reasons = [f"its channels are tied to the ignored/protected layer(s) {', '.join(repr(t) for t in tied if t in ignored)}"
                   ] if any(t in ignored for t in tied) else []
        coupled = [names[d.target.module] for d, _ in group if names.get(d.target.module) in layers]
        grouped = sorted({(t, layers[t].groups) for t in coupled + [name]
                          if getattr(layers[t], "groups", 1) > 1 and layers[t].groups != layers[t].in_channels})
        reasons += [f"grouped conv {t!r} (groups={g}) loses the same number of channels in every group" for t, g in grouped]
        if config.round_to > 1:
            reasons.append(f"channel counts are rounded to multiples of round_to={config.round_to}")
        if name in qkv:
            reasons.append("attention projections lose whole heads only")
        notes.append({"layer": name, "channels_before": before, "channels_after": after, "ratio_asked": config.ratio,
                      "ratio_got": got, "reason": "; ".join(reasons) or "Torch-Pruning's rounding of the channel count"})
    return notes

def _taylor_gradients_(model: nn.Module, args: tuple[Any, ...], labels: torch.Tensor | None) -> None:
    """Fill .grad for Taylor importance: cross entropy against labels (or own predictions), else ‖output‖²."""
    model.zero_grad(set_to_none=True)
    out = model(*args)
    outputs = _flat(out)
    if not outputs:
        raise TrtoptError("Taylor importance needs a tensor output to differentiate", "use importance l1 or l2")
    first = outputs[0]
    if first.dim() == 2 and first.shape[1] > 1:
        target = labels if labels is not None else first.detach().argmax(1)
        loss = torch.nn.functional.cross_entropy(first, target)
    else:
        loss = sum((t.float() ** 2).mean() for t in outputs if t.is_floating_point())
    loss.backward()

def example_inputs_for(loaded: Any, batch_size: int = 2, seed: int = 0) -> tuple[torch.Tensor, ...]:
    """Seeded random example inputs (a tuple of tensors) for a `trtopt.models.spec.LoadedModel`."""
    from trtopt.data import random_feed

    feed = random_feed(loaded.inputs, batch_size, seed=seed)
    return tuple(torch.from_numpy(feed[s.name].copy()) for s in loaded.inputs)

def prune_loaded(loaded: Any, config: PruneConfig, example_inputs: Sequence[torch.Tensor] | None = None) -> tuple[Any, PruneResult]:
    """`prune` for a `trtopt.models.spec.LoadedModel`: returns (a LoadedModel holding the pruned module, the result)."""
    result = prune(loaded.module, tuple(example_inputs) if example_inputs is not None else example_inputs_for(loaded), config)
    description = f"{loaded.description}, pruned ({config.method}, ratio {config.ratio})".lstrip(", ")
    return dataclasses.replace(loaded, module=result.module, description=description), result
