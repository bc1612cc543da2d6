"""INT8 with the first layer kept in float (`QuantizeConfig.keep_first_layer_fp32`) vs trtopt's default (issue 16).

EfficientNet-Lite0 lost the most INT8 agreement at its stem's input (the normalized image; README "QAT, QAD and
ModelOpt"). This measures the option on:

- EfficientNet-Lite0/1/2 (ImageNet weights): calibrated (method auto) on 64 crops of scikit-image photos 0-9,
  top-1 agreement with FP32 on 128 held-out crops of photos 10-18 (the data of ``bench_qat_pretrained``), both
  layouts (the tensorrt one with exact Q/DQ semantics); paired test (McNemar exact) on the agreeing crops;
- trtopt's digits CNN (359 test images) and the Fashion-MNIST CNN of ``bench_int8_zoo`` (10,000 test images):
  test accuracy, both layouts, paired test;
- ONNX Runtime speed (onnxruntime layout, 2 threads, batch 1 and 8): FP32, INT8 default, INT8 with the first
  layer float, and the INT8 default again in a second session (the same-model control: how far two sessions
  of one graph differ here), timed interleaved.

Writes ``benchmarks/results/qat_pretrained_first_layer_fp32.json``. Run under ``nice`` on a quiet machine.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_int8_zoo import CACHE, FASHION, THREADS, _idx, _lite, mcnemar, outputs
from bench_share_pretrained import cnn_data

from trtopt.artifacts import inspect_onnx
from trtopt.backends.ort import OrtConfig
from trtopt.environment import cpu_isa, environment
from trtopt.export import ExportConfig, export_onnx
from trtopt.files import write_json
from trtopt.measure.bench import bench, onnx_candidate
from trtopt.measure.profile import TimingConfig
from trtopt.quant.calibrate import CalibrationConfig, calibrate
from trtopt.quant.quantize import QuantizeConfig, quantize

OUT = Path(__file__).resolve().parent / "results" / "qat_pretrained_first_layer_fp32.json"
LITES = {"lite0": 224, "lite1": 240, "lite2": 260}


def variants(fp32: Path, calib: dict[str, np.ndarray], tmp: Path) -> dict[str, Path]:
    """trtopt INT8 (ranges method auto, calibrated once) per layout, with and without the first layer in float."""
    ranges = calibrate(fp32, calib, CalibrationConfig(method="auto"))
    made = {}
    for target in ("onnxruntime", "tensorrt"):
        for keep in (False, True):
            name = f"{target}{'_first_layer_fp32' if keep else ''}"
            made[name] = quantize(fp32, ranges, tmp / f"{name}.onnx",
                                  QuantizeConfig(target=target, keep_first_layer_fp32=keep), force=True).path
    return made


def score_all(fp32: Path, made: dict[str, Path], feed: dict[str, np.ndarray],
              labels: np.ndarray | None) -> dict[str, Any]:
    """Agreement with FP32 (and accuracy with ``labels``) per variant, and paired tests option vs default per layout."""
    ref = outputs(fp32, feed)
    outs = {name: outputs(path, feed, exact_qdq=name.startswith("tensorrt")) for name, path in made.items()}
    truth = ref.argmax(1) if labels is None else labels
    scores: dict[str, Any] = {"fp32": {"accuracy": float(np.mean(ref.argmax(1) == labels))} if labels is not None else {}}
    for name, out in outs.items():
        scores[name] = {"top1_agreement": float(np.mean(out.argmax(1) == ref.argmax(1))),
                        **({"accuracy": float(np.mean(out.argmax(1) == labels))} if labels is not None else {})}
    paired = {target: mcnemar({k: outs[k].argmax(1) == truth for k in (target, f"{target}_first_layer_fp32")},
                              ours=f"{target}_first_layer_fp32") for target in ("onnxruntime", "tensorrt")}
    return {"scores": scores, "paired_tests": paired,
            "paired_on": "agreement with FP32" if labels is None else "correct vs labels"}


def speed(fp32: Path, made: dict[str, Path], feed: dict[str, np.ndarray], iterations: int) -> list[dict[str, Any]]:
    """FP32, INT8 default, INT8 first layer float and INT8 default again (control), interleaved, 2 threads."""
    ort = OrtConfig(intra_op_threads=THREADS)
    cands = [onnx_candidate(inspect_onnx(fp32), "fp32", ort),
             onnx_candidate(inspect_onnx(made["onnxruntime"]), "int8_default", ort),
             onnx_candidate(inspect_onnx(made["onnxruntime_first_layer_fp32"]), "int8_first_layer_fp32", ort),
             onnx_candidate(inspect_onnx(made["onnxruntime"]), "int8_default_again", ort)]
    timed = bench(cands, feed, (1, 8), TimingConfig(warmup_iterations=5, iterations=iterations),
                  also_versus=("int8_default",))
    for c in cands:
        c.runner.close()
    rows = []
    for per_batch in timed["per_batch"]:
        c = per_batch["candidates"]
        rows.append({"batch_size": per_batch["batch_size"],
                     "p50_ms": {k: round(v["latency_ms_p50"], 3) for k, v in c.items()},
                     "first_layer_fp32_vs_default": c["int8_first_layer_fp32"]["speedup_vs"]["int8_default"],
                     "control_vs_default": c["int8_default_again"]["speedup_vs"]["int8_default"],
                     "load_average": per_batch.get("load_average")})
    return rows


def lite_row(name: str, tmp: Path, iterations: int) -> dict[str, Any]:
    size = LITES[name]
    loaded = _lite(f"efficientnet_{name}")
    data = cnn_data(64, 128, 8, size)
    calib, held = {"input": data["train"][0]}, {"input": data["held_out"][0]}
    fp32 = export_onnx(loaded, tmp / f"{name}.onnx", ExportConfig(), feed={"input": calib["input"][:8]}, force=True).path
    made = variants(fp32, calib, tmp)
    return {"row": name, "data": data["description"].replace("(bits chosen on 8 of them)", ""),
            "metric": "top-1 agreement with FP32", **score_all(fp32, made, held, None),
            "speed": speed(fp32, made, {"input": held["input"][:16]}, iterations) if iterations else None}


def digits_row(tmp: Path, iterations: int) -> dict[str, Any]:
    from trtopt.datasets import load_dataset
    from trtopt.models.load import load_model

    loaded = load_model("zoo:digits_cnn")
    train, test = load_dataset("digits", "train"), load_dataset("digits", "test")
    fp32 = export_onnx(loaded, tmp / "digits.onnx", ExportConfig(), feed=train.inputs, force=True).path
    made = variants(fp32, {k: v[:256] for k, v in train.inputs.items()}, tmp)
    return {"row": "digits", "data": "calibrated on 256 training images; 359 test images", "metric": "test accuracy",
            **score_all(fp32, made, test.inputs, test.labels),
            "speed": speed(fp32, made, test.inputs, iterations) if iterations else None}


def fashion_row(tmp: Path, iterations: int) -> dict[str, Any]:
    import torch

    from trtopt.models.spec import InputSpec, LoadedModel

    cached = CACHE / "fashion_cnn_2_epochs.pt"
    if not cached.is_file():
        return {"row": "fashion_mnist", "skipped": f"{cached} missing: run benchmarks/bench_int8_zoo.py --rows fashion_mnist"}

    def images(name: str) -> np.ndarray:
        return ((_idx(FASHION / name).astype(np.float32) / 255.0 - 0.2860) / 0.3530)[:, None]

    train_x = images("train-images-idx3-ubyte.gz")
    test_x, test_y = images("t10k-images-idx3-ubyte.gz"), _idx(FASHION / "t10k-labels-idx1-ubyte.gz")
    loaded = LoadedModel(torch.load(cached, weights_only=False).eval(), "bench:fashion_cnn",
                         (InputSpec("input", (1, 28, 28), "float32", -1.0, 2.1),))
    fp32 = export_onnx(loaded, tmp / "fashion.onnx", ExportConfig(), feed={"input": test_x[:64]}, force=True).path
    made = variants(fp32, {"input": train_x[np.random.default_rng(0).permutation(len(train_x))[:512]]}, tmp)
    return {"row": "fashion_mnist", "data": "bench_int8_zoo's 2-conv CNN; calibrated on 512 training images; "
            "10,000 test images", "metric": "test accuracy", **score_all(fp32, made, {"input": test_x}, test_y.astype(np.int64)),
            "speed": speed(fp32, made, {"input": test_x[:64]}, iterations) if iterations else None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", nargs="+", choices=(*LITES, "digits", "fashion_mnist"),
                        default=[*LITES, "digits", "fashion_mnist"])
    parser.add_argument("--iterations", type=int, default=100, help="timed rounds per batch size (0: no timing)")
    args = parser.parse_args()
    result: dict[str, Any] = (__import__("json").loads(OUT.read_text()) if OUT.is_file()
                              else {"benchmark": "bench_first_layer_fp32.py", "rows": {}})
    result.update(cpu_isa=cpu_isa(), environment=environment(), threads=THREADS)
    with tempfile.TemporaryDirectory(prefix="bench_first_layer_") as tmp:
        for name in args.rows:
            row = (lite_row(name, Path(tmp), args.iterations) if name in LITES
                   else digits_row(Path(tmp), args.iterations) if name == "digits" else fashion_row(Path(tmp), args.iterations))
            result["rows"][name] = row
            print({k: v for k, v in row.items() if k in ("row", "scores", "speed")}, flush=True)
            write_json(OUT, result, force=True)
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
