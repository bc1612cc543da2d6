"""Low-rank factorization: Linear and Conv2d layers replaced by thinner pairs (or triples) of layers.

- ``Linear(in, out)`` → ``Sequential(Linear(in, r, bias=False), Linear(r, out))`` by truncated SVD,
  W ≈ (U_r √S_r)(√S_r V_rᵀ); the squared Frobenius error is exactly the discarded singular values'
  energy Σ_{i>r} s_i² (Eckart-Young).
- ``Conv2d(C, O, k×k)`` → one of
  * ``channel``: SVD of the kernel reshaped to (O, C·kh·kw): conv kh×kw C→r (same stride, padding,
    dilation), then conv 1×1 r→O with the bias; error = discarded energy, like Linear.
  * ``spatial``: SVD of the kernel reshaped to (C·kh, O·kw): conv kh×1 C→r (vertical stride/padding),
    then conv 1×kw r→O (horizontal ones) with the bias (Jaderberg et al. 2014, scheme 2); error =
    discarded energy of that matrix.
  * ``tucker2``: HOSVD on the two channel modes: conv 1×1 C→r_in, conv kh×kw r_in→r_out (the core),
    conv 1×1 r_out→O with the bias; ranks from each mode unfolding's energy; error = ||W||² - ||core||².
  * ``auto`` (default): of the three, the one with the fewest parameters at the requested energy.
  Grouped convolutions (groups > 1) and 1×1 kernels with spatial are left alone (listed as skipped).

Rank per layer, from one of three rules (all measured in the layer's own singular values):
``energy`` (smallest rank keeping that fraction of Σ s_i²), ``params`` (a global parameter budget:
ranks are grown greedily where they keep the most energy per parameter until the budget is spent), or
``ranks`` (explicit per layer). A *measured latency target* is met by `trtopt.speedup_search.search_speedup`:
it lowers the kept energy step by step (then bisects), exports each candidate and times it in ONNX Runtime
interleaved with the original's ONNX. No split is thinner than ``min_rank`` channels (16 by default:
thinner ones ran slower than the dense layer in ONNX Runtime on the CPU, benchmarks/bench_lowrank_layers.py).
A layer whose chosen rank would not reduce its parameters (and, when example inputs are given, its MACs)
is left as it is and listed with the reason.

The result is a plain ``nn.Module`` (``nn.Sequential`` of standard layers in place of each factorized
one) that exports to ONNX with `trtopt.export.export_onnx` like the original. Unlike weight sharing,
this *does* change the math TensorRT/ONNX Runtime run: fewer MACs, usually faster when ranks are well
below the break-even rank; measure it (benchmarks/bench_lowrank.py).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from trtopt.compress.config import LowRankConfig
from trtopt.errors import TrtoptError
from trtopt.progress import StepCallback


@dataclass(frozen=True)
class LayerRank:
    """One layer's outcome (JSON-ready via ``vars``)."""

    name: str
    module_type: str
    shape: tuple[int, ...]
    scheme: str | None
    rank: Any
    max_rank: int
    energy_kept: float | None
    rel_error: float | None
    params_before: int
    params_after: int
    macs_before: int | None = None
    macs_after: int | None = None
    skipped: str | None = None

@dataclass
class LowRankResult:
    """What :func:`factorize_` did; ``to_dict()`` is JSON-ready.

    ``parameters_*`` and ``bytes_*`` (FP32) cover the whole model; per-layer rows cover each candidate.
    """

    config: LowRankConfig
    layers: list[LayerRank]
    parameters_before: int
    parameters_after: int
    seconds: float

    @property
    def parameter_reduction(self) -> float:
        """1 - after / before, over the whole model."""
        return 1.0 - self.parameters_after / max(self.parameters_before, 1)

    def to_dict(self) -> dict[str, Any]:
        from trtopt._config import to_dict

        done = [la for la in self.layers if la.skipped is None]
        macs = [la for la in done if la.macs_before is not None]
        return {"config": to_dict(self.config), "factorized_layers": len(done),
                "skipped_layers": len(self.layers) - len(done), "parameters_before": self.parameters_before,
                "parameters_after": self.parameters_after, "bytes_fp32_before": 4 * self.parameters_before,
                "bytes_fp32_after": 4 * self.parameters_after, "parameter_reduction": self.parameter_reduction,
                "compression_ratio_parameters": self.parameters_before / max(self.parameters_after, 1),
                "factorized_macs_before": sum(la.macs_before for la in macs) if macs else None,
                "factorized_macs_after": sum(la.macs_after for la in macs) if macs else None,
                "seconds": self.seconds,
                "layers": [dict(vars(la), shape=list(la.shape)) for la in self.layers]}

@dataclass
class _Plan:
    """A decomposition of one layer: its spectrum, the parameter cost of rank r, and a builder."""

    name: str
    module: Any
    scheme: str
    sq: np.ndarray                       # squared singular values, descending (the energy spectrum)
    max_rank: int                        # largest rank the matrix allows: min of its two sides
    params: Callable[[int], int]         # parameters of the factorized layer at rank r
    macs: Callable[[int], int | None]    # MACs per sample at rank r (None without example shapes)
    build: Callable[[int], Any]          # rank → replacement module

    def rank_for_energy(self, energy: float) -> int:
        total = float(self.sq.sum())
        if total <= 0:
            return 1
        cum = np.cumsum(self.sq) / total
        return int(min(np.searchsorted(cum, energy - 1e-12) + 1, self.max_rank))

    def energy_at(self, r: int) -> float:
        total = float(self.sq.sum())
        return float(self.sq[:r].sum() / total) if total > 0 else 1.0

def _svd(matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Thin SVD in float64 (exact enough that the error identity holds to float32 rounding).

    Runs on one thread: layer matrices are small (≤ a few thousand per side), and multi-threaded LAPACK
    next to other busy processes was measured 20× slower here (0.7 s vs 0.03 s for 128×576).
    """
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        u, s, vt = torch.linalg.svd(torch.from_numpy(np.asarray(matrix, dtype=np.float64)), full_matrices=False)
    finally:
        torch.set_num_threads(threads)
    return u.numpy(), s.numpy(), vt.numpy()

def _tensor(a: np.ndarray, like: Any) -> Any:
    import torch

    return torch.as_tensor(np.ascontiguousarray(a), dtype=like.dtype, device=like.device)

def _linear_plan(name: str, m: Any, shapes: Mapping[str, Any]) -> _Plan:
    import torch

    w = m.weight.detach().cpu().numpy()
    out_f, in_f = w.shape
    u, s, vt = _svd(w)
    tokens = shapes.get(name, {}).get("tokens")

    def build(r: int) -> Any:
        root = np.sqrt(s[:r])
        first = torch.nn.Linear(in_f, r, bias=False, **_dd(m))
        second = torch.nn.Linear(r, out_f, bias=m.bias is not None, **_dd(m))
        with torch.no_grad():
            first.weight.copy_(_tensor(root[:, None] * vt[:r], m.weight))
            second.weight.copy_(_tensor(u[:, :r] * root[None, :], m.weight))
            if m.bias is not None:
                second.bias.copy_(m.bias.detach())
        return torch.nn.Sequential(first, second)

    bias = out_f if m.bias is not None else 0
    return _Plan(name, m, "svd", s ** 2, min(in_f, out_f), lambda r: r * (in_f + out_f) + bias,
                 lambda r: None if tokens is None else tokens * r * (in_f + out_f), build)

def _dd(m: Any) -> dict[str, Any]:
    """Device and dtype of the layer being replaced, for its replacements."""
    return {"device": m.weight.device, "dtype": m.weight.dtype}

def _conv_kwargs(m: Any) -> dict[str, Any]:
    return {"stride": m.stride, "padding": m.padding, "dilation": m.dilation, "padding_mode": m.padding_mode}

def _conv_channel_plan(name: str, m: Any, shapes: Mapping[str, Any]) -> _Plan:
    import torch

    w = m.weight.detach().cpu().numpy()
    o, c, kh, kw = w.shape
    u, s, vt = _svd(w.reshape(o, c * kh * kw))
    hw_out = shapes.get(name, {}).get("hw_out")
    bias = o if m.bias is not None else 0

    def build(r: int) -> Any:
        root = np.sqrt(s[:r])
        first = torch.nn.Conv2d(c, r, (kh, kw), bias=False, **_conv_kwargs(m), **_dd(m))
        second = torch.nn.Conv2d(r, o, 1, bias=m.bias is not None, **_dd(m))
        with torch.no_grad():
            first.weight.copy_(_tensor((root[:, None] * vt[:r]).reshape(r, c, kh, kw), m.weight))
            second.weight.copy_(_tensor((u[:, :r] * root[None, :]).reshape(o, r, 1, 1), m.weight))
            if m.bias is not None:
                second.bias.copy_(m.bias.detach())
        return torch.nn.Sequential(first, second)

    return _Plan(name, m, "channel", s ** 2, min(o, c * kh * kw), lambda r: r * (c * kh * kw + o) + bias,
                 lambda r: None if hw_out is None else hw_out * r * (c * kh * kw + o), build)

def _conv_spatial_plan(name: str, m: Any, shapes: Mapping[str, Any]) -> _Plan:
    import torch

    w = m.weight.detach().cpu().numpy()
    o, c, kh, kw = w.shape
    # M[(c, y), (o, x)] = W[o, c, y, x]
    u, s, vt = _svd(w.transpose(1, 2, 0, 3).reshape(c * kh, o * kw))
    info = shapes.get(name, {})
    bias = o if m.bias is not None else 0
    (sh, sw), (ph, pw), (dh, dw) = m.stride, _pair_padding(m), m.dilation

    def build(r: int) -> Any:
        root = np.sqrt(s[:r])
        first = torch.nn.Conv2d(c, r, (kh, 1), stride=(sh, 1), padding=(ph, 0), dilation=(dh, 1), bias=False,
                                padding_mode=m.padding_mode, **_dd(m))
        second = torch.nn.Conv2d(r, o, (1, kw), stride=(1, sw), padding=(0, pw), dilation=(1, dw),
                                 bias=m.bias is not None, padding_mode=m.padding_mode, **_dd(m))
        with torch.no_grad():
            a = u[:, :r] * root[None, :]                       # (c·kh, r)
            b = root[:, None] * vt[:r]                         # (r, o·kw)
            first.weight.copy_(_tensor(a.reshape(c, kh, r).transpose(2, 0, 1)[..., None], m.weight))
            second.weight.copy_(_tensor(b.reshape(r, o, kw).transpose(1, 0, 2)[:, :, None, :], m.weight))
            if m.bias is not None:
                second.bias.copy_(m.bias.detach())
        return torch.nn.Sequential(first, second)

    def macs(r: int) -> int | None:
        if "hw_out" not in info:
            return None
        ho, wo = info["out_hw"]
        wi = info["in_hw"][1] + 2 * pw
        return ho * wi * r * c * kh + ho * wo * r * o * kw

    return _Plan(name, m, "spatial", s ** 2, min(c * kh, o * kw), lambda r: r * (c * kh + o * kw) + bias, macs, build)

def _pair_padding(m: Any) -> tuple[int, int]:
    if isinstance(m.padding, str):
        raise TrtoptError(f"layer {m!r} uses padding={m.padding!r}, which the spatial scheme cannot split",
                          "use conv='channel' or 'tucker2' for it")
    return tuple(m.padding)  # type: ignore[return-value]

def _conv_tucker_plan(name: str, m: Any, shapes: Mapping[str, Any], energy: float) -> _Plan:
    """Tucker-2 with both channel ranks tied to one knob: the rank r of the plan scales r_in and r_out
    together (r_out = r, r_in = round(r · r_in* / r_out*) where * are the energy-chosen mode ranks)."""
    import torch

    w = m.weight.detach().cpu().numpy().astype(np.float64)
    o, c, kh, kw = w.shape
    u_out, s_out, _ = _svd(w.reshape(o, -1))
    u_in, s_in, _ = _svd(w.transpose(1, 0, 2, 3).reshape(c, -1))
    total = float((s_out ** 2).sum())

    def mode_rank(sq: np.ndarray) -> int:
        cum = np.cumsum(sq) / max(float(sq.sum()), 1e-300)
        return int(np.searchsorted(cum, energy - 1e-12) + 1)

    ro_star, ri_star = min(mode_rank(s_out ** 2), o), min(mode_rank(s_in ** 2), c)
    ratio = ri_star / ro_star

    def ranks(r: int) -> tuple[int, int]:
        return min(r, o), max(1, min(c, round(r * ratio)))

    # Full-rank core once; the core of ranks (ro, ri) is its leading block (HOSVD truncation).
    g_full = np.einsum("ocyx,or,cs->rsyx", w, u_out, u_in, optimize=True)
    block = (g_full ** 2).sum(axis=(2, 3))

    def core(r: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        ro, ri = ranks(r)
        return g_full[:ro, :ri], u_out[:, :ro], u_in[:, :ri]

    # The spectrum of this plan: increments of the energy kept, ||core(r)||², as r grows.
    kept = np.array([float(block[:ranks(r)[0], :ranks(r)[1]].sum()) for r in range(1, o + 1)])
    sq = np.maximum(np.diff(np.concatenate([[0.0], kept])), 0.0)
    sq[-1] += max(total - float(sq.sum()), 0.0)
    hw_out = shapes.get(name, {}).get("hw_out")
    hw_in = shapes.get(name, {}).get("hw_in")
    bias = o if m.bias is not None else 0

    def params(r: int) -> int:
        ro, ri = ranks(r)
        return c * ri + ri * ro * kh * kw + ro * o + bias

    def macs(r: int) -> int | None:
        if hw_out is None:
            return None
        ro, ri = ranks(r)
        return hw_in * c * ri + hw_out * (ri * ro * kh * kw + ro * o)

    def build(r: int) -> Any:
        g, uo, ui = core(r)
        ro, ri = ranks(r)
        first = torch.nn.Conv2d(c, ri, 1, bias=False, **_dd(m))
        mid = torch.nn.Conv2d(ri, ro, (kh, kw), bias=False, **_conv_kwargs(m), **_dd(m))
        last = torch.nn.Conv2d(ro, o, 1, bias=m.bias is not None, **_dd(m))
        with torch.no_grad():
            first.weight.copy_(_tensor(ui.T.reshape(ri, c, 1, 1), m.weight))
            mid.weight.copy_(_tensor(g, m.weight))
            last.weight.copy_(_tensor(uo.reshape(o, ro, 1, 1), m.weight))
            if m.bias is not None:
                last.bias.copy_(m.bias.detach())
        return torch.nn.Sequential(first, mid, last)

    plan = _Plan(name, m, "tucker2", sq, o, params, macs, build)
    plan.ranks = ranks  # type: ignore[attr-defined]
    return plan

def _plans_for(name: str, m: Any, kind: str, config: LowRankConfig, shapes: Mapping[str, Any]) -> list[_Plan] | str:
    """Candidate decompositions of one module (of base type ``kind``), or the reason it is left alone."""
    if kind == "Linear":
        return [_linear_plan(name, m, shapes)]
    if m.groups != 1:
        return f"grouped convolution (groups={m.groups}): factorizing it would not reduce cost"
    kh, kw = m.kernel_size
    schemes = ("channel", "spatial", "tucker2") if config.conv == "auto" else (config.conv,)
    if config.method == "ranks" and config.conv == "auto":  # an explicit rank means the channel scheme's rank
        schemes = ("channel",)
    plans = []
    for scheme in schemes:
        if scheme == "spatial" and (kh == 1 or kw == 1 or isinstance(m.padding, str)):
            continue
        if scheme == "tucker2" and kh * kw == 1:
            continue
        if scheme == "channel":
            plans.append(_conv_channel_plan(name, m, shapes))
        elif scheme == "spatial":
            plans.append(_conv_spatial_plan(name, m, shapes))
        else:
            plans.append(_conv_tucker_plan(name, m, shapes, config.energy))
    return plans or f"{kh}×{kw} kernel: scheme {config.conv!r} does not apply"

def _record_shapes(model: Any, names: Sequence[str], example_inputs: Any) -> dict[str, dict[str, Any]]:
    """Per module name: tokens per sample (Linear) or input/output spatial size (Conv2d), from one forward."""
    import torch

    modules = dict(model.named_modules())
    found: dict[str, dict[str, Any]] = {}
    hooks = []
    for name in names:
        def hook(mod: Any, args: Any, out: Any, name: str = name) -> None:
            x = args[0]
            if isinstance(mod, torch.nn.Linear):
                found[name] = {"tokens": int(x.numel() // x.shape[-1] // max(x.shape[0], 1)) if x.ndim > 1 else 1}
            else:
                found[name] = {"in_hw": tuple(x.shape[-2:]), "out_hw": tuple(out.shape[-2:]),
                               "hw_in": int(x.shape[-2] * x.shape[-1]), "hw_out": int(out.shape[-2] * out.shape[-1])}
        hooks.append(modules[name].register_forward_hook(hook))
    try:
        with torch.no_grad():
            if isinstance(example_inputs, Mapping):
                model(**example_inputs)
            elif isinstance(example_inputs, (tuple, list)):
                model(*example_inputs)
            else:
                model(example_inputs)
    finally:
        for h in hooks:
            h.remove()
    return found

def _select(model: Any, config: LowRankConfig, in_hw: Mapping[str, Any]) -> list[tuple[str, Any, str, Any, str | None]]:
    """(name, module, base type, padding module or None, reason skipped or None) of every candidate layer.

    Candidates are instances (subclasses too) of Linear/Conv2d; a layer is skipped, with the reason,
    when its weight is not what its forward uses or its forward is neither the base class's nor a
    padding wrapper around it (`trtopt.compress.layers.forward_form`).
    """
    from trtopt.compress.layers import FACTORIZABLE, base_type, forward_form, select_layers

    names = list(config.layers) or (list(config.ranks) if config.method == "ranks" else [])
    for name in config.ranks:
        if name not in dict(model.named_modules()):
            raise TrtoptError(f"the model has no module named {name!r}",
                              f"use names from model.named_modules(), e.g. {', '.join(list(dict(model.named_modules()))[1:4])}")
    out = []
    for name, m, problem in select_layers(model, FACTORIZABLE, names, config.exclude, "low-rank factorization"):
        kind = base_type(m, FACTORIZABLE)
        pad = None
        if problem is None:
            form, pad, why = forward_form(m, kind, (in_hw.get(name) or {}).get("in_hw"))
            problem = f"left as it is: {why}" if form == "custom" else None
        else:
            problem = f"left as it is: {problem}"
        out.append((name, m, kind, pad, problem))
    return out

def _round_rank(r: int, multiple: int, max_rank: int) -> int:
    return min(max_rank, int(math.ceil(r / multiple) * multiple))

def _budget_ranks(plans: Sequence[_Plan], caps: Mapping[str, int], budget_params: float,
                  multiple: int, floor: Mapping[str, int]) -> dict[str, int]:
    """Greedy ranks under a total parameter budget: start at the smallest rank (``multiple``, at least the
    layer's ``floor``), then repeatedly add the rank step keeping the most (layer-normalized) energy per added
    parameter while it fits, never past a layer's cap (the largest rank that still reduces its cost)."""
    import heapq

    ranks = {p.name: min(_round_rank(max(multiple, floor[p.name]), multiple, p.max_rank), caps[p.name]) for p in plans}
    spent = sum(p.params(ranks[p.name]) for p in plans)
    if spent > budget_params:
        smallest = sorted(set(ranks.values()))
        raise TrtoptError(f"a parameter budget of {int(budget_params)} is below the {spent} parameters of the smallest "
                          f"ranks allowed ({', '.join(map(str, smallest))}: rank_multiple {multiple}, min_rank) for every "
                          f"layer", "raise param_budget, exclude small layers, or lower min_rank")

    def step(p: _Plan) -> tuple[float, int, int] | None:
        r = ranks[p.name]
        nxt = min(r + multiple, caps[p.name])
        if nxt == r:
            return None
        gain = p.energy_at(nxt) - p.energy_at(r)
        cost = p.params(nxt) - p.params(r)
        return (-gain / max(cost, 1), nxt, cost)

    heap = []
    for i, p in enumerate(plans):
        s = step(p)
        if s:
            heapq.heappush(heap, (s[0], i, s[1], s[2]))
    while heap:
        _, i, nxt, cost = heapq.heappop(heap)
        p = plans[i]
        if spent + cost > budget_params:
            continue
        ranks[p.name] = nxt
        spent += cost
        s = step(p)
        if s:
            heapq.heappush(heap, (s[0], i, s[1], s[2]))
    return ranks

def factorize_(model: Any, config: LowRankConfig = LowRankConfig(), example_inputs: Any = None,
               on_step: StepCallback | None = None) -> tuple[Any, LowRankResult]:
    """Replace selected Linear/Conv2d layers by low-rank factorizations, **in place**; returns (model, report).

    Args:
        model: an ``nn.Module`` (any device; SVDs run on the CPU in float64).
        config: rank rule, conv scheme, layer selection (see :class:`LowRankConfig`).
        example_inputs: a tensor, tuple or dict of inputs for one forward pass; when given, MACs per sample
            are counted per layer and a layer whose factorization would not cut MACs is skipped too.
        on_step: called with "factorizing NAME" as each layer is decomposed (progress).

    Returns:
        The same module object with factorized layers swapped for ``nn.Sequential`` blocks, and a report
        listing every candidate layer: scheme, rank (Tucker-2: [r_in, r_out]), energy kept, relative
        Frobenius error of the weight, parameters (and MACs) before/after, or why it was skipped.

    Raises:
        TrtoptError: a named layer is missing or of an unsupported type (the message names its type); an
        explicit rank is above what the layer allows (min(in, out) for Linear); an infeasible budget.
    """
    from trtopt.compress.layers import FACTORIZABLE, select_layers
    from trtopt.models.spec import parameter_count

    start = time.perf_counter()
    candidates_all = [n for n, _, _ in select_layers(model, FACTORIZABLE, list(config.layers), config.exclude,
                                                      "low-rank factorization")]
    shapes = _record_shapes(model, candidates_all, example_inputs) if example_inputs is not None else {}
    chosen = _select(model, config, shapes)
    pads = {name: pad for name, _, _, pad, _ in chosen}
    before = parameter_count(model)
    rows: list[LayerRank] = []
    candidates: list[tuple[_Plan, int]] = []
    plans_by_layer: list[list[_Plan]] = []
    raised: set[str] = set()  # layers whose rank was raised to config.min_rank
    for name, m, kind, _pad, problem in chosen:
        if on_step:
            on_step(f"factorizing {name}")
        dense = sum(p.numel() for p in m.parameters())
        if problem:
            rows.append(_skipped(name, m, dense, problem))
            continue
        plans = _plans_for(name, m, kind, config, shapes)
        if isinstance(plans, str):
            rows.append(_skipped(name, m, dense, plans))
            continue
        if config.method == "ranks" and name in config.ranks:
            r = config.ranks[name]
            if r > plans[0].max_rank:
                raise TrtoptError(f"rank {r} for layer {name!r} is larger than it allows (max {plans[0].max_rank} = "
                                  f"min of its weight matrix's sides, {_matrix_desc(m, plans[0].scheme)})",
                                  f"use a rank in 1..{plans[0].max_rank}")
        plans_by_layer.append(plans)
    if config.method == "params":
        # Budget over the layers' cheapest scheme at the energy setting (auto) - the fewest parameters per energy.
        best = [min(ps, key=lambda p: p.params(p.rank_for_energy(config.energy))) for ps in plans_by_layer]
        dense_total = sum(sum(t.numel() for t in p.module.parameters()) for p in best)
        caps = {p.name: _useful_rank(p, shapes, config.min_reduction) for p in best}
        floor = {p.name: min(config.min_rank, p.max_rank) for p in best}
        for p in [p for p in best if caps[p.name] < floor[p.name]]:  # even the floor would not pay: skipped below
            candidates.append((p, floor[p.name]))
            raised.add(p.name)
        best = [p for p in best if caps[p.name] >= floor[p.name]]
        ranks = (_budget_ranks(best, caps, config.param_budget * dense_total, config.rank_multiple, floor)
                 if best else {})
        candidates += [(p, ranks[p.name]) for p in best]
    else:
        for plans in plans_by_layer:
            pick = []
            for p in plans:
                if config.method == "ranks":
                    if p.name not in config.ranks:
                        continue
                    r = min(config.ranks[p.name], p.max_rank)
                else:
                    r = p.rank_for_energy(config.energy)
                    if r < config.min_rank:
                        raised.add(p.name)
                        r = config.min_rank
                pick.append((p, _round_rank(r, config.rank_multiple, p.max_rank)))
            if pick:
                candidates.append(min(pick, key=lambda pr: pr[0].params(pr[1])))
    modules = dict(model.named_modules())
    for plan, r in candidates:
        m = plan.module
        dense = sum(t.numel() for t in m.parameters())
        dense_macs = _dense_macs(m, shapes.get(plan.name))
        after, after_macs = plan.params(r), plan.macs(r)
        reason = None
        keep = None if config.min_reduction is None else 1 - config.min_reduction
        if keep is not None and after > dense * keep:
            reason = (f"rank {r} needs {after} parameters vs {dense} dense: less than the "
                      f"{config.min_reduction:.0%} reduction required (min_reduction)")
        elif keep is not None and after_macs is not None and dense_macs is not None and after_macs > dense_macs * keep:
            reason = (f"rank {r} needs {after_macs} MACs vs {dense_macs} dense: less than the "
                      f"{config.min_reduction:.0%} reduction required (min_reduction)")
        if reason and plan.name in raised:
            reason += (f"; ranks below min_rank {config.min_rank} are raised to it, because thinner splits ran "
                       f"slower than the dense layer on ONNX Runtime CPU")
        if reason:
            rows.append(_skipped(plan.name, m, dense, reason, dense_macs))
            continue
        replacement = plan.build(r)
        if pads.get(plan.name) is not None:  # a padding wrapper: its padding, then the plain factorized layers
            import copy

            import torch

            replacement = torch.nn.Sequential(copy.deepcopy(pads[plan.name]), *replacement)
        err = _rel_error(plan, r)
        rank_value: Any = list(plan.ranks(r))[::-1] if plan.scheme == "tucker2" else r  # type: ignore[attr-defined]
        rows.append(LayerRank(plan.name, type(m).__name__, tuple(m.weight.shape), plan.scheme, rank_value,
                              plan.max_rank, plan.energy_at(r), err, dense, after, dense_macs, after_macs))
        _set_module(model, modules, plan.name, replacement)
    order = {n: i for i, (n, *_) in enumerate(chosen)}
    rows.sort(key=lambda la: order[la.name])
    return model, LowRankResult(config, rows, before, parameter_count(model), time.perf_counter() - start)

def _useful_rank(plan: _Plan, shapes: Mapping[str, Any], min_reduction: float) -> int:
    """The largest rank whose parameters (and MACs, when known) are at most (1 - min_reduction) of dense; 0 if none."""
    if min_reduction is None:
        return plan.max_rank
    dense = sum(t.numel() for t in plan.module.parameters())
    dense_macs = _dense_macs(plan.module, shapes.get(plan.name))
    best = 0
    for r in range(1, plan.max_rank + 1):
        macs = plan.macs(r)
        if plan.params(r) > dense * (1 - min_reduction) or (
                macs is not None and dense_macs is not None and macs > dense_macs * (1 - min_reduction)):
            break
        best = r
    return best

def _rel_error(plan: _Plan, r: int) -> float:
    """||W - W_r||_F / ||W||_F = sqrt(discarded energy / total energy) (exact for the SVD schemes and HOSVD)."""
    return math.sqrt(max(0.0, 1.0 - plan.energy_at(r)))

def _matrix_desc(m: Any, scheme: str) -> str:
    shape = tuple(m.weight.shape)
    if m.weight.dim() == 2:
        return f"weight {shape[0]}×{shape[1]}"
    return f"kernel {'×'.join(map(str, shape))} as the {scheme} matrix"

def _dense_macs(m: Any, info: Mapping[str, Any] | None) -> int | None:
    if info is None:
        return None
    if "tokens" in info:
        return info["tokens"] * m.weight.numel()
    return info["hw_out"] * m.weight.numel()

def _skipped(name: str, m: Any, dense: int, reason: str, macs: int | None = None) -> LayerRank:
    return LayerRank(name, type(m).__name__, tuple(m.weight.shape), None, None, 0, None, None, dense, dense, macs, macs,
                     skipped=reason)

def _set_module(model: Any, modules: Mapping[str, Any], name: str, replacement: Any) -> None:
    parent_name, _, attr = name.rpartition(".")
    parent = modules[parent_name] if parent_name else model
    setattr(parent, attr, replacement)

def _as_torch(a: Any) -> Any:
    import torch

    return torch.as_tensor(np.ascontiguousarray(a))
