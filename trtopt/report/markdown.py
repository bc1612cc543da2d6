"""The report as Markdown: tables rendered from :func:`trtopt.report.model.variant_rows`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from trtopt.report.model import headline_metric, layer_label, quality_warnings


def _fmt(value: Any, spec: str) -> str:
    return "–" if value is None else format(value, spec)

def _percent(value: float | None) -> str:
    return "–" if value is None else f"{value * 100:.2f}"

def format_size(size_bytes: int | None) -> str:
    """Bytes as a short size with its unit: "4.62 MB", "118 kB", "912 B" (decimal units, as files are listed)."""
    if not size_bytes:
        return "–"
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if size_bytes >= scale:
            value = size_bytes / scale
            return f"{value:.3g} {unit}" if value < 100 else f"{value:.0f} {unit}"
    return f"{size_bytes} B"

def _ratio(value: float) -> str:
    """A ratio to 3-4 significant digits: 0.68, 6.82, 92.9, 624."""
    return f"{value:.2f}" if value < 10 else f"{value:.1f}" if value < 100 else f"{value:.0f}"

def _speedup(r: Mapping[str, Any]) -> str:
    if r["speedup_ratio"] is None:
        return "–"
    ci = f" [{_ratio(r['speedup_ci_low'])}–{_ratio(r['speedup_ci_high'])}]" if r.get("speedup_ci_low") is not None else ""
    return f"{_ratio(r['speedup_ratio'])}×{ci}"

#: A table column: (header, formatter of one row).
Column = tuple[str, Callable[[Mapping[str, Any]], str]]

_SHORT_BACKENDS = {"onnxruntime": "ort", "tensorrt": "trt"}

def summary_columns(report: Mapping[str, Any], compact: bool = False) -> list[Column]:
    """The headline table's columns: what a deployment decision needs, nothing else.

    variant, backend · precision, size, compression, p50, speedup [95 % CI], the headline metric
    (`trtopt.report.model.headline_metric`) and, for task accuracy, its change vs the baseline in points.
    ``compact`` (a terminal): shorter headers and backend names ("ort int8"), the same numbers. Without any
    timed row the latency columns are left out.
    """
    key, label, percent = headline_metric(report)

    def runtime(r: Mapping[str, Any]) -> str:
        return (f"{_SHORT_BACKENDS.get(r['backend'], r['backend'])} {r['precision']}" if compact
                else f"{r['backend']} · {r['precision']}")

    columns: list[Column] = [
        ("variant", lambda r: r["variant"]),
        ("runtime" if compact else "backend · precision", runtime),
        ("size", lambda r: format_size(r["size_bytes"])),
        ("smaller" if compact else "compression",
         lambda r: _fmt(r["compression_ratio"], ".2f") + ("×" if r["compression_ratio"] else "")),
        ("p50 ms" if compact else "p50 (ms)", lambda r: _fmt(r["latency_ms_p50"], ".3f") if r["timed"] else "untimed"),
        ("speedup [95% CI]", _speedup),
    ]
    if not any(r["timed"] for r in report["rows"]):  # a run without timing: no latency columns to fill
        columns = columns[:4]
    if key:
        columns.append((label.replace("accuracy (%)", "acc %") if compact else label,
                        lambda r: _percent(r.get(key)) if percent else _fmt(r.get(key), ".5f")))
    if key == "accuracy":
        columns.append(("Δ pts" if compact else "Δ acc. (pts)", lambda r: _fmt(r["accuracy_delta_points"], "+.2f")))
    return columns

_TIMING_COLUMNS: tuple[Column, ...] = (
    ("variant", lambda r: r["variant"]),
    ("batch", lambda r: _fmt(r["batch_size"], "d")),
    ("p50 (ms)", lambda r: _fmt(r["latency_ms_p50"], ".3f")),
    ("p99 (ms)", lambda r: _fmt(r["latency_ms_p99"], ".3f")),
    ("p99/p50", lambda r: _fmt(r["latency_ms_p99"] / r["latency_ms_p50"] if r["latency_ms_p50"] else None, ".2f")),
    ("CoV %", lambda r: _fmt(r["cov_percent"], ".1f")),
    ("samples/s (p50)", lambda r: _fmt(r["throughput_samples_per_s"], ",.1f")),
    ("calls", lambda r: _fmt(r.get("iterations"), "d")),
    ("speedup vs same backend", lambda r: ", ".join(f"{v:.2f}× vs {k}" for k, v in r.get("speedup_vs", {}).items())
     or "–"),
    ("flags", lambda r: " ".join(r.get("quality_flags") or []) or "–"),
)

_ACCURACY_COLUMNS: tuple[Column, ...] = (
    ("variant", lambda r: r["variant"]),
    ("output kind", lambda r: r.get("output_kind") or "–"),
    ("parameters", lambda r: _fmt(r["parameters"], ",d")),
    ("pruned %", lambda r: _fmt(r["pruning_rate_percent"], ".1f")),
    ("accuracy (%)", lambda r: _percent(r["accuracy"])),
    ("top-1 agree (%)", lambda r: _percent(r["top1_agreement"])),
    ("top-5 agree (%)", lambda r: _percent(r.get("top5_agreement"))),
    ("neighbour agree (%)", lambda r: _percent(r.get("neighbour_agreement"))),
    ("pixel agree (%)", lambda r: _percent(r.get("pixel_agreement"))),
    ("mIoU", lambda r: _fmt(r.get("mean_iou"), ".4f")),
    ("cosine", lambda r: _fmt(r["cosine"], ".5f")),
    ("abs err p99", lambda r: _fmt(r.get("abs_error_p99"), ".3g")),
    ("max abs err", lambda r: _fmt(r["max_abs_error"], ".3g")),
)

def markdown_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[Column]) -> str:
    """Render rows as a GitHub Markdown table with the given (header, formatter) columns; columns empty in
    every row ("–") are left out."""
    columns = [c for c in columns if any(c[1](r) != "–" for r in rows)] or list(columns)
    lines = ["| " + " | ".join(h for h, _ in columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(f(r).replace("|", "\\|") for _, f in columns) + " |" for r in rows]
    return "\n".join(lines)

def summary_tables(report: Mapping[str, Any]) -> list[tuple[str, list[dict[str, Any]]]]:
    """(heading, rows) of each headline table: one per timed batch size, every variant in each (untimed
    variants too, marked "untimed"); one table "untimed" when nothing was timed."""
    rows = report["rows"]
    untimed = [r for r in rows if not r["timed"]]
    batches = sorted({r["batch_size"] for r in rows if r["timed"]})
    tables = [(f"batch {b}", [r for r in rows if r["timed"] and r["batch_size"] == b] + untimed) for b in batches]
    return tables or ([("no timing (no profile stage)", untimed)] if untimed else [])

def _stage_cells(name: str, stage: Mapping[str, Any], report: Mapping[str, Any]) -> tuple[str, str]:
    """(status, seconds) of one stage: a build that built nothing says so ("skipped: no TensorRT")."""
    build = (report.get("tensorrt") or {}).get("build")
    if name == "build" and build and not build.get("built"):
        return f"skipped: {build.get('reason', 'nothing built')}", "–"
    seconds = f"{stage['seconds']:.1f}" + (" (earlier run)" if stage["status"] == "reused" else "")
    return stage["status"], seconds

_COMPRESSION_LABELS = {"parameters_before": ("parameters before", ",d"), "parameters_after": ("parameters after", ",d"),
                       "pruning_rate_percent": ("parameters pruned (%)", ".1f"),
                       "channel_ratio": ("channels removed (ratio)", ".2f"),
                       "macs_reduction": ("MACs reduction (×)", ".2f"), "factorized_layers": ("layers factorized", "d"),
                       "skipped_layers": ("layers skipped", "d"), "epochs_completed": ("epochs", "d"),
                       "steps": ("optimizer steps", ",d"), "best_metric": ("best eval metric", ".4f"),
                       "stopped_early": ("stopped early", ""), "seconds": ("training time (s)", ".0f"),
                       "clustered_layers": ("layers clustered", "d"), "clustered_parameters": ("weights clustered", ",d"),
                       "compression_ratio": ("storage compression (×)", ".2f")}

def _compression_markdown(compression: Mapping[str, Any]) -> list[str]:
    """The PyTorch-side stages' headline numbers as a (stage, quantity, value) table."""
    lines = ["## Compression (PyTorch side)", "", "| stage | quantity | value |", "|---|---|---|"]
    for stage, numbers in compression.items():
        for key, value in numbers.items():
            if key == "storage":
                continue
            label, spec = _COMPRESSION_LABELS.get(key, (key.replace("_", " "), ""))
            if isinstance(value, bool):
                text = "yes" if value else "no"
            elif isinstance(value, list):
                text = str(len(value))
            else:
                text = "–" if value is None else format(value, spec if isinstance(value, (int, float)) else "")
            lines.append(f"| {stage} | {label} | {text} |")
        if "storage" in numbers:
            st = numbers["storage"]
            lines.append(f"| {stage} | shared-weight file `{Path(st['path']).name}` | {format_size(st['file_bytes'])}, "
                         f"{st['compression_ratio']:.2f}× smaller than the FP32 state (storage and downloads only: "
                         "ONNX models and engines hold the decoded weights) |")
    return lines

def intro_lines(report: Mapping[str, Any]) -> list[str]:
    """What the headline numbers mean: baseline, speedup and compression formulas, accuracy and its sign."""
    lines = [f"Baseline: **{report['baseline']}**. Speedup = baseline p50 / variant p50 (> 1: faster), timed "
             "interleaved in one process; [interval] = 95 % paired bootstrap of the median ratio. Compression = "
             "baseline bytes / variant bytes (> 1: smaller; PyTorch: parameter bytes; ONNX: file plus external data)."]
    if report.get("task_accuracy"):
        task = report["task_accuracy"]
        lines += ["", f"Accuracy = {task['metric'].replace('_', ' ')} on the labels of `{task['labels']}`, in %; "
                      "Δ acc. = variant − baseline in percentage points (negative: the variant is less accurate)."]
    untimed = [u for u in report.get("untimed", []) if u.get("note")]
    if untimed:
        lines += ["", "Untimed: " + "; ".join(f"{u['name']} ({u['note']})" for u in untimed) + "."]
    if report.get("partial_of"):
        lines += ["", f"Partial rerun (stages {', '.join(report['recipe'].get('stages', []))}); the full report of "
                      f"this run directory is `{report['partial_of']}`, left as it was."]
    return lines

def render_markdown(report: Mapping[str, Any]) -> str:
    """The report as Markdown: headline table, then INT8, sensitivity, stages, environment."""
    env = report["environment"]
    pk = env.get("packages", {})
    gpu = ", ".join(g.get("name", "?") for g in env.get("gpus", [])) or "none"
    parts = [f"# {report['title']}", "", *intro_lines(report)]
    for heading, rows in summary_tables(report):
        parts += ["", f"## Summary, {heading}", "", markdown_table(rows, summary_columns(report))]
    if not report["rows"]:
        parts += ["", "(no variants: the run had neither a profile nor a compare stage)"]
    warnings = quality_warnings(report)
    if warnings:
        parts += ["", "## Measurement warnings", "", *(f"- {w}" for w in warnings)]
    timed = [r for r in report["rows"] if r["timed"]]
    if timed:
        parts += ["", "## Timing details", "",
                  "Throughput = batch × 1000 / p50 (from the median, like the speedup). Flags: high_cov (CoV > 10 %), "
                  "heavy_tail (p99/p50 > 3), busy_machine (load average above the CPU count while timing), "
                  "few_iterations (< 100 calls: p99 unresolved).", "", markdown_table(timed, _TIMING_COLUMNS)]
    once = list({r["variant"]: r for r in report["rows"]}.values())
    if once:
        parts += ["", "## Accuracy details", "", "Each variant's first output vs the FP32 PyTorch original's, on the "
                  "evaluation data (agreements in %, errors in the output's units).", "",
                  markdown_table(once, _ACCURACY_COLUMNS)]
    if "int8" in report:
        parts += ["", *_int8_markdown(report)]
    if report.get("sensitivity"):
        sens = report["sensitivity"]
        parts += ["", "## Per-layer INT8 sensitivity", "",
                  f"Score FP32 {sens['fp32_score']:.4f}, all layers INT8 {sens['int8_score']:.4f}. Layers that recover "
                  "the most when kept in FP32:", "", "| layer | score without it | recovered |", "|---|---|---|"]
        parts += [f"| {layer_label(row)} | {row['score_without']:.4f} | {row['recovered']:+.4f} |" for row in sens["layers"][:5]]
    if report.get("compression"):
        parts += ["", *_compression_markdown(report["compression"])]
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
                         f"{format_size(bundle['size_bytes'])}; `build_trt10.sh`, `build_trt11.sh`, `build_trtopt.sh`).")
            parts += ["", "| model | TensorRT | precision | INT8 from | plan |", "|---|---|---|---|---|"]
            parts += [f"| {p['model']} | {p['trt_version']} | {p.get('precision') or '–'} | {p.get('int8_source') or '–'} | "
                      f"{p.get('plan') or 'none: ' + str(p.get('reason'))} |" for p in bundle["plans"]]
    if report.get("stages"):
        parts += ["", "## Stages", "", "| stage | status | seconds |", "|---|---|---|"]
        parts += ["| {} | {} | {} |".format(name, *_stage_cells(name, st, report)) for name, st in report["stages"].items()]
    parts += ["", "## Environment", "",
              f"- CPU: {env['cpu_model']} ({env['cpu_count_logical']} logical CPUs; INT8 path "
              f"{(env.get('cpu_isa') or {}).get('int8', 'unknown')}); GPU: {gpu}",
              f"- Python {env['python']}, torch {pk.get('torch', '–')}, onnxruntime {pk.get('onnxruntime', '–')}, "
              f"onnx {pk.get('onnx', '–')}, TensorRT {pk.get('tensorrt', 'not installed')}",
              "- Threads: " + (", ".join(f"{c['name']}: {c['runner'].get('intra_op_threads')}"
                                         for c in report["candidates"]) or "–"),
              f"- Created {report['created_utc']} by trtopt {env['trtopt']}"]
    for section in report.get("notes", []):
        parts += ["", f"- {section}"]
    return "\n".join(parts) + "\n"

def _range_choice_lines(choice: Mapping[str, Any]) -> list[str]:
    """How the ranges were chosen: method auto's winner and evidence, and tensors whose method fell back."""
    lines = []
    if choice.get("scored"):
        scores = ", ".join(f"{c['method']} {c['sqnr_db']:.1f}" for c in choice["candidates"])
        changed = len(choice.get("per_tensor", []))
        lines.append(f"- Range method auto chose **{choice['model_method']}**: output SQNR vs FP32 on "
                     f"{choice['scoring_samples']} {'held-out' if choice['held_out'] else 'calibration'} samples "
                     f"(dB) {scores}" + (f"; {changed} tensor(s) use another method" if changed else "") + ".")
    elif choice.get("reason"):
        lines.append(f"- Range method auto could not score the methods ({choice['reason']}); used {choice['model_method']}.")
    fallbacks = choice.get("fallbacks", [])
    if fallbacks:
        shown = "; ".join(f"`{f['tensor']}` {f['method']} {f['reason']} → {f['used']}" for f in fallbacks[:3])
        lines.append(f"- {len(fallbacks)} tensor range(s) fell back to another method: {shown}"
                     + (f" (+{len(fallbacks) - 3} more in the ranges JSON)" if len(fallbacks) > 3 else "") + ".")
    return lines


def _int8_markdown(report: Mapping[str, Any]) -> list[str]:
    """INT8 section: calibration, the TensorRT-target model's agreement, and the layers that quantize worst."""
    int8 = report["int8"]
    cal = int8["calibration"]
    lines = ["## INT8", "",
             f"- Calibration: {cal['method']} on {int8['calibration_samples']} samples of "
             f"{report['recipe'].get('calibration_data') or report['data']['source']} "
             f"(streaming, {cal['num_bins']} bins); ranges in `{Path(int8['ranges']).name}`.",
             *_range_choice_lines(int8.get("range_choice") or {})]
    cache = f"TensorRT {int8['trt_cache_version']} cache `{Path(int8['tensorrt_cache']).name}` for Jetson"
    qdq = int8.get("tensorrt_qdq")  # absent when int8_targets leaves tensorrt out
    lines.append(f"- TensorRT Q/DQ model `{Path(qdq['path']).name}` ({format_size(qdq['size_bytes'])}) and {cache}."
                 if qdq else f"- {cache} (no TensorRT Q/DQ model: int8_targets leaves tensorrt out).")
    for target in ("onnxruntime", "tensorrt_qdq"):  # what --exclude (recipe quantize.exclude_nodes) matched
        kept = [n for n in (int8.get(target) or {}).get("notes", []) if n.startswith("--exclude ")]
        if kept:
            lines.append(f"- Kept in FP32 ({target.removesuffix('_qdq')} layout): " + "; ".join(f"`{n[10:]}`" for n in kept) + ".")
    acc = report["accuracy"].get("tensorrt-int8-qdq")
    if acc:
        first = acc["outputs"][0]
        lines.append(f"- TensorRT-target model, exact Q/DQ semantics on the CPU: top-1 agreement "
                     f"{_percent(first['top1_agreement'])} %, cosine {_fmt(first['cosine'], '.5f')} vs FP32.")
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
