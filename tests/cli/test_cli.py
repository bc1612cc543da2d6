"""The CLI end to end in a subprocess: happy paths with tiny models, and every bad input the issue names.

Each bad input must give exactly one line on stderr naming the problem (and a fix), a non-zero exit,
no traceback, and no partial output file.
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from tests.helpers.cli import Outcome, assert_one_line_error, run


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """tests.helpers.tiny_models:tiny_cnn exported once via the CLI, with its JSON record."""
    import os

    from tests.helpers.env import cli_environment

    work = tmp_path_factory.mktemp("cli")
    env = cli_environment()
    result = run(["export", "tests.helpers.tiny_models:tiny_cnn", "-o", "tiny.onnx", "--json", "tiny.json"], work, env)
    assert result.returncode == 0, result.stderr
    assert os.path.exists(work / "tiny.onnx")
    return work, env


def test_export_writes_onnx_and_record(exported):
    work, _ = exported
    record = json.loads((work / "tiny.json").read_text())
    assert record["exporter"] == "dynamo"
    assert record["inputs"][0]["shape"] == ["batch", 3, 32, 32]
    assert set(record["parity"]) == {"batch_1", "batch_8"}
    assert all(v["passed"] for v in record["parity"].values())
    assert record["size_bytes"] == (work / "tiny.onnx").stat().st_size


def test_bench_torch_vs_onnx_writes_json(exported):
    work, env = exported
    result = run(["bench", "tests.helpers.tiny_models:tiny_cnn", "tiny.onnx", "--batch-sizes", "1", "2", "--iterations", "5",
                  "--warmup", "1", "--threads", "1", "--json", "bench.json"], work, env)
    assert result.returncode == 0, result.stderr
    report = json.loads((work / "bench.json").read_text())
    assert [r["batch_size"] for r in report["rows"]] == [1, 1, 2, 2]
    onnx_rows = [r for r in report["rows"] if r["backend"] == "onnxruntime"]
    assert all(r["speedup_ci_low"] <= r["speedup_ratio"] * 1.5 for r in onnx_rows)
    lines = result.stdout.splitlines()  # stdout is a pipe here: plain text, one line per row, never wrapped
    headers = [line for line in lines if line.split()[:1] == ["variant"]]
    assert len(headers) == 2 and all("p50 ms" in h and "speedup [95% CI]" in h for h in headers)
    assert sum(line.split()[:1] == ["tiny.onnx"] for line in lines) == 2  # one row per batch table


def test_json_dash_is_stdout_and_plan_only_json_writes(exported):
    work, env = exported
    result = run(["bench", "tiny.onnx", "--batch-sizes", "1", "--iterations", "3", "--warmup", "0", "--threads", "1",
                  "--json", "-"], work, env)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["rows"][0]["variant"] == "tiny.onnx"  # stdout: the JSON alone
    assert "tiny.onnx" in result.stderr and not (work / "-").exists()  # the table went to stderr
    plan = run(["build", "tiny.onnx", "--plan-only", "--trt-version", "10.3", "--minShapes", "input:1x3x32x32", "--optShapes", "input:8x3x32x32",
                "--maxShapes", "input:8x3x32x32",
                "--json", "plan.json"], work, env)
    assert plan.returncode == 0, plan.stderr
    assert json.loads((work / "plan.json").read_text())["trt_version"].startswith("10.3")


def test_compare_passes_for_faithful_export_and_fails_for_other_weights(exported, tmp_path):
    work, env = exported
    ok = run(["compare", "tests.helpers.tiny_models:tiny_cnn", "tiny.onnx", "--samples", "4"], work, env)
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.startswith("PASS")
    # Same architecture, different weights: the comparison must fail with exit status 1.
    import torch

    from tests.helpers.tiny_models import TinyCNN

    torch.manual_seed(123)
    torch.save(TinyCNN().state_dict(), tmp_path / "other.pt")
    bad = run(["compare", "tests.helpers.tiny_models:tiny_cnn", str(work / "tiny.onnx"), "--checkpoint", str(tmp_path / "other.pt")],
              work, env)
    assert bad.returncode == 1
    assert "FAIL" in bad.stdout and "'output'" in bad.stderr


def test_doctor_reports_backends(exported):
    work, env = exported
    result = run(["doctor", "--json"], work, env)
    assert result.returncode == 0, result.stderr
    found = json.loads(result.stdout)
    assert found["backends"]["onnxruntime"]["available"] is True
    assert found["backends"]["tensorrt"]["available"] is False
    assert "CPUExecutionProvider" in found["onnxruntime"]["providers"]


# ---- bad input: one line, non-zero, no traceback, no partial file ----

def test_missing_model_file(tmp_path, cli_env):
    r = run(["export", "nothere.pt", "-o", "x.onnx"], tmp_path, cli_env)
    assert_one_line_error(r, "nothere.pt")
    assert list(tmp_path.iterdir()) == []


def test_corrupt_model_file(tmp_path, cli_env):
    (tmp_path / "model.pt").write_bytes(b"\x00not a model")
    r = run(["export", "model.pt", "-o", "x.onnx"], tmp_path, cli_env)
    assert_one_line_error(r, "model.pt", "--checkpoint")
    assert not (tmp_path / "x.onnx").exists()


def test_corrupt_checkpoint(tmp_path, cli_env):
    (tmp_path / "w.pt").write_bytes(b"garbage")
    r = run(["export", "tests.helpers.tiny_models:tiny_cnn", "--checkpoint", "w.pt", "-o", "x.onnx"], tmp_path, cli_env)
    assert_one_line_error(r, "w.pt")
    assert not (tmp_path / "x.onnx").exists()


def test_missing_onnx(tmp_path, cli_env):
    r = run(["bench", "missing.onnx"], tmp_path, cli_env)
    assert_one_line_error(r, "missing.onnx")


def test_corrupt_onnx(tmp_path, cli_env):
    (tmp_path / "bad.onnx").write_bytes(b"this is not protobuf \xff\xfe")
    r = run(["bench", "bad.onnx", "--json", "out.json"], tmp_path, cli_env)
    assert_one_line_error(r, "bad.onnx")
    assert not (tmp_path / "out.json").exists()


def test_truncated_onnx(exported, tmp_path, cli_env):
    work, _ = exported
    data = (work / "tiny.onnx").read_bytes()
    (tmp_path / "cut.onnx").write_bytes(data[: len(data) // 2])
    r = run(["compare", str(work / "tiny.onnx"), "cut.onnx"], tmp_path, cli_env)
    assert_one_line_error(r, "cut.onnx")


def test_unknown_model_spec(tmp_path, cli_env):
    r = run(["export", "torchvision:resnet_does_not_exist", "-o", "x.onnx"], tmp_path, cli_env)
    assert_one_line_error(r, "resnet_does_not_exist")
    r = run(["export", "nosuchpackage.models:factory", "-o", "x.onnx"], tmp_path, cli_env)
    assert_one_line_error(r, "nosuchpackage")
    assert list(tmp_path.iterdir()) == []


def test_wrong_input_shape_for_onnx(exported, tmp_path, cli_env):
    work, _ = exported
    r = run(["bench", str(work / "tiny.onnx"), "--input-shape", "3x64x64", "--iterations", "2"], tmp_path, cli_env)
    assert_one_line_error(r, "'input'", "lacks the batch axis", "--input-shape input:1x3x64x64")
    r = run(["bench", str(work / "tiny.onnx"), "--input-shape", "1x3x64x64", "--iterations", "2"], tmp_path, cli_env)
    assert_one_line_error(r, "'input'", "(1, 3, 64, 64)")


def test_wrong_shape_data_file(exported, tmp_path, cli_env):
    work, _ = exported
    np.save(tmp_path / "x.npy", np.zeros((4, 3, 16, 16), np.float32))
    r = run(["compare", "tests.helpers.tiny_models:tiny_cnn", str(work / "tiny.onnx"), "--data", "x.npy"], tmp_path, cli_env)
    assert_one_line_error(r, "'input'", "(4, 3, 16, 16)")


def test_nan_data(exported, tmp_path, cli_env):
    work, _ = exported
    x = np.zeros((2, 3, 32, 32), np.float32)
    x[1, 0, 0, 0] = np.nan
    np.save(tmp_path / "x.npy", x)
    r = run(["compare", "tests.helpers.tiny_models:tiny_cnn", str(work / "tiny.onnx"), "--data", "x.npy"], tmp_path, cli_env)
    assert_one_line_error(r, "NaN")


def test_output_exists_without_force(exported, cli_env):
    work, _ = exported
    before = (work / "tiny.onnx").read_bytes()
    r = run(["export", "tests.helpers.tiny_models:tiny_cnn", "-o", "tiny.onnx"], work, cli_env)
    assert_one_line_error(r, "tiny.onnx", "--force")
    assert (work / "tiny.onnx").read_bytes() == before
    assert not [p for p in work.iterdir() if p.name.startswith(".")]


def test_hub_weights_offline(tmp_path, cli_env):
    env = dict(cli_env, TORCH_HOME=str(tmp_path / "torch-home"))
    r = run(["export", "torchvision:resnet18", "--pretrained", "-o", "x.onnx"], tmp_path, env)
    assert_one_line_error(r, "offline", "resnet18")
    assert not (tmp_path / "x.onnx").exists()


def test_parity_failure_leaves_no_file(tmp_path, cli_env):
    r = run(["export", "tests.helpers.tiny_models:drifting", "-o", "d.onnx"], tmp_path, cli_env)
    assert_one_line_error(r, "'output'")
    assert list(tmp_path.iterdir()) == []


def test_debug_shows_traceback(tmp_path, cli_env):
    r = subprocess.run([sys.executable, "-m", "trtopt", "--debug", "bench", "missing.onnx"], cwd=tmp_path, env=cli_env,
                       capture_output=True, text=True)
    assert r.returncode != 0 and "Traceback" in r.stderr


def test_compare_warns_when_the_reference_itself_gives_nan(tmp_path):
    """Identical NaN on both sides match (the candidate is faithful), but the user is told the reference is broken."""
    import onnx
    from onnx import TensorProto, helper

    from tests.helpers.env import cli_environment

    graph = helper.make_graph([helper.make_node("Log", ["x"], ["y"])], "log",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), tmp_path / "log.onnx")
    data = np.linspace(-1.0, 1.0, 16, dtype=np.float32).reshape(4, 4)  # half negative: Log gives NaN there
    np.save(tmp_path / "x.npy", data)
    result = run(["compare", "log.onnx", "log.onnx", "--data", "x.npy", "--json", "c.json"], tmp_path, cli_environment())
    assert result.returncode == 0, result.stderr
    record = json.loads((tmp_path / "c.json").read_text())["outputs"][0]
    assert record["reference_nan_count"] == 8 and record["passed"] is True
    assert "reference gives 8 NaN/inf in output 'y'" in result.stderr


@pytest.mark.parametrize("argv, needle", [
    (["quantize", "m.onnx", "-o", "q.onnx", "--target", "tensorrtt"], "quantize: argument --target: invalid choice"),
    (["quantize", "m.onnx"], "quantize: the following arguments are required: -o/--output"),
    (["bench", "m.onnx", "--iterations", "abc"], "bench: argument --iterations: invalid int value"),
    (["cache", "blah", "x"], "cache: argument action: invalid choice"),
    (["no-such-command"], "argument COMMAND: invalid choice"),
    # counts: a negative --samples reached numpy as a traceback, --threads 0/-1 and --repeats 0 were taken
    (["bench", "m.onnx", "--samples", "-1"], "bench: argument --samples: -1 is less than 1"),
    (["calibrate", "m.onnx", "--samples", "0"], "calibrate: argument --samples: 0 is less than 1"),
    (["compare", "a.onnx", "b.onnx", "--threads", "0"], "compare: argument --threads: 0 is less than 1"),
    (["bench", "m.onnx", "--threads", "-1"], "bench: argument --threads: -1 is less than 1"),
    (["bench", "m.onnx", "--repeats", "0", "--save-baseline", "b.json"], "bench: argument --repeats: 0 is less than 1"),
    (["factorize", "m", "-o", "f.onnx", "--distill-steps", "-1"], "factorize: argument --distill-steps: -1 is less than 0"),
    (["cluster", "m", "-o", "c.npz", "--train-samples", "0"], "cluster: argument --train-samples: 0 is less than 1"),
])
def test_usage_errors_are_one_line(argv, needle, capsys):
    """argparse's own errors (bad choice, missing or malformed argument) follow the one-line contract too,
    instead of printing the whole usage block before the line that matters."""
    from trtopt.cli.main import main

    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    err = capsys.readouterr().err
    assert_one_line_error(Outcome(exit_info.value.code, "", err), needle, "--help")


def test_compare_prints_outputs_with_no_finite_element(tmp_path, monkeypatch, capsys):
    """Inputs that overflow the model (3e38) leave no finite output pair to measure: the summary line says n/a
    (formatting None as a number was a traceback)."""
    from tests.helpers.cli import run_here
    from tests.helpers.tiny_artifacts import make_tiny_artifacts

    made = make_tiny_artifacts(tmp_path)
    np.save(tmp_path / "overflow.npy", np.full((4, 3, 32, 32), 3e38, np.float32))
    monkeypatch.chdir(tmp_path)
    result = run_here(["compare", made["onnx"], made["onnx"], "--data", "overflow.npy"], capsys)
    assert result.returncode in (0, 1) and "Traceback" not in result.stderr
    assert "max abs n/a, max rel n/a, p99 abs n/a" in result.stdout


@pytest.mark.parametrize("stages, needle", [("", "stages='' is not one of"), ("export, bogus", "stages='bogus' is not one of")])
def test_optimize_stages_flag_is_read_strictly(stages, needle, tmp_path, monkeypatch, capsys):
    """--stages '' was silently no override; names after ', ' are read without the space."""
    from tests.helpers.cli import run_here

    (tmp_path / "r.yaml").write_text("model: tests.helpers.tiny_models:tiny_cnn\nstages: [export]\n", encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    assert_one_line_error(run_here(["optimize", "r.yaml", "--out", "run", "--stages", stages], capsys), needle)
    assert not (tmp_path / "run").exists()
