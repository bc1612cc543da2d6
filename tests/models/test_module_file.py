"""trtopt model files: compressed models saved as data and rebuilt bit-exactly; files that would run code are refused.

The payload tests use pickles that create a marker file when unpickled: refused means the marker never appears.
"""

from __future__ import annotations

import copy
import dataclasses
import io
import json
import os
import pickle
import zipfile

import pytest
import torch

from tests.helpers.cli import assert_one_line_error, run
from trtopt.compress.config import LowRankConfig, PruneConfig
from trtopt.compress.lowrank import factorize_
from trtopt.compress.prune import example_inputs_for, prune_loaded
from trtopt.errors import TrtoptError
from trtopt.models.load import load_model, trusting_code
from trtopt.models.module_file import load_module_file, save_module


class Payload:
    """Unpickling it creates ``marker``: the stand-in for any code a crafted file could run."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def outputs_equal(a, b, *inputs) -> bool:
    with torch.no_grad():
        return torch.equal(a.module.eval()(*inputs), b.module(*inputs))


@pytest.fixture(scope="module")
def digits_pruned():
    loaded = load_model("zoo:digits_cnn")
    pruned, result = prune_loaded(loaded, PruneConfig("structured", 0.5))
    return pruned, result


def test_a_pruned_registry_model_round_trips_exactly_and_the_file_is_plain_data(tmp_path, digits_pruned):
    pruned, result = digits_pruned
    path = save_module(pruned, tmp_path / "p.pt", metadata={"prune": result.to_dict()})
    back = load_model(str(path))  # zoo:digits_cnn is rebuilt by name: no trust needed
    assert outputs_equal(pruned, back, torch.randn(5, 1, 8, 8))
    assert back.module.conv3.out_channels == pruned.module.conv3.out_channels < 128
    assert back.inputs == pruned.inputs and back.preprocess == pruned.preprocess
    assert back.extra["metadata"]["prune"]["parameters_after"] == result.parameters_after
    assert back.extra["architecture"] == "zoo:digits_cnn" and not back.module.training
    record = torch.load(path, weights_only=True)  # loads under torch's data-only unpickler
    assert record["architecture"] == "zoo:digits_cnn"
    # a model file loaded and saved again keeps its original architecture spec (prune a pruned model)
    again = save_module(back, tmp_path / "again.pt")
    assert outputs_equal(back, load_model(str(again)), torch.randn(2, 1, 8, 8))


def test_a_torchvision_model_pruned_then_factorized_round_trips_exactly(tmp_path):
    loaded = load_model("torchvision:resnet18")
    pruned, _ = prune_loaded(loaded, PruneConfig("structured", 0.5))
    module, report = factorize_(copy.deepcopy(pruned.module), LowRankConfig(method="energy", energy=0.5),
                               example_inputs_for(pruned))
    assert report.to_dict()["layers"]  # new nn.Sequential pairs the architecture does not have
    changed = dataclasses.replace(pruned, module=module)
    back = load_model(str(save_module(changed, tmp_path / "r.pt")))
    assert outputs_equal(changed, back, torch.randn(2, 3, 64, 64))


def test_tied_weights_and_shared_layers_stay_shared(tmp_path):
    from trtopt.models.spec import LoadedModel, image_inputs

    def net():
        return torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.ReLU(), torch.nn.Linear(4, 4))

    tied = net()
    tied[2].weight = tied[0].weight  # one Parameter in two layers
    tied.append(tied[1])  # one layer at two paths
    model = LoadedModel(tied, "tests.helpers.nets:mlp", image_inputs((4,)))
    back = load_module_file(save_module(model, tmp_path / "t.pt"), dataclasses.replace(model, module=net()))
    assert back.module[2].weight is back.module[0].weight and back.module[3] is back.module[1]
    assert outputs_equal(model, back, torch.randn(3, 4))


def test_a_factory_architecture_needs_trust_and_its_factory_is_not_called_without(tmp_path, tiny_cnn, monkeypatch):
    path = save_module(tiny_cnn, tmp_path / "t.pt")
    calls = []
    import tests.helpers.tiny_models as factories

    original = factories.tiny_cnn
    monkeypatch.setattr(factories, "tiny_cnn", lambda: calls.append(1) or original())
    with pytest.raises(TrtoptError, match="rebuilds its architecture by calling tests.helpers.tiny_models:tiny_cnn") as err:
        load_model(str(path))
    assert "--trust-code" in str(err.value) and "trust_code: true" in str(err.value) and calls == []
    with trusting_code():
        back = load_model(str(path))
    assert calls == [1] and outputs_equal(tiny_cnn, back, torch.randn(2, 3, 32, 32))
    # the pipeline holds the original itself: no spec from the file is rebuilt, so no trust is asked
    assert outputs_equal(tiny_cnn, load_module_file(path, tiny_cnn), torch.randn(2, 3, 32, 32)) and calls == [1]
    other = load_model("tests.helpers.tiny_models:two_input_mlp")
    with pytest.raises(TrtoptError, match="was derived from tests.helpers.tiny_models:tiny_cnn"):
        load_module_file(path, other)


@pytest.mark.parametrize("kind", ["module-marker", "plain-pickle", "pt2"])
def test_a_crafted_payload_is_refused_and_never_runs(tmp_path, kind):
    marker = tmp_path / "pwned"
    path = tmp_path / ("evil.pt2" if kind == "pt2" else "evil.pt")
    if kind == "module-marker":  # the old whole-module layout: its marker used to switch unpickling on
        torch.save({"trtopt_module_file": 1, "module": Payload(marker)}, path)
    elif kind == "plain-pickle":
        path.write_bytes(pickle.dumps(Payload(marker)))
    else:  # torch.export.load unpickles a weight marked use_pickle with weights_only=False
        program = torch.export.export(torch.nn.Linear(2, 2), (torch.zeros(1, 2),))
        torch.export.save(program, tmp_path / "m.pt2")
        payload = io.BytesIO()
        torch.save(Payload(marker), payload)
        with zipfile.ZipFile(tmp_path / "m.pt2") as source, zipfile.ZipFile(path, "w") as target:
            for name in source.namelist():
                data = source.read(name)
                if name.endswith("weights_config.json"):
                    config = json.loads(data)
                    first = next(iter(config["config"].values()))
                    first["use_pickle"] = True
                    weight = first["path_name"]
                    data = json.dumps(config).encode()
                target.writestr(name, data)
            target.writestr(next(n for n in source.namelist() if n.endswith(f"/weights/{weight}")), payload.getvalue())
    with pytest.raises(TrtoptError) as err:
        load_model(str(path))
    assert str(path) in str(err.value) and "--trust-code" in str(err.value)
    assert not marker.exists()
    if kind == "module-marker":  # the opt-in is real: trusted, the pickle is unpickled (and holds no module)
        with pytest.raises(TrtoptError, match="not a torch.nn.Module"):
            load_model(str(path), trust_code=True)
        assert marker.exists()


def test_a_crafted_model_file_cannot_create_layers_outside_the_architecture_and_torch_nn(tmp_path, digits_pruned):
    pruned, _ = digits_pruned
    path = save_module(pruned, tmp_path / "p.pt")
    record = torch.load(path, weights_only=True)
    record["modules"][1]["class"] = "subprocess.Popen"
    torch.save(record, path)
    with pytest.raises(TrtoptError, match="layer conv1 is a subprocess.Popen, which is neither in the model's architecture"):
        load_model(str(path))


def test_saving_refuses_a_model_from_a_file_and_hooks(tmp_path, tiny_cnn):
    traced = torch.jit.trace(tiny_cnn.module, torch.zeros(1, 3, 32, 32))
    traced.save(str(tmp_path / "ts.pt"))
    with pytest.raises(TrtoptError, match="was loaded from a file"):
        save_module(load_model(str(tmp_path / "ts.pt")), tmp_path / "x.pt")
    handle = tiny_cnn.module.head.register_forward_hook(lambda *_: None)
    with pytest.raises(TrtoptError, match="layer head has hooks"):
        save_module(tiny_cnn, tmp_path / "x.pt")
    handle.remove()
    assert not (tmp_path / "x.pt").exists()


def test_cli_refuses_a_payload_in_export_and_bench_with_one_line(tmp_path, cli_env):
    marker = tmp_path / "pwned"
    torch.save({"trtopt_module_file": 1, "module": Payload(marker)}, tmp_path / "evil.pt")
    for args in (["export", "evil.pt", "-o", "x.onnx"], ["bench", "evil.pt", "--iterations", "2"]):
        assert_one_line_error(run(args, tmp_path, cli_env), "evil.pt", "--trust-code")
    assert not marker.exists() and not (tmp_path / "x.onnx").exists()
    assert os.listdir(tmp_path) == ["evil.pt"]
