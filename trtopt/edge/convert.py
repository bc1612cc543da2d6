"""What the edge converters share: :class:`EdgeConfig`, PT2E static quantization, and converter errors.

PT2E: ``prepare_pt2e`` inserts observers for the runtime's quantizer, the observers see trtopt's
calibration data, ``convert_pt2e`` folds them into quantize/dequantize pairs, and the converter lowers
those to int8 kernels (XNNPACK's QS8 ops in ExecuTorch; full-integer TFLite ops in LiteRT).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from trtopt._config import check_choice, check_int
from trtopt.errors import TrtoptError

PRECISIONS = ("fp32", "int8")

@dataclass(frozen=True)
class EdgeConfig:
    """How a model becomes a ``.pte`` / ``.tflite`` file.

    Attributes:
        precision: "fp32" or "int8" (PT2E static quantization: int8 weights and activations).
        batch_size: the batch the file is built for (both formats are static-shape here).
        per_channel: per-output-channel weight scales for int8 (depthwise convolutions need them).
        calibration_samples: samples of the calibration feed the observers see (None: all of it).
    """

    precision: str = "fp32"
    batch_size: int = 1
    per_channel: bool = True
    calibration_samples: int | None = None

    def __post_init__(self) -> None:
        check_choice("precision", self.precision, PRECISIONS)
        check_int("batch_size", self.batch_size, fix="use e.g. 1")
        check_int("calibration_samples", self.calibration_samples, optional=True,
                  fix="give a sample count, or None for all the data")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

def pt2e_quantize(module: Any, example: tuple[Any, ...], quantizer: Any, batches: list[tuple[Any, ...]],
                  fold_quantize: bool = True) -> Any:
    """PT2E static quantization: export, insert ``quantizer``'s observers, run ``batches``, convert.

    ``fold_quantize`` stores weights as int8 constants (what ExecuTorch needs: it has no kernel for
    quantizing a weight at run time); LiteRT's converter wants the float weights with their Q/DQ ops.
    Returns the converted graph module (quantize/dequantize pairs around int8-capable ops).
    """
    import torch
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    graph = torch.export.export(module, example).module()
    prepared = prepare_pt2e(graph, quantizer)
    with torch.no_grad():
        for batch in batches:
            prepared(*batch)
    return convert_pt2e(prepared, fold_quantize=fold_quantize)

def converter_error(error: Exception, target: str, stage: str) -> TrtoptError:
    """A converter's exception as one line naming the op (``aten.X``) and the target, when it names one."""
    import re

    text = " ".join(str(error).split())
    found = re.search(r"(aten[.:]{1,2}[A-Za-z_0-9]+(?:\.[A-Za-z_0-9]+)?)", text)
    what = f"op {found.group(1)} is not supported by target {target}" if found else f"target {target} rejects the model"
    return TrtoptError(f"{stage}: {what} ({type(error).__name__}: {text[:220]})",
                       "replace or remove that op in the model, or deploy it with onnxruntime")
