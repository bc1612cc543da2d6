"""trtopt.report.model and trtopt.environment: the JSON report, its rows and formulas, Markdown, and files."""

from __future__ import annotations

import json
import platform
import sys

import onnxruntime
import pytest
import torch

from trtopt.data import random_feed
from trtopt.environment import environment
from trtopt.errors import TrtoptError
from trtopt.export import ExportConfig, export_onnx
from trtopt.measure.bench import bench, onnx_candidate, run_all, torch_candidate
from trtopt.measure.compare import compare_outputs
from trtopt.measure.profile import TimingConfig
from trtopt.models.load import load_model
from trtopt.report.markdown import render_markdown
from trtopt.report.model import build_report, variant_rows
from trtopt.report.write import write_report

TIMING = TimingConfig(warmup_iterations=1, iterations=5, bootstrap_samples=200)
BATCHES = (1, 4)


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    """A real report: tiny CNN in PyTorch (baseline) vs its ONNX export in ONNX Runtime, two batch sizes."""
    loaded = load_model("tests.helpers.tiny_models:tiny_cnn")
    art = export_onnx(loaded, tmp_path_factory.mktemp("report") / "tiny_cnn.onnx",
                      ExportConfig(exporter="torchscript", opset=17))
    candidates = [torch_candidate(loaded), onnx_candidate(art, name="onnx-fp32")]
    feed = random_feed(loaded.inputs, 8, seed=0)
    result = bench(candidates, feed, BATCHES, TIMING)
    reference = run_all(candidates[0], feed)
    accuracy = {"onnx-fp32": compare_outputs(reference, run_all(candidates[1], feed), ExportConfig().parity)}
    return build_report("tiny cnn: pytorch vs onnx", result, accuracy=accuracy,
                        recipe={"model": "tests.helpers.tiny_models:tiny_cnn", "batch_sizes": list(BATCHES)},
                        extra={"notes": ["a note for the record"]})


def test_report_sections(report):
    assert report["report_version"] == 1 and report["title"] == "tiny cnn: pytorch vs onnx"
    assert report["baseline"] == "pytorch-fp32"
    assert [c["name"] for c in report["candidates"]] == ["pytorch-fp32", "onnx-fp32"]
    assert [p["batch_size"] for p in report["latency"]] == list(BATCHES)
    assert report["recipe"]["model"] == "tests.helpers.tiny_models:tiny_cnn"
    assert report["notes"] == ["a note for the record"]
    assert report["created_utc"].endswith("+00:00")


def test_rows_carry_the_seed_formulas(report):
    rows = report["rows"]
    assert rows == variant_rows(report)
    assert [(r["variant"], r["batch_size"]) for r in rows] == [
        (name, b) for b in BATCHES for name in ("pytorch-fp32", "onnx-fp32")]
    sizes = {c["name"]: c["size_bytes"] for c in report["candidates"]}
    for row in rows:
        per_batch = next(p for p in report["latency"] if p["batch_size"] == row["batch_size"])
        stats = per_batch["candidates"][row["variant"]]
        base_p50 = per_batch["candidates"]["pytorch-fp32"]["latency_ms_p50"]
        assert row["size_bytes"] == sizes[row["variant"]]
        assert row["compression_ratio"] == pytest.approx(sizes["pytorch-fp32"] / sizes[row["variant"]])
        assert row["speedup_ratio"] == pytest.approx(base_p50 / stats["latency_ms_p50"])
        assert row["latency_ms_p50"] == stats["latency_ms_p50"]
        assert row["latency_ms_p99"] == stats["latency_ms_p99"]
        assert row["throughput_samples_per_s"] == stats["throughput_samples_per_s"]
    base_rows = [r for r in rows if r["variant"] == "pytorch-fp32"]
    assert all(r["compression_ratio"] == 1.0 and r["speedup_ratio"] == 1.0 for r in base_rows)
    assert all(r["speedup_ci_low"] is None and r["top1_agreement"] is None for r in base_rows)
    for r in (r for r in rows if r["variant"] == "onnx-fp32"):
        assert r["backend"] == "onnxruntime" and r["precision"] == "fp32"
        assert r["speedup_ci_low"] <= r["speedup_ratio"] <= r["speedup_ci_high"]
        assert r["top1_agreement"] == 1.0 and r["max_abs_error"] < 1e-4 and r["cosine"] > 0.9999


def test_variant_rows_from_handmade_numbers():
    """The formulas on numbers chosen by hand: 4 MB → 1 MB is 4×, 10 ms → 2.5 ms is 4×."""
    def stats(p50):
        return {"latency_ms_p50": p50, "latency_ms_p99": p50 * 2, "cov_percent": 1.0,
                "throughput_samples_per_s": 1000.0 / p50}

    rep = {
        "baseline": "big",
        "candidates": [{"name": "big", "backend": "torch", "precision": "fp32", "size_bytes": 4_000_000},
                       {"name": "small", "backend": "onnxruntime", "precision": "int8", "size_bytes": 1_000_000},
                       {"name": "unsized", "backend": "onnxruntime", "precision": "fp32", "size_bytes": None}],
        "latency": [{"batch_size": 1, "candidates": {
            "big": stats(10.0),
            "small": {**stats(2.5), "speedup_vs_baseline": {"speedup_ci_low": 3.5, "speedup_ci_high": 4.5}},
            "unsized": stats(5.0)}}],
        "accuracy": {},
    }
    rows = {r["variant"]: r for r in variant_rows(rep)}
    assert rows["small"]["compression_ratio"] == pytest.approx(4.0)
    assert rows["small"]["speedup_ratio"] == pytest.approx(4.0)
    assert (rows["small"]["speedup_ci_low"], rows["small"]["speedup_ci_high"]) == (3.5, 4.5)
    assert rows["unsized"]["compression_ratio"] is None and rows["unsized"]["speedup_ratio"] == pytest.approx(2.0)


def _tables(md: str) -> dict[str, list[list[str]]]:
    """Markdown tables by the "## " heading above them: header row, then data rows, as cells."""
    tables, heading = {}, None
    for line in md.splitlines():
        if line.startswith("## "):
            heading = line[3:]
        elif line.startswith("|") and not line.startswith("|---"):
            tables.setdefault(heading, []).append([c.strip() for c in line.strip("|").split("|")])
    return tables


def test_render_markdown(report):
    md = render_markdown(report)
    assert md.startswith("# tiny cnn: pytorch vs onnx\n")
    tables = _tables(md)
    for b in BATCHES:  # one headline table per batch size, every variant in it, decision columns first
        header, *body = tables[f"Summary, batch {b}"]
        assert header[:6] == ["variant", "backend · precision", "size", "compression", "p50 (ms)", "speedup [95% CI]"]
        rows = [r for r in report["rows"] if r["batch_size"] == b]
        assert [line[0] for line in body] == [r["variant"] for r in rows]
        for row, line in zip(rows, body, strict=True):
            assert line[4] == f"{row['latency_ms_p50']:.3f}"
            assert float(line[5].split("×")[0]) == pytest.approx(row["speedup_ratio"], rel=5e-3, abs=5e-3)
        assert "top-1 agree (%)" in header  # no labels: the classifier is judged by agreement with FP32
    header, *body = tables["Timing details"]
    assert {"p99 (ms)", "CoV %", "samples/s (p50)", "calls"} <= set(header) and len(body) == len(report["rows"])
    assert "Accuracy details" in tables
    assert "onnx-fp32" in md and "pytorch-fp32" in md
    assert f"torch {report['environment']['packages']['torch']}" in md
    assert "a note for the record" in md


def test_write_report_round_trips(report, tmp_path):
    paths = write_report(report, tmp_path / "run")
    assert paths == {"json": tmp_path / "run" / "report.json", "markdown": tmp_path / "run" / "report.md"}
    assert json.loads(paths["json"].read_text(encoding="utf-8")) == json.loads(json.dumps(report))
    assert json.loads(paths["json"].read_text(encoding="utf-8")) == report
    assert paths["markdown"].read_text(encoding="utf-8") == render_markdown(report)
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["report.json", "report.md"]


def test_write_report_refuses_overwrite_without_force(report, tmp_path):
    paths = write_report(report, tmp_path)
    before = {k: p.read_bytes() for k, p in paths.items()}
    changed = {**report, "title": "changed"}
    with pytest.raises(TrtoptError, match="already exists") as err:
        write_report(changed, tmp_path)
    assert "report.json" in str(err.value)
    assert {k: p.read_bytes() for k, p in paths.items()} == before
    write_report(changed, tmp_path, force=True)
    assert json.loads(paths["json"].read_text(encoding="utf-8"))["title"] == "changed"
    assert paths["markdown"].read_text(encoding="utf-8").startswith("# changed")


def test_write_report_with_only_the_markdown_present_writes_nothing(report, tmp_path):
    (tmp_path / "report.md").write_text("someone's notes", encoding="utf-8")
    with pytest.raises(TrtoptError, match="report.md"):
        write_report(report, tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == ["report.md"]  # not a new JSON beside an old Markdown
    assert (tmp_path / "report.md").read_text(encoding="utf-8") == "someone's notes"


class _ImportBlocker:
    def find_spec(self, name, path=None, target=None):
        if name == "tensorrt" or name.startswith("tensorrt."):
            raise AssertionError(f"{name} was imported")
        return None


def test_environment_records_versions_without_importing_tensorrt(monkeypatch):
    monkeypatch.setattr(sys, "meta_path", [_ImportBlocker(), *sys.meta_path])
    monkeypatch.delitem(sys.modules, "tensorrt", raising=False)
    env = environment()
    assert "tensorrt" not in sys.modules
    assert env["python"] == platform.python_version()
    assert isinstance(env["cpu_model"], str) and env["cpu_model"]
    assert env["cpu_count_logical"] >= 1
    assert torch.__version__.startswith(env["packages"]["torch"])
    assert env["packages"]["onnxruntime"] == onnxruntime.__version__
    assert env["torch_threads"] == torch.get_num_threads()  # torch is imported here, so it is read
    json.dumps(env)  # JSON-able as is
