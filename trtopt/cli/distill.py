"""``trtopt distill``: train a student model against a teacher (knowledge distillation) from the command line.

A thin layer over `trtopt.compress.distill.distill`. Runs the same under ``torchrun --nproc_per_node=N -m trtopt
distill ...`` (DDP); then only rank 0 writes files and prints.
"""

from __future__ import annotations

import argparse
from typing import Any

from trtopt.cli._common import count, ddp_rank, write_json_output
from trtopt.cli._training import check_split_labels, training_data, training_progress
from trtopt.compress.config import OPTIMIZERS, OUTPUT_LOSSES, SCHEDULERS, DistillConfig
from trtopt.errors import TrtoptError


def add_commands(sub: Any, common: argparse.ArgumentParser) -> None:
    """Register this family's subcommands on ``sub`` (``common``: the flags every subcommand takes)."""
    p = sub.add_parser("distill", parents=[common], help="train a (pruned/smaller) student against a teacher: KD loss, checkpoints, resume, DDP")
    p.add_argument("student", help="student model: spec (zoo:NAME, package.module:factory, ...) or a model file")
    p.add_argument("teacher", help="teacher model: spec or a model file")
    p.add_argument("-o", "--output", required=True, help="where to write the trained student (a model file trtopt can load)")
    p.add_argument("--student-checkpoint", help="state dict to load into the student's architecture first")
    p.add_argument("--teacher-checkpoint", help="state dict to load into the teacher's architecture first")
    p.add_argument("--data", required=True, help="training data: digits (train split; evaluated on test) or an .npz "
                   "with one array per input name (+ 'labels')")
    p.add_argument("--eval-data", help="eval data .npz (same layout); default for --data digits: its test split")
    p.add_argument("--labels", action="store_true", help="use the data's labels (α·CE + (1 − α)·KD); default: pure KD")
    length = p.add_mutually_exclusive_group()
    # --epochs has no default of its own: with --steps, the run is not bounded by epochs
    length.add_argument("--epochs", type=int, default=None, help=f"passes over the data (default {DistillConfig.epochs})")
    length.add_argument("--steps", type=int, default=DistillConfig.max_steps, help="optimizer steps instead of epochs")
    p.add_argument("--alpha", type=float, default=DistillConfig.alpha,
                   help="weight of the hard-label CE in [0, 1] (default %(default)s)")
    p.add_argument("--temperature", type=float, default=DistillConfig.temperature,
                   help="softmax temperature T > 0 (default %(default)s)")
    p.add_argument("--loss", choices=("auto", *OUTPUT_LOSSES), default="auto",
                   help="output loss: kl (logits), cosine/mse (embeddings); auto: cosine for embedding models, else kl")
    p.add_argument("--feature", action="append", metavar="STUDENT_MODULE[:TEACHER_MODULE]",
                   help="add an intermediate-feature MSE between these modules (repeatable)")
    p.add_argument("--feature-weight", type=float, default=DistillConfig.feature_weight,
                   help="weight of the feature loss (default %(default)s)")
    p.add_argument("--lr", type=float, default=DistillConfig.lr, help="peak learning rate (default %(default)s)")
    p.add_argument("--batch-size", type=int, default=DistillConfig.batch_size,
                   help="global batch size, split across DDP processes (default %(default)s)")
    p.add_argument("--weight-decay", type=float, default=DistillConfig.weight_decay,
                   help="decoupled (AdamW) or L2 (SGD) weight decay (default %(default)s)")
    p.add_argument("--optimizer", choices=OPTIMIZERS, default=DistillConfig.optimizer,
                   help=f"sgd uses momentum {DistillConfig.momentum} (default %(default)s)")
    p.add_argument("--scheduler", choices=SCHEDULERS, default=DistillConfig.scheduler,
                   help="cosine: learning rate from lr to 0 over the run; none: constant (default %(default)s)")
    p.add_argument("--warmup-steps", type=int, default=DistillConfig.warmup_steps,
                   help="steps of linear learning-rate warm-up (default %(default)s)")
    p.add_argument("--eval-every", type=int, default=DistillConfig.eval_every,
                   help="evaluate every N steps (default: every epoch)")
    p.add_argument("--patience", type=int, default=DistillConfig.patience,
                   help="stop after N evaluations without improvement")
    p.add_argument("--keep-zeros", action="store_const", const=True, default=DistillConfig.keep_zeros,
                   help="keep every zero weight at zero (unstructured / 2:4 sparse students; default: the zeros of "
                        "layers holding the 2:4 pattern are kept)")
    p.add_argument("--find-unused-parameters", action="store_const", const=True, default=DistillConfig.find_unused_parameters,
                   help="DDP: student parameters the loss doesn't reach exist (default: found by a probe pass)")
    p.add_argument("--checkpoint-dir", help="write last.pt / best.pt here")
    p.add_argument("--resume", metavar="DIR", help="continue from DIR/last.pt (and keep checkpointing there)")
    p.add_argument("--seed", type=int, default=DistillConfig.seed,
                   help="seeds batch order, dropout and feature projections (default %(default)s)")
    p.add_argument("--threads", type=count(), default=None, help="torch CPU threads")
    p.add_argument("--json", help="write the training record (loss curve, evaluations) here")
    p.add_argument("--force", action="store_true", help="overwrite existing outputs")
    p.set_defaults(func=cmd_distill)


def cmd_distill(args: argparse.Namespace) -> int:
    """``trtopt distill``: train the student against the teacher, save it (and resume); exit status."""
    from dataclasses import replace

    from trtopt.compress.distill import distill
    from trtopt.files import check_outputs, check_suffix
    from trtopt.models.load import load_model
    from trtopt.models.module_file import MODULE_FILE_SUFFIXES

    check_suffix(args.output, MODULE_FILE_SUFFIXES, "a trtopt model file")
    main = ddp_rank() == 0
    if main:
        check_outputs([args.output, args.json], args.force,
                      inputs=[args.student, args.teacher, args.student_checkpoint, args.teacher_checkpoint, args.data,
                              args.eval_data])
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    features = tuple((f.split(":", 1)[0], f.split(":", 1)[-1]) for f in args.feature or ())
    config = DistillConfig(alpha=args.alpha, temperature=args.temperature, output_loss="kl" if args.loss == "auto" else args.loss,
                           epochs=None if args.steps else (args.epochs or DistillConfig.epochs), max_steps=args.steps,
                           batch_size=args.batch_size, lr=args.lr, weight_decay=args.weight_decay,
                           optimizer=args.optimizer, scheduler=args.scheduler, warmup_steps=args.warmup_steps,
                           feature_pairs=features, feature_weight=args.feature_weight, eval_every=args.eval_every,
                           patience=args.patience, checkpoint_dir=args.checkpoint_dir or args.resume,
                           resume_from=args.resume, seed=args.seed, keep_zeros=args.keep_zeros,
                           find_unused_parameters=args.find_unused_parameters)
    from trtopt.compress.trainer import check_checkpoint_dir, load_checkpoint

    if args.resume:
        load_checkpoint(args.resume)  # fail on an unreadable checkpoint before loading models and data
    if main and config.checkpoint_dir:
        check_checkpoint_dir(config.checkpoint_dir)
    student = load_model(args.student, checkpoint=args.student_checkpoint)
    teacher = load_model(args.teacher, checkpoint=args.teacher_checkpoint)
    if args.loss == "auto" and "embedding" in teacher.output_names:
        config = replace(config, output_loss="cosine")
    # The student takes the teacher's inputs (a file or factory student may not declare its own).
    train, evaluation = training_data(args.data, args.eval_data, teacher.inputs)
    if args.labels and train[1] is None:
        raise TrtoptError(f"--labels given but {args.data} has no 'labels' array", "add labels to the .npz or drop --labels")
    if args.labels:
        check_split_labels(student.module, train, evaluation, args.data, args.eval_data)
    else:
        train = (train[0], None)
    progress, update = training_progress(args, main, "distill")
    with progress:
        result = distill(student.module, teacher.module, train, config, eval_data=evaluation, progress=update)
    if not main:
        return 0
    record = result.to_dict() | {"student": args.student, "teacher": args.teacher, "output": args.output,
                                 "data": args.data, "labels": args.labels}
    _save_student(result.student, student, teacher, args.output, args.force,
                  {"distill": {k: record[k] for k in ("student", "teacher", "data", "labels", "steps", "best_metric", "config")}})
    write_json_output(args.json, record, args.force)
    last = result.epoch_losses[-1] if result.epoch_losses else result.step_losses[-1]
    metric = "" if result.best_metric is None else f", best eval metric {result.best_metric:.4f} at step {result.best_step}"
    stopped = " (stopped early)" if result.stopped_early else ""
    print(f"wrote {args.output}: {result.steps} steps{stopped}, loss {result.step_losses[0]:.4f} → {last:.4f}{metric}")
    return 0




def _save_student(module: Any, student: Any, teacher: Any, path: str, force: bool, metadata: dict[str, Any]) -> None:
    """Write the trained student as a trtopt model file (`trtopt.models.module_file.save_module`: the student's
    architecture, with the teacher's input specs), so `load_model(path)` (and ``trtopt export``/``bench``) read
    it back with its real inputs."""
    from dataclasses import replace

    from trtopt.models.module_file import save_module

    loaded = replace(student, module=module.eval(), inputs=teacher.inputs, output_names=teacher.output_names,
                     preprocess=teacher.preprocess, description=f"distilled from {teacher.spec}")
    save_module(loaded, path, force=force, metadata=metadata)
