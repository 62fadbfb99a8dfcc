"""Pulumi.yaml: uv toolchain, main and stackConfigDir, every config key documented with the model's defaults."""

from __future__ import annotations

from typing import Any

import yaml
from pydantic.alias_generators import to_camel

from providers.base import TARGETS, CommonConfig
from tests.infra.tools import ROOT

PROJECT: dict[str, Any] = yaml.safe_load((ROOT / "Pulumi.yaml").read_text())


def test_runtime_main_and_stack_config_dir() -> None:
    assert PROJECT["name"] == "skyferry"
    assert PROJECT["runtime"] == {"name": "python", "options": {"toolchain": "uv"}}
    assert PROJECT["main"] == "stacks/"
    assert PROJECT["stackConfigDir"] == "stacks/"
    assert (ROOT / "stacks" / "__main__.py").is_file()


def test_every_key_is_documented_with_the_models_default() -> None:
    config = PROJECT["config"]
    for name, field in CommonConfig.model_fields.items():
        key = f"skyferry:{to_camel(name)}"
        assert key in config, f"{key} is not documented in Pulumi.yaml"
        assert len(config[key]["description"]) > 15, key
        default = field.default
        if isinstance(default, (str, int, bool)) and not field.is_required():
            assert config[key].get("default") == default, f"{key}: default differs from CommonConfig"
        if "SecretStr" in str(field.annotation):
            assert config[key].get("secret") is True, f"{key} must be declared secret"
    for target in TARGETS:
        assert f"skyferry:{target}" in config, f"the target section skyferry:{target} is not documented"
    known = {f"skyferry:{to_camel(n)}" for n in CommonConfig.model_fields} | {f"skyferry:{t}" for t in TARGETS}
    assert set(config) == known, f"documented keys the model does not have: {set(config) - known}"


def test_typed_keys_have_the_models_type_and_optional_keys_a_default() -> None:
    pulumi_type = {int: "integer", bool: "boolean", str: "string"}
    for name, field in CommonConfig.model_fields.items():
        declaration = PROJECT["config"][f"skyferry:{to_camel(name)}"]
        annotation = field.annotation
        if "type" in declaration:
            expected = pulumi_type.get(annotation, "string")  # type: ignore[call-overload]
            assert declaration["type"] == expected, f"skyferry:{to_camel(name)}: Pulumi type differs from the model"
        if not field.is_required():
            assert "default" in declaration, f"skyferry:{to_camel(name)} is optional but Pulumi would require it"
        if field.is_required():
            assert "default" not in declaration, f"skyferry:{to_camel(name)} is required but has a default"
