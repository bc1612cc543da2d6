"""Knowledge distillation: a (pruned, factorized, shared or smaller) *student* learns to reproduce a frozen *teacher*.

The stage is a plain function, ``distill(student, teacher, train_data, config) -> DistillResult``; it
validates its arguments and drives `trtopt.compress.trainer.Trainer` (one process or ``torchrun``/DDP,
checkpoints, bit-for-bit resume). This module imports torch, so import it on use (``import trtopt``
stays light).

Public API (stable)::

    distill(student, teacher, train_data, config, eval_data=None, metric=None, progress=None) -> DistillResult
    DistillResult                       # .student (eval mode), .step_losses, .epoch_losses, .eval_history,
                                        # .best_metric, .best_step, .stopped_early, .checkpoints, .to_dict()
    accuracy_metric, agreement_metric, cosine_metric   # metric(student_out, teacher_out, labels) -> float
    DistillConfig                       # trtopt.compress.config: frozen, validated; fields documented there
    kd_loss, embedding_loss             # trtopt.compress.losses
    DistillProgress, load_checkpoint    # trtopt.compress.trainer: the progress record; read a checkpoint

The loss (DESIGN.md; `trtopt.compress.losses.kd_loss`)::

    L = α · CE(student, labels) + (1 − α) · T² · KL(softmax(teacher / T) ‖ softmax(student / T))

The seed article writes KL(student, teacher) without T²; trtopt implements Hinton et al.'s standard form
(the T² factor keeps the soft-target gradients at the same scale as T changes). Without labels the loss is
pure KD (T² · KL, α ignored); with ``alpha=1`` and labels it is plain fine-tuning (CE only; the teacher
may then be ``None``).

Models whose output is an embedding rather than logits (a sentence encoder such as ``zoo:minilm_l6``)
use ``DistillConfig(output_loss="cosine")`` (mean 1 − cosine similarity to the teacher's output) or
``"mse"``; labels make no sense there and are refused. An optional intermediate-feature loss adds
``feature_weight · mean_pairs MSE(proj(student_feature), teacher_feature)`` for pairs of module names
(``DistillConfig(feature_pairs=(("conv2", "conv2"),))``); when the widths differ (a pruned student has
fewer channels) a learned projection maps the student's channels (axis 1 of 4-D conv maps, the last
axis otherwise) to the teacher's, trained with the student and saved in checkpoints.

Training data (``train_data`` and ``eval_data``), one of (`trtopt.compress.data_source`):

- ``(inputs, labels)``: ``inputs`` a tensor / numpy array (one model input), a tuple or list of them
  (positional inputs), or a dict name → array (keyword inputs: ``{"input_ids": ..., "attention_mask": ...}``
  for ``zoo:minilm_l6``, whose ``forward(input_ids, attention_mask)`` takes them by name); samples on
  axis 0; ``labels`` an int64 array (N,) or ``None`` (unlabelled, pure KD);
- a ``torch.utils.data.Dataset`` whose items are ``(inputs, label)`` pairs with per-sample inputs in
  any of the forms above and ``label`` an int, a 0-d tensor, or ``None``.

Batches are drawn in a seeded order (a fresh permutation per epoch from ``config.seed`` and the epoch
number, so a resumed run draws the same batches); the last batch may be smaller.

Scale-out: started by ``torchrun --nproc_per_node=N``, ``distill`` joins (or creates) the process group,
wraps the student in DistributedDataParallel and splits every *global* batch of ``config.batch_size``
samples across the ranks, so the loss curve is the one-process curve up to float summation order.
BatchNorm statistics are per rank (on CPU); dropout draws differ per rank. Every rank evaluates; only
rank 0 writes checkpoints and calls ``progress``; the group ``distill`` created is destroyed before it
returns.

Checkpoints (``config.checkpoint_dir``): ``last.pt`` after every epoch (and every
``checkpoint_every`` steps), ``best.pt`` when the eval metric improves; each written atomically and
holding the student and projection weights, optimizer, scheduler, RNG states and the
`trtopt.compress.trainer.TrainerState` (step, epoch, histories, early-stopping state).
``DistillConfig(resume_from=DIR or FILE)`` continues exactly where the checkpoint stopped: a run
interrupted and resumed gives the same weights, bit for bit (same machine, same thread count), as one
that ran straight through. The fields that change the training math (α, T, losses, batch size,
optimizer, learning rate and schedule, seed, ...) must match the checkpoint's; ``epochs`` /
``max_steps`` may grow to train longer (with the cosine schedule that also stretches what is left of it).
A student with zeroed weights (unstructured or 2:4 pruning) can keep its zeros fixed during training
with ``keep_zeros=True``; a 2:4-sparse student keeps its 2:4 pattern by default (``keep_zeros=None``).
Under DDP, student parameters the loss doesn't reach (an auxiliary head) are found by a probe backward
pass and DDP is told (``find_unused_parameters``), instead of failing in DDP's reducer.

Errors are `TrtoptError` with one line naming the problem: mismatched teacher/student output shapes
(both named), α outside [0, 1], T ≤ 0, labels with embedding outputs, an unreadable checkpoint, empty
training data, a loss that becomes NaN/inf (naming the step).
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np
import torch
from torch import nn

from trtopt import metrics
from trtopt.compress.config import DistillConfig
from trtopt.compress.data_source import DataSource, predict
from trtopt.compress.trainer import (
    DistillProgress,
    Metric,
    Trainer,
    check_resume_config,
    config_dict,
    load_checkpoint,
    setup_distributed,
)
from trtopt.errors import TrtoptError


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

def fidelity_probe(reference: nn.Module, data: Any, embeddings: bool,
                   batch_size: int = 32) -> Callable[[nn.Module], dict[str, Any]]:
    """A measure of how closely a compressed model reproduces ``reference`` on ``data``: ``probe(model) -> dict``.

    The reference's outputs are computed once (CPU); each call runs ``model`` on the same samples and
    returns the task metric by output kind:

    - logits: ``{"metric": "top1_agreement", "value": fraction in [0, 1] of samples whose top-1 class
      equals the reference's, "drop": 1 - value}``; with labelled data also ``accuracy``,
      ``reference_accuracy`` and ``"drop": reference_accuracy - accuracy`` (top-1, in [0, 1]);
    - embeddings: ``{"metric": "cosine", "value": mean per-sample cosine similarity, "drop": 1 - value}``.

    Every result also has ``samples`` and ``output_rel_error`` = ||y - y_ref||_F / ||y_ref||_F over all
    outputs (a continuous measure for ranking layers; zero for an identical model).

    Args:
        reference: the original model (not modified; put in eval mode).
        data: ``(inputs, labels-or-None)`` or a Dataset, as `distill` takes it.
        embeddings: the outputs are embeddings (cosine) rather than logits (agreement / accuracy).
        batch_size: samples per forward pass.

    Raises:
        TrtoptError: unusable data (see `trtopt.compress.data_source.DataSource`); labels with embeddings.
    """
    source = DataSource(data, "evaluation data")
    if embeddings and source.labelled:
        raise TrtoptError("labels were given for a model whose output is an embedding", "drop the labels")
    cpu = torch.device("cpu")
    ref = predict(reference, source, batch_size, cpu).float()
    labels = source.labels
    ref_accuracy = None if labels is None else accuracy_metric(ref, None, labels)

    def probe(model: nn.Module) -> dict[str, Any]:
        out = predict(model, source, batch_size, cpu).float()
        rel = float(torch.linalg.norm(out - ref) / torch.linalg.norm(ref).clamp(min=1e-30))
        if embeddings:
            value = cosine_metric(out, ref, None)
            return {"metric": "cosine", "value": value, "drop": 1.0 - value, "samples": len(source),
                    "output_rel_error": rel}
        value = agreement_metric(out, ref, None)
        result = {"metric": "top1_agreement", "value": value, "drop": 1.0 - value, "samples": len(source),
                  "output_rel_error": rel}
        if ref_accuracy is not None:
            accuracy = accuracy_metric(out, None, labels)
            result.update(accuracy=accuracy, reference_accuracy=ref_accuracy, drop=ref_accuracy - accuracy)
        return result

    return probe


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
    source = DataSource(train_data, "training data")
    eval_source = None if eval_data is None else DataSource(eval_data, "eval data")
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
        check_resume_config(resume_state, config)

    dist_info, device = setup_distributed(config)
    home = next((p.device for p in student.parameters()), torch.device("cpu"))
    try:
        devices = [device] if device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(config.seed)
            trainer = Trainer(student, teacher, source, config, dist_info, device)
            if resume_state is not None:
                trainer.restore(resume_state)
            trainer.fit(eval_source, metric, progress)
            trained = trainer.finish()
    finally:
        if dist_info.created_group:
            import torch.distributed as dist

            dist.destroy_process_group()
    state = trainer.state
    return DistillResult(student=trained.to(home), steps=state.step, epochs_completed=state.epoch,
                         step_losses=state.step_losses, epoch_losses=state.epoch_losses, eval_history=state.eval_history,
                         best_metric=state.best_metric, best_step=state.best_step, stopped_early=trainer.stopped_early,
                         checkpoints=trainer.checkpoints, world_size=dist_info.world_size,
                         seconds=round(time.perf_counter() - start_time, 3), config=config_dict(config))
