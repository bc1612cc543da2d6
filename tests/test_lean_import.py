"""`import trtopt` and `trtopt --help` stay light: no torch, onnxruntime, TensorRT or ModelOpt, no CUDA."""

from __future__ import annotations

import json
import subprocess
import sys

HEAVY = ("torch", "onnxruntime", "onnx", "tensorrt", "modelopt", "pycuda", "cuda", "torch_tensorrt", "transformers")


def _modules_after(code: str) -> list[str]:
    probe = f"import sys, json\n{code}\nprint(json.dumps(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def test_import_trtopt_loads_no_heavy_module():
    loaded = _modules_after("import trtopt")
    assert [m for m in HEAVY if m in loaded] == []


def test_cli_module_and_backend_registry_load_no_heavy_module():
    loaded = _modules_after("import trtopt.cli, trtopt.backends, trtopt.config, trtopt.report\n"
                            "trtopt.cli.build_parser().format_help()")
    assert [m for m in HEAVY if m in loaded] == []


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
