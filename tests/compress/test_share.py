"""Weight sharing: k-means quality, the 2^b-values property, tied fine-tuning, the storage format and its bad inputs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from trtopt.compress.config import ShareConfig, tied_finetune
from trtopt.compress.share import (
    cluster_weights_,
    kmeans_1d,
    load_shared,
    pack_bits,
    save_shared,
    tie_weights,
    unpack_bits,
)
from trtopt.errors import TrtoptError
from trtopt.models.nets import DigitsCNN


def _cnn(seed: int = 0) -> DigitsCNN:
    torch.manual_seed(seed)
    return DigitsCNN().eval()


def _distinct(t: torch.Tensor, granularity: str) -> int:
    g = t.detach().reshape(1, -1) if granularity == "layer" else t.detach().reshape(t.shape[0], -1)
    return max(len(torch.unique(row)) for row in g)


@settings(max_examples=40, deadline=None)
@given(out_f=st.integers(1, 12), in_f=st.integers(1, 40), bits=st.integers(1, 8),
       granularity=st.sampled_from(["layer", "channel"]), seed=st.integers(0, 2**16))
def test_never_more_than_2_to_the_b_values_per_group(out_f, in_f, bits, granularity, seed):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(in_f, out_f), nn.Linear(out_f, 3))
    config = ShareConfig(bits=bits, granularity=granularity, min_elements=0)
    if all(m.weight.numel() <= 2 ** bits for m in model):
        with pytest.raises(TrtoptError, match="no weight was clustered"):
            cluster_weights_(model, config)
        return
    model, report = cluster_weights_(model, config)
    for layer in report.layers:
        weight = dict(model.named_parameters())[layer.name]
        if layer.skipped is None:
            assert _distinct(weight, granularity) <= 2 ** bits
            assert layer.distinct_values_max <= 2 ** bits


@settings(max_examples=30, deadline=None)
@given(n=st.integers(1, 500), k=st.sampled_from([1, 2, 3, 4, 16, 64]), seed=st.integers(0, 1000),
       init=st.sampled_from(["kmeans++", "blend"]))
def test_kmeans_is_a_lloyd_fixpoint_with_nearest_labels(n, k, seed, init):
    x = np.random.default_rng(seed).standard_normal((2, n))
    centroids, labels, _ = kmeans_1d(x, k, max_iterations=1000, init=init)
    c, lab = centroids.numpy(), labels.numpy()
    assert np.all(np.diff(c, axis=1) >= 0)
    dist = np.abs(x[:, :, None] - c[:, None, :])
    assert np.allclose(dist[np.arange(2)[:, None], np.arange(n)[None, :], lab], dist.min(axis=2))
    for g in range(2):  # every used centroid is the mean of its members (converged)
        for j in np.unique(lab[g]):
            assert c[g, j] == pytest.approx(x[g][lab[g] == j].mean(), abs=1e-12)


def test_kmeans_inertia_matches_sklearn():
    sklearn_cluster = pytest.importorskip("sklearn.cluster")
    x = np.random.default_rng(0).standard_normal(5000) * np.random.default_rng(1).gamma(1.0, size=5000)
    centroids, labels, _ = kmeans_1d(x[None, :], 16)
    ours = float(((x - centroids.numpy()[0, labels.numpy()[0]]) ** 2).sum())
    theirs = sklearn_cluster.KMeans(16, n_init=1, random_state=0).fit(x[:, None]).inertia_
    assert ours <= theirs * 1.05


@settings(max_examples=50, deadline=None)
@given(bits=st.integers(1, 8), n=st.integers(0, 300), seed=st.integers(0, 1000))
def test_pack_unpack_round_trip(bits, n, seed):
    idx = np.random.default_rng(seed).integers(0, 2 ** bits, n).astype(np.uint8)
    packed = pack_bits(idx, bits)
    assert packed.size == (n * bits + 7) // 8
    assert np.array_equal(unpack_bits(packed, bits, n), idx)


@pytest.mark.parametrize("bits,granularity", [(4, "layer"), (3, "channel"), (8, "layer"), (1, "channel")])
def test_round_trip_is_bit_exact(tmp_path, bits, granularity):
    model, report = cluster_weights_(_cnn(), ShareConfig(bits=bits, granularity=granularity))
    info = save_shared(model, tmp_path / "m.npz")
    fresh = _cnn(seed=1)
    load_shared(tmp_path / "m.npz", fresh)
    for (name, a), b in zip(model.state_dict().items(), fresh.state_dict().values()):
        assert torch.equal(a, b), name
    assert fresh.trtopt_share == model.trtopt_share
    x = torch.randn(4, 1, 8, 8)
    assert torch.equal(model(x), fresh(x))
    assert info.state_bytes_fp32 == report.state_bytes_fp32
    assert info.payload_bytes == report.state_bytes_shared


def test_four_bits_compress_the_digits_cnn_more_than_7x(tmp_path):
    model, report = cluster_weights_(_cnn(), ShareConfig(bits=4))
    info = save_shared(model, tmp_path / "m.npz")
    assert info.file_bytes == (tmp_path / "m.npz").stat().st_size
    assert info.compression_ratio >= 7.0 and report.compression_ratio >= 7.0
    assert "storage" in report.note and "unchanged" in report.note
    assert [la.name for la in report.layers if la.skipped is None] == ["conv1.weight", "conv2.weight", "conv3.weight",
                                                                         "fc.weight"]


def test_clustering_keeps_the_unclustered_state_and_lowers_error_with_more_bits():
    base = _cnn()
    errors = []
    for bits in (2, 4, 6):
        model, report = cluster_weights_(_cnn(), ShareConfig(bits=bits))
        assert torch.equal(model.bn2.weight, base.bn2.weight) and torch.equal(model.fc.bias, base.fc.bias)
        errors.append(max(la.rel_error for la in report.layers if la.skipped is None))
    assert errors[0] > errors[1] > errors[2]


@pytest.mark.parametrize("granularity", ["layer", "channel"])
def test_int8_grid_makes_symmetric_int8_quantization_exact(granularity):
    model, _ = cluster_weights_(_cnn(), ShareConfig(bits=4, granularity=granularity, int8_grid=True))
    for name in model.trtopt_share:
        w = dict(model.named_parameters())[name].detach()
        g = w.reshape(1, -1) if granularity == "layer" else w.reshape(w.shape[0], -1)
        scale = g.abs().amax(dim=1, keepdim=True) / 127  # what symmetric INT8 quantizers compute
        q = torch.round(g / scale).clamp(-127, 127)
        assert torch.allclose(q * scale, g, rtol=1e-6, atol=0), name
    plain, _ = cluster_weights_(_cnn(), ShareConfig(bits=4, granularity=granularity))
    w = plain.conv3.weight.detach().reshape(1, -1)
    scale = w.abs().max() / 127
    assert not torch.allclose(torch.round(w / scale) * scale, w, rtol=1e-6, atol=0)


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_training_inside_tie_weights_keeps_weights_tied(tmp_path, optimizer):
    model, _ = cluster_weights_(_cnn(), ShareConfig(bits=3, granularity="channel"))
    before = model.conv3.weight.detach().clone()
    params = list(model.parameters())
    opt = torch.optim.SGD(params, lr=0.5, momentum=0.9) if optimizer == "sgd" else torch.optim.Adam(params, lr=1e-2)
    model.train()
    with tie_weights(model):
        for step in range(5):
            x, y = torch.randn(16, 1, 8, 8), torch.randint(0, 10, (16,))
            loss = nn.functional.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
    assert not torch.equal(before, model.conv3.weight)  # the codebook moved
    for name in model.trtopt_share:
        assert _distinct(dict(model.named_parameters())[name], "channel") <= 8
    save_shared(model, tmp_path / "tuned.npz")  # would raise on more than 2^b values per group
    # Outside the context nothing ties them any more.
    model.conv3.weight.data += torch.randn_like(model.conv3.weight) * 1e-3
    with pytest.raises(TrtoptError, match="distinct values"):
        save_shared(model, tmp_path / "untied.npz")


def test_finetune_shared_with_the_distill_trainer_keeps_ties():
    from trtopt.compress.config import DistillConfig
    from trtopt.compress.share import finetune_shared

    teacher = _cnn()
    student, _ = cluster_weights_(_cnn(), ShareConfig(bits=2))
    before = student.conv2.weight.detach().clone()
    x = torch.randn(64, 1, 8, 8)
    result = finetune_shared(student, teacher, (x, None), DistillConfig(epochs=2, batch_size=16, lr=1e-2, device="cpu"))
    assert result.steps == 8
    assert not torch.equal(before, student.conv2.weight)
    for name in student.trtopt_share:
        assert _distinct(dict(student.named_parameters())[name], "layer") <= 4


@pytest.mark.parametrize("bits", [0, 9, -1, True, 2.0])
def test_bits_outside_1_to_8_are_refused(bits):
    with pytest.raises(TrtoptError, match=r"bits=.* must be an integer in 1\.\.8"):
        ShareConfig(bits=bits)


def test_unsupported_layer_type_is_named():
    with pytest.raises(TrtoptError, match="'bn1' is a BatchNorm2d"):
        cluster_weights_(_cnn(), ShareConfig(layers=("bn1",)))
    with pytest.raises(TrtoptError, match="no module named 'nope'"):
        cluster_weights_(_cnn(), ShareConfig(exclude=("nope",)))
    with pytest.raises(TrtoptError, match="granularity"):
        ShareConfig(granularity="row")


def test_saving_an_unclustered_model_is_refused(tmp_path):
    with pytest.raises(TrtoptError, match="run cluster_weights_"):
        save_shared(_cnn(), tmp_path / "x.npz")
    assert not (tmp_path / "x.npz").exists()


@pytest.fixture
def saved(tmp_path):
    model, _ = cluster_weights_(_cnn(), ShareConfig(bits=4))
    save_shared(model, tmp_path / "m.npz")
    return tmp_path / "m.npz"


def test_existing_output_needs_force(saved):
    model, _ = cluster_weights_(_cnn(), ShareConfig(bits=2))
    with pytest.raises(TrtoptError, match="already exists"):
        save_shared(model, saved)
    save_shared(model, saved, force=True)


def test_truncated_file_is_refused(saved):
    data = saved.read_bytes()
    saved.write_bytes(data[: len(data) // 2])
    with pytest.raises(TrtoptError, match="truncated or corrupted"):
        load_shared(saved, _cnn())


def test_corrupted_bytes_are_detected(saved):
    data = bytearray(saved.read_bytes())
    data[len(data) // 3] ^= 0xFF
    saved.write_bytes(bytes(data))
    with pytest.raises(TrtoptError, match="corrupted"):
        load_shared(saved, _cnn())


def test_tampered_content_fails_the_sha256(saved, tmp_path):
    with np.load(saved) as npz:
        arrays = {k: npz[k].copy() for k in npz.files}
    arrays["codebooks"][0] += 1.0  # a valid zip whose content no longer matches its header
    np.savez(tmp_path / "t.npz", **arrays)
    with pytest.raises(TrtoptError, match="SHA-256"):
        load_shared(tmp_path / "t.npz", _cnn())


def test_file_for_another_architecture_is_refused(saved):
    with pytest.raises(TrtoptError, match="another architecture.*conv1.weight"):
        load_shared(saved, DigitsCNN(widths=(16, 32, 64)))
    with pytest.raises(TrtoptError, match="another architecture"):
        load_shared(saved, nn.Sequential(nn.Linear(3, 4)))


def test_not_a_shared_file(tmp_path):
    np.savez(tmp_path / "other.npz", a=np.zeros(3))
    with pytest.raises(TrtoptError, match="not a readable trtopt shared-weights file"):
        load_shared(tmp_path / "other.npz", _cnn())
    with pytest.raises(TrtoptError, match="does not exist"):
        load_shared(tmp_path / "missing.npz", _cnn())


def test_tie_weights_accepts_frozen_weights():
    model, _ = cluster_weights_(_cnn(), ShareConfig(bits=2))
    model.conv1.weight.requires_grad_(False)
    frozen = model.conv1.weight.detach().clone()
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    model.train()
    with tie_weights(model):
        loss = model(torch.randn(8, 1, 8, 8)).square().mean()
        loss.backward()
        opt.step()
        model(torch.randn(2, 1, 8, 8))
    assert torch.equal(model.conv1.weight, frozen)
    assert _distinct(model.conv2.weight, "layer") <= 4


def test_on_step_reports_each_weight_as_it_is_clustered():
    steps: list[str] = []
    _, report = cluster_weights_(_cnn(), ShareConfig(bits=4), on_step=steps.append)
    clustered = [layer.name for layer in report.layers if layer.skipped is None]
    assert clustered and steps == [f"clustering {name}" for name in clustered]


# -- fidelity, mixed bits, tied fine-tuning (share_weights) ------------------------------------------------

@pytest.fixture(scope="module")
def digits():
    """The trained digits CNN and its test split: a real model on real data (94 k parameters, fast)."""
    from trtopt.datasets import load_dataset
    from trtopt.models.load import load_model

    test = load_dataset("digits", "test")
    train = load_dataset("digits", "train")
    return (load_model("zoo:digits_cnn").module, (test.inputs["input"][:160], test.labels[:160]),
            (train.inputs["input"][:512], None))


def test_fidelity_probe_is_perfect_for_the_original_and_drops_at_2_bits(digits):
    from trtopt.compress.distill import fidelity_probe

    model, test, _ = digits
    probe = fidelity_probe(model, test, embeddings=False)
    same = probe(model)
    assert same["value"] == 1.0 and same["drop"] == pytest.approx(0.0) and same["output_rel_error"] == 0.0
    assert same["accuracy"] == same["reference_accuracy"] > 0.95
    import copy

    low = probe(cluster_weights_(copy.deepcopy(model), ShareConfig(bits=2))[0])
    assert low["value"] < 1.0 and low["output_rel_error"] > 0.05
    assert low["drop"] == pytest.approx(low["reference_accuracy"] - low["accuracy"])


@pytest.mark.slow
def test_mixed_bits_meet_the_target_ratio_and_protect_first_and_last(digits):
    from trtopt.compress.distill import fidelity_probe
    from trtopt.compress.share import share_weights

    model, test, _ = digits
    out = share_weights(model, ShareConfig(target_ratio=6.0, candidate_bits=(2, 4, 6, 8)), fidelity_probe(model, test, embeddings=False))
    choice = out.bits
    assert choice.target_met and out.result.compression_ratio >= 6.0
    assert choice.predicted_ratio == pytest.approx(out.result.compression_ratio)
    assert choice.layer_bits["conv1"] == 8 and choice.layer_bits["fc"] == 8
    assert set(choice.protected) == {"conv1", "fc"}
    bits = {la.name: la.bits for la in out.result.layers if la.skipped is None}
    assert bits == {f"{n}.weight": b for n, b in choice.layer_bits.items()}
    for row in choice.sensitivity:  # measured: fewer bits, larger output error
        errs = [row["output_rel_error"][b] for b in (2, 4, 6)]
        assert errs[0] > errs[1] > errs[2] > 0


@pytest.mark.slow
def test_mixed_bits_keep_the_measured_drop_within_the_limit(digits):
    from trtopt.compress.distill import fidelity_probe
    from trtopt.compress.share import share_weights

    model, test, _ = digits
    probe = fidelity_probe(model, test, embeddings=False)
    out = share_weights(model, ShareConfig(max_accuracy_drop=0.01, candidate_bits=(2, 3, 4, 8)), probe)
    assert out.bits.target_met and out.fidelity["drop"] <= 0.01
    assert out.fidelity == pytest.approx(probe(out.model))
    assert out.result.compression_ratio > 4.0


class _ChannelScale(nn.Module):
    """Multiplies each feature by a fixed factor (what a BatchNorm after a convolution does)."""

    def __init__(self, factors: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("factors", factors)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.factors


def _scaled_rows_model() -> nn.Module:
    """Linear "0" (256 → 32) whose output channels' scales span 1000×, undone by the per-feature scale after
    it (as BatchNorm does), so every channel matters: a per-layer codebook spends its values on the largest
    rows, per-channel codebooks are cheap (256 values per channel). Linear "3" (8 → 256): 8 values per
    channel, where a per-channel codebook would cost more than the weight saves."""
    torch.manual_seed(0)
    scales = torch.logspace(-3, 0, 32)
    model = nn.Sequential(nn.Linear(256, 32), _ChannelScale(1 / scales), nn.ReLU(), nn.Linear(32, 256, bias=False))
    with torch.no_grad():
        model[0].weight.mul_(scales.unsqueeze(1))
        model[0].bias.mul_(scales)
    return model.eval()


def test_auto_granularity_chooses_per_channel_where_it_pays_and_counts_codebooks_exactly(tmp_path):
    from trtopt.compress.distill import fidelity_probe
    from trtopt.compress.share import share_weights

    model = _scaled_rows_model()
    probe = fidelity_probe(model, (torch.randn(64, 256), None), embeddings=True)
    common = dict(target_ratio=7.0, candidate_bits=(2, 3, 4, 8), protect_first_last=False)
    auto = share_weights(model, ShareConfig(granularity="auto", **common), probe)
    per_layer = share_weights(model, ShareConfig(granularity="layer", **common), probe)
    assert auto.bits.layer_granularity == {"0": "channel", "3": "layer"} and auto.bits.unshared == []
    assert set(per_layer.bits.layer_granularity.values()) == {"layer"}
    assert auto.bits.target_met and auto.result.compression_ratio >= 7.0
    assert auto.bits.predicted_ratio == pytest.approx(auto.result.compression_ratio)  # codebook bytes included
    assert auto.fidelity["output_rel_error"] < per_layer.fidelity["output_rel_error"] / 2
    row = next(r for r in auto.bits.sensitivity if r["name"] == "0")
    assert row["output_rel_error_per_channel"][2] < row["output_rel_error"][2]
    assert auto.model.trtopt_share["0.weight"]["granularity"] == "channel"
    assert _distinct(auto.model[0].weight, "channel") <= 2 ** auto.bits.layer_bits["0"]
    save_shared(auto.model, tmp_path / "m.npz")
    loaded = load_shared(tmp_path / "m.npz", _scaled_rows_model())
    for a, b in zip(auto.model.state_dict().values(), loaded.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_auto_granularity_leaves_a_layer_fp32_when_sharing_it_is_not_needed():
    from trtopt.compress.distill import fidelity_probe
    from trtopt.compress.share import share_weights

    model = _scaled_rows_model()
    probe = fidelity_probe(model, (torch.randn(64, 256), None), embeddings=True)
    out = share_weights(model, ShareConfig(granularity="auto", target_ratio=1.2, candidate_bits=(2, 4, 8),
                                           protect_first_last=False), probe)
    # layer "3" at 8 bits per layer costs almost no output error and alone reaches 1.2×; "0" stays exact
    assert out.bits.unshared == ["0"] and out.bits.layer_bits == {"3": 8}
    assert torch.equal(out.model[0].weight, model[0].weight) and "0.weight" not in out.model.trtopt_share
    assert out.bits.predicted_ratio == pytest.approx(out.result.compression_ratio) and out.bits.target_met


def test_auto_granularity_needs_a_target():
    with pytest.raises(TrtoptError, match="granularity='auto' is chosen per layer by mixed allocation.*target_ratio"):
        ShareConfig(granularity="auto")
    with pytest.raises(TrtoptError, match="layer_granularity.fc='row' is not one of layer, channel"):
        ShareConfig(layer_granularity={"fc": "row"})


def test_an_unreachable_target_ratio_names_the_reachable_one(digits):
    from trtopt.compress.distill import fidelity_probe
    from trtopt.compress.share import share_weights

    model, test, _ = digits
    with pytest.raises(TrtoptError, match=r"40.0× smaller state is out of reach .* \(at most \d+\.\d+×\)"):
        share_weights(model, ShareConfig(target_ratio=40.0, candidate_bits=(4, 8)), fidelity_probe(model, test, False))
    with pytest.raises(TrtoptError, match="no data was given"):
        share_weights(model, ShareConfig(target_ratio=4.0))


@pytest.mark.slow
def test_tied_finetuning_recovers_fidelity_keeps_ties_and_resumes_exactly(digits, tmp_path):
    from trtopt.compress.distill import fidelity_probe
    from trtopt.compress.share import share_weights

    model, test, train = digits
    probe = fidelity_probe(model, test, embeddings=False)
    config = ShareConfig(bits=2, finetune=tied_finetune(40, lr=1e-3, batch_size=32))
    out = share_weights(model, config, probe, train)
    assert out.fidelity_finetuned["value"] > out.fidelity["value"] + 0.01
    assert out.finetune["steps"] == 40 and out.finetune["loss_last"] < out.finetune["loss_first"]
    for name, m in (("conv2", out.model.conv2), ("fc", out.model.fc)):
        assert _distinct(m.weight, "layer") <= 4, name
    # interrupted after a few steps, then resumed: the same weights as a straight run
    short = ShareConfig(bits=2, finetune=tied_finetune(8, lr=1e-3, batch_size=32))
    straight = share_weights(model, short, None, train, checkpoint_dir=str(tmp_path / "a"))

    def stop(p):
        if p.step == 5:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        share_weights(model, short, None, train, checkpoint_dir=str(tmp_path / "b"), progress=stop)
    resumed = share_weights(model, short, None, train, checkpoint_dir=str(tmp_path / "b"), resume=True)
    assert resumed.finetune["steps"] == 8
    for k, v in straight.model.state_dict().items():
        assert torch.equal(v, resumed.model.state_dict()[k]), k


def test_mixed_bits_protect_and_count_layers_too_small_for_the_largest_codebook():
    """A first/last layer with fewer than 2^8+1 weights (TinyCNN: features.0 216, head 160) was left out of the
    bit choice: clustered at the uniform 4 bits although "protected", the last layer misnamed, and the
    predicted ratio (which counted them FP32) not the file's."""
    from tests.helpers.tiny_models import tiny_cnn
    from trtopt.compress.distill import fidelity_probe
    from trtopt.compress.share import share_weights

    torch.manual_seed(0)
    model = tiny_cnn().eval()
    data = (np.random.default_rng(0).uniform(-1, 1, (8, 3, 32, 32)).astype(np.float32), None)
    out = share_weights(model, ShareConfig(max_accuracy_drop=0.01, candidate_bits=(2, 4, 8)),
                        fidelity_probe(model, data, embeddings=False))
    assert set(out.bits.protected) == {"features.0", "head"}
    bits = {la.name: la.bits for la in out.result.layers}
    assert bits["features.0.weight"] is None and bits["head.weight"] is None  # too small for 8 bits: kept FP32
    assert out.bits.predicted_ratio == pytest.approx(out.result.compression_ratio)


def test_mixed_bits_on_layers_all_too_small_for_the_largest_codebook_names_uniform_bits():
    """A 24-weight Linear: mixed bits kept it FP32 and failed with "no weight was clustered ... lower
    min_elements" (a fix that does not work); uniform bits cluster it."""
    from trtopt.compress.share import share_weights

    model = nn.Sequential(nn.Linear(6, 4))
    with pytest.raises(TrtoptError, match=r"fewer than 257 weights") as info:
        share_weights(model, ShareConfig(max_accuracy_drop=0.01, min_elements=2), lambda m: {"drop": 0.0})
    assert "uniform bits" in info.value.fix
    assert cluster_weights_(model, ShareConfig(bits=4, min_elements=2))[1].layers[0].bits == 4
