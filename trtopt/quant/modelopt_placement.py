"""ModelOpt's Q/DQ placement for the tensorrt target (``QuantizeConfig(target="tensorrt", quantizer="modelopt")``).

`trtopt.quant.quantize.quantize` calls :func:`place_qdq` in place of ONNX Runtime's quantizer; everything around
it (checks, recovery, metadata, the checker, atomic write, sidecars, bundles and build plans downstream) is the
same as for trtopt's own placement. ModelOpt (``modelopt.onnx.quantization.quantize``, INT8 mode, on the CPU)
decides where Q/DQ sit: the inputs of Conv/Gemm/MatMul and also of pooling and other ops TensorRT can run in
INT8, with its own rules for residual Adds and Concat; weights are per-channel int8. The *scales* are trtopt's:
its calibrated ranges go to ModelOpt as a TensorRT calibration cache (`trtopt.trt.calibration_cache`), which
ModelOpt writes over its own calibration. ModelOpt always runs a calibration pass of its own first; it is fed
one seeded random sample per input (its scales are all replaced), so no data is needed here.

Non-quantized ops stay float32 (``high_precision_dtype="fp32"``, as trtopt's placement keeps them).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from trtopt._modelopt import import_modelopt, quiet
from trtopt.artifacts import Ranges
from trtopt.errors import TrtoptError, first_line


def place_qdq(prepared: Path, staged: Path, ranges: Ranges, op_types: list[str] | None, excluded: list[str],
              exclude_op_types: tuple[str, ...], large: bool) -> None:
    """Write ModelOpt's INT8 Q/DQ version of ``prepared`` (FP32 ONNX, shape-inferred) to ``staged``.

    Args:
        prepared: the FP32 model in the staging folder (ModelOpt writes its intermediates beside it).
        staged: where the Q/DQ model goes.
        ranges: trtopt's ranges of ``prepared``'s tensors (amax → scale = amax / 127 in the cache).
        op_types: op types to quantize (None: ModelOpt's default set).
        excluded: node names kept in float.
        exclude_op_types: op types kept in float.
        large: weights over 2 GB: written to a side file.

    Raises:
        TrtoptError: ModelOpt (or its ONNX dependencies) missing, naming the extra; ModelOpt failing on the
        model, naming ModelOpt's message (which names the node or op) and the fallback, trtopt's own placement.
    """
    import numpy as np
    import onnx

    from trtopt.trt.calibration_cache import ranges_to_cache, write_cache

    import_modelopt("modelopt.onnx.quantization", "ModelOpt Q/DQ placement (--quantizer modelopt)")  # names the extra
    cache = write_cache(ranges_to_cache(ranges), prepared.with_name("trtopt.calibration.cache"), force=True)
    model = onnx.load(str(prepared), load_external_data=False)
    initializers = {t.name for t in model.graph.initializer}
    rng = np.random.default_rng(0)
    sample = {}
    for value in model.graph.input:
        if value.name in initializers:
            continue
        dims = [d.dim_value if d.dim_value > 0 else 1 for d in value.type.tensor_type.shape.dim]
        dtype = onnx.helper.tensor_dtype_to_np_dtype(value.type.tensor_type.elem_type)
        sample[value.name] = (rng.standard_normal(dims) if dtype.kind == "f" else np.zeros(dims)).astype(dtype)
    kwargs = dict(onnx_path=str(prepared), quantize_mode="int8", calibration_cache_path=str(cache),
                  calibration_eps=["cpu"], op_types_to_quantize=op_types,
                  # ModelOpt matches these as regular expressions from the start of a node name (re.match): "conv"
                  # also excluded conv_1, conv_2, ...; escaped and anchored, each names its node alone
                  nodes_to_exclude=[re.escape(n) + "$" for n in excluded] or None,
                  op_types_to_exclude=list(exclude_op_types) or None, output_path=str(staged),
                  use_external_data_format=large, high_precision_dtype="fp32", log_level="ERROR")
    error = _quantize_in_child(kwargs, sample, prepared.parent)
    if error is not None:
        raise TrtoptError(f"ModelOpt could not quantize {prepared.name}: {_op_hint(model, error)}{error[:200]}",
                          "use trtopt's own placement (--quantizer trtopt), or keep the op named there in FP32 "
                          "(--exclude OP)")
    if not staged.exists():
        raise TrtoptError(f"ModelOpt wrote no model for {prepared.name}", "use trtopt's own placement (--quantizer trtopt)")


def _quantize_in_child(kwargs: dict[str, Any], sample: dict[str, Any], stage: Path) -> str | None:
    """Run ``modelopt.onnx.quantization.quantize(**kwargs, calibration_data=sample)`` in a child Python process;
    its error message, or None.

    Why a child: ModelOpt's INT8 mode patches ONNX Runtime's quantization package for the whole process
    (``ort_utils.configure_ort`` edits ``QDQRegistry``/``QLinearOpsRegistry``, ``ort_patching`` replaces
    calibrator and quantizer methods), which would silently change trtopt's own placement for any later
    ``quantize`` in the same process (e.g. ``optimize``'s onnxruntime layout after the tensorrt one).
    """
    import json
    import os
    import subprocess
    import sys

    import numpy as np

    np.savez(stage / "modelopt_sample.npz", **sample)
    (stage / "modelopt_args.json").write_text(json.dumps(kwargs))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(Path(__file__).parents[2]),
                                                                      os.environ.get("PYTHONPATH")]))}
    code = f"from trtopt.quant.modelopt_placement import _child_main; _child_main({str(stage)!r})"
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    result = stage / "modelopt_error.txt"
    if result.exists():
        return result.read_text() or None
    lines = done.stderr.strip().splitlines()  # the child died before writing its answer (e.g. killed)
    return lines[-1][:400] if lines else f"the ModelOpt process ended with exit status {done.returncode}"


def _child_main(stage: str) -> None:
    """The child side of :func:`_quantize_in_child`: writes ``modelopt_error.txt`` (empty on success)."""
    import json

    import numpy as np

    folder = Path(stage)
    kwargs = json.loads((folder / "modelopt_args.json").read_text())
    with np.load(folder / "modelopt_sample.npz") as data:
        sample = {name: data[name] for name in data.files}
    error = ""
    try:
        moq = import_modelopt("modelopt.onnx.quantization", "ModelOpt Q/DQ placement (--quantizer modelopt)")
        with quiet():
            moq.quantize(calibration_data=sample, **kwargs)
    except Exception as e:  # ModelOpt raises many types (graphsurgeon, ONNX Runtime, its own); all mean "cannot place"
        error = first_line(e, limit=400) or type(e).__name__
    (folder / "modelopt_error.txt").write_text(error)


def _op_hint(model: Any, text: str) -> str:
    """"node NAME (OP): " when ModelOpt's message ``text`` names a node of ``model``, else ""."""
    for node in model.graph.node:
        if node.name and node.name in text:
            return f"node {node.name} ({node.op_type}): "
    return ""
