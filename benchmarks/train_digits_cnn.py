"""Train `trtopt.models.nets.DigitsCNN` on scikit-learn's digits: the weights behind ``zoo:digits_cnn``.

Deterministic (fixed seed, fixed thread count, deterministic algorithms, no data-loader workers): the
same torch build on the same CPU type gives the same weights. Trains on the ``train`` split only,
reports accuracy on ``test``, and writes

- ``trtopt/models/weights/digits_cnn.pt``: the state dict (float32, ~380 KB), loaded by ``zoo:digits_cnn``;
- ``benchmarks/results/digits_cnn_training.json``: recipe, seconds, train/test accuracy, parameter
  count, hashes of the split and of the weights, environment.

Run: ``.venv/bin/python benchmarks/train_digits_cnn.py`` (about half a minute on 2 CPU cores).
Both outputs are overwritten; pass ``--weights``/``--out`` elsewhere to train without replacing them.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import math
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from trtopt.datasets import DIGITS_LOW, load_dataset
from trtopt.environment import environment
from trtopt.files import atomic_output, sha256_file, write_json
from trtopt.models.nets import DigitsCNN

ROOT = Path(__file__).resolve().parent.parent
WEIGHTS = ROOT / "trtopt" / "models" / "weights" / "digits_cnn.pt"
RESULTS = ROOT / "benchmarks" / "results" / "digits_cnn_training.json"


def shift_augment(x: torch.Tensor, max_shift: int, generator: torch.Generator) -> torch.Tensor:
    """Translate each image by a random whole number of pixels in [-max_shift, max_shift] per axis,
    filling with blank pixels (0, i.e. DIGITS_LOW after normalization)."""
    if max_shift == 0:
        return x
    n, _, h, w = x.shape
    padded = nn.functional.pad(x, (max_shift,) * 4, value=DIGITS_LOW)
    dy = torch.randint(0, 2 * max_shift + 1, (n,), generator=generator)
    dx = torch.randint(0, 2 * max_shift + 1, (n,), generator=generator)
    rows = (dy[:, None] + torch.arange(h)[None, :])[:, None, :, None].expand(n, x.shape[1], h, w + 2 * max_shift)
    cropped = torch.gather(padded, 2, rows)
    cols = (dx[:, None] + torch.arange(w)[None, :])[:, None, None, :].expand(n, x.shape[1], h, w)
    return torch.gather(cropped, 3, cols)


@torch.inference_mode()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 512) -> float:
    model.eval()
    correct = 0
    for start in range(0, len(x), batch_size):
        correct += int((model(x[start:start + batch_size]).argmax(1) == y[start:start + batch_size]).sum())
    return correct / len(x)


def state_digest(state: dict[str, torch.Tensor]) -> str:
    """SHA-256 over the tensors' names, dtypes, shapes and bytes (independent of the file container)."""
    h = hashlib.sha256()
    for key, value in state.items():
        h.update(f"{key}:{value.dtype}:{tuple(value.shape)}".encode())
        h.update(value.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--weight-decay", type=float, default=1e-4)
    parser.add_argument("--label-smoothing", type=float, default=0.05)
    parser.add_argument("--max-shift", type=int, default=1, help="random translation augmentation, pixels")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (fixed: results depend on it)")
    parser.add_argument("--weights", type=Path, default=WEIGHTS)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True)
    torch.manual_seed(args.seed)
    generator = torch.Generator().manual_seed(args.seed)

    train, test = load_dataset("digits", "train"), load_dataset("digits", "test")
    x_train, y_train = torch.from_numpy(train.inputs["input"]), torch.from_numpy(train.labels)
    x_test, y_test = torch.from_numpy(test.inputs["input"]), torch.from_numpy(test.labels)

    model = DigitsCNN()
    steps_per_epoch = math.ceil(len(x_train) / args.batch_size)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=args.epochs * steps_per_epoch)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=args.label_smoothing)

    history = []
    start = time.perf_counter()
    for epoch in range(1, args.epochs + 1):
        model.train()
        order = torch.randperm(len(x_train), generator=generator)
        total_loss = 0.0
        for i in range(steps_per_epoch):
            idx = order[i * args.batch_size:(i + 1) * args.batch_size]
            xb = shift_augment(x_train[idx], args.max_shift, generator)
            loss = loss_fn(model(xb), y_train[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            total_loss += loss.item() * len(idx)
        row = {"epoch": epoch, "train_loss": round(total_loss / len(x_train), 5)}
        if epoch % 10 == 0 or epoch == args.epochs:
            row["test_accuracy"] = round(accuracy(model, x_test, y_test), 5)
        history.append(row)
        print(f"epoch {epoch:3d}  loss {row['train_loss']:.4f}" +
              (f"  test acc {row['test_accuracy']:.4f}" if "test_accuracy" in row else ""), flush=True)
    train_seconds = time.perf_counter() - start

    model.eval()
    train_acc, test_acc = accuracy(model, x_train, y_train), accuracy(model, x_test, y_test)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    buffer = io.BytesIO()  # the archive name inside the zip comes from the file name: keep it fixed
    torch.save(state, buffer)
    with atomic_output(args.weights, force=True) as tmp:
        tmp.write_bytes(buffer.getvalue())
    n_params = sum(p.numel() for p in model.parameters())
    result = {
        "model": "trtopt.models.nets:DigitsCNN",
        "widths": [model.conv1.out_channels, model.conv2.out_channels, model.conv3.out_channels],
        "dataset": "digits",
        "train_samples": len(train),
        "test_samples": len(test),
        "split_test_indices_sha256": hashlib.sha256(test.indices.tobytes()).hexdigest(),
        "recipe": {"epochs": args.epochs, "batch_size": args.batch_size, "optimizer": "AdamW", "lr": args.lr,
                   "weight_decay": args.weight_decay, "schedule": "cosine per step to 0",
                   "label_smoothing": args.label_smoothing, "max_shift_px": args.max_shift,
                   "seed": args.seed, "threads": args.threads, "deterministic_algorithms": True},
        "train_seconds": round(train_seconds, 2),
        "train_accuracy": round(train_acc, 5),
        "test_accuracy": round(test_acc, 5),
        "test_correct": int(round(test_acc * len(test))),
        "parameters": n_params,
        "weights_file": str(args.weights.relative_to(ROOT) if args.weights.is_relative_to(ROOT) else args.weights),
        "weights_size_bytes": args.weights.stat().st_size,
        "weights_sha256": sha256_file(args.weights),
        "state_dict_sha256": state_digest(state),
        "torch_version": torch.__version__,
        "numpy_version": np.__version__,
        "history": history,
        "environment": environment(),
    }
    write_json(args.out, result, force=True)
    print(f"train acc {train_acc:.4f}  test acc {test_acc:.4f} ({result['test_correct']}/{len(test)})  "
          f"{train_seconds:.1f} s  {n_params} parameters  {result['weights_size_bytes']} bytes")
    print(f"wrote {args.weights} and {args.out}")


if __name__ == "__main__":
    main()
