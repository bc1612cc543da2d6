"""Configs of the torch-side compression stages: prune, factorize (low-rank), distill, cluster (weight sharing).

Plain frozen dataclasses that import neither torch nor the stages themselves, so a :class:`~trtopt.config.Recipe`
holds them as typed sections and ``trtopt --help`` builds its flags from them without loading torch. Each
stage module (``trtopt.compress.prune`` …) takes its config from here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from trtopt.errors import TrtoptError



# -- prune ------------------------------------------------------------

PRUNE_METHODS = ("unstructured", "structured", "2:4")

IMPORTANCES = ("l1", "l2", "bn", "taylor")

@dataclass(frozen=True)
class PruneConfig:
    """What to prune and how.

    Attributes:
        method: "unstructured", "structured" or "2:4".
        ratio: in [0, 1). structured: fraction of output channels removed per layer group (and of
            attention heads in transformers); unstructured: fraction of weights zeroed; 2:4: unused
            (the pattern always zeroes half of each eligible layer).
        global_pruning: rank channels (structured) or weights (unstructured) across all layers together
            instead of per layer, so less important layers lose more.
        importance: channel importance for structured pruning: "l1" / "l2" (weight magnitude), "bn"
            (BatchNorm scale |γ|), "taylor" (|weight × gradient| on the example inputs). unstructured and
            2:4 rank single weights by magnitude ("l1" or "l2", which order them the same way).
        round_to: structured: keep channel counts multiples of this (8 suits tensor cores); 1 = no rounding.
        ignored_layers: module names (as in ``model.named_modules()``) never pruned (structured: their
            output channels are kept; unstructured / 2:4: their weights are left dense).
        protect_first_last: structured: keep the output channels of the first layer and of the final
            layer (the classifier's outputs are the model's outputs).
        max_layer_ratio: structured global pruning: no layer group loses more than this fraction.
    """

    method: str = "structured"
    ratio: float = 0.5
    global_pruning: bool = False
    importance: str = "l1"
    round_to: int = 8
    ignored_layers: tuple[str, ...] = ()
    protect_first_last: bool = True
    max_layer_ratio: float = 0.9

    def __post_init__(self) -> None:
        if self.method not in PRUNE_METHODS:
            raise TrtoptError(f"prune.method={self.method!r} is not a pruning method", f"choose one of {', '.join(PRUNE_METHODS)}")
        if (not isinstance(self.ratio, (int, float)) or isinstance(self.ratio, bool) or not math.isfinite(self.ratio)
                or not 0.0 <= self.ratio < 1.0):
            raise TrtoptError(f"prune.ratio={self.ratio!r} is outside [0, 1)",
                              "give the fraction to remove, e.g. 0.5 (1.0 would remove everything)")
        if self.importance not in IMPORTANCES:
            raise TrtoptError(f"prune.importance={self.importance!r} is not an importance criterion",
                              f"choose one of {', '.join(IMPORTANCES)}")
        if self.method != "structured" and self.importance not in ("l1", "l2"):
            raise TrtoptError(f"prune.importance={self.importance!r} ranks channels; {self.method} pruning ranks single weights",
                              "use importance l1 or l2 (weight magnitude) with this method")
        if not isinstance(self.round_to, int) or isinstance(self.round_to, bool) or self.round_to < 1:
            raise TrtoptError(f"prune.round_to={self.round_to!r} is not a positive integer", "use 8, or 1 for no rounding")
        if not 0.0 < self.max_layer_ratio <= 1.0:
            raise TrtoptError(f"prune.max_layer_ratio={self.max_layer_ratio!r} is outside (0, 1]", "use e.g. 0.9")
        if isinstance(self.ignored_layers, str):
            raise TrtoptError("prune.ignored_layers is one string, not a list of names", "pass a tuple of module names")


# -- factorize (low-rank) --------------------------------------------

RANK_METHODS = ("energy", "params", "ranks")

CONV_SCHEMES = ("auto", "channel", "spatial", "tucker2")

@dataclass(frozen=True)
class LowRankConfig:
    """How ranks are chosen and which layers are factorized.

    Attributes:
        method: "energy" (keep ``energy`` of each layer's squared singular values), "params" (keep at most
            ``param_budget`` of the selected layers' parameters in total) or "ranks" (``ranks`` per layer).
        energy: fraction in (0, 1] for method "energy" (and the mode energy of Tucker-2 under any method).
        param_budget: fraction in (0, 1) of the selected layers' parameters to keep, for method "params".
        ranks: layer name → rank for method "ranks" (Tucker-2: both channel ranks).
        conv: Conv2d scheme: "auto", "channel", "spatial" or "tucker2" (see module docstring).
        layers: module names to factorize (empty: every Linear and Conv2d). Naming another type is an error.
        exclude: module names left as they are (e.g. a classifier head).
        min_reduction: skip a layer unless it loses at least this fraction of its parameters (and MACs);
            None factorizes every selected layer even when that costs more (for experiments and tests).
        rank_multiple: round ranks up to a multiple of this (8 or 16 suit tensor cores); 1 = exact.
    """

    method: str = "energy"
    energy: float = 0.9
    param_budget: float | None = None
    ranks: dict[str, int] = field(default_factory=dict)
    conv: str = "auto"
    layers: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    min_reduction: float | None = 0.1
    rank_multiple: int = 1

    def __post_init__(self) -> None:
        if self.method not in RANK_METHODS:
            raise TrtoptError(f"LowRankConfig.method={self.method!r} is not one of {', '.join(RANK_METHODS)}",
                              "use energy, params or ranks")
        if self.conv not in CONV_SCHEMES:
            raise TrtoptError(f"LowRankConfig.conv={self.conv!r} is not one of {', '.join(CONV_SCHEMES)}",
                              "use auto, channel, spatial or tucker2")
        if not (isinstance(self.energy, (int, float)) and 0 < self.energy <= 1):
            raise TrtoptError(f"LowRankConfig.energy={self.energy!r} is not in (0, 1]", "e.g. energy=0.9")
        if self.method == "params" and not (isinstance(self.param_budget, (int, float)) and 0 < self.param_budget < 1):
            raise TrtoptError(f"LowRankConfig.param_budget={self.param_budget!r} is not in (0, 1)",
                              "give the fraction of the layers' parameters to keep, e.g. param_budget=0.5")
        if self.method == "ranks" and not self.ranks:
            raise TrtoptError("LowRankConfig.method='ranks' but no ranks given", "pass ranks={'layer.name': r}")
        for name, r in self.ranks.items():
            if not isinstance(r, int) or isinstance(r, bool) or r < 1:
                raise TrtoptError(f"rank {r!r} for layer {name!r} is not a positive integer", "give ranks >= 1")
        if self.min_reduction is not None and not 0 <= self.min_reduction < 1:
            raise TrtoptError(f"LowRankConfig.min_reduction={self.min_reduction!r} is not in [0, 1)", "e.g. 0.1")
        if not isinstance(self.rank_multiple, int) or self.rank_multiple < 1:
            raise TrtoptError(f"LowRankConfig.rank_multiple={self.rank_multiple!r} must be an integer >= 1", "e.g. 1 or 8")


# -- distill ----------------------------------------------------------

OUTPUT_LOSSES = ("kl", "cosine", "mse")

OPTIMIZERS = ("adamw", "sgd")

SCHEDULERS = ("cosine", "none")

def _check_alpha_temperature(alpha: float, temperature: float) -> None:
    if not 0.0 <= float(alpha) <= 1.0:
        raise TrtoptError(f"alpha={alpha} is outside [0, 1]", "alpha weighs the hard-label CE: pick a value in [0, 1], e.g. 0.5")
    if not float(temperature) > 0.0:
        raise TrtoptError(f"temperature={temperature} must be > 0", "use a softening temperature such as 4")

@dataclass(frozen=True)
class DistillConfig:
    """How a student is trained against a teacher.

    Attributes:
        alpha: weight of the hard-label CE in the KD loss, in [0, 1] (ignored without labels).
        temperature: softmax temperature T > 0 of the KD term.
        output_loss: "kl" (outputs are logits: `kd_loss`), "cosine" or "mse" (outputs are embeddings:
            `embedding_loss`; labels are refused).
        epochs: passes over the training data (None: run until ``max_steps``).
        max_steps: stop after this many optimizer steps (None: ``epochs`` decides); with both, the
            first reached stops.
        batch_size: samples per optimizer step, *global* (split across DDP ranks).
        lr: peak learning rate. weight_decay: decoupled (AdamW) or L2 (SGD) weight decay.
        optimizer: "adamw" or "sgd" (with ``momentum``, Nesterov off).
        scheduler: "cosine" (per step from lr to 0 over the run) or "none" (constant); both after
            ``warmup_steps`` steps of linear warm-up from lr/warmup_steps.
        feature_pairs: (student module name, teacher module name) pairs for the intermediate-feature
            MSE loss; ``feature_weight`` is its weight.
        eval_every: evaluate every N steps (None: at the end of every epoch); needs ``eval_data``.
        patience: stop after this many evaluations without improvement of the metric by more than
            ``min_delta`` (None: never stop early).
        higher_is_better: direction of the metric (accuracy, cosine: True; a loss: False).
        restore_best: at the end, load the weights of the best evaluation into the student.
        checkpoint_dir: write ``last.pt`` / ``best.pt`` here (None: no checkpoints).
        checkpoint_every: also write ``last.pt`` every N steps (None: only at epoch ends).
        resume_from: a checkpoint file, or a directory holding ``last.pt``, to continue from.
        seed: seeds the batch order, dropout, and the feature projections' initialization.
        grad_clip_norm: clip the global gradient L2 norm to this (None: no clipping).
        keep_zeros: keep the student's zero weights (Conv/Linear) at zero: pruning masks (unstructured,
            2:4) stay fixed while the other weights train.
        eval_batch_size: samples per forward pass when evaluating.
        device: "auto" (CUDA when available, else CPU; under DDP cuda:LOCAL_RANK), "cpu" or "cuda".
        ddp: "auto" (DDP when WORLD_SIZE > 1) or "off".
    """

    alpha: float = 0.5
    temperature: float = 4.0
    output_loss: str = "kl"
    epochs: int | None = 1
    max_steps: int | None = None
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 0.0
    optimizer: str = "adamw"
    momentum: float = 0.9
    scheduler: str = "cosine"
    warmup_steps: int = 0
    feature_pairs: tuple[tuple[str, str], ...] = ()
    feature_weight: float = 1.0
    eval_every: int | None = None
    patience: int | None = None
    min_delta: float = 0.0
    higher_is_better: bool = True
    restore_best: bool = True
    checkpoint_dir: str | None = None
    checkpoint_every: int | None = None
    resume_from: str | None = None
    seed: int = 0
    grad_clip_norm: float | None = None
    keep_zeros: bool = False
    eval_batch_size: int = 256
    device: str = "auto"
    ddp: str = "auto"

    def __post_init__(self) -> None:
        _check_alpha_temperature(self.alpha, self.temperature)
        for name, allowed in (("output_loss", OUTPUT_LOSSES), ("optimizer", OPTIMIZERS), ("scheduler", SCHEDULERS),
                              ("device", ("auto", "cpu", "cuda")), ("ddp", ("auto", "off"))):
            if getattr(self, name) not in allowed:
                raise TrtoptError(f"distill.{name}={getattr(self, name)!r} is not one of {', '.join(allowed)}",
                                  f"choose one of {', '.join(allowed)}")
        if self.epochs is None and self.max_steps is None:
            raise TrtoptError("distill needs epochs or max_steps", "set epochs=N or max_steps=N")
        for name in ("epochs", "max_steps", "batch_size", "eval_every", "patience", "checkpoint_every", "eval_batch_size"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise TrtoptError(f"distill.{name}={value!r} must be a positive integer", f"set {name} to 1 or more")
        if isinstance(self.warmup_steps, bool) or not isinstance(self.warmup_steps, int) or self.warmup_steps < 0:
            raise TrtoptError(f"distill.warmup_steps={self.warmup_steps!r} must be an integer >= 0", "set warmup_steps >= 0")
        if not self.lr > 0 or not math.isfinite(self.lr):
            raise TrtoptError(f"distill.lr={self.lr} must be a positive number", "use e.g. 1e-3 (AdamW) or 0.01 (SGD)")
        if self.weight_decay < 0 or self.feature_weight < 0 or self.min_delta < 0:
            raise TrtoptError("distill.weight_decay, feature_weight and min_delta must be >= 0", "use non-negative values")
        if self.grad_clip_norm is not None and not self.grad_clip_norm > 0:
            raise TrtoptError(f"distill.grad_clip_norm={self.grad_clip_norm} must be > 0", "use None for no clipping")
        pairs = tuple(tuple(p) for p in self.feature_pairs)
        if any(len(p) != 2 or not all(isinstance(n, str) and n for n in p) for p in pairs):
            raise TrtoptError(f"distill.feature_pairs={self.feature_pairs!r} must be (student module, teacher module) name pairs",
                              "e.g. (('conv3', 'conv3'),)")
        object.__setattr__(self, "feature_pairs", pairs)


# -- cluster (weight sharing) -----------------------------------------

GRANULARITIES = ("layer", "channel")

@dataclass(frozen=True)
class ShareConfig:
    """How weights are clustered.

    Attributes:
        bits: index width b in 1..8; each group keeps at most 2^b distinct values.
        granularity: "layer" (one codebook per weight tensor: smallest file) or "channel" (one codebook
            per output channel, axis 0: lower error, 2^b FP32 values of codebook per channel).
        layers: module names to cluster (empty: every module of a clusterable type). Naming a module of
            another type is an error.
        exclude: module names left in FP32.
        min_elements: weights with fewer elements stay FP32 (their codebook would not pay).
        int8_grid: snap each group's codebook onto its symmetric INT8 grid (scale = max|centroid| / 127)
            so INT8 quantization of the shared weights, at the same granularity, is exact.
        max_iterations: Lloyd iterations at most (each is O(k log n) on sorted values).
        init_sample: k-means++ seeding looks at at most this many values per group (random subset).
        seed: seed of the k-means++ sampling (results are deterministic for a seed).
    """

    bits: int = 4
    granularity: str = "layer"
    layers: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    min_elements: int = 64
    int8_grid: bool = False
    max_iterations: int = 300
    init_sample: int = 16384
    seed: int = 0

    def __post_init__(self) -> None:
        check_bits(self.bits)
        if self.granularity not in GRANULARITIES:
            raise TrtoptError(f"ShareConfig.granularity={self.granularity!r} is not one of {', '.join(GRANULARITIES)}",
                              "use 'layer' (smallest file) or 'channel' (lower error)")
        for name in ("min_elements", "max_iterations", "init_sample"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < (0 if name == "min_elements" else 1):
                raise TrtoptError(f"ShareConfig.{name}={value!r} must be a positive integer", f"set {name} to e.g. "
                                  f"{ShareConfig.__dataclass_fields__[name].default}")

def check_bits(bits: Any) -> int:
    """Validate an index width: an integer in 1..8 (2 to 256 shared values)."""
    if not isinstance(bits, int) or isinstance(bits, bool) or not 1 <= bits <= 8:
        raise TrtoptError(f"bits={bits!r} is outside 1..8", "choose b in 1..8 (2^b shared values; 4 bits = 16 is typical)")
    return bits
