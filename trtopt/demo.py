"""The README's main job: a real pretrained model and real photos, through export, INT8 and profiling.

``trtopt demo`` runs :func:`run_demo` with :func:`default_recipe`: EfficientNet-Lite0 (ImageNet
weights shipped in a package) on the photographs shipped in scikit-image, exported to ONNX and checked
against PyTorch, calibrated once (streaming entropy), quantized for ONNX Runtime (U8S8) and for TensorRT
(S8S8 Q/DQ + a TensorRT 10.3 calibration cache for Jetson), then FP32 PyTorch eager, FP32 ONNX Runtime
and INT8 ONNX Runtime are timed interleaved at batch 1 and 8 and compared with the FP32 original.
The run directory holds ``model.onnx``, ``model.int8.onnxruntime.onnx``, ``model.int8.tensorrt.onnx``,
``ranges.json``, ``calibration.cache``, ``recipe.yaml``, ``report.json`` and ``report.md``.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from trtopt.bench import bench, onnx_candidate, run_all, torch_candidate
from trtopt.calibrate import CalibrationConfig, calibrate
from trtopt.compare import compare_outputs
from trtopt.config import Recipe, dump_recipe, to_dict
from trtopt.data import SKIMAGE_PHOTOS, load_feed
from trtopt.errors import TrtoptError
from trtopt.export import export_onnx
from trtopt.files import write_text
from trtopt.models import load_model
from trtopt.profile import TimingConfig
from trtopt.quant_error import activation_sqnr, weight_errors
from trtopt.quantize import quantize
from trtopt.report import build_report, write_report
from trtopt.trt_cache import ranges_to_cache, write_cache

DEMO_MODEL = "zoo:efficientnet_lite0"
DEMO_DATA = "skimage:photos"
JETPACK6_TRT = "10.3.0"  # the TensorRT version JetPack 6 ships: the calibration cache's header


def default_recipe(iterations: int = 100) -> Recipe:
    """The demo's recipe: EfficientNet-Lite0 on scikit-image photos, batch 1 and 8, 2 threads each side.

    INT8 is calibrated on 128 random crops of the photos (not the evaluation images themselves) with the
    99.99th percentile: on this model it kept top-1 agreement with FP32 on 17/19 photos where entropy
    kept 16/19 (ranges from 256 crops, ONNX Runtime target).
    """
    return Recipe(model=DEMO_MODEL, data=DEMO_DATA, calibration_data="skimage:crops:128", batch_sizes=(1, 8),
                  threads=min(2, os.cpu_count() or 1), timing=TimingConfig(warmup_iterations=10, iterations=iterations),
                  calibration=CalibrationConfig(method="percentile"))


def run_demo(recipe: Recipe, out_dir: str | os.PathLike, force: bool = False,
             on_step: Callable[[str], None] | None = None,
             on_progress: Callable[[str, int, int], None] | None = None) -> tuple[dict[str, Any], dict[str, Path]]:
    """Run the foundation pipeline of ``recipe`` into ``out_dir``; returns the report and written paths.

    Raises TrtoptError when ``out_dir`` already holds a report and ``force`` is false (checked before
    any work), or when any stage fails.
    """
    step = on_step or (lambda _msg: None)
    out = Path(out_dir)
    if (out / "report.json").exists() and not force:
        raise TrtoptError(f"{out} already holds a report", "pass --force to overwrite it or choose another --out")
    step(f"loading {recipe.model}")
    single = next(iter(recipe.input_shapes.values())) if len(recipe.input_shapes) == 1 else None
    loaded = load_model(recipe.model, checkpoint=recipe.checkpoint, input_shape=single)
    feed = load_feed(recipe.data, loaded.inputs, preprocess=loaded.preprocess)
    onnx = export_onnx(loaded, out / "model.onnx", recipe.export, feed=feed, force=force, on_step=step)
    ort = replace(recipe.ort, intra_op_threads=recipe.ort.intra_op_threads or recipe.threads)
    calib_feed = feed if recipe.calibration_data in (None, recipe.data) else load_feed(
        recipe.calibration_data, loaded.inputs, preprocess=loaded.preprocess)
    int8 = _int8_stage(recipe, onnx, calib_feed, out, force, step, on_progress)
    candidates = [torch_candidate(loaded, threads=recipe.threads), onnx_candidate(onnx, "onnxruntime-fp32", ort),
                  onnx_candidate(int8["onnxruntime"], "onnxruntime-int8", ort)]
    step(f"timing {', '.join(c.name for c in candidates)} interleaved at batch {', '.join(map(str, recipe.batch_sizes))}")
    timing = bench(candidates, feed, recipe.batch_sizes, recipe.timing, on_progress=on_progress,
                   also_versus=("onnxruntime-fp32",))
    step(f"comparing outputs on all {len(next(iter(feed.values())))} inputs")
    reference = run_all(candidates[0], feed)
    outputs = {c.name: run_all(c, feed) for c in candidates[1:]}
    trt_qdq = onnx_candidate(int8["tensorrt"], "tensorrt-int8-qdq", threads=recipe.threads)
    outputs[trt_qdq.name] = run_all(trt_qdq, feed)
    accuracy = {name: compare_outputs(reference, out_, recipe.compare) for name, out_ in outputs.items()}
    step("measuring quantization error per layer")
    extra = {"model": {"spec": loaded.spec, "description": loaded.description,
                       "parameters": candidates[0].parameters, "parameter_bytes": candidates[0].size_bytes},
             "data": {"source": recipe.data or "random", "samples": len(next(iter(feed.values())))},
             "onnx": onnx.to_dict(),
             "int8": {"ranges": int8["ranges"], "calibration": recipe.calibration.to_dict(),
                      "calibration_samples": len(next(iter(calib_feed.values()))),
                      "onnxruntime": int8["onnxruntime"].to_dict(), "tensorrt_qdq": int8["tensorrt"].to_dict(),
                      "tensorrt_cache": str(int8["cache"]),
                      "weight_error": weight_errors(onnx.path, int8["onnxruntime"].path),
                      "activation_sqnr": activation_sqnr(onnx.path, int8["onnxruntime"].path, feed)}}
    if recipe.data == DEMO_DATA and reference[loaded.output_names[0]].shape[-1] == 1000:
        extra["predictions"] = _imagenet_predictions(reference, outputs, loaded.output_names[0])
    report = build_report(f"trtopt demo: {loaded.description}", timing, accuracy, to_dict(recipe), extra)
    paths = write_report(report, out, force=force)
    paths["recipe"] = write_text(out / "recipe.yaml", dump_recipe(recipe), force=force)
    paths["onnx"] = onnx.path
    return report, paths


def _int8_stage(recipe: Recipe, onnx: Any, feed: dict[str, Any], out: Path, force: bool,
                step: Callable[[str], None], on_progress: Callable[[str, int, int], None] | None) -> dict[str, Any]:
    """Calibrate once, then write the INT8 model for each target and the TensorRT (10.3) calibration cache."""
    step(f"calibrating INT8 ranges ({recipe.calibration.method}) on {len(next(iter(feed.values())))} samples")
    progress = (lambda done, total: on_progress("calibration", done, total)) if on_progress else None
    ranges = calibrate(onnx.path, feed, recipe.calibration, on_progress=progress)
    ranges_path = ranges.save(out / "ranges.json", force=force)
    artifacts: dict[str, Any] = {"ranges": str(ranges_path)}
    for target in ("onnxruntime", "tensorrt"):
        step(f"quantizing for {target}")
        config = replace(recipe.quantize, target=target)
        artifacts[target] = quantize(onnx.path, ranges, out / f"model.int8.{target}.onnx", config, force=force)
    artifacts["cache"] = write_cache(ranges_to_cache(ranges, trt_version=JETPACK6_TRT), out / "calibration.cache",
                                     force=force)
    return artifacts


def _imagenet_predictions(reference: dict[str, Any], outputs: dict[str, dict[str, Any]], key: str) -> list[dict[str, Any]]:
    """Top-1 ImageNet class per photo for each variant (class names from torchvision's metadata, offline)."""
    from torchvision.models import ResNet18_Weights

    categories = ResNet18_Weights.IMAGENET1K_V1.meta["categories"]
    rows = []
    for i, name in enumerate(SKIMAGE_PHOTOS):
        row = {"image": name, "pytorch-fp32": categories[int(reference[key][i].argmax())]}
        row.update({variant: categories[int(out[key][i].argmax())] for variant, out in outputs.items()})
        rows.append(row)
    return rows
