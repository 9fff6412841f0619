"""Typed option schemas: validation, parsing of NAME=VALUE, and the methods' declarations."""

from __future__ import annotations

import json

import pytest

import attnlens
from attnlens.errors import InputError
from attnlens.options import Option, OptionSchema

SCHEMA = OptionSchema(
    Option("start_layer", int, 0, "first block", layer=True),
    Option("epsilon", float, 1e-6, "stabiliser", minimum=0.0),
    Option("ablation", bool, False, "weight by the gradient"),
    Option("mode", str, "mean", "how to reduce", choices=("mean", "max")),
)


def test_defaults_and_validation() -> None:
    assert SCHEMA.defaults() == {"start_layer": 0, "epsilon": 1e-6, "ablation": False, "mode": "mean"}
    assert SCHEMA.validate({"start_layer": -2, "epsilon": 1}) == {"start_layer": -2, "epsilon": 1.0, "ablation": False, "mode": "mean"}


@pytest.mark.parametrize(
    "values, message",
    [
        ({"start_layer": 1.5}, "start_layer must be an integer"),
        ({"start_layer": True}, "start_layer must be an integer"),
        ({"epsilon": -1.0}, "below its minimum"),
        ({"epsilon": float("nan")}, "must be a number"),
        ({"ablation": 1}, "True or False"),
        ({"mode": "median"}, "not one of"),
        ({"layer": 2}, "has no option"),
    ],
)
def test_invalid_values_are_one_line_errors(values, message) -> None:
    with pytest.raises(InputError, match=message) as error:
        SCHEMA.validate(values, "method 'x'")
    assert "\n" not in str(error.value)


def test_parse_name_value_strings() -> None:
    parsed = SCHEMA.parse(["start_layer=-1", "epsilon=1e-3", "ablation=yes", "mode=max"])
    assert parsed == {"start_layer": -1, "epsilon": 1e-3, "ablation": True, "mode": "max"}
    assert SCHEMA.parse(["start-layer=2"]) == {"start_layer": 2}
    for bad, message in (["start_layer"], "NAME=VALUE"), (["start_layer=two"], "integer"), (["nope=1"], "no option"):
        with pytest.raises(InputError, match=message):
            SCHEMA.parse(bad)


def test_schema_describes_itself_as_json() -> None:
    described = json.loads(json.dumps(SCHEMA.describe()))
    assert [entry["name"] for entry in described] == SCHEMA.names
    assert described[0]["layer"] is True and described[3]["choices"] == ["mean", "max"]
    assert "default 1e-06, 0.0..): stabiliser" in SCHEMA["epsilon"].summary()


def test_an_invalid_default_is_refused_at_declaration() -> None:
    with pytest.raises(InputError):
        Option("epsilon", float, -1.0, "x", minimum=0.0)
    with pytest.raises(ValueError, match="duplicate"):
        OptionSchema(Option("a", int, 0, "x"), Option("a", int, 1, "y"))


@pytest.mark.parametrize("name", sorted(attnlens.methods()))
def test_every_method_declares_its_options_once_as_a_schema(name: str) -> None:
    method = attnlens.get_method(name)
    assert isinstance(method.options, OptionSchema)
    for option in method.options:
        assert option.help and type(option.default) is option.type


def test_method_defaults_are_the_schema_defaults() -> None:
    assert attnlens.get_method("attention").defaults == {"layer": -1}
    assert attnlens.get_method("rollout").defaults == {"start_layer": 0}
    assert attnlens.get_method("partial_lrp").defaults == {"layer": -1, "ablation": False}
    assert attnlens.get_method("attnlrp").defaults == {"epsilon": 1e-6}
    assert attnlens.get_method("attention_gradcam").defaults == {}
