"""Storage that composes (issue 17): prune + share (codebooks on the INT8 grid) + INT8, in one report row.

zoo:digits_cnn on scikit-learn's digits (test split, 359 real images, labels):

1. FP32: top-1 accuracy, FP32 state bytes (every floating tensor of the state dict at 4 bytes).
2. prune: unstructured magnitude pruning of every Conv/Linear weight (`trtopt.compress.prune`), then
   distillation from FP32 on the train split with the zeros kept (``DistillConfig(keep_zeros=True)``).
3. + share: BatchNorm folded into the convolutions first (the exported ONNX folds it too, and a per-channel
   BN scale would move the weights off a per-layer grid), then 4-bit per-layer codebooks snapped onto the
   symmetric INT8 grid (``ShareConfig(int8_grid=True)``); the zeros of the pruned weights are the largest
   cluster, so they stay exact zeros. Storage = the ``save_shared`` file (codebooks + packed indices + the
   FP32 rest, deflated: runs of zero indices shrink).
4. + INT8: the shared model exported to ONNX, calibrated on 256 training images and quantized for ONNX
   Runtime with per-tensor weight scales (the per-layer INT8 grid is then the quantizer's own grid, so the
   weights quantize without error: checked by dequantizing every INT8 weight initializer); accuracy of the
   INT8 ONNX model run in ONNX Runtime.

Each row: accuracy, top-1 agreement with FP32, storage bytes and the ratio vs FP32. Writes
``benchmarks/results/share_combined.json``. Seconds on 2 cores.
"""

from __future__ import annotations

import argparse
import copy
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from compress_common import THREADS, digits_distill_config

from trtopt.backends.ort import OrtConfig, OrtRunner
from trtopt.compress.config import PruneConfig, ShareConfig
from trtopt.compress.distill import distill
from trtopt.compress.prune import prune
from trtopt.compress.share import cluster_weights_, save_shared
from trtopt.datasets import load_dataset
from trtopt.environment import environment
from trtopt.export import ExportConfig, export_onnx
from trtopt.files import write_json
from trtopt.metrics import topk_accuracy
from trtopt.models.load import load_model
from trtopt.models.spec import LoadedModel
from trtopt.quant.calibrate import CalibrationConfig, calibrate
from trtopt.quant.quantize import QuantizeConfig, quantize

OUT = Path(__file__).resolve().parent / "results" / "share_combined.json"


def int8_weight_error(onnx_path: Path, shared: dict[str, np.ndarray]) -> float:
    """Largest |dequantized INT8 weight − shared weight| over the INT8 weight initializers whose shape matches
    exactly one shared weight (Conv weights keep their shape; Gemm weights may be transposed: both tried)."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(onnx_path))
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    worst = 0.0
    for node in model.graph.node:
        if node.op_type != "DequantizeLinear" or inits.get(node.input[0]) is None or inits[node.input[0]].dtype != np.int8:
            continue
        q = inits[node.input[0]].astype(np.float64)
        scale = inits[node.input[1]].astype(np.float64)
        w = q * (scale if scale.ndim == 0 else scale.reshape(-1, *([1] * (q.ndim - 1))))
        matches = [s for s in shared.values() if s.shape == w.shape or s.T.shape == w.shape]
        if len(matches) == 1:
            ref = matches[0] if matches[0].shape == w.shape else matches[0].T
            worst = max(worst, float(np.abs(w - ref).max()))
    return worst


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--ratio", type=float, default=0.5, help="unstructured pruning ratio")
    parser.add_argument("--bits", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=3, help="distillation epochs after pruning")
    args = parser.parse_args()
    torch.set_num_threads(THREADS)
    start = time.perf_counter()
    test, train = load_dataset("digits", "test"), load_dataset("digits", "train")
    name = next(iter(test.inputs))
    x_test = torch.from_numpy(test.inputs[name])
    loaded = load_model("zoo:digits_cnn")
    fp32 = loaded.module
    with torch.no_grad():
        ref_top1 = fp32(x_test).argmax(1).numpy()
    state_fp32 = sum(t.numel() * 4 for t in fp32.state_dict().values() if t.is_floating_point())

    def scores(logits: np.ndarray) -> dict[str, float]:
        return {"top1_accuracy": topk_accuracy(logits, test.labels),
                "top1_agreement_vs_fp32": float((logits.argmax(1) == ref_top1).mean())}

    def torch_scores(model: Any) -> dict[str, float]:
        with torch.no_grad():
            return scores(model(x_test).numpy())

    rows = [{"step": "fp32", **torch_scores(fp32), "storage_bytes": state_fp32, "ratio_vs_fp32": 1.0}]
    pruned = prune(fp32, x_test[:8], PruneConfig(method="unstructured", ratio=args.ratio)).module
    zeros = sum(int((p == 0).sum()) for n, p in pruned.named_parameters() if n.endswith("weight") and p.dim() > 1)
    rows.append({"step": f"prune unstructured {args.ratio:.0%}", **torch_scores(pruned), "zero_weights": zeros})
    fit = distill(pruned.requires_grad_(True), fp32, (torch.from_numpy(train.inputs[name]), torch.from_numpy(train.labels)),
                  replace(digits_distill_config(args.epochs), keep_zeros=True))
    pruned = fit.student.eval()
    rows.append({"step": f"+ distill {args.epochs} epochs (zeros kept)", **torch_scores(pruned), "distill_steps": fit.steps})
    folded = torch.ao.quantization.fuse_modules(copy.deepcopy(pruned), [[f"conv{i}", f"bn{i}"] for i in (1, 2, 3)])
    shared, _ = cluster_weights_(folded, ShareConfig(bits=args.bits, int8_grid=True))
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        info = save_shared(shared, tmp / "combined.npz")
        still_zero = sum(int((p == 0).sum()) for n, p in shared.named_parameters() if n.endswith("weight") and p.dim() > 1)
        rows.append({"step": f"+ BN folded, share {args.bits}-bit per layer, INT8-grid codebooks", **torch_scores(shared),
                     "zero_weights": still_zero, "storage_bytes": info.file_bytes, "ratio_vs_fp32": state_fp32 / info.file_bytes})
        onnx_fp32 = export_onnx(LoadedModel(shared.eval(), "combined", loaded.inputs), tmp / "combined.onnx", ExportConfig(),
                                feed=test.inputs, force=True)
        ranges = calibrate(onnx_fp32, {name: train.inputs[name][:256]}, CalibrationConfig(method="minmax"))
        layout = QuantizeConfig(per_channel=False)
        int8 = quantize(onnx_fp32.path, ranges, tmp / "combined.int8.onnx", layout)
        runner = OrtRunner(Path(int8.path), OrtConfig(intra_op_threads=THREADS))
        logits = runner.infer({name: test.inputs[name]})[runner.output_names[0]]
        weights = {n: p.detach().numpy().astype(np.float64) for n, p in shared.named_parameters()
                   if n.endswith("weight") and p.dim() > 1}
        rows.append({"step": "+ INT8 (ONNX Runtime U8S8, per-tensor weights)", **scores(logits),
                     "storage_bytes": info.file_bytes, "ratio_vs_fp32": state_fp32 / info.file_bytes,
                     "int8_onnx_bytes": int8.size_bytes, "int8_weight_max_abs_error": int8_weight_error(Path(int8.path), weights),
                     "calibration": "minmax, 256 training images"})
    for r in rows:
        print(r, flush=True)
    write_json(OUT, {"benchmark": "prune + share + INT8 on one model (issue 17)", "model": "zoo:digits_cnn",
                     "data": "sklearn digits: test split 359 images (labels), calibration: 256 train images",
                     "threads": THREADS, "command": " ".join(sys.argv), "environment": environment(),
                     "combined_row": rows[-1], "rows": rows, "seconds": time.perf_counter() - start}, force=True)
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
