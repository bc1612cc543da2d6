"""Tests for trtopt.config: building configs from plain data, validation, merging, YAML recipes."""

from __future__ import annotations

import pytest

from trtopt._config import from_dict, merge, to_dict
from trtopt.backends.ort import OrtConfig
from trtopt.config import RECIPE_VERSION, Recipe, dump_recipe, load_recipe
from trtopt.errors import TrtoptError
from trtopt.export import ExportConfig
from trtopt.measure.compare import Tolerances
from trtopt.measure.profile import TimingConfig


def full_recipe_dict() -> dict:
    return {
        "model": "torchvision:resnet18",
        "checkpoint": "weights.pt",
        "input_shapes": {"input": [3, 160, 160]},
        "data": "calib/",
        "batch_sizes": [1, 4, 16],
        "threads": 2,
        "export": {"opset": 17, "exporter": "torchscript", "parity_batch_sizes": [1, 3],
                   "parity": {"atol": 1e-3, "rtol": 1e-2, "min_cosine": 0.99}},
        "ort": {"intra_op_threads": 4, "graph_optimization_level": "basic",
                "providers": ["CPUExecutionProvider"]},
        "timing": {"warmup_iterations": 2, "iterations": 7, "seed": 3},
        "compare": {"atol": 0.01},
        "version": RECIPE_VERSION,
    }


# --- from_dict -------------------------------------------------------------------------------------


def test_from_dict_builds_nested_configs_and_tuples():
    r = from_dict(Recipe, full_recipe_dict())
    assert isinstance(r.export, ExportConfig) and isinstance(r.ort, OrtConfig)
    assert isinstance(r.timing, TimingConfig) and isinstance(r.compare, Tolerances)
    assert r.batch_sizes == (1, 4, 16)
    assert r.input_shapes == {"input": (3, 160, 160)}
    assert r.export.opset == 17 and r.export.exporter == "torchscript"
    assert r.export.parity_batch_sizes == (1, 3)
    assert r.export.parity == Tolerances(atol=1e-3, rtol=1e-2, min_cosine=0.99)
    assert r.ort.providers == ("CPUExecutionProvider",)
    assert r.ort.intra_op_threads == 4 and r.ort.graph_optimization_level == "basic"
    assert (r.timing.warmup_iterations, r.timing.iterations, r.timing.seed) == (2, 7, 3)
    assert r.compare.atol == 0.01
    # unspecified fields keep their defaults
    assert r.compare.rtol == Tolerances().rtol
    assert r.timing.confidence == TimingConfig().confidence
    assert r.export.simplify is True


def test_from_dict_minimal_recipe_uses_defaults():
    r = from_dict(Recipe, {"model": "tests.helpers.tiny_models:tiny_cnn"})
    assert r == Recipe(model="tests.helpers.tiny_models:tiny_cnn")
    assert r.export == ExportConfig() and r.ort == OrtConfig() and r.timing == TimingConfig()
    assert r.batch_sizes == (1, 8)
    assert r.version == RECIPE_VERSION


def test_configs_are_frozen():
    r = Recipe(model="m")
    with pytest.raises(AttributeError):
        r.model = "other"  # type: ignore[misc]


def test_unknown_top_level_key_is_rejected_with_valid_keys():
    with pytest.raises(TrtoptError) as e:
        from_dict(Recipe, {"model": "m", "batch_size": [1]})
    msg = str(e.value)
    assert "'batch_size'" in msg
    assert "batch_sizes" in msg and "checkpoint" in msg  # valid keys are listed


def test_unknown_nested_key_names_its_dotted_path():
    with pytest.raises(TrtoptError) as e:
        from_dict(Recipe, {"model": "m", "export": {"opsett": 17}})
    msg = str(e.value)
    assert "'export.opsett'" in msg
    assert "ExportConfig" in msg
    for key in ("opset", "exporter", "dynamic_batch", "parity_batch_sizes"):
        assert key in e.value.fix


def test_unknown_key_two_levels_deep_names_full_path():
    with pytest.raises(TrtoptError, match=r"'export\.parity\.atoll'"):
        from_dict(Recipe, {"model": "m", "export": {"parity": {"atoll": 1.0}}})


def test_nested_config_must_be_a_mapping():
    with pytest.raises(TrtoptError, match="export must be a mapping"):
        from_dict(Recipe, {"model": "m", "export": 17})


def test_missing_required_model_is_named():
    with pytest.raises(TrtoptError, match="model"):
        from_dict(Recipe, {"batch_sizes": [1]})


@pytest.mark.parametrize("data, fragment, key", [
    ({"export": {"exporter": "onnxscript"}}, "export.exporter='onnxscript'", "export.exporter"),
    ({"export": {"external_data": "sometimes"}}, "export.external_data='sometimes'", "export.external_data"),
    ({"export": {"opset": 6}}, "export.opset=6", "export.opset"),
    ({"export": {"opset": 26}}, "export.opset=26", "export.opset"),
    ({"export": {"opset": "18"}}, "export.opset is '18' (str), expected an integer", "export.opset"),
    ({"export": {"exporter": "dynamo", "opset": 17}}, "export.opset=17", "export.opset"),
    ({"export": {"example_batch_size": 0}}, "export.example_batch_size=0 must be a positive integer",
     "export.example_batch_size"),
    ({"export": {"parity_batch_sizes": [1, 0]}}, "export.parity_batch_sizes=(1, 0) must be a list of integers >= 1",
     "export.parity_batch_sizes"),
    ({"export": {"parity": {"min_cosine": 1.5}}}, "export.parity.min_cosine=1.5 must be a number in [-1, 1]",
     "export.parity.min_cosine"),
    ({"ort": {"graph_optimization_level": "max"}}, "ort.graph_optimization_level='max'", "ort.graph_optimization_level"),
    ({"ort": {"providers": []}}, "ort.providers=() must be a non-empty list", "ort.providers"),
    ({"batch_sizes": []}, "batch_sizes=() must be a non-empty list", "batch_sizes"),
    ({"batch_sizes": [1, 0]}, "batch_sizes=(1, 0)", "batch_sizes"),
    ({"threads": 0}, "threads=0", "threads"),
    ({"version": RECIPE_VERSION + 1}, f"version={RECIPE_VERSION + 1} is not supported", "version"),
    ({"timing": {"iterations": 0}}, "timing.iterations=0 must be a positive integer", "timing.iterations"),
    ({"compare": {"atol": -1.0}}, "compare.atol=-1.0 must be a number >= 0", "compare.atol"),
    ({"calibration": {"num_bins": 100}}, "calibration.num_bins=100 must be an integer >= 256", "calibration.num_bins"),
    ({"quantize": {"target": "tflite"}}, "quantize.target='tflite' is not one of onnxruntime, tensorrt", "quantize.target"),
    ({"stages": ["export", "prune"], "prune": {"ratio": 1.5}}, "prune.ratio=1.5 must be a number in [0, 1)", "prune.ratio"),
    ({"stages": ["prune", "export"], "prune": {"method": "2:4", "importance": "bn"}},
     "prune.importance='bn' ranks channels", "prune.importance"),
    ({"factorize": {"method": "ranks", "ranks": {"layer1.0.conv1": 0}}},
     "factorize.ranks.layer1.0.conv1=0 must be a positive integer", "factorize.ranks.layer1.0.conv1"),
    ({"distill": {"epochs": None}}, "distill.epochs=None and max_steps is None too", "distill.epochs"),
    ({"distill": {"alpha": 1.5}}, "distill.alpha=1.5 must be a number in [0, 1]", "distill.alpha"),
    ({"cluster": {"bits": 9}}, "cluster.bits=9 must be an integer in 1..8", "cluster.bits"),
])
def test_invalid_values_raise_naming_the_setting(data, fragment, key):
    with pytest.raises(TrtoptError) as e:
        from_dict(Recipe, {"model": "m", **data})
    assert fragment in str(e.value)
    assert e.value.key == key  # what a recipe reader turns into a line number
    assert "fix: " in str(e.value) and "\n" not in str(e.value)


def test_dynamo_exporter_with_opset_18_is_valid():
    assert from_dict(ExportConfig, {"exporter": "dynamo", "opset": 18}).opset == 18


def test_to_dict_gives_plain_data_and_round_trips():
    r = from_dict(Recipe, full_recipe_dict())
    d = to_dict(r)
    assert d["batch_sizes"] == [1, 4, 16]
    assert d["input_shapes"] == {"input": [3, 160, 160]}
    assert d["export"]["parity"] == {"atol": 1e-3, "rtol": 1e-2, "min_cosine": 0.99}
    assert from_dict(Recipe, d) == r


# --- merge -----------------------------------------------------------------------------------------


def test_merge_applies_overrides_and_ignores_none():
    base = Recipe(model="a", batch_sizes=(1, 8), threads=4)
    out = merge(base, {"model": "b", "threads": None, "batch_sizes": [2], "checkpoint": None})
    assert out.model == "b"
    assert out.threads == 4  # None = "flag not given"
    assert out.batch_sizes == (2,)
    assert out.checkpoint is None
    assert base.model == "a"  # the original is unchanged


def test_merge_nested_dict_changes_only_named_fields():
    base = from_dict(Recipe, {"model": "m", "export": {"opset": 17, "exporter": "torchscript", "simplify": False}})
    out = merge(base, {"export": {"opset": 19, "exporter": None}})
    assert out.export.opset == 19
    assert out.export.exporter == "torchscript"
    assert out.export.simplify is False


def test_merge_two_levels_deep_keeps_sibling_fields():
    base = from_dict(Recipe, {"model": "m", "export": {"parity": {"rtol": 0.5}}})
    out = merge(base, {"export": {"parity": {"atol": 0.1}}})
    assert out.export.parity.atol == 0.1
    assert out.export.parity.rtol == 0.5  # the recipe's value survives a CLI override of a sibling


def test_precedence_defaults_recipe_cli(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("model: torchvision:resnet18\nthreads: 2\ntiming:\n  iterations: 50\n", encoding="utf-8")
    recipe = load_recipe(path)
    cli = {"threads": 8, "data": None, "timing": {"iterations": None, "warmup_iterations": 1}}
    final = merge(recipe, cli)
    assert final.threads == 8  # CLI beats recipe
    assert final.timing.iterations == 50  # recipe beats default, CLI flag not given
    assert final.timing.warmup_iterations == 1  # CLI beats default
    assert final.timing.min_iterations == TimingConfig().min_iterations  # default
    assert final.data is None


def test_merge_revalidates():
    with pytest.raises(TrtoptError, match="export.opset=17"):
        merge(Recipe(model="m"), {"export": {"exporter": "dynamo", "opset": 17}})
    with pytest.raises(TrtoptError, match="'export.opsett'"):
        merge(Recipe(model="m"), {"export": {"opsett": 17}})


def test_merge_works_on_a_stage_config():
    out = merge(ExportConfig(), {"opset": 17, "parity_batch_sizes": [2, 4]})
    assert out == ExportConfig(opset=17, parity_batch_sizes=(2, 4))


# --- YAML recipes ----------------------------------------------------------------------------------


def test_load_recipe_from_yaml(tmp_path):
    path = tmp_path / "recipe.yaml"
    path.write_text(
        "model: zoo:efficientnet_lite0\n"
        "batch_sizes: [1, 2]\n"
        "input_shapes:\n  input: [3, 192, 192]\n"
        "export:\n  opset: 17\n  exporter: torchscript\n",
        encoding="utf-8",
    )
    r = load_recipe(path)
    assert r.model == "zoo:efficientnet_lite0"
    assert r.batch_sizes == (1, 2)
    assert r.input_shapes == {"input": (3, 192, 192)}
    assert r.export.opset == 17 and r.export.exporter == "torchscript"


def test_dump_and_load_recipe_round_trip(tmp_path):
    original = from_dict(Recipe, full_recipe_dict())
    path = tmp_path / "resolved.yaml"
    path.write_text(dump_recipe(original), encoding="utf-8")
    assert load_recipe(path) == original


def test_dump_recipe_is_plain_yaml():
    import yaml

    text = dump_recipe(Recipe(model="m", batch_sizes=(1, 8)))
    data = yaml.safe_load(text)
    assert data["model"] == "m"
    assert data["batch_sizes"] == [1, 8]
    assert data["export"]["opset"] == ExportConfig().opset


def test_load_recipe_missing_file(tmp_path):
    path = tmp_path / "nope.yaml"
    with pytest.raises(TrtoptError, match="does not exist") as e:
        load_recipe(path)
    assert str(path) in str(e.value)


@pytest.mark.parametrize("text, needle", [
    ("model: a\nmodel: b\n", "line 2: key 'model' is written twice (also line 1)"),
    ("model: m\ncalibration:\n  method: mse\n  method: minmax\n", "line 4: key 'calibration.method' is written twice"),
    ("model: m\nstages: []\n", "line 2: stages=() must be a non-empty list"),
    ("model: ''\n", "line 1: model='' is empty"),
])
def test_load_recipe_refuses_what_yaml_would_let_through(tmp_path, text, needle):
    """A key written twice (YAML keeps the last silently), no stages to run, an empty model name."""
    path = tmp_path / "r.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(TrtoptError, match="fix:") as e:
        load_recipe(path)
    assert needle in str(e.value)


def test_load_recipe_invalid_yaml(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("model: [unclosed\nbatch_sizes: 1\n", encoding="utf-8")
    with pytest.raises(TrtoptError, match="not valid YAML") as e:
        load_recipe(path)
    assert str(path) in str(e.value)


@pytest.mark.parametrize("text", ["- model: m\n", "just a string\n", ""])
def test_load_recipe_must_be_a_mapping(tmp_path, text):
    path = tmp_path / "list.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(TrtoptError, match="must be a YAML mapping") as e:
        load_recipe(path)
    assert str(path) in str(e.value)


def test_load_recipe_reports_unknown_key_with_path(tmp_path):
    path = tmp_path / "typo.yaml"
    path.write_text("model: m\nort:\n  intra_threads: 2\n", encoding="utf-8")
    with pytest.raises(TrtoptError, match=r"'ort\.intra_threads'") as e:
        load_recipe(path)
    assert "intra_op_threads" in str(e.value)


def test_recipe_cluster_finetune_is_a_distill_config(tmp_path):
    from trtopt.compress.config import DistillConfig

    path = tmp_path / "r.yaml"
    path.write_text("model: m\ncluster:\n  bits: 3\n  finetune:\n    epochs: null\n    max_steps: 60\n    lr: 1.0e-4\n",
                    encoding="utf-8")
    tune = load_recipe(path).cluster.finetune
    assert isinstance(tune, DistillConfig)
    assert (tune.epochs, tune.max_steps, tune.lr, tune.batch_size) == (None, 60, 1e-4, DistillConfig.batch_size)


@pytest.mark.parametrize("body, line, key, fragment", [
    # a torch-side section: the line of the offending field, not of its section
    ("model: m\nstages: [prune, export]\nprune:\n  method: structured\n  ratio: 1.5\n", 5, "prune.ratio",
     "prune.ratio=1.5 must be a number in [0, 1)"),
    ("model: m\ncluster:\n  granularity: layer\n  bits: 0\n", 4, "cluster.bits", "cluster.bits=0 must be an integer in 1..8"),
    ("model: m\ndistill:\n  epochs: 2\n  lr: -0.1\n", 4, "distill.lr", "distill.lr=-0.1 must be a number > 0"),
    # a rule between two fields points at the field it names
    ("model: m\nstages: [prune, export]\nprune:\n  importance: taylor\n  method: unstructured\n", 4, "prune.importance",
     "prune.importance='taylor' ranks channels"),
    ("model: m\nexport:\n  exporter: dynamo\n  simplify: false\n  opset: 17\n", 5, "export.opset", "export.opset=17 is below 18"),
    # two levels deep
    ("model: m\ncluster:\n  finetune:\n    max_steps: 60\n    lr: -0.1\n", 5, "cluster.finetune.lr",
     "cluster.finetune.lr=-0.1 must be a number > 0"),
    ("model: m\nexport:\n  parity:\n    rtol: 0.1\n    atol: -1\n", 5, "export.parity.atol", "export.parity.atol=-1"),
    # a top-level field
    ("model: m\nbatch_sizes: [1, 0]\n", 2, "batch_sizes", "batch_sizes=(1, 0) must be a non-empty list of integers in 1..65536"),
])
def test_load_recipe_points_at_the_line_of_the_offending_field(tmp_path, body, line, key, fragment):
    path = tmp_path / "r.yaml"
    path.write_text(body, encoding="utf-8")
    with pytest.raises(TrtoptError) as e:
        load_recipe(path)
    assert e.value.key == key
    assert str(e.value).startswith(f"recipe {path} line {line}: {fragment}")


def test_load_recipe_points_at_the_section_for_a_field_it_does_not_write(tmp_path):
    """method: params needs param_budget, which the file leaves out: the error names the key, the line is the section's."""
    path = tmp_path / "r.yaml"
    path.write_text("model: m\nfactorize:\n  method: params\n", encoding="utf-8")
    with pytest.raises(TrtoptError, match=rf"^recipe {path} line 2: factorize\.param_budget=None must be a number "
                                          r"in \(0, 1\)") as e:
        load_recipe(path)
    assert e.value.key == "factorize.param_budget"


def test_a_python_recipe_section_given_as_a_mapping_names_the_full_key():
    with pytest.raises(TrtoptError, match=r"^prune\.ratio=1\.5 must be a number in \[0, 1\)") as e:
        Recipe(model="m", prune={"ratio": 1.5})
    assert e.value.key == "prune.ratio"


def test_a_config_built_directly_names_its_field():
    """Outside a recipe the key is the field's own name (the CLI flag of the same name)."""
    from trtopt.compress.config import PruneConfig

    with pytest.raises(TrtoptError, match=r"^ratio=1\.0 must be a number in \[0, 1\); fix: give the fraction") as e:
        PruneConfig(ratio=1.0)
    assert e.value.key == "ratio"


def test_yaml_error_without_a_message_is_still_one_line(tmp_path, monkeypatch):
    import yaml

    def fails(_text):
        raise yaml.YAMLError()  # str() is "": the message must not crash on its first line

    path = tmp_path / "r.yaml"
    path.write_text("model: tests.helpers.tiny_models:tiny_cnn\n")
    monkeypatch.setattr(yaml, "safe_load", fails)
    with pytest.raises(TrtoptError, match=r"is not valid YAML \(YAMLError\)"):
        load_recipe(path)
