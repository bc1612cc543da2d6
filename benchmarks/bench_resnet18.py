"""ResNet-18: PyTorch eager FP32 vs ONNX Runtime FP32 on this CPU, batch 1 and 8, interleaved timing.

Writes ``benchmarks/results/resnet18_cpu.json`` (the full trtopt report: environment, every latency
statistic, speedup with its paired-bootstrap 95 % interval) and prints the Markdown table. Run with
``make bench`` or ``.venv/bin/python benchmarks/bench_resnet18.py [--iterations N] [--threads T]``.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

from trtopt.backends.ort import OrtConfig
from trtopt.data import load_feed
from trtopt.export import ExportConfig, export_onnx
from trtopt.files import write_json
from trtopt.measure.bench import bench, onnx_candidate, torch_candidate
from trtopt.measure.profile import TimingConfig
from trtopt.models.load import load_model
from trtopt.report.markdown import markdown_table
from trtopt.report.model import build_report

RESULTS = Path(__file__).resolve().parent / "results"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=200)
    parser.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument("--out", type=Path, default=RESULTS / "resnet18_cpu.json")
    args = parser.parse_args()

    loaded = load_model("torchvision:resnet18")
    feed = load_feed("skimage:photos", loaded.inputs, preprocess=loaded.preprocess)
    with tempfile.TemporaryDirectory() as tmp:
        onnx = export_onnx(loaded, Path(tmp) / "resnet18.onnx", ExportConfig(), feed=feed)
        candidates = [torch_candidate(loaded, threads=args.threads),
                      onnx_candidate(onnx, "onnxruntime-fp32", OrtConfig(intra_op_threads=args.threads))]
        timing = TimingConfig(warmup_iterations=20, iterations=args.iterations)
        result = bench(candidates, feed, (1, 8), timing)
    report = build_report("ResNet-18 (random init): PyTorch eager vs ONNX Runtime, CPU FP32", result,
                          recipe={"model": "torchvision:resnet18", "data": "skimage:photos", "threads": args.threads,
                                  "timing": timing.to_dict()})
    write_json(args.out, report, force=True)
    print(markdown_table(report["rows"]))
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
