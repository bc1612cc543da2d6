"""The JSON report is the source of truth; Markdown is rendered from it.

A report holds the environment that produced it, the resolved recipe, every variant (model on a backend
at a precision) with its size, latency per batch size and accuracy against the FP32 PyTorch original,
and the seed formulas computed from those numbers (compression ratio, speedup ratio). Tables are built
from rows (`variant_rows`), never by editing strings.
"""

from __future__ import annotations

import datetime as _dt
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from trtopt import metrics
from trtopt.environment import environment
from trtopt.files import ensure_writable, write_json, write_text

REPORT_VERSION = 1


def build_report(title: str, bench_result: Mapping[str, Any], accuracy: Mapping[str, Any] | None = None,
                 recipe: Mapping[str, Any] | None = None, extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Assemble a report dict from a `trtopt.bench.bench` result and optional accuracy results.

    Args:
        title: headline of the rendered report.
        bench_result: candidates and per-batch latency (the first candidate is the baseline).
        accuracy: per candidate name, a `trtopt.compare.compare_outputs` result against the baseline.
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


def _fmt(value: Any, spec: str) -> str:
    return "–" if value is None else format(value, spec)


_COLUMNS: tuple[tuple[str, str, Callable[[Mapping[str, Any]], str]], ...] = (
    ("variant", "variant", lambda r: f"{r['variant']}"),
    ("backend", "backend · precision", lambda r: f"{r['backend']} · {r['precision']}"),
    ("size", "size (MB)", lambda r: _fmt(r["size_bytes"] / 1e6 if r["size_bytes"] else None, ".2f")),
    ("compression", "compression ×", lambda r: _fmt(r["compression_ratio"], ".2f")),
    ("params", "parameters", lambda r: _fmt(r["parameters"], ",d")),
    ("pruning", "pruned %", lambda r: _fmt(r["pruning_rate_percent"], ".1f")),
    ("batch", "batch", lambda r: _fmt(r["batch_size"], "d")),
    ("p50", "p50 (ms)", lambda r: _fmt(r["latency_ms_p50"], ".3f")),
    ("p99", "p99 (ms)", lambda r: _fmt(r["latency_ms_p99"], ".3f")),
    ("cov", "CoV %", lambda r: _fmt(r["cov_percent"], ".1f")),
    ("throughput", "samples/s", lambda r: _fmt(r["throughput_samples_per_s"], ".1f")),
    ("speedup", "speedup × [95% CI]", lambda r: _fmt(r["speedup_ratio"], ".2f") + (
        f" [{r['speedup_ci_low']:.2f}, {r['speedup_ci_high']:.2f}]" if r["speedup_ci_low"] is not None else "")),
    ("versus", "speedup vs other", lambda r: ", ".join(f"{v:.2f}× vs {k}" for k, v in r.get("speedup_vs", {}).items())
     or "–"),
    ("accuracy", "accuracy", lambda r: _fmt(r["accuracy"], ".4f")),
    ("drop", "drop (points)", lambda r: _fmt(r["accuracy_drop_points"], "+.2f")),
    ("top1", "top-1 agree", lambda r: _fmt(r["top1_agreement"], ".3f")),
    ("cosine", "cosine", lambda r: _fmt(r["cosine"], ".5f")),
    ("err", "max abs err", lambda r: _fmt(r["max_abs_error"], ".2e")),
)


def markdown_table(rows: Sequence[Mapping[str, Any]], columns=_COLUMNS) -> str:
    """Render rows as a GitHub Markdown table with the given (key, header, formatter) columns."""
    columns = [c for c in columns if any(c[2](r) != "–" for r in rows)] or list(columns)  # drop empty columns
    lines = ["| " + " | ".join(h for _, h, _ in columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(f(r) for _, _, f in columns) + " |" for r in rows]
    return "\n".join(lines)


def render_markdown(report: Mapping[str, Any]) -> str:
    """The report as Markdown: headline table, then INT8, sensitivity, stages, environment."""
    env = report["environment"]
    pk = env.get("packages", {})
    gpu = ", ".join(g.get("name", "?") for g in env.get("gpus", [])) or "none"
    parts = [f"# {report['title']}", "",
             f"Baseline: **{report['baseline']}**. Speedup = baseline p50 / variant p50, timed interleaved in one "
             "process; the interval is a paired bootstrap of the median ratio. Compression = baseline bytes / "
             "variant bytes (PyTorch: parameter bytes; ONNX: file plus external data)."]
    if report.get("task_accuracy"):
        task = report["task_accuracy"]
        parts += ["", f"Accuracy = {task['metric'].replace('_', ' ')} on the labels of `{task['labels']}`; drop in "
                      "points vs the baseline."]
    if report.get("untimed"):
        parts += ["", "Untimed rows: " + "; ".join(f"{u['name']} ({u['note']})" for u in report["untimed"]) + "."]
    parts += ["", markdown_table(report["rows"]) if report["rows"] else "(no profile stage: nothing was timed)"]
    if "int8" in report:
        parts += ["", *_int8_markdown(report)]
    if report.get("sensitivity"):
        sens = report["sensitivity"]
        parts += ["", "## Per-layer INT8 sensitivity", "",
                  f"Score FP32 {sens['fp32_score']:.4f}, all layers INT8 {sens['int8_score']:.4f}. Layers that recover "
                  "the most when kept in FP32:", "", "| layer | score without it | recovered |", "|---|---|---|"]
        parts += [f"| {row['node']} | {row['score_without']:.4f} | {row['recovered']:+.4f} |" for row in sens["layers"][:5]]
    if report.get("compression"):
        parts += ["", "## Compression (PyTorch side)", ""]
        for name, numbers in report["compression"].items():
            text = ", ".join(f"{k.replace('_', ' ')} {v:.4g}" if isinstance(v, float) else f"{k.replace('_', ' ')} {v}"
                             for k, v in numbers.items() if k != "storage")
            parts.append(f"- {name}: {text}")
            if "storage" in numbers:
                st = numbers["storage"]
                parts.append(f"  - shared-weight file `{Path(st['path']).name}`: {st['file_bytes'] / 1e6:.3f} MB, "
                             f"{st['compression_ratio']:.2f}× smaller than the FP32 state; it shrinks storage and "
                             "downloads only: ONNX models and engines hold the decoded weights.")
    trt = report.get("tensorrt") or {}
    if trt.get("build") or trt.get("bundle"):
        parts += ["", "## TensorRT", ""]
        build = trt.get("build")
        if build:
            parts.append("- Engines: " + (", ".join(f"`{Path(e['path']).name}`" for e in build["engines"].values())
                                          if build["built"] else f"not built here ({build['reason']})."))
        bundle = trt.get("bundle")
        if bundle:
            parts.append(f"- Bundle for {bundle['target']}: `{Path(bundle['path']).name}/` ({bundle['files']} files, "
                         f"{bundle['size_bytes'] / 1e6:.1f} MB; `build_trt10.sh`, `build_trt11.sh`, `build_trtopt.sh`).")
            parts += ["", "| model | TensorRT | precision | INT8 from | plan |", "|---|---|---|---|---|"]
            parts += [f"| {p['model']} | {p['trt_version']} | {p.get('precision') or '–'} | {p.get('int8_source') or '–'} | "
                      f"{p.get('plan') or 'none: ' + str(p.get('reason'))} |" for p in bundle["plans"]]
    if report.get("stages"):
        parts += ["", "## Stages", "", "| stage | status | seconds |", "|---|---|---|"]
        parts += [f"| {name} | {st['status']} | {st['seconds']:.1f} |" for name, st in report["stages"].items()]
    parts += ["", "## Environment", "",
              f"- CPU: {env['cpu_model']} ({env['cpu_count_logical']} logical CPUs); GPU: {gpu}",
              f"- Python {env['python']}, torch {pk.get('torch', '–')}, onnxruntime {pk.get('onnxruntime', '–')}, "
              f"onnx {pk.get('onnx', '–')}, TensorRT {pk.get('tensorrt', 'not installed')}",
              "- Threads: " + (", ".join(f"{c['name']}: {c['runner'].get('intra_op_threads')}"
                                         for c in report["candidates"]) or "–"),
              f"- Created {report['created_utc']} by trtopt {env['trtopt']}"]
    for section in report.get("notes", []):
        parts += ["", f"- {section}"]
    return "\n".join(parts) + "\n"


def _int8_markdown(report: Mapping[str, Any]) -> list[str]:
    """INT8 section: calibration, the TensorRT-target model's agreement, and the layers that quantize worst."""
    int8 = report["int8"]
    cal = int8["calibration"]
    lines = ["## INT8", "",
             f"- Calibration: {cal['method']} on {int8['calibration_samples']} samples of "
             f"{report['recipe'].get('calibration_data') or report['data']['source']} "
             f"(streaming, {cal['num_bins']} bins); ranges in `{Path(int8['ranges']).name}`.",
             f"- TensorRT Q/DQ model `{Path(int8['tensorrt_qdq']['path']).name}` "
             f"({int8['tensorrt_qdq']['size_bytes'] / 1e6:.2f} MB) and TensorRT 10.3 cache "
             f"`{Path(int8['tensorrt_cache']).name}` for Jetson."]
    acc = report["accuracy"].get("tensorrt-int8-qdq")
    if acc:
        first = acc["outputs"][0]
        lines.append(f"- TensorRT-target model, exact Q/DQ semantics on the CPU: top-1 agreement "
                     f"{_fmt(first['top1_agreement'], '.3f')}, cosine {_fmt(first['cosine'], '.5f')} vs FP32.")
    worst = sorted(int8["activation_sqnr"], key=lambda r: r["sqnr_db"])[:5]
    if worst:
        lines += ["", "Lowest activation SQNR (ONNX Runtime INT8 vs FP32, real inputs):", "",
                  "| tensor | op | SQNR (dB) | max abs err |", "|---|---|---|---|"]
        lines += [f"| {r['tensor']} | {r['op_type']} | {r['sqnr_db']:.1f} | {r['max_abs_error']:.3g} |" for r in worst]
    weights = int8["weight_error"]
    if weights:
        w = max(weights, key=lambda r: r["rel_error_max"])
        lines += ["", f"Weights: {len(weights)} quantized tensors; largest error relative to max |w|: "
                      f"{w['rel_error_max']:.2e} ({w['weight']}, {'per-channel' if w['per_channel'] else 'per-tensor'})."]
    return lines


def write_report(report: Mapping[str, Any], out_dir: str | os.PathLike, force: bool = False,
                 html: bool = False) -> dict[str, Path]:
    """Write ``report.json`` and ``report.md`` (and with ``html``, ``report.html`` + ``plots/*.png``)
    into ``out_dir`` atomically; returns their paths.

    All paths are checked (and the Markdown rendered) before any file is written, so a refusal leaves no
    new JSON beside an old Markdown file.
    """
    out = Path(out_dir)
    paths = {"json": out / "report.json", "markdown": out / "report.md"}
    if html:
        paths["html"] = out / "report.html"
    for path in paths.values():
        ensure_writable(path, force)
    markdown = render_markdown(report)
    write_json(paths["json"], report, force=force)
    write_text(paths["markdown"], markdown, force=force)
    if html:
        from trtopt.report_html import render_html, render_plots

        plots = render_plots(report, out / "plots")
        write_text(paths["html"], render_html(report, plots), force=force)
        paths.update({f"plot_{name}": path for name, path in plots.items()})
    return paths
