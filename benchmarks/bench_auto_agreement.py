"""Method auto vs fixed range methods on EfficientNet-Lite0 in the TensorRT layout: top-1 agreement with FP32.

Issue 13's open point: auto (scored by output SQNR) kept 15 of 19 photos in the tensorrt layout where
percentile kept 17. This script calibrates Lite0 (ImageNet weights) on 128 random crops of the
scikit-image photos with each method, quantizes for the tensorrt target, and evaluates with exact Q/DQ
semantics (what TensorRT computes) on the 19 photos and on 128 other crops: top-1 agreement with FP32 and
logit cosine. ``--label`` names the run (e.g. the commit) in ``benchmarks/results/auto_agreement.json``,
where runs merge, so a before/after pair sits side by side.

Run: HF_HUB_OFFLINE=1 nice -n 10 python benchmarks/bench_auto_agreement.py --label after
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
from bench_int8_zoo import _lite, cosine, outputs

from trtopt.data import iter_photo_crops, load_feed
from trtopt.environment import environment
from trtopt.export import ExportConfig, export_onnx
from trtopt.files import write_json
from trtopt.quant.calibrate import CalibrationConfig, calibrate
from trtopt.quant.quantize import QuantizeConfig, quantize

RESULTS = Path(__file__).parent / "results" / "auto_agreement.json"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--label", required=True, help="name of this run in the results file (e.g. before, after)")
    parser.add_argument("--methods", nargs="+", default=["auto", "percentile", "entropy"])
    args = parser.parse_args()
    loaded = _lite("efficientnet_lite0")
    pre = loaded.preprocess
    photos = load_feed("skimage:photos", loaded.inputs, preprocess=pre)
    calib = {"input": np.concatenate([b["input"] for b in iter_photo_crops(128, pre=pre)])}
    other = {"input": np.concatenate([b["input"] for b in iter_photo_crops(128, pre=pre, seed=1)])}
    run: dict = {"methods": {}}
    with tempfile.TemporaryDirectory() as tmp:
        fp32 = export_onnx(loaded, Path(tmp) / "lite0.onnx", ExportConfig(), feed=photos).path
        ref_photos, ref_other = outputs(fp32, photos), outputs(fp32, other)
        for method in args.methods:
            start = time.perf_counter()
            ranges = calibrate(fp32, calib, CalibrationConfig(method=method))
            seconds = time.perf_counter() - start
            int8 = quantize(fp32, ranges, Path(tmp) / f"{method}.onnx", QuantizeConfig(target="tensorrt")).path
            got_photos, got_other = outputs(int8, photos, exact_qdq=True), outputs(int8, other, exact_qdq=True)
            choice = ranges.choice
            run["methods"][method] = {
                "photos_agree": int((got_photos.argmax(1) == ref_photos.argmax(1)).sum()), "photos": len(ref_photos),
                "other_crops_agree": int((got_other.argmax(1) == ref_other.argmax(1)).sum()), "other_crops": len(ref_other),
                "cosine_photos": round(cosine(ref_photos, got_photos), 5),
                "calibrate_seconds": round(seconds, 1),
                "auto_choice": {k: choice[k] for k in ("model_method", "score", "candidates", "per_tensor", "recovery")
                                if k in choice} if method == "auto" else None}
            print(method, {k: v for k, v in run["methods"][method].items() if k != "auto_choice"}, flush=True)
    run["environment"] = environment()
    results = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    results[args.label] = run
    write_json(RESULTS, results, force=True)
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
