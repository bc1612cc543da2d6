"""trtopt.environment: the CPU's instruction sets as ONNX Runtime's INT8 kernels see them, in every environment."""

from __future__ import annotations

import pytest

from trtopt.environment import cpu_flags, cpu_isa, environment, isa_from_flags


@pytest.mark.parametrize("flags, int8, saturates", [
    ({"sse4_2", "avx", "avx2", "fma"}, "avx2", True),  # vpmaddubsw: u8×s8 pairs summed in int16
    ({"avx2", "avx_vnni"}, "avx_vnni", False),
    ({"avx2", "avx512f", "avx512bw", "avx512_vnni"}, "avx512_vnni", False),
    ({"avx2", "avx512_vnni", "amx_tile", "amx_int8"}, "amx_int8", False),
    ({"sse4_2"}, "other", True),
])
def test_x86_int8_path_and_whether_u8s8_can_saturate(flags, int8, saturates):
    isa = isa_from_flags(flags, "x86_64")
    assert isa["int8"] == int8 and isa["u8s8_saturates"] is saturates
    assert set(isa["flags"]) <= flags and isa["flags"] == sorted(isa["flags"])


def test_arm_and_unreadable_flags():
    assert isa_from_flags({"fp", "asimd", "asimddp"}, "aarch64") == {"flags": ["asimd", "asimddp"], "int8": "arm_dotprod",
                                                             "u8s8_saturates": False}
    assert isa_from_flags(None, "x86_64")["u8s8_saturates"] is True  # unknown: the safe side (7-bit weights)


def test_every_environment_records_this_machines_isa():
    env = environment()
    flags = cpu_flags()
    assert env["cpu_isa"] == cpu_isa()
    if flags is not None:
        assert env["cpu_isa"]["flags"] == sorted(f for f in env["cpu_isa"]["flags"] if f in flags)
        assert ("avx512_vnni" in flags) <= (env["cpu_isa"]["int8"] in ("avx512_vnni", "amx_int8"))
