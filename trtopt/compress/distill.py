"""Knowledge distillation: the KD loss and a trainer that runs in one process or under ``torchrun`` (DDP).

A (pruned, factorized, shared or smaller) *student* learns to reproduce a frozen *teacher*. The stage is
a plain function, ``distill(student, teacher, train_data, config) -> DistillResult``; this module imports
torch, so import it on use (``import trtopt`` stays light).

Public API (stable)::

    kd_loss(student_logits, teacher_logits, labels=None, alpha=0.5, temperature=4.0) -> Tensor
    embedding_loss(student_out, teacher_out, kind="cosine") -> Tensor
    DistillConfig(...)                  # frozen, validated; fields documented on the class
    distill(student, teacher, train_data, config, eval_data=None, metric=None, progress=None) -> DistillResult
    DistillResult                       # .student (eval mode), .step_losses, .epoch_losses, .eval_history,
                                        # .best_metric, .best_step, .stopped_early, .checkpoints, .to_dict()
    DistillProgress                     # what the progress callback receives after every step
    accuracy_metric, agreement_metric, cosine_metric   # metric(student_out, teacher_out, labels) -> float
    load_checkpoint(path) -> dict       # read (and validate) a checkpoint written by distill

The loss (DESIGN.md)::

    L = α · CE(student, labels) + (1 − α) · T² · KL(softmax(teacher / T) ‖ softmax(student / T))

softmax over the last axis, KL summed over classes and averaged over every other axis ("batchmean").
The seed article writes KL(student, teacher) without T²; trtopt implements Hinton et al.'s standard
form: KL(teacher ‖ student), whose gradient w.r.t. the student logits is (p_s − p_t)/T, so the T² factor
keeps the soft-target gradients at the same scale as T changes and α keeps its meaning at any T.
Without labels (unlabelled data) the loss is pure KD: T² · KL, weight 1, α ignored. With ``alpha=1``
and labels it is plain fine-tuning (CE only; the teacher may then be ``None``).

Models whose output is an embedding rather than logits (a sentence encoder such as ``zoo:minilm_l6``)
use ``DistillConfig(output_loss="cosine")`` (mean 1 − cosine similarity to the teacher's output) or
``"mse"``; labels make no sense there and are refused. An optional intermediate-feature loss adds
``feature_weight · mean_pairs MSE(proj(student_feature), teacher_feature)`` for pairs of module names
(``DistillConfig(feature_pairs=(("conv2", "conv2"),))``); when the widths differ (a pruned student has
fewer channels) a learned projection maps the student's channels (axis 1 of 4-D conv maps, the last
axis otherwise) to the teacher's, trained with the student and saved in checkpoints.

Training data (``train_data`` and ``eval_data``), one of:

- ``(inputs, labels)``: ``inputs`` a tensor / numpy array (one model input), a tuple or list of them
  (positional inputs), or a dict name → array (keyword inputs: ``{"input_ids": ..., "attention_mask": ...}``
  for ``zoo:minilm_l6``, whose ``forward(input_ids, attention_mask)`` takes them by name); samples on
  axis 0; ``labels`` an int64 array (N,) or ``None`` (unlabelled, pure KD);
- a ``torch.utils.data.Dataset`` whose items are ``(inputs, label)`` pairs with per-sample inputs in
  any of the forms above and ``label`` an int, a 0-d tensor, or ``None``.

Batches are drawn in a seeded order (a fresh permutation per epoch from ``config.seed`` and the epoch
number, so a resumed run draws the same batches); the last batch may be smaller.

Scale-out: started by ``torchrun --nproc_per_node=N`` (RANK / WORLD_SIZE / LOCAL_RANK set), ``distill``
initializes the process group itself (gloo on CPU, nccl on CUDA; a group the caller already created is
used and left alone), wraps the student in DistributedDataParallel and splits every *global* batch of
``config.batch_size`` samples across the ranks; each rank scales its loss by its share of the batch, so
the averaged gradient equals the one-process gradient of the same global batch (same loss curve up to
float summation order). BatchNorm statistics are per rank (on CPU); dropout draws differ per rank.
Evaluation runs on every rank on the whole eval set (so all ranks take the same early-stopping
decision); only rank 0 writes checkpoints and calls ``progress``; the group ``distill`` created is
destroyed before it returns.

Checkpoints (``config.checkpoint_dir``): ``last.pt`` after every epoch (and every
``checkpoint_every`` steps), ``best.pt`` when the eval metric improves; each written atomically and
holding the student and projection weights, optimizer, scheduler, step, epoch, RNG states, histories and
early-stopping state. ``DistillConfig(resume_from=DIR or FILE)`` continues exactly where the checkpoint
stopped: a run interrupted and resumed gives the same weights, bit for bit (same machine, same thread
count), as one that ran straight through. The fields that change the training math (α, T, losses, batch
size, optimizer, learning rate and schedule, seed, ...) must match the checkpoint's; ``epochs`` /
``max_steps`` may grow to train longer (with the cosine schedule that also stretches what is left of it).
A student with zeroed weights (unstructured or 2:4 pruning) can
keep its zeros fixed during training with ``keep_zeros=True``.

Errors are `TrtoptError` with one line naming the problem: mismatched teacher/student output shapes
(both named), α outside [0, 1], T ≤ 0, labels with embedding outputs, an unreadable checkpoint, empty
training data, a loss that becomes NaN/inf (naming the step).
"""

from __future__ import annotations

import copy
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from trtopt import metrics
from trtopt.errors import TrtoptError, first_line
from trtopt.compress.config import DistillConfig, _check_alpha_temperature


CHECKPOINT_FORMAT = "trtopt-distill-checkpoint/1"

# Config fields that change the training math: a resumed run must use the same values.
_RESUME_FIXED = ("alpha", "temperature", "output_loss", "batch_size", "lr", "weight_decay", "optimizer", "momentum",
                 "scheduler", "warmup_steps", "feature_pairs", "feature_weight", "seed", "grad_clip_norm", "keep_zeros")

Metric = Callable[[torch.Tensor, "torch.Tensor | None", "torch.Tensor | None"], float]

def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor | None = None,
            alpha: float = 0.5, temperature: float = 4.0) -> torch.Tensor:
    """Hinton's distillation loss: α·CE(student, labels) + (1 − α)·T²·KL(teacher ‖ student) at temperature T.

    Args:
        student_logits, teacher_logits: logits of the same shape (..., C); softmax over the last axis.
            The teacher's are detached (it is not trained).
        labels: class indices of shape ``student_logits.shape[:-1]`` (int64), or None for pure KD.
        alpha: weight of the hard-label CE in [0, 1]; ignored when ``labels`` is None (the KD term then
            has weight 1, not 1 − α).
        temperature: T > 0; both distributions are softened by dividing the logits by T.

    Returns:
        A scalar tensor. KL is summed over classes and averaged over all other axes ("batchmean"), CE is
        averaged the same way, so the loss is a per-sample mean.

    Note:
        The seed article writes KL(student, teacher) without T². This is the standard form instead:
        KL(p_teacher ‖ p_student) (the teacher's distribution is the target) times T², which keeps the
        soft-target gradient, (p_s − p_t)/T per logit, at the same scale as T changes.

    Raises:
        TrtoptError: shapes differ, α outside [0, 1], T ≤ 0, labels of the wrong shape.
    """
    _check_alpha_temperature(alpha, temperature)
    if student_logits.shape != teacher_logits.shape:
        raise TrtoptError(f"student output shape {tuple(student_logits.shape)} differs from the teacher's "
                          f"{tuple(teacher_logits.shape)}", "distill a student with the same output classes as the teacher")
    classes = student_logits.shape[-1]
    s = student_logits.reshape(-1, classes)
    t = teacher_logits.detach().reshape(-1, classes).to(s.dtype)
    kl = F.kl_div(F.log_softmax(s / temperature, dim=-1), F.log_softmax(t / temperature, dim=-1),
                  reduction="sum", log_target=True) / s.shape[0]
    soft = temperature * temperature * kl
    if labels is None:
        return soft
    if tuple(labels.shape) != tuple(student_logits.shape[:-1]):
        raise TrtoptError(f"labels of shape {tuple(labels.shape)} don't match outputs of shape {tuple(student_logits.shape)}",
                          f"give one class index per sample, shape {tuple(student_logits.shape[:-1])}")
    hard = F.cross_entropy(s, labels.reshape(-1).to(s.device))
    if alpha == 1.0:
        return hard
    return alpha * hard + (1.0 - alpha) * soft

def embedding_loss(student_out: torch.Tensor, teacher_out: torch.Tensor, kind: str = "cosine") -> torch.Tensor:
    """Distance between student and teacher embeddings (no logits, e.g. a sentence encoder).

    ``kind="cosine"``: mean over samples of 1 − cos(student, teacher) along the last axis (0 when
    aligned, scale-free); ``"mse"``: mean squared error over all elements. The teacher is detached.
    """
    if student_out.shape != teacher_out.shape:
        raise TrtoptError(f"student output shape {tuple(student_out.shape)} differs from the teacher's "
                          f"{tuple(teacher_out.shape)}", "distill a student with the same embedding width as the teacher")
    t = teacher_out.detach().to(student_out.dtype)
    if kind == "cosine":
        return (1.0 - F.cosine_similarity(student_out, t, dim=-1)).mean()
    if kind == "mse":
        return F.mse_loss(student_out, t)
    raise TrtoptError(f"unknown embedding loss {kind!r}", "use 'cosine' or 'mse'")

def _host(tensor: torch.Tensor) -> np.ndarray:
    """A tensor as a numpy array on the host, for the formulas in `trtopt.metrics` (floats as float32)."""
    tensor = tensor.detach()
    return (tensor.float() if tensor.is_floating_point() else tensor).cpu().numpy()

def accuracy_metric(student_out: torch.Tensor, teacher_out: torch.Tensor | None, labels: torch.Tensor | None) -> float:
    """Top-1 accuracy of the student's logits against the labels (`trtopt.metrics.topk_accuracy`, in [0, 1])."""
    if labels is None:
        raise TrtoptError("accuracy needs labelled eval data", "give eval_data=(inputs, labels) or another metric")
    return metrics.topk_accuracy(_host(student_out), _host(labels))

def agreement_metric(student_out: torch.Tensor, teacher_out: torch.Tensor | None, labels: torch.Tensor | None) -> float:
    """Fraction of predictions where the student's top-1 class equals the teacher's (`trtopt.metrics.top1_agreement`)."""
    return metrics.top1_agreement(_host(teacher_out), _host(student_out))

def cosine_metric(student_out: torch.Tensor, teacher_out: torch.Tensor | None, labels: torch.Tensor | None) -> float:
    """Cosine similarity of the student's outputs to the teacher's (`trtopt.metrics.cosine_similarity`: per
    sample over its flattened output, then the mean); 0.0 when no sample has a defined angle."""
    return metrics.cosine_similarity(_host(teacher_out), _host(student_out)) or 0.0

@dataclass(frozen=True)
class DistillProgress:
    """One training step done (passed to the ``progress`` callback on rank 0).

    Attributes: step (1-based, global), total_steps, epoch (1-based), loss (this step's global-batch
    loss), lr (after the step), metric (the latest evaluation, or None), evaluated (True when this step
    ran an evaluation).
    """

    step: int
    total_steps: int
    epoch: int
    loss: float
    lr: float
    metric: float | None
    evaluated: bool

@dataclass
class DistillResult:
    """What `distill` returns.

    Attributes:
        student: the trained student (eval mode; best-eval weights when ``restore_best``), unwrapped.
        steps: optimizer steps taken in total (including those before a resume).
        epochs_completed: whole passes over the data.
        step_losses: loss of every step's global batch (index i = step i + 1).
        epoch_losses: sample-weighted mean loss of each completed epoch.
        eval_history: one dict per evaluation: {"step" (global, 1-based), "epoch" (1-based, the epoch that
            step belongs to), "metric"}.
        best_metric / best_step: best evaluation (None without eval data).
        stopped_early: True when patience ran out.
        checkpoints: {"last": path, "best": path} that exist (rank 0 only).
        world_size: processes that trained (1 without DDP).
        seconds: wall time of this call.
        config: the config, as a dict.
    """

    student: Any
    steps: int
    epochs_completed: int
    step_losses: list[float]
    epoch_losses: list[float]
    eval_history: list[dict[str, Any]]
    best_metric: float | None
    best_step: int | None
    stopped_early: bool
    checkpoints: dict[str, str]
    world_size: int
    seconds: float
    config: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Everything but the student (named by its class), JSON-ready."""
        data = {f.name: copy.deepcopy(getattr(self, f.name)) for f in fields(self) if f.name != "student"}
        return {"student": type(self.student).__name__, **data}

class _Source:
    """Indexable training/eval data: ``batch(indices) -> (inputs, labels | None)`` on the CPU."""

    def __init__(self, data: Any, what: str):
        self.what = what
        self.dataset = None
        if isinstance(data, torch.utils.data.Dataset) and not isinstance(data, tuple):
            self.dataset = data
            try:
                self.length = len(data)
            except TypeError:
                raise TrtoptError(f"{what} is a Dataset without a length", "give a map-style Dataset (with __len__)") from None
            self.inputs, self.labels = None, None
        else:
            if not isinstance(data, (tuple, list)) or len(data) != 2:
                raise TrtoptError(f"{what} must be (inputs, labels) or a torch Dataset, got {type(data).__name__}",
                                  "pass (inputs, labels) with labels None for unlabelled data")
            self.inputs = _map_tensors(data[0], _as_tensor)
            self.labels = None if data[1] is None else _as_tensor(data[1])
            sizes = {int(t.shape[0]) for t in _flat(self.inputs)} if _flat(self.inputs) else {0}
            if self.labels is not None:
                sizes.add(int(self.labels.shape[0]))
            if len(sizes) != 1:
                raise TrtoptError(f"{what}: inputs and labels have different sample counts {sorted(sizes)}",
                                  "give the same number of samples (axis 0) for every input and the labels")
            self.length = sizes.pop()
        if self.length == 0:
            raise TrtoptError(f"{what} is empty", "give at least one sample")

    def __len__(self) -> int:
        return self.length

    @property
    def labelled(self) -> bool:
        if self.dataset is None:
            return self.labels is not None
        return _split_item(self.dataset[0])[1] is not None

    def batch(self, indices: torch.Tensor) -> tuple[Any, torch.Tensor | None]:
        if self.dataset is None:
            return _map_tensors(self.inputs, lambda t: t[indices]), None if self.labels is None else self.labels[indices]
        items = [_split_item(self.dataset[int(i)]) for i in indices]
        inputs = _collate([x for x, _ in items])
        labels = [y for _, y in items]
        if all(y is None for y in labels):
            return inputs, None
        if any(y is None for y in labels):
            raise TrtoptError(f"{self.what} mixes labelled and unlabelled items", "label every item or none")
        return inputs, torch.as_tensor(np.asarray([int(y) for y in labels]), dtype=torch.int64)

def _split_item(item: Any) -> tuple[Any, Any]:
    if isinstance(item, (tuple, list)) and len(item) == 2:
        return item[0], item[1]
    raise TrtoptError(f"dataset items must be (inputs, label) pairs, got {type(item).__name__}",
                      "return (inputs, label) from __getitem__, with label None for unlabelled data")

def _collate(samples: list[Any]) -> Any:
    first = samples[0]
    if isinstance(first, Mapping):
        return {k: _collate([s[k] for s in samples]) for k in first}
    if isinstance(first, (tuple, list)):
        return tuple(_collate([s[i] for s in samples]) for i in range(len(first)))
    return torch.stack([_as_tensor(s) for s in samples])

def _as_tensor(x: Any) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x
    return torch.as_tensor(np.asarray(x))

def _map_tensors(inputs: Any, fn: Callable[[torch.Tensor], Any]) -> Any:
    if isinstance(inputs, Mapping):
        return {k: _map_tensors(v, fn) for k, v in inputs.items()}
    if isinstance(inputs, (tuple, list)):
        return tuple(_map_tensors(v, fn) for v in inputs)
    return fn(inputs)

def _flat(inputs: Any) -> list[torch.Tensor]:
    if isinstance(inputs, Mapping):
        return [t for v in inputs.values() for t in _flat(v)]
    if isinstance(inputs, (tuple, list)):
        return [t for v in inputs for t in _flat(v)]
    return [inputs]

def _call(model: nn.Module, inputs: Any) -> Any:
    if isinstance(inputs, Mapping):
        return model(**inputs)
    if isinstance(inputs, tuple):
        return model(*inputs)
    return model(inputs)

def _primary_output(out: Any, who: str) -> torch.Tensor:
    """The tensor to distill from a model's output: itself, ``.logits``, ``["logits"]`` or the first element."""
    if isinstance(out, torch.Tensor):
        return out
    if hasattr(out, "logits") and isinstance(out.logits, torch.Tensor):
        return out.logits
    if isinstance(out, Mapping):
        if "logits" in out:
            return out["logits"]
        out = list(out.values())
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
        return out[0]
    raise TrtoptError(f"the {who}'s output ({type(out).__name__}) holds no tensor to distill",
                      "return a tensor (logits or an embedding) from forward()")

@dataclass
class _Dist:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    created_group: bool = False

    @property
    def active(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

def _setup_distributed(config: DistillConfig) -> tuple[_Dist, torch.device]:
    import torch.distributed as dist

    world = int(os.environ.get("WORLD_SIZE", "1"))
    want_cuda = config.device == "cuda" or (config.device == "auto" and torch.cuda.is_available())
    if config.device == "cuda" and not torch.cuda.is_available():
        raise TrtoptError("distill.device='cuda' but no CUDA device is available", "use device 'cpu' or 'auto'")
    if config.ddp == "off" or world <= 1:
        return _Dist(), torch.device("cuda" if want_cuda else "cpu")
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device("cuda", local_rank) if want_cuda else torch.device("cpu")
    if want_cuda:
        torch.cuda.set_device(device)
    created = False
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if want_cuda else "gloo")
        created = True
    return _Dist(dist.get_rank(), dist.get_world_size(), local_rank, created), device

class _Projection(nn.Module):
    """Learned map from a student feature's channels to the teacher's (1×1 conv on 4-D maps, else linear)."""

    def __init__(self, student_channels: int, teacher_channels: int, conv: bool):
        super().__init__()
        self.conv = conv
        self.map = nn.Linear(student_channels, teacher_channels, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.conv:
            return self.map(x.movedim(1, -1)).movedim(-1, 1)
        return self.map(x)

class _StudentWithFeatures(nn.Module):
    """Student + feature projections in one module, so DDP sees (and averages) the projections' gradients.

    ``forward(inputs) -> (output, [projected student features])``.
    """

    def __init__(self, student: nn.Module, feature_names: Sequence[str], projections: nn.ModuleList):
        super().__init__()
        self.student = student
        self.projections = projections
        self._names = list(feature_names)
        self._captured: dict[str, torch.Tensor] = {}
        self._hooks = [_module(student, name, "student").register_forward_hook(self._hook(name))
                       for name in dict.fromkeys(self._names)]

    def _hook(self, name: str):
        def capture(_module, _inputs, output):
            self._captured[name] = _primary_output(output, "student")
        return capture

    def forward(self, inputs: Any) -> tuple[Any, list[torch.Tensor]]:
        self._captured = {}
        out = _call(self.student, inputs)
        feats = [proj(self._captured[name]) for name, proj in zip(self._names, self.projections)]
        return out, feats

    def remove_hooks(self) -> None:
        for h in self._hooks:
            h.remove()

def _module(model: nn.Module, name: str, who: str) -> nn.Module:
    try:
        return model.get_submodule(name)
    except AttributeError:
        names = [n for n, _ in model.named_modules() if n][:12]
        raise TrtoptError(f"the {who} has no module named {name!r}", f"use a name from named_modules(), e.g. {', '.join(names)}") from None

class _TeacherFeatures:
    def __init__(self, teacher: nn.Module, names: Sequence[str]):
        self.captured: dict[str, torch.Tensor] = {}
        self.hooks = [_module(teacher, n, "teacher").register_forward_hook(self._hook(n)) for n in dict.fromkeys(names)]

    def _hook(self, name: str):
        def capture(_module, _inputs, output):
            self.captured[name] = _primary_output(output, "teacher")
        return capture

    def remove(self) -> None:
        for h in self.hooks:
            h.remove()

def _channels(t: torch.Tensor) -> int:
    return int(t.shape[1] if t.dim() == 4 else t.shape[-1])

def _feature_mse(student_feats: list[torch.Tensor], teacher_feats: list[torch.Tensor], pairs) -> torch.Tensor:
    total = student_feats[0].new_zeros(())
    for (s_name, t_name), s, t in zip(pairs, student_feats, teacher_feats):
        if s.shape != t.shape:
            raise TrtoptError(f"feature {s_name!r} of the student has shape {tuple(s.shape)} after projection but the "
                              f"teacher's {t_name!r} has {tuple(t.shape)}", "pair modules whose outputs differ only in width")
        total = total + F.mse_loss(s, t.detach())
    return total / len(student_feats)

def _schedule(config: DistillConfig, total_steps: int) -> Callable[[int], float]:
    warm = config.warmup_steps

    def factor(step: int) -> float:  # step = optimizer steps done so far (LambdaLR's counter)
        if warm and step < warm:
            return (step + 1) / warm
        if config.scheduler == "none":
            return 1.0
        span = max(1, total_steps - warm)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, (step - warm) / span)))

    return factor

def _rng_state(device: torch.device) -> dict[str, Any]:
    state = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state

def _set_rng_state(state: Mapping[str, Any], device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)

def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Read a checkpoint written by `distill` (a file, or a directory holding ``last.pt``).

    Read with ``weights_only=True`` (a checkpoint cannot run code). Keys: format, step, epoch,
    batch_in_epoch, student, projections, optimizer, scheduler, rng, step_losses, epoch_losses,
    epoch_loss_sum, epoch_samples, eval_history, best_metric, best_step, best_state, bad_evals, config.

    Raises:
        TrtoptError: missing, unreadable, truncated or not a trtopt distillation checkpoint.
    """
    p = Path(path)
    if p.is_dir():
        p = p / "last.pt"
    if not p.is_file():
        raise TrtoptError(f"checkpoint {p} does not exist", "give a checkpoint file or a directory holding last.pt")
    try:
        state = torch.load(str(p), map_location="cpu", weights_only=True)
    except Exception as e:
        raise TrtoptError(f"checkpoint {p} cannot be read ({first_line(e, limit=120, with_type=True)})",
                          "it is corrupted or truncated: resume from another checkpoint or start afresh") from e
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise TrtoptError(f"{p} is not a trtopt distillation checkpoint", "give a last.pt or best.pt written by trtopt distill")
    return state

def _save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    import io

    from trtopt.files import atomic_output

    buffer = io.BytesIO()
    torch.save(state, buffer)
    with atomic_output(path, force=True) as tmp:
        tmp.write_bytes(buffer.getvalue())

def _zero_masks(student: nn.Module) -> list[tuple[torch.Tensor, torch.Tensor]]:
    masks = []
    for module in student.modules():
        if isinstance(module, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            weight = module.weight
            if (weight == 0).any():
                masks.append((weight, weight.ne(0).to(weight.dtype)))
    return masks

def _optimizer(config: DistillConfig, params: list[nn.Parameter]) -> torch.optim.Optimizer:
    if config.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    return torch.optim.SGD(params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)

def _config_dict(config: DistillConfig) -> dict[str, Any]:
    d = asdict(config)
    d["feature_pairs"] = [list(p) for p in config.feature_pairs]
    return d

def distill(student: nn.Module, teacher: nn.Module | None, train_data: Any, config: DistillConfig | None = None,
            eval_data: Any = None, metric: Metric | None = None,
            progress: Callable[[DistillProgress], None] | None = None) -> DistillResult:
    """Train ``student`` to match ``teacher`` on ``train_data`` (see the module docstring for data forms).

    Args:
        student: the model to train, modified in place (and returned in ``result.student``, eval mode,
            on the device it came on).
        teacher: the frozen reference, never updated; it is left in eval mode with ``requires_grad``
            off, on the training device. None only for plain fine-tuning (``alpha=1`` with labels, no
            feature pairs).
        train_data: ``(inputs, labels-or-None)`` or a Dataset of ``(inputs, label)`` items.
        config: `DistillConfig` (defaults when None).
        eval_data: same forms; evaluated every ``eval_every`` steps / epoch end with ``metric``.
        metric: ``metric(student_out, teacher_out, labels) -> float`` over the whole eval set (outputs
            concatenated; teacher_out None without a teacher). Default: `accuracy_metric` for logits
            with labels, `agreement_metric` for logits without, `cosine_metric` for embeddings.
        progress: called on rank 0 after every step with a `DistillProgress`; the library never prints.

    Returns:
        `DistillResult`. Side effects: checkpoints in ``config.checkpoint_dir`` (rank 0); under
        torchrun, a process group it created is destroyed before returning. The global RNG state of the
        caller is restored (training draws from a forked, seeded RNG).

    Raises:
        TrtoptError: see the module docstring.
    """
    config = config or DistillConfig()
    start_time = time.perf_counter()
    source = _Source(train_data, "training data")
    eval_source = None if eval_data is None else _Source(eval_data, "eval data")
    labelled = source.labelled
    if labelled and config.output_loss != "kl":
        raise TrtoptError(f"labels were given but output_loss={config.output_loss!r} treats outputs as embeddings, not logits",
                          "drop the labels (pure distillation) or use output_loss 'kl' for classifiers")
    if teacher is None and not (labelled and config.alpha == 1.0 and not config.feature_pairs):
        raise TrtoptError("no teacher given", "pass a teacher, or fine-tune with labels, alpha=1 and no feature pairs")
    if eval_source is not None and metric is None:
        metric = (accuracy_metric if eval_source.labelled else agreement_metric) if config.output_loss == "kl" else cosine_metric
    if teacher is None and metric in (agreement_metric, cosine_metric):
        raise TrtoptError("the eval metric compares with the teacher, but no teacher was given", "give eval labels or a teacher")
    resume_state = load_checkpoint(config.resume_from) if config.resume_from else None
    if resume_state is not None:
        _check_resume_config(resume_state, config)

    dist_info, device = _setup_distributed(config)
    home = next((p.device for p in student.parameters()), torch.device("cpu"))
    try:
        devices = [device] if device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(config.seed)
            result = _train(student, teacher, source, eval_source, metric, config, progress, dist_info, device, resume_state)
    finally:
        if dist_info.created_group:
            import torch.distributed as dist

            dist.destroy_process_group()
    result.student.to(home)
    result.seconds = round(time.perf_counter() - start_time, 3)
    return result

def _check_resume_config(state: Mapping[str, Any], config: DistillConfig) -> None:
    saved = state.get("config", {})
    now = _config_dict(config)
    for name in _RESUME_FIXED:
        if name in saved and saved[name] != now[name]:
            raise TrtoptError(f"the checkpoint was trained with {name}={saved[name]!r} but this run has {name}={now[name]!r}",
                              f"resume with the same {name}, or start afresh without resume_from")

def _train(student, teacher, source, eval_source, metric, config, progress, dist_info, device, resume_state):
    student.to(device)
    if teacher is not None:
        teacher.to(device).eval()
        for p in teacher.parameters():
            p.requires_grad_(False)
    world = dist_info.world_size
    if config.batch_size < world:
        raise TrtoptError(f"batch_size={config.batch_size} is smaller than the {world} DDP processes",
                          f"use a global batch of at least {world} samples")
    n = len(source)
    # A last batch too small to give every rank a sample is dropped (on every rank alike).
    full, rest = divmod(n, config.batch_size)
    steps_per_epoch = full + (1 if rest >= world else 0)
    if steps_per_epoch == 0:
        raise TrtoptError(f"the training data ({n} samples) is smaller than the {world} DDP processes", "give more samples")
    total_steps = steps_per_epoch * config.epochs if config.epochs is not None else config.max_steps
    if config.max_steps is not None:
        total_steps = min(total_steps, config.max_steps)

    # Feature projections: shapes come from one probe forward pass of both models on a first batch.
    pairs = config.feature_pairs
    teacher_feats = _TeacherFeatures(teacher, [t for _, t in pairs]) if pairs else None
    probe_inputs, _ = source.batch(torch.arange(min(2, n)))
    probe_inputs = _map_tensors(probe_inputs, lambda t: t.to(device))
    projections = nn.ModuleList()
    wrapper = _StudentWithFeatures(student, [s for s, _ in pairs], projections)
    was_training = student.training
    student.eval()
    with torch.no_grad():
        s_out = _primary_output(_call(student, probe_inputs), "student")
        if teacher is not None:
            t_out = _primary_output(_call(teacher, probe_inputs), "teacher")
            if s_out.shape != t_out.shape:
                raise TrtoptError(f"student output shape {tuple(s_out.shape)} differs from the teacher's {tuple(t_out.shape)}",
                                  "distill a student with the same output shape as the teacher (classes / embedding width)")
        for s_name, t_name in pairs:
            s_feat, t_feat = wrapper._captured[s_name], teacher_feats.captured[t_name]
            if s_feat.dim() != t_feat.dim():
                raise TrtoptError(f"feature {s_name!r} of the student is {s_feat.dim()}-D but the teacher's {t_name!r} is {t_feat.dim()}-D",
                                  "pair modules with outputs of the same rank")
            if _channels(s_feat) == _channels(t_feat):
                projections.append(nn.Identity())
            else:
                with torch.random.fork_rng(devices=[]):  # the same initial projection on every rank and run
                    torch.manual_seed(config.seed + len(projections))
                    projections.append(_Projection(_channels(s_feat), _channels(t_feat), s_feat.dim() == 4))
    projections.to(device)
    student.train(was_training)
    masks = _zero_masks(student) if config.keep_zeros else []

    model: nn.Module = wrapper
    if dist_info.active:
        from torch.nn.parallel import DistributedDataParallel

        model = DistributedDataParallel(wrapper, device_ids=[device.index] if device.type == "cuda" else None)
    params = [p for p in wrapper.parameters() if p.requires_grad]
    optimizer = _optimizer(config, params)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _schedule(config, total_steps))

    step, epoch, batch_in_epoch = 0, 0, 0
    step_losses: list[float] = []
    epoch_losses: list[float] = []
    eval_history: list[dict[str, Any]] = []
    epoch_loss_sum, epoch_samples = 0.0, 0
    best_metric: float | None = None
    best_step: int | None = None
    best_state: dict[str, torch.Tensor] | None = None
    bad_evals = 0
    if resume_state is not None:
        try:
            student.load_state_dict(resume_state["student"])
            projections.load_state_dict(resume_state["projections"])
            optimizer.load_state_dict(resume_state["optimizer"])
            scheduler.load_state_dict(resume_state["scheduler"])
        except (RuntimeError, KeyError, ValueError) as e:
            raise TrtoptError(f"checkpoint {config.resume_from} does not fit this student ({first_line(e, limit=160)})",
                              "resume with the same student architecture the checkpoint was written for") from None
        step, epoch, batch_in_epoch = resume_state["step"], resume_state["epoch"], resume_state["batch_in_epoch"]
        step_losses, epoch_losses = list(resume_state["step_losses"]), list(resume_state["epoch_losses"])
        eval_history = [dict(e) for e in resume_state["eval_history"]]
        epoch_loss_sum, epoch_samples = resume_state["epoch_loss_sum"], resume_state["epoch_samples"]
        best_metric, best_step = resume_state["best_metric"], resume_state["best_step"]
        best_state, bad_evals = resume_state["best_state"], resume_state["bad_evals"]
        _set_rng_state(resume_state["rng"], device)

    ckpt_dir = Path(config.checkpoint_dir) if config.checkpoint_dir else None
    checkpoints: dict[str, str] = {}
    teacher_eval = None
    if eval_source is not None and teacher is not None:
        teacher_eval = _predict(teacher, eval_source, config.eval_batch_size, device)

    def snapshot() -> dict[str, Any]:
        return {"format": CHECKPOINT_FORMAT, "step": step, "epoch": epoch, "batch_in_epoch": batch_in_epoch,
                "student": _cpu_state(student), "projections": _cpu_state(projections),
                "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "rng": _rng_state(device),
                "step_losses": step_losses, "epoch_losses": epoch_losses, "epoch_loss_sum": epoch_loss_sum,
                "epoch_samples": epoch_samples, "eval_history": eval_history, "best_metric": best_metric,
                "best_step": best_step, "best_state": best_state, "bad_evals": bad_evals,
                "config": _config_dict(config), "world_size": world}

    def write_last() -> None:
        if ckpt_dir is not None and dist_info.is_main:
            _save_checkpoint(ckpt_dir / "last.pt", snapshot())
            checkpoints["last"] = str(ckpt_dir / "last.pt")

    def evaluate() -> float:
        nonlocal best_metric, best_step, best_state, bad_evals
        s_out = _predict(student, eval_source, config.eval_batch_size, device)
        student.train()
        value = float(metric(s_out, teacher_eval, eval_source_labels))
        # 1-based epoch the step belongs to (batch_in_epoch is 0 right after an epoch's last step).
        eval_history.append({"step": step, "epoch": epoch if batch_in_epoch == 0 else epoch + 1, "metric": value})
        better = best_metric is None or (value - best_metric > config.min_delta if config.higher_is_better
                                         else best_metric - value > config.min_delta)
        if better:
            best_metric, best_step, bad_evals = value, step, 0
            best_state = _cpu_state(student)
            if ckpt_dir is not None and dist_info.is_main:
                _save_checkpoint(ckpt_dir / "best.pt", snapshot())
                checkpoints["best"] = str(ckpt_dir / "best.pt")
        else:
            bad_evals += 1
        return value

    eval_source_labels = None
    if eval_source is not None:
        eval_source_labels = eval_source.batch(torch.arange(len(eval_source)))[1] if eval_source.labelled else None
        if eval_source_labels is not None:
            eval_source_labels = eval_source_labels.to(device)

    stopped_early = False
    latest_metric = eval_history[-1]["metric"] if eval_history else None
    if config.patience is not None and bad_evals >= config.patience:
        stopped_early = True
    student.train()
    while step < total_steps and not stopped_early:
        generator = torch.Generator().manual_seed(config.seed * 1_000_003 + epoch)
        order = torch.randperm(n, generator=generator)
        while batch_in_epoch < steps_per_epoch and step < total_steps:
            global_idx = order[batch_in_epoch * config.batch_size:(batch_in_epoch + 1) * config.batch_size]
            local_idx = torch.tensor_split(global_idx, world)[dist_info.rank]
            inputs, labels = source.batch(local_idx)
            inputs = _map_tensors(inputs, lambda t: t.to(device, non_blocking=True))
            labels = None if labels is None else labels.to(device)
            loss = _step_loss(model, teacher, teacher_feats, inputs, labels, config)
            # Each rank's loss is a mean over its share; scale so DDP's gradient average is the global-batch mean.
            share = len(local_idx) / len(global_idx)
            optimizer.zero_grad(set_to_none=True)
            (loss * share * world).backward()
            global_loss = _global_loss(loss.detach() * share, dist_info)
            if not math.isfinite(global_loss):
                raise TrtoptError(f"the distillation loss became {global_loss} at step {step + 1}",
                                  "lower the learning rate, enable gradient clipping (grad_clip_norm), or check the inputs for NaN")
            if config.grad_clip_norm is not None:
                torch.nn.utils.clip_grad_norm_(params, config.grad_clip_norm)
            optimizer.step()
            scheduler.step()
            if masks:
                with torch.no_grad():
                    for weight, mask in masks:
                        weight.mul_(mask)
            step += 1
            batch_in_epoch += 1
            step_losses.append(global_loss)
            epoch_loss_sum += global_loss * len(global_idx)
            epoch_samples += len(global_idx)
            epoch_done = batch_in_epoch == steps_per_epoch
            if epoch_done:
                epoch_losses.append(epoch_loss_sum / epoch_samples)
                epoch, batch_in_epoch, epoch_loss_sum, epoch_samples = epoch + 1, 0, 0.0, 0
            evaluated = False
            if eval_source is not None and ((config.eval_every and step % config.eval_every == 0)
                                            or (not config.eval_every and epoch_done) or step == total_steps):
                latest_metric, evaluated = evaluate(), True
                if config.patience is not None and bad_evals >= config.patience:
                    stopped_early = True
            if epoch_done or step == total_steps or stopped_early or (config.checkpoint_every and step % config.checkpoint_every == 0):
                write_last()
            if progress is not None and dist_info.is_main:
                progress(DistillProgress(step, total_steps, epoch + (0 if epoch_done else 1), global_loss,
                                         float(scheduler.get_last_lr()[0]), latest_metric, evaluated))
            if stopped_early or epoch_done:
                break
    wrapper.remove_hooks()
    if teacher_feats is not None:
        teacher_feats.remove()
    if config.restore_best and best_state is not None:
        student.load_state_dict(best_state)
    student.eval()
    return DistillResult(student=student, steps=step, epochs_completed=epoch, step_losses=step_losses,
                         epoch_losses=epoch_losses, eval_history=eval_history, best_metric=best_metric,
                         best_step=best_step, stopped_early=stopped_early, checkpoints=checkpoints,
                         world_size=world, seconds=0.0, config=_config_dict(config))

def _cpu_state(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", copy=True) for k, v in module.state_dict().items()}

def _step_loss(model, teacher, teacher_feats, inputs, labels, config) -> torch.Tensor:
    out, s_feats = model(inputs)
    s_out = _primary_output(out, "student")
    t_out = None
    if teacher is not None and not (labels is not None and config.alpha == 1.0 and not config.feature_pairs):
        with torch.no_grad():
            t_out = _primary_output(_call(teacher, inputs), "teacher")
    if config.output_loss == "kl":
        if t_out is None:
            loss = F.cross_entropy(s_out.reshape(-1, s_out.shape[-1]), labels.reshape(-1))
        else:
            loss = kd_loss(s_out, t_out, labels, config.alpha, config.temperature)
    else:
        loss = embedding_loss(s_out, t_out, config.output_loss)
    if config.feature_pairs:
        t_feats = [teacher_feats.captured[t] for _, t in config.feature_pairs]
        loss = loss + config.feature_weight * _feature_mse(s_feats, t_feats, config.feature_pairs)
    return loss

def _global_loss(local: torch.Tensor, dist_info: _Dist) -> float:
    if dist_info.active:
        import torch.distributed as dist

        local = local.clone()
        dist.all_reduce(local)
    return float(local)

@torch.no_grad()
def _predict(model: nn.Module, source: _Source, batch_size: int, device: torch.device) -> torch.Tensor:
    """Outputs of ``model`` (eval mode) on every sample of ``source``, concatenated, on ``device``."""
    model.eval()
    outs = []
    for start in range(0, len(source), batch_size):
        inputs, _ = source.batch(torch.arange(start, min(start + batch_size, len(source))))
        outs.append(_primary_output(_call(model, _map_tensors(inputs, lambda t: t.to(device))), "model"))
    return torch.cat(outs)
