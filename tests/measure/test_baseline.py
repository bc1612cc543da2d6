"""Latency regression gating: baselines, the statistical verdict, environment refusal, golden outputs.

Models are small MatMul chains written with onnx.helper, so "the same model" and "a slower model" are
exact: a slower one has more layers, a wrong one has other weights.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.helpers.env import cli_environment
from trtopt.errors import TrtoptError
from trtopt.measure.baseline import (
    BASELINE_FORMAT,
    CONTROL_NAME,
    GateConfig,
    baseline_from_bench,
    check_environment,
    compare_with_baseline,
    control_candidate,
    judge_golden,
    load_baseline,
    markdown_summary,
)


def chain_model(path: Path, layers: int, width: int = 192, seed: int = 0) -> Path:
    """An ONNX model: ``layers`` × (MatMul width×width + Relu), input "x" [batch, width]."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    nodes, inits, name = [], [], "x"
    for i in range(layers):
        w = (rng.standard_normal((width, width)) / np.sqrt(width)).astype(np.float32)
        inits.append(numpy_helper.from_array(w, f"w{i}"))
        nodes += [helper.make_node("MatMul", [name, f"w{i}"], [f"m{i}"]), helper.make_node("Relu", [f"m{i}"], [f"r{i}"])]
        name = f"r{i}"
    nodes.append(helper.make_node("Identity", [name], ["y"]))
    graph = helper.make_graph(nodes, "chain", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", width])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", width])], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


def timed_document(path: Path, iterations: int = 30, batch_sizes=(1, 8), repeats: int = 5) -> dict:
    """Time ``path`` alone (as a CI job would) and return today's run as a baseline document."""
    from trtopt.data import load_feed
    from trtopt.environment import environment
    from trtopt.measure.bench import bench, open_candidate
    from trtopt.measure.profile import TimingConfig

    candidate = open_candidate(str(path), threads=1)
    candidate.name = "model.onnx"
    feed = load_feed(None, candidate.inputs, count=8)
    result = bench([candidate, control_candidate(threads=1)], feed, batch_sizes, TimingConfig(warmup_iterations=5, iterations=iterations), repeats=repeats)
    candidate.runner.close()
    return baseline_from_bench(result, environment())


def test_unchanged_model_is_not_flagged_in_ten_reruns(tmp_path):
    model = chain_model(tmp_path / "model.onnx", layers=8, width=512)  # ~0.2-1 ms per call, as in the benchmark
    baseline = timed_document(model)
    verdicts = [compare_with_baseline(baseline, timed_document(model), GateConfig()) for _ in range(10)]
    flagged = [r for v in verdicts for r in v["entries"] if r["verdict"] == "regression"]
    assert not flagged, flagged
    assert all(v["passed"] for v in verdicts)


def test_slower_model_is_flagged_with_its_slowdown(tmp_path):
    baseline = timed_document(chain_model(tmp_path / "model.onnx", layers=4))
    slowed = timed_document(chain_model(tmp_path / "model.onnx", layers=16))
    verdict = compare_with_baseline(baseline, slowed, GateConfig(tolerance=0.10))
    assert not verdict["passed"] and verdict["regressions"] == 2
    for row in verdict["entries"]:
        assert row["verdict"] == "regression"
        assert row["slowdown_ci_low"] > 1.10 and row["slowdown"] > 2.0
    assert "**REGRESSION**" in markdown_summary(verdict) and "FAIL" in markdown_summary(verdict)


def test_large_tolerance_forgives_a_real_slowdown(tmp_path):
    baseline = timed_document(chain_model(tmp_path / "model.onnx", layers=4), batch_sizes=(8,))
    slowed = timed_document(chain_model(tmp_path / "model.onnx", layers=8), batch_sizes=(8,))
    assert compare_with_baseline(baseline, slowed, GateConfig(tolerance=5.0))["passed"]


def test_faster_model_is_an_improvement_not_a_failure(tmp_path):
    baseline = timed_document(chain_model(tmp_path / "model.onnx", layers=16), batch_sizes=(8,))
    faster = timed_document(chain_model(tmp_path / "model.onnx", layers=2), batch_sizes=(8,))
    verdict = compare_with_baseline(baseline, faster, GateConfig())
    assert verdict["passed"] and verdict["improvements"] == 1


def _document(env: dict, samples=(1.0, 1.1, 0.9)) -> dict:
    return {"format": BASELINE_FORMAT, "environment": env,
            "entries": [{"candidate": "m", "batch_size": 1, "repeats_ms": [list(samples)]}]}


def _entries(*keys, samples=(1.0, 1.1, 0.9)) -> dict:
    return {"format": BASELINE_FORMAT, "environment": {},
            "entries": [{"candidate": c, "batch_size": b, "repeats_ms": [list(samples)] * 3} for c, b in keys]}


@pytest.mark.parametrize("baseline_keys, current_keys, needles", [
    ([("model.onnx", 4)], [("renamed.onnx", 4)], ["baseline entry model.onnx @ batch 4 is missing", "no entry was judged"]),
    ([("model.onnx", 4)], [("model.onnx", 8)], ["baseline entry model.onnx @ batch 4 is missing"]),
    ([("model.onnx", 1), ("model.onnx", 4)], [("model.onnx", 1)], ["baseline entry model.onnx @ batch 4 is missing"]),
    ([], [("model.onnx", 4)], ["no entry was judged: the baseline has 0 entries and this run 1"]),
    ([(CONTROL_NAME, 4)], [("model.onnx", 4), (CONTROL_NAME, 4)], ["no entry was judged"]),
])
def test_the_gate_fails_when_a_baseline_entry_was_not_judged(baseline_keys, current_keys, needles):
    verdict = compare_with_baseline(_entries(*baseline_keys), _entries(*current_keys), GateConfig())
    assert not verdict["passed"] and verdict["regressions"] == 0
    for needle in needles:
        assert any(needle in f for f in verdict["failures"]), verdict["failures"]
    summary = markdown_summary(verdict)
    assert "**FAIL**: 0 regression(s)" in summary and "PASS" not in summary and needles[0] in summary


def test_the_gate_passes_an_unchanged_run_and_ignores_a_missing_control():
    verdict = compare_with_baseline(_entries(("m", 1), (CONTROL_NAME, 1)), _entries(("m", 1), ("extra", 1)), GateConfig())
    assert verdict["passed"] and verdict["failures"] == [] and verdict["new"] == ["extra @ batch 1"]
    assert markdown_summary(verdict).rstrip().endswith("**PASS**: 0 regression(s), 0 improvement(s)")


def test_golden_outputs_removed_or_not_in_the_run_fail_the_gate(tmp_path):
    from trtopt.measure.baseline import save_golden
    from trtopt.measure.compare import Tolerances

    outputs = {"a.onnx": {"y": np.ones((2, 3), np.float32)}}
    for golden in (None, {}):
        verdict = judge_golden(tmp_path / "b.json", {"golden": golden}, outputs, Tolerances())
        assert not verdict["passed"] and "golden: null" in verdict["failures"][0]
    record = save_golden({"a.onnx": outputs["a.onnx"], "b.onnx": outputs["a.onnx"]}, tmp_path / "b.json.golden.npz")
    verdict = judge_golden(tmp_path / "b.json", {"golden": record}, outputs, Tolerances())
    assert verdict["failures"] == ["golden outputs of b.onnx were not compared: b.onnx is not in this run"]
    assert verdict["results"]["a.onnx"]["passed"]
    latency = compare_with_baseline(_entries(("a.onnx", 1)), _entries(("a.onnx", 1)), GateConfig())
    summary = markdown_summary(latency, verdict)
    assert "**FAIL**" in summary and "b.onnx is not in this run" in summary


def test_environment_mismatch_is_refused_unless_allowed():
    old = {"cpu_model": "CPU A", "cpu_count_logical": 2, "packages": {"onnxruntime": "1.20.0"}}
    new = {"cpu_model": "CPU B", "cpu_count_logical": 2, "packages": {"onnxruntime": "1.32.0"}}
    with pytest.raises(TrtoptError, match="another environment") as err:
        compare_with_baseline(_document(old), _document(new), GateConfig())
    assert "cpu_model: 'CPU A' → 'CPU B'" in str(err.value) and "packages.onnxruntime" in str(err.value)
    result = compare_with_baseline(_document(old), _document(new), GateConfig(allow_environment_mismatch=True))
    assert len(result["environment_differences"]) == 2
    assert "Environment differs" in markdown_summary(result)
    assert check_environment(old, dict(old), allow_mismatch=False) == []


def test_gpu_clocks_do_not_count_as_an_environment_change():
    a = {"gpus": [{"name": "NVIDIA H200", "clocks_sm": "1980"}]}
    b = {"gpus": [{"name": "NVIDIA H200", "clocks_sm": "1755"}]}
    assert check_environment(a, b, allow_mismatch=False) == []


@pytest.mark.parametrize("content, needle", [
    ("{not json", "not valid JSON"),
    (json.dumps({"entries": []}), "no 'format' field"),
    (json.dumps({"format": 1, "environment": {}, "entries": []}), "older format"),
    (json.dumps({"format": BASELINE_FORMAT, "entries": []}), "lacks 'environment'"),
    (json.dumps({"format": BASELINE_FORMAT, "environment": {}, "entries": [{"repeats_ms": [[1.0, None]]}]}), "corrupted"),
])
def test_bad_baseline_files_name_the_problem(tmp_path, content, needle):
    path = tmp_path / "baseline.json"
    path.write_text(content)
    with pytest.raises(TrtoptError, match=needle):
        load_baseline(path)


def test_gate_config_validation():
    with pytest.raises(TrtoptError, match="tolerance"):
        GateConfig(tolerance=-0.1)
    with pytest.raises(TrtoptError, match="confidence"):
        GateConfig(confidence=1.0)


def run_cli(args, cwd):
    # cli_environment puts this checkout first on PYTHONPATH: the subprocess runs the trtopt under test
    return subprocess.run([sys.executable, "-m", "trtopt", "-q", *args], cwd=cwd, env=cli_environment(), capture_output=True,
                          text=True, check=False, timeout=300)


BENCH = ["bench", "model.onnx", "--iterations", "40", "--batch-sizes", "4", "--threads", "1"]


def test_cli_gate_end_to_end(tmp_path):
    """Record, pass unchanged, fail on a slower model, fail on wrong outputs; history and summary written."""
    chain_model(tmp_path / "model.onnx", layers=4, width=512)  # ms-scale calls: sub-0.1 ms ones are clock noise
    r = run_cli([*BENCH, "--save-baseline", "base.json"], tmp_path)
    assert r.returncode == 0, r.stderr
    document = load_baseline(tmp_path / "base.json")
    assert document["golden"]["path"] == "base.json.golden.npz" and len(document["entries"][0]["repeats_ms"]) == 5
    assert "cpu_model" in document["environment"]

    r = run_cli([*BENCH, "--save-baseline", "base.json"], tmp_path)
    assert r.returncode == 2 and "already exists" in r.stderr  # no --force: the baseline is kept

    r = run_cli([*BENCH, "--baseline", "base.json", "--history", "h.jsonl", "--summary", "s.md"], tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "PASS" in (tmp_path / "s.md").read_text()

    chain_model(tmp_path / "model.onnx", layers=16, width=512)  # same name, four times the work
    r = run_cli([*BENCH, "--baseline", "base.json", "--history", "h.jsonl"], tmp_path)
    assert r.returncode == 1 and "**REGRESSION**" in r.stdout

    chain_model(tmp_path / "model.onnx", layers=4, width=512, seed=1)  # same speed, other weights
    r = run_cli([*BENCH, "--baseline", "base.json", "--history", "h.jsonl", "--golden-atol", "y:1e-3"], tmp_path)
    assert r.returncode == 1 and "**MISMATCH** in y" in r.stdout

    history = [json.loads(line) for line in (tmp_path / "h.jsonl").read_text().splitlines()]
    assert [h["passed"] for h in history] == [True, False, False]
    assert history[1]["regressions"] == 1 and history[2]["golden_passed"] is False


def test_cli_refuses_a_baseline_from_another_machine_before_timing(tmp_path):
    chain_model(tmp_path / "model.onnx", layers=2)
    assert run_cli([*BENCH, "--save-baseline", "base.json"], tmp_path).returncode == 0
    document = json.loads((tmp_path / "base.json").read_text())
    document["environment"]["cpu_model"] = "Some Other CPU"
    (tmp_path / "base.json").write_text(json.dumps(document))
    r = run_cli([*BENCH, "--baseline", "base.json"], tmp_path)
    assert r.returncode == 2 and "another environment" in r.stderr and "--allow-env-mismatch" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    # latency is not what this test is about: a huge tolerance keeps a busy machine from failing it
    r = run_cli([*BENCH, "--baseline", "base.json", "--allow-env-mismatch", "--tolerance", "9"], tmp_path)
    assert r.returncode == 0 and "Environment differs" in r.stdout


def test_cli_golden_file_tampering_is_caught(tmp_path):
    chain_model(tmp_path / "model.onnx", layers=2)
    assert run_cli([*BENCH, "--save-baseline", "base.json"], tmp_path).returncode == 0
    with open(tmp_path / "base.json.golden.npz", "ab") as f:
        f.write(b"x")
    r = run_cli([*BENCH, "--baseline", "base.json"], tmp_path)
    assert r.returncode == 2 and "sha256" in r.stderr


GATE = ["bench", "model.onnx", "--iterations", "10", "--warmup", "2", "--batch-sizes", "4", "--threads", "1", "--repeats", "2"]


def test_cli_gate_fails_when_nothing_or_not_everything_was_compared(tmp_path):
    """The same model under a new name, another batch size, a baseline edited to no entries or without golden
    outputs: each is exit 1 naming what was not judged, never "PASS"."""
    chain_model(tmp_path / "model.onnx", layers=2)
    assert run_cli([*GATE, "--save-baseline", "base.json"], tmp_path).returncode == 0
    (tmp_path / "renamed.onnx").write_bytes((tmp_path / "model.onnx").read_bytes())
    document = json.loads((tmp_path / "base.json").read_text())
    (tmp_path / "empty.json").write_text(json.dumps({**document, "entries": []}))
    (tmp_path / "nogolden.json").write_text(json.dumps({**document, "golden": None}))
    cases = [
        (["renamed.onnx", *GATE[2:], "--baseline", "base.json"], "baseline entry model.onnx @ batch 4 is missing"),
        ([*GATE[1:7], "8", *GATE[8:], "--baseline", "base.json"], "baseline entry model.onnx @ batch 4 is missing"),
        ([*GATE[1:], "--baseline", "empty.json"], "no entry was judged"),
        ([*GATE[1:], "--baseline", "nogolden.json", "--tolerance", "9"], "golden: null"),
    ]
    for args, needle in cases:
        r = run_cli(["bench", *args], tmp_path)
        assert r.returncode == 1, (args, r.stdout, r.stderr)
        assert "**FAIL**" in r.stdout and "PASS" not in r.stdout and needle in r.stdout
        assert r.stderr.startswith("trtopt: regression gate failed: ") and needle in r.stderr
        assert len(r.stderr.strip().splitlines()) == 1


def test_a_baseline_from_another_instruction_set_is_refused_like_another_cpu():
    """Virtual machines often report the same model name on AVX2-only and AVX-512 VNNI hosts."""
    same_name = {"cpu_model": "Intel(R) Xeon(R) Processor", "cpu_count_logical": 2}
    avx2 = {**same_name, "cpu_isa": {"flags": ["avx", "avx2", "fma"], "int8": "avx2", "u8s8_saturates": True}}
    vnni = {**same_name, "cpu_isa": {"flags": ["avx", "avx2", "avx512_vnni", "avx512f", "fma"], "int8": "avx512_vnni",
                                     "u8s8_saturates": False}}
    with pytest.raises(TrtoptError, match="another environment") as err:
        compare_with_baseline(_document(avx2), _document(vnni), GateConfig())
    assert "cpu_isa.flags: ['avx', 'avx2', 'fma'] → ['avx', 'avx2', 'avx512_vnni', 'avx512f', 'fma']" in str(err.value)
    assert compare_with_baseline(_document(vnni), _document(vnni), GateConfig())["passed"]


def test_a_baseline_timed_with_another_thread_count_is_refused_naming_the_field():
    env = {"cpu_model": "CPU A"}
    old, new = _document(env), _document(env)
    old["settings"], new["settings"] = {"threads": 2}, {"threads": 1}
    with pytest.raises(TrtoptError, match=r"timed with other settings \(settings.threads: 2 → 1\); "
                                          r"fix: run with the baseline's settings \(--threads 2\)"):
        compare_with_baseline(old, new, GateConfig())
    assert compare_with_baseline(old, new, GateConfig(allow_environment_mismatch=True))["environment_differences"] == [
        "settings.threads: 2 → 1"]
    new["settings"] = {"threads": None}
    with pytest.raises(TrtoptError, match="settings.threads: 2 → None"):
        compare_with_baseline(old, new, GateConfig())
    new["settings"] = {"threads": 2}
    assert compare_with_baseline(old, new, GateConfig())["environment_differences"] == []


def test_cpu_power_settings_are_read_where_readable_and_compared(tmp_path):
    from trtopt.environment import cpu_power

    (tmp_path / "gov").write_text("performance\n")
    assert cpu_power({"scaling_governor": str(tmp_path / "gov"), "cpufreq_boost": str(tmp_path / "absent")}) == {
        "scaling_governor": "performance"}
    assert cpu_power({"scaling_governor": str(tmp_path / "absent")}) is None
    with pytest.raises(TrtoptError, match="cpu_power: .*'performance'.* → .*'powersave'"):
        check_environment({"cpu_power": {"scaling_governor": "performance"}},
                          {"cpu_power": {"scaling_governor": "powersave"}}, allow_mismatch=False)


def test_cli_refuses_a_baseline_timed_with_other_threads_before_timing(tmp_path):
    chain_model(tmp_path / "model.onnx", layers=2)
    two = [a if a != "1" or BENCH[i - 1] != "--threads" else "2" for i, a in enumerate(BENCH)]
    assert run_cli([*two, "--save-baseline", "base.json"], tmp_path).returncode == 0
    r = run_cli([*BENCH, "--baseline", "base.json"], tmp_path)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stdout + r.stderr
    assert "settings.threads: 2 → 1" in r.stderr and "--threads 2" in r.stderr and "REGRESSION" not in r.stdout
