"""INT8 calibration for TensorRT 10.x's implicit quantization: batches streamed from trtopt data, and the
``IInt8EntropyCalibrator2`` subclass that feeds them to the builder.

:class:`CalibrationBatches` needs no TensorRT and is unit-tested without a GPU; :func:`make_calibrator`
defines its TensorRT subclass inside the function (as Polygraphy's ``backend/trt/calibrator.py`` does), so
this module imports TensorRT only when a calibrator is made. TensorRT 11 has no calibrators (Q/DQ only).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from trtopt.errors import TrtoptError
from trtopt.feeds import CheckedFeed, as_feed, check_feed
from trtopt.models.spec import InputSpec


def _unused_call(obj: Any, name: str) -> Any:
    value = getattr(obj, name, "")
    return value() if callable(value) else value

class CalibrationBatches:
    """Fixed-size batches for an INT8 calibrator, streamed from trtopt data (feeds or arrays).

    TensorRT's calibrator asks for one batch at a time (``get_batch``) of exactly ``batch_size`` samples
    per input. This regroups any iterable of feeds (dict name -> array, axis 0 = samples; e.g.
    :func:`trtopt.data.iter_batches` or :func:`trtopt.data.iter_photo_crops`) into such batches, holding at
    most one batch plus one source chunk in memory, checks each chunk (`trtopt.feeds.check_feed`: names,
    per-sample shapes, sample counts, dtypes; arrays no input takes are left out), stops after
    ``max_samples`` and drops a final partial batch (counted in ``dropped``).

    ``inputs`` are the network's inputs with their per-sample shape: the calibration profile's opt shape
    without the batch axis.
    """

    def __init__(self, source: Iterable[Any], inputs: Sequence[InputSpec], batch_size: int,
                 max_samples: int | None = None):
        if batch_size < 1:
            raise TrtoptError(f"calibration batch size {batch_size} is below 1", "use e.g. 8")
        self.inputs = tuple(inputs)
        self.batch_size = batch_size
        self.max_samples = max_samples
        self.batches_served = 0
        self.dropped = 0
        self._iter = self._generate(iter(source))

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        return self._iter

    def next_batch(self) -> dict[str, np.ndarray] | None:
        """The next full batch, or None when the data is exhausted (what ``get_batch`` turns into None)."""
        batch = next(self._iter, None)
        if batch is not None:
            self.batches_served += 1
        return batch

    def _check(self, item: Any, index: int) -> CheckedFeed:
        where = f"calibration item {index}"
        feed = as_feed(item, self.inputs, where, "the network")
        return check_feed(feed, self.inputs, model="the network's calibration profile", source=where,
                          allow_extra=True, finite=False)

    def _generate(self, source: Iterator[Any]) -> Iterator[dict[str, np.ndarray]]:
        pending: dict[str, list[np.ndarray]] = {s.name: [] for s in self.inputs}
        have = 0
        taken = 0
        for index, item in enumerate(source):
            feed = self._check(item, index)
            n = feed.samples
            if self.max_samples is not None:
                n = min(n, self.max_samples - taken)
            start = 0
            while start < n:
                take = min(self.batch_size - have, n - start)
                for name, arr in feed.items():
                    pending[name].append(arr[start:start + take])
                have += take
                start += take
                taken += take
                if have == self.batch_size:
                    yield {name: np.ascontiguousarray(np.concatenate(parts)) for name, parts in pending.items()}
                    pending = {s.name: [] for s in self.inputs}
                    have = 0
            if self.max_samples is not None and taken >= self.max_samples:
                break
        self.dropped = have


def make_calibrator(trt: Any, ops: Any, batches: Any, cache_in: str | None, cache_out: str | None) -> Any:
    """An ``IInt8EntropyCalibrator2`` (TensorRT 10.x only) fed by a :class:`~trtopt.trt.calibrator.CalibrationBatches`.

    ``read_calibration_cache`` returns ``cache_in``'s bytes when given (TensorRT then skips calibration,
    what ``trtexec --calib`` does); ``write_calibration_cache`` checks the cache TensorRT wrote parses and
    saves it atomically to ``cache_out``. Defined inside a function because it subclasses a TensorRT class.
    """

    class EntropyCalibrator(trt.IInt8EntropyCalibrator2):
        def __init__(self) -> None:
            trt.IInt8EntropyCalibrator2.__init__(self)
            self.stream = ops.stream_create()
            self.device: dict[str, tuple[int, int]] = {}

        def get_batch_size(self) -> int:
            return 1  # explicit-batch networks: the batch is in the tensor shapes (as Polygraphy's calibrator)

        def get_batch(self, names: list[str]) -> list[int] | None:
            batch = batches.next_batch()
            if batch is None:
                return None
            pointers = []
            for name in names:
                host = np.ascontiguousarray(batch[name])
                ptr, size = self.device.get(name, (0, 0))
                if size < host.nbytes:
                    if ptr:
                        ops.free(ptr)
                    ptr, size = ops.malloc(host.nbytes), host.nbytes
                    self.device[name] = (ptr, size)
                ops.htod_async(ptr, host, self.stream)
                pointers.append(ptr)
            ops.stream_sync(self.stream)
            return pointers

        def read_calibration_cache(self) -> bytes | None:
            if cache_in and Path(cache_in).is_file():
                return Path(cache_in).read_bytes()
            return None

        def write_calibration_cache(self, cache: Any) -> None:
            if not cache_out:
                return
            from trtopt.files import atomic_output
            from trtopt.trt.calibration_cache import parse_cache

            data = cache.tobytes() if hasattr(cache, "tobytes") else bytes(cache)
            parse_cache(data, where="the cache TensorRT wrote")  # refuse to save something unreadable
            with atomic_output(cache_out, force=True) as tmp:
                tmp.write_bytes(data)

        def release(self) -> None:
            for ptr, _ in self.device.values():
                ops.free(ptr)
            self.device.clear()
            ops.stream_destroy(self.stream)

    return EntropyCalibrator()
