"""trtopt.compress.distill, .losses and .trainer: the KD loss against hand computations, and the trainer on tiny seeded models."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from torch import nn

from trtopt.compress.config import DistillConfig
from trtopt.compress.distill import accuracy_metric, distill
from trtopt.compress.losses import embedding_loss, kd_loss
from trtopt.compress.trainer import DistillProgress, TrainerState, load_checkpoint
from trtopt.errors import TrtoptError


def _softmax(x, t):
    e = np.exp((x - x.max(-1, keepdims=True)) / t)
    return e / e.sum(-1, keepdims=True)


S = np.array([[1.0, 2.0, 0.5], [0.0, -1.0, 3.0]])
T_ = np.array([[2.0, 1.0, 0.0], [0.5, 0.5, 2.0]])
LABELS = np.array([1, 2])


def _hand_kd(temperature):
    p_t, p_s = _softmax(T_, temperature), _softmax(S, temperature)
    kl = (p_t * (np.log(p_t) - np.log(p_s))).sum(-1).mean()
    return temperature ** 2 * kl


def _hand_ce():
    p = _softmax(S, 1.0)
    return -np.log(p[np.arange(2), LABELS]).mean()


@pytest.mark.parametrize("temperature", [1.0, 2.0, 4.0])
def test_kd_loss_matches_hand_computation_with_t_squared(temperature):
    s, t, y = torch.tensor(S), torch.tensor(T_), torch.tensor(LABELS)
    got = kd_loss(s, t, y, alpha=0.3, temperature=temperature)
    want = 0.3 * _hand_ce() + 0.7 * _hand_kd(temperature)
    assert float(got) == pytest.approx(want, rel=1e-10)


def test_pure_kd_without_labels_has_weight_one_and_alpha_one_is_ce():
    s, t, y = torch.tensor(S), torch.tensor(T_), torch.tensor(LABELS)
    assert float(kd_loss(s, t, None, alpha=0.9, temperature=3.0)) == pytest.approx(_hand_kd(3.0), rel=1e-10)
    assert float(kd_loss(s, t, y, alpha=1.0, temperature=3.0)) == pytest.approx(_hand_ce(), rel=1e-10)
    assert float(kd_loss(t, t, None, temperature=2.0)) == pytest.approx(0.0, abs=1e-12)


def test_kd_gradient_is_t_times_probability_gap():
    """d(T²·KL)/ds = T·(p_s − p_t)/N: the T² factor keeps soft-target gradients O(1) as T grows."""
    for temperature in (1.0, 5.0):
        s = torch.tensor(S, requires_grad=True)
        kd_loss(s, torch.tensor(T_), None, temperature=temperature).backward()
        want = temperature * (_softmax(S, temperature) - _softmax(T_, temperature)) / 2
        np.testing.assert_allclose(s.grad.numpy(), want, rtol=1e-9, atol=1e-12)


def test_kd_loss_over_token_axis_and_embedding_losses():
    s, t = torch.randn(2, 5, 7), torch.randn(2, 5, 7)
    flat = kd_loss(s.reshape(10, 7), t.reshape(10, 7), None, temperature=2.0)
    assert float(kd_loss(s, t, None, temperature=2.0)) == pytest.approx(float(flat))
    a, b = torch.tensor([[1.0, 0.0], [0.0, 2.0]]), torch.tensor([[1.0, 1.0], [0.0, 1.0]])
    assert float(embedding_loss(a, b, "cosine")) == pytest.approx((1 - 1 / math.sqrt(2)) / 2)
    assert float(embedding_loss(a, b, "mse")) == pytest.approx((0 + 1 + 0 + 1) / 4)


# ----------------------------------------------------------------------------------------- tiny task

class MLP(nn.Module):
    def __init__(self, hidden=32, dropout=0.0, classes=4):
        super().__init__()
        self.fc1 = nn.Linear(8, hidden)
        self.act = nn.ReLU()
        self.drop = nn.Dropout(dropout)
        self.fc2 = nn.Linear(hidden, classes)

    def forward(self, x):
        return self.fc2(self.drop(self.act(self.fc1(x))))


class TwoInput(nn.Module):
    """Keyword inputs like zoo:minilm_l6: forward(features, mask) → embedding."""

    def __init__(self, hidden=16):
        super().__init__()
        self.fc1 = nn.Linear(8, hidden)
        self.fc2 = nn.Linear(hidden, 6)

    def forward(self, features, mask):
        return self.fc2(torch.tanh(self.fc1(features * mask)))


def _task(n=96, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 8, generator=g)
    torch.manual_seed(seed)
    teacher = MLP(hidden=64).eval()
    with torch.no_grad():
        y = teacher(x).argmax(1)
    return teacher, x, y


def _student(seed=1, **kw):
    torch.manual_seed(seed)
    return MLP(**kw)


def test_trainer_reduces_loss_and_reports_history():
    teacher, x, y = _task()
    events: list[DistillProgress] = []
    result = distill(_student(), teacher, (x, y), DistillConfig(epochs=6, batch_size=16, lr=1e-2),
                     eval_data=(x, y), progress=events.append)
    assert result.steps == 36 and result.epochs_completed == 6 and len(result.step_losses) == 36
    assert result.epoch_losses[-1] < 0.8 * result.epoch_losses[0]
    assert [e["step"] for e in result.eval_history] == [6, 12, 18, 24, 30, 36]
    assert result.best_metric == max(e["metric"] for e in result.eval_history) > 0.6
    assert [e.step for e in events] == list(range(1, 37)) and events[-1].total_steps == 36
    assert not result.student.training
    assert result.to_dict()["steps"] == 36


def test_unlabelled_pure_kd_and_max_steps():
    teacher, x, _ = _task()
    result = distill(_student(), teacher, (x, None), DistillConfig(epochs=None, max_steps=20, batch_size=16, lr=1e-2),
                     eval_data=(x, None))  # default metric without labels: top-1 agreement with the teacher
    assert result.steps == 20 and result.epochs_completed == 3
    assert result.step_losses[-1] < result.step_losses[0]
    assert result.eval_history[-1]["metric"] > 0.5


def test_dict_inputs_dataset_and_embedding_loss():
    g = torch.Generator().manual_seed(0)
    feats, mask = torch.randn(64, 8, generator=g), (torch.rand(64, 8, generator=g) > 0.2).float()
    torch.manual_seed(0)
    teacher, student = TwoInput(32).eval(), TwoInput(8)
    initial = copy.deepcopy(student)
    config = DistillConfig(epochs=5, batch_size=16, lr=1e-2, output_loss="cosine")
    result = distill(student, teacher, ({"features": feats, "mask": mask}, None), config,
                     eval_data=({"features": feats, "mask": mask}, None))
    assert result.step_losses[-1] < result.step_losses[0]
    assert result.eval_history[-1]["metric"] > result.eval_history[0]["metric"]

    class Items(torch.utils.data.Dataset):
        def __len__(self):
            return 64

        def __getitem__(self, i):
            return {"features": feats[i], "mask": mask[i]}, None

    again = distill(initial, teacher, Items(), config)
    assert again.step_losses == pytest.approx(result.step_losses, rel=1e-5)


def test_labelled_dataset_eval_every_and_checkpoint_every(tmp_path):
    teacher, x, y = _task()

    class Pairs(torch.utils.data.Dataset):
        def __len__(self):
            return len(x)

        def __getitem__(self, i):
            return x[i], int(y[i])

    config = DistillConfig(epochs=2, batch_size=16, lr=1e-2, eval_every=4, checkpoint_every=5, checkpoint_dir=str(tmp_path))
    from_arrays = distill(_student(), teacher, (x, y), config, eval_data=(x, y))
    from_dataset = distill(_student(), teacher, Pairs(), config, eval_data=Pairs())
    assert from_dataset.step_losses == from_arrays.step_losses
    assert [e["step"] for e in from_dataset.eval_history] == [4, 8, 12]  # every 4 steps, and the last step
    assert [e["epoch"] for e in from_dataset.eval_history] == [1, 2, 2]  # 6 steps per epoch
    assert from_dataset.eval_history[-1]["metric"] == from_arrays.eval_history[-1]["metric"]
    assert load_checkpoint(tmp_path)["step"] == 12


def test_early_stopping_and_restore_best():
    teacher, x, y = _task()
    values = iter([0.5, 0.7, 0.6, 0.65, 0.69, 0.9, 0.95])
    result = distill(_student(), teacher, (x, y), DistillConfig(epochs=7, batch_size=16, lr=1e-2, patience=3),
                     eval_data=(x, y), metric=lambda s, t, labels: next(values))
    assert result.stopped_early and result.epochs_completed == 5 and result.steps == 30
    assert result.best_metric == 0.7 and result.best_step == 12


def test_restore_best_loads_best_weights(tmp_path):
    teacher, x, y = _task()
    values = iter([0.9, 0.1, 0.2])
    result = distill(_student(), teacher, (x, y), DistillConfig(epochs=3, batch_size=16, checkpoint_dir=str(tmp_path)),
                     eval_data=(x, y), metric=lambda s, t, labels: next(values))
    best = load_checkpoint(tmp_path / "best.pt")
    assert best["step"] == 6
    for k, v in result.student.state_dict().items():
        assert torch.equal(v, best["student"][k])
    assert load_checkpoint(tmp_path)["step"] == 18


def _weights(module):
    return {k: v.clone() for k, v in module.state_dict().items()}


def test_interrupted_run_resumes_bit_for_bit(tmp_path):
    """2 epochs straight == 1 epoch, crash, resume from last.pt, 1 more epoch (cosine schedule, dropout)."""
    teacher, x, y = _task()
    base = {"epochs": 2, "batch_size": 16, "lr": 1e-2, "scheduler": "cosine", "warmup_steps": 2, "seed": 3}
    straight = distill(_student(dropout=0.3), teacher, (x, y), DistillConfig(**base))

    class Crash(Exception):
        pass

    def crash(p):
        if p.step == 6:
            raise Crash

    with pytest.raises(Crash):
        distill(_student(dropout=0.3), teacher, (x, y), DistillConfig(**base, checkpoint_dir=str(tmp_path)), progress=crash)
    assert load_checkpoint(tmp_path)["step"] == 6
    torch.manual_seed(123)  # the caller's RNG state must not matter
    resumed = distill(_student(dropout=0.3), teacher, (x, y),
                      DistillConfig(**base, checkpoint_dir=str(tmp_path), resume_from=str(tmp_path)))
    assert resumed.step_losses == straight.step_losses
    assert resumed.epoch_losses == straight.epoch_losses
    a, b = _weights(straight.student), _weights(resumed.student)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_resume_to_train_longer_with_constant_lr(tmp_path):
    """1 epoch, then resume with epochs=2 == 2 epochs straight (constant schedule)."""
    teacher, x, y = _task()
    base = {"batch_size": 16, "lr": 5e-3, "scheduler": "none", "optimizer": "sgd", "checkpoint_dir": str(tmp_path)}
    straight = distill(_student(), teacher, (x, y), DistillConfig(epochs=2, **{**base, "checkpoint_dir": None}))
    distill(_student(), teacher, (x, y), DistillConfig(epochs=1, **base))
    resumed = distill(_student(), teacher, (x, y), DistillConfig(epochs=2, resume_from=str(tmp_path), **base))
    a, b = _weights(straight.student), _weights(resumed.student)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert resumed.step_losses == straight.step_losses


class Conv(nn.Module):
    def __init__(self, width):
        super().__init__()
        self.conv = nn.Conv2d(1, width, 3, padding=1)
        self.head = nn.Linear(width, 3)

    def forward(self, x):
        return self.head(torch.relu(self.conv(x)).mean((2, 3)))


def test_feature_loss_with_projection(tmp_path):
    torch.manual_seed(0)
    teacher, student = Conv(16).eval(), Conv(6)
    x = torch.randn(48, 1, 6, 6)
    config = DistillConfig(epochs=8, batch_size=16, lr=1e-2, feature_pairs=(("conv", "conv"),), feature_weight=1.0,
                           checkpoint_dir=str(tmp_path))
    result = distill(student, teacher, (x, None), config)
    state = load_checkpoint(tmp_path)
    assert state["projections"]["0.map.weight"].shape == (16, 6)  # 6 student channels → 16 teacher channels
    assert result.step_losses[-1] < 0.7 * result.step_losses[0]
    # The feature term is part of the loss: with weight 0 the first step's loss is smaller.
    torch.manual_seed(0)
    _, student0 = Conv(16), Conv(6)
    no_feature = distill(student0, teacher, (x, None), DistillConfig(max_steps=1, epochs=None, batch_size=16))
    assert no_feature.step_losses[0] < result.step_losses[0]


def test_keep_zeros_keeps_pruned_weights_at_zero():
    teacher, x, y = _task()
    student = _student()
    with torch.no_grad():
        student.fc1.weight[:, ::2] = 0.0  # a fixed sparsity pattern (like 2:4)
    zeros = student.fc1.weight == 0
    result = distill(student, teacher, (x, y), DistillConfig(epochs=2, batch_size=16, lr=1e-2, keep_zeros=True))
    w = result.student.fc1.weight
    assert torch.all(w[zeros] == 0) and torch.all(w[~zeros] != 0)


def test_a_2to4_sparse_student_keeps_its_pattern_without_being_asked():
    from trtopt.compress.sparsity import holds_2to4, mask_2to4

    teacher, x, y = _task()
    student = _student()
    with torch.no_grad():
        student.fc1.weight.mul_(mask_2to4(student.fc1.weight))  # 2:4, as prune --method 2:4 leaves it
        student.fc2.weight[0, 0] = 0.0  # a stray zero, not a 2:4 pattern
    assert holds_2to4(student.fc1.weight) and not holds_2to4(student.fc2.weight)
    config = DistillConfig(epochs=2, batch_size=16, lr=1e-2)
    assert config.keep_zeros is None
    result = distill(student, teacher, (x, y), config)
    assert holds_2to4(result.student.fc1.weight) and result.student.fc2.weight[0, 0] != 0
    dropped = distill(student, teacher, (x, y), DistillConfig(epochs=2, batch_size=16, lr=1e-2, keep_zeros=False))
    assert not holds_2to4(dropped.student.fc1.weight)  # explicitly off: the pattern trains away


def test_plain_fine_tuning_without_teacher():
    _, x, y = _task()
    result = distill(_student(), None, (x, y), DistillConfig(epochs=4, batch_size=16, lr=1e-2, alpha=1.0),
                     eval_data=(x, y), metric=accuracy_metric)
    assert result.epoch_losses[-1] < result.epoch_losses[0]


# ----------------------------------------------------------------------------------------- errors

def _error(fn, *needles):
    with pytest.raises(TrtoptError) as info:
        fn()
    message = str(info.value)
    assert "\n" not in message and "fix:" in message
    for needle in needles:
        assert needle in message, message
    return message


def test_bad_config_values():
    _error(lambda: DistillConfig(alpha=1.5), "alpha=1.5", "[0, 1]")
    _error(lambda: DistillConfig(alpha=-0.1), "alpha=-0.1")
    _error(lambda: DistillConfig(temperature=0), "temperature=0")
    _error(lambda: DistillConfig(optimizer="adam"), "optimizer")
    _error(lambda: DistillConfig(epochs=None, max_steps=None), "epochs or max_steps")
    _error(lambda: DistillConfig(batch_size=0), "batch_size")
    _error(lambda: kd_loss(torch.zeros(2, 3), torch.zeros(2, 3), temperature=-1.0), "temperature=-1.0")


def test_mismatched_outputs_name_both_shapes():
    teacher, x, y = _task()
    _error(lambda: distill(MLP(classes=5), teacher, (x, y), DistillConfig(epochs=1)), "(2, 5)", "(2, 4)")
    _error(lambda: kd_loss(torch.zeros(2, 5), torch.zeros(2, 4)), "(2, 5)", "(2, 4)")


def test_bad_data_errors():
    teacher, x, y = _task()
    _error(lambda: distill(_student(), teacher, (x[:0], None), DistillConfig()), "empty")
    _error(lambda: distill(_student(), teacher, (x, y[:5]), DistillConfig()), "sample counts")
    _error(lambda: distill(_student(), teacher, (x, y), DistillConfig(output_loss="cosine")), "labels", "embeddings")
    bad = x.clone()
    bad[5:] = float("nan")
    _error(lambda: distill(_student(), teacher, (bad, y), DistillConfig(batch_size=16)), "step 1")
    _error(lambda: distill(_student(), teacher, (x, y), DistillConfig(feature_pairs=(("nope", "fc1"),))), "'nope'")
    _error(lambda: distill(_student(), None, (x, None), DistillConfig()), "no teacher")


def test_unreadable_or_mismatched_checkpoint(tmp_path):
    teacher, x, y = _task()
    (tmp_path / "last.pt").write_bytes(b"not a checkpoint at all")
    _error(lambda: distill(_student(), teacher, (x, y), DistillConfig(resume_from=str(tmp_path))), "cannot be read")
    _error(lambda: distill(_student(), teacher, (x, y), DistillConfig(resume_from=str(tmp_path / "none"))), "does not exist")
    good = tmp_path / "good"
    distill(_student(), teacher, (x, y), DistillConfig(epochs=1, batch_size=16, checkpoint_dir=str(good)))
    raw = (good / "last.pt").read_bytes()
    (good / "cut.pt").write_bytes(raw[: len(raw) // 2])
    _error(lambda: distill(_student(), teacher, (x, y), DistillConfig(resume_from=str(good / "cut.pt"))), "cut.pt")
    _error(lambda: distill(_student(), teacher, (x, y), DistillConfig(batch_size=16, alpha=0.2, resume_from=str(good))),
           "alpha=0.5", "alpha=0.2")
    _error(lambda: distill(MLP(hidden=5), teacher, (x, y), DistillConfig(batch_size=16, resume_from=str(good))),
           "does not fit")


def test_checkpoint_holds_the_trainer_state_and_names_a_missing_key(tmp_path):
    teacher, x, y = _task()
    result = distill(_student(), teacher, (x, y), DistillConfig(epochs=2, batch_size=16, checkpoint_dir=str(tmp_path)),
                     eval_data=(x, y))
    checkpoint = load_checkpoint(tmp_path)
    state = TrainerState.from_checkpoint(checkpoint)
    assert (state.step, state.epoch, state.batch_in_epoch) == (result.steps, result.epochs_completed, 0) == (12, 2, 0)
    assert state.step_losses == result.step_losses and state.eval_history == result.eval_history
    assert state.best_metric == result.best_metric and set(state.best_state) == set(result.student.state_dict())
    del checkpoint["bad_evals"]
    torch.save(checkpoint, tmp_path / "partial.pt")
    _error(lambda: distill(_student(), teacher, (x, y), DistillConfig(batch_size=16, resume_from=str(tmp_path / "partial.pt"))),
           "lacks bad_evals")


# ----------------------------------------------------------------------------------------- CLI

def _cli(args, cwd):
    from tests.helpers.cli import run
    from tests.helpers.env import cli_environment

    return run(args, cwd, cli_environment())


def _one_line_error(result, *needles):
    from tests.helpers.cli import assert_one_line_error

    assert_one_line_error(result, *needles)


def test_cli_distill_writes_loadable_student_and_resumes(tmp_path):
    """A pruned model file (as `trtopt prune` writes it) distilled from zoo:digits_cnn, then resumed."""
    import dataclasses
    import json

    from trtopt.compress.config import PruneConfig
    from trtopt.compress.prune import prune
    from trtopt.models.load import load_model
    from trtopt.models.module_file import save_module

    teacher = load_model("zoo:digits_cnn")
    pruned = prune(teacher.module, (torch.zeros(2, 1, 8, 8),), PruneConfig(method="structured", ratio=0.5))
    save_module(dataclasses.replace(teacher, module=pruned.module), tmp_path / "pruned.pt")
    common = ["pruned.pt", "zoo:digits_cnn", "--data", "digits", "--labels", "--batch-size", "64",
              "--lr", "3e-3", "--checkpoint-dir", "ck"]
    first = _cli(["distill", *common, "--steps", "4", "-o", "s.pt", "--json", "s.json"], tmp_path)
    assert first.returncode == 0, first.stderr
    record = json.loads((tmp_path / "s.json").read_text())
    assert record["steps"] == 4 and len(record["step_losses"]) == 4 and record["eval_history"][-1]["step"] == 4
    from trtopt.models.load import load_model

    student = load_model(str(tmp_path / "s.pt"))  # a whole module with the teacher's input specs
    assert [s.shape for s in student.inputs] == [(1, 8, 8)]
    assert student.module(torch.zeros(3, 1, 8, 8)).shape == (3, 10)
    assert student.module.conv3.out_channels == pruned.module.conv3.out_channels < 128
    assert student.extra["metadata"]["distill"]["steps"] == 4
    # Exists without --force: refused, nothing overwritten.
    _one_line_error(_cli(["distill", *common, "--steps", "4", "-o", "s.pt"], tmp_path), "s.pt", "--force")
    more = _cli(["distill", *common, "--steps", "6", "--resume", "ck", "-o", "s2.pt", "--json", "s2.json"], tmp_path)
    assert more.returncode == 0, more.stderr
    resumed = json.loads((tmp_path / "s2.json").read_text())
    assert resumed["steps"] == 6 and resumed["step_losses"][:4] == record["step_losses"]


def test_cli_distill_bad_inputs(tmp_path):
    base = ["distill", "trtopt.models.nets:DigitsCNN", "zoo:digits_cnn", "--data", "digits", "--steps", "1", "-o", "s.pt"]
    _one_line_error(_cli([*base, "--alpha", "2"], tmp_path), "alpha=2.0")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "last.pt").write_bytes(b"\x00garbage")
    _one_line_error(_cli([*base, "--resume", "bad"], tmp_path), "cannot be read")
    np.savez(tmp_path / "d.npz", input=np.zeros((4, 1, 8, 8), np.float32))
    _one_line_error(_cli(["distill", "trtopt.models.nets:DigitsCNN", "zoo:digits_cnn", "--data", "d.npz", "--labels", "-o", "s.pt"],
                         tmp_path), "labels")
    assert not (tmp_path / "s.pt").exists()


def test_resuming_a_checkpoint_past_this_runs_length_is_refused(tmp_path):
    """A 2-epoch checkpoint resumed with epochs=1 returned the 2-epoch student as if 1 epoch had been asked."""
    teacher, x, y = _task()
    base = {"batch_size": 16, "checkpoint_dir": str(tmp_path)}
    distill(_student(), teacher, (x, y), DistillConfig(epochs=2, **base))
    _error(lambda: distill(_student(), teacher, (x, y), DistillConfig(epochs=1, resume_from=str(tmp_path), **base)),
           "past this run's", "start afresh")
