"""Tests for trtopt.models.load and trtopt.models.zoo: loading models from specs, checkpoints, and offline errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from trtopt.errors import TrtoptError
from trtopt.models.inputs import parse_declarations
from trtopt.models.load import load_checkpoint_, load_model
from trtopt.models.spec import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    InputSpec,
    LoadedModel,
    is_onnx_path,
    parameter_bytes,
    parameter_count,
)

RESNET18_PARAMS = 11_689_512
EFFICIENTNET_LITE0_PARAMS = 4_652_008


@pytest.fixture
def offline_hub(tmp_path, monkeypatch):
    """An empty torch hub cache, so no previously downloaded weights can be found."""
    hub = tmp_path / "hub"
    hub.mkdir()
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(hub))
    return hub


@pytest.fixture
def no_network(monkeypatch):
    """Any attempt to download or connect fails the test loudly instead of reaching the network."""
    import socket

    def refuse(*args, **kwargs):
        raise AssertionError("a network access was attempted")

    monkeypatch.setattr(torch.hub, "download_url_to_file", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)


def state_equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def perturbed(module: torch.nn.Module) -> dict:
    """A copy of the module's state dict with every floating tensor changed."""
    return {k: (v + 0.5 if v.is_floating_point() else v + 1) for k, v in module.state_dict().items()}


# --- torchvision / timm ----------------------------------------------------------------------------


def test_torchvision_resnet18_loads_in_eval_mode():
    m = load_model("torchvision:resnet18")
    assert isinstance(m, LoadedModel)
    assert m.spec == "torchvision:resnet18"
    assert isinstance(m.module, torch.nn.Module)
    assert not m.module.training
    assert all(not sub.training for sub in m.module.modules())
    assert parameter_count(m.module) == RESNET18_PARAMS
    assert [s.shape for s in m.inputs] == [(3, 224, 224)]
    assert m.preprocess is not None and m.preprocess.size == 224
    assert m.preprocess.mean == IMAGENET_MEAN and m.preprocess.std == IMAGENET_STD
    assert "random init" in m.description
    with torch.no_grad():
        out = m.module(torch.zeros(2, 3, 224, 224))
    assert out.shape == (2, 1000)


def test_same_spec_twice_gives_identical_weights_and_leaves_global_rng_alone():
    torch.manual_seed(1234)
    expected_next = torch.rand(5)
    torch.manual_seed(1234)
    a = load_model("torchvision:resnet18")
    after = torch.rand(5)  # the global generator must be where it was before load_model
    b = load_model("torchvision:resnet18")
    assert torch.equal(after, expected_next)
    assert state_equal(a.module.state_dict(), b.module.state_dict())


def test_different_seed_gives_different_weights():
    a = load_model("tests.helpers.tiny_models:tiny_cnn", seed=0)
    b = load_model("tests.helpers.tiny_models:tiny_cnn", seed=1)
    assert not torch.equal(a.module.head.weight, b.module.head.weight)


def test_unknown_torchvision_model():
    with pytest.raises(TrtoptError, match="torchvision has no model 'resnet19'"):
        load_model("torchvision:resnet19")


def test_torchvision_pretrained_fails_offline_without_network(offline_hub, no_network):
    with pytest.raises(TrtoptError) as e:
        load_model("torchvision:resnet18", pretrained=True)
    msg = str(e.value)
    assert "offline" in msg
    assert "https://download.pytorch.org/models/resnet18" in msg
    assert str(offline_hub) in msg  # tells where to put the file
    assert "--checkpoint" in msg


def test_torchvision_pretrained_uses_a_cached_file(offline_hub, no_network):
    import torchvision

    weights = torchvision.models.ResNet18_Weights.DEFAULT
    reference = torchvision.models.resnet18()
    with torch.no_grad():
        for p in reference.parameters():
            p.add_(0.25)
    cached = offline_hub / "checkpoints" / weights.url.rsplit("/", 1)[1]
    cached.parent.mkdir()
    torch.save(reference.state_dict(), cached)
    m = load_model("torchvision:resnet18", pretrained=True)
    assert state_equal(m.module.state_dict(), reference.state_dict())
    assert "pretrained" in m.description


def test_timm_resnet18_random_init():
    pytest.importorskip("timm")
    m = load_model("timm:resnet18")
    assert m.spec == "timm:resnet18"
    assert not m.module.training
    assert parameter_count(m.module) == RESNET18_PARAMS
    assert m.inputs[0].shape == (3, 224, 224)
    assert m.preprocess is not None and m.preprocess.size == 224
    again = load_model("timm:resnet18")
    assert state_equal(m.module.state_dict(), again.module.state_dict())


def test_unknown_timm_model():
    pytest.importorskip("timm")
    with pytest.raises(TrtoptError, match="timm has no model 'not_a_real_net'"):
        load_model("timm:not_a_real_net")


def test_timm_pretrained_fails_offline():
    pytest.importorskip("timm")
    with pytest.raises(TrtoptError, match="offline") as e:
        load_model("timm:resnet18", pretrained=True)
    assert "timm:resnet18" in str(e.value)


# --- factories, files, specs -----------------------------------------------------------------------


def test_factory_spec_uses_declared_inputs(tiny_cnn):
    assert tiny_cnn.spec == "tests.helpers.tiny_models:tiny_cnn"
    assert not tiny_cnn.module.training
    assert tiny_cnn.inputs == (InputSpec("input", (3, 32, 32), "float32", -1.0, 1.0),)
    with torch.no_grad():
        assert tiny_cnn.module(torch.zeros(3, 3, 32, 32)).shape == (3, 10)


def test_factory_spec_with_two_inputs():
    m = load_model("tests.helpers.tiny_models:two_input_mlp")
    assert [s.name for s in m.inputs] == ["features", "mask"]


def test_unknown_module_spec():
    with pytest.raises(TrtoptError) as e:
        load_model("no_such_pkg_xyz.models:net")
    assert "no_such_pkg_xyz.models" in str(e.value)
    assert "unknown model spec" in str(e.value)


def test_missing_factory_attribute():
    with pytest.raises(TrtoptError, match="tiny_models has no callable 'no_such_factory'"):
        load_model("tests.helpers.tiny_models:no_such_factory")


def test_factory_returning_non_module():
    with pytest.raises(TrtoptError, match="not a torch.nn.Module") as e:
        load_model("builtins:dict")
    assert "builtins:dict" in str(e.value)


def test_missing_file(tmp_path):
    path = tmp_path / "model.pt"
    with pytest.raises(TrtoptError, match="missing file") as e:
        load_model(str(path))
    assert str(path) in str(e.value)


def test_bare_unknown_name():
    with pytest.raises(TrtoptError, match="'resnet18'") as e:
        load_model("resnet18")
    assert "torchvision:NAME" in str(e.value)


def test_onnx_spec_is_rejected(tmp_path):
    assert is_onnx_path("Model.ONNX") and not is_onnx_path("model.pt")
    with pytest.raises(TrtoptError, match="ONNX file") as e:
        load_model(str(tmp_path / "model.onnx"))
    assert "model.onnx" in str(e.value)


@pytest.mark.filterwarnings("ignore:`torch.jit:FutureWarning")
def test_torchscript_file_loads_with_same_outputs(tmp_path, tiny_cnn):
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    traced = torch.jit.trace(tiny_cnn.module, x)
    path = tmp_path / "tiny.pt"
    traced.save(str(path))
    m = load_model(str(path), inputs=parse_declarations(["input:1x3x32x32"]))
    assert not m.module.training
    assert m.inputs[0].shape == (3, 32, 32)
    assert "TorchScript" in m.description
    with torch.no_grad():
        torch.testing.assert_close(m.module(x), tiny_cnn.module(x), rtol=0, atol=0)


@pytest.mark.filterwarnings("ignore:`torch.jit:FutureWarning")
def test_state_dict_as_model_spec_says_use_checkpoint(tmp_path, tiny_cnn):
    path = tmp_path / "weights.pt"
    torch.save(tiny_cnn.module.state_dict(), path)
    with pytest.raises(TrtoptError) as e:
        load_model(str(path))
    assert "not a TorchScript model" in str(e.value)
    assert "--checkpoint" in str(e.value) and str(path) in str(e.value)


def test_input_shape_override(tiny_cnn):
    m = load_model("tests.helpers.tiny_models:tiny_cnn", inputs=parse_declarations(["4x3x48x40"]))
    assert m.inputs == (InputSpec("input", (3, 48, 40), "float32", -1.0, 1.0),)


def test_unnamed_input_shape_rejected_for_two_inputs():
    with pytest.raises(TrtoptError, match="single-input model; .* has inputs features, mask") as e:
        load_model("tests.helpers.tiny_models:two_input_mlp", inputs=parse_declarations(["1x6"]))
    assert "--input-shape features:DIMS,mask:DIMS" in str(e.value)


def test_parameter_count_and_bytes(tiny_cnn):
    # conv1 3*8*9+8, bn1 8+8, conv2 8*16*9+16, bn2 16+16, head 16*10+10
    params = (3 * 8 * 9 + 8) + 16 + (8 * 16 * 9 + 16) + 32 + (16 * 10 + 10)
    assert parameter_count(tiny_cnn.module) == params
    # buffers: running mean/var per BN channel (float32) + num_batches_tracked (int64) per BN
    buffer_bytes = (8 + 8 + 16 + 16) * 4 + 2 * 8
    assert parameter_bytes(tiny_cnn.module) == params * 4 + buffer_bytes
    assert parameter_bytes(tiny_cnn.module.half()) == params * 2 + (8 + 8 + 16 + 16) * 2 + 2 * 8


# --- checkpoints -----------------------------------------------------------------------------------


def test_checkpoint_round_trip(tmp_path, tiny_cnn):
    trained = perturbed(tiny_cnn.module)
    path = tmp_path / "ckpt.pt"
    torch.save(trained, path)
    m = load_model("tests.helpers.tiny_models:tiny_cnn", checkpoint=path)
    assert state_equal(m.module.state_dict(), trained)
    assert not m.module.training


@pytest.mark.parametrize("wrap", ["state_dict", "model_state_dict", "model"])
def test_checkpoint_wrapped_in_a_dict(tmp_path, tiny_cnn, wrap):
    trained = perturbed(tiny_cnn.module)
    path = tmp_path / "ckpt.pt"
    torch.save({"epoch": 7, wrap: trained, "best_acc": 0.9}, path)
    m = load_model("tests.helpers.tiny_models:tiny_cnn", checkpoint=str(path))
    assert state_equal(m.module.state_dict(), trained)


def test_checkpoint_with_dataparallel_prefix(tmp_path, tiny_cnn):
    trained = perturbed(tiny_cnn.module)
    path = tmp_path / "ddp.pt"
    torch.save({"state_dict": {f"module.{k}": v for k, v in trained.items()}}, path)
    m = load_model("tests.helpers.tiny_models:tiny_cnn", checkpoint=path)
    assert state_equal(m.module.state_dict(), trained)


def test_checkpoint_of_another_architecture_names_a_key(tmp_path):
    other = load_model("tests.helpers.tiny_models:two_input_mlp")
    path = tmp_path / "mlp.pt"
    torch.save(other.module.state_dict(), path)
    with pytest.raises(TrtoptError, match="does not fit the architecture") as e:
        load_model("tests.helpers.tiny_models:tiny_cnn", checkpoint=path)
    msg = str(e.value)
    assert "missing 'features.0.weight'" in msg
    assert str(path) in msg


def test_checkpoint_with_wrong_shape_names_the_tensor(tmp_path, tiny_cnn):
    state = tiny_cnn.module.state_dict()
    state["head.weight"] = torch.zeros(7, 16)
    path = tmp_path / "shape.pt"
    torch.save(state, path)
    with pytest.raises(TrtoptError) as e:
        load_model("tests.helpers.tiny_models:tiny_cnn", checkpoint=path)
    msg = str(e.value)
    assert "head.weight" in msg and "(7, 16)" in msg and "(10, 16)" in msg


def test_checkpoint_that_is_not_a_state_dict(tmp_path, tiny_cnn):
    path = tmp_path / "tensor.pt"
    torch.save(torch.zeros(3), path)
    with pytest.raises(TrtoptError, match="not a state dict") as e:
        load_checkpoint_(tiny_cnn.module, path)
    assert str(path) in str(e.value)


def test_checkpoint_that_is_not_a_torch_file(tmp_path, tiny_cnn):
    path = tmp_path / "notes.txt"
    path.write_text("hello", encoding="utf-8")
    with pytest.raises(TrtoptError, match="cannot be read") as e:
        load_checkpoint_(tiny_cnn.module, path)
    assert str(path) in str(e.value)


def test_checkpoint_that_would_run_code_is_refused(tmp_path, tiny_cnn):
    path = tmp_path / "pickled.pt"
    torch.save({"state_dict": tiny_cnn.module.state_dict(), "obj": np.array}, path)  # a function: not weights-only
    with pytest.raises(TrtoptError, match="cannot be read"):
        load_checkpoint_(tiny_cnn.module, path)


def test_missing_checkpoint(tmp_path):
    path = tmp_path / "gone.pt"
    with pytest.raises(TrtoptError, match="does not exist") as e:
        load_model("tests.helpers.tiny_models:tiny_cnn", checkpoint=path)
    assert str(path) in str(e.value)


# --- zoo -------------------------------------------------------------------------------------------


# parameters and input size of EfficientNet-Lite0/1/2 (the reference's 4.7 M / 5.4 M / 6.1 M; 224 / 240 / 260 px)
EFFICIENTNET_LITES = [(0, EFFICIENTNET_LITE0_PARAMS, 224), (1, 5_416_680, 240), (2, 6_092_072, 260)]


@pytest.mark.parametrize(("variant", "params", "size"), EFFICIENTNET_LITES)
def test_zoo_efficientnet_lite_classifies_coffee_as_espresso(variant, params, size):
    pytest.importorskip("efficientnet_lite_pytorch")
    skimage_data = pytest.importorskip("skimage.data")
    from PIL import Image

    from trtopt.data import preprocess_image, skimage_photos

    m = load_model(f"zoo:efficientnet_lite{variant}")
    assert not m.module.training
    assert parameter_count(m.module) == params
    assert m.inputs[0].shape == (3, size, size)
    assert m.preprocess.size == size
    x = preprocess_image(Image.fromarray(skimage_data.coffee()), m.preprocess)
    with torch.no_grad():
        probs = torch.softmax(m.module(torch.from_numpy(x)[None]), dim=1)[0]
    assert int(probs.argmax()) == 967  # 'espresso'
    assert float(probs[967]) > 0.5
    # the same photo inside the skimage:photos set (index 2) gets the same answer
    photos = skimage_photos(m.preprocess)
    np.testing.assert_array_equal(photos[2], x)


def test_unknown_zoo_model():
    with pytest.raises(TrtoptError, match="unknown zoo model 'mobilenet_v9'") as e:
        load_model("zoo:mobilenet_v9")
    assert "efficientnet_lite0" in str(e.value)
