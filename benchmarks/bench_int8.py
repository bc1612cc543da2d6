"""INT8 on this CPU: trtopt's calibration + ONNX Runtime layout vs ONNX Runtime's own quantize_static.

Same FP32 ONNX, same calibration data, same evaluation data for both. For each image model
(torchvision resnet18 and resnet50 with seeded random weights, and the pretrained EfficientNet-Lite0):
size, latency of FP32 ORT / trtopt INT8 / ORT-quantize_static INT8 timed interleaved at batch 1 and 8
(2 threads each), and top-1 agreement + cosine with FP32 on the 19 real photos (calibrated on 128
random crops of them). Then the labelled digits test split (359 real handwritten digits): FP32 vs INT8
accuracy for both targets, and all-MiniLM-L6-v2: INT8 embeddings' mean cosine to FP32 on real text.
Writes ``benchmarks/results/int8_cpu.json``; ``--quick`` times fewer iterations.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import logging
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from trtopt.artifacts import inspect_onnx
from trtopt.backends.ort import OrtConfig
from trtopt.data import iter_photo_crops, load_feed
from trtopt.environment import environment
from trtopt.export import ExportConfig, export_onnx
from trtopt.files import write_json
from trtopt.measure.bench import bench, onnx_candidate, run_all
from trtopt.measure.profile import TimingConfig
from trtopt.metrics import cosine_per_sample, top1_agreement, topk_accuracy
from trtopt.models.load import load_model
from trtopt.quant.calibrate import CalibrationConfig, calibrate
from trtopt.quant.quantize import QuantizeConfig, quantize
from trtopt.quant.sensitivity import choose_mixed_precision, cosine_scorer

OUT = Path(__file__).resolve().parent / "results" / "int8_cpu.json"
THREADS = 2


def ort_quantize_static(fp32: Path, feed: dict[str, np.ndarray], out: Path) -> float:
    """ONNX Runtime's own U8S8 QDQ quantization (its CPU recommendation, default MinMax calibration)."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            n = len(next(iter(feed.values())))
            self.batches = iter([{k: v[i:i + 16] for k, v in feed.items()} for i in range(0, n, 16)])

        def get_next(self):
            return next(self.batches, None)

    start = time.perf_counter()
    prepared = out.with_name("ort_prepared.onnx")
    logging.getLogger().setLevel(logging.ERROR)
    with contextlib.redirect_stdout(io.StringIO()):
        try:
            quant_pre_process(str(fp32), str(prepared), skip_optimization=True)
        except Exception:  # as trtopt does: ONNX shape inference when the symbolic one fails
            quant_pre_process(str(fp32), str(prepared), skip_optimization=True, skip_symbolic_shape=True)
        quantize_static(str(prepared), str(out), Reader(), quant_format=QuantFormat.QDQ,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    return time.perf_counter() - start


def outputs(path: Path, feed: dict[str, np.ndarray]) -> np.ndarray:
    return next(iter(run_all(onnx_candidate(path, threads=THREADS), feed, 16).values()))


def agreement(ref: np.ndarray, out: np.ndarray) -> dict[str, float]:
    r, o = ref.reshape(len(ref), -1), out.reshape(len(out), -1)
    cos = cosine_per_sample(r, o)
    return {"top1_agreement": top1_agreement(r, o), "cosine_mean": float(np.nanmean(cos)),
            "cosine_min": float(np.nanmin(cos))}


def image_model(spec: str, tmp: Path, timing: TimingConfig, method: str) -> dict[str, Any]:
    loaded = load_model(spec)
    photos = load_feed("skimage:photos", loaded.inputs, preprocess=loaded.preprocess)
    calib = {"input": np.concatenate([b["input"] for b in iter_photo_crops(128, pre=loaded.preprocess)])}
    fp32 = export_onnx(loaded, tmp / "fp32.onnx", ExportConfig(), feed=photos, force=True)
    start = time.perf_counter()
    ranges = calibrate(fp32.path, calib, CalibrationConfig(method=method))
    ours = quantize(fp32.path, ranges, tmp / "trtopt_int8.onnx", QuantizeConfig(target="onnxruntime"), force=True)
    ours_s = time.perf_counter() - start
    trt = quantize(fp32.path, ranges, tmp / "trtopt_trt.onnx", QuantizeConfig(target="tensorrt"), force=True)
    ort_s = ort_quantize_static(fp32.path, calib, tmp / "ort_int8.onnx")
    ort_art = inspect_onnx(tmp / "ort_int8.onnx")
    ort = OrtConfig(intra_op_threads=THREADS)
    cands = [onnx_candidate(fp32, "ort-fp32", ort), onnx_candidate(ours, "trtopt-int8", ort),
             onnx_candidate(ort_art, "ort-quantize_static-int8", ort)]
    timed = bench(cands, photos, (1, 8), timing, also_versus=("ort-quantize_static-int8",))
    ref = outputs(fp32.path, photos)
    result = {"model": spec, "description": loaded.description, "calibration": f"{method}, 128 photo crops",
              "size_bytes": {"fp32": fp32.size_bytes, "trtopt_int8": ours.size_bytes, "ort_int8": ort_art.size_bytes},
              "quantize_seconds": {"trtopt_calibrate_and_quantize": ours_s, "ort_quantize_static": ort_s},
              "accuracy_vs_fp32": {"trtopt_int8": agreement(ref, outputs(ours.path, photos)),
                                   "trtopt_tensorrt_qdq": agreement(ref, outputs(trt.path, photos)),
                                   "ort_int8": agreement(ref, outputs(ort_art.path, photos))},
              "latency": []}
    for per_batch in timed["per_batch"]:
        c = per_batch["candidates"]
        result["latency"].append({
            "batch_size": per_batch["batch_size"],
            "p50_ms": {k: v["latency_ms_p50"] for k, v in c.items()},
            "trtopt_int8_speedup_vs_fp32": c["trtopt-int8"]["speedup_vs_baseline"],
            "ort_int8_speedup_vs_fp32": c["ort-quantize_static-int8"]["speedup_vs_baseline"],
            "trtopt_vs_ort_int8": c["trtopt-int8"]["speedup_vs"]["ort-quantize_static-int8"]})
    for c in cands:
        c.runner.close()
    return result


def digits(tmp: Path) -> dict[str, Any]:
    from trtopt.datasets import load_dataset

    loaded = load_model("zoo:digits_cnn")
    train, test = load_dataset("digits", "train"), load_dataset("digits", "test")
    fp32 = export_onnx(loaded, tmp / "digits.onnx", ExportConfig(), feed=train.inputs, force=True)
    calib = {k: v[:256] for k, v in train.inputs.items()}
    ranges = calibrate(fp32.path, calib, CalibrationConfig(method="entropy"))
    acc = {"fp32": topk_accuracy(outputs(fp32.path, test.inputs), test.labels)}
    for target in ("onnxruntime", "tensorrt"):
        q = quantize(fp32.path, ranges, tmp / f"digits_{target}.onnx", QuantizeConfig(target=target), force=True)
        acc[f"trtopt_int8_{target}"] = topk_accuracy(outputs(q.path, test.inputs), test.labels)
    ort_quantize_static(fp32.path, calib, tmp / "digits_ort.onnx")
    acc["ort_int8"] = topk_accuracy(outputs(tmp / "digits_ort.onnx", test.inputs), test.labels)
    return {"dataset": "digits test split (359 images)", "calibration": "entropy, 256 train images",
            "top1_accuracy": acc, "test_samples": len(test.labels)}


def minilm(tmp: Path, mixed: bool) -> dict[str, Any]:
    from trtopt.models.zoo import minilm_card_sentences, tokenize_for_minilm

    loaded = load_model("zoo:minilm_l6")
    card = minilm_card_sentences()
    calib_text, eval_text = card[::2], card[1::2]
    calib, feed = tokenize_for_minilm(calib_text), tokenize_for_minilm(eval_text)
    fp32 = export_onnx(loaded, tmp / "minilm.onnx", ExportConfig(), feed=feed, force=True)
    ref = outputs(fp32.path, feed)
    ranges = calibrate(fp32.path, calib, CalibrationConfig(method="minmax"))
    result = {"model": "zoo:minilm_l6", "calibration": f"minmax, {len(calib_text)} model-card sentences",
              "evaluation": f"{len(eval_text)} other model-card sentences", "embedding_cosine_vs_fp32": {}}
    configs = {"onnxruntime_all_ops": QuantizeConfig(target="onnxruntime"),
               "onnxruntime_matmul_only": QuantizeConfig(target="onnxruntime", op_types=("MatMul", "Gemm")),
               "tensorrt": QuantizeConfig(target="tensorrt")}
    for name, config in configs.items():
        q = quantize(fp32.path, ranges, tmp / f"minilm_{name}.onnx", config, force=True)
        result["embedding_cosine_vs_fp32"][f"trtopt_int8_{name}"] = agreement(ref, outputs(q.path, feed))
    ort_quantize_static(fp32.path, calib, tmp / "minilm_ort.onnx")
    result["embedding_cosine_vs_fp32"]["ort_int8"] = agreement(ref, outputs(tmp / "minilm_ort.onnx", feed))
    if mixed:
        start = time.perf_counter()
        choice = choose_mixed_precision(fp32.path, ranges, configs["tensorrt"], cosine_scorer(feed, ref, THREADS), 0.01)
        result["mixed_precision_tensorrt"] = {
            "bar": "mean cosine to FP32 >= 0.99", "seconds": time.perf_counter() - start, "met": choice["met"],
            "int8_cosine": choice["sensitivity"]["int8_score"], "cosine": choice["score"],
            "fp32_layers": choice["exclude_nodes"], "quantizable_layers": len(choice["sensitivity"]["layers"]),
            "most_sensitive": choice["sensitivity"]["layers"][:8]}
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="10 timed iterations instead of 50")
    parser.add_argument("--models", nargs="+", default=["torchvision:resnet18", "torchvision:resnet50",
                                                         "zoo:efficientnet_lite0"])
    parser.add_argument("--method", default="percentile", help="trtopt calibration method for image models")
    parser.add_argument("--no-mixed", action="store_true", help="skip MiniLM's mixed-precision search (~6 min)")
    args = parser.parse_args()
    timing = TimingConfig(warmup_iterations=5, iterations=10 if args.quick else 50)
    results: dict[str, Any] = {"environment": environment(), "threads": THREADS, "timing": timing.to_dict(),
                               "image_models": [], "digits": None, "minilm": None}
    with tempfile.TemporaryDirectory() as tmp:
        for spec in args.models:
            r = image_model(spec, Path(tmp), timing, args.method)
            results["image_models"].append(r)
            for lat in r["latency"]:
                print(f"{spec} batch {lat['batch_size']}: p50 {lat['p50_ms']}; trtopt INT8 "
                      f"{lat['trtopt_int8_speedup_vs_fp32']['speedup']:.2f}× vs FP32, ORT INT8 "
                      f"{lat['ort_int8_speedup_vs_fp32']['speedup']:.2f}×", flush=True)
            print(f"  accuracy vs FP32: {r['accuracy_vs_fp32']}", flush=True)
        results["digits"] = digits(Path(tmp))
        print(f"digits: {results['digits']['top1_accuracy']}", flush=True)
        results["minilm"] = minilm(Path(tmp), mixed=not args.no_mixed)
        print(f"minilm: {results['minilm']['embedding_cosine_vs_fp32']}", flush=True)
    write_json(OUT, results, force=True)
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
