"""The distillation trainer: one process or ``torchrun`` (DDP), checkpoints, bit-for-bit resume.

`trtopt.compress.distill.distill` validates its arguments and drives a :class:`Trainer`; this module holds
the training itself:

- :class:`TrainerState`: everything that changes as training runs (step, epoch, position in the epoch,
  loss and eval histories, early-stopping state). It is the one definition of a checkpoint's keys:
  :meth:`TrainerState.to_checkpoint` writes them with the weights, optimizer, scheduler and RNG states,
  :meth:`TrainerState.from_checkpoint` reads them back.
- :class:`Trainer`: builds the feature projections, DDP wrapper, optimizer and schedule for a student,
  then runs the loop (:meth:`Trainer.fit`) step by step: draw the batch, take an optimizer step, record
  the loss, evaluate when due, write ``last.pt``/``best.pt`` when due, report progress.

Batches are drawn in a seeded order (a fresh permutation per epoch from ``config.seed`` and the epoch
number, so a resumed run draws the same batches); the last batch may be smaller, and one too small to
give every DDP rank a sample is dropped.

Scale-out: started by ``torchrun --nproc_per_node=N`` (RANK / WORLD_SIZE / LOCAL_RANK set),
:func:`setup_distributed` initializes the process group (gloo on CPU, nccl on CUDA; a group the caller
already created is used and left alone); the student is wrapped in DistributedDataParallel and every
*global* batch of ``config.batch_size`` samples is split across the ranks; each rank scales its loss by
its share of the batch, so the averaged gradient equals the one-process gradient of the same global
batch (same loss curve up to float summation order). Evaluation runs on every rank on the whole eval set
(so all ranks take the same early-stopping decision); only rank 0 writes checkpoints and calls
``progress``.

Checkpoints are written atomically, read with ``weights_only=True`` (a checkpoint cannot run code), and
tagged with :data:`CHECKPOINT_FORMAT`. A resumed run restores the weights, projections, optimizer,
scheduler, RNG state and :class:`TrainerState`, so it gives the same weights, bit for bit (same machine,
same thread count), as one that ran straight through.

Imports torch: import this module lazily.
"""

from __future__ import annotations

import contextlib
import copy
import io
import math
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
from torch import nn

from trtopt.compress.config import DistillConfig
from trtopt.compress.data_source import DataSource, call_model, map_tensors, predict, primary_output
from trtopt.compress.losses import embedding_loss, feature_mse, kd_loss
from trtopt.compress.sparsity import holds_2to4, weight_layers
from trtopt.errors import TrtoptError, first_line
from trtopt.models.torch_file import read_plain

CHECKPOINT_FORMAT = "trtopt-distill-checkpoint/1"

# Config fields that change the training math: a resumed run must use the same values.
RESUME_FIXED = ("alpha", "temperature", "output_loss", "batch_size", "lr", "weight_decay", "optimizer", "momentum",
                "scheduler", "warmup_steps", "feature_pairs", "feature_weight", "seed", "grad_clip_norm", "keep_zeros")

Metric = Callable[[torch.Tensor, "torch.Tensor | None", "torch.Tensor | None"], float]

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
class TrainerState:
    """What changes as training runs; with the weights, optimizer, scheduler and RNG it is a checkpoint.

    Attributes:
        step: optimizer steps done (global, all epochs).
        epoch: whole epochs done.
        batch_in_epoch: batches done in the current epoch (0 right after an epoch's last step).
        step_losses: every step's global-batch loss (index i = step i + 1).
        epoch_losses: sample-weighted mean loss of each completed epoch.
        epoch_loss_sum / epoch_samples: running sums of the current epoch (loss × samples, samples).
        eval_history: one ``{"step", "epoch" (1-based), "metric"}`` per evaluation.
        best_metric / best_step / best_state: the best evaluation and the student's weights then (CPU).
        bad_evals: evaluations in a row without an improvement (early stopping counts them).
    """

    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0
    step_losses: list[float] = field(default_factory=list)
    epoch_losses: list[float] = field(default_factory=list)
    epoch_loss_sum: float = 0.0
    epoch_samples: int = 0
    eval_history: list[dict[str, Any]] = field(default_factory=list)
    best_metric: float | None = None
    best_step: int | None = None
    best_state: dict[str, torch.Tensor] | None = None
    bad_evals: int = 0

    def to_checkpoint(self, student: nn.Module, projections: nn.Module, optimizer: torch.optim.Optimizer,
                      scheduler: Any, device: torch.device, config: DistillConfig, world_size: int) -> dict[str, Any]:
        """This state plus what it needs to resume, as the dict `save_checkpoint` writes.

        Keys: ``format``, every field of this class, ``student`` and ``projections`` (CPU state dicts),
        ``optimizer``, ``scheduler``, ``rng`` (torch's, and the device's on CUDA), ``config`` (as a dict)
        and ``world_size``. Only plain containers and tensors, so ``torch.load(weights_only=True)`` reads it.
        """
        return {"format": CHECKPOINT_FORMAT, **{f.name: getattr(self, f.name) for f in fields(self)},
                "student": cpu_state(student), "projections": cpu_state(projections),
                "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "rng": _rng_state(device),
                "config": config_dict(config), "world_size": world_size}

    @classmethod
    def from_checkpoint(cls, checkpoint: Mapping[str, Any]) -> TrainerState:
        """The state stored in a checkpoint dict (as `load_checkpoint` returns it); copies, never aliases it.

        Raises:
            TrtoptError: a key is missing (a truncated or foreign checkpoint).
        """
        missing = [f.name for f in fields(cls) if f.name not in checkpoint]
        if missing:
            raise TrtoptError(f"the checkpoint lacks {', '.join(missing)}", "resume from a checkpoint written by trtopt distill")
        return cls(**{f.name: copy.deepcopy(checkpoint[f.name]) for f in fields(cls)})

@contextlib.contextmanager
def frozen_batchnorm(model: nn.Module, everything: bool = False) -> Iterator[nn.Module]:
    """Within the block, every BatchNorm layer of ``model`` runs in eval mode (its running statistics used,
    never updated), also while the model trains: fine-tuning on a few samples or small batches should keep
    the original's normalization (and, for fake-quantized models, the ranges calibrated with it) rather than
    re-estimate it. The layers' weights and biases still train. ``everything``: every module runs in eval
    mode (dropout and stochastic depth off too), so a pretrained model's training forward equals its
    inference forward. Yields ``model``."""
    hooks = [m.register_forward_pre_hook(lambda mod, _a: setattr(mod, "training", False))
             for m in model.modules() if everything or isinstance(m, nn.modules.batchnorm._BatchNorm)]
    try:
        yield model
    finally:
        for hook in hooks:
            hook.remove()


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Read a checkpoint written by `distill` (a file, or a directory holding ``last.pt``).

    Read with ``weights_only=True`` (a checkpoint cannot run code). Keys: see
    :meth:`TrainerState.to_checkpoint`.

    Raises:
        TrtoptError: missing, unreadable, truncated or not a trtopt distillation checkpoint.
    """
    p = Path(path)
    if p.is_dir():
        p = p / "last.pt"
    if not p.is_file():
        raise TrtoptError(f"checkpoint {p} does not exist", "give a checkpoint file or a directory holding last.pt")
    state = read_plain(p, "checkpoint", "it is corrupted or truncated: resume from another checkpoint or start afresh")
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise TrtoptError(f"{p} is not a trtopt distillation checkpoint", "give a last.pt or best.pt written by trtopt distill")
    return state

def check_checkpoint_dir(path: str | os.PathLike) -> None:
    """Refuse, before any work, a checkpoint folder the checkpoints ``last.pt`` / ``best.pt`` cannot be written
    into (a file, a path below one) or whose ``last.pt`` / ``best.pt`` trtopt did not write: they would be replaced
    (a missing folder is fine: it is created).

    Raises:
        TrtoptError: naming the path and the file that would be replaced.
    """
    from trtopt.files import check_outputs

    names = ("last.pt", "best.pt")
    check_outputs([Path(path) / n for n in names], True)
    for name in names:
        target = Path(path) / name
        if target.exists():
            try:
                load_checkpoint(target)
            except TrtoptError:
                raise TrtoptError(f"checkpoint folder {path} holds a {name} that is not a trtopt checkpoint (it would be "
                                  "replaced)", "choose another --checkpoint-dir, or move that file away") from None

def save_checkpoint(path: Path, checkpoint: dict[str, Any]) -> None:
    """Write ``checkpoint`` to ``path`` atomically (serialized in memory first, then one rename)."""
    from trtopt.files import atomic_output

    buffer = io.BytesIO()
    torch.save(checkpoint, buffer)
    with atomic_output(path, force=True) as tmp:
        tmp.write_bytes(buffer.getvalue())

def check_resume_config(checkpoint: Mapping[str, Any], config: DistillConfig) -> None:
    """Refuse to resume with a config whose training math (`RESUME_FIXED`) differs from the checkpoint's."""
    saved = checkpoint.get("config", {})
    now = config_dict(config)
    for name in RESUME_FIXED:
        if name in saved and saved[name] != now[name]:
            raise TrtoptError(f"the checkpoint was trained with {name}={saved[name]!r} but this run has {name}={now[name]!r}",
                              f"resume with the same {name}, or start afresh without resume_from")

def config_dict(config: DistillConfig) -> dict[str, Any]:
    """The config as JSON-ready data (feature pairs as lists, as JSON and checkpoints hold them)."""
    d = asdict(config)
    d["feature_pairs"] = [list(p) for p in config.feature_pairs]
    return d

def cpu_state(module: nn.Module) -> dict[str, torch.Tensor]:
    """A copy of ``module``'s state dict on the CPU (unaffected by later training steps)."""
    return {k: v.detach().to("cpu", copy=True) for k, v in module.state_dict().items()}

@dataclass
class Distributed:
    """This process's place in a DDP run (rank 0 of 1 without one)."""

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

def setup_distributed(config: DistillConfig) -> tuple[Distributed, torch.device]:
    """Join the process group ``torchrun`` set up (creating it if needed) and pick the training device.

    Raises:
        TrtoptError: ``config.device == "cuda"`` without a CUDA device.
    """
    import torch.distributed as dist

    world = int(os.environ.get("WORLD_SIZE", "1"))
    want_cuda = config.device == "cuda" or (config.device == "auto" and torch.cuda.is_available())
    if config.device == "cuda" and not torch.cuda.is_available():
        raise TrtoptError("distill.device='cuda' but no CUDA device is available", "use device 'cpu' or 'auto'")
    if config.ddp == "off" or world <= 1:
        return Distributed(), torch.device("cuda" if want_cuda else "cpu")
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device("cuda", local_rank) if want_cuda else torch.device("cpu")
    if want_cuda:
        torch.cuda.set_device(device)
    created = False
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if want_cuda else "gloo")
        created = True
    return Distributed(dist.get_rank(), dist.get_world_size(), local_rank, created), device

class Trainer:
    """One training run of a student: set up in the constructor, restored by :meth:`restore`, run by :meth:`fit`.

    Args:
        student: trained in place, moved to ``device``.
        teacher: frozen (eval mode, ``requires_grad`` off, on ``device``), or None for plain fine-tuning.
        source: the training data.
        config: the run's settings.
        dist_info / device: from :func:`setup_distributed`.

    Raises:
        TrtoptError: fewer samples or a smaller batch than DDP processes; student and teacher outputs of
            different shapes; a feature pair naming a missing module or outputs of different ranks.
    """

    def __init__(self, student: nn.Module, teacher: nn.Module | None, source: DataSource, config: DistillConfig,
                 dist_info: Distributed, device: torch.device):
        self.student, self.teacher, self.source, self.config = student, teacher, source, config
        self.dist, self.device = dist_info, device
        student.to(device)
        if teacher is not None:
            teacher.to(device).eval()
            for p in teacher.parameters():
                p.requires_grad_(False)
        self.steps_per_epoch, self.total_steps = _schedule_length(len(source), config, dist_info.world_size)
        self.teacher_feats = _TeacherFeatures(teacher, [t for _, t in config.feature_pairs]) if config.feature_pairs else None
        self.projections = nn.ModuleList()
        self.wrapper = _StudentWithFeatures(student, [s for s, _ in config.feature_pairs], self.projections)
        self._build_projections()
        self.masks = _zero_masks(student, only_2to4=config.keep_zeros is None) if config.keep_zeros is not False else []
        self.model: nn.Module = self.wrapper
        self.unused_parameters: list[str] = []
        if dist_info.active:
            from torch.nn.parallel import DistributedDataParallel

            find_unused = config.find_unused_parameters
            if find_unused is None:
                self.unused_parameters = self._parameters_without_gradient()
                find_unused = bool(self.unused_parameters)
            self.model = DistributedDataParallel(self.wrapper, device_ids=[device.index] if device.type == "cuda" else None,
                                                 find_unused_parameters=find_unused)
        self.params = [p for p in self.wrapper.parameters() if p.requires_grad]
        self.optimizer = _optimizer(config, self.params)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, _schedule(config, self.total_steps))
        self.state = TrainerState()
        self.checkpoint_dir = Path(config.checkpoint_dir) if config.checkpoint_dir else None
        if self.checkpoint_dir is not None and self.dist.is_main:
            check_checkpoint_dir(self.checkpoint_dir)
        self.checkpoints: dict[str, str] = {}
        self.stopped_early = False

    def _build_projections(self) -> None:
        """One learned projection per feature pair whose widths differ (Identity otherwise).

        Widths come from one probe forward pass of both models (eval mode) on the first samples; the
        probe also checks that student and teacher outputs have the same shape.
        """
        config, student, teacher = self.config, self.student, self.teacher
        probe_inputs, _ = self.source.batch(torch.arange(min(2, len(self.source))))
        probe_inputs = map_tensors(probe_inputs, lambda t: t.to(self.device))
        was_training = student.training
        student.eval()
        with torch.no_grad():
            s_out = primary_output(call_model(student, probe_inputs), "student")
            if teacher is not None:
                t_out = primary_output(call_model(teacher, probe_inputs), "teacher")
                if s_out.shape != t_out.shape:
                    raise TrtoptError(f"student output shape {tuple(s_out.shape)} differs from the teacher's {tuple(t_out.shape)}",
                                      "distill a student with the same output shape as the teacher (classes / embedding width)")
            for s_name, t_name in config.feature_pairs:
                s_feat, t_feat = self.wrapper.captured[s_name], self.teacher_feats.captured[t_name]
                if s_feat.dim() != t_feat.dim():
                    raise TrtoptError(f"feature {s_name!r} of the student is {s_feat.dim()}-D but the teacher's {t_name!r} "
                                      f"is {t_feat.dim()}-D", "pair modules with outputs of the same rank")
                if _channels(s_feat) == _channels(t_feat):
                    self.projections.append(nn.Identity())
                else:
                    with torch.random.fork_rng(devices=[]):  # the same initial projection on every rank and run
                        torch.manual_seed(config.seed + len(self.projections))
                        self.projections.append(_Projection(_channels(s_feat), _channels(t_feat), s_feat.dim() == 4))
        self.projections.to(self.device)
        student.train(was_training)

    def _parameters_without_gradient(self) -> list[str]:
        """Names of the trainable student parameters the training loss does not reach, from one probe forward
        and backward pass on the first samples (train mode; RNG state and buffers such as BatchNorm statistics
        are restored, no ``.grad`` is written). DDP needs ``find_unused_parameters`` when there are any."""
        names = {p: n for n, p in self.wrapper.named_parameters() if p.requires_grad}
        inputs, labels = self.source.batch(torch.arange(min(2, len(self.source))))
        inputs = map_tensors(inputs, lambda t: t.to(self.device))
        labels = None if labels is None else labels.to(self.device)
        buffers = {n: b.detach().clone() for n, b in self.wrapper.named_buffers()}
        was_training = self.wrapper.training
        self.wrapper.train()
        try:
            with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
                loss = _step_loss(self.wrapper, self.teacher, self.teacher_feats, inputs, labels, self.config)
                grads = torch.autograd.grad(loss, list(names), allow_unused=True)
        finally:
            with torch.no_grad():
                for n, b in self.wrapper.named_buffers():
                    b.copy_(buffers[n])
            self.wrapper.train(was_training)
        return [names[p] for p, g in zip(names, grads, strict=True) if g is None]

    def restore(self, checkpoint: Mapping[str, Any]) -> None:
        """Continue from ``checkpoint`` (`load_checkpoint`'s dict): weights, optimizer, schedule, RNG, state.

        Raises:
            TrtoptError: the checkpoint's weights do not fit this student (another architecture); the checkpoint
                is past this run's ``total_steps``.
        """
        try:
            self.student.load_state_dict(checkpoint["student"])
            self.projections.load_state_dict(checkpoint["projections"])
            self.optimizer.load_state_dict(checkpoint["optimizer"])
            self.scheduler.load_state_dict(checkpoint["scheduler"])
        except (RuntimeError, KeyError, ValueError) as e:
            raise TrtoptError(f"checkpoint {self.config.resume_from} does not fit this student ({first_line(e, limit=160)})",
                              "resume with the same student architecture the checkpoint was written for") from None
        state = TrainerState.from_checkpoint(checkpoint)
        if state.step > self.total_steps:  # nothing would train: the longer run's student would be returned as this one
            raise TrtoptError(f"checkpoint {self.config.resume_from} is at step {state.step}, past this run's "
                              f"{self.total_steps} steps",
                              f"give at least {state.step} steps (max_steps/epochs), or start afresh without resume_from")
        self.state = state
        _set_rng_state(checkpoint["rng"], self.device)

    def fit(self, eval_source: DataSource | None, metric: Metric | None,
            progress: Callable[[DistillProgress], None] | None) -> None:
        """Train until ``total_steps`` or until early stopping; evaluates with ``metric`` on ``eval_source``."""
        config, state = self.config, self.state
        evaluator = None if eval_source is None else _Evaluator(eval_source, metric, self.teacher, config, self.device)
        latest_metric = state.eval_history[-1]["metric"] if state.eval_history else None
        self.stopped_early = self._patience_spent()
        self.student.train()
        while state.step < self.total_steps and not self.stopped_early:
            order = torch.randperm(len(self.source), generator=torch.Generator().manual_seed(config.seed * 1_000_003 + state.epoch))
            while state.batch_in_epoch < self.steps_per_epoch and state.step < self.total_steps:
                start = state.batch_in_epoch * config.batch_size
                global_idx = order[start:start + config.batch_size]
                loss = self._train_step(global_idx)
                epoch_done = self._record_step(loss, len(global_idx))
                evaluated = evaluator is not None and self._evaluation_due(epoch_done)
                if evaluated:
                    latest_metric = self._evaluate(evaluator)
                    self.stopped_early = self._patience_spent()
                if epoch_done or state.step == self.total_steps or self.stopped_early or (
                        config.checkpoint_every and state.step % config.checkpoint_every == 0):
                    self._save("last")
                if progress is not None and self.dist.is_main:
                    progress(DistillProgress(state.step, self.total_steps, state.epoch + (0 if epoch_done else 1), loss,
                                             float(self.scheduler.get_last_lr()[0]), latest_metric, evaluated))
                if self.stopped_early or epoch_done:
                    break

    def _train_step(self, global_idx: torch.Tensor) -> float:
        """One optimizer step on this rank's share of a global batch; returns the global batch's loss.

        Raises:
            TrtoptError: the loss is NaN or infinite (the step is named).
        """
        world = self.dist.world_size
        local_idx = torch.tensor_split(global_idx, world)[self.dist.rank]
        inputs, labels = self.source.batch(local_idx)
        inputs = map_tensors(inputs, lambda t: t.to(self.device, non_blocking=True))
        labels = None if labels is None else labels.to(self.device)
        loss = _step_loss(self.model, self.teacher, self.teacher_feats, inputs, labels, self.config)
        # Each rank's loss is a mean over its share; scale so DDP's gradient average is the global-batch mean.
        share = len(local_idx) / len(global_idx)
        self.optimizer.zero_grad(set_to_none=True)
        (loss * share * world).backward()
        global_loss = _global_loss(loss.detach() * share, self.dist)
        if not math.isfinite(global_loss):
            raise TrtoptError(f"the distillation loss became {global_loss} at step {self.state.step + 1}",
                              "lower the learning rate, enable gradient clipping (grad_clip_norm), or check the inputs for NaN")
        if self.config.grad_clip_norm is not None:
            torch.nn.utils.clip_grad_norm_(self.params, self.config.grad_clip_norm)
        self.optimizer.step()
        self.scheduler.step()
        if self.masks:
            with torch.no_grad():
                for weight, mask in self.masks:
                    weight.mul_(mask)
        return global_loss

    def _record_step(self, loss: float, samples: int) -> bool:
        """Count the step and its loss; True when it completed an epoch."""
        state = self.state
        state.step += 1
        state.batch_in_epoch += 1
        state.step_losses.append(loss)
        state.epoch_loss_sum += loss * samples
        state.epoch_samples += samples
        if state.batch_in_epoch < self.steps_per_epoch:
            return False
        state.epoch_losses.append(state.epoch_loss_sum / state.epoch_samples)
        state.epoch, state.batch_in_epoch, state.epoch_loss_sum, state.epoch_samples = state.epoch + 1, 0, 0.0, 0
        return True

    def _evaluation_due(self, epoch_done: bool) -> bool:
        """Every ``eval_every`` steps (or at each epoch's end without it), and after the last step."""
        every, step = self.config.eval_every, self.state.step
        return bool((every and step % every == 0) or (not every and epoch_done) or step == self.total_steps)

    def _evaluate(self, evaluator: _Evaluator) -> float:
        """Score the student, record it, keep the best weights (and ``best.pt``); returns the metric."""
        state, config = self.state, self.config
        value = evaluator(self.student)
        self.student.train()
        # 1-based epoch the step belongs to (batch_in_epoch is 0 right after an epoch's last step).
        state.eval_history.append({"step": state.step, "epoch": state.epoch if state.batch_in_epoch == 0 else state.epoch + 1,
                                   "metric": value})
        better = state.best_metric is None or (value - state.best_metric > config.min_delta if config.higher_is_better
                                               else state.best_metric - value > config.min_delta)
        if not better:
            state.bad_evals += 1
            return value
        state.best_metric, state.best_step, state.bad_evals = value, state.step, 0
        state.best_state = cpu_state(self.student)
        self._save("best")
        return value

    def _patience_spent(self) -> bool:
        return self.config.patience is not None and self.state.bad_evals >= self.config.patience

    def _save(self, name: str) -> None:
        """Write ``<checkpoint_dir>/<name>.pt`` (rank 0, when a checkpoint folder is set)."""
        if self.checkpoint_dir is None or not self.dist.is_main:
            return
        path = self.checkpoint_dir / f"{name}.pt"
        save_checkpoint(path, self.state.to_checkpoint(self.student, self.projections, self.optimizer, self.scheduler,
                                                       self.device, self.config, self.dist.world_size))
        self.checkpoints[name] = str(path)

    def finish(self) -> nn.Module:
        """Remove the feature hooks, load the best weights when ``restore_best``; the student in eval mode."""
        self.wrapper.remove_hooks()
        if self.teacher_feats is not None:
            self.teacher_feats.remove()
        if self.config.restore_best and self.state.best_state is not None:
            self.student.load_state_dict(self.state.best_state)
        self.student.eval()
        return self.student

def _schedule_length(samples: int, config: DistillConfig, world: int) -> tuple[int, int]:
    """(steps per epoch, total steps). A last batch too small to give every rank a sample is dropped."""
    if config.batch_size < world:
        raise TrtoptError(f"batch_size={config.batch_size} is smaller than the {world} DDP processes",
                          f"use a global batch of at least {world} samples")
    full, rest = divmod(samples, config.batch_size)
    steps_per_epoch = full + (1 if rest >= world else 0)
    if steps_per_epoch == 0:
        raise TrtoptError(f"the training data ({samples} samples) is smaller than the {world} DDP processes", "give more samples")
    total_steps = steps_per_epoch * config.epochs if config.epochs is not None else config.max_steps
    if config.max_steps is not None:
        total_steps = min(total_steps, config.max_steps)
    return steps_per_epoch, total_steps

class _Evaluator:
    """``metric(student outputs, teacher outputs, labels)`` over the whole eval set (teacher's computed once)."""

    def __init__(self, source: DataSource, metric: Metric, teacher: nn.Module | None, config: DistillConfig,
                 device: torch.device):
        self.source, self.metric, self.config, self.device = source, metric, config, device
        self.teacher_out = None if teacher is None else predict(teacher, source, config.eval_batch_size, device)
        labels = source.batch(torch.arange(len(source)))[1] if source.labelled else None
        self.labels = None if labels is None else labels.to(device)

    def __call__(self, student: nn.Module) -> float:
        s_out = predict(student, self.source, self.config.eval_batch_size, self.device)
        return float(self.metric(s_out, self.teacher_out, self.labels))

def _step_loss(model, teacher, teacher_feats, inputs, labels, config) -> torch.Tensor:
    """The training loss of one batch: output loss (KD / CE / embedding) plus the weighted feature loss."""
    out, s_feats = model(inputs)
    s_out = primary_output(out, "student")
    t_out = None
    if teacher is not None and not (labels is not None and config.alpha == 1.0 and not config.feature_pairs):
        with torch.no_grad():
            t_out = primary_output(call_model(teacher, inputs), "teacher")
    if config.output_loss == "kl":
        if t_out is None:
            loss = torch.nn.functional.cross_entropy(s_out.reshape(-1, s_out.shape[-1]), labels.reshape(-1))
        else:
            loss = kd_loss(s_out, t_out, labels, config.alpha, config.temperature)
    else:
        loss = embedding_loss(s_out, t_out, config.output_loss)
    if config.feature_pairs:
        t_feats = [teacher_feats.captured[t] for _, t in config.feature_pairs]
        loss = loss + config.feature_weight * feature_mse(s_feats, t_feats, config.feature_pairs)
    return loss

def _global_loss(local: torch.Tensor, dist_info: Distributed) -> float:
    """Sum of the ranks' share-weighted losses: the global batch's mean loss."""
    if dist_info.active:
        import torch.distributed as dist

        local = local.clone()
        dist.all_reduce(local)
    return float(local)

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
        self.captured: dict[str, torch.Tensor] = {}
        self._hooks = [_module(student, name, "student").register_forward_hook(self._hook(name))
                       for name in dict.fromkeys(self._names)]

    def _hook(self, name: str):
        def capture(_module, _inputs, output):
            self.captured[name] = primary_output(output, "student")
        return capture

    def forward(self, inputs: Any) -> tuple[Any, list[torch.Tensor]]:
        self.captured = {}
        out = call_model(self.student, inputs)
        feats = [proj(self.captured[name]) for name, proj in zip(self._names, self.projections)]
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
    """Forward hooks keeping the teacher's latest outputs of the named modules in ``captured``."""

    def __init__(self, teacher: nn.Module, names: Sequence[str]):
        self.captured: dict[str, torch.Tensor] = {}
        self.hooks = [_module(teacher, n, "teacher").register_forward_hook(self._hook(n)) for n in dict.fromkeys(names)]

    def _hook(self, name: str):
        def capture(_module, _inputs, output):
            self.captured[name] = primary_output(output, "teacher")
        return capture

    def remove(self) -> None:
        for h in self.hooks:
            h.remove()

def _channels(t: torch.Tensor) -> int:
    return int(t.shape[1] if t.dim() == 4 else t.shape[-1])

def _schedule(config: DistillConfig, total_steps: int) -> Callable[[int], float]:
    """LambdaLR factor: linear warm-up over ``warmup_steps``, then constant or cosine decay to 0 at ``total_steps``."""
    warm = config.warmup_steps

    def factor(step: int) -> float:  # step = optimizer steps done so far (LambdaLR's counter)
        if warm and step < warm:
            return (step + 1) / warm
        if config.scheduler == "none":
            return 1.0
        span = max(1, total_steps - warm)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, (step - warm) / span)))

    return factor

def _optimizer(config: DistillConfig, params: list[nn.Parameter]) -> torch.optim.Optimizer:
    if config.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    return torch.optim.SGD(params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)

def _zero_masks(student: nn.Module, only_2to4: bool) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(weight, mask of its nonzeros) for every Linear/Conv weight holding zeros (``keep_zeros``), or only for
    those holding the 2:4 pattern (``only_2to4``: ``keep_zeros`` None)."""
    masks = []
    for module in weight_layers(student).values():
        weight = module.weight
        if (weight == 0).any() and (not only_2to4 or holds_2to4(weight)):
            masks.append((weight, weight.ne(0).to(weight.dtype)))
    return masks

def _rng_state(device: torch.device) -> dict[str, Any]:
    state = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state

def _set_rng_state(state: Mapping[str, Any], device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)
