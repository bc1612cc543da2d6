"""Worker for tests/test_distill_ddp.py: one tiny distillation run; rank 0 writes its record as JSON.

Run directly (1 process) or under ``python -m torch.distributed.run --nproc_per_node=2`` (DDP, gloo on
the CPU). Usage: ``distill_ddp_worker.py OUT.json CHECKPOINT_DIR [aux]``; with ``aux`` the student carries an
auxiliary head the distillation loss never reaches (DDP must be told about unused parameters).
"""

from __future__ import annotations

import json
import os
import sys

import torch
from torch import nn

from trtopt.compress.config import DistillConfig
from trtopt.compress.distill import distill


class MLP(nn.Module):
    def __init__(self, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(8, hidden)
        self.fc2 = nn.Linear(hidden, 4)

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(x)))


class MLPWithAuxHead(MLP):
    """The MLP with an auxiliary head (used by another task's loss, not by distillation)."""

    def __init__(self, hidden: int):
        super().__init__(hidden)
        self.aux = nn.Linear(hidden, 2)

    def aux_output(self, x):
        return self.aux(torch.relu(self.fc1(x)))


def main() -> None:
    out, ckpt = sys.argv[1], sys.argv[2]
    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(71, 8, generator=g)  # 4 global batches of 16 + a last one of 7 (4 + 3 samples per rank)
    torch.manual_seed(0)
    aux = sys.argv[3:] == ["aux"]
    teacher, student = MLP(32).eval(), (MLPWithAuxHead if aux else MLP)(12)
    y = teacher(x).argmax(1).detach()
    config = DistillConfig(epochs=2, batch_size=16, lr=2e-2, alpha=0.3, temperature=2.0, warmup_steps=2,
                           feature_pairs=(("fc1", "fc1"),), feature_weight=0.5, checkpoint_dir=ckpt)
    result = distill(student, teacher, (x, y), config, eval_data=(x, y))
    record = result.to_dict()
    record["weights"] = {k: v.tolist() for k, v in result.student.state_dict().items()}
    record["rank"] = int(os.environ.get("RANK", "0"))
    record["group_destroyed"] = not torch.distributed.is_initialized()
    if record["rank"] == 0:
        with open(out, "w") as f:
            json.dump(record, f)


if __name__ == "__main__":
    main()
