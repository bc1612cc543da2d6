"""The tiny CNN's FP32 ONNX model, its ranges and its TensorRT calibration cache, made through the API (fast)."""

from __future__ import annotations

from pathlib import Path


def make_tiny_artifacts(folder: Path) -> dict[str, Path]:
    """Write ``tiny.onnx``, ``ranges.json`` and ``tiny.cache`` into ``folder``; returns their paths by kind."""
    from trtopt.data import random_feed
    from trtopt.export import export_onnx
    from trtopt.models.load import load_model
    from trtopt.quant.calibrate import calibrate
    from trtopt.trt.calibration_cache import ranges_to_cache, write_cache

    loaded = load_model("tests.helpers.tiny_models:tiny_cnn")
    onnx = export_onnx(loaded, folder / "tiny.onnx").path
    ranges = calibrate(onnx, random_feed(loaded.inputs, 8, seed=0))
    ranges.save(folder / "ranges.json")
    write_cache(ranges_to_cache(ranges), folder / "tiny.cache")
    return {"onnx": onnx, "ranges": folder / "ranges.json", "cache": folder / "tiny.cache"}
