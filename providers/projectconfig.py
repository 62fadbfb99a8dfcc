"""Pulumi's own project-config rules, applied as the Pulumi CLI applies them before a program runs.

``pulumi preview`` / ``pulumi up`` read ``Pulumi.yaml``'s ``config:`` block and the stack file,
and refuse to start the program when they disagree.  The rules below restate, one function
each, what the Pulumi CLI does (Go SDK, package ``workspace``):

:func:`validate_project` (``Project.Validate`` and the project file's JSON schema)
    * a declaration is a scalar or array shorthand, or an object with only ``type``, ``items``,
      ``description``, ``secret``, ``default`` and ``value``; ``type`` is one of ``string``,
      ``integer``, ``boolean``, ``array`` (an ``array`` needs ``items``);
    * never both ``default`` and ``value``;
    * **the namespace rule**: a key of the project's namespace (``skyferry:x`` or a bare ``x``)
      may have a type and a default (checked against the type); a key of another namespace
      (``aws:region``) may have neither, and must give a ``value``.
:func:`merge_config` (``mergeConfig``)
    * every key of the project's namespace with neither ``default`` nor ``value`` that the stack
      does not set is **required**: all of them are reported at once, sorted, as
      ``Stack 'NAME' is missing configuration values 'a' and 'b'``;
    * a key the stack does not set gets the declared default (or value); a scalar stays a plain
      string, anything else becomes JSON.
:func:`validate_stack_values` (``validateStackConfigValues``), for explicitly typed keys only
    * ``secret: true`` needs a ``secure:`` value in the stack (a default is never secure);
    * ``string`` needs a string, ``integer`` a whole number or a string ``strconv.Atoi`` parses,
      ``boolean`` ``true``/``false`` (a YAML boolean or exactly those strings).

Untyped declarations are neither type- nor secret-checked by Pulumi.  ``stackfile.read_stack``
applies all of this, so ``skyferry plan`` refuses what ``pulumi preview`` refuses, with the
same message, and hands the program what Pulumi would hand it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from skyferry.core.errors import ConfigurationError

PROJECT_FILE = Path(__file__).resolve().parent.parent / "Pulumi.yaml"
SIMPLE_TYPES = ("string", "integer", "boolean", "array")
_DECLARATION_KEYS = frozenset({"type", "items", "description", "secret", "default", "value"})
_ATOI = re.compile(r"[+-]?[0-9]+")
_INT64 = 2**63


class PulumiConfigError(ConfigurationError):
    """What the Pulumi CLI would print before refusing to run the program."""


@dataclass(frozen=True)
class Declaration:
    """One entry of ``Pulumi.yaml``'s ``config:`` (after Pulumi's shorthand rewrite)."""

    key: str
    type: str | None = None
    items: Any = None
    description: str = ""
    secret: bool = False
    default: Any = None
    value: Any = None

    @property
    def typed(self) -> bool:
        """``IsExplicitlyTyped``: only typed declarations are type- and secret-checked."""
        return self.type is not None


@dataclass(frozen=True)
class Project:
    """The parts of ``Pulumi.yaml`` the config rules read."""

    name: str
    config: dict[str, Declaration] = field(default_factory=dict)


@dataclass(frozen=True)
class StackValue:
    """A stack config value as Pulumi holds it: its text (JSON for objects), and flags."""

    text: str
    secure: bool = False
    object: bool = False


def namespaced_by_project(project: str, key: str) -> bool:
    """``configKeyIsNamespacedByProject``: a bare key, or ``<project>:...``."""
    return ":" not in key or key.startswith(project + ":")


def full_key(project: str, key: str) -> str:
    """``parseConfigKey``: a bare key belongs to the project's namespace."""
    return key if ":" in key else f"{project}:{key}"


def _is_primitive(value: Any) -> bool:
    """``isPrimitiveValue``: string, integer or boolean (YAML scalars Pulumi keeps as text)."""
    return isinstance(value, str | int | bool)


def parse_project(document: Mapping[str, Any]) -> Project:
    """``Pulumi.yaml`` as Pulumi reads it, shorthands rewritten (``RewriteShorthandConfigValues``)."""
    name = document.get("name")
    if not isinstance(name, str) or not name:
        raise PulumiConfigError("project is missing a non-empty string 'name' attribute")
    raw_config = document.get("config") or {}
    if not isinstance(raw_config, Mapping):
        raise PulumiConfigError("Pulumi.yaml: 'config' must be a map of configuration keys")
    config: dict[str, Declaration] = {}
    for key, raw in raw_config.items():
        if _is_primitive(raw) or isinstance(raw, list):
            raw = {"default": raw} if namespaced_by_project(name, key) else {"value": raw}
        if not isinstance(raw, Mapping):
            raise PulumiConfigError(f"#/config/{key}: expected a value or a config type declaration")
        unknown = sorted(set(raw) - _DECLARATION_KEYS)
        if unknown:
            raise PulumiConfigError(f"#/config/{key}: additionalProperties {', '.join(map(repr, unknown))} not allowed")
        type_ = raw.get("type")
        if type_ is not None and type_ not in SIMPLE_TYPES:
            raise PulumiConfigError(f"#/config/{key}/type: value must be one of {', '.join(SIMPLE_TYPES)}")
        config[key] = Declaration(
            key=key,
            type=type_,
            items=raw.get("items"),
            description=str(raw.get("description") or ""),
            secret=bool(raw.get("secret", False)),
            default=raw.get("default"),
            value=raw.get("value"),
        )
    return Project(name=name, config=config)


def load_project(path: Path = PROJECT_FILE) -> Project:
    """Read and validate ``Pulumi.yaml``."""
    project = parse_project(yaml.safe_load(path.read_text()) or {})
    validate_project(project)
    return project


def _type_name(type_: str, items: Any) -> str:
    """``InferFullTypeName``."""
    if isinstance(items, Mapping):
        return f"array<{_type_name(str(items.get('type')), items.get('items'))}>"
    return type_


def valid_value(type_: str, items: Any, value: Any) -> bool:
    """``ValidateConfigValue``: whether ``value`` (text, or decoded JSON for objects) fits ``type_``."""
    if type_ == "string":
        return isinstance(value, str)
    if type_ == "integer":
        if isinstance(value, bool):
            return False
        if isinstance(value, int):
            return True
        if isinstance(value, float):
            return value == int(value)
        if isinstance(value, str):
            return bool(_ATOI.fullmatch(value)) and -_INT64 <= int(value) < _INT64
        return False
    if type_ == "boolean":
        return value in ("true", "false") or isinstance(value, bool)
    if type_ == "object":
        return isinstance(value, dict)
    if not isinstance(value, list) or not isinstance(items, Mapping):
        return False
    return all(valid_value(str(items.get("type")), items.get("items"), item) for item in value)


def validate_project(project: Project) -> None:
    """``Project.Validate``: defaults fit their types, and the namespace rule."""
    for key, declaration in project.config.items():
        if declaration.default is not None and declaration.value is not None:
            raise PulumiConfigError(f"project config '{key}' cannot have both a 'default' and 'value' attribute")
        if namespaced_by_project(project.name, key):
            if declaration.type == "array" and declaration.items is None:
                raise PulumiConfigError(
                    f"The configuration key '{key}' declares an array "
                    "but does not specify the underlying type via the 'items' attribute"
                )
            if declaration.typed and declaration.default is not None:
                assert declaration.type is not None
                if not valid_value(declaration.type, declaration.items, declaration.default):
                    raise PulumiConfigError(
                        f"The default value specified for configuration key '{key}' is not of the expected type "
                        f"'{_type_name(declaration.type, declaration.items)}'"
                    )
        else:
            if declaration.typed:
                raise PulumiConfigError(
                    f"Configuration key '{key}' is not namespaced by the project and should not define a type"
                )
            if declaration.default is not None:
                raise PulumiConfigError(
                    f"Configuration key '{key}' is not namespaced by the project and should not define a default "
                    "value. Did you mean to use the 'value' attribute instead of 'default'?"
                )
            if declaration.value is None:
                raise PulumiConfigError(
                    f"Configuration key '{key}' is namespaced and must provide an attribute 'value'"
                )


def _missing(stack: str, keys: list[str]) -> PulumiConfigError:
    """``missingStackConfigurationKeysError``, word for word."""
    keys = sorted(keys)
    if len(keys) == 1:
        listed = f"'{keys[0]}'"
    else:
        listed = "".join(f"'{k}', " for k in keys[:-2]) + f"'{keys[-2]}' and '{keys[-1]}'"
    plural = "values" if len(keys) > 1 else "value"
    return PulumiConfigError(f"Stack '{stack}' is missing configuration {plural} {listed}")


def _config_value(raw: Any) -> StackValue:
    """``createConfigValue``: a scalar as its text, anything else as a JSON object value."""
    if _is_primitive(raw):
        text = ("true" if raw else "false") if isinstance(raw, bool) else str(raw)
        return StackValue(text)
    return StackValue(json.dumps(raw), object=True)


def merge_config(project: Project, stack: str, values: Mapping[str, StackValue]) -> dict[str, StackValue]:
    """``mergeConfig``: required keys checked, declared defaults and values filled in."""
    merged = dict(values)
    missing: list[str] = []
    for key in sorted(project.config):
        declaration = project.config[key]
        name = full_key(project.name, key)
        if name in merged:
            continue
        has_default, has_value = declaration.default is not None, declaration.value is not None
        if not has_default and not has_value and name.split(":", 1)[0] == project.name:
            missing.append(key)
            continue
        if has_default or has_value:
            merged[name] = _config_value(declaration.default if has_default else declaration.value)
    if missing:
        raise _missing(stack, missing)
    return merged


def validate_stack_values(project: Project, stack: str, values: Mapping[str, StackValue]) -> None:
    """``validateStackConfigValues``: typed keys are secure when secret and of their type."""
    for key in sorted(project.config):
        declaration = project.config[key]
        if not declaration.typed:
            continue
        assert declaration.type is not None
        value = values.get(full_key(project.name, key), StackValue(""))
        if declaration.secret and not value.secure:
            raise PulumiConfigError(f"Stack '{stack}' with configuration key '{key}' must be encrypted as it's secret")
        content: Any = json.loads(value.text) if value.object else value.text
        if not valid_value(declaration.type, declaration.items, content):
            raise PulumiConfigError(
                f"Stack '{stack}' with configuration key '{key}' must be of type "
                f"'{_type_name(declaration.type, declaration.items)}'"
            )


def apply(project: Project, stack: str, values: Mapping[str, StackValue]) -> dict[str, StackValue]:
    """``ValidateStackConfigAndApplyProjectConfig``: merge, then validate; what the program gets."""
    merged = merge_config(project, stack, values)
    validate_stack_values(project, stack, merged)
    return merged
