"""Configs of the torch-side compression stages: prune, factorize (low-rank), distill, cluster (weight sharing).

Plain frozen dataclasses that import neither torch nor the stages themselves, so a :class:`~trtopt.config.Recipe`
holds them as typed sections and ``trtopt --help`` builds its flags from them without loading torch. Each
stage module (``trtopt.compress.prune`` …) takes its config from here.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from trtopt._config import check_choice, check_int, check_ints, check_names, check_number, field_error

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
        check_choice("method", self.method, PRUNE_METHODS)
        check_number("ratio", self.ratio, 0, 1, high_open=True,
                     fix="give the fraction to remove, e.g. 0.5 (1.0 would remove everything)")
        check_choice("importance", self.importance, IMPORTANCES)
        if self.method != "structured" and self.importance not in ("l1", "l2"):
            raise field_error("importance", self.importance,
                              f"ranks channels; {self.method} pruning ranks single weights",
                              "use importance l1 or l2 (weight magnitude) with this method")
        check_int("round_to", self.round_to, fix="use 8, or 1 for no rounding")
        check_number("max_layer_ratio", self.max_layer_ratio, 0, 1, low_open=True, fix="use e.g. 0.9")
        check_names("ignored_layers", self.ignored_layers, fix="give a list of module names")


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
        min_rank: the thinnest split made (methods "energy" and "params"; explicit ``ranks`` are kept as
            given): a smaller chosen rank is raised to it, and a layer where that rank no longer meets
            ``min_reduction`` is skipped with the reason. Splits through fewer than 16 channels ran slower than
            the dense layer in ONNX Runtime on the CPU at every MAC saving measured (0.55-0.89× for
            EfficientNet-Lite0's stem and early 1×1 convs at 40-85 % of the dense MACs; 16-wide FP32 vectors
            of AVX-512 left part idle), while splits of 17+ channels won
            (benchmarks/results/lowrank_layers.json). 1 = no floor.
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
    min_rank: int = 16

    def __post_init__(self) -> None:
        check_choice("method", self.method, RANK_METHODS)
        check_choice("conv", self.conv, CONV_SCHEMES)
        check_number("energy", self.energy, 0, 1, low_open=True, fix="e.g. energy=0.9")
        if self.method == "params":
            check_number("param_budget", self.param_budget, 0, 1, low_open=True, high_open=True,
                         fix="give the fraction of the layers' parameters to keep, e.g. param_budget=0.5")
        if self.method == "ranks" and not self.ranks:
            raise field_error("ranks", self.ranks, "is empty, but method 'ranks' takes every rank from it",
                              "give ranks={'layer.name': r}")
        for name, r in self.ranks.items():
            check_int(f"ranks.{name}", r, fix="give ranks >= 1")
        check_number("min_reduction", self.min_reduction, 0, 1, high_open=True, optional=True, fix="e.g. 0.1")
        check_int("rank_multiple", self.rank_multiple, fix="e.g. 1 or 8")
        check_int("min_rank", self.min_rank, fix="e.g. 16 (1: no floor)")


# -- distill ----------------------------------------------------------

OUTPUT_LOSSES = ("kl", "cosine", "mse")

OPTIMIZERS = ("adamw", "sgd")

SCHEDULERS = ("cosine", "none")

DEVICES = ("auto", "cpu", "cuda")

DDP_MODES = ("auto", "off")

def _check_alpha_temperature(alpha: float, temperature: float) -> None:
    """The KD loss weights, shared by `DistillConfig` and `trtopt.compress.distill.kd_loss`."""
    check_number("alpha", alpha, 0, 1, fix="alpha weighs the hard-label CE: pick a value in [0, 1], e.g. 0.5")
    check_number("temperature", temperature, 0, low_open=True, fix="use a softening temperature such as 4")

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
        keep_zeros: keep the student's zero weights (Conv/Linear) at zero, so pruning masks (unstructured,
            2:4) stay fixed while the other weights train: True = every zero, False = none, None (auto) = the
            zeros of every layer holding NVIDIA's 2:4 pattern (a 2:4-sparse student stays 2:4-sparse).
        eval_batch_size: samples per forward pass when evaluating.
        device: "auto" (CUDA when available, else CPU; under DDP cuda:LOCAL_RANK), "cpu" or "cuda".
        ddp: "auto" (DDP when WORLD_SIZE > 1) or "off".
        find_unused_parameters: DDP: expect parameters that get no gradient from the loss (an auxiliary head
            the distillation loss never reaches), DDP's ``find_unused_parameters``. None (auto): found by one
            probe backward pass on the first samples before training; True/False: as given.
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
    keep_zeros: bool | None = None
    eval_batch_size: int = 256
    device: str = "auto"
    ddp: str = "auto"
    find_unused_parameters: bool | None = None

    def __post_init__(self) -> None:
        _check_alpha_temperature(self.alpha, self.temperature)
        check_choice("output_loss", self.output_loss, OUTPUT_LOSSES)
        check_choice("optimizer", self.optimizer, OPTIMIZERS)
        check_choice("scheduler", self.scheduler, SCHEDULERS)
        check_choice("device", self.device, DEVICES)
        check_choice("ddp", self.ddp, DDP_MODES)
        if self.epochs is None and self.max_steps is None:
            raise field_error("epochs", self.epochs, "and max_steps is None too: nothing would end the training",
                              "set epochs or max_steps (a number >= 1)")
        for name in ("epochs", "max_steps", "eval_every", "patience", "checkpoint_every"):
            check_int(name, getattr(self, name), optional=True)
        check_int("batch_size", self.batch_size)
        check_int("eval_batch_size", self.eval_batch_size)
        check_int("warmup_steps", self.warmup_steps, minimum=0)
        check_number("lr", self.lr, 0, low_open=True, fix="use e.g. 1e-3 (AdamW) or 0.01 (SGD)")
        for name in ("weight_decay", "feature_weight", "min_delta"):
            check_number(name, getattr(self, name), 0)
        check_number("grad_clip_norm", self.grad_clip_norm, 0, low_open=True, optional=True,
                     fix="give a norm > 0, or None for no clipping")
        pairs = tuple(tuple(p) for p in self.feature_pairs)
        if any(len(p) != 2 or not all(isinstance(n, str) and n for n in p) for p in pairs):
            raise field_error("feature_pairs", self.feature_pairs,
                              "must be (student module, teacher module) name pairs", "e.g. (('conv3', 'conv3'),)")
        object.__setattr__(self, "feature_pairs", pairs)


# -- cluster (weight sharing) -----------------------------------------

GRANULARITIES = ("layer", "channel")
SHARE_GRANULARITIES = (*GRANULARITIES, "auto")  # auto: chosen per layer by mixed allocation

@dataclass(frozen=True)
class ShareConfig:
    """How weights are clustered.

    Attributes:
        bits: index width b in 1..8; each group keeps at most 2^b distinct values.
        granularity: "layer" (one codebook per weight tensor: smallest file) or "channel" (one codebook
            per output channel, axis 0: lower error, 2^b FP32 values of codebook per channel), or "auto" (mixed
            allocation only: chosen per layer together with its bits, both granularities measured and their
            storage, codebooks included, counted exactly; a layer without a choice is shared per layer).
        layers: module names to cluster (empty: every module of a clusterable type). Naming a module of
            another type is an error.
        exclude: module names left in FP32.
        min_elements: weights with fewer elements stay FP32 (their codebook would not pay).
        int8_grid: snap each group's codebook onto its symmetric INT8 grid (scale = max|centroid| / 127)
            so INT8 quantization of the shared weights, at the same granularity, is exact.
        max_iterations: Lloyd iterations at most (each is O(k log n) on sorted values).
        init_sample: k-means++ seeding looks at at most this many values per group (random subset).
        seed: seed of the k-means++ sampling (results are deterministic for a seed).
        layer_bits: module name → bits for that layer's weight (overrides ``bits``; mixed bit-widths).
        layer_granularity: module name → "layer" or "channel" for that layer's weight (overrides
            ``granularity``; what mixed allocation with granularity "auto" chose).
        target_ratio: mixed bits chosen from measured per-layer sensitivity so the stored state is at
            least this many times smaller than FP32 (needs data; `trtopt.compress.share.choose_bits`).
        max_accuracy_drop: mixed bits chosen so the task metric (top-1 accuracy with labels, else
            1 − top-1 agreement, or 1 − cosine for embeddings) drops at most this much, measured.
            With ``target_ratio`` too: the smallest file meeting both, or the drop limit wins.
        candidate_bits: bit-widths mixed allocation may choose from (ascending).
        protect_first_last: keep the first and last Conv/Linear layer (in forward order) at
            ``protected_bits`` under mixed allocation (input stem and classifier are the most sensitive).
        protect_depthwise: keep depthwise convolutions (groups == in_channels > 1) at ``protected_bits``.
        protected_bits: bits of protected layers.
        finetune: the tied fine-tuning run after clustering, a `DistillConfig` (None: no fine-tuning):
            distillation from the original model (with labels: α·CE + (1 − α)·KD; embeddings: cosine, whatever
            ``output_loss`` says), weights kept tied (`trtopt.compress.share.tie_weights`); its steps/epochs,
            lr, batch size, optimizer, schedule and seed apply, its checkpoint fields are set by the caller.
            `tied_finetune` builds the usual one (``max_steps`` steps, AdamW, cosine, lr 1e-4, batch 16).
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
    layer_bits: dict[str, int] = field(default_factory=dict)
    layer_granularity: dict[str, str] = field(default_factory=dict)
    target_ratio: float | None = None
    max_accuracy_drop: float | None = None
    candidate_bits: tuple[int, ...] = (2, 3, 4, 5, 6, 8)
    protect_first_last: bool = True
    protect_depthwise: bool = True
    protected_bits: int = 8
    finetune: DistillConfig | None = None

    def __post_init__(self) -> None:
        check_int("bits", self.bits, 1, 8, fix="choose b in 1..8 (2^b shared values; 4 bits = 16 is typical)")
        for name, b in self.layer_bits.items():
            check_int(f"layer_bits.{name}", b, 1, 8, fix="give bits in 1..8 per layer")
        check_ints("candidate_bits", self.candidate_bits, 1, 8, nonempty=True, fix="e.g. (2, 3, 4, 5, 6, 8)")
        object.__setattr__(self, "candidate_bits", tuple(sorted(set(self.candidate_bits))))
        check_int("protected_bits", self.protected_bits, 1, 8, fix="e.g. 8")
        check_number("target_ratio", self.target_ratio, 1, low_open=True, optional=True,
                     fix="give the storage ratio vs FP32 to reach, e.g. 6")
        check_number("max_accuracy_drop", self.max_accuracy_drop, 0, 1, optional=True,
                     fix="give the allowed drop as a fraction, e.g. 0.02")
        check_choice("granularity", self.granularity, SHARE_GRANULARITIES,
                     fix="use 'layer' (smallest file), 'channel' (lower error) or 'auto' (chosen per layer, mixed bits)")
        for name, g in self.layer_granularity.items():
            check_choice(f"layer_granularity.{name}", g, GRANULARITIES, fix="give 'layer' or 'channel' per layer")
        if self.granularity == "auto" and self.target_ratio is None and self.max_accuracy_drop is None \
                and not self.layer_granularity:
            raise field_error("granularity", "auto", "is chosen per layer by mixed allocation, but no target was given",
                              "set target_ratio or max_accuracy_drop (trtopt cluster --target-ratio 6), "
                              "or use granularity 'layer' or 'channel'")
        check_int("min_elements", self.min_elements, minimum=0, fix="e.g. 64")
        check_int("max_iterations", self.max_iterations, fix="e.g. 300")
        check_int("init_sample", self.init_sample, fix="e.g. 16384")


TIED_FINETUNE_LR = 1e-4  # small: the codebooks start close to the original weights
TIED_FINETUNE_BATCH_SIZE = 16


def tied_finetune(steps: int, lr: float = TIED_FINETUNE_LR, batch_size: int = TIED_FINETUNE_BATCH_SIZE) -> DistillConfig | None:
    """The `ShareConfig.finetune` of ``steps`` tied fine-tuning steps (None for 0 steps): AdamW at peak ``lr``,
    cosine schedule, ``batch_size`` samples per step, the last weights kept (no evaluation to pick a best)."""
    check_int("finetune_steps", steps, minimum=0, fix="e.g. 200 (0: no fine-tuning)")
    # built for 0 steps too: an lr or batch size that could never run is an error even while unused
    config = DistillConfig(epochs=None, max_steps=steps or 1, lr=lr, batch_size=batch_size, restore_best=False)
    return config if steps else None


# -- QAT / QAD (quantization-aware training) ---------------------------

QAT_MODES = ("qat", "qad")

@dataclass(frozen=True)
class QATConfig:
    """How fake quantization is inserted and trained (`trtopt.compress.qat.qat`).

    Attributes:
        mode: "qat" (task loss: cross-entropy against the training labels, which are required) or "qad"
            (quantization-aware distillation: the fake-quantized model learns the FP32 original's outputs,
            no labels needed; `DistillConfig.output_loss` picks KL for logits, cosine/mse for embeddings).
        calibration_samples: training samples (the first ones) that calibrate the quantizers' ranges
            (ModelOpt's max calibration) before training starts.
        training: the fine-tuning run, a `DistillConfig` (epochs/steps, lr, batch size, checkpoints, resume,
            DDP). QAT wants a small learning rate: the default is 1e-4 for one epoch with cosine decay; in
            mode "qat" ``alpha`` is forced to 1 (plain cross-entropy).
        freeze_batchnorm: BatchNorm layers keep the statistics they had at calibration (eval mode) while the
            weights train (`trtopt.compress.trainer.frozen_batchnorm`): the quantizers' ranges were calibrated
            with them, and small fine-tuning batches would re-estimate them badly. False: BatchNorm updates
            its running statistics as in ordinary training.
        eval_mode: the whole model runs in eval mode while it trains (dropout and stochastic depth off as well,
            BatchNorm frozen whatever ``freeze_batchnorm`` says): for QAD of a pretrained model, whose
            inference outputs the fake-quantized copy should reproduce (EfficientNet-Lite0's drop-connect made
            the trained copy drift away from the FP32 model; measured in benchmarks/bench_qat_pretrained.py).
    """

    mode: str = "qat"
    calibration_samples: int = 512
    training: DistillConfig = field(default_factory=lambda: DistillConfig(lr=1e-4, epochs=1, scheduler="cosine"))
    freeze_batchnorm: bool = True
    eval_mode: bool = False

    def __post_init__(self) -> None:
        check_choice("mode", self.mode, QAT_MODES, fix="use qat (labels, task loss) or qad (distil from FP32, no labels)")
        check_int("calibration_samples", self.calibration_samples, fix="use e.g. 512")
