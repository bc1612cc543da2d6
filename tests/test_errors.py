"""Tests for trtopt.errors: the one-line message helpers."""

from __future__ import annotations

import pytest

from trtopt.errors import TrtoptError, first_line, missing_dependency


@pytest.mark.parametrize("error, expected", [
    (ValueError("bad shape\nTraceback details"), "bad shape"),
    (ValueError("\n\n   \n  indented cause  \nmore"), "indented cause"),
    (RuntimeError(), "RuntimeError"),  # str(e) == "": splitlines()[0] would raise IndexError
    (RuntimeError("  \n \n"), "RuntimeError"),
    (KeyError(), "KeyError"),
    (KeyError("student.weight"), "'student.weight'"),
])
def test_first_line_is_the_first_line_with_text_or_the_type_name(error, expected):
    assert first_line(error) == expected


def test_first_line_cuts_to_the_limit_and_can_name_the_type():
    error = OSError("x" * 500)
    assert first_line(error) == "x" * 200
    assert first_line(error, limit=10) == "x" * 10
    assert first_line(error, limit=3, with_type=True) == "OSError: xxx"
    assert first_line(OSError(), with_type=True) == "OSError"  # not "OSError: " nor "OSError: OSError"


def test_missing_dependency_names_the_extra_or_the_core_package():
    optional = missing_dependency("timm", "models", "timm:resnet18")
    assert isinstance(optional, TrtoptError)
    assert str(optional) == ("timm:resnet18 needs the Python package 'timm', which is not installed; "
                             "fix: pip install 'trtopt[models]'")
    core = missing_dependency("torch-pruning", None, "structured pruning")
    assert "pip install 'torch-pruning'" in core.fix and "reinstalling trtopt" in core.fix
    assert "trtopt[" not in str(core)
