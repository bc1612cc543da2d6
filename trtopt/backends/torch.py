"""PyTorch eager backend: the FP32 baseline every variant is compared against."""

from __future__ import annotations

from typing import Any

import numpy as np

from trtopt.backends.base import Capabilities, Runner
from trtopt.errors import TrtoptError, first_line
from trtopt.feeds import CheckedFeed


def flatten_outputs(result: Any) -> list[Any]:
    """A model's return value (tensor, tuple/list, dict, HF ModelOutput) as a flat list of tensors."""
    if hasattr(result, "detach"):
        return [result]
    if isinstance(result, dict) or hasattr(result, "to_tuple"):
        values = result.to_tuple() if hasattr(result, "to_tuple") else tuple(result.values())
        return [t for v in values for t in flatten_outputs(v)]
    if isinstance(result, (list, tuple)):
        return [t for v in result for t in flatten_outputs(v)]
    return []


def output_names(result: Any, prefix: str = "output") -> list[str]:
    """Names for the tensors :func:`flatten_outputs` returns, in its order: a dict's (or ModelOutput's) keys,
    ``prefix`` for a lone tensor, ``prefix``, ``prefix_1``, ... along a tuple or list."""
    if hasattr(result, "detach"):
        return [prefix]
    if isinstance(result, dict) or hasattr(result, "to_tuple"):
        items = [(k, v) for k, v in result.items() if v is not None]
        return [n for k, v in items for n in output_names(v, str(k))]
    if isinstance(result, (list, tuple)):
        return [n for i, v in enumerate(result) for n in output_names(v, prefix if i == 0 else f"{prefix}_{i}")]
    return []


class TorchRunner(Runner):
    """An ``nn.Module`` in eval mode behind the Runner protocol (inference_mode, CPU or CUDA).

    Its inputs are the `LoadedModel`'s, passed to ``forward`` positionally in that order.
    """

    backend = "torch"

    def __init__(self, loaded: Any, threads: int | None = None, device: str = "cpu"):
        import torch

        if threads:
            torch.set_num_threads(threads)  # process-wide: PyTorch has no per-module thread setting
        self.loaded = loaded
        self.inputs = tuple(loaded.inputs)
        self.model_name = loaded.spec
        self.device = torch.device(device)
        self.module = loaded.module.eval().to(self.device)
        self.threads = torch.get_num_threads()

    def _infer(self, feed: CheckedFeed) -> dict[str, np.ndarray]:
        """Outputs named by the model's ``output_names`` (then ``output_<i>``)."""
        import torch

        args = [torch.from_numpy(feed[s.name]).to(self.device) for s in self.inputs]
        with torch.inference_mode():
            try:
                outputs = flatten_outputs(self.module(*args))
            except RuntimeError as e:
                shapes = ", ".join(f"{s.name}{tuple(feed[s.name].shape)}" for s in self.inputs)
                raise TrtoptError(f"the model rejected inputs {shapes}: {first_line(e)}",
                                  "pass inputs of the shape the model expects (--input-shape)") from e
        names = list(self.loaded.output_names)
        names += [f"output_{i}" for i in range(len(names), len(outputs))]
        return {n: t.detach().float().cpu().numpy() if t.dtype.is_floating_point else t.cpu().numpy()
                for n, t in zip(names, outputs)}

    def describe(self) -> dict[str, Any]:
        return {"backend": self.backend, "model": self.loaded.spec, "precision": "fp32", "device": str(self.device),
                "intra_op_threads": self.threads}

    def close(self) -> None:
        self.module = None


class TorchBackend:
    name = "torch"
    capabilities = Capabilities(model_formats=("torch",), precisions=("fp32",), devices=("cpu", "cuda"),
                                dynamic_shapes=True)

    def availability(self) -> tuple[bool, str]:
        try:
            import torch
        except ImportError as e:
            return False, f"torch not importable ({e})"
        return True, torch.__version__

    def load(self, model: Any, threads: int | None = None, device: str = "cpu", **options: Any) -> TorchRunner:
        """Wrap a `LoadedModel` (see `trtopt.models.load.load_model`)."""
        if options:
            raise TrtoptError(f"the torch backend has no option {next(iter(options))!r}", "options: threads, device")
        return TorchRunner(model, threads=threads, device=device)


BACKEND = TorchBackend()
