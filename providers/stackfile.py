"""Read a stack's config file (``stacks/Pulumi.<stack>.yaml``) the way Pulumi passes config.

Values become strings (objects and lists as JSON, as ``pulumi config --path`` stores them);
``{secure: …}`` values are encrypted for the stack's secrets provider and cannot be read
offline, so they become a placeholder that is marked secret (what ``plan`` and the tests need).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from skyferry.core.errors import ConfigurationError

ROOT = Path(__file__).resolve().parent.parent
STACKS_DIR = ROOT / "stacks"
SECRET_PLACEHOLDER = "[secret]"  # noqa: S105 (a placeholder, not a password)


def stack_names() -> list[str]:
    """The stacks that have a config file in ``stacks/``."""
    return sorted(p.name[len("Pulumi.") : -len(".yaml")] for p in STACKS_DIR.glob("Pulumi.*.yaml"))


def _as_string(value: Any) -> str:
    if isinstance(value, str):
        return value
    return json.dumps(value)


def _contains_secure(value: Any) -> bool:
    if isinstance(value, dict):
        return ("secure" in value and len(value) == 1) or any(_contains_secure(v) for v in value.values())
    if isinstance(value, list):
        return any(_contains_secure(v) for v in value)
    return False


def _unwrap_secure(value: Any) -> Any:
    if isinstance(value, dict):
        if "secure" in value and len(value) == 1:
            return SECRET_PLACEHOLDER
        return {k: _unwrap_secure(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_unwrap_secure(v) for v in value]
    return value


def parse_config(config: dict[str, Any]) -> tuple[dict[str, str], set[str]]:
    """``config:`` of a stack file → (values as strings, keys whose value is or holds a secret)."""
    values: dict[str, str] = {}
    secret: set[str] = set()
    for key, value in config.items():
        if _contains_secure(value):
            secret.add(key)
        values[key] = _as_string(_unwrap_secure(value))
    return values, secret


def read_stack(stack: str, stacks_dir: Path = STACKS_DIR) -> tuple[dict[str, str], set[str]]:
    """The config of ``stack``; ConfigurationError naming the file if it is missing or malformed."""
    path = stacks_dir / f"Pulumi.{stack}.yaml"
    if not path.is_file():
        known = ", ".join(stack_names()) or "none"
        raise ConfigurationError(f"no stack {stack!r}: {path.name} not found in stacks/ (known: {known})")
    try:
        document = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigurationError(f"{path.name} is not valid YAML: {e}") from e
    config = document.get("config", {}) if isinstance(document, dict) else None
    if not isinstance(config, dict):
        raise ConfigurationError(f"{path.name}: 'config' must be a mapping")
    return parse_config(config)
