"""ONNX from any framework: run third-party ONNX files through calibrate → quantize → compare.

Models from MXNet, TensorFlow (tf2onnx), Caffe2 or anything else reach trtopt as ONNX files that no
trtopt exporter wrote: their inputs have arbitrary names, dtypes and fixed or symbolic shapes, their
weights may sit in external-data side files, and their opsets vary. This module holds what a user needs
to check such a file end to end, plus the readers for the ONNX wheel's own shipped test models
(``onnx/backend/test/data``: a ``model.onnx`` and ``test_data_set_*/input_*.pb`` / ``output_*.pb``
per case), which are the third-party models trtopt is tested on.

- :func:`shipped_cases` / :func:`load_case`: discover and read the shipped test models.
- :func:`check_pipeline`: FP32 in ONNX Runtime → calibrate → quantize (a target) → INT8 in ONNX Runtime
  → compare, returning a JSON-ready record with the stage that failed and its one-line error.
- :func:`unsupported_ops`: the ops of a model that a runtime has no kernel for, named before any work.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from trtopt.errors import TrtoptError
from trtopt.feeds import Feed
from trtopt.files import temp_dir

# The shipped case folders of the onnx wheel that hold model.onnx files (``real`` and ``light`` don't).
CASE_GROUPS = ("simple", "pytorch-converted", "pytorch-operator")


@dataclass(frozen=True)
class OnnxCase:
    """One third-party ONNX model with its own inputs and expected outputs.

    Attributes:
        name: the case's name (its folder, e.g. "test_Conv2d").
        group: where it comes from ("pytorch-converted", "node", ...).
        model: path of the ``.onnx`` file.
        inputs: input name → array, as the case ships them (axis 0 is whatever the model's axis 0 is).
        outputs: output name → expected array (the producer's reference results).
    """

    name: str
    group: str
    model: Path
    inputs: Feed = field(default_factory=dict)
    outputs: Feed = field(default_factory=dict)


def onnx_test_data_root() -> Path:
    """``onnx/backend/test/data`` inside the installed onnx wheel."""
    import onnx

    return Path(onnx.__file__).parent / "backend" / "test" / "data"


def shipped_cases(groups: tuple[str, ...] = CASE_GROUPS, root: str | os.PathLike | None = None) -> list[Path]:
    """Folders of the onnx wheel's shipped test models (each holds ``model.onnx``), sorted by group and name."""
    base = Path(root) if root is not None else onnx_test_data_root()
    return [d for g in groups for d in sorted((base / g).glob("*")) if (d / "model.onnx").is_file()]


def _read_tensor(path: Path) -> np.ndarray:
    """A serialized TensorProto as numpy; sequences/maps/optionals (not tensors) raise TrtoptError."""
    import onnx
    from onnx import numpy_helper

    tensor = onnx.TensorProto()
    data = path.read_bytes()
    tensor.ParseFromString(data)
    if not tensor.dims and not tensor.raw_data and not _has_typed_data(tensor):
        raise TrtoptError(f"{path.name} holds a sequence, map or optional value, not a tensor",
                          "trtopt feeds tensors only; give the model tensor inputs")
    return numpy_helper.to_array(tensor)


def _has_typed_data(tensor: Any) -> bool:
    return any(len(getattr(tensor, f)) for f in ("float_data", "int32_data", "string_data", "int64_data",
                                                  "double_data", "uint64_data"))


def load_case(folder: str | os.PathLike, group: str = "", data_set: int = 0) -> OnnxCase:
    """Read a shipped case: its model path and test_data_set_<data_set> inputs/outputs named by the graph.

    Input files ``input_<i>.pb`` are matched in order to the graph inputs that are not initializers,
    outputs likewise to the graph outputs (as ONNX's backend test runner does).
    """
    import onnx

    d = Path(folder)
    model = onnx.load(str(d / "model.onnx"), load_external_data=False)
    initializers = {t.name for t in model.graph.initializer}
    input_names = [v.name for v in model.graph.input if v.name not in initializers]
    output_names = [v.name for v in model.graph.output]
    data_dir = d / f"test_data_set_{data_set}"

    def read(prefix: str, names: list[str]) -> Feed:
        files = sorted(data_dir.glob(f"{prefix}_*.pb"), key=lambda p: int(p.stem.split("_")[-1]))
        return {names[i]: _read_tensor(f) for i, f in enumerate(files) if i < len(names)}

    return OnnxCase(d.name, group or d.parent.name, d / "model.onnx", read("input", input_names),
                    read("output", output_names))


def node_cases() -> list[tuple[str, Any, Feed, Feed]]:
    """The operator cases of ``onnx.backend.test.case.node.collect_testcases()`` with tensor data.

    Returns (name, ModelProto, inputs by name, expected outputs by name) for the cases whose every input
    and output is a plain numpy array (sequence/optional cases are left out).
    """
    from onnx.backend.test.case.node import collect_testcases

    out = []
    for case in collect_testcases():
        if case.model is None or not case.data_sets:
            continue
        ins, outs = case.data_sets[0]
        if not all(isinstance(a, np.ndarray) for a in (*ins, *outs)):
            continue
        graph = case.model.graph
        initializers = {t.name for t in graph.initializer}
        names = [v.name for v in graph.input if v.name not in initializers]
        out.append((case.name, case.model, dict(zip(names, ins)), dict(zip([v.name for v in graph.output], outs))))
    return out


def unsupported_ops(onnx_path: str | os.PathLike, target: str = "onnxruntime") -> list[str]:
    """Ops of the model that ``target`` cannot run, as ``"Op (opset N)"`` (``domain::Op`` outside ai.onnx).

    An op counts as runnable when a kernel of the installed ONNX Runtime's CPU provider covers the op's
    version at the model's opset, or when the ONNX schema defines it as a function (ONNX Runtime
    expands those into their body). Checked before any work, from the registry, without loading a session.
    """
    if target != "onnxruntime":
        raise TrtoptError(f"op support is known for target onnxruntime only, not {target!r}",
                          "use target onnxruntime")
    import onnx
    from onnx import defs

    model = onnx.load(str(onnx_path), load_external_data=False)
    opsets = {("" if o.domain == "ai.onnx" else o.domain): o.version for o in model.opset_import}
    local = {(f.domain, f.name) for f in model.functions}
    kernels = _ort_cpu_kernels()
    found: dict[str, None] = {}
    for node in _all_nodes(model.graph):
        domain = "" if node.domain == "ai.onnx" else node.domain
        if (domain, node.op_type) in local:
            continue
        opset = opsets.get(domain, 1)
        try:
            schema = defs.get_schema(node.op_type, opset, domain)
            version, has_body = schema.since_version, schema.has_function or schema.has_context_dependent_function
        except Exception:  # not an ONNX-defined op (e.g. com.microsoft): check the kernel name only
            version, has_body = opset, False
        ranges = kernels.get((domain, node.op_type), [])
        if not has_body and not any(lo <= version <= hi for lo, hi in ranges):
            found[f"{domain + '::' if domain else ''}{node.op_type} (opset {opset})"] = None
    return list(found)


def _all_nodes(graph: Any) -> Any:
    for node in graph.node:
        yield node
        for attr in node.attribute:
            if attr.HasField("g"):
                yield from _all_nodes(attr.g)
            for sub in attr.graphs:
                yield from _all_nodes(sub)


def _ort_cpu_kernels() -> dict[tuple[str, str], list[tuple[int, int]]]:
    """(domain, op) → opset version ranges with a kernel in ONNX Runtime's CPU execution provider."""
    from onnxruntime.capi import _pybind_state as C

    kernels: dict[tuple[str, str], list[tuple[int, int]]] = {}
    for k in C.get_all_opkernel_def():
        if k.provider == "CPUExecutionProvider":
            kernels.setdefault(("" if k.domain == "ai.onnx" else k.domain, k.op_name), []).append(tuple(k.version_range))
    return kernels


def upgrade_opset(onnx_path: str | os.PathLike, out_path: str | os.PathLike, opset: int = 17,
                  force: bool = False) -> Any:
    """Convert a model to default-domain opset ``opset`` with ONNX's version converter; returns its OnnxArtifact.

    Old exporters (Caffe2, early PyTorch, MXNet) wrote opsets that current ONNX Runtime no longer has
    kernels for (1.32 dropped e.g. Add/Mul/Gemm/PRelu at opset 6); the converter rewrites each node to
    the newer definition. Weights are written inline; a model with external data keeps it external.

    Raises:
        TrtoptError: the output exists without ``force``; the model is already newer; the converter
        rejects a node (named in its message).
    """
    import onnx

    from trtopt.artifacts import inspect_onnx
    from trtopt.files import ensure_writable, staging_dir
    from trtopt.quant.quantize import convert_opset

    source = inspect_onnx(onnx_path)
    target = ensure_writable(out_path, force)
    if source.opset >= opset:
        raise TrtoptError(f"{source.path.name} is already at opset {source.opset}", f"choose an opset above {source.opset}")
    converted = convert_opset(onnx.load(str(source.path)), opset, source.path.name)
    with staging_dir(target) as stage:
        staged = stage / target.name
        onnx.save(converted, str(staged), save_as_external_data=bool(source.data_files),
                  location=f"{target.name}.data")
        for f in stage.iterdir():
            os.replace(f, target.parent / f.name)
    return inspect_onnx(target, notes=(f"opset {source.opset} → {opset} (onnx.version_converter)",))


def check_pipeline(onnx_path: str | os.PathLike, feed: Feed, work_dir: str | os.PathLike | None = None,
                   target: str = "onnxruntime", expected: Feed | None = None, method: str = "minmax",
                   threads: int | None = 1) -> dict[str, Any]:
    """Take a foreign ONNX model through FP32 run → calibrate → quantize → INT8 run → compare.

    Args:
        onnx_path: the model (side files next to it).
        feed: inputs by name, as the model takes them (one batch; axis 0 as the model defines it).
        work_dir: where the quantized model goes (a temporary folder by default, removed after).
        target: the quantization target ("onnxruntime").
        expected: the producer's reference outputs; when given, FP32 ONNX Runtime is compared with them too.
        method: calibration method (minmax by default: one batch is too little for a histogram method).
        threads: ONNX Runtime intra-op threads.

    Returns:
        ``{"model", "status", "stage", "error", "ops", "fp32_vs_reference", "int8_vs_fp32", ...}`` with
        ``status`` "ok", "not_quantizable" (no Conv/MatMul/Gemm: nothing for INT8 to speed up) or
        "error"; ``stage`` names the stage that stopped it and ``error`` is trtopt's one-line message.
    """
    with temp_dir("foreign") as tmp:
        return _check(Path(onnx_path), feed, Path(work_dir) if work_dir else Path(tmp), target, expected,
                      method, threads)


def _check(path: Path, feed: Feed, work: Path, target: str, expected: Feed | None, method: str,
           threads: int | None) -> dict[str, Any]:
    from trtopt.artifacts import inspect_onnx
    from trtopt.backends.ort import OrtConfig, OrtRunner
    from trtopt.measure.compare import Tolerances, compare_outputs
    from trtopt.quant.calibrate import CalibrationConfig, calibrate
    from trtopt.quant.quantize import QuantizeConfig, quantize

    record: dict[str, Any] = {"model": str(path), "status": "error", "stage": "inspect", "error": None}
    stage = "inspect"
    try:
        art = inspect_onnx(path)
        record.update(opset=art.opset, inputs=[t.to_dict() for t in art.inputs], outputs=[t.to_dict() for t in art.outputs],
                      external_data=[p.name for p in art.data_files])
        stage = "fp32"
        with OrtRunner(art.path, OrtConfig(intra_op_threads=threads)) as runner:
            fp32 = runner.infer(feed)
        if expected:
            record["fp32_vs_reference"] = _summary(compare_outputs(expected, fp32, Tolerances(rtol=1e-3, atol=1e-4)))
        stage = "calibrate"
        samples = max((len(v) if np.ndim(v) else 1) for v in feed.values()) if feed else 1
        try:
            ranges = calibrate(art, [feed], CalibrationConfig(method=method, batch_size=max(samples, 1)),
                               ort=OrtConfig(intra_op_threads=threads))
        except TrtoptError as e:
            if "no float tensors to calibrate" in e.problem:  # no node any Q/DQ layout quantizes
                record.update(status="not_quantizable", stage="calibrate", error=str(e))
                return record
            raise
        record["calibrated_tensors"] = len(ranges.tensors)
        stage = "quantize"
        int8_path = work / f"{path.stem}.int8.onnx"
        try:
            int8 = quantize(art.path, ranges, int8_path, QuantizeConfig(target=target), force=True)
        except TrtoptError as e:
            if "no quantizable layers" in e.problem:
                record.update(status="not_quantizable", stage="quantize", error=str(e))
                return record
            raise
        record["int8_size_bytes"] = int8.size_bytes
        stage = "int8"
        with OrtRunner(int8.path, OrtConfig(intra_op_threads=threads)) as runner:
            out = runner.infer(feed)
        stage = "compare"
        record["int8_vs_fp32"] = _summary(compare_outputs(fp32, out, Tolerances(rtol=0.1, atol=0.1, min_cosine=0.9)))
        record.update(status="ok", stage="done")
    except TrtoptError as e:
        record.update(stage=stage, error=str(e))
    return record


def _summary(result: dict[str, Any]) -> dict[str, Any]:
    cosines = [o["cosine"] for o in result["outputs"] if o["cosine"] is not None]
    return {"passed": result["passed"], "outputs": len(result["outputs"]),
            "min_cosine": min(cosines) if cosines else None,
            "max_abs_error": max((o["max_abs_error"] or 0.0) for o in result["outputs"])}
