"""The package's import graph is a DAG whose edges point down the pipeline (DESIGN.md's layer rules).

Every import counts: module-level, function-local (a lazy import is still a dependency) and literal
``import_module`` targets. The checker itself is tested on planted cycles and planted rule breaks, so a
green result means something.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers.import_graph import cycles, import_graph, violations

PACKAGE = Path(__file__).resolve().parents[1] / "trtopt"

#: Stages and what composes them: what runtime adapters must never reach for.
STAGES = ("trtopt.compress", "trtopt.export", "trtopt.quant", "trtopt.edge.export", "trtopt.edge.executorch",
          "trtopt.edge.litert", "trtopt.trt.build", "trtopt.trt.bundle", "trtopt.trt.plan", "trtopt.trt.trtexec",
          "trtopt.trt.sparsity", "trtopt.measure", "trtopt.speedup_search")
COMPOSERS = ("trtopt.report", "trtopt.pipeline", "trtopt.config", "trtopt.demo", "trtopt.doctor")

RULES = [
    # nothing but the CLI itself (and `python -m trtopt`) imports the CLI
    (("trtopt",), ("trtopt.cli",), ()),
    # torch-side stages: no export, no measurement, no TensorRT, no ONNX runtime adapters
    (("trtopt.compress",), ("trtopt.export", "trtopt.measure", "trtopt.trt", "trtopt.backends", "trtopt.speedup_search",
                            "trtopt.quant", "trtopt.edge", "trtopt.report", "trtopt.pipeline", "trtopt.config"), ()),
    # runtime adapters: no stage, report, pipeline or doctor (engine/sidecar reading, CUDA and edge sidecars are
    # runtime pieces they may use)
    (("trtopt.backends",), STAGES + COMPOSERS, ()),
    # leaves import nothing above them
    (("trtopt.errors", "trtopt.files", "trtopt.environment", "trtopt._config", "trtopt._version", "trtopt.metrics",
      "trtopt.progress", "trtopt.artifacts"), ("trtopt.models", "trtopt.data", "trtopt.datasets", "trtopt.backends") + STAGES + COMPOSERS,
     ()),
    # the report renders JSON: it runs nothing
    (("trtopt.report",), STAGES + ("trtopt.backends", "trtopt.pipeline", "trtopt.models", "trtopt.data"), ()),
]


def _exempt_main(bad: list[str]) -> list[str]:
    return [b for b in bad if not b.startswith("trtopt.__main__ imports trtopt.cli")]


def test_the_package_import_graph_is_acyclic():
    assert cycles(import_graph(PACKAGE)) == []


def test_imports_point_down_the_pipeline():
    assert _exempt_main(violations(import_graph(PACKAGE), RULES)) == []


def _write(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root / "pkg"


@pytest.mark.parametrize("how", ["module-level", "function-local", "import_module", "registry", "relative"])
def test_a_planted_cycle_is_found(tmp_path, how):
    back = {"module-level": "from pkg.a import f\n",
            "function-local": "def g():\n    from pkg.a import f\n    return f\n",
            "import_module": "import importlib\nM = importlib.import_module('pkg.a')\n",
            "registry": "REGISTRY = {'a': 'pkg.a'}\n",
            "relative": "from .a import f\n"}[how]
    pkg = _write(tmp_path, {"pkg/__init__.py": "", "pkg/a.py": "from pkg.b import g\ndef f():\n    pass\n",
                            "pkg/b.py": back + "def g():\n    pass\n" if how != "function-local" else back})
    assert cycles(import_graph(pkg)) == [["pkg.a", "pkg.b"]]


def test_type_checking_imports_are_not_edges(tmp_path):
    pkg = _write(tmp_path, {"pkg/__init__.py": "", "pkg/a.py": "from pkg.b import g\n",
                            "pkg/b.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg.a import X\n"
                                        "def g():\n    pass\n"})
    assert cycles(import_graph(pkg)) == []


def test_a_planted_rule_break_is_found(tmp_path):
    pkg = _write(tmp_path, {"pkg/__init__.py": "", "pkg/cli/__init__.py": "", "pkg/cli/main.py": "",
                            "pkg/backends/__init__.py": "", "pkg/backends/ort.py": "def f():\n    import pkg.report\n",
                            "pkg/report.py": "from pkg.cli import main\n"})
    rules = [(("pkg",), ("pkg.cli",), ()), (("pkg.backends",), ("pkg.report",), ())]
    assert violations(import_graph(pkg), rules) == ["pkg.report imports pkg.cli.main", "pkg.backends.ort imports pkg.report"]
