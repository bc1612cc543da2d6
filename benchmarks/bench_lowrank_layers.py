"""Where can one low-rank split win in ONNX Runtime (CPU)? Single layers, dense vs factorized, by MAC fraction.

A factorized layer runs two (or three) kernels and writes an intermediate activation of rank r channels;
its MACs fall to ``r (C + O) / (C O)`` of the dense layer's, but the extra kernel call and activation
traffic are not free. This times, interleaved in one run (2 threads, batch 1 and 8), the dense layer,
the same dense layer in a second session (control: the machine's noise) and the channel-SVD split at
ranks giving 85 %, 60 % and 40 % of the dense MACs, for layer shapes of EfficientNet-Lite0 (stem 3×3,
pointwise 1×1 at several resolutions) and all-MiniLM-L6-v2 (Linear at 64 tokens).
Writes ``benchmarks/results/lowrank_layers.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from compress_common import THREADS

from trtopt.environment import environment
from trtopt.export import ExportConfig, export_onnx
from trtopt.files import write_json
from trtopt.measure.bench import bench, onnx_candidate
from trtopt.measure.profile import TimingConfig
from trtopt.models.spec import InputSpec, LoadedModel

OUT = Path(__file__).resolve().parent / "results" / "lowrank_layers.json"
# name: (kind, in, out, kernel, stride, input shape without batch)
SHAPES = {
    "lite0 stem 3x3 s2 3→32 @224": ("conv", 3, 32, 3, 2, (3, 224, 224)),
    "lite0 expand 1x1 16→96 @112": ("conv", 16, 96, 1, 1, (16, 112, 112)),
    "lite0 expand 1x1 24→144 @56": ("conv", 24, 144, 1, 1, (24, 56, 56)),
    "lite0 expand 1x1 40→240 @28": ("conv", 40, 240, 1, 1, (40, 28, 28)),
    "lite0 expand 1x1 80→480 @28": ("conv", 80, 480, 1, 1, (80, 28, 28)),
    "lite0 expand 1x1 112→672 @14": ("conv", 112, 672, 1, 1, (112, 14, 14)),
    "lite0 project 1x1 1152→192 @7": ("conv", 1152, 192, 1, 1, (1152, 7, 7)),
    "minilm ffn Linear 384→1536 @64 tokens": ("linear", 384, 1536, 0, 0, (64, 384)),
    "minilm attention Linear 384→384 @64 tokens": ("linear", 384, 384, 0, 0, (64, 384)),
}
FRACTIONS = (0.85, 0.6, 0.4)


def layers(kind: str, c: int, o: int, k: int, stride: int, r: int | None) -> nn.Module:
    """The dense layer (r None) or its channel split: k×k C→r (no bias), then 1×1 r→O (Linear: two Linears)."""
    if kind == "linear":
        return nn.Linear(c, o) if r is None else nn.Sequential(nn.Linear(c, r, bias=False), nn.Linear(r, o))
    pad = k // 2
    if r is None:
        return nn.Conv2d(c, o, k, stride, pad)
    return nn.Sequential(nn.Conv2d(c, r, k, stride, pad, bias=False), nn.Conv2d(r, o, 1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--only", nargs="+", default=None, help="time only layers whose label contains one of these "
                        "(the others' earlier rows are kept)")
    args = parser.parse_args()
    torch.set_num_threads(THREADS)
    torch.manual_seed(0)
    chosen = [k for k in SHAPES if args.only is None or any(s in k for s in args.only)]
    kept = json.loads(OUT.read_text())["rows"] if OUT.exists() and args.only else []
    rows: list[dict[str, Any]] = [r for r in kept if r["layer"] not in chosen]
    with tempfile.TemporaryDirectory() as d:
        for label in chosen:
            kind, c, o, k, stride, shape = SHAPES[label]
            spec = (InputSpec("input", shape, "float32", -2.0, 2.5),)
            feed = {"input": np.random.default_rng(0).standard_normal((8, *shape)).astype(np.float32)}
            dense_per_rank = c * max(k, 1) ** 2 + o  # MACs per output position per unit of rank
            paths = {}
            ranks = {}
            for name, frac in (("dense", None), *((f"macs_{f}", f) for f in FRACTIONS)):
                r = None if frac is None else max(1, round(frac * c * max(k, 1) ** 2 * o / dense_per_rank))
                module = layers(kind, c, o, k, stride, r).eval()
                art = export_onnx(LoadedModel(module, name, spec), Path(d) / f"{name}.onnx", ExportConfig(),
                                  feed=feed, force=True)
                paths[name], ranks[name] = art.path, r
            cands = [onnx_candidate(paths["dense"], "dense", threads=THREADS),
                     onnx_candidate(paths["dense"], "dense_control", threads=THREADS),
                     *(onnx_candidate(p, n, threads=THREADS) for n, p in paths.items() if n != "dense")]
            try:
                res = bench(cands, feed, (1, 8), TimingConfig(warmup_iterations=5, iterations=60))
            finally:
                for cand in cands:
                    cand.runner.close()
            row: dict[str, Any] = {"layer": label, "ranks": ranks}
            for per_batch in res["per_batch"]:
                row[f"batch_{per_batch['batch_size']}"] = {
                    name: {"latency_ms_p50": v["latency_ms_p50"],
                           "speedup": (v.get("speedup_vs_baseline") or {}).get("speedup")}
                    for name, v in per_batch["candidates"].items()} | {"load_average": per_batch["load_average"]}
            rows.append(row)
            print(label, {b: {n: round(v["speedup"], 2) for n, v in row[b].items() if isinstance(v, dict) and v["speedup"]}
                          for b in ("batch_1", "batch_8")}, flush=True)
            write_json(OUT, {"benchmark": "one low-rank split vs its dense layer in ONNX Runtime (CPU)",
                             "threads": THREADS, "environment": environment(), "rows": rows}, force=True)


if __name__ == "__main__":
    main()
