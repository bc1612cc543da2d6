"""`import trtopt` and `trtopt --help` stay light, and no submodule pulls in a runtime it does not own.

Every module of the package is imported on its own in a fresh interpreter: none may load ONNX Runtime,
TensorRT, ModelOpt, pycuda, Torch-TensorRT or the edge runtimes at import time (they are imported inside
the functions that use them), and none may initialize CUDA through torch. The checker is shown to catch a
planted heavy import.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.helpers.import_graph import module_names

PACKAGE = Path(__file__).resolve().parents[1] / "trtopt"
HEAVY = ("torch", "onnxruntime", "onnx", "tensorrt", "modelopt", "pycuda", "cuda", "torch_tensorrt", "transformers")
#: What no module may load when it is imported (torch itself may be, for the torch-side stages).
RUNTIMES = ("onnxruntime", "tensorrt", "modelopt", "pycuda", "torch_tensorrt", "executorch", "ai_edge_litert",
            "litert_torch", "tensorflow")
#: Modules allowed to import one of RUNTIMES at import time because they are that runtime's adapter (none today:
#: every adapter imports its runtime when a model is loaded).
OWNERS: dict[str, tuple[str, ...]] = {}

_PROBE = """
import importlib, json, sys
importlib.import_module(sys.argv[1])
torch = sys.modules.get("torch")
cuda = bool(torch is not None and hasattr(torch, "cuda") and torch.cuda.is_initialized())
print(json.dumps({"modules": sorted(sys.modules), "cuda_initialized": cuda}))
"""


def probe(module: str, env: dict[str, str] | None = None) -> dict:
    """Import ``module`` alone in a fresh interpreter; returns the modules it loaded and whether CUDA was initialized."""
    out = subprocess.run([sys.executable, "-c", _PROBE, module], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, f"importing {module} failed:\n{out.stderr[-2000:]}"
    return json.loads(out.stdout.strip().splitlines()[-1])


def heavy_imports(module: str, found: dict) -> list[str]:
    """The runtimes ``module`` loaded that it does not own, and CUDA initialization."""
    loaded = set(found["modules"])
    bad = [r for r in RUNTIMES if r in loaded and r not in OWNERS.get(module, ())]
    if found["cuda_initialized"]:
        bad.append("torch CUDA initialization")
    return bad


def _modules_after(code: str) -> list[str]:
    probe_code = f"import sys, json\n{code}\nprint(json.dumps(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", probe_code], capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def test_import_trtopt_loads_no_heavy_module():
    loaded = _modules_after("import trtopt")
    assert [m for m in HEAVY if m in loaded] == []


def test_cli_module_and_backend_registry_load_no_heavy_module():
    loaded = _modules_after("import trtopt.cli.main, trtopt.backends, trtopt.config, trtopt.report.model\n"
                            "trtopt.cli.main.build_parser().format_help()")
    assert [m for m in HEAVY if m in loaded] == []


def test_no_submodule_loads_a_runtime_or_initializes_cuda_at_import():
    modules = sorted(m for m in module_names(PACKAGE) if m != "trtopt.__main__")  # __main__ runs the CLI
    with ThreadPoolExecutor(max_workers=max(2, (os.cpu_count() or 2))) as pool:
        found = dict(zip(modules, pool.map(probe, modules)))
    bad = {m: heavy_imports(m, f) for m, f in found.items() if heavy_imports(m, f)}
    assert bad == {}


def test_the_checker_catches_a_planted_heavy_import(tmp_path):
    pytest.importorskip("onnxruntime")
    (tmp_path / "planted_heavy.py").write_text("import onnxruntime\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])}
    assert heavy_imports("planted_heavy", probe("planted_heavy", env)) == ["onnxruntime"]


def test_tensorrt_backend_probe_does_not_import_tensorrt():
    loaded = _modules_after("from trtopt.backends import get_backend\nget_backend('tensorrt').availability()")
    assert "tensorrt" not in loaded


def test_public_api_resolves_lazily():
    import trtopt

    assert callable(trtopt.export_onnx) and callable(trtopt.load_model)
    assert "export_onnx" in trtopt.__all__


def test_help_works():
    result = subprocess.run([sys.executable, "-m", "trtopt", "--help"], capture_output=True, text=True)
    assert result.returncode == 0
    for command in ("export", "bench", "compare", "doctor", "demo"):
        assert command in result.stdout
