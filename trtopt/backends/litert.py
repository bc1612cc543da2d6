"""LiteRT runtime adapter: runs ``.tflite`` models with ai-edge-litert's interpreter on the CPU.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from trtopt.backends.base import Capabilities, Runner
from trtopt.edge.artifact import EdgeArtifact, inspect_edge, require
from trtopt.environment import package_version
from trtopt.errors import TrtoptError, first_line
from trtopt.feeds import CheckedFeed
from trtopt.models.spec import InputSpec

NAME = "litert"

class LiteRTRunner(Runner):
    """A ``.tflite`` model's default signature behind the Runner protocol (inputs by name, outputs by name).

    Its inputs are the sidecar's, batch axis fixed: the model was built for one shape.
    """

    backend = NAME

    def __init__(self, artifact: EdgeArtifact, threads: int | None = None):
        from ai_edge_litert.interpreter import Interpreter

        self.artifact = artifact
        self.threads = threads
        try:
            self.interpreter = Interpreter(model_path=str(artifact.path), num_threads=threads or None)
            self.interpreter.allocate_tensors()
        except Exception as e:  # ValueError / RuntimeError from the interpreter
            raise TrtoptError(f"LiteRT cannot load {artifact.path.name}: {first_line(e)}",
                              "re-create it with trtopt edge-export using this ai-edge-litert version") from e
        # Input/output order of the flatbuffer is the export's argument/return order.
        self.input_details = sorted(self.interpreter.get_input_details(), key=lambda d: d["index"])
        self.output_details = self.interpreter.get_output_details()
        self.inputs = tuple(InputSpec.from_dims(i["name"], i["shape"], i["dtype"]) for i in artifact.inputs)
        self.model_name = artifact.path.name
        if len(self.input_details) != len(self.inputs):
            raise TrtoptError(f"{artifact.path.name} has {len(self.input_details)} inputs, its sidecar {len(self.inputs)}",
                              "re-create the model with trtopt edge-export")

    @property
    def static_batch(self) -> int:
        """The batch size the file was built for (every input's axis 0)."""
        return int(self.inputs[0].batch)

    def _infer(self, feed: CheckedFeed) -> dict[str, np.ndarray]:
        for spec, detail in zip(self.inputs, self.input_details):
            self.interpreter.set_tensor(detail["index"], _to_model(feed[spec.name], detail))
        self.interpreter.invoke()
        values = [_from_model(self.interpreter.get_tensor(d["index"]), d) for d in self.output_details]
        names = list(self.artifact.output_names) + [f"output_{i}" for i in range(len(self.artifact.output_names), len(values))]
        return dict(zip(names, values))

    def describe(self) -> dict[str, Any]:
        return {"backend": NAME, "model": str(self.artifact.path), "precision": self.artifact.precision,
                "io_dtypes": sorted({np.dtype(d["dtype"]).name for d in self.input_details}),
                "intra_op_threads": self.threads}

    def close(self) -> None:
        self.interpreter = None

def _to_model(arr: np.ndarray, detail: dict[str, Any]) -> np.ndarray:
    """An input as the model stores it: quantized with the input's (scale, zero point) for int8 models."""
    dtype = np.dtype(detail["dtype"])
    scale, zero = detail["quantization"]
    if dtype.kind in "iu" and scale and np.asarray(arr).dtype.kind == "f":
        info = np.iinfo(dtype)
        return np.clip(np.round(arr / scale) + zero, info.min, info.max).astype(dtype)
    return np.asarray(arr).astype(dtype, copy=False)

def _from_model(arr: np.ndarray, detail: dict[str, Any]) -> np.ndarray:
    """An output in real units: dequantized for int8 outputs, copied (the interpreter reuses its buffers)."""
    scale, zero = detail["quantization"]
    if np.dtype(detail["dtype"]).kind in "iu" and scale:
        return ((arr.astype(np.float32) - zero) * np.float32(scale)).astype(np.float32)
    return np.array(arr, copy=True)

class LiteRTBackend:
    name = NAME
    capabilities = Capabilities(model_formats=("tflite",), precisions=("fp32", "int8"), devices=("cpu",),
                                dynamic_shapes=False)

    def availability(self) -> tuple[bool, str]:
        runtime, converter = package_version("ai-edge-litert"), package_version("litert-torch")
        if runtime is None:
            return False, "ai-edge-litert is not installed (pip install 'trtopt[litert]')"
        return True, f"ai-edge-litert {runtime}" + (f", litert-torch {converter}" if converter else " (no converter)")

    def load(self, model: Any, threads: int | None = None, **options: Any) -> LiteRTRunner:
        """Open a ``.tflite`` file (path or EdgeArtifact; its sidecar gives input names and shapes)."""
        if options:
            raise TrtoptError(f"the litert backend has no option {next(iter(options))!r}", "options: threads")
        require("ai_edge_litert", NAME)
        art = model if isinstance(model, EdgeArtifact) else inspect_edge(Path(model))
        return LiteRTRunner(art, threads)

BACKEND = LiteRTBackend()
