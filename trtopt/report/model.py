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

_LATENCY_KEYS = ("latency_ms_p50", "latency_ms_p99", "cov_percent", "throughput_samples_per_s")

def variant_rows(report: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One row per (candidate, batch size) with the seed numbers, units in the keys.

    Variants that were judged for accuracy but not timed (``report["untimed"]``: TensorRT layouts on a
    machine without TensorRT) get one row each with empty latency columns. With labelled data, every row
    carries the task accuracy and its drop from the baseline in points.
    """
    if not report["candidates"]:
        return []
    baseline = next(c for c in report["candidates"] if c["name"] == report["baseline"])
    rows = []
    for per_batch in report["latency"]:
        base_p50 = per_batch["candidates"][report["baseline"]]["latency_ms_p50"]
        for cand in report["candidates"]:
            stats = per_batch["candidates"][cand["name"]]
            speed = stats.get("speedup_vs_baseline") or {}
            rows.append({**_variant_row(report, baseline, cand), "batch_size": per_batch["batch_size"],
                         **{k: stats[k] for k in _LATENCY_KEYS},
                         "speedup_ratio": 1.0 if cand["name"] == report["baseline"]
                         else metrics.speedup_ratio(base_p50, stats["latency_ms_p50"]),
                         "speedup_ci_low": speed.get("speedup_ci_low"), "speedup_ci_high": speed.get("speedup_ci_high"),
                         "speedup_vs": {ref: v["speedup"] for ref, v in (stats.get("speedup_vs") or {}).items()}})
    for extra in report.get("untimed", []):
        rows.append({**_variant_row(report, baseline, extra), "batch_size": None, **dict.fromkeys(_LATENCY_KEYS),
                     "speedup_ratio": None, "speedup_ci_low": None, "speedup_ci_high": None, "speedup_vs": {}})
    return rows

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
        "accuracy": accuracy,
        "accuracy_drop_points": None if accuracy is None or base_acc is None else (base_acc - accuracy) * 100.0,
        "pruning_rate_percent": metrics.pruning_rate_percent(base_params - params, base_params)
        if base_params and params is not None and params != base_params else None,
    }
