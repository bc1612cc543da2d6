"""Input declarations: trtexec/Polygraphy shape forms, dtypes, ranges, dynamic axes, and how they apply."""

from __future__ import annotations

import pytest

from trtopt.config import Recipe
from trtopt.errors import TrtoptError
from trtopt.models.inputs import (
    InputDeclaration,
    declarations_from_dict,
    declare_inputs,
    example_batch,
    parse_declarations,
    parse_dims,
    parse_shape_list,
)
from trtopt.models.spec import InputSpec, image_inputs


def test_trtexec_and_polygraphy_shapes_with_inputs_separated_by_commas():
    assert parse_shape_list(["input_ids:8x64,attention_mask:8x64"], "--input-shape") == {
        "input_ids": (8, 64), "attention_mask": (8, 64)}
    assert parse_shape_list(["input:[1,3,224,224]", "mask:[1, 7]"], "--input-shape") == {
        "input": (1, 3, 224, 224), "mask": (1, 7)}
    assert parse_shape_list(["a:[2,3],b:2x3"], "--x") == {"a": (2, 3), "b": (2, 3)}
    assert parse_shape_list(["in:0:1x3"], "--x") == {"in:0": (1, 3)}  # ONNX names may hold ':'
    assert parse_shape_list(["1x3x224x224"], "--x") == {"": (1, 3, 224, 224)}


@pytest.mark.parametrize("text, needle", [("1xAx3", "cannot read shape"), ("1x0x3", "non-positive"),
                                          ("[]", "cannot read shape"), ("3x100000x100000x10", "elements")])
def test_bad_dims_are_one_line_errors(text, needle):
    with pytest.raises(TrtoptError, match=needle) as err:
        parse_dims(text, "--input-shape")
    assert "\n" not in str(err.value)


def test_an_input_given_twice_is_refused():
    with pytest.raises(TrtoptError, match="gives input 'x' twice"):
        parse_shape_list(["x:1x2", "x:1x3"], "--input-shape")


def test_declaration_flags_together():
    decl = parse_declarations(["input_ids:2x16,attention_mask:2x16"], ["input_ids:int64,attention_mask:int64"],
                              ["input_ids:[0,99]", "attention_mask:[0,1]"], ["input_ids:1=seq,attention_mask:1=seq"])
    assert decl == (InputDeclaration("input_ids", (2, 16), "int64", 0.0, 99.0, ((1, "seq"),)),
                    InputDeclaration("attention_mask", (2, 16), "int64", 0.0, 1.0, ((1, "seq"),)))
    assert example_batch(decl) == 2


@pytest.mark.parametrize("kwargs, needle", [
    ({"dtypes": ["x:int65"]}, "unknown dtype"),
    ({"ranges": ["x:0,5"]}, "cannot read --input-range"),
    ({"ranges": ["x:0"]}, "NAME:[LOW,HIGH]"),
    ({"ranges": ["x:[5,0]"]}, "LOW <= HIGH"),
    ({"dynamic": ["x:0=batch"]}, "AXIS >= 1"),
    ({"dynamic": ["x"]}, "write NAME:VALUE"),
])
def test_bad_declaration_flags(kwargs, needle):
    with pytest.raises(TrtoptError, match=needle.replace("[", r"\[").replace("]", r"\]")):
        parse_declarations(**kwargs)


def test_a_shape_without_the_batch_shows_the_corrected_form():
    with pytest.raises(TrtoptError) as err:
        declare_inputs(image_inputs(), parse_declarations(["3x224x224"]), "timm:resnet18")
    assert str(err.value) == ("shape 3x224x224 of input 'input' lacks the batch axis (the model's input has rank 4, "
                              "batch included); fix: include it, trtexec style: --input-shape input:1x3x224x224")


def test_declarations_apply_over_the_model_and_integer_ranges_include_high():
    model = (InputSpec("ids", (16,), "int64", 0, 100), InputSpec("mask", (16,), "int64", 0, 2))
    out = declare_inputs(model, parse_declarations(["ids:4x32,mask:4x32"], ranges=["ids:[0,9]"],
                                                   dynamic=["ids:1=seq", "mask:1=seq"]), "m")
    assert out == (InputSpec("ids", (32,), "int64", 0, 10, dynamic_axes=((1, "seq"),)),
                   InputSpec("mask", (32,), "int64", 0, 2, dynamic_axes=((1, "seq"),)))
    with pytest.raises(TrtoptError, match="input 'token' is declared, but m takes ids, mask"):
        declare_inputs(model, parse_declarations(["token:1x3"]), "m")
    with pytest.raises(TrtoptError, match="dynamic axis 2 .* beyond its shape"):
        declare_inputs(model, parse_declarations(dynamic=["ids:2=seq"]), "m")


def test_a_factory_forward_declares_its_inputs_by_name():
    declared = parse_declarations(["input_ids:2x16,attention_mask:2x16"], ["input_ids:int64,attention_mask:int64"])
    out = declare_inputs(image_inputs(), declared, "pkg:bert", ["input_ids", "attention_mask"])
    assert [(s.name, s.shape, s.dtype, s.low, s.high) for s in out] == [
        ("input_ids", (16,), "int64", 0, 2), ("attention_mask", (16,), "int64", 0, 2)]
    with pytest.raises(TrtoptError) as err:
        declare_inputs(image_inputs(), declared[:1], "pkg:bert", ["input_ids", "attention_mask"])
    assert "forward() takes input 'attention_mask', which has no declared shape" in str(err.value)
    assert "--input-shape input_ids:2x16,attention_mask:1xDIMS" in str(err.value)


def test_recipe_inputs_section():
    section = {"input_ids": {"shape": [8, 64], "dtype": "int64", "range": [0, 99], "dynamic": {1: "seq"}}}
    assert declarations_from_dict(section) == (InputDeclaration("input_ids", (8, 64), "int64", 0.0, 99.0, ((1, "seq"),)),)
    recipe = Recipe(model="m", inputs=section, input_shapes={"mask": (64,)})
    assert [d.name for d in recipe.input_declarations()] == ["mask", "input_ids"]
    assert recipe.input_declarations()[0].shape == (1, 64)  # the older form has no batch: 1 is prepended
    with pytest.raises(TrtoptError, match="inputs.x has unknown key 'shapes'") as err:
        Recipe(model="m", inputs={"x": {"shapes": [1]}})
    assert err.value.key == "inputs.x"
