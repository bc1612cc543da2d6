"""Weight sharing: k-means codebooks of 2^b shared values per layer (or per output channel), a compact
file format for them, and fine-tuning that keeps the weights tied to their clusters.

What it buys, honestly: a clustered layer stores b-bit indices plus a tiny FP32 codebook instead of FP32
weights, so the *file you store and download* shrinks about 32/b times (≥ 7× at 4 bits on real models).
It does **not** make TensorRT or ONNX Runtime faster: the exported ONNX and any engine built from it hold
the decoded FP32 (or INT8) weights, and their math is unchanged. Combine with INT8 for speed: with
``int8_grid=True`` the codebook values sit on the symmetric INT8 grid of their group (scale = max|w| / 127,
the scale symmetric weight quantizers compute), so quantizing the shared weights to INT8 afterwards adds
no further weight error.

Pipeline::

    model, report = cluster_weights_(model, ShareConfig(bits=4))      # weights now take <= 16 values per group
    with tie_weights(model):                                          # optional recovery: any trainer
        train(model)                                                  # gradients averaged per cluster
    save_shared(model, "model.shared.npz")                            # codebooks + packed indices + FP32 rest
    load_shared("model.shared.npz", fresh_model)                      # bit-exact round trip

Clustering is 1-D k-means per group solved on the sorted values: after one sort, each Lloyd iteration is
a ``searchsorted`` of the k-1 midpoints plus prefix sums (O(k log n) per iteration instead of O(n k)), so
it converges fully in milliseconds even on a 30522×384 embedding; k-means++ seeds it (D² sampling on at
most ``init_sample`` values per group).

Which weights are clustered: the ``weight`` of every ``Linear``, ``Conv1d/2d/3d``, ``ConvTranspose*`` and
``Embedding``, subclasses included, whose weight is what its forward uses (`trtopt.compress.layers`; a
parametrized or hook-rebuilt weight is listed as skipped with the reason) (other parameters - biases, norms - and all buffers stay FP32). A clustered model carries its
spec in the attribute ``trtopt_share`` (parameter name → {"bits", "granularity"}); the codebooks and
indices are recovered from the weights themselves, so no other state is needed and a model fine-tuned
with :func:`tie_weights` saves its updated codebooks.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import zipfile
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from trtopt.compress.config import ShareConfig
from trtopt.compress.layers import CLUSTERABLE, select_layers
from trtopt.errors import TrtoptError
from trtopt.files import atomic_output
from trtopt.progress import StepCallback

FORMAT_NAME = "trtopt-shared"

FORMAT_VERSION = 1

SPEC_ATTRIBUTE = "trtopt_share"

@dataclass(frozen=True)
class LayerShare:
    """One clustered (or skipped) weight. Errors are of the weights vs their FP32 originals."""

    name: str
    module_type: str
    shape: tuple[int, ...]
    parameters: int
    bits: int | None
    groups: int
    distinct_values_max: int
    rel_error: float | None
    bytes_fp32: int
    bytes_shared: int
    skipped: str | None = None

@dataclass
class ShareResult:
    """What :func:`cluster_weights_` did, JSON-ready via :meth:`to_dict`.

    ``bytes_*`` count the model state: FP32 bytes of everything vs b-bit indices + FP32 codebooks of the
    clustered weights + the unclustered state at its dtype (the payload of :func:`save_shared`, before
    the file's few hundred bytes of header).
    """

    config: ShareConfig
    layers: list[LayerShare]
    state_bytes_fp32: int
    state_bytes_shared: int
    seconds: float
    note: str = ("weight sharing shrinks storage and downloads only: the ONNX model and TensorRT engine hold "
                 "decoded FP32/INT8 weights, so inference math and latency are unchanged")

    @property
    def compression_ratio(self) -> float:
        return self.state_bytes_fp32 / max(self.state_bytes_shared, 1)

    def to_dict(self) -> dict[str, Any]:
        from trtopt._config import to_dict

        clustered = [la for la in self.layers if la.skipped is None]
        return {"config": to_dict(self.config), "clustered_layers": len(clustered),
                "clustered_parameters": sum(la.parameters for la in clustered),
                "state_bytes_fp32": self.state_bytes_fp32, "state_bytes_shared": self.state_bytes_shared,
                "compression_ratio": self.compression_ratio, "seconds": self.seconds, "note": self.note,
                "layers": [dict(vars(la), shape=list(la.shape)) for la in self.layers]}

def kmeans_1d(values: Any, k: int, max_iterations: int = 300, init_sample: int = 16384,
              seed: int = 0, init: str = "kmeans++") -> tuple[Any, Any, int]:
    """Lloyd's k-means on each row of ``values`` (G, n), seeded by k-means++; returns (centroids, labels, iters).

    Args:
        values: float tensor (G, n): G independent groups of n scalars (torch or numpy).
        k: clusters per group (>= 1).
        max_iterations: upper bound on Lloyd iterations; stops early when no assignment changes.
        init_sample: k-means++ D² sampling runs on at most this many values per group.
        seed: seed of the sampling.
        init: "kmeans++" (D² sampling: k passes over each group), or "blend" (for quick estimates with many
            groups and large k: seed i is the mean of the group's (i + 0.5) / k quantile and of the value
            (i + 0.5) / k of the way from its min to its max; one gather, and after 30 Lloyd iterations within
            ~2× of k-means++'s inertia on Gaussian rows at k = 256, lower at k = 16-64).

    Returns:
        centroids: float64 tensor (G, k), ascending per row (an unused centroid keeps its seed value);
        labels: int64 tensor (G, n): index of each value's centroid (nearest; ties go to the upper one);
        iterations: Lloyd iterations run.

    Why sorted: in 1-D the clusters of a fixed set of ascending centroids are contiguous runs of the
    sorted values, cut at the midpoints between neighbours. So an iteration is a ``searchsorted`` of
    k-1 midpoints and a difference of prefix sums - no (n, k) distance matrix.
    """
    import torch

    x = torch.as_tensor(values).to(torch.float64)
    if x.ndim != 2 or x.shape[1] == 0:
        raise TrtoptError(f"kmeans_1d needs a (groups, n) array with n >= 1, got shape {tuple(x.shape)}",
                          "reshape the weights to (groups, values per group)")
    g, n = x.shape
    sorted_x, _ = torch.sort(x, dim=1)
    prefix = torch.nn.functional.pad(torch.cumsum(sorted_x, dim=1), (1, 0))
    if init == "blend":
        t = (torch.arange(k, dtype=torch.float64) + 0.5) / k
        spaced = sorted_x[:, :1] + (sorted_x[:, -1:] - sorted_x[:, :1]) * t
        centroids = (sorted_x[:, (t * n).long().clamp(max=n - 1)] + spaced) / 2
    else:
        centroids = _kmeans_pp(sorted_x, k, init_sample, seed)
    rows = torch.arange(g).unsqueeze(1)
    cuts = None
    iterations = 0
    for iterations in range(1, max_iterations + 1):
        mids = (centroids[:, 1:] + centroids[:, :-1]) / 2
        new_cuts = torch.cat([torch.zeros(g, 1, dtype=torch.long), torch.searchsorted(sorted_x, mids, right=False),
                              torch.full((g, 1), n, dtype=torch.long)], dim=1)
        if cuts is not None and torch.equal(new_cuts, cuts):
            break
        cuts = new_cuts
        counts = cuts[:, 1:] - cuts[:, :-1]
        sums = prefix[rows, cuts[:, 1:]] - prefix[rows, cuts[:, :-1]]
        centroids = torch.where(counts > 0, sums / counts.clamp(min=1), centroids)
        centroids, _ = torch.sort(centroids, dim=1)
    mids = (centroids[:, 1:] + centroids[:, :-1]) / 2
    labels = torch.searchsorted(mids.contiguous(), x.contiguous(), right=False)
    return centroids, labels, iterations

def _kmeans_pp(sorted_x: Any, k: int, init_sample: int, seed: int) -> Any:
    """k-means++ seeds (G, k), ascending: D² sampling on a random subset of each (sorted) row."""
    import torch

    g, n = sorted_x.shape
    gen = torch.Generator().manual_seed(seed)
    if n > init_sample:
        pick = torch.randint(0, n, (g, init_sample), generator=gen)
        sample = torch.gather(sorted_x, 1, pick)
    else:
        sample = sorted_x
    rows = torch.arange(g)
    first = torch.randint(0, sample.shape[1], (g,), generator=gen)
    centers = [sample[rows, first]]
    dist = (sample - centers[0].unsqueeze(1)) ** 2
    for _ in range(1, k):
        totals = dist.sum(1, keepdim=True)
        # A group whose values are all covered (fewer distinct values than k) repeats a centroid.
        weights = torch.where(totals > 0, dist, torch.ones_like(dist))
        nxt = torch.multinomial(weights, 1, generator=gen).squeeze(1)
        c = sample[rows, nxt]
        centers.append(c)
        dist = torch.minimum(dist, (sample - c.unsqueeze(1)) ** 2)
    return torch.sort(torch.stack(centers, dim=1), dim=1).values

def snap_to_int8_grid(centroids: Any) -> Any:
    """Centroids (G, k) moved to the nearest multiple of their group's symmetric INT8 scale.

    The scale is max|centroid| / 127 per group, so the largest-magnitude centroid lands exactly on ±127
    steps and max|w| of the shared weights (what a symmetric quantizer derives its scale from) is that
    centroid: quantizing afterwards reproduces every value.
    """
    import torch

    scale = centroids.abs().amax(dim=1, keepdim=True) / 127.0
    safe = torch.where(scale > 0, scale, torch.ones_like(scale))
    return torch.where(scale > 0, torch.round(centroids / safe).clamp(-127, 127) * safe, centroids)

def _grouped(weight: Any, granularity: str) -> Any:
    """A weight viewed as (groups, values per group): one row per layer, or per output channel (axis 0)."""
    return weight.reshape(1, -1) if granularity == "layer" else weight.reshape(weight.shape[0], -1)

def cluster_weights_(model: Any, config: ShareConfig = ShareConfig(),
                     on_step: StepCallback | None = None) -> tuple[Any, ShareResult]:
    """Replace each selected weight by its nearest of 2^b k-means centroids (per layer or per channel).

    Args:
        model: an ``nn.Module``; modified **in place** (and returned), on the CPU or any device.
        config: bits, granularity, which layers, INT8-grid snapping, k-means settings.
        on_step: called with "clustering NAME" as each weight is clustered (progress).

    Returns:
        (model, report): the model's clustered weights take at most 2^b distinct values per group; its
        attribute ``trtopt_share`` records which weights are shared and how (used by :func:`save_shared`
        and :func:`tie_weights`). The report lists every candidate weight (clustered, or skipped and why)
        with bits, relative error ||W - W_shared||_F / ||W||_F and bytes before/after.
    """
    import time

    import torch

    start = time.perf_counter()
    spec: dict[str, dict[str, Any]] = dict(getattr(model, SPEC_ATTRIBUTE, {}) or {})
    layers: list[LayerShare] = []
    for mod_name, module, problem in select_layers(model, CLUSTERABLE, config.layers, config.exclude, "weight sharing"):
        weight = module.weight
        name = f"{mod_name}.weight" if mod_name else "weight"
        kind = type(module).__name__
        numel = weight.numel()
        fp32 = numel * 4
        bits = config.layer_bits.get(mod_name, config.bits)
        granularity = layer_granularity(config, mod_name)
        k = 2 ** bits
        if problem:
            layers.append(LayerShare(name, kind, tuple(weight.shape), numel, None, 0, 0, None, fp32, fp32,
                                     skipped=f"left FP32: {problem}"))
            continue
        if numel < max(config.min_elements, k + 1):
            layers.append(LayerShare(name, kind, tuple(weight.shape), numel, None, 0, 0, None, fp32, fp32,
                                     skipped=f"{numel} elements: fewer than min_elements={config.min_elements} "
                                             f"or 2^b+1={k + 1}, a codebook would not pay"))
            continue
        if on_step:
            on_step(f"clustering {name}")
        with torch.no_grad():
            shared, err = _cluster_tensor(weight, bits, config, granularity)
            weight.copy_(shared.to(weight.device, weight.dtype))
            distinct = _distinct_per_group(weight.detach().cpu(), granularity)
        groups = _grouped(weight, granularity).shape[0]
        spec[name] = {"bits": bits, "granularity": granularity}
        layers.append(LayerShare(name, kind, tuple(weight.shape), numel, bits, groups, distinct, err,
                                 fp32, _shared_bytes(numel, groups, bits)))
    if not any(la.skipped is None for la in layers):
        raise TrtoptError("no weight was clustered (no clusterable layer, or all below min_elements)",
                          f"cluster a model with {', '.join(CLUSTERABLE[:3])}... layers (or subclasses) or lower min_elements")
    setattr(model, SPEC_ATTRIBUTE, spec)
    fp32_total, shared_total = _state_sizes(model, spec)
    return model, ShareResult(config, layers, fp32_total, shared_total, time.perf_counter() - start)

def layer_granularity(config: ShareConfig, module_name: str) -> str:
    """The codebook granularity ("layer" or "channel") of one module's weight under ``config``: its entry in
    ``layer_granularity``, else ``granularity`` ("auto" without a per-layer choice: "layer")."""
    chosen = config.layer_granularity.get(module_name, config.granularity)
    return "layer" if chosen == "auto" else chosen


def _cluster_tensor(weight: Any, bits: int, config: ShareConfig, granularity: str,
                    init: str = "kmeans++") -> tuple[Any, float]:
    """(the weight with each value of a group (``granularity``) replaced by the group's nearest of 2^bits k-means
    centroids (``init``: their seeding, see `kmeans_1d`), as float64 on the CPU, in the weight's shape; relative
    error ||W - W_shared||_F / ||W||_F)."""
    import torch

    original = weight.detach().cpu().to(torch.float64)
    grouped = _grouped(original, granularity)
    centroids, _, _ = kmeans_1d(grouped, 2 ** bits, config.max_iterations, config.init_sample, config.seed, init)
    if config.int8_grid:
        centroids = torch.sort(snap_to_int8_grid(centroids), dim=1).values
    # Round the codebook to the weight's dtype first, then assign: the stored values are exactly these.
    centroids = centroids.to(weight.dtype).to(torch.float64)
    mids = ((centroids[:, 1:] + centroids[:, :-1]) / 2).contiguous()
    labels = torch.searchsorted(mids, grouped.contiguous())
    shared = torch.gather(centroids, 1, labels).reshape(weight.shape)
    err = float(torch.linalg.norm(shared - original) / torch.linalg.norm(original).clamp(min=1e-30))
    return shared, err

@dataclass
class BitChoice:
    """Per-layer bits (and codebook granularity) chosen by :func:`choose_bits` from measured sensitivity
    (JSON-ready via :meth:`to_dict`).

    Attributes:
        layer_bits: module name → bits for every clustered layer (protected ones included).
        layer_granularity: module name → "layer" or "channel" for every clustered layer (all the config's
            granularity unless it is "auto").
        unshared: module names the choice leaves in FP32 (granularity "auto" only: where no codebook is
            worth its error, e.g. a depthwise convolution whose per-layer codebook is too coarse and whose
            per-channel ones cost more than its FP32 weights). Layers with fewer weights than the largest
            candidate's codebook are in ``layer_bits`` at that size and stay FP32 (skipped by clustering).
        protected: module name → why it is kept at ``protected_bits`` (first/last layer, depthwise).
        sensitivity: per unprotected layer, ``{"name", "parameters", "output_rel_error": {bits: value}}``:
            the relative output error with only that layer clustered at those bits; granularity "auto": per
            layer (protected ones too), per-layer codebooks there, per-channel ones in
            ``"output_rel_error_per_channel"``; an option storing no fewer bytes than its start is not measured.
        predicted_ratio: FP32 state bytes / shared state bytes of the choice (exact: sizes are computed).
        measured: the probe's result for the whole model clustered with ``layer_bits``.
        evaluations: probe calls spent (sensitivity + search).
        target_met: whether the requested ratio / drop limit was met.
    """

    layer_bits: dict[str, int]
    layer_granularity: dict[str, str]
    unshared: list[str]
    protected: dict[str, str]
    sensitivity: list[dict[str, Any]]
    predicted_ratio: float
    measured: dict[str, Any]
    evaluations: int
    target_met: bool

    def to_dict(self) -> dict[str, Any]:
        return dict(vars(self))


def choose_bits(model: Any, config: ShareConfig, probe: Callable[[Any], Mapping[str, Any]],
                on_step: StepCallback | None = None) -> BitChoice:
    """Mixed bit-widths for weight sharing: per-layer bits (and, with granularity "auto", per-layer or
    per-channel codebooks) from measured sensitivity, to meet ``config.target_ratio`` (storage) and/or
    ``config.max_accuracy_drop`` (task metric).

    Method: (1) one probe with forward hooks finds the Conv/Linear layers' execution order, so the first
    and last are protected (``protect_first_last``), as are depthwise convolutions (``protect_depthwise``);
    (2) each other layer starts at the largest candidate bits (at the config's granularity), taken as
    lossless, and its options - each smaller candidate bit-width - are clustered alone and the relative
    output error e(l, option) measured (``probe(model)["output_rel_error"]``; the model is restored after
    each). With granularity "auto" every layer starts in FP32 (exact, unshared) and its options are every
    candidate bit-width (protected layers: ``protected_bits`` and above) per layer and per channel whose
    exact size (packed indices + FP32 codebooks) is below its FP32 bytes, all measured - so a protected
    layer whose 8-bit per-layer codebook is too coarse stays FP32 or gets per-channel codebooks;
    (3) per layer, the options' (bytes saved, e²) points are reduced to their lower convex hull from the
    start, and the layers move along their hulls greedily, always taking the step with the smallest added
    output error power Δe² per byte saved (errors of different layers add roughly as independent noise -
    the assumption of HAWQ-style allocation; on convex hulls this greedy order is the Lagrangian-optimal
    path of the multiple-choice knapsack); (4) on that path the first state reaching ``target_ratio`` is
    taken, and with ``max_accuracy_drop`` the furthest state whose *measured* drop (whole model clustered)
    is within the limit, found by bisection.

    Args:
        model: the original ``nn.Module``; left unchanged.
        config: `ShareConfig` with ``target_ratio`` and/or ``max_accuracy_drop`` set.
        probe: ``probe(model) -> {"drop", "output_rel_error", ...}``, e.g.
            `trtopt.compress.distill.fidelity_probe` on held-out data.
        on_step: progress messages.

    Raises:
        TrtoptError: neither target given; ``target_ratio`` unreachable with ``candidate_bits`` (the message
            gives the largest ratio reachable); every layer too small for the largest candidate's codebook.
    """
    import copy
    import heapq
    from dataclasses import replace

    import torch

    from trtopt.compress.config import GRANULARITIES

    if config.target_ratio is None and config.max_accuracy_drop is None:
        raise TrtoptError("mixed bit-widths need a target", "set target_ratio or max_accuracy_drop")
    step = on_step or (lambda _m: None)
    top = max(config.candidate_bits)
    clusterable = [(n, m) for n, m, problem in select_layers(model, CLUSTERABLE, config.layers, config.exclude,
                                                             "weight sharing")
                   if problem is None and m.weight.numel() >= config.min_elements]
    # Layers too small for a codebook at the largest candidate stay FP32 (left out of the choice, counted as
    # FP32 state, given the top bits so that cluster_weights_ skips and lists them); they count for first/last.
    usable = [(n, m) for n, m in clusterable if m.weight.numel() >= 2 ** top + 1]
    small = [n for n, m in clusterable if m.weight.numel() < 2 ** top + 1]
    if small and not usable:
        raise TrtoptError(f"mixed bit-widths: every layer has fewer than {2 ** top + 1} weights (2^{top} + 1, the "
                          f"largest candidate's codebook), so all would stay FP32",
                          "use uniform bits (bits=4 without target_ratio / max_accuracy_drop)")
    order: list[str] = []
    handles = [m.register_forward_hook(lambda _m, _i, _o, n=n: order.append(n) if n not in order else None)
               for n, m in clusterable if not _is_embedding(m)]
    try:
        evaluations = 1
        probe(model)
    finally:
        for h in handles:
            h.remove()
    protected: dict[str, str] = {}
    if config.protect_first_last and order:
        protected[order[0]] = "first Conv/Linear layer"
        protected[order[-1]] = "last Conv/Linear layer"
    if config.protect_depthwise:
        protected.update({n: "depthwise convolution" for n, m in usable
                          if getattr(m, "groups", 1) > 1 and m.groups == getattr(m, "in_channels", 0)})
    granularities = GRANULARITIES if config.granularity == "auto" else (config.granularity,)
    params = {n: m.weight.numel() for n, m in usable}
    channels = {n: m.weight.shape[0] for n, m in usable}

    auto = config.granularity == "auto"
    start: dict[str, tuple[int, str] | None] = {  # None: FP32, not shared
        n: None if auto else ((config.protected_bits if n in protected else top), config.granularity) for n in params}

    def size(n: str, option: tuple[int, str] | None) -> int:
        if option is None:
            return 4 * params[n]
        bits, granularity = option
        return _shared_bytes(params[n], 1 if granularity == "layer" else channels[n], bits)

    def candidates(n: str) -> list[tuple[int, str]]:
        allowed = sorted({*config.candidate_bits, config.protected_bits})
        bits = [b for b in allowed if b >= config.protected_bits] if n in protected else list(config.candidate_bits)
        return [(b, g) for g in granularities for b in bits if (b, g) != start[n] and size(n, (b, g)) < size(n, start[n])]

    free = [(n, m) for n, m in usable if auto or n not in protected]
    sensitivity = []
    hulls: dict[str, list[tuple[int, float, Any]]] = {}  # name → [(bytes saved, e², option)] convex
    # Sensitivity only ranks layers: 30 Lloyd iterations from blended quantile / evenly spaced seeds are within a few percent of the
    # converged error and far cheaper on large tensors (k-means++ seeding makes k passes over every group: minutes
    # for 8-bit per-channel codebooks); the chosen bits are then clustered fully.
    quick = replace(config, max_iterations=min(config.max_iterations, 30))
    for n, m in free:
        step(f"sensitivity of {n}")
        options = candidates(n)
        errors: dict[tuple[int, str] | None, float] = {start[n]: 0.0}
        original = m.weight.detach().clone()
        try:
            for b, g in options:
                with torch.no_grad():
                    shared, _ = _cluster_tensor(original, b, quick, g, init="blend")
                    m.weight.copy_(shared.to(m.weight.device, m.weight.dtype))
                errors[(b, g)] = float(probe(model)["output_rel_error"])
                evaluations += 1
        finally:
            with torch.no_grad():
                m.weight.copy_(original)
        points = sorted(((size(n, start[n]) - size(n, o), e * e, o) for o, e in errors.items()), key=lambda p: p[:2])
        hulls[n] = _lower_hull(points)
        measured_options = {o: e for o, e in errors.items() if o is not None}
        entry = {"name": n, "parameters": params[n],
                 "output_rel_error": {b: e for (b, g), e in measured_options.items() if g != "channel" or not auto}}
        if auto:
            entry["output_rel_error_per_channel"] = {b: e for (b, g), e in measured_options.items() if g == "channel"}
        sensitivity.append(entry)
    fp32_total = sum(t.numel() * (4 if t.is_floating_point() else t.element_size()) for t in model.state_dict().values())
    fixed = fp32_total - sum(4 * p for p in params.values())  # state that stays FP32

    def state_bytes(choice: Mapping[str, tuple[int, str]]) -> int:
        return fixed + sum(size(n, choice[n]) for n in params)

    current = dict(start)
    position = {n: 0 for n in hulls}
    path = [dict(current)]
    heap: list[tuple[float, str]] = []

    def push(n: str) -> None:
        hull, i = hulls[n], position[n]
        if i + 1 < len(hull):
            (saved0, noise0, _), (saved1, noise1, _) = hull[i], hull[i + 1]
            heapq.heappush(heap, ((noise1 - noise0) / (saved1 - saved0), n))

    for n in hulls:
        push(n)
    while heap:
        _, n = heapq.heappop(heap)
        position[n] += 1
        current[n] = hulls[n][position[n]][2]
        path.append(dict(current))
        push(n)
    ratios = [fp32_total / state_bytes(c) for c in path]
    index = len(path) - 1
    if config.target_ratio is not None:
        reach = [i for i, r in enumerate(ratios) if r >= config.target_ratio]
        if not reach and config.max_accuracy_drop is None:
            raise TrtoptError(f"a {config.target_ratio}× smaller state is out of reach with candidate bits "
                              f"{list(config.candidate_bits)} and the protected layers (at most {ratios[-1]:.2f}×)",
                              "lower target_ratio, add lower candidate_bits, or turn off protect_first_last/protect_depthwise")
        index = reach[0] if reach else index

    def split(i: int) -> tuple[dict[str, int], dict[str, str], list[str]]:
        # too-small layers get the top bits, which cluster_weights_ skips and lists as too small for a codebook
        shared = {n: (top, "layer") for n in small} | {n: o for n, o in path[i].items() if o is not None}
        return ({n: o[0] for n, o in shared.items()}, {n: o[1] for n, o in shared.items()},
                [n for n, o in path[i].items() if o is None])

    def measure(i: int) -> dict[str, Any]:
        nonlocal evaluations
        trial = copy.deepcopy(model)
        bits, grans, unshared = split(i)
        cluster_weights_(trial, replace(config, layer_bits=bits, layer_granularity=grans, target_ratio=None,
                                        max_accuracy_drop=None, exclude=(*config.exclude, *unshared)))
        evaluations += 1
        step(f"measuring {ratios[i]:.2f}× ({i}/{len(path) - 1} steps along the allocation path)")
        return dict(probe(trial))

    measured = None
    if config.max_accuracy_drop is not None:
        lo, hi = 0, len(path) - 1
        results = {0: measure(0)}
        if results[0]["drop"] > config.max_accuracy_drop:
            hi = 0
        while lo < hi:  # the largest index whose measured drop is within the limit (drop ~ monotone along the path)
            mid = (lo + hi + 1) // 2
            results[mid] = measure(mid)
            if results[mid]["drop"] <= config.max_accuracy_drop:
                lo = mid
            else:
                hi = mid - 1
        index = lo
        measured = results.get(lo) or measure(lo)
    measured = measured or measure(index)
    met = ((config.target_ratio is None or ratios[index] >= config.target_ratio) and
           (config.max_accuracy_drop is None or measured["drop"] <= config.max_accuracy_drop))
    bits, grans, unshared = split(index)
    return BitChoice(layer_bits=bits, layer_granularity=grans, unshared=unshared, protected=protected, sensitivity=sensitivity,
                     predicted_ratio=ratios[index], measured=measured, evaluations=evaluations, target_met=met)


def _lower_hull(points: list[tuple[int, float, Any]]) -> list[tuple[int, float, Any]]:
    """The lower convex hull of (x, y, payload) points sorted by x, from the first point on (x ascending,
    slopes ascending): the options worth taking in a greedy trade of y for x. Ties in x keep the lowest y."""
    hull: list[tuple[int, float, Any]] = []
    for p in points:
        if hull and p[0] == hull[-1][0]:  # sorted: the earlier point has the lower y
            continue
        while len(hull) >= 2 and ((hull[-1][1] - hull[-2][1]) * (p[0] - hull[-2][0])
                                  >= (p[1] - hull[-2][1]) * (hull[-1][0] - hull[-2][0])):
            hull.pop()
        hull.append(p)
    return hull


def _is_embedding(module: Any) -> bool:
    import torch

    return isinstance(module, torch.nn.Embedding)


@dataclass
class ShareOutcome:
    """What :func:`share_weights` did: the clustered model and, JSON-ready via :meth:`to_dict`, every number.

    Attributes:
        model: the clustered (and fine-tuned) model, tied codebooks recorded in ``trtopt_share``.
        result: the `ShareResult` of the clustering (sizes, per-layer bits and errors).
        bits: the mixed-bit choice (None for uniform bits).
        fidelity: probe result right after clustering (None without a probe).
        finetune: the tied fine-tuning's `DistillResult.to_dict()` without per-step losses (None without).
        fidelity_finetuned: probe result after fine-tuning (None without fine-tuning or probe).
    """

    model: Any
    result: ShareResult
    bits: BitChoice | None = None
    fidelity: dict[str, Any] | None = None
    finetune: dict[str, Any] | None = None
    fidelity_finetuned: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {**self.result.to_dict(), "bit_choice": self.bits.to_dict() if self.bits else None,
                "fidelity": self.fidelity, "finetune": self.finetune, "fidelity_finetuned": self.fidelity_finetuned}

    @property
    def final_fidelity(self) -> dict[str, Any] | None:
        """The fidelity of the model as returned (after fine-tuning when there was any)."""
        return self.fidelity_finetuned or self.fidelity


def tied_distill_config(config: ShareConfig, embeddings: bool, checkpoint_dir: str | None = None,
                        resume: bool = False) -> Any:
    """The `DistillConfig` of the tied fine-tuning: ``config.finetune`` with the loss by output kind (logits:
    KD; embeddings: its cosine or mse loss, cosine by default), checkpoints in ``checkpoint_dir`` (four per
    run counted in steps, else at epoch ends) and, with ``resume``, continuing from its ``last.pt`` when one
    exists."""
    from dataclasses import replace

    tune = config.finetune
    resume_from = checkpoint_dir if resume and checkpoint_dir and (Path(checkpoint_dir) / "last.pt").exists() else None
    loss = ("cosine" if tune.output_loss == "kl" else tune.output_loss) if embeddings else "kl"
    return replace(tune, output_loss=loss, checkpoint_dir=checkpoint_dir, resume_from=resume_from,
                   checkpoint_every=max(1, tune.max_steps // 4) if tune.max_steps else None)


def share_weights(model: Any, config: ShareConfig, probe: Callable[[Any], Mapping[str, Any]] | None = None,
                  train_data: Any = None, embeddings: bool = False, checkpoint_dir: str | None = None,
                  resume: bool = False, progress: Callable[[Any], None] | None = None,
                  on_step: StepCallback | None = None) -> ShareOutcome:
    """The weight-sharing stage end to end: (mixed) bits → clustering → fidelity → tied fine-tuning → fidelity.

    Args:
        model: the original ``nn.Module``; not modified (a copy is clustered) - it is the teacher of the
            fine-tuning.
        config: `ShareConfig`. ``target_ratio`` / ``max_accuracy_drop`` pick per-layer bits with
            :func:`choose_bits` (needs ``probe``); ``finetune`` (a `DistillConfig`) fine-tunes with weights
            tied (needs ``train_data``).
        probe: ``probe(model) -> dict`` measuring fidelity to the original (e.g.
            `trtopt.compress.distill.fidelity_probe` on held-out data); None: no fidelity figures.
        train_data: ``(inputs, labels-or-None)`` for fine-tuning (and nothing else).
        embeddings: the model outputs embeddings (cosine loss) rather than logits (KD loss).
        checkpoint_dir / resume: fine-tuning checkpoints, and continuing from them (see `distill`).
        progress: the fine-tuning's per-step callback (`DistillProgress`).
        on_step: progress messages.

    Raises:
        TrtoptError: mixed bits without a probe, fine-tuning without data, and the errors of the steps.
    """
    import copy
    from dataclasses import replace

    from trtopt.compress.trainer import frozen_batchnorm

    mixed = config.target_ratio is not None or config.max_accuracy_drop is not None
    if mixed and probe is None:
        raise TrtoptError("mixed bit-widths (target_ratio / max_accuracy_drop) are chosen from measured fidelity, "
                          "but no data was given", "give evaluation data (trtopt cluster --data ...)")
    if config.finetune is not None and train_data is None:
        raise TrtoptError("tied fine-tuning (finetune) was asked for but no training data was given",
                          "give training data (trtopt cluster --train-data or --data), or no finetune")
    choice = choose_bits(model, config, probe, on_step) if mixed else None
    if choice is not None:
        config = replace(config, layer_bits=choice.layer_bits, layer_granularity=choice.layer_granularity,
                         exclude=(*config.exclude, *choice.unshared))
    clustered, result = cluster_weights_(copy.deepcopy(model), config, on_step)
    outcome = ShareOutcome(clustered, result, choice, dict(probe(clustered)) if probe else None)
    if config.finetune is not None:
        if on_step:
            tune = config.finetune
            length = f"{tune.max_steps} steps" if tune.max_steps else f"{tune.epochs} epoch(s)"
            on_step(f"tied fine-tuning for {length} (distillation from the original)")
        clustered.requires_grad_(True)  # the copy of a model that once served as a teacher comes frozen
        # Normalization statistics stay the original's: fine-tuning on a few samples should recover the
        # original function, not re-estimate BatchNorm from small batches.
        with frozen_batchnorm(clustered):
            run = finetune_shared(clustered, model, train_data,
                                  tied_distill_config(config, embeddings, checkpoint_dir, resume), progress=progress)
        outcome.model = run.student
        summary = run.to_dict()
        summary["loss_first"], summary["loss_last"] = run.step_losses[0], run.step_losses[-1]
        summary.pop("step_losses", None)
        outcome.finetune = summary
        outcome.fidelity_finetuned = dict(probe(outcome.model)) if probe else None
        fp32, shared = _state_sizes(outcome.model, outcome.model.trtopt_share)
        outcome.result = replace(outcome.result, state_bytes_fp32=fp32, state_bytes_shared=shared)
    return outcome


def _shared_bytes(numel: int, groups: int, bits: int) -> int:
    """Bytes of one clustered weight: groups × 2^b FP32 codebook values + packed b-bit indices."""
    return groups * (2 ** bits) * 4 + math.ceil(numel * bits / 8)

def _state_sizes(model: Any, spec: Mapping[str, Mapping[str, Any]]) -> tuple[int, int]:
    """(FP32 bytes of the whole state dict, bytes with the shared weights stored as codebook + indices)."""
    fp32 = shared = 0
    for name, tensor in model.state_dict().items():
        fp32 += tensor.numel() * (4 if tensor.is_floating_point() else tensor.element_size())
        if name in spec:
            shared += _shared_bytes(tensor.numel(), _grouped(tensor, spec[name]["granularity"]).shape[0], spec[name]["bits"])
        else:
            shared += tensor.numel() * tensor.element_size()
    return fp32, shared

def _distinct_per_group(weight: Any, granularity: str) -> int:
    """The largest number of distinct values in any group."""
    grouped = _grouped(weight, granularity)
    s = grouped.sort(dim=1).values
    return int(((s[:, 1:] != s[:, :-1]).sum(1) + 1).max())

def codes(weight: Any, granularity: str, bits: int, name: str = "weight") -> tuple[np.ndarray, np.ndarray]:
    """Recover (codebook (G, 2^b), indices (G, n) uint8) from a shared weight's values.

    The codebook row lists the group's distinct values ascending (padded with its last value); indices
    point into it, so ``codebook[g, indices[g]]`` reproduces the weight exactly.

    Raises:
        TrtoptError: a group has more than 2^b distinct values (the weights were changed without
        :func:`tie_weights`).
    """
    import torch

    grouped = _grouped(weight.detach().cpu(), granularity)
    values, order = torch.sort(grouped, dim=1)
    new = torch.ones_like(values, dtype=torch.long)
    new[:, 1:] = (values[:, 1:] != values[:, :-1]).long()
    rank = torch.cumsum(new, dim=1) - 1
    k = 2 ** bits
    most = int(rank[:, -1].max()) + 1
    if most > k:
        raise TrtoptError(f"{name} has {most} distinct values in a group, more than 2^{bits}={k}",
                          "cluster it again with cluster_weights_, or fine-tune inside tie_weights(model)")
    indices = torch.empty_like(rank).scatter_(1, order, rank)
    codebook = torch.empty(grouped.shape[0], k, dtype=grouped.dtype)
    last = values.gather(1, rank.argmax(dim=1, keepdim=True))  # pad with each group's largest value
    codebook[:] = last
    codebook.scatter_(1, rank, values)
    return codebook.numpy(), indices.to(torch.uint8).numpy()

@dataclass
class TieHandle:
    """Hooks that keep shared weights tied while any trainer runs; :meth:`remove` (or leaving the ``with``) ends it."""

    handles: list[Any] = field(default_factory=list)

    def remove(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles.clear()

@contextmanager
def tie_weights(model: Any) -> Iterator[TieHandle]:
    """Keep each shared weight's clusters tied during training, whatever the trainer or optimizer.

    For each weight listed in ``model.trtopt_share``: a gradient hook replaces every element's gradient
    by its cluster's mean gradient (so all members of a cluster move together - the centroid's update,
    Deep Compression's rule with the mean instead of the sum, which keeps step sizes independent of
    cluster size), and a forward pre-hook on the owning module re-projects the weight onto its cluster
    means before the first forward after each in-place update (so an optimizer whose update is not
    elementwise cannot untie them; with elementwise ones - SGD, Adam(W), clipping - equal gradients
    already keep members equal). The membership is the one at entry; values (the codebook) move freely. On exit the weights are re-projected once more, so
    :func:`save_shared` finds at most 2^b values per group.
    """
    import torch

    spec = getattr(model, SPEC_ATTRIBUTE, None)
    if not spec:
        raise TrtoptError("the model has no shared weights (no trtopt_share attribute)", "run cluster_weights_(model) first")
    params = dict(model.named_parameters())
    modules = dict(model.named_modules())
    handle = TieHandle()
    projectors = []
    for name, info in spec.items():
        param = params[name]
        _, idx = codes(param, info["granularity"], info["bits"], name)
        groups = idx.shape[0]
        k = 2 ** info["bits"]
        flat_ids = (torch.as_tensor(idx, dtype=torch.long) + torch.arange(groups).unsqueeze(1) * k).reshape(-1)
        flat_ids = flat_ids.to(param.device)
        counts = torch.bincount(flat_ids, minlength=groups * k).clamp(min=1).to(torch.float64)

        def mean_per_cluster(t: Any, ids: Any = flat_ids, n: Any = counts, size: int = groups * k) -> Any:
            # float64 sums: the mean of equal float32 values is then exactly that value (a tied weight that
            # did not move keeps its bits), and large clusters don't lose precision.
            sums = torch.zeros(size, dtype=torch.float64, device=t.device).index_add_(0, ids, t.reshape(-1).double())
            return (sums / n)[ids].to(t.dtype).reshape(t.shape)

        if param.requires_grad:  # a frozen weight gets no gradient; the projection below still holds it tied
            handle.handles.append(param.register_hook(mean_per_cluster))

        seen = {"version": None}

        def project(p: Any = param, fn: Callable = mean_per_cluster, seen: dict = seen, force: bool = False) -> None:
            # Only after the weight changed in place (an optimizer step bumps its version counter): eval
            # forwards and the several forwards of one step cost nothing.
            if force or p._version != seen["version"]:
                with torch.no_grad():
                    p.copy_(fn(p.detach()))
                seen["version"] = p._version

        projectors.append(project)
        owner = modules[name.rsplit(".", 1)[0]] if "." in name else model
        handle.handles.append(owner.register_forward_pre_hook(lambda _m, _a, fn=project: fn()))
    try:
        yield handle
    finally:
        handle.remove()
        for project in projectors:
            project(force=True)

def finetune_shared(model: Any, teacher: Any, train_data: Any, config: Any = None, **kwargs: Any) -> Any:
    """Distill a clustered ``model`` from ``teacher`` with its weights kept tied; returns the `DistillResult`.

    `trtopt.compress.distill.distill` inside :func:`tie_weights`: every argument after ``model`` is passed on
    (``config`` a `DistillConfig`; ``eval_data``, ``metric``, ``progress`` as keywords). The model is
    trained in place; afterwards each group still holds at most 2^b values (its codebook moved).
    """
    from trtopt.compress.distill import distill

    with tie_weights(model):
        return distill(model, teacher, train_data, config, **kwargs)

def pack_bits(indices: np.ndarray, bits: int) -> np.ndarray:
    """Pack unsigned ints < 2^bits into a uint8 array, ``bits`` bits each, little-endian within the stream."""
    flat = np.ascontiguousarray(indices, dtype=np.uint8).reshape(-1)
    if bits == 8:
        return flat.copy()
    planes = (flat[:, None] >> np.arange(bits, dtype=np.uint8)) & 1
    return np.packbits(planes.reshape(-1), bitorder="little")

def unpack_bits(packed: np.ndarray, bits: int, count: int) -> np.ndarray:
    """Inverse of :func:`pack_bits`: ``count`` uint8 values."""
    if bits == 8:
        return packed[:count].astype(np.uint8)
    planes = np.unpackbits(packed, count=count * bits, bitorder="little").reshape(count, bits)
    return (planes << np.arange(bits, dtype=np.uint8)).sum(axis=1, dtype=np.uint8)

def architecture_fingerprint(model: Any) -> str:
    """SHA-256 of the model's state-dict keys, shapes and dtypes: which architecture a file is for."""
    items = [(k, list(v.shape), str(v.dtype)) for k, v in model.state_dict().items()]
    return hashlib.sha256(json.dumps(items).encode()).hexdigest()

def _content_hash(arrays: Mapping[str, np.ndarray]) -> str:
    h = hashlib.sha256()
    for key in sorted(arrays):
        h.update(key.encode())
        h.update(str(arrays[key].dtype).encode())
        h.update(np.ascontiguousarray(arrays[key]).tobytes())
    return h.hexdigest()

@dataclass(frozen=True)
class SharedWeightsArtifact:
    """What :func:`save_shared` wrote (JSON-ready via ``vars``/:meth:`to_dict`)."""

    path: str
    file_bytes: int
    state_bytes_fp32: int
    payload_bytes: int
    clustered_tensors: int
    dense_tensors: int
    sha256: str

    @property
    def compression_ratio(self) -> float:
        """FP32 bytes of the model state / bytes of the file."""
        return self.state_bytes_fp32 / max(self.file_bytes, 1)

    def to_dict(self) -> dict[str, Any]:
        return dict(vars(self), compression_ratio=self.compression_ratio)

def save_shared(model: Any, path: str | os.PathLike, force: bool = False) -> SharedWeightsArtifact:
    """Write a clustered model's state compactly: FP32 codebooks + packed b-bit indices + the rest as stored.

    File: a deflate-compressed ``.npz`` (zip) with a JSON header (``meta``: format name and version, the
    architecture fingerprint, per tensor its bits/granularity/shape/offsets, a SHA-256 of the content)
    and four arrays (``codebooks`` float32, ``indices`` packed uint8, ``dense_<dtype>`` per dtype). Every
    tensor is one slice of a shared array, so the header cost does not grow with the number of layers.
    Written atomically; an existing file is refused without ``force``.

    Raises:
        TrtoptError: the model has no shared weights, or a shared weight has more than 2^b values per group.
    """
    spec = getattr(model, SPEC_ATTRIBUTE, None)
    if not spec:
        raise TrtoptError("the model has no shared weights (no trtopt_share attribute)", "run cluster_weights_(model) first")
    state = model.state_dict()
    codebooks: list[np.ndarray] = []
    packed: list[np.ndarray] = []
    dense: dict[str, list[np.ndarray]] = {}
    entries: dict[str, Any] = {}
    cb_off = ix_off = 0
    dense_off: dict[str, int] = {}
    fp32_bytes = 0
    for name, tensor in state.items():
        t = tensor.detach().cpu()
        fp32_bytes += t.numel() * (4 if t.is_floating_point() else t.element_size())
        if name in spec:
            bits, gran = spec[name]["bits"], spec[name]["granularity"]
            if t.dtype.is_floating_point is False or str(t.dtype) != "torch.float32":
                raise TrtoptError(f"shared weight {name} is {t.dtype}, the format stores float32 codebooks",
                                  "cluster the model in float32")
            cb, idx = codes(t, gran, bits, name)
            pk = pack_bits(idx, bits)
            entries[name] = {"kind": "shared", "bits": bits, "granularity": gran, "shape": list(t.shape),
                             "codebook": [cb_off, cb.size], "indices": [ix_off, pk.size]}
            codebooks.append(cb.reshape(-1).astype(np.float32))
            packed.append(pk)
            cb_off += cb.size
            ix_off += pk.size
        else:
            arr = t.numpy()
            key = f"dense_{arr.dtype}"
            off = dense_off.get(key, 0)
            entries[name] = {"kind": "dense", "array": key, "dtype": str(arr.dtype), "shape": list(t.shape),
                             "slice": [off, arr.size]}
            dense.setdefault(key, []).append(arr.reshape(-1))
            dense_off[key] = off + arr.size
    arrays = {"codebooks": np.concatenate(codebooks) if codebooks else np.zeros(0, np.float32),
              "indices": np.concatenate(packed) if packed else np.zeros(0, np.uint8)}
    arrays.update({k: np.concatenate(v) for k, v in dense.items()})
    digest = _content_hash(arrays)
    meta = {"format": FORMAT_NAME, "version": FORMAT_VERSION, "architecture": architecture_fingerprint(model),
            "tensors": entries, "sha256": digest}
    arrays["meta"] = np.frombuffer(json.dumps(meta, separators=(",", ":")).encode(), dtype=np.uint8)
    with atomic_output(path, force) as tmp:
        buf = io.BytesIO()
        np.savez_compressed(buf, **arrays)
        tmp.write_bytes(buf.getvalue())
    payload = sum(a.nbytes for k, a in arrays.items() if k != "meta")
    n_shared = sum(1 for e in entries.values() if e["kind"] == "shared")
    return SharedWeightsArtifact(str(path), Path(path).stat().st_size, fp32_bytes, payload, n_shared,
                                 len(entries) - n_shared, digest)

def read_shared(path: str | os.PathLike) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """The header and arrays of a shared-weights file, checked (format, version, SHA-256 of the content).

    Raises:
        TrtoptError: missing, truncated or corrupted file; another format or version.
    """
    from trtopt.files import require_file

    p = require_file(path, "shared-weights file", "check the path")
    bad = (f"{p} is not a readable trtopt shared-weights file (truncated or corrupted)",
           "write it again with save_shared / trtopt cluster")
    try:
        with np.load(p, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
        meta = json.loads(arrays.pop("meta").tobytes().decode())
    except (zipfile.BadZipFile, ValueError, EOFError, OSError, KeyError, UnicodeDecodeError) as e:
        raise TrtoptError(*bad) from e
    if not isinstance(meta, dict) or meta.get("format") != FORMAT_NAME:
        raise TrtoptError(*bad)
    if meta.get("version") != FORMAT_VERSION:
        raise TrtoptError(f"{p} has format version {meta.get('version')}, this trtopt reads {FORMAT_VERSION}",
                          "write it again with this trtopt version")
    if _content_hash(arrays) != meta.get("sha256"):
        raise TrtoptError(f"{p} is corrupted: its content does not match the SHA-256 in its header", bad[1])
    return meta, arrays

def decode_shared(meta: Mapping[str, Any], arrays: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Tensor name → decoded array (shared weights rebuilt from codebook[indices]) of a read file."""
    out: dict[str, np.ndarray] = {}
    for name, e in meta["tensors"].items():
        shape = tuple(e["shape"])
        n = int(np.prod(shape, dtype=np.int64))
        if e["kind"] == "shared":
            k = 2 ** e["bits"]
            c0, cn = e["codebook"]
            i0, inn = e["indices"]
            cb = arrays["codebooks"][c0:c0 + cn].reshape(-1, k)
            idx = unpack_bits(arrays["indices"][i0:i0 + inn], e["bits"], n).reshape(cb.shape[0], -1)
            out[name] = np.take_along_axis(cb, idx.astype(np.int64), axis=1).reshape(shape)
        else:
            s0, sn = e["slice"]
            out[name] = arrays[e["array"]][s0:s0 + sn].reshape(shape)
    return out

def load_shared(path: str | os.PathLike, model: Any) -> Any:
    """Load a file written by :func:`save_shared` into ``model`` (same architecture) in place; returns it.

    The decoded weights equal the saved ones bit for bit; ``model.trtopt_share`` is restored, so the
    model can be saved again or fine-tuned with :func:`tie_weights`.

    Raises:
        TrtoptError: unreadable/corrupted file (see :func:`read_shared`), or a file for another
        architecture (the message names the first tensor that differs).
    """
    import torch

    meta, arrays = read_shared(path)
    expected = model.state_dict()
    if meta["architecture"] != architecture_fingerprint(model):
        names = list(meta["tensors"])
        which = next((f"{k}: file {meta['tensors'][k]['shape']}, model {list(v.shape)}" for k, v in expected.items()
                      if k in meta["tensors"] and meta["tensors"][k]["shape"] != list(v.shape)), None)
        missing = [k for k in expected if k not in meta["tensors"]] + [k for k in names if k not in expected]
        detail = which or (f"tensor {missing[0]!r} is in only one of them" if missing else "dtypes differ")
        raise TrtoptError(f"{path} was saved from another architecture ({detail})",
                          "load it into the model it was clustered from")
    decoded = decode_shared(meta, arrays)
    model.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in decoded.items()}, strict=True)
    setattr(model, SPEC_ATTRIBUTE, {k: {"bits": e["bits"], "granularity": e["granularity"]}
                                    for k, e in meta["tensors"].items() if e["kind"] == "shared"})
    return model
