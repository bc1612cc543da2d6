"""Structured pruning: MACs reduction vs measured ONNX Runtime CPU speedup, ResNet-50 and MobileNetV3-Small.

Each model (torchvision architecture, random init: latency does not depend on the weights' values) is
pruned structurally at several channel ratios (L1 importance, channels rounded to multiples of 8, stem
and classifier protected), exported to ONNX, and timed on ONNX Runtime CPU against the unpruned
model's ONNX, all candidates interleaved in one process (FP32 vs FP32, same inputs and threads), at
batch 1 and 8. Reported side by side: parameters, MACs reduction (dense, counted per sample) and the
measured speedup with its paired-bootstrap 95 % interval. Anchor: Torch-Pruning reports 3.85× fewer
MACs → 2.19× faster for ResNet-50 on a GPU.

Writes ``benchmarks/results/prune_cpu.json``. Run (under the shared lock on the build machines)::

    flock /tmp/trtopt-heavy.lock .venv/bin/python benchmarks/bench_prune.py [--models resnet50 ...]
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time
from pathlib import Path

from trtopt.compress.config import PruneConfig
from trtopt.compress.prune import prune_loaded
from trtopt.data import random_feed
from trtopt.environment import environment
from trtopt.export import ExportConfig, export_onnx
from trtopt.files import write_json
from trtopt.measure.bench import bench, onnx_candidate
from trtopt.measure.profile import TimingConfig
from trtopt.models.load import load_model

RESULTS = Path(__file__).resolve().parent / "results"


def run_model(name: str, ratios: list[float], batch_sizes: list[int], threads: int, iterations: int) -> dict:
    loaded = load_model(f"torchvision:{name}")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        export_cfg = ExportConfig()
        candidates = [onnx_candidate(export_onnx(loaded, Path(tmp) / "base.onnx", export_cfg), "unpruned", threads=threads)]
        for ratio in ratios:
            started = time.perf_counter()
            pruned, result = prune_loaded(loaded, PruneConfig("structured", ratio))
            prune_s = time.perf_counter() - started
            art = export_onnx(pruned, Path(tmp) / f"pruned_{ratio}.onnx", export_cfg)
            candidates.append(onnx_candidate(art, f"ratio_{ratio}", threads=threads))
            rows.append({"ratio": ratio, "channel_ratio": result.channel_ratio, "parameters_before": result.parameters_before,
                         "parameters_after": result.parameters_after, "pruning_rate_percent": result.pruning_rate_percent,
                         "macs_before": result.macs_before, "macs_after": result.macs_after,
                         "macs_reduction": result.macs_reduction, "onnx_size_bytes": art.size_bytes,
                         "onnx_parity": {k: v["passed"] for k, v in art.parity.items()}, "prune_seconds": prune_s})
        base_size = candidates[0].size_bytes
        timing = TimingConfig(warmup_iterations=5, iterations=iterations)
        feed = random_feed(loaded.inputs, max(batch_sizes), seed=0)
        timed = bench(candidates, feed, batch_sizes, timing)
    for row in rows:
        row["onnx_size_ratio"] = base_size / row["onnx_size_bytes"]
        for per in timed["per_batch"]:
            stats = per["candidates"][f"ratio_{row['ratio']}"]
            sp = stats["speedup_vs_baseline"]
            row[f"batch_{per['batch_size']}"] = {
                "latency_ms_p50": stats["latency_ms_p50"], "baseline_latency_ms_p50": per["candidates"]["unpruned"]["latency_ms_p50"],
                "speedup": sp["speedup"], "speedup_ci_low": sp["speedup_ci_low"], "speedup_ci_high": sp["speedup_ci_high"]}
    return {"model": f"torchvision:{name}", "weights": "random init (latency does not depend on values)",
            "baseline_onnx_size_bytes": base_size, "rows": rows, "timing": timing.to_dict()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["resnet50", "mobilenet_v3_small"])
    parser.add_argument("--ratios", type=float, nargs="+", default=[0.25, 0.5, 0.75])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--iterations", type=int, default=30)
    parser.add_argument("--out", type=Path, default=RESULTS / "prune_cpu.json")
    args = parser.parse_args()
    started = time.perf_counter()
    models = []
    for name in args.models:
        models.append(run_model(name, args.ratios, args.batch_sizes, args.threads, args.iterations))
        for row in models[-1]["rows"]:
            cells = "  ".join(f"b{b}: {row[f'batch_{b}']['speedup']:.2f}× [{row[f'batch_{b}']['speedup_ci_low']:.2f}, "
                              f"{row[f'batch_{b}']['speedup_ci_high']:.2f}]" for b in args.batch_sizes)
            print(f"{name:20s} ratio {row['ratio']:.2f}: params -{row['pruning_rate_percent']:.1f} %, "
                  f"MACs ÷{row['macs_reduction']:.2f}  → ORT {cells}")
    write_json(args.out, {
        "what": "structured pruning (L1, round_to 8, stem+classifier protected): MACs reduction vs measured ONNX Runtime "
                "CPU FP32 speedup over the unpruned FP32 ONNX, interleaved timing, paired bootstrap 95 % intervals",
        "anchor": "Torch-Pruning (Fang et al., DepGraph, CVPR 2023) reports ResNet-50: 3.85x fewer MACs -> 2.19x faster (GPU)",
        "threads": args.threads, "batch_sizes": args.batch_sizes, "ratios": args.ratios,
        "config": dataclasses.asdict(PruneConfig("structured")), "models": models,
        "environment": environment(), "wall_seconds": time.perf_counter() - started}, force=True)
    print(f"wrote {args.out} in {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
