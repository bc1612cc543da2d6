"""Contract test: every TensorRT name trtopt's code uses exists in every TensorRT version its route claims.

TensorRT can't be installed on the build machines, so the names are checked against the API manifests in
../shared/trt_api/ (one JSON per version: classes with members, enums with values, functions). The names
are extracted from the source by AST scanning (not listed by hand), so a new ``trt.X`` in
trtopt/trt/ or the TensorRT backend adapter is checked the moment it is written:

- ``trt.A.B.C`` chains (classes, enums and their values, module functions);
- members used on TensorRT objects held in known variables (``builder.create_network``,
  ``self.context.execute_async_v3``, ...), typed by the table below;
- methods a Python subclass overrides (calibrator, logger) against the manifest's ``overridable`` list;
- dynamic ``getattr(trt.Enum, name)`` lookups: only on the enums whose names come from build plans, and
  every name a plan can produce is checked per version by generating plans.

Routes: everything must exist in 10.3 and 10.16 (JetPack 6 and the newest 10.x). Names missing from 11.x
may only appear inside ``make_calibrator`` or an ``if`` on ``plan.int8_source`` (the implicit-INT8 route,
which make_plan refuses on 11.x); everything else must exist in 11.0 and 11.1 too.
"""

from __future__ import annotations

import ast
import itertools
import json
from pathlib import Path

import pytest

from tests.helpers.trt_fixtures import conv_model
from trtopt.errors import TrtoptError
from trtopt.trt.plan import VERSIONS, BuildOptions, ShapeProfile, make_plan

ROOT = Path(__file__).resolve().parents[2]
# Every file that may touch TensorRT: the trt package (but cuda.py, whose ``self.context`` is a pycuda
# context, not a TensorRT execution context) and the runtime adapters over it.
SOURCES = (*sorted(p for p in (ROOT / "trtopt" / "trt").glob("*.py") if p.name != "cuda.py"),
           ROOT / "trtopt" / "backends" / "trt.py",
           ROOT / "trtopt" / "backends" / "torch_trt.py")
MANIFEST_DIR = next((p for p in (ROOT.parent / "shared" / "trt_api", ROOT.parents[1] / "shared" / "trt_api",
                                 ROOT / "shared" / "trt_api", Path("/work/shared/trt_api")) if p.is_dir()), None)
pytestmark = pytest.mark.skipif(MANIFEST_DIR is None, reason="TensorRT API manifests (shared/trt_api) not found")

ALL = ("10.3", "10.16", "11.0", "11.1")
TEN = ("10.3", "10.16")

# Variables in those files that hold TensorRT objects -> their Python class (manifest name).
VARIABLE_TYPES = {
    "builder": "Builder", "network": "INetworkDefinition", "parser": "OnnxParser", "config": "IBuilderConfig",
    "profile": "IOptimizationProfile", "runtime": "Runtime", "engine": "ICudaEngine", "inspector": "EngineInspector",
    "timing_cache": "ITimingCache", "self.runtime": "Runtime", "self.engine": "ICudaEngine",
    "self.context": "IExecutionContext",
}
# Methods whose result is a TensorRT object used further: (class, method) -> result class.
RETURN_TYPES = {("IBuilderConfig", "get_timing_cache"): "ITimingCache", ("INetworkDefinition", "get_input"): "ITensor",
                ("OnnxParser", "get_error"): "ParserError"}
# Used through duck typing in trtopt/trt/build.py (format_parser_errors) on trt.OnnxParser / ParserError.
PARSER_ERROR_NAMES = ("OnnxParser.num_errors", "OnnxParser.get_error", "ParserError.node_name",
                      "ParserError.node_operator", "ParserError.desc", "ParserError.node")
PLAN_ENUMS = {"BuilderFlag", "NetworkDefinitionCreationFlag"}


@pytest.fixture(scope="module")
def manifests():
    return {v: json.loads((MANIFEST_DIR / f"tensorrt-{v}.json").read_text()) for v in ALL}


def has(m: dict, dotted: str) -> bool:
    """The manifest README's check: class member, enum value, module function or attribute."""
    *owner, name = dotted.split(".")
    owner = ".".join(owner)
    if not owner:
        return any(name in m[k] for k in ("classes", "enums", "functions", "attributes"))
    if owner in m["enums"]:
        return name in m["enums"][owner] or name in m["enum_extra_members"].get(owner, [])
    return owner in m["classes"] and name in m["classes"][owner]["all_members"]


# ---------------------------------------------------------------------------------------- extraction


def _dotted(node: ast.AST) -> str | None:
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
        return ".".join(reversed(parts))
    return None


def _guarded_lines(path: Path) -> set[tuple[str, int]]:
    """(file, line) of the 10.x-only route: make_calibrator, and if-blocks testing ``plan.int8_source``."""
    lines: set[tuple[str, int]] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.FunctionDef) and node.name == "make_calibrator":
            lines |= {(path.name, n) for n in range(node.lineno, node.end_lineno + 1)}
        if isinstance(node, ast.If) and "int8_source" in ast.unparse(node.test):
            for stmt in node.body:
                lines |= {(path.name, n) for n in range(stmt.lineno, stmt.end_lineno + 1)}
    return lines


def used_names() -> tuple[dict[str, set[tuple[str, int]]], set[str], dict[str, set[str]]]:
    """(dotted TensorRT name -> (file, line)s, enums looked up with getattr, subclass base -> overridden methods)."""
    found: dict[str, set[tuple[str, int]]] = {}
    dynamic: set[str] = set()
    overrides: dict[str, set[str]] = {}
    for path in SOURCES:
        _scan(path, found, dynamic, overrides)
    return found, dynamic, overrides


def _scan(path: Path, found: dict[str, set[tuple[str, int]]], dynamic: set[str], overrides: dict[str, set[str]]) -> None:
    tree = ast.parse(path.read_text())
    _mark_parents(tree)

    def add(name: str, line: int) -> None:
        found.setdefault(name, set()).add((path.name, line))

    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and not isinstance(getattr(node, "_parent", None), ast.Attribute):
            dotted = _dotted(node)
            if dotted and dotted.startswith("trt."):
                parts = dotted.split(".")[1:]
                for i in range(1, len(parts) + 1):
                    add(".".join(parts[:i]), node.lineno)
            elif dotted:
                for var, cls in VARIABLE_TYPES.items():
                    if dotted.startswith(var + ".") and dotted.count(".") == var.count(".") + 1:
                        add(f"{cls}.{dotted.rsplit('.', 1)[1]}", node.lineno)
            if isinstance(node.value, ast.Call) and isinstance(node.value.func, ast.Attribute):
                inner = _dotted(node.value.func)
                if inner and inner.rsplit(".", 1)[0] in VARIABLE_TYPES:
                    cls = VARIABLE_TYPES[inner.rsplit(".", 1)[0]]
                    result = RETURN_TYPES.get((cls, inner.rsplit(".", 1)[1]))
                    if result:
                        add(f"{result}.{node.attr}", node.lineno)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "getattr":
            target = _dotted(node.args[0])
            if target and target.startswith("trt."):
                dynamic.add(target[4:])
        if isinstance(node, ast.ClassDef):
            for base in node.bases:
                dotted = _dotted(base)
                if dotted and dotted.startswith("trt."):
                    methods = {f.name for f in node.body if isinstance(f, ast.FunctionDef)}
                    overrides[dotted[4:]] = methods


def _mark_parents(tree: ast.AST) -> None:
    """Give every node its parent, so used_names checks whole ``a.b.c`` chains, not their inner pieces."""
    for parent in ast.walk(tree):
        for child in ast.iter_child_nodes(parent):
            child._parent = parent


@pytest.fixture(scope="module")
def usage():
    return used_names()


# ---------------------------------------------------------------------------------------- the checks


def test_scan_finds_the_builder_and_runner_api(usage):
    found, dynamic, overrides = usage
    for expected in ("Builder.create_network", "Builder.build_serialized_network", "OnnxParser.parse_from_file",
                     "IBuilderConfig.set_memory_pool_limit", "MemoryPoolType.WORKSPACE", "IOptimizationProfile.set_shape",
                     "IBuilderConfig.set_timing_cache", "ITimingCache.serialize", "ProfilingVerbosity.DETAILED",
                     "Runtime.deserialize_cuda_engine", "ICudaEngine.create_engine_inspector",
                     "EngineInspector.get_engine_information", "LayerInformationFormat.JSON",
                     "IExecutionContext.execute_async_v3", "IExecutionContext.set_input_shape",
                     "IExecutionContext.set_tensor_address", "TensorIOMode.INPUT", "nptype",
                     "IBuilderConfig.int8_calibrator", "IInt8EntropyCalibrator2", "ILogger.Severity.WARNING",
                     "DeviceType.DLA", "IBuilderConfig.DLA_core", "Builder.num_DLA_cores", "ITensor.name"):
        assert expected in found, expected
    assert len(found) > 50
    assert dynamic == PLAN_ENUMS
    assert set(overrides) == {"ILogger", "IInt8EntropyCalibrator2"}


def test_every_name_exists_in_10x(usage, manifests):
    found, _, _ = usage
    for version in TEN:
        missing = sorted(n for n in found if not has(manifests[version], n))
        assert not missing, f"not in TensorRT {version}: {missing}"


def test_names_outside_the_10x_route_exist_in_11x(usage, manifests):
    found, _, _ = usage
    guarded = set().union(*(_guarded_lines(p) for p in SOURCES))
    ten_only = {n for n in found if not all(has(manifests[v], n) for v in ("11.0", "11.1"))}
    assert ten_only >= {"IBuilderConfig.int8_calibrator", "IInt8EntropyCalibrator2"}  # the scan sees the 10.x route
    leaks = sorted((n, sorted(found[n] - guarded)) for n in ten_only if found[n] - guarded)
    assert not leaks, f"names removed in TensorRT 11 used outside the 10.x-only route: {leaks}"


def test_parser_error_api_exists_everywhere(manifests):
    for version, name in itertools.product(ALL, PARSER_ERROR_NAMES):
        assert has(manifests[version], name), (version, name)
    for version in ALL:
        kinds = manifests[version]["classes"]["ParserError"]["member_kinds"]
        assert all(kinds[n.split(".")[1]] == "method" for n in PARSER_ERROR_NAMES if n.startswith("ParserError"))
        assert manifests[version]["classes"]["OnnxParser"]["member_kinds"]["num_errors"] == "readonly_property"


def test_member_kinds_match_how_the_code_uses_them(manifests):
    # properties are assigned/read, methods are called: a wrong guess fails only on the device
    for version in ALL:
        cfg = manifests[version]["classes"]["IBuilderConfig"]["member_kinds"]
        assert {cfg[n] for n in ("profiling_verbosity", "builder_optimization_level", "DLA_core", "default_device_type",
                                 "hardware_compatibility_level")} == {"property"}
        engine = manifests[version]["classes"]["ICudaEngine"]["member_kinds"]
        assert engine["num_io_tensors"] == "readonly_property" and engine["get_tensor_name"] == "method"
        assert manifests[version]["classes"]["Builder"]["member_kinds"]["num_DLA_cores"] == "readonly_property"
        assert manifests[version]["classes"]["IHostMemory"].get("buffer_protocol")  # bytes(serialized)


def test_subclasses_override_only_overridable_methods(usage, manifests):
    _, _, overrides = usage
    for version in ALL:
        assert "log" in overrides["ILogger"] and "log" in manifests[version]["classes"]["ILogger"]["overridable"]
    wanted = {"get_batch", "get_batch_size", "read_calibration_cache", "write_calibration_cache"}
    assert wanted <= overrides["IInt8EntropyCalibrator2"]
    for version in TEN:
        assert wanted <= set(manifests[version]["classes"]["IInt8EntropyCalibrator2"]["overridable"])


def test_every_flag_a_plan_can_name_exists_in_that_version(manifests, tmp_path):
    from trtopt.artifacts import Ranges, TensorRange
    from trtopt.trt.calibration_cache import ranges_to_cache, write_cache

    models = {k: conv_model(tmp_path / f"{k}.onnx", k) for k in ("fp32", "fp16", "int8")}
    shapes = (ShapeProfile("input", (1, 3, 8, 8), (2, 3, 8, 8), (4, 3, 8, 8)),)
    grid = [{"precision": p, "typing": t, "sparse": True, "version_compatible": True, "exclude_lean_runtime": True}
            for p in ("auto", "fp32", "fp16", "int8") for t in ("auto", "strong", "weak")]
    grid += [{"precision": "int8", "typing": "weak", "mixed_fp16": True}, {"precision": "int8", "calibrate": True},
             {"target": "jetson-orin", "dla_core": 0}, {"hardware_compatibility": "ampere+"}]
    made = 0
    for short, full in VERSIONS.items():
        m = manifests[short]
        cache = tmp_path / f"{short}.cache"
        if full.startswith("10."):
            write_cache(ranges_to_cache(Ranges({"input": TensorRange(1, -1, 1)}, "entropy", 1), trt_version=full), cache)
        for kind, opts in itertools.product(models, grid + [{"calib_cache": str(cache)}]):
            try:
                plan = make_plan(models[kind], BuildOptions(shapes=shapes, **opts), short)
            except TrtoptError:
                continue  # refused before any TensorRT call: nothing reaches the API
            made += 1
            for flag in plan.builder_flags:
                assert has(m, f"BuilderFlag.{flag}"), (short, flag)
            for flag in plan.network_flags:
                assert has(m, f"NetworkDefinitionCreationFlag.{flag}"), (short, flag)
            assert has(m, f"DeviceType.{plan.device_type}")
            assert has(m, f"HardwareCompatibilityLevel.{plan.hardware_compatibility_level}")
            assert has(m, f"ProfilingVerbosity.{plan.profiling_verbosity}")
            if plan.trt_major >= 11:
                assert plan.int8_source in (None, "qdq") and not {"FP16", "INT8"} & set(plan.builder_flags)
    assert made > 60
