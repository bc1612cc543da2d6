"""The latency regression suite for this machine type (x86-64, 2 CPUs, no GPU): record or check.

Suite: trtopt's digits CNN (zoo:digits_cnn) as PyTorch eager, as FP32 ONNX and as INT8 ONNX (ONNX
Runtime target, entropy ranges from the train split), batch 1 and 64, 2 threads, on the digits test
split; 5 repeats of 50 interleaved calls each, with the control workload.

    python benchmarks/regression_suite.py --check     # compare with the committed baseline (exit 1 on a regression)
    python benchmarks/regression_suite.py --save      # re-record benchmarks/baselines/cpu-2core.json

The models are rebuilt from the package on every run (export and quantization are deterministic), so a
change in trtopt's export or quantization that slows them down, or changes their outputs beyond the
golden tolerances, fails the check. `make bench-gate` runs ``--check``.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
BASELINE = HERE / "baselines" / "cpu-2core.json"
HISTORY = HERE / "results" / "regression_history.jsonl"
WORK = HERE.parent / "runs" / "regression-suite"


def build_models() -> list[str]:
    """FP32 and INT8 ONNX of the digits CNN in runs/regression-suite (rebuilt each time)."""
    from trtopt.data import load_feed
    from trtopt.export import ExportConfig, export_onnx
    from trtopt.models.load import load_model
    from trtopt.quant.calibrate import CalibrationConfig, calibrate
    from trtopt.quant.quantize import QuantizeConfig, quantize

    loaded = load_model("zoo:digits_cnn")
    fp32 = export_onnx(loaded, WORK / "digits.onnx", ExportConfig(), feed=load_feed("dataset:digits:test", loaded.inputs),
                       force=True)
    ranges = calibrate(fp32.path, load_feed("dataset:digits:train", loaded.inputs), CalibrationConfig())
    int8 = quantize(fp32.path, ranges, WORK / "digits.int8.onnx", QuantizeConfig(target="onnxruntime"), force=True)
    return ["zoo:digits_cnn", str(fp32.path), str(int8.path)]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--save", action="store_true", help="record the baseline (overwrites it)")
    mode.add_argument("--check", action="store_true", help="compare with the baseline")
    args = parser.parse_args()
    models = build_models()
    command = [sys.executable, "-m", "trtopt", "-q", "bench", *models, "--data", "dataset:digits:test",
               "--batch-sizes", "1", "64", "--threads", "2", "--iterations", "50", "--repeats", "5"]
    if args.save:
        command += ["--save-baseline", str(BASELINE), "--force"]
    else:
        command += ["--baseline", str(BASELINE), "--history", str(HISTORY), "--golden-atol", "1e-4"]
    return subprocess.run(command, check=False).returncode


if __name__ == "__main__":
    sys.exit(main())
