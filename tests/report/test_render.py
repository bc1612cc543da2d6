"""The demo's report as a reader sees it: headline tables per batch, every variant, details, plots that load.

The report is assembled from synthetic measurements with the structure `trtopt.pipeline` gives the demo
(PyTorch, ONNX Runtime FP32 and INT8 timed at batch 1 and 8; the TensorRT layouts untimed; labels; INT8
error per layer), so the rendering is checked in milliseconds instead of a pipeline run.
"""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from trtopt.measure.profile import TimingConfig, compare_latency, quality_flags
from trtopt.report.markdown import render_markdown
from trtopt.report.model import build_report
from trtopt.report.write import write_report

from .test_report import _tables

TIMED = {"pytorch-fp32": ("torch", "fp32", 18_600_000, 12.0), "onnxruntime-fp32": ("onnxruntime", "fp32", 18_500_000, 6.0),
         "onnxruntime-int8": ("onnxruntime", "int8", 5_100_000, 2.0)}
UNTIMED = {"tensorrt-int8-qdq": ("int8", 4_870_000), "fp16-casts": ("fp16", 9_290_000)}
ACCURACY = {"pytorch-fp32": 0.9889, "onnxruntime-fp32": 0.9889, "onnxruntime-int8": 0.9805, "tensorrt-int8-qdq": 0.9777,
            "fp16-casts": 0.9889}


def _bench(stalled: bool) -> dict:
    rng = np.random.default_rng(0)
    per_batch = []
    for batch in (1, 8):
        samples = {n: list(rng.normal(t[3] * batch ** 0.7, 0.01 * t[3], 120)) for n, t in TIMED.items()}
        if stalled:  # another job loaded the machine: a few calls took 100× longer
            samples["onnxruntime-int8"][::20] = [219.0] * 6
        result = compare_latency(samples, "pytorch-fp32", batch, TimingConfig(bootstrap_samples=200))
        for name, stats in result["candidates"].items():
            stats["quality_flags"] = quality_flags(stats, load_average=3.5 if stalled else 0.4, cpu_count=2)
            if name != "onnxruntime-fp32":  # what bench(also_versus=...) adds; the PyTorch one must not show
                stats["speedup_vs"] = {"onnxruntime-fp32": {"speedup": float(np.median(samples["onnxruntime-fp32"])
                                                                             / np.median(samples[name]))}}
        result["samples_ms"] = samples
        per_batch.append(result)
    candidates = [{"name": n, "backend": b, "precision": p, "size_bytes": s, "parameters": 4_650_000 if b == "torch" else None,
                   "runner": {"intra_op_threads": 2}} for n, (b, p, s, _) in TIMED.items()]
    return {"baseline": "pytorch-fp32", "candidates": candidates, "per_batch": per_batch}


def _outputs(agreement: float) -> dict:
    return {"outputs": [{"output": "logits", "output_kind": "classification", "top1_agreement": agreement,
                         "top5_agreement": 1.0, "cosine": 0.998, "max_abs_error": 0.41, "abs_error_p99": 0.2}]}


def _demo_like(timed: bool = True, stalled: bool = False) -> dict:
    bench = _bench(stalled) if timed else {"baseline": "pytorch-fp32", "candidates": [], "per_batch": []}
    untimed = [{"name": n, "backend": "onnxruntime", "precision": p, "size_bytes": s,
                "note": "a TensorRT layout: judged for accuracy on the CPU, timed only on TensorRT"} for n, (p, s) in UNTIMED.items()]
    if not timed:
        untimed = [{"name": n, "backend": b, "precision": p, "size_bytes": s, "note": "no profile stage in this run"}
                   for n, (b, p, s, _) in TIMED.items()] + untimed
    rng = np.random.default_rng(1)
    acts = [{"tensor": f"hardtanh_{i}", "node": f"n4_{i}", "op_type": "Clip", "module": f"_blocks.{i}._expand_conv",
             "sqnr_db": float(v), "max_abs_error": 0.1} for i, v in enumerate(rng.uniform(8, 40, 30))]
    weights = [{"weight": f"_blocks.{i}._expand_conv.weight{suffix}", "node": f"node_Conv_{i}", "op_type": "Conv",
                "per_channel": True, "rel_error_max": float(v)}
               for i, v in enumerate(rng.uniform(1e-3, 2e-2, 30)) for suffix in ("", "_bias")]
    extra = {
        "untimed": untimed, "data": {"source": "dataset:digits:test"},
        "task_accuracy": {"metric": "top1_accuracy", "labels": "dataset:digits:test", "values": ACCURACY},
        "stages": {"export": {"status": "ran", "seconds": 15.8}, "build": {"status": "ran", "seconds": 0.0},
                   "profile": {"status": "reused", "seconds": 40.2}},
        "tensorrt": {"build": {"built": False, "reason": "TensorRT is not installed"}, "bundle": None},
        "compression": {"prune": {"parameters_before": 94_186, "parameters_after": 24_058, "pruning_rate_percent": 74.46}},
        "int8": {"ranges": "/run/ranges.json", "calibration": {"method": "percentile", "num_bins": 2048},
                 "calibration_samples": 128, "tensorrt_cache": "/run/calibration.cache", "trt_cache_version": "10.3.0",
                 "tensorrt_qdq": {"path": "/run/model.int8.tensorrt.onnx", "size_bytes": 4_870_000},
                 "activation_sqnr": acts, "weight_error": weights},
    }
    accuracy = {n: _outputs(a) for n, a in (("onnxruntime-fp32", 1.0), ("onnxruntime-int8", 0.978),
                                            ("tensorrt-int8-qdq", 0.975), ("fp16-casts", 1.0))}
    return build_report("trtopt optimize: zoo:digits_cnn", bench, accuracy, {"calibration_data": "dataset:digits:train"},
                        extra)


def test_headline_tables_lead_with_the_decision_columns_and_every_variant():
    report = _demo_like()
    tables = _tables(render_markdown(report))
    variants = [*TIMED, *UNTIMED]
    for batch in (1, 8):
        header, *body = tables[f"Summary, batch {batch}"]
        assert header == ["variant", "backend · precision", "size", "compression", "p50 (ms)", "speedup [95% CI]",
                          "accuracy (%)", "Δ acc. (pts)"]
        assert [row[0] for row in body] == variants  # every variant, timed or not
        cells = {row[0]: row for row in body}
        assert cells["tensorrt-int8-qdq"][4] == "untimed" and cells["tensorrt-int8-qdq"][2] == "4.87 MB"
        assert cells["onnxruntime-int8"][6] == "98.05" and cells["onnxruntime-int8"][7] == "-0.84"  # worse: negative
        assert cells["pytorch-fp32"][3] == "1.00×" and cells["onnxruntime-int8"][3] == "3.65×"
    timing = tables["Timing details"]
    assert {"p99 (ms)", "CoV %", "samples/s (p50)", "calls"} <= set(timing[0]) and "flags" not in timing[0]  # calm run
    speedup_vs = timing[0].index("speedup vs same backend")
    shown = {row[0]: row[speedup_vs] for row in timing[1:]}
    assert shown["pytorch-fp32"] == "–" and shown["onnxruntime-int8"].endswith("× vs onnxruntime-fp32")  # same backend only
    assert tables["Stages"][2][:3] == ["build", "skipped: TensorRT is not installed", "–"]
    assert ["prune", "parameters pruned (%)", "74.5"] in tables["Compression (PyTorch side)"]


def test_unstable_timing_is_flagged_in_the_report():
    report = _demo_like(stalled=True)
    md = render_markdown(report)
    warnings = md.split("## Measurement warnings", 1)[1].split("##", 1)[0]
    assert "onnxruntime-int8" in warnings and "p99/p50" in warnings and "load average 3.5 > 2 CPUs" in warnings
    row = next(r for r in report["rows"] if r["variant"] == "onnxruntime-int8")
    assert {"heavy_tail", "high_cov", "busy_machine"} <= set(row["quality_flags"])


def test_a_run_without_timing_still_tables_every_variant():
    tables = _tables(render_markdown(_demo_like(timed=False)))
    header, *body = tables["Summary, no timing (no profile stage)"]
    assert [row[0] for row in body] == [*TIMED, *UNTIMED]
    assert header == ["variant", "backend · precision", "size", "compression", "accuracy (%)", "Δ acc. (pts)"]


@pytest.mark.parametrize("timed", [True, False])
def test_html_page_embeds_plots_of_sane_size(tmp_path, timed):
    paths = write_report(_demo_like(timed=timed), tmp_path, html=True)
    html = paths["html"].read_text(encoding="utf-8")
    expected = {"tradeoff", "latency", "quant_error"} if timed else {"tradeoff", "quant_error"}
    assert {k.removeprefix("plot_") for k in paths if k.startswith("plot_")} == expected
    for name in expected:
        path = paths[f"plot_{name}"]
        assert 10_000 < path.stat().st_size < 1_500_000
        with Image.open(path) as image:
            width, height = image.size
        assert 500 <= width <= 2_500 and 250 <= height <= 1_800, (name, image.size)
    assert html.count("<figure ") == len(expected)
    assert html.count('class="baseline"') == (5 if timed else 2)  # its row in each summary and details table
    assert all(v in html for v in [*TIMED, *UNTIMED])
    assert html.index("Summary") < html.index("<figure ") < html.index("Accuracy details")


def test_sensitivity_names_each_layer_by_module_and_node():
    report = _demo_like()
    report["sensitivity"] = {"fp32_score": 0.99, "int8_score": 0.95, "layers": [
        {"node": "node_Conv_12", "module": "_blocks.3._depthwise_conv", "score_without": 0.97, "recovered": 0.02},
        {"node": "node_Gemm_40", "module": None, "score_without": 0.951, "recovered": 0.001}]}
    text = render_markdown(report)
    assert "| _blocks.3._depthwise_conv (node_Conv_12) | 0.9700 | +0.0200 |" in text
    assert "| node_Gemm_40 | 0.9510 | +0.0010 |" in text  # no module known: the node alone
