"""Outputs named for another kind of file, batches beyond the cap, float flags that are unused, and the order of
the cheap checks of the training commands: each refused in one line before any work, the folder untouched."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers.cli import refused, run_here

TINY = "tests.helpers.tiny_models:tiny_cnn"


@pytest.fixture
def work(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.mark.parametrize("args,fix", [
    (["export", TINY, "-o", "model.txt"], "name it model.onnx"),
    (["quantize", "in.onnx", "-o", "q.int8"], "name it q.onnx"),
    (["factorize", TINY, "-o", "f.pt"], "name it f.onnx"),
    (["cluster", TINY, "-o", "m.npz", "--onnx", "m.pt"], "name it m.onnx"),
    (["cluster", TINY, "-o", "c.pt"], "name it c.npz"),  # was written, exit 0: an .npz that loaders read as torch
    (["prune", TINY, "-o", "p.onnx"], "name it p.pt"),
    (["distill", TINY, TINY, "-o", "s.onnx", "--data", "digits"], "name it s.pt"),
    (["calibrate", "in.onnx", "-o", "r.onnx"], "name it r.json"),  # was written: ranges JSON under an ONNX name
], ids=["export", "quantize", "factorize", "cluster-onnx", "cluster-o", "prune", "distill", "calibrate"])
def test_an_output_named_for_another_kind_of_file_is_refused(work, capsys, args, fix):
    # prune -o x.onnx wrote a module file that every reader then opened as ONNX
    refused(args, capsys, work, args[args.index("-o") + 1] if "--onnx" not in args else "--onnx", fix)


def test_a_declared_batch_beyond_the_cap_is_refused(work, capsys):
    # was accepted: export ran for minutes building 100,000 random inputs
    refused(["export", TINY, "-o", "m.onnx", "--input-shape", "input:100000x3x16x16"], capsys, work,
            "batch 100,000", "65536")


def test_the_cap_is_a_batch_cap_only_where_axis_0_is_a_batch():
    from trtopt.models.inputs import declare_inputs, parse_declarations
    from trtopt.models.spec import InputSpec

    unbatched = InputSpec("x", (100000, 4), "float32", 0.0, 1.0, batch=None)
    (spec,) = declare_inputs([unbatched], parse_declarations(["x:100000x4"]), "m")
    assert spec.shape == (100000, 4)


@pytest.mark.parametrize("args", [
    ["factorize", TINY, "-o", "f.onnx", "--lr", "nan"],  # was accepted with --distill-steps 0 (the default)
    ["cluster", TINY, "-o", "m.npz", "--lr", "-1"],  # was accepted with --finetune-steps 0 (the default)
], ids=["factorize-nan", "cluster-negative"])
def test_an_unused_learning_rate_is_still_checked(work, capsys, args):
    refused(args, capsys, work, "lr=")


def _train_npz(work: Path) -> None:
    import numpy as np

    np.savez(work / "train.npz", input=np.random.default_rng(0).uniform(-1, 1, (8, 3, 32, 32)).astype(np.float32))


def test_a_checkpoint_folder_holding_a_foreign_last_pt_is_refused(work, capsys):
    # the user's last.pt was replaced by a checkpoint, exit 0
    _train_npz(work)
    (work / "ck").mkdir()
    (work / "ck" / "last.pt").write_text("mine", encoding="utf-8")
    refused(["distill", TINY, TINY, "-o", "s.pt", "--data", "train.npz", "--steps", "1", "--checkpoint-dir", "ck"],
            capsys, work, "ck holds a last.pt that is not a trtopt checkpoint")


def test_a_checkpoint_folder_that_is_a_file_is_refused_before_the_data_loads(work, capsys):
    (work / "ck").write_text("x", encoding="utf-8")
    # no data file: the cheap check on --checkpoint-dir comes first
    refused(["distill", TINY, TINY, "-o", "s.pt", "--data", "missing.npz", "--checkpoint-dir", "ck"], capsys, work,
            "ck, which is a file")


def test_trtopt_s_own_checkpoints_are_replaced_by_a_new_run(work, capsys):
    _train_npz(work)
    args = ["distill", TINY, TINY, "--data", "train.npz", "--steps", "1", "--checkpoint-dir", "ck"]
    assert run_here([*args, "-o", "a.pt"], capsys).returncode == 0
    assert run_here([*args, "-o", "b.pt"], capsys).returncode == 0
    assert (work / "ck" / "last.pt").stat().st_size > 0
