"""Torch-TensorRT backend: compile an ``nn.Module`` with ``torch_tensorrt.compile(ir="dynamo")`` and run it.

For users who stay in PyTorch: the same Runner protocol as every backend, imported only when used.
Precision follows explicit typing (Torch-TensorRT's default and TensorRT 11's model): FP16 casts the
module and inputs to half; nothing relies on ``enabled_precisions``, which Torch-TensorRT deprecated.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np

from trtopt.backends.base import Capabilities, Runner
from trtopt.environment import package_version
from trtopt.errors import TrtoptError
from trtopt.feeds import CheckedFeed


class TorchTensorRTRunner(Runner):
    """A Torch-TensorRT compiled module behind the Runner protocol (inputs on the GPU, outputs on the host).

    Compiled for one batch size: its inputs are the `LoadedModel`'s with the batch axis fixed at it.
    """

    backend = "torch-tensorrt"

    def __init__(self, loaded: Any, precision: str = "fp32", batch_size: int = 1):
        try:
            import torch_tensorrt
        except ImportError as e:
            raise TrtoptError("the torch-tensorrt backend needs the Python package 'torch_tensorrt', which is not installed",
                              "on a GPU machine: pip install torch-tensorrt matching your torch (2.14 pairs with "
                              "torch-tensorrt 2.14 and TensorRT 11.1)") from e
        import torch

        from trtopt.trt.cuda import require_gpu

        require_gpu("the torch-tensorrt backend")
        if precision not in ("fp32", "fp16"):
            raise TrtoptError(f"the torch-tensorrt backend does not support precision {precision}", "use fp32 or fp16")
        self.dtype = torch.float16 if precision == "fp16" else torch.float32
        self.loaded = loaded
        self.precision = precision
        self.inputs = tuple(replace(s, batch=batch_size) for s in loaded.inputs)
        self.model_name = loaded.spec
        module = loaded.module.eval().cuda().to(self.dtype)
        examples = [torch.zeros((batch_size, *s.shape), dtype=self.dtype, device="cuda") for s in loaded.inputs]
        self.module = torch_tensorrt.compile(module, ir="dynamo", inputs=examples)

    def _infer(self, feed: CheckedFeed) -> dict[str, np.ndarray]:
        import torch

        from trtopt.backends.torch import flatten_outputs

        args = [torch.from_numpy(feed[s.name]).to("cuda", self.dtype) for s in self.inputs]
        with torch.inference_mode():
            outputs = flatten_outputs(self.module(*args))
        names = list(self.loaded.output_names) + [f"output_{i}" for i in range(len(self.loaded.output_names), len(outputs))]
        return {n: t.detach().float().cpu().numpy() for n, t in zip(names, outputs)}

    def describe(self) -> dict[str, Any]:
        return {"backend": self.backend, "model": self.loaded.spec, "precision": self.precision,
                "torch_tensorrt": package_version("torch-tensorrt")}

    def close(self) -> None:
        self.module = None


class TorchTensorRTBackend:
    name = "torch-tensorrt"
    capabilities = Capabilities(model_formats=("torch",), precisions=("fp32", "fp16"), devices=("cuda",),
                                dynamic_shapes=False)

    def availability(self) -> tuple[bool, str]:
        version = package_version("torch-tensorrt") or package_version("torch_tensorrt")
        if version is None:
            return False, "torch-tensorrt is not installed (GPU machines: pip install torch-tensorrt)"
        from trtopt.trt.cuda import probe_gpus

        cuda = probe_gpus()
        return (True, version) if cuda["available"] else (False, f"torch-tensorrt {version} is installed but {cuda['reason']}")

    def load(self, model: Any, precision: str = "fp32", batch_size: int = 1, **options: Any) -> TorchTensorRTRunner:
        """Compile a `LoadedModel` (see `trtopt.models.load.load_model`) for inputs of ``batch_size``."""
        if options:
            raise TrtoptError(f"the torch-tensorrt backend has no option {next(iter(options))!r}",
                              "options: precision, batch_size")
        return TorchTensorRTRunner(model, precision=precision, batch_size=batch_size)


BACKEND = TorchTensorRTBackend()
