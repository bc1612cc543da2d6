"""Outputs named for another kind of file, batches beyond the cap, float flags that are unused, and the order of
the cheap checks of the training commands: each refused in one line before any work, the folder untouched."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from tests.helpers.cli import assert_one_line_error, run_here

TINY = "tests.helpers.tiny_models:tiny_cnn"


@pytest.fixture
def work(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return tmp_path


def snapshot(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def refused(args, capsys, folder: Path, *needles):
    before = snapshot(folder)
    result = run_here(args, capsys)
    assert_one_line_error(result, *needles)
    assert snapshot(folder) == before
    return result


@pytest.mark.parametrize("args,fix", [
    (["export", TINY, "-o", "model.txt"], "name it model.onnx"),
    (["quantize", "in.onnx", "-o", "q.int8"], "name it q.onnx"),
    (["factorize", TINY, "-o", "f.pt"], "name it f.onnx"),
    (["cluster", TINY, "-o", "m.npz", "--onnx", "m.pt"], "name it m.onnx"),
    (["prune", TINY, "-o", "p.onnx"], "name it p.pt"),
    (["distill", TINY, TINY, "-o", "s.onnx", "--data", "digits"], "name it s.pt"),
], ids=["export", "quantize", "factorize", "cluster-onnx", "prune", "distill"])
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
