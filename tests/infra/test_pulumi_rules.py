"""Pulumi's own config rules (``providers.projectconfig``) on Pulumi.yaml and every stack file.

Each rule's case quotes the message the Pulumi CLI prints (``mergeConfig``,
``validateStackConfigValue``, ``Project.Validate``).  Every example stack passes both Pulumi's
rules and ``load_stack_config``; deliberately broken stacks are refused by both, naming the
same key.
"""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from providers import projectconfig
from providers.base import StackConfigError, load_stack_config
from providers.projectconfig import PulumiConfigError, StackValue
from providers.stackfile import STACKS_DIR, parse_config, stack_names, stack_values
from tests.infra.tools import ROOT

PROJECT = projectconfig.load_project()


def project(config: dict[str, Any]) -> projectconfig.Project:
    """A project named skyferry with only ``config``."""
    return projectconfig.parse_project({"name": "skyferry", "runtime": "python", "config": config})


def stack_file(name: str) -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load((STACKS_DIR / f"Pulumi.{name}.yaml").read_text())
    return document["config"]


# --- the project file and the example stacks ------------------------------------------------


def test_the_project_file_passes_pulumis_project_rules() -> None:
    document = yaml.safe_load((ROOT / "Pulumi.yaml").read_text())
    projectconfig.validate_project(projectconfig.parse_project(document))


@pytest.mark.parametrize("stack", stack_names())
def test_every_example_stack_passes_pulumi_and_load_stack_config(stack: str) -> None:
    values, secret = parse_config(stack_file(stack), stack)
    config = load_stack_config(values, secret)
    assert config.common.target == stack
    # Pulumi fills every other target's section with its default, and the program accepts it
    for other in {"kubernetes", "aws", "azure", "gcp"} - {stack}:
        assert values[f"skyferry:{other}"] == "{}"


def test_a_minimal_stack_without_other_sections_passes_both() -> None:
    minimal = {
        "aws:region": "eu-west-1",
        "skyferry:target": "aws",
        "skyferry:image": "123456789012.dkr.ecr.eu-west-1.amazonaws.com/skyferry:1",
        "skyferry:apiToken": {"secure": "v1:abc"},
        "skyferry:aws": {"certificateArn": "arn:aws:acm:eu-west-1:123456789012:certificate/abc"},
    }
    values, secret = parse_config(minimal, "minimal")
    assert secret == {"skyferry:apiToken"}
    assert values["skyferry:labels"] == "{}"
    assert values["skyferry:databasePassword"] == ""
    config = load_stack_config(values, secret)
    assert config.common.database_password is None
    assert config.common.labels == {}


# --- mergeConfig: required keys --------------------------------------------------------------


def test_keys_of_the_project_namespace_without_default_or_value_are_required() -> None:
    rules = project(
        {
            "skyferry:a": {"type": "string"},
            "b": {"type": "string"},
            "skyferry:c": {"description": "untyped, no default"},
            "skyferry:d": {"type": "string", "default": "x"},
            "aws:region": {"value": "eu-west-1"},
        }
    )
    with pytest.raises(PulumiConfigError) as info:
        projectconfig.merge_config(rules, "dev", {})
    assert str(info.value) == "Stack 'dev' is missing configuration values 'b', 'skyferry:a' and 'skyferry:c'"
    with pytest.raises(PulumiConfigError) as info:
        projectconfig.merge_config(rules, "dev", {"skyferry:a": StackValue("1"), "skyferry:b": StackValue("2")})
    assert str(info.value) == "Stack 'dev' is missing configuration value 'skyferry:c'"
    merged = projectconfig.merge_config(
        rules, "dev", {"skyferry:a": StackValue("1"), "skyferry:b": StackValue("2"), "skyferry:c": StackValue("3")}
    )
    assert merged["skyferry:d"] == StackValue("x")
    assert merged["aws:region"] == StackValue("eu-west-1")


def test_defaults_become_text_or_json_objects() -> None:
    rules = project({"skyferry:n": 3, "skyferry:on": True, "skyferry:tags": {"default": {}}, "skyferry:l": [1]})
    merged = projectconfig.merge_config(rules, "dev", {})
    assert merged["skyferry:n"] == StackValue("3")
    assert merged["skyferry:on"] == StackValue("true")
    assert merged["skyferry:tags"] == StackValue("{}", object=True)
    assert merged["skyferry:l"] == StackValue("[1]", object=True)


# --- validateStackConfigValue: secrets and types ---------------------------------------------


def test_a_typed_secret_needs_a_secure_value_even_when_it_has_a_default() -> None:
    rules = project({"skyferry:token": {"type": "string", "secret": True}, "skyferry:pw": {"secret": True}})
    message = "Stack 'dev' with configuration key 'skyferry:token' must be encrypted as it's secret"
    with pytest.raises(PulumiConfigError, match=message):
        projectconfig.apply(rules, "dev", {"skyferry:token": StackValue("x"), "skyferry:pw": StackValue("y")})
    # untyped: Pulumi checks neither type nor secret
    projectconfig.apply(rules, "dev", {"skyferry:token": StackValue("x", secure=True), "skyferry:pw": StackValue("y")})
    with_default = project({"skyferry:token": {"type": "string", "secret": True, "default": ""}})
    with pytest.raises(PulumiConfigError, match="must be encrypted"):
        projectconfig.apply(with_default, "dev", {})


@pytest.mark.parametrize(
    ("type_", "text", "ok"),
    [
        ("integer", "2", True),
        ("integer", "+2", True),
        ("integer", "-007", True),
        ("integer", "2.0", False),
        ("integer", "two", False),
        ("integer", "", False),
        ("boolean", "true", True),
        ("boolean", "false", True),
        ("boolean", "True", False),
        ("boolean", "yes", False),
        ("string", "anything", True),
    ],
)
def test_typed_values_follow_pulumis_type_rules(type_: str, text: str, ok: bool) -> None:
    rules = project({"skyferry:k": {"type": type_}})
    if ok:
        projectconfig.apply(rules, "dev", {"skyferry:k": StackValue(text)})
        return
    with pytest.raises(PulumiConfigError, match=f"configuration key 'skyferry:k' must be of type '{type_}'"):
        projectconfig.apply(rules, "dev", {"skyferry:k": StackValue(text)})


def test_an_object_for_a_typed_string_is_refused() -> None:
    rules = project({"skyferry:k": {"type": "string"}})
    with pytest.raises(PulumiConfigError, match="must be of type 'string'"):
        projectconfig.apply(rules, "dev", {"skyferry:k": StackValue('{"a": 1}', object=True)})


# --- Project.Validate: defaults, arrays, the namespace rule ----------------------------------


@pytest.mark.parametrize(
    ("config", "message"),
    [
        (
            {"aws:region": {"type": "string", "value": "x"}},
            "not namespaced by the project and should not define a type",
        ),
        ({"aws:region": {"default": "x"}}, "should not define a default value"),
        ({"aws:region": {"description": "where"}}, "is namespaced and must provide an attribute 'value'"),
        ({"skyferry:n": {"type": "integer", "default": "two"}}, "not of the expected type 'integer'"),
        ({"skyferry:n": {"default": 1, "value": 2}}, "cannot have both a 'default' and 'value' attribute"),
        ({"skyferry:l": {"type": "array"}}, "does not specify the underlying type via the 'items' attribute"),
    ],
)
def test_project_rules(config: dict[str, Any], message: str) -> None:
    with pytest.raises(PulumiConfigError, match=message):
        projectconfig.validate_project(project(config))


def test_the_project_schema_allows_no_object_type_and_no_unknown_attribute() -> None:
    with pytest.raises(PulumiConfigError, match="type: value must be one of"):
        project({"skyferry:labels": {"type": "object"}})
    with pytest.raises(PulumiConfigError, match="'required' not allowed"):
        project({"skyferry:x": {"type": "string", "required": True}})
    # a namespaced shorthand is a value, a project one a default
    rules = project({"aws:region": "eu-west-1", "skyferry:name": "ledger"})
    assert rules.config["aws:region"].value == "eu-west-1"
    assert rules.config["skyferry:name"].default == "ledger"


# --- broken stacks: Pulumi and load_stack_config agree ----------------------------------------


def _program_view(config: dict[str, Any]) -> tuple[dict[str, str], set[str]]:
    """What the program would see: the stack's values over Pulumi.yaml's defaults, unchecked."""
    merged = dict(stack_values(config))
    for key, declaration in PROJECT.config.items():
        if key not in merged and declaration.default is not None:
            merged[key] = projectconfig._config_value(declaration.default)
    return {k: v.text for k, v in merged.items()}, {k for k, v in merged.items() if v.secure}


BROKEN: list[tuple[str, dict[str, Any], str]] = [
    ("no api token", {"skyferry:apiToken": None}, "skyferry:apiToken"),
    ("plain api token", {"skyferry:apiToken": "a-plain-text-token-0123456789"}, "skyferry:apiToken"),
    ("no image", {"skyferry:image": None}, "skyferry:image"),
    ("no target", {"skyferry:target": None}, "skyferry:target"),
    ("replicas as a word", {"skyferry:apiReplicas": "two"}, "skyferry:apiReplicas"),
    ("replicas as a float", {"skyferry:apiReplicas": "2.0"}, "skyferry:apiReplicas"),
    ("boolean as yes", {"skyferry:deletionProtection": "yes"}, "skyferry:deletionProtection"),
    ("boolean capitalized", {"skyferry:deletionProtection": "True"}, "skyferry:deletionProtection"),
]


@pytest.mark.parametrize(("label", "change", "key"), BROKEN, ids=[b[0] for b in BROKEN])
@pytest.mark.parametrize("stack", stack_names())
def test_broken_stacks_are_refused_by_pulumi_and_by_the_program(
    stack: str, label: str, change: dict[str, Any], key: str
) -> None:
    config = {**stack_file(stack), **change}
    config = {k: v for k, v in config.items() if v is not None}
    with pytest.raises(PulumiConfigError) as pulumi_error:
        parse_config(config, stack)
    assert f"'{key}'" in str(pulumi_error.value)
    values, secret = _program_view(config)
    with pytest.raises(StackConfigError) as ours:
        load_stack_config(values, secret)
    assert ours.value.key == key, f"{label}: Pulumi names {key}, load_stack_config names {ours.value.key}"
