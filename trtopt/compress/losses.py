"""Distillation losses: Hinton's KD loss for logits, distances for embeddings, and feature matching.

The KD loss (DESIGN.md)::

    L = α · CE(student, labels) + (1 − α) · T² · KL(softmax(teacher / T) ‖ softmax(student / T))

softmax over the last axis, KL summed over classes and averaged over every other axis ("batchmean").
The seed article writes KL(student, teacher) without T²; trtopt implements Hinton et al.'s standard
form: KL(teacher ‖ student), whose gradient w.r.t. the student logits is (p_s − p_t)/T, so the T² factor
keeps the soft-target gradients at the same scale as T changes and α keeps its meaning at any T.
Without labels (unlabelled data) the loss is pure KD: T² · KL, weight 1, α ignored. With ``alpha=1``
and labels it is plain fine-tuning (CE only).

Imports torch: import this module lazily (``import trtopt`` stays light).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from trtopt.compress.config import _check_alpha_temperature
from trtopt.errors import TrtoptError


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

    Raises:
        TrtoptError: shapes differ, or an unknown ``kind``.
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

def feature_mse(student_feats: Sequence[torch.Tensor], teacher_feats: Sequence[torch.Tensor],
                pairs: Sequence[tuple[str, str]]) -> torch.Tensor:
    """Intermediate-feature loss: mean over pairs of MSE(projected student feature, teacher feature).

    Args:
        student_feats: the student's features, already projected to the teacher's widths, one per pair.
        teacher_feats: the teacher's features (detached here), one per pair, same shapes.
        pairs: (student module name, teacher module name) per feature, for error messages.

    Raises:
        TrtoptError: a pair's shapes differ (both modules named).
    """
    total = student_feats[0].new_zeros(())
    for (s_name, t_name), s, t in zip(pairs, student_feats, teacher_feats):
        if s.shape != t.shape:
            raise TrtoptError(f"feature {s_name!r} of the student has shape {tuple(s.shape)} after projection but the "
                              f"teacher's {t_name!r} has {tuple(t.shape)}", "pair modules whose outputs differ only in width")
        total = total + F.mse_loss(s, t.detach())
    return total / len(student_feats)
