"""ONNX Runtime backend: always present, the embedded default, CPU and whatever providers the build has."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np

from trtopt.backends.base import Capabilities
from trtopt._config import check_choice
from dataclasses import dataclass
from trtopt.errors import TrtoptError

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
        check_choice("ort.graph_optimization_level", self.graph_optimization_level, GRAPH_OPT_LEVELS)
        if not self.providers:
            raise TrtoptError("ort.providers is empty", "name at least one provider, e.g. CPUExecutionProvider")


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
    first = text.splitlines()[0] if text else type(error).__name__
    return TrtoptError(f"ONNX Runtime cannot load {path}: {first[:300]}",
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


class OrtRunner:
    """An ``onnxruntime.InferenceSession`` behind the Runner protocol, checking feeds before running."""

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
        self.config = config
        self.inputs = {i.name: i for i in self.session.get_inputs()}
        self.output_names = [o.name for o in self.session.get_outputs()]

    def check_feed(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Names and static dimensions of ``feed`` against the session's inputs (error names the input)."""
        from trtopt.artifacts import numpy_dtype_of_onnx_type

        missing = [n for n in self.inputs if n not in feed]
        if missing:
            raise TrtoptError(f"{self.path.name} needs input {missing[0]!r}, the feed has {', '.join(feed) or 'none'}",
                              f"provide {', '.join(self.inputs)}")
        out = {}
        for name, meta in self.inputs.items():
            arr = np.asarray(feed[name])
            expected = meta.shape
            ok = len(arr.shape) == len(expected) and all(
                not isinstance(e, int) or e == a for e, a in zip(expected, arr.shape))
            if not ok:
                shown = ", ".join(str(e) if isinstance(e, int) else (e or "?") for e in expected)
                raise TrtoptError(f"input {name!r} of {self.path.name} expects shape ({shown}), got {tuple(arr.shape)}",
                                  "pass data of that shape (or --input-shape matching the model)")
            try:
                dtype = numpy_dtype_of_onnx_type(meta.type)
            except TrtoptError as e:
                raise TrtoptError(f"input {name!r} of {self.path.name} has type {meta.type}, which trtopt cannot feed "
                                  "(target onnxruntime)", e.fix) from e
            out[name] = arr.astype(dtype, copy=False)
        return out

    def infer(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run one batch; outputs by name."""
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
