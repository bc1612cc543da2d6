"""docs/tensorrt-builds.md: every row of the option × version table is checked against the plan and the
trtexec line (no TensorRT needed), so the documented equivalence is the code's."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from tests.helpers.trt_fixtures import conv_model
from trtopt.errors import TrtoptError
from trtopt.trt.calibration_cache import ranges_to_cache, write_cache
from trtopt.trt.plan import BuildOptions, ShapeProfile, make_plan
from trtopt.trt.trtexec import trtexec_args

TABLE = Path(__file__).resolve().parents[2] / "docs" / "tensorrt-builds.md"
PROFILE = ShapeProfile("input", (1, 3, 8, 8), (4, 3, 8, 8), (16, 3, 8, 8))
# trtexec flags the table lists: precision, device and portability (shapes, memory and timing are left out)
LISTED = ("--fp16", "--int8", "--stronglyTyped", "--calib", "--useDLACore", "--allowGPUFallback", "--sparsity",
          "--versionCompatible", "--excludeLeanRuntime", "--hardwareCompatibilityLevel")


def _rows() -> list[list[str]]:
    lines = [ln for ln in TABLE.read_text().splitlines() if ln.startswith("| ") and not ln.startswith("| ONNX")]
    return [[c.strip().strip("`") for c in ln.strip("|").split("|")] for ln in lines]


ROWS = _rows()


def test_the_table_has_every_documented_case():
    assert len(ROWS) >= 30 and all(len(r) == 8 for r in ROWS)
    assert {r[2] for r in ROWS} == {"10.3", "10.16", "11.1"}


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    from trtopt.artifacts import Ranges, TensorRange

    root = tmp_path_factory.mktemp("table")
    models = {kind: conv_model(root / f"{kind}.onnx", kind) for kind in ("fp32", "fp16", "int8")}
    ranges = Ranges({"input": TensorRange(2.0, -2.0, 2.0), "y": TensorRange(4.0, -4.0, 4.0)}, "entropy", 8)
    write_cache(ranges_to_cache(ranges, trt_version="10.3.0"), root / "model.cache")
    return models, str(root / "model.cache")


def _options(flags: str, cache: str) -> BuildOptions:
    kw: dict = {"shapes": (PROFILE,)}
    tokens = shlex.split(flags)
    values = {"--precision": "precision", "--typing": "typing", "--target": "target", "--hardware-compat": "hardware_compatibility"}
    switches = {"--mixed-fp16": "mixed_fp16", "--sparse": "sparse", "--version-compatible": "version_compatible",
                "--exclude-lean-runtime": "exclude_lean_runtime"}
    while tokens:
        flag = tokens.pop(0)
        if flag in switches:
            kw[switches[flag]] = True
        elif flag in values:
            kw[values[flag]] = tokens.pop(0)
        elif flag == "--dla-core":
            kw["dla_core"] = int(tokens.pop(0))
        elif flag == "--calib-cache":
            tokens.pop(0)
            kw["calib_cache"] = cache
        else:
            raise AssertionError(f"table option {flag} is not understood by this test")
    return BuildOptions(**kw)


@pytest.mark.parametrize("row", ROWS, ids=[f"{r[0]}|{r[1]}|{r[2]}" for r in ROWS])
def test_table_row_is_what_the_plan_and_trtexec_do(row, files):
    models, cache = files
    onnx, flags, version, typing, network, builder, device, trtexec = row
    if typing.startswith("refused:"):
        with pytest.raises(TrtoptError, match=re.escape(typing.removeprefix("refused:").strip())):
            make_plan(models[onnx], _options(flags, cache), version)
        return
    plan = make_plan(models[onnx], _options(flags, cache), version)
    assert plan.typing == typing
    assert set(plan.network_flags) == set(network.split())
    assert set(plan.builder_flags) == set(builder.split())
    assert f"{plan.device_type} {plan.dla_core}".replace(" None", "") == device
    listed = [a.replace(cache, "CACHE") for a in trtexec_args(plan, engine="e") if a.split("=")[0] in LISTED]
    assert sorted(listed) == sorted(trtexec.split())
