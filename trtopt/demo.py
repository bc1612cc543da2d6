"""The README's main job: a real pretrained model, real photos, export, parity, PyTorch vs ONNX Runtime.

``trtopt demo`` runs :func:`run_demo` with :func:`default_recipe`: EfficientNet-Lite0 (ImageNet
weights shipped in a package) on the photographs shipped in scikit-image, exported to ONNX, checked
against PyTorch, and timed FP32 PyTorch eager vs FP32 ONNX Runtime at batch 1 and 8. It writes the
run directory: ``model.onnx``, ``recipe.yaml``, ``report.json``, ``report.md``.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from trtopt.bench import bench, onnx_candidate, run_all, torch_candidate
from trtopt.compare import compare_outputs
from trtopt.config import Recipe, dump_recipe, to_dict
from trtopt.data import SKIMAGE_PHOTOS, load_feed
from trtopt.errors import TrtoptError
from trtopt.export import export_onnx
from trtopt.files import write_text
from trtopt.models import load_model
from trtopt.profile import TimingConfig
from trtopt.report import build_report, write_report

DEMO_MODEL = "zoo:efficientnet_lite0"
DEMO_DATA = "skimage:photos"


def default_recipe(iterations: int = 100) -> Recipe:
    """The demo's recipe: EfficientNet-Lite0 on scikit-image photos, batch 1 and 8, 2 threads each side."""
    return Recipe(model=DEMO_MODEL, data=DEMO_DATA, batch_sizes=(1, 8), threads=min(2, os.cpu_count() or 1),
                  timing=TimingConfig(warmup_iterations=10, iterations=iterations))


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
    ort = recipe.ort if recipe.ort.intra_op_threads else type(recipe.ort)(**{**to_dict(recipe.ort),
                                                                            "intra_op_threads": recipe.threads,
                                                                            "providers": recipe.ort.providers})
    candidates = [torch_candidate(loaded, threads=recipe.threads), onnx_candidate(onnx, "onnxruntime-fp32", ort)]
    step(f"timing {', '.join(c.name for c in candidates)} interleaved at batch {', '.join(map(str, recipe.batch_sizes))}")
    timing = bench(candidates, feed, recipe.batch_sizes, recipe.timing, on_progress=on_progress)
    step(f"comparing outputs on all {len(next(iter(feed.values())))} inputs")
    reference = run_all(candidates[0], feed)
    outputs = {c.name: run_all(c, feed) for c in candidates[1:]}
    accuracy = {name: compare_outputs(reference, out_, recipe.compare) for name, out_ in outputs.items()}
    extra = {"model": {"spec": loaded.spec, "description": loaded.description,
                       "parameters": candidates[0].parameters, "parameter_bytes": candidates[0].size_bytes},
             "data": {"source": recipe.data or "random", "samples": len(next(iter(feed.values())))},
             "onnx": onnx.to_dict()}
    if recipe.data == DEMO_DATA and reference[loaded.output_names[0]].shape[-1] == 1000:
        extra["predictions"] = _imagenet_predictions(reference, outputs, loaded.output_names[0])
    report = build_report(f"trtopt demo: {loaded.description}", timing, accuracy, to_dict(recipe), extra)
    paths = write_report(report, out, force=force)
    paths["recipe"] = write_text(out / "recipe.yaml", dump_recipe(recipe), force=force)
    paths["onnx"] = onnx.path
    return report, paths


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
