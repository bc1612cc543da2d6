"""INT8 calibration of ResNet-18: trtopt's streaming calibration vs ONNX Runtime's calibrators.

Same model and data for every run: torchvision ResNet-18 with *random-init* weights (no pretrained
weights can be downloaded here; calibration cost does not depend on the weights' values), exported by
trtopt (dynamo, opset 18, BN folded), and real photographs from scikit-image expanded to N samples by
seeded random 224-px crops and horizontal flips (:func:`calibration_images`). The data are generated
lazily in each run, so holding them costs nothing.

Measured (calibration only, not quantization): wall time of the calibration call and the peak RSS of
the process that made it. Each run is a fresh subprocess, so peak RSS (``ru_maxrss``) is per run.

- trtopt ``entropy`` and ``percentile`` (at 99.999 %, ORT's default, so the ranges can be compared):
  ``trtopt.quant.calibrate.calibrate`` over a generator of batches, default ONNX Runtime session.
- ONNX Runtime ``Entropy`` and ``Percentile``: ``create_calibrator`` (augmented model in a temp dir),
  ``collect_data`` over a ``CalibrationDataReader``, ``compute_data``, with the options
  ``quantize_static`` passes by default (Entropy: 128 bins, 128 quantized bins; Percentile: 2048 bins,
  99.999 %, symmetric). ORT keeps every activation of every sample until ``compute_data``, so its
  memory grows linearly with N; sizes whose predicted peak RSS (a line through the measured ORT runs)
  exceeds ``--ort-max-rss-gb`` are skipped and recorded with the prediction, and a watchdog kills a
  run that passes the limit anyway.

Optionally, ModelOpt's ONNX PTQ (``--modelopt-python``: the python of a throwaway venv with nvidia-modelopt,
outside this repository; its time includes quantization, which it does not offer separately).

Writes ``benchmarks/results/calibration.json`` and prints a table; about 5 minutes on 2 idle cores (8 with
ModelOpt). Run: ``.venv/bin/python benchmarks/bench_calibration.py [--sizes 64,256,1024]
[--ort-trend-sizes 16,32] [--modelopt-python /path/to/venv/bin/python]``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"
CROP = 224
ORT_PERCENTILE = 99.999
TOOLS = {"trtopt-entropy": ("trtopt", "entropy"), "trtopt-percentile": ("trtopt", "percentile"),
         "ort-entropy": ("ort", "Entropy"), "ort-percentile": ("ort", "Percentile"),
         "modelopt-entropy": ("modelopt", "entropy")}
GROWING = ("ort", "modelopt")  # tools whose memory grows with the sample count: capped by prediction
NOTES = [
    "ORT Entropy with the defaults quantize_static uses (num_bins=128, num_quantized_bins=128) evaluates a "
    "single threshold candidate, the whole range, so its ranges are min/max and its compute_data costs almost "
    "nothing; trtopt entropy evaluates every candidate from bin 128 to the last used bin (TensorRT's algorithm).",
    "trtopt's peak RSS is one batch of activations (all 50 float tensors of ResNet-18 exposed, batch_size "
    "samples) plus the model and libraries; it does not depend on the sample count. ORT keeps every "
    "activation of every sample until compute_data.",
    "Both tools spend most of their time in ONNX Runtime inference with every activation exposed as an "
    "output; that part is the same work for both and bounds the achievable speedup.",
]
MODELOPT_MEASURED = ("rows modelopt-entropy: modelopt.onnx.quantization.quantize(int8, calibration_method="
                     "'entropy', calibration_eps=['cpu']) in a throwaway venv outside the repository (nvidia-modelopt "
                     "0.47.0, CPU torch 2.13, onnx_graphsurgeon, onnxscript, lief; not the [onnx] extra); its wall "
                     "time includes Q/DQ insertion, which ModelOpt does not offer separately from calibration; it "
                     "calibrates with ONNX Runtime's calibrators")
MODELOPT_NOTE = ("not measured: nvidia-modelopt is not a trtopt dependency, and its ONNX PTQ "
                 "(modelopt.onnx.quantization.quantize) calibrates and quantizes in one call, needing a "
                 "throwaway venv with a CPU torch, modelopt 0.47.0, requests, huggingface_hub and lief "
                 "(not the [onnx] extra, which pulls onnxruntime-gpu); left out to keep this benchmark "
                 "within its time budget on a 2-core machine")


# --- data -------------------------------------------------------------------------------------------

def calibration_images(count: int, batch_size: int, seed: int = 0) -> Iterator[np.ndarray]:
    """``count`` samples (3, 224, 224) in batches: `trtopt.data.iter_photo_crops` (seeded crops + flips of
    the 19 photos; sample k depends only on (seed, k), not on batching)."""
    from trtopt.data import iter_photo_crops

    for batch in iter_photo_crops(count, batch_size, size=CROP, seed=seed):
        yield batch["input"]


# --- one measurement (runs in a child process) ------------------------------------------------------

def child(spec: dict[str, Any]) -> dict[str, Any]:
    """Run one calibration and report its wall time, peak RSS and the ranges (tensor → amax)."""
    tool, method = TOOLS[spec["tool"]]
    n, batch_size, model = spec["samples"], spec["batch_size"], spec["model"]
    if tool == "modelopt":  # runs in ModelOpt's own venv, without trtopt: the data come as a .npy file
        return modelopt_child(spec, method)
    if tool == "trtopt":
        from trtopt.quant.calibrate import CalibrationConfig, calibrate

        # 99.999 %: what ORT's Percentile calibrator uses by default, so the two ranges can be compared
        # (trtopt's own default is 99.99; the percentile does not change the cost).
        config = CalibrationConfig(method=method, batch_size=batch_size, percentile=ORT_PERCENTILE)
        start = time.perf_counter()
        ranges = calibrate(model, ({"input": b} for b in calibration_images(n, batch_size)), config)
        wall = time.perf_counter() - start
        amax = {k: r.amax for k, r in ranges.tensors.items()}
        settings = config.to_dict()
    else:
        from onnxruntime.quantization.calibrate import CalibrationDataReader, CalibrationMethod, create_calibrator

        class Reader(CalibrationDataReader):
            def __init__(self) -> None:
                self.batches = calibration_images(n, batch_size)

            def get_next(self) -> dict[str, np.ndarray] | None:
                batch = next(self.batches, None)
                return None if batch is None else {"input": batch}

        options = {"num_bins": spec["ort_entropy_bins"]} if method == "Entropy" and spec.get("ort_entropy_bins") else {}
        with tempfile.TemporaryDirectory() as tmp:
            start = time.perf_counter()
            calibrator = create_calibrator(model, augmented_model_path=str(Path(tmp) / "augmented.onnx"),
                                           calibrate_method=getattr(CalibrationMethod, method), extra_options=options)
            calibrator.collect_data(Reader())
            data = calibrator.compute_data()
            wall = time.perf_counter() - start
        amax = {k: float(max(abs(float(v.range_value[0])), abs(float(v.range_value[1])))) for k, v in data.data.items()}
        settings = {"method": method, "extra_options": options, "defaults": "as quantize_static passes them"}
    return {"wall_s": wall, "peak_rss_mb": peak_rss_mb(), "tensors": len(amax), "amax": amax, "settings": settings}


def modelopt_child(spec: dict[str, Any], method: str) -> dict[str, Any]:
    """ModelOpt's ONNX PTQ (``modelopt.onnx.quantization.quantize``, int8): calibration *and* Q/DQ insertion,
    which it does not offer separately; the same samples, read from ``spec["data"]``."""
    from modelopt.onnx.quantization import quantize

    x = np.ascontiguousarray(np.load(spec["data"]))
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        quantize(spec["model"], quantize_mode="int8", calibration_data={"input": x}, calibration_method=method,
                 calibration_eps=["cpu"], output_path=str(Path(tmp) / "quantized.onnx"), log_level="ERROR")
        wall = time.perf_counter() - start
    import modelopt

    settings = {"quantize_mode": "int8", "calibration_method": method, "calibration_eps": ["cpu"],
                "modelopt": modelopt.__version__, "includes": "calibration + quantization"}
    return {"wall_s": wall, "peak_rss_mb": peak_rss_mb(), "tensors": 0, "amax": {}, "settings": settings}


def peak_rss_mb() -> float:
    """Peak resident memory of this process in MB: VmHWM, which starts afresh at exec.

    (``ru_maxrss`` would do on its own only if the parent were small: Linux carries the parent's peak
    over fork and exec into it, so a child of a parent that holds torch would report the parent's.)
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


# --- the parent ----------------------------------------------------------------------------------------

def run_child(spec: dict[str, Any], max_rss_mb: float | None, timeout_s: float,
              python: str = sys.executable) -> dict[str, Any]:
    """Run :func:`child` in a fresh ``python``; kill it if its RSS passes ``max_rss_mb``."""
    with tempfile.NamedTemporaryFile("r", suffix=".json") as out:
        cmd = [python, __file__, "--child", json.dumps(spec), "--child-out", out.name]
        proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
        start, killed = time.monotonic(), None
        while proc.poll() is None:
            rss = _rss_mb(proc.pid)
            if max_rss_mb is not None and rss > max_rss_mb:
                killed = f"killed by the watchdog at {rss:.0f} MB RSS (limit {max_rss_mb:.0f} MB)"
            elif time.monotonic() - start > timeout_s:
                killed = f"killed after {timeout_s:.0f} s"
            if killed:
                proc.kill()
                proc.wait()
                break
            time.sleep(0.2)
        stderr = proc.stderr.read() if proc.stderr else ""
        if killed or proc.returncode != 0:
            last = stderr.strip().splitlines()[-1] if stderr.strip() else f"exit {proc.returncode}"
            return {"error": killed or last}
        return json.loads(Path(out.name).read_text())


def _rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def fit_line(points: list[tuple[int, float]]) -> tuple[float, float] | None:
    """Least-squares (intercept, slope) of value vs samples; None with fewer than two sizes."""
    if len({n for n, _ in points}) < 2:
        return None
    x = np.array([p[0] for p in points], float)
    y = np.array([p[1] for p in points], float)
    slope, intercept = np.polyfit(x, y, 1)
    return float(intercept), float(slope)


def export_model(folder: Path) -> dict[str, Any]:
    from trtopt.data import load_feed
    from trtopt.export import export_onnx
    from trtopt.models.load import load_model

    loaded = load_model("torchvision:resnet18")
    feed = load_feed("skimage:photos", loaded.inputs, count=8, preprocess=loaded.preprocess)
    art = export_onnx(loaded, folder / "resnet18.onnx", feed=feed)
    return {"path": str(art.path), "sha256": art.sha256, "size_bytes": art.size_bytes, "opset": art.opset,
            "exporter": art.exporter, "spec": "torchvision:resnet18", "weights": "random init (seed 0)"}


def environment() -> dict[str, Any]:
    import numpy
    import onnxruntime

    import trtopt

    return {"python": platform.python_version(), "platform": platform.platform(), "cpu_count": os.cpu_count(),
            "memory_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
            "packages": {"trtopt": trtopt.__version__, "onnxruntime": onnxruntime.__version__,
                         "numpy": numpy.__version__}}


def compare_amax(a: dict[str, float], b: dict[str, float]) -> dict[str, Any]:
    """How two runs' ranges agree on the tensors both calibrated: |a-b|/b quantiles."""
    common = [k for k in a if k in b and b[k] > 0]
    rel = np.array([abs(a[k] - b[k]) / b[k] for k in common])
    if not common:
        return {"tensors": 0}
    return {"tensors": len(common), "rel_diff_median": float(np.median(rel)),
            "rel_diff_p90": float(np.quantile(rel, 0.9)),
            "rel_diff_max": float(rel.max())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="64,256,1024", help="sample counts for every tool (comma-separated)")
    parser.add_argument("--ort-trend-sizes", default="16,32",
                        help="extra small sizes for ONNX Runtime only, to measure its memory trend")
    parser.add_argument("--tools", default=",".join(t for t in TOOLS if TOOLS[t][0] != "modelopt"),
                        help=f"subset of {', '.join(TOOLS)}")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--ort-max-rss-gb", type=float, default=10.0,
                        help="skip ONNX Runtime sizes predicted above this peak RSS (the machine has 24 GiB)")
    parser.add_argument("--ort-entropy-bins", type=int, default=0,
                        help="num_bins for ORT Entropy (0: its default, 128)")
    parser.add_argument("--modelopt-python", default="",
                        help="python of a throwaway venv with nvidia-modelopt (CPU torch, onnx_graphsurgeon, "
                             "onnxscript, lief); adds modelopt-entropy, which includes quantization")
    parser.add_argument("--max-predicted-s", type=float, default=150.0,
                        help="skip sizes of ORT/ModelOpt whose predicted wall time (a line through their measured "
                             "runs) exceeds this, to keep the whole benchmark near 10 minutes on 2 cores")
    parser.add_argument("--timeout-s", type=float, default=300.0, help="per run; a run past it is recorded as failed")
    parser.add_argument("--out", type=Path, default=RESULTS / "calibration.json")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--child-out", help=argparse.SUPPRESS)
    parser.add_argument("--export-to", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        Path(args.child_out).write_text(json.dumps(child(json.loads(args.child))))
        return
    if args.export_to:
        Path(args.export_to, "model.json").write_text(json.dumps(export_model(Path(args.export_to))))
        return

    sizes = sorted({int(s) for s in args.sizes.split(",") if s})
    trend = sorted({int(s) for s in args.ort_trend_sizes.split(",") if s} - set(sizes))
    tools = [t for t in args.tools.split(",") if t]
    unknown = [t for t in tools if t not in TOOLS]
    if unknown:
        parser.error(f"unknown tool {unknown[0]}; choose from {', '.join(TOOLS)}")
    if args.modelopt_python and "modelopt-entropy" not in tools:
        tools.append("modelopt-entropy")
    if "modelopt-entropy" in tools and not args.modelopt_python:
        parser.error("modelopt-entropy needs --modelopt-python")
    limit_mb = args.ort_max_rss_gb * 1024
    rows: list[dict[str, Any]] = []
    ranges: dict[tuple[str, int], dict[str, float]] = {}
    started = time.perf_counter()
    load_before = os.getloadavg()  # other work on the machine slows every run: recorded, not hidden
    with tempfile.TemporaryDirectory(prefix="bench-calibration-") as tmp:
        # Exported in a child too: this process stays small (no torch), so nothing of it leaks into
        # the measurements, and the machine's memory goes to the runs.
        subprocess.run([sys.executable, __file__, "--export-to", tmp], check=True)
        model = json.loads(Path(tmp, "model.json").read_text())
        for tool in tools:
            is_ort = TOOLS[tool][0] in GROWING
            measured: list[tuple[int, float]] = []
            times: list[tuple[int, float]] = []
            for n in (trend + sizes) if is_ort else sizes:
                row: dict[str, Any] = {"tool": tool, "samples": n, "batch_size": args.batch_size}
                line, time_line = (fit_line(measured), fit_line(times)) if is_ort else (None, None)
                if line is not None and time_line is not None:
                    predicted = line[0] + line[1] * n
                    predicted_s = time_line[0] + time_line[1] * n
                    reason = ""
                    if predicted > limit_mb:
                        reason = (f"predicted peak RSS {predicted / 1024:.1f} GB exceeds --ort-max-rss-gb "
                                  f"{args.ort_max_rss_gb:g} (keeps every activation until the end)")
                    elif predicted_s > args.max_predicted_s:
                        reason = (f"predicted wall time {predicted_s:.0f} s exceeds --max-predicted-s "
                                  f"{args.max_predicted_s:g}")
                    if reason:
                        row.update(status="skipped", predicted_peak_rss_mb=round(predicted),
                                   predicted_wall_s=round(predicted_s, 1), reason=reason)
                        rows.append(row)
                        print(f"{tool:18s} {n:5d}  skipped: {row['reason']}", flush=True)
                        continue
                spec = {"tool": tool, "samples": n, "batch_size": args.batch_size, "model": model["path"],
                        "ort_entropy_bins": args.ort_entropy_bins}
                python = sys.executable
                if TOOLS[tool][0] == "modelopt":
                    spec["data"] = str(Path(tmp) / f"data{n}.npy")
                    np.save(spec["data"], np.concatenate(list(calibration_images(n, 64))))
                    python = args.modelopt_python
                result = run_child(spec, limit_mb + 512 if is_ort else None, args.timeout_s, python)
                if "error" in result:
                    row.update(status="failed", reason=result["error"])
                else:
                    ranges[(tool, n)] = result.pop("amax")
                    if TOOLS[tool][0] == "modelopt":
                        result.pop("tensors")
                    row.update(status="ok", wall_s=round(result["wall_s"], 2), peak_rss_mb=round(result["peak_rss_mb"]),
                               settings=result["settings"])
                    if "tensors" in result:
                        row["tensors"] = result["tensors"]
                    measured.append((n, result["peak_rss_mb"]))
                    times.append((n, result["wall_s"]))
                rows.append(row)
                print(f"{tool:18s} {n:5d}  {row.get('wall_s', '-')!s:>8} s  {row.get('peak_rss_mb', '-')!s:>7} MB"
                      f"  {row['status']} {row.get('reason', '')}", flush=True)

    summary = summarize(rows, ranges, sizes)
    result = {
        "title": "INT8 calibration of ResNet-18 (random init) on 2 CPU cores: trtopt streaming vs ONNX Runtime",
        "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "model": model, "data": {"source": "skimage photos (19), seeded random 224-px crops + flips",
                                 "generator": "trtopt.data.iter_photo_crops(count, batch_size, seed=0)"},
        "environment": environment(), "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()
                                                if not k.startswith("child") and k != "export_to"},
        "modelopt": {"status": "measured", "python": args.modelopt_python, "note": MODELOPT_MEASURED}
        if args.modelopt_python else {"status": "skipped", "reason": MODELOPT_NOTE},
        "notes": NOTES,
        "rows": rows, "summary": summary, "total_benchmark_s": round(time.perf_counter() - started, 1),
        "load_average_1_5_15_min": {"before": [round(v, 2) for v in load_before],
                                    "after": [round(v, 2) for v in os.getloadavg()]},
    }
    from trtopt.files import write_json

    write_json(args.out, result, force=True)
    print()
    print(markdown(rows, sizes))
    print()
    print(json.dumps(summary, indent=2))
    print(f"\nwrote {args.out}")


def summarize(rows: list[dict[str, Any]], ranges: dict[tuple[str, int], dict[str, float]],
              sizes: list[int]) -> dict[str, Any]:
    """Per pair (trtopt, other): the wall-time ratio (other / trtopt) and RSS ratio at the largest size both
    ran, the other tool's linear trend extrapolated to the largest size, and how the ranges agree."""
    ok = {(r["tool"], r["samples"]): r for r in rows if r["status"] == "ok"}
    out: dict[str, Any] = {}
    for ours, theirs in (("trtopt-entropy", "ort-entropy"), ("trtopt-percentile", "ort-percentile"),
                         ("trtopt-entropy", "modelopt-entropy")):
        key = theirs.replace("-", "_")
        if not any(t == theirs for (t, _) in ok):
            continue
        common = sorted(n for (t, n) in ok if t == theirs and (ours, n) in ok)
        entry: dict[str, Any] = {"trtopt": ours, "other": theirs}
        if common:
            n = common[-1]
            a, b = ok[(ours, n)], ok[(theirs, n)]
            entry.update(largest_common_samples=n, speedup=round(b["wall_s"] / a["wall_s"], 2),
                         rss_ratio_other_over_trtopt=round(b["peak_rss_mb"] / a["peak_rss_mb"], 2))
            if ranges.get((theirs, n)):
                entry["amax_agreement"] = compare_amax(ranges[(ours, n)], ranges[(theirs, n)])
        ort_points = [(n, r["wall_s"]) for (t, n), r in ok.items() if t == theirs]
        ort_rss = [(n, r["peak_rss_mb"]) for (t, n), r in ok.items() if t == theirs]
        top = max(sizes)
        if (ours, top) in ok and fit_line(ort_points):
            t_line, m_line = fit_line(ort_points), fit_line(ort_rss)
            ort_time = t_line[0] + t_line[1] * top
            entry.update({f"other_extrapolated_wall_s_at_{top}": round(ort_time, 1),
                          f"other_extrapolated_peak_rss_mb_at_{top}": round(m_line[0] + m_line[1] * top),
                          f"speedup_extrapolated_at_{top}": round(ort_time / ok[(ours, top)]["wall_s"], 2),
                          "other_fit": {"wall_s_per_sample": round(t_line[1], 4),
                                        "rss_mb_per_sample": round(m_line[1], 2)}})
        ours_rss = [ok[(ours, n)]["peak_rss_mb"] for n in sizes if (ours, n) in ok]
        if ours_rss:
            entry["trtopt_peak_rss_mb_range"] = [min(ours_rss), max(ours_rss)]
        out[key] = entry
    return out


def markdown(rows: list[dict[str, Any]], sizes: list[int]) -> str:
    """Rows (tool) × columns (samples): 'wall s / peak MB', rendered from the result rows."""
    all_sizes = sorted({r["samples"] for r in rows})
    header = "| tool | " + " | ".join(f"{n} samples: wall s / peak RSS MB" for n in all_sizes) + " |"
    lines = [header, "|---" * (len(all_sizes) + 1) + "|"]
    for tool in dict.fromkeys(r["tool"] for r in rows):
        cells = []
        for n in all_sizes:
            r = next((r for r in rows if r["tool"] == tool and r["samples"] == n), None)
            if r is None:
                cells.append("")
            elif r["status"] == "ok":
                cells.append(f"{r['wall_s']:.1f} / {r['peak_rss_mb']}")
            elif r["status"] == "skipped":
                cells.append(f"skipped (predicted ~{r['predicted_wall_s']:.0f} s / "
                             f"{r['predicted_peak_rss_mb'] / 1024:.1f} GB)")
            else:
                cells.append("failed")
        lines.append(f"| {tool} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
