"""FP16 by NVIDIA ModelOpt AutoCast (``modelopt.onnx.autocast``): the alternative to onnxconverter-common's
converter in `trtopt.quant.quantize.to_fp16` (``converter="autocast"``).

AutoCast runs the FP32 model once in ONNX Runtime (CPU) on seeded random inputs to see which nodes' values
leave float16's range (inputs/outputs above ``data_max`` = 512 or initializers above 65504 keep FP32), then
rewrites types itself: Cast nodes and their ``to`` attributes come out consistent, so no hand repair of the
graph is needed (the onnxconverter-common route needs `trtopt.quant.quantize._repair_casts`). Inputs and outputs
stay float32 (``keep_io_types``). The model's opset may rise to what float16 Q/DQ and casts need (ModelOpt's rule).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from trtopt._modelopt import import_modelopt, quiet
from trtopt.errors import TrtoptError, first_line


def autocast_fp16(onnx_path: Path, exclude_op_types: tuple[str, ...] = ()) -> Any:
    """``onnx_path`` (FP32 ONNX) converted to FP16 by ModelOpt AutoCast; returns the ModelProto (not saved).

    ``exclude_op_types`` keeps those op types in FP32. Raises TrtoptError when ModelOpt is missing (names the
    extra) or AutoCast fails on the model (its message, and the fallback: the default converter).
    """
    autocast = import_modelopt("modelopt.onnx.autocast", "FP16 by ModelOpt AutoCast (--fp16-converter autocast)")
    try:
        with quiet():
            return autocast.convert_to_mixed_precision(str(onnx_path), low_precision_type="fp16", keep_io_types=True,
                                                       op_types_to_exclude=list(exclude_op_types) or None,
                                                       providers=["cpu"])
    except Exception as e:  # AutoCast raises many types (ONNX Runtime, graphsurgeon, assertions); all mean "cannot convert"
        raise TrtoptError(f"ModelOpt AutoCast could not convert {onnx_path.name} to FP16: {first_line(e, limit=200)}",
                          "use the default converter (--fp16-converter onnxconverter) or keep that op in FP32 (--exclude OP)") from e
