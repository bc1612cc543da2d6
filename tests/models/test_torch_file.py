"""Reading torch files as data: plain containers load, anything that would run code or is damaged does not."""

from __future__ import annotations

import pytest
import torch

from trtopt.errors import TrtoptError
from trtopt.models.torch_file import read_plain, try_read_plain


class _Payload:
    """Unpickling this would create the marker file: proves nothing ran."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_a_state_dict_reads_back_exactly(tmp_path):
    path = tmp_path / "w.pt"
    state = {"weight": torch.arange(6.0).reshape(2, 3), "step": 3}
    torch.save(state, path)
    back = read_plain(path, "checkpoint", "fix")
    assert torch.equal(back["weight"], state["weight"]) and back["step"] == 3
    assert try_read_plain(path)["step"] == 3


def test_a_pickle_that_names_code_is_refused_and_nothing_runs(tmp_path):
    marker = tmp_path / "ran"
    path = tmp_path / "evil.pt"
    torch.save({"x": _Payload(marker)}, path)
    assert try_read_plain(path) is None
    with pytest.raises(TrtoptError) as e:
        read_plain(path, "checkpoint", "save model.state_dict()")
    assert str(path) in str(e.value) and "save model.state_dict()" in str(e.value)
    assert not marker.exists()


def test_a_truncated_file_names_the_file(tmp_path):
    path = tmp_path / "cut.pt"
    torch.save({"w": torch.zeros(1000)}, path)
    path.write_bytes(path.read_bytes()[:200])
    assert try_read_plain(path) is None
    with pytest.raises(TrtoptError, match="checkpoint .*cut.pt cannot be read"):
        read_plain(path, "checkpoint", "resume from another checkpoint")
