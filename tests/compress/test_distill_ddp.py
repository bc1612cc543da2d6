"""The trainer under torchrun: 2 CPU processes (DDP, gloo) follow the same loss curve as 1 process."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np

from tests.helpers.env import TESTS_DIR

WORKER = TESTS_DIR / "helpers" / "distill_ddp_worker.py"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(cmd: list[str], cwd: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    env["PYTHONPATH"] = os.pathsep.join([str(TESTS_DIR.parent), env.get("PYTHONPATH", "")])
    env["CUDA_VISIBLE_DEVICES"] = ""  # gloo on the CPU even where a GPU exists
    result = subprocess.run(cmd, check=False, cwd=cwd, env=env, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]


def test_two_process_ddp_matches_one_process(tmp_path):
    _run([sys.executable, str(WORKER), "one.json", "ckpt1"], tmp_path)
    _run([sys.executable, "-m", "torch.distributed.run", "--nnodes=1", "--nproc_per_node=2",
          "--master_addr=127.0.0.1", f"--master_port={_free_port()}", str(WORKER), "two.json", "ckpt2"], tmp_path)
    one, two = (json.loads((tmp_path / f).read_text()) for f in ("one.json", "two.json"))
    assert one["world_size"] == 1 and two["world_size"] == 2
    assert len(one["step_losses"]) == len(two["step_losses"]) == 10  # 5 global batches × 2 epochs
    np.testing.assert_allclose(two["step_losses"], one["step_losses"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose([e["metric"] for e in two["eval_history"]], [e["metric"] for e in one["eval_history"]])
    for name, w in one["weights"].items():
        np.testing.assert_allclose(two["weights"][name], w, rtol=1e-4, atol=1e-6)
    assert two["group_destroyed"]
    assert sorted(p.name for p in (tmp_path / "ckpt2").iterdir()) == ["best.pt", "last.pt"]  # rank 0 only, atomic


def test_ddp_with_parameters_the_loss_does_not_reach_matches_one_process(tmp_path):
    """A student with an auxiliary head unused by distillation: DDP is told (found by the probe pass), so the
    run finishes and follows the one-process loss curve (it failed in DDP's reducer before)."""
    _run([sys.executable, str(WORKER), "one.json", "ckpt1", "aux"], tmp_path)
    _run([sys.executable, "-m", "torch.distributed.run", "--nnodes=1", "--nproc_per_node=2",
          "--master_addr=127.0.0.1", f"--master_port={_free_port()}", str(WORKER), "two.json", "ckpt2", "aux"], tmp_path)
    one, two = (json.loads((tmp_path / f).read_text()) for f in ("one.json", "two.json"))
    assert two["world_size"] == 2 and "aux.weight" in two["weights"]
    np.testing.assert_allclose(two["step_losses"], one["step_losses"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(two["weights"]["aux.weight"], one["weights"]["aux.weight"])  # untouched by training
