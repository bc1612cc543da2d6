"""ExecuTorch backend (PyTorch Mobile's successor): ``.pte`` programs with the XNNPACK delegate, on the CPU.

Conversion: ``torch.export`` → ``to_edge_transform_and_lower`` with ``XnnpackPartitioner`` (every op
XNNPACK has goes to its delegate; the rest run on ExecuTorch's portable kernels) → ``to_executorch``.
INT8 is PT2E static quantization with ``XNNPACKQuantizer`` and its symmetric config (int8 activations,
per-channel int8 weights), calibrated on trtopt's data (`trtopt.edge.pt2e_quantize`).
Running: ``executorch.runtime.Runtime`` loads the program and executes its ``forward`` method.

Imported only when the backend is asked for (``pip install 'trtopt[executorch]'``). ExecuTorch 1.5.1's
native extension links against libtorch, so it must match the installed torch: checked with
torch 2.14.1 (its wheel declares no torch requirement; ``torchao>=0.18,<0.19`` it does).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from trtopt.backends.base import Capabilities
from trtopt.edge import EdgeArtifact, EdgeConfig, check_static_feed, converter_error, inspect_edge, pt2e_quantize, require
from trtopt.environment import package_version
from trtopt.errors import TrtoptError

NAME = "executorch"


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


def set_threads(threads: int | None) -> int:
    """Size ExecuTorch's (process-wide) CPU threadpool; returns the thread count in effect."""
    from executorch.extension.pybindings import portable_lib

    if threads:
        portable_lib._unsafe_reset_threadpool(int(threads))
    return int(portable_lib._threadpool_get_thread_count())


class ExecuTorchRunner:
    """A ``.pte`` program's ``forward`` behind the Runner protocol (inputs by name, outputs by name)."""

    backend = NAME

    def __init__(self, artifact: EdgeArtifact, threads: int | None = None):
        from executorch.runtime import Runtime

        self.artifact = artifact
        self.threads = set_threads(threads)
        try:
            self.method = Runtime.get().load_program(str(artifact.path)).load_method("forward")
        except Exception as e:  # the runtime raises RuntimeError for a program it cannot load
            raise TrtoptError(f"ExecuTorch cannot load {artifact.path.name}: {str(e).splitlines()[0][:200]}",
                              "re-create it with trtopt edge-export using this executorch version") from e
        self.inputs = [(i["name"], tuple(i["shape"]), i["dtype"]) for i in artifact.inputs]

    @property
    def static_batch(self) -> int:
        """The batch size the file was built for (every input's axis 0)."""
        return int(self.inputs[0][1][0])

    def check_feed(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Names, the static shapes the program was built for, and dtypes (the error names the input)."""
        return check_static_feed(feed, self.inputs, self.artifact.path.name)

    def infer(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import torch

        args = [torch.from_numpy(feed[name]) for name, _, _ in self.inputs]
        outputs = self.method.execute(args)
        names = list(self.artifact.output_names) + [f"output_{i}" for i in range(len(self.artifact.output_names), len(outputs))]
        return {n: o.numpy() for n, o in zip(names, outputs)}

    def describe(self) -> dict[str, Any]:
        return {"backend": NAME, "model": str(self.artifact.path), "precision": self.artifact.precision,
                "delegate": "XNNPACK", "intra_op_threads": self.threads}

    def close(self) -> None:
        self.method = None


class ExecuTorchBackend:
    name = NAME
    capabilities = Capabilities(model_formats=("pte",), precisions=("fp32", "int8"), devices=("cpu",),
                                dynamic_shapes=False)

    def availability(self) -> tuple[bool, str]:
        version = package_version("executorch")
        if version is None:
            return False, "executorch is not installed (pip install 'trtopt[executorch]')"
        return True, version

    def load(self, model: Any, threads: int | None = None, **options: Any) -> ExecuTorchRunner:
        """Open a ``.pte`` file (path or EdgeArtifact; its sidecar gives input names and shapes)."""
        if options:
            raise TrtoptError(f"the executorch backend has no option {next(iter(options))!r}", "options: threads")
        require("executorch", NAME)
        art = model if isinstance(model, EdgeArtifact) else inspect_edge(Path(model))
        return ExecuTorchRunner(art, threads)


BACKEND = ExecuTorchBackend()
