"""`trtopt optimize`: stages into a run directory, resume by content keys, reports with plots, bad recipes."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from trtopt._config import from_dict
from trtopt.compress.config import ShareConfig, tied_finetune
from trtopt.config import Recipe
from trtopt.errors import TrtoptError
from trtopt.measure.profile import TimingConfig
from trtopt.pipeline import optimize
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


def test_a_partial_rerun_writes_beside_the_fuller_report_and_leaves_it(first_run):
    out, _, paths = first_run
    full = {name: paths[name].read_bytes() for name in ("json", "markdown", "html")}
    partial, written = optimize(tiny_recipe(stages=("export",)), out)
    assert written["html"] == out / "partial" / "report.html" and partial["partial_of"] == "../report.html"
    assert "the full report of this run directory is `../report.html`" in written["markdown"].read_text()
    assert {name: paths[name].read_bytes() for name in full} == full  # the fuller report is untouched


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
    for force in (False, True):  # --force re-runs a run directory's stages; it never adopts a foreign folder
        with pytest.raises(TrtoptError, match="not a trtopt run directory"):
            optimize(tiny_recipe(), tmp_path, force=force)
        assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]


@pytest.mark.parametrize("out, needle", [("notes.txt", "run directory {} is a file, not a folder"),
                                         ("notes.txt/run", "lies below {}, which is a file")])
def test_a_run_directory_that_is_or_lies_below_a_file_is_refused(tmp_path, out, needle):
    """--out naming a file (or a path below one) was an OSError traceback from mkdir."""
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(TrtoptError, match="fix:") as e:
        optimize(tiny_recipe(), tmp_path / out)
    assert needle.format(tmp_path / ("notes.txt" if "below" in needle else out)) in str(e.value)
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_a_run_that_fails_before_any_stage_leaves_no_folder(tmp_path):
    """A new run directory (and the parents it needed) is removed when the run fails before a stage finished:
    it would hold only the lock and an empty ledger, a half-made run."""
    out = tmp_path / "runs" / "new"
    with pytest.raises(TrtoptError, match="data source /etc/passwd has an unknown type"):
        optimize(replace(tiny_recipe(), data="/etc/passwd"), out)
    assert list(tmp_path.iterdir()) == []


RESUME_STAGES = ("export", "calibrate", "quantize", "profile", "compare")


def statuses(report) -> dict[str, str]:
    return {name: s["status"] for name, s in report["stages"].items()}


def test_a_data_file_changed_in_place_reruns_what_reads_it_and_reuses_the_rest(tmp_path):
    rng = np.random.default_rng(0)
    np.save(tmp_path / "eval.npy", rng.uniform(-1, 1, (6, 3, 32, 32)).astype(np.float32))
    np.save(tmp_path / "calib.npy", rng.uniform(-1, 1, (6, 3, 32, 32)).astype(np.float32))
    recipe = tiny_recipe(stages=RESUME_STAGES, data=str(tmp_path / "eval.npy"), calibration_data=str(tmp_path / "calib.npy"))
    first, _ = optimize(recipe, tmp_path / "run")
    ranges = (tmp_path / "run" / "ranges.json").read_text()
    np.save(tmp_path / "calib.npy", rng.uniform(-3, 3, (6, 3, 32, 32)).astype(np.float32))  # same path, new contents
    second, _ = optimize(recipe, tmp_path / "run")
    assert statuses(second) == {"export": "reused", "calibrate": "ran", "quantize": "ran", "profile": "ran", "compare": "ran"}
    assert (tmp_path / "run" / "ranges.json").read_text() != ranges
    assert "| export | reused |" in (tmp_path / "run" / "report.md").read_text()  # the Stages table
    np.save(tmp_path / "eval.npy", rng.uniform(-1, 1, (6, 3, 32, 32)).astype(np.float32))
    third, _ = optimize(recipe, tmp_path / "run")  # the evaluation data: export's parity check, profile, compare
    assert statuses(third) == {"export": "ran", "calibrate": "reused", "quantize": "reused", "profile": "ran", "compare": "ran"}


@pytest.mark.filterwarnings("ignore:`torch.jit:FutureWarning")
def test_a_model_file_replaced_in_place_is_exported_again(tmp_path, tiny_cnn):
    import torch

    def save_traced(seed):
        torch.manual_seed(seed)
        module = type(tiny_cnn.module)().eval()
        torch.jit.trace(module, torch.zeros(1, 3, 32, 32)).save(str(tmp_path / "model.ts"))

    save_traced(0)
    recipe = tiny_recipe(model=str(tmp_path / "model.ts"), input_shapes={"input": (3, 32, 32)}, stages=("export",))
    optimize(recipe, tmp_path / "run")
    assert statuses(optimize(recipe, tmp_path / "run")[0]) == {"export": "reused"}
    save_traced(1)  # another model at the same path
    again, _ = optimize(recipe, tmp_path / "run")
    assert statuses(again) == {"export": "ran"}


def test_a_recipe_model_that_would_run_code_needs_trust_code(tmp_path, tiny_cnn):
    from trtopt.models.module_file import save_module

    save_module(tiny_cnn, tmp_path / "tiny.pt")  # its architecture is a factory the file names
    with pytest.raises(TrtoptError, match="tiny.pt rebuilds its architecture by calling tests.helpers.tiny_models:tiny_cnn"):
        optimize(tiny_recipe(model=str(tmp_path / "tiny.pt"), stages=("export",)), tmp_path / "run")
    report, _ = optimize(tiny_recipe(model=str(tmp_path / "tiny.pt"), stages=("export",), trust_code=True), tmp_path / "run")
    assert statuses(report) == {"export": "ran"}


def test_sources_are_keyed_by_content_not_path(tmp_path):
    from trtopt.pipeline import content_sha256

    (tmp_path / "images" / "sub").mkdir(parents=True)
    (tmp_path / "images" / "a.png").write_bytes(b"one")
    (tmp_path / "images" / "sub" / "b.png").write_bytes(b"two")
    before = content_sha256(tmp_path / "images")
    os.utime(tmp_path / "images" / "a.png", (0, 0))
    assert content_sha256(tmp_path / "images") == before  # times are not contents
    (tmp_path / "images" / "a.png").write_bytes(b"ONE")
    changed = content_sha256(tmp_path / "images")
    (tmp_path / "images" / "a.png").rename(tmp_path / "images" / "c.png")
    assert len({before, changed, content_sha256(tmp_path / "images")}) == 3  # names count too
    shutil.copytree(tmp_path / "images", tmp_path / "elsewhere")
    assert content_sha256(tmp_path / "elsewhere") == content_sha256(tmp_path / "images")


def test_a_copied_run_directory_resumes_from_another_directory_on_its_own_files(tmp_path, monkeypatch):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    np.save(tmp_path / "eval.npy", np.random.default_rng(0).uniform(-1, 1, (4, 3, 32, 32)).astype(np.float32))
    recipe = tiny_recipe(stages=RESUME_STAGES, data=str(tmp_path / "eval.npy"))
    monkeypatch.chdir(tmp_path / "a")
    optimize(recipe, "run")  # a path relative to the working directory
    ledger = json.loads((tmp_path / "a" / "run" / "stages.json").read_text())
    assert ledger["stages"]["export"]["result"]["path"] == "model.onnx"  # relative to the run directory
    monkeypatch.chdir(tmp_path / "b")
    resumed, _ = optimize(recipe, tmp_path / "a" / "run")
    assert set(statuses(resumed).values()) == {"reused"}
    shutil.copytree(tmp_path / "a" / "run", tmp_path / "b" / "copy")
    shutil.rmtree(tmp_path / "a")  # the copy cannot lean on the original's files
    copied, _ = optimize(recipe, "copy")
    assert set(statuses(copied).values()) == {"reused"} and copied["rows"] == resumed["rows"]
    assert Path(copied["onnx"]["path"]) == tmp_path / "b" / "copy" / "model.onnx"
    (tmp_path / "b" / "copy" / "model.int8.onnxruntime.onnx").write_bytes(b"damaged")  # its own files are verified
    again, _ = optimize(recipe, "copy")
    assert statuses(again)["quantize"] == "ran" and statuses(again)["export"] == "reused"


def test_a_run_directory_in_use_is_refused_in_process_and_across_processes(tmp_path, cli_env):
    from trtopt.pipeline import run_lock

    out = tmp_path / "run"
    with run_lock(out):
        with pytest.raises(TrtoptError, match=f"is in use by another trtopt optimize \\(pid {os.getpid()}\\)"):
            optimize(tiny_recipe(stages=("export",)), out)
    (tmp_path / "r.yaml").write_text("model: tests.helpers.tiny_models:tiny_cnn\nstages: [export]\n")
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from pathlib import Path; "
                               "from trtopt.pipeline import run_lock\nwith run_lock(Path(sys.argv[1])):\n"
                               "    print('locked', flush=True); time.sleep(120)", str(out)],
                              env=cli_env, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        r = run_cli(["optimize", "r.yaml", "--out", "run"], tmp_path, cli_env)
        assert r.returncode == 2 and f"(pid {holder.pid})" in r.stderr and "wait for it to finish" in r.stderr
        assert len(r.stderr.strip().splitlines()) == 1 and not (out / "stages.json").exists()
    finally:
        holder.kill()
        holder.wait()
    r = run_cli(["optimize", "r.yaml", "--out", "run"], tmp_path, cli_env)  # the kernel freed the dead holder's lock
    assert r.returncode == 0, r.stderr


def test_stage_dependencies_are_checked_in_the_recipe():
    with pytest.raises(TrtoptError, match="'quantize' needs 'calibrate'"):
        tiny_recipe(stages=("export", "quantize"))
    with pytest.raises(TrtoptError, match="stages='prunee'"):
        from_dict(Recipe, {"model": "m", "stages": ["prunee"]})


def test_factorize_and_cluster_stages_write_a_compressed_model_and_the_codebook_file(tmp_path):
    recipe = tiny_recipe(stages=("factorize", "cluster", "export", "compare"), factorize={"method": "energy", "energy": 0.5, "min_rank": 1},
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


@pytest.mark.parametrize("stages, needle", [
    ([["export", {}]], "'stages' is a list"),
    ({"export": {"outputs": {}}}, "stage 'export' has no string 'key'"),
    ({"export": {"key": "k", "outputs": ["model.onnx"]}}, "stage 'export' 'outputs' is not a mapping"),
    ({"export": {"key": "k", "outputs": {"../../elsewhere.onnx": "0" * 64}}}, "outside the run directory"),
])
def test_a_ledger_of_the_wrong_shape_is_one_error_naming_the_stage(tmp_path, stages, needle):
    import json

    from trtopt.pipeline import LEDGER, LEDGER_FORMAT, Ledger

    (tmp_path / LEDGER).write_text(json.dumps({"format": LEDGER_FORMAT, "stages": stages}))
    with pytest.raises(TrtoptError, match=needle) as e:
        Ledger.open(tmp_path, force=False)
    assert "--force" in str(e.value)


@pytest.mark.slow
def test_cluster_stage_measures_fidelity_and_fine_tunes_tied(tmp_path):
    recipe = replace(Recipe(model="zoo:digits_cnn", batch_sizes=(1,), threads=1), stages=("cluster",),
                     cluster=ShareConfig(bits=2, finetune=tied_finetune(6, lr=1e-3, batch_size=32)),
                     data="dataset:digits:test", train_data="dataset:digits:train")
    report, _ = optimize(recipe, tmp_path / "run")
    summary = report["compression"]["cluster"]
    assert summary["fidelity_metric"] == "top1_agreement" and 0.5 < summary["fidelity_value"] <= 1.0
    assert summary["fidelity_samples"] == 359
    ledger = json.loads((tmp_path / "run" / "stages.json").read_text())["stages"]["cluster"]["result"]
    assert ledger["finetune"]["steps"] == 6 and ledger["fidelity"]["accuracy"] <= ledger["fidelity"]["reference_accuracy"]
    assert list((tmp_path / "run" / "cluster_checkpoints").glob("*/last.pt"))
    assert "fidelity value" in (tmp_path / "run" / "report.md").read_text()
