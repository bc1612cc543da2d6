"""LiteRT conversion: a PyTorch module → ``.tflite`` bytes with litert-torch (FP32, or PT2E INT8 lowered to
full-integer TFLite ops with int8 tensors in and out).
"""

from __future__ import annotations

from typing import Any

from trtopt.backends.litert import NAME
from trtopt.edge.artifact import require
from trtopt.edge.convert import EdgeConfig, converter_error, pt2e_quantize
from trtopt.errors import TrtoptError


def convert(module: Any, example: tuple[Any, ...], config: EdgeConfig,
            batches: list[tuple[Any, ...]]) -> tuple[bytes, list[str]]:
    """The ``.tflite`` bytes of ``module`` at ``config.precision`` for inputs shaped like ``example``, plus notes."""
    require("litert_torch", NAME)
    import litert_torch

    stage = "litert_torch.convert"
    try:
        if config.precision == "int8":
            from litert_torch.quantize import pt2e_quantizer, quant_config

            stage = "PT2E quantization (litert PT2EQuantizer)"
            quantizer = pt2e_quantizer.PT2EQuantizer().set_global(
                pt2e_quantizer.get_symmetric_quantization_config(is_per_channel=config.per_channel))
            module = pt2e_quantize(module, example, quantizer, batches, fold_quantize=False)
            stage = "litert_torch.convert"
            converted = litert_torch.convert(module, example, quant_config=quant_config.QuantConfig(pt2e_quantizer=quantizer))
        else:
            converted = litert_torch.convert(module, example)
        data = bytes(converted.model_content())
    except TrtoptError:
        raise
    except Exception as e:  # torch.export / lowering / the MLIR converter raise many types
        raise converter_error(e, NAME, stage) from e
    notes = ["fp32" if config.precision == "fp32" else
             "int8 full-integer (int8 inputs/outputs): PT2E symmetric, "
             + ("per-channel" if config.per_channel else "per-tensor") + f" weights, {len(batches)} calibration batches"]
    return data, notes
