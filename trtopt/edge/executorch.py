"""ExecuTorch conversion: ``torch.export`` → edge dialect → XNNPACK delegate → ``.pte`` bytes (FP32 or PT2E INT8).
"""

from __future__ import annotations

from typing import Any

from trtopt.backends.executorch import NAME
from trtopt.edge.artifact import require
from trtopt.edge.convert import EdgeConfig, converter_error, pt2e_quantize
from trtopt.errors import TrtoptError


def convert(module: Any, example: tuple[Any, ...], config: EdgeConfig,
            batches: list[tuple[Any, ...]]) -> tuple[bytes, list[str]]:
    """The ``.pte`` bytes of ``module`` at ``config.precision`` for inputs shaped like ``example``, plus notes."""
    require("executorch", NAME)
    import torch
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    stage = "torch.export"
    try:
        if config.precision == "int8":
            from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
                XNNPACKQuantizer,
                get_symmetric_quantization_config,
            )

            stage = "PT2E quantization (XNNPACKQuantizer)"
            quantizer = XNNPACKQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=config.per_channel))
            module = pt2e_quantize(module, example, quantizer, batches)
        stage = "torch.export"
        exported = torch.export.export(module, example)
        stage = "lowering to XNNPACK"
        edge = to_edge_transform_and_lower(exported, partitioner=[XnnpackPartitioner()])
        delegated, portable = _delegation(edge)
        stage = "to_executorch"
        program = edge.to_executorch()
    except TrtoptError:
        raise
    except Exception as e:  # torch.export / EXIR raise many types; all mean "this model can't become a .pte"
        raise converter_error(e, NAME, stage) from e
    notes = [f"XNNPACK delegate: {delegated} partition(s); on portable kernels: {', '.join(portable) or 'nothing'}",
             "int8: PT2E XNNPACKQuantizer symmetric, " + ("per-channel" if config.per_channel else "per-tensor")
             + f" weights, {len(batches)} calibration batches" if config.precision == "int8" else "fp32"]
    return bytes(program.buffer), notes

def _delegation(edge: Any) -> tuple[int, list[str]]:
    """(XNNPACK delegate calls, ops left to ExecuTorch's portable kernels) in the lowered graph."""
    import operator

    calls = [n for n in edge.exported_program().graph.nodes if n.op == "call_function" and n.target is not operator.getitem]
    delegated = sum("executorch_call_delegate" in str(n.target) for n in calls)
    return delegated, sorted({str(n.target) for n in calls if "executorch_call_delegate" not in str(n.target)})
