"""ONNX Runtime backend: always present, the embedded default, CPU and whatever providers the build has."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from trtopt._config import check_choice, check_names
from trtopt.artifacts import numpy_dtype_of_onnx_type
from trtopt.backends.base import Capabilities, Runner
from trtopt.errors import TrtoptError, first_line
from trtopt.feeds import CheckedFeed
from trtopt.models.spec import InputSpec

_OPT_LEVELS = {"disable": "ORT_DISABLE_ALL", "basic": "ORT_ENABLE_BASIC", "extended": "ORT_ENABLE_EXTENDED",
               "all": "ORT_ENABLE_ALL"}


# "Could not find an implementation for Mul(6) node with name 'mul_1'": ONNX Runtime has no CPU kernel
# for that op at that opset version (1.32 dropped the opset < 7 kernels of many ops).
_NO_KERNEL = re.compile(r"Could not find an implementation for (\S+?)\((\d+)\) node with name '([^']*)'")
# "ai.onnx.preview.training:Gradient(-1) is not a registered function/op": an op of a domain it lacks.
_NO_OP = re.compile(r"(\S+?)\((-?\d+)\) is not a registered function/op")


GRAPH_OPT_LEVELS = ("disable", "basic", "extended", "all")

@dataclass(frozen=True)
class OrtConfig:
    """ONNX Runtime session options.

    Attributes:
        intra_op_threads: threads inside one operator; None lets ONNX Runtime pick (all physical cores).
        inter_op_threads: threads across independent operators (parallel mode only).
        graph_optimization_level: "disable", "basic", "extended" or "all".
        providers: execution providers in priority order; each must be available in this build.
        allow_spinning: let idle intra-op threads busy-wait for the next run. Off by default: when
            candidates are timed interleaved, spinning ONNX Runtime threads steal the cores from the
            next candidate (measured here: ResNet-18 PyTorch batch 1 went from 46 ms to 91 ms next to a
            spinning session), and the gain for ONNX Runtime itself was nil (28.8 vs 32.2 ms).
    """

    intra_op_threads: int | None = None
    inter_op_threads: int | None = 1
    graph_optimization_level: str = "all"
    providers: tuple[str, ...] = ("CPUExecutionProvider",)
    allow_spinning: bool = False

    def __post_init__(self) -> None:
        check_choice("graph_optimization_level", self.graph_optimization_level, GRAPH_OPT_LEVELS)
        check_names("providers", self.providers, nonempty=True,
                    fix="name at least one provider, e.g. [CPUExecutionProvider]")


def load_error(path: Path, error: Exception, version: str) -> TrtoptError:
    """The one-line error for a model ONNX Runtime refuses, naming the op and opset when it lacks a kernel."""
    text = str(error).strip()
    found = _NO_KERNEL.search(text)
    if found:
        op, opset, node = found.groups()
        return TrtoptError(f"op {op} (opset {opset}{f', node {node!r}' if node else ''}) of {path.name} is not supported "
                           f"by target onnxruntime {version} (no CPU kernel for that opset version and these input types)",
                           "for an old model, convert it to a newer opset (trtopt.quant.foreign.upgrade_opset, e.g. to 17); "
                           "else cast the op's inputs to a type it supports, or run it on a runtime that has the op")
    found = _NO_OP.search(text)
    if found:
        op = found.group(1).split("error:")[-1].strip().replace(":", "::")
        return TrtoptError(f"op {op} of {path.name} is not supported by target onnxruntime {version} "
                           "(not a registered op or function)",
                           "remove or replace that op (it may be a training-only or custom-domain op)")
    return TrtoptError(f"ONNX Runtime cannot load {path}: {first_line(error, limit=300)}",
                       "check that the model is valid ONNX for this onnxruntime version")


_RUN_FAILED = re.compile(r"while running (\S+) node\. Name:'([^']*)' Status Message: (.*)", re.DOTALL)


def run_error(path: Path, error: Exception) -> TrtoptError:
    """The one-line error for a run ONNX Runtime stops, naming the op and node that failed."""
    text = " ".join(str(error).split())
    found = _RUN_FAILED.search(text)
    if found:
        op, node, message = found.groups()
        # Drop ORT's source location ("/onnxruntime_src/...cc:563 void f(...) cond was false."): keep the reason.
        message = message.split(" was false. ", 1)[-1]
        message = re.sub(r"\S*onnxruntime_src/\S+\s*", "", message).strip()
        return TrtoptError(f"op {op}{f' (node {node!r})' if node else ''} of {path.name} failed in target onnxruntime: "
                           f"{message[-240:]}", "check the input shapes and values for that op")
    return TrtoptError(f"ONNX Runtime failed running {path.name}: {text[:300]}", "check the inputs' shapes and values")


def _input_dtype(ort_type: str) -> str:
    """numpy dtype name of an input; a type trtopt cannot feed (strings, sequences) keeps ONNX Runtime's
    name ("tensor(string)"), which the feed check refuses naming the input."""
    try:
        return numpy_dtype_of_onnx_type(ort_type)
    except TrtoptError:
        return ort_type


class OrtRunner(Runner):
    """An ``onnxruntime.InferenceSession`` behind the Runner protocol; its inputs are the session's."""

    backend = "onnxruntime"

    def __init__(self, path: Path, config: OrtConfig):
        import onnxruntime as ort

        available = ort.get_available_providers()
        unknown = [p for p in config.providers if p not in available]
        if unknown:
            raise TrtoptError(f"ONNX Runtime provider {unknown[0]} is not available in this build",
                              f"available providers: {', '.join(available)}")
        options = ort.SessionOptions()
        options.graph_optimization_level = getattr(ort.GraphOptimizationLevel, _OPT_LEVELS[config.graph_optimization_level])
        if config.intra_op_threads:
            options.intra_op_num_threads = config.intra_op_threads
        if config.inter_op_threads:
            options.inter_op_num_threads = config.inter_op_threads
        options.add_session_config_entry("session.intra_op.allow_spinning", "1" if config.allow_spinning else "0")
        # fatal only: a failed load or run is re-raised as a one-line TrtoptError, and ONNX Runtime's own
        # error log ("[E:onnxruntime:...] Non-zero status code ...") would print a second line before it
        options.log_severity_level = 4
        try:
            self.session = ort.InferenceSession(str(path), sess_options=options, providers=list(config.providers))
        except Exception as e:  # ORT raises Fail/InvalidGraph/NotImplemented with long messages
            raise load_error(path, e, ort.__version__) from e
        self.path = path
        self.model_name = path.name
        self.config = config
        self.inputs = tuple(InputSpec.from_dims(i.name, i.shape, _input_dtype(i.type))
                            for i in self.session.get_inputs())
        self.output_names = [o.name for o in self.session.get_outputs()]

    def _infer(self, feed: CheckedFeed) -> dict[str, np.ndarray]:
        try:
            results = self.session.run(self.output_names, feed)
        except Exception as e:  # ORT's Fail/RuntimeException: a kernel refused these inputs
            raise run_error(self.path, e) from e
        return dict(zip(self.output_names, results))

    def describe(self) -> dict[str, Any]:
        return {"backend": self.backend, "model": str(self.path),
                "providers": self.session.get_providers(),
                "intra_op_threads": self.config.intra_op_threads,  # None: ONNX Runtime default (physical cores)
                "inter_op_threads": self.config.inter_op_threads,
                "graph_optimization_level": self.config.graph_optimization_level,
                "allow_spinning": self.config.allow_spinning}

    def close(self) -> None:
        self.session = None


class OrtBackend:
    name = "onnxruntime"
    capabilities = Capabilities(model_formats=("onnx",), precisions=("fp32", "fp16", "int8"),
                                devices=("cpu", "cuda"), dynamic_shapes=True)

    def availability(self) -> tuple[bool, str]:
        try:
            import onnxruntime
        except ImportError as e:
            return False, f"onnxruntime not importable ({e})"
        return True, onnxruntime.__version__

    def load(self, model: Any, config: OrtConfig | None = None, **options: Any) -> OrtRunner:
        """Open an ONNX file (path or OnnxArtifact) in a session configured by ``config``."""
        from trtopt.artifacts import OnnxArtifact, inspect_onnx

        if not isinstance(model, OnnxArtifact):
            model = inspect_onnx(model)  # a clear error for a missing/corrupt file or missing .onnx.data
        return OrtRunner(model.path, config or OrtConfig(**options))


BACKEND = OrtBackend()
