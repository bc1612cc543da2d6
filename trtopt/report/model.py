"""The JSON report, the source of truth: variants, their numbers, and the seed formulas.

A report holds the environment that produced it, the resolved recipe, every variant (model on a backend
at a precision) with its size, latency per batch size and accuracy against the FP32 PyTorch original,
and the seed formulas computed from those numbers (compression ratio, speedup ratio). Tables are built
from rows (:func:`variant_rows`), never by editing strings; Markdown, HTML and plots render from it.
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Mapping
from typing import Any

from trtopt import metrics
from trtopt.environment import environment

REPORT_VERSION = 1

def build_report(title: str, bench_result: Mapping[str, Any], accuracy: Mapping[str, Any] | None = None,
                 recipe: Mapping[str, Any] | None = None, extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Assemble a report dict from a `trtopt.measure.bench.bench` result and optional accuracy results.

    Args:
        title: headline of the rendered report.
        bench_result: candidates and per-batch latency (the first candidate is the baseline).
        accuracy: per candidate name, a `trtopt.measure.compare.compare_outputs` result against the baseline.
        recipe: the resolved recipe/config, saved for reproducibility.
        extra: any further sections (model info, parity, predictions).
    """
    report: dict[str, Any] = {
        "report_version": REPORT_VERSION,
        "title": title,
        "created_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "environment": environment(),
        "recipe": dict(recipe or {}),
        "baseline": bench_result["baseline"],
        "candidates": list(bench_result["candidates"]),
        "latency": list(bench_result["per_batch"]),
        "accuracy": dict(accuracy or {}),
    }
    report.update(extra or {})
    report["rows"] = variant_rows(report)
    return report

_LATENCY_KEYS = ("latency_ms_p50", "latency_ms_p99", "cov_percent", "throughput_samples_per_s", "iterations")

def variant_rows(report: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One row per (candidate, batch size) with the seed numbers, units in the keys.

    Variants that were not timed (``report["untimed"]``: TensorRT layouts on a machine without TensorRT,
    or every variant of a run without a profile stage) get one row each with ``timed`` False, ``batch_size``
    None and empty latency columns. With labelled data, every row carries the task accuracy and
    ``accuracy_delta_points``: (variant − baseline) × 100, in percentage points, positive when the variant
    is more accurate. ``speedup_vs`` holds speedups against other references on the same backend only (an
    INT8 ONNX Runtime model vs FP32 ONNX Runtime), never across backends. ``quality_flags`` lists the codes
    of `trtopt.measure.profile.quality_flags` raised for that timing.
    """
    variants = [*report["candidates"], *report.get("untimed", [])]
    if not variants:
        return []
    baseline = next((v for v in variants if v["name"] == report["baseline"]), {})
    backends = {v["name"]: v["backend"] for v in variants}
    rows = []
    for per_batch in report["latency"]:
        base_p50 = per_batch["candidates"][report["baseline"]]["latency_ms_p50"]
        for cand in report["candidates"]:
            stats = per_batch["candidates"][cand["name"]]
            speed = stats.get("speedup_vs_baseline") or {}
            rows.append({**_variant_row(report, baseline, cand), "batch_size": per_batch["batch_size"], "timed": True,
                         **{k: stats.get(k) for k in _LATENCY_KEYS},
                         "speedup_ratio": 1.0 if cand["name"] == report["baseline"]
                         else metrics.speedup_ratio(base_p50, stats["latency_ms_p50"]),
                         "speedup_ci_low": speed.get("speedup_ci_low"), "speedup_ci_high": speed.get("speedup_ci_high"),
                         "speedup_vs": {ref: v["speedup"] for ref, v in (stats.get("speedup_vs") or {}).items()
                                        if backends.get(ref) == cand["backend"]},
                         "quality_flags": [f["flag"] for f in stats.get("quality_flags", [])]})
    for extra in report.get("untimed", []):
        rows.append({**_variant_row(report, baseline, extra), "batch_size": None, "timed": False,
                     **dict.fromkeys(_LATENCY_KEYS), "speedup_ratio": None, "speedup_ci_low": None,
                     "speedup_ci_high": None, "speedup_vs": {}, "quality_flags": [], "note": extra.get("note")})
    return rows

def quality_warnings(report: Mapping[str, Any]) -> list[str]:
    """One line per timing with quality flags: "batch 8, onnxruntime-int8: CoV 247 % > 10 %; p99/p50 330 > 3"."""
    lines = []
    for per_batch in report["latency"]:
        for name, stats in per_batch["candidates"].items():
            flags = stats.get("quality_flags") or []
            if flags:
                lines.append(f"batch {per_batch['batch_size']}, {name}: " + "; ".join(f["message"] for f in flags))
    return lines

def _variant_row(report: Mapping[str, Any], baseline: Mapping[str, Any], variant: Mapping[str, Any]) -> dict[str, Any]:
    """The columns of a row that do not depend on the batch size: size, parameters, accuracy."""
    first = ((report["accuracy"].get(variant["name"]) or {}).get("outputs") or [{}])[0]
    size, params = variant.get("size_bytes"), variant.get("parameters")
    task = (report.get("task_accuracy") or {}).get("values", {})
    accuracy, base_acc = task.get(variant["name"]), task.get(report["baseline"])
    base_params = baseline.get("parameters")
    return {
        "variant": variant["name"], "backend": variant["backend"], "precision": variant["precision"],
        "size_bytes": size,
        "compression_ratio": metrics.compression_ratio(baseline["size_bytes"], size)
        if size and baseline.get("size_bytes") else None,
        "parameters": params,
        "top1_agreement": first.get("top1_agreement"), "max_abs_error": first.get("max_abs_error"),
        "cosine": first.get("cosine"),
        **{key: first.get(key) for key in metrics.TASK_METRIC_KEYS if key in first},
        "accuracy": accuracy,
        "accuracy_delta_points": None if accuracy is None or base_acc is None else (accuracy - base_acc) * 100.0,
        "pruning_rate_percent": metrics.pruning_rate_percent(base_params - params, base_params)
        if base_params and params is not None and params != base_params else None,
    }

_HEADLINE_METRICS = {"accuracy": ("accuracy", "accuracy (%)", True),
                     "agreement": ("top1_agreement", "top-1 agree (%)", True),
                     "cosine": ("cosine", "cosine", False)}
_BY_KIND = {"classification": _HEADLINE_METRICS["agreement"],
            "embedding": ("neighbour_agreement", "neighbour agree (%)", True),
            "dense": ("pixel_agreement", "pixel agree (%)", True),
            "regression": ("abs_error_p99", "|err| p99", False)}

def layer_label(row: Mapping[str, Any]) -> str:
    """A per-layer row's label: ``module (node)``, the PyTorch module first (what a user recognizes) and the
    ONNX node (what ``--exclude`` takes); the node alone where the export does not tell the module."""
    return f"{row['module']} ({row['node']})" if row.get("module") else row["node"]


def headline_metric(report: Mapping[str, Any]) -> tuple[str, str, bool]:
    """(row key, label, shown as percent) of the measure a variant is judged by in the summary and plots.

    The recipe's ``metric`` when it names one the rows have ("accuracy", "agreement", "cosine"); else task
    accuracy with labelled data; else the measure of the first output's kind (`trtopt.metrics.output_kind`:
    top-1 agreement for classifiers, neighbour agreement for embeddings, pixel agreement for dense maps,
    p99 of |error| for regression), falling back to cosine; ("", "", False) when no row has any.
    """
    rows = report["rows"]

    def present(key: str) -> bool:
        return any(r.get(key) is not None for r in rows)

    chosen = _HEADLINE_METRICS.get((report.get("recipe") or {}).get("metric", "auto"))
    if chosen and present(chosen[0]):
        return chosen
    if present("accuracy"):
        return _HEADLINE_METRICS["accuracy"]
    kind = next((r["output_kind"] for r in rows if r.get("output_kind")), None)
    for candidate in (_BY_KIND.get(kind), _HEADLINE_METRICS["agreement"], _HEADLINE_METRICS["cosine"]):
        if candidate and present(candidate[0]):
            return candidate
    return "", "", False
