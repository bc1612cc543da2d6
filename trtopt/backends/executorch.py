"""ExecuTorch runtime adapter: runs ``.pte`` programs (XNNPACK delegate) on the CPU.
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

NAME = "executorch"

def set_threads(threads: int | None) -> int:
    """Size ExecuTorch's (process-wide) CPU threadpool; returns the thread count in effect."""
    from executorch.extension.pybindings import portable_lib

    if threads:
        portable_lib._unsafe_reset_threadpool(int(threads))
    return int(portable_lib._threadpool_get_thread_count())

class ExecuTorchRunner(Runner):
    """A ``.pte`` program's ``forward`` behind the Runner protocol (inputs by name, outputs by name).

    Its inputs are the sidecar's, batch axis fixed: the program was built for one shape.
    """

    backend = NAME

    def __init__(self, artifact: EdgeArtifact, threads: int | None = None):
        from executorch.runtime import Runtime

        self.artifact = artifact
        self.threads = set_threads(threads)
        try:
            self.method = Runtime.get().load_program(str(artifact.path)).load_method("forward")
        except Exception as e:  # the runtime raises RuntimeError for a program it cannot load
            raise TrtoptError(f"ExecuTorch cannot load {artifact.path.name}: {first_line(e)}",
                              "re-create it with trtopt edge-export using this executorch version") from e
        self.inputs = tuple(InputSpec.from_dims(i["name"], i["shape"], i["dtype"]) for i in artifact.inputs)
        self.model_name = artifact.path.name

    @property
    def static_batch(self) -> int:
        """The batch size the file was built for (every input's axis 0)."""
        return int(self.inputs[0].batch)

    def _infer(self, feed: CheckedFeed) -> dict[str, np.ndarray]:
        import torch

        args = [torch.from_numpy(feed[s.name]) for s in self.inputs]
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
