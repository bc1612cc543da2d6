"""`trtopt optimize`: stages into a run directory, resume by content keys, reports with plots, bad recipes."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from trtopt.config import Recipe
from trtopt._config import from_dict
from trtopt.errors import TrtoptError
from trtopt.pipeline import optimize
from trtopt.measure.profile import TimingConfig
from trtopt.report.html import markdown_to_html
from trtopt.report.plots import pareto_front


def tiny_recipe(**changes) -> Recipe:
    recipe = Recipe(model="tests.helpers.tiny_models:tiny_cnn", batch_sizes=(1, 2), threads=1,
                    timing=TimingConfig(warmup_iterations=1, iterations=5))
    return replace(recipe, **changes)


@pytest.fixture(scope="module")
def first_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "tiny"
    report, paths = optimize(tiny_recipe(), out)
    return out, report, paths


def test_run_directory_holds_every_artifact_and_report(first_run):
    out, report, paths = first_run
    names = {p.name for p in out.iterdir()}
    assert names >= {"model.onnx", "ranges.json", "calibration.cache", "model.int8.onnxruntime.onnx",
                     "model.int8.tensorrt.onnx", "timing.json", "accuracy.json", "stages.json", "recipe.yaml",
                     "report.json", "report.md", "report.html", "plots", "bundle"}
    assert {s["status"] for s in report["stages"].values()} == {"ran"}
    assert json.loads(paths["json"].read_text())["rows"] == json.loads(json.dumps(report["rows"]))
    variants = [(r["variant"], r["batch_size"]) for r in report["rows"]]
    assert variants[:3] == [("pytorch-fp32", 1), ("onnxruntime-fp32", 1), ("onnxruntime-int8", 1)]
    assert variants[-1] == ("tensorrt-int8-qdq", None)
    assert report["accuracy"]["onnxruntime-fp32"]["passed"]
    html = paths["html"].read_text()
    assert html.count('src="data:image/png;base64,') == 3 and "<table>" in html and "<h2>INT8</h2>" in html
    assert (out / "plots" / "tradeoff.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_tensorrt_stages_without_tensorrt_record_why_and_still_write_the_bundle(first_run):
    out, report, _ = first_run
    build = report["tensorrt"]["build"]
    assert build["built"] is False and "TensorRT is not installed" in build["reason"]
    manifest = json.loads((out / "bundle" / "manifest.json").read_text())
    assert manifest["target"] == "jetson-orin" and manifest["trt10_version"] == "10.3.0"
    plans = {(p["model"], p["trt_version"]): p for p in manifest["plans"]}
    assert plans[("model.int8.tensorrt", "11.1.0")]["int8_source"] == "qdq"
    assert plans[("model", "10.3.0")]["int8_source"] == "calibration-cache"  # implicit INT8 from our ranges
    plan = json.loads((out / "bundle" / plans[("model", "10.3.0")]["plan"]).read_text())
    assert {p["name"]: p["max"] for p in plan["profiles"]} == {"input": [2, 3, 32, 32]}  # batch 1..max(batch_sizes)
    assert "## TensorRT" in (out / "report.md").read_text()


def test_unchanged_rerun_reuses_every_stage_and_reports_the_same_numbers(first_run):
    out, report, _ = first_run
    again, _ = optimize(tiny_recipe(), out)
    assert {s["status"] for s in again["stages"].values()} == {"reused"}
    assert again["rows"] == report["rows"]


def test_a_changed_stage_config_reruns_that_stage_and_what_depends_on_it(tmp_path):
    out = tmp_path / "run"
    optimize(tiny_recipe(), out)
    changed, _ = optimize(tiny_recipe(quantize=replace(tiny_recipe().quantize, per_channel=False)), out)
    status = {name: s["status"] for name, s in changed["stages"].items()}
    assert status == {"export": "reused", "calibrate": "reused", "quantize": "ran", "build": "ran", "bundle": "ran",
                      "profile": "ran", "compare": "ran"}


def test_a_damaged_output_is_rebuilt_not_served(tmp_path):
    out = tmp_path / "run"
    optimize(tiny_recipe(stages=("export", "calibrate")), out)
    (out / "ranges.json").write_text("{}")
    again, _ = optimize(tiny_recipe(stages=("export", "calibrate")), out)
    assert again["stages"]["export"]["status"] == "reused" and again["stages"]["calibrate"]["status"] == "ran"
    assert json.loads((out / "ranges.json").read_text())["tensors"]


def test_force_reruns_everything(tmp_path):
    out = tmp_path / "run"
    optimize(tiny_recipe(stages=("export",)), out)
    again, _ = optimize(tiny_recipe(stages=("export",)), out, force=True)
    assert again["stages"]["export"]["status"] == "ran"


def test_a_folder_that_is_not_a_run_directory_is_refused(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(TrtoptError, match="not a trtopt run directory"):
        optimize(tiny_recipe(), tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]


def test_stage_dependencies_are_checked_in_the_recipe():
    with pytest.raises(TrtoptError, match="'quantize' needs 'calibrate'"):
        tiny_recipe(stages=("export", "quantize"))
    with pytest.raises(TrtoptError, match="stages='prunee'"):
        from_dict(Recipe, {"model": "m", "stages": ["prunee"]})


def test_factorize_and_cluster_stages_write_a_compressed_model_and_the_codebook_file(tmp_path):
    recipe = tiny_recipe(stages=("factorize", "cluster", "export", "compare"), factorize={"method": "energy", "energy": 0.5},
                         cluster={"bits": 4})
    report, _ = optimize(recipe, tmp_path / "run")
    out = tmp_path / "run"
    assert {"model.factorize.pt", "model.cluster.pt", "model.shared.npz", "model.compressed.onnx"} <= {
        p.name for p in out.iterdir()}
    summary = report["compression"]
    assert summary["factorize"]["factorized_layers"] >= 1
    assert summary["cluster"]["storage"]["compression_ratio"] > 1.1  # a tiny model: BN and biases stay FP32
    assert "onnxruntime-fp32-compressed" in report["accuracy"] and "## Compression (PyTorch side)" in (
        out / "report.md").read_text()


def test_distill_needs_a_model_to_train_and_data():
    with pytest.raises(TrtoptError, match="neither stage is listed"):
        tiny_recipe(stages=("distill", "export"), distill={}, train_data="random")
    with pytest.raises(TrtoptError, match="no train_data"):
        tiny_recipe(stages=("prune", "distill", "export"), prune={}, distill={})
    with pytest.raises(TrtoptError, match="no 'prune' section"):
        tiny_recipe(stages=("prune", "export"))


def test_pareto_front_keeps_only_undominated_points():
    points = [(10.0, 0.90), (5.0, 0.80), (20.0, 0.95), (12.0, 0.85), (5.0, 0.70)]
    assert pareto_front(points) == [1, 0, 2]


def test_markdown_to_html_renders_tables_lists_and_headings():
    html = markdown_to_html("## INT8\n\n- a **b**\n\n| x | y |\n|---|---|\n| 1 | `z` |\n\ntext")
    assert "<h2>INT8</h2>" in html and "<li>a <b>b</b></li>" in html
    assert "<th>x</th>" in html and "<td><code>z</code></td>" in html and "<p>text</p>" in html


def run_cli(args, cwd, env):
    return subprocess.run([sys.executable, "-m", "trtopt", "-q", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=600, check=False)


def test_cli_optimize_prints_the_report_path(tmp_path, cli_env):
    Path(tmp_path / "r.yaml").write_text("model: tests.helpers.tiny_models:tiny_cnn\nbatch_sizes: [1]\nthreads: 1\n"
                                         "stages: [export, profile]\ntiming:\n  iterations: 3\n")
    r = run_cli(["optimize", "r.yaml", "--out", "run"], tmp_path, cli_env)
    assert r.returncode == 0, r.stderr
    assert "report: run/report.html" in r.stdout and (tmp_path / "run" / "report.html").is_file()


@pytest.mark.parametrize("body, needles", [
    ("model: m\nexport:\n  opset: 18\n  simplfy: true\n", ["line 4", "unknown key 'export.simplfy'", "valid keys"]),
    ("model: m\nbatch_sizes: 8\n", ["line 2", "batch_sizes is 8 (int), expected a list"]),
    ("model: m\ntiming:\n  iterations: ten\n", ["line 3", "timing.iterations is 'ten'"]),
    ("model: m\nstages: [export, quantize]\n", ["line 2", "needs 'calibrate'"]),
    ("model: [unclosed\n", ["not valid YAML"]),
])
def test_cli_bad_recipes_name_the_key_and_line(tmp_path, cli_env, body, needles):
    (tmp_path / "r.yaml").write_text(body)
    r = run_cli(["optimize", "r.yaml"], tmp_path, cli_env)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    for needle in needles:
        assert needle in r.stderr
    assert not (tmp_path / "runs").exists()


def test_cli_missing_data_path_is_named(tmp_path, cli_env):
    (tmp_path / "r.yaml").write_text("model: tests.helpers.tiny_models:tiny_cnn\ndata: missing/images\nstages: [export]\n")
    r = run_cli(["optimize", "r.yaml", "--out", "run"], tmp_path, cli_env)
    assert r.returncode == 2 and "data source missing/images does not exist" in r.stderr


@pytest.mark.slow
def test_prune_and_distill_stages_on_real_labelled_data(tmp_path):
    """digits CNN: half the channels pruned, distilled 2 epochs; the compressed model is exported, quantized
    and compared, and a second run reuses the trained model instead of training again."""
    from trtopt.demo import compression_recipe

    recipe = replace(compression_recipe(iterations=5, epochs=2), stages=("prune", "distill", "export", "calibrate",
                                                                         "quantize", "profile", "compare"))
    report, _ = optimize(recipe, tmp_path / "run")
    names = {p.name for p in (tmp_path / "run").iterdir()}
    assert {"model.prune.pt", "model.distill.pt", "model.compressed.onnx"} <= names
    prune = json.loads((tmp_path / "run" / "stages.json").read_text())["stages"]["prune"]["result"]
    assert prune["parameters_after"] < 0.3 * prune["parameters_before"]
    accuracy = report["task_accuracy"]["values"]
    assert accuracy["pytorch-fp32"] > 0.98
    assert accuracy["pytorch-compressed"] > 0.93  # 2 epochs; the demo trains 10 (see README)
    assert abs(accuracy["onnxruntime-fp32-compressed"] - accuracy["pytorch-compressed"]) < 0.003
    rows = {(r["variant"], r["batch_size"]): r for r in report["rows"]}
    assert rows[("pytorch-compressed", 64)]["pruning_rate_percent"] > 70
    again, _ = optimize(recipe, tmp_path / "run")
    assert again["stages"]["distill"]["status"] == "reused"
