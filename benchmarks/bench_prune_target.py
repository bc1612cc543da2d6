"""Latency-target pruning (measured speedup on ONNX Runtime CPU) and the 2:4 checker on a real trained CNN.

1. ``search_speedup`` with structured pruning: ResNet-50 (torchvision, random init) is pruned structurally at increasing channel
   ratios until its ONNX, timed interleaved against the unpruned ONNX (FP32, batch 1, 2 threads), is the
   requested 1.5× faster within 10 %; every step (ratio, MACs, measured speedup with interval) is kept.
2. 2:4: zoo:digits_cnn (trained on scikit-learn digits) gets the 2:4 pattern; the exported ONNX passes
   ``check_2to4`` and the dense one fails it; test-split accuracy before and after (no fine-tuning here:
   recovering it is distillation's job).

Writes ``benchmarks/results/prune_target_cpu.json``. Run::

    flock /tmp/trtopt-heavy.lock .venv/bin/python benchmarks/bench_prune_target.py [--target 1.5]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from trtopt.compress.config import PruneConfig
from trtopt.compress.prune import prune_loaded
from trtopt.datasets import load_dataset
from trtopt.environment import environment
from trtopt.export import export_onnx
from trtopt.files import write_json
from trtopt.metrics import topk_accuracy
from trtopt.models.load import load_model
from trtopt.speedup_search import SpeedupSearchConfig, search_speedup
from trtopt.trt.sparsity import check_2to4

RESULTS = Path(__file__).resolve().parent / "results"


def accuracy(module: torch.nn.Module, split) -> float:
    with torch.no_grad():
        logits = module(torch.from_numpy(split.inputs["input"]))
    return topk_accuracy(logits.numpy(), split.labels)


def two_four() -> dict:
    loaded = load_model("zoo:digits_cnn")
    test = load_dataset("digits", "test")
    sparse, result = prune_loaded(loaded, PruneConfig("2:4"))
    with tempfile.TemporaryDirectory() as tmp:
        sparse_check = check_2to4(export_onnx(sparse, Path(tmp) / "sparse.onnx").path)
        dense_check = check_2to4(export_onnx(loaded, Path(tmp) / "dense.onnx").path)
    return {"model": "zoo:digits_cnn", "pruning_rate_percent": result.pruning_rate_percent,
            "layers": [{k: r[k] for k in ("name", "sparsity")} for r in result.layers], "skipped": result.skipped,
            "checker_sparse_onnx": {"ok": sparse_check.ok, "layers_checked": len(sparse_check.layers),
                                    "skipped": [s["weight"] for s in sparse_check.skipped]},
            "checker_dense_onnx": {"ok": dense_check.ok, "violating": dense_check.violating},
            "test_accuracy_dense": accuracy(loaded.module, test), "test_accuracy_2to4_no_finetune": accuracy(sparse.module, test),
            "test_samples": len(test.labels)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="torchvision:resnet50")
    parser.add_argument("--target", type=float, default=1.5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--iterations", type=int, default=40)
    parser.add_argument("--out", type=Path, default=RESULTS / "prune_target_cpu.json")
    args = parser.parse_args()
    started = time.perf_counter()
    target = SpeedupSearchConfig(target_speedup=args.target, tolerance=0.1, batch_size=1, threads=args.threads,
                                 iterations=args.iterations)
    search = search_speedup(load_model(args.model), PruneConfig("structured"), target, on_step=lambda s: print(
        f"ratio {s.compression['ratio']:.3f}: MACs ÷{s.compression['macs_reduction']:.2f} → speedup {s.speedup:.2f}× "
        f"[{s.speedup_ci_low:.2f}, {s.speedup_ci_high:.2f}]", flush=True))
    chosen = search.chosen_step.to_dict()
    print(f"target {args.target}× ± 10 %: {'reached' if search.reached else 'NOT reached'} at ratio {chosen['ratio']} "
          f"({chosen['speedup']:.2f}×)")
    sparse = two_four()
    print(f"2:4 digits: checker sparse ok={sparse['checker_sparse_onnx']['ok']}, dense ok={sparse['checker_dense_onnx']['ok']}; "
          f"accuracy {sparse['test_accuracy_dense']:.4f} → {sparse['test_accuracy_2to4_no_finetune']:.4f}")
    # the steps carry what matters; the chosen step's layer table (search.result) is long and left out
    write_json(args.out, {"latency_target": {"model": args.model, "weights": "random init", **search.to_dict(),
                                             "chosen_step": chosen},
                          "two_four": sparse, "threads": args.threads, "environment": environment(),
                          "wall_seconds": time.perf_counter() - started}, force=True)
    print(f"wrote {args.out} in {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
