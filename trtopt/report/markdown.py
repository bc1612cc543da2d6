"""The report as Markdown: tables rendered from :func:`trtopt.report.model.variant_rows`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any


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
    lines.append(f"- TensorRT Q/DQ model `{Path(qdq['path']).name}` ({qdq['size_bytes'] / 1e6:.2f} MB) and {cache}."
                 if qdq else f"- {cache} (no TensorRT Q/DQ model: int8_targets leaves tensorrt out).")
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
