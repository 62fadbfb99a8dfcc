"""Read a stack's config file (``stacks/Pulumi.<stack>.yaml``) the way Pulumi passes config.

Pulumi's project rules come first (:mod:`providers.projectconfig`): required keys, secrets,
types, and ``Pulumi.yaml``'s defaults filled in, so the program sees what ``pulumi up`` would
hand it and a stack Pulumi refuses is refused here with Pulumi's message.  Values become
strings (objects and lists as JSON, as ``pulumi config --path`` stores them); ``{secure: …}``
values are encrypted for the stack's secrets provider and cannot be read offline, so they
become a placeholder that is marked secret (what ``plan`` and the tests need).
"""

from __future__ import annotations

import difflib
import json
from pathlib import Path
from typing import Any

import yaml

from providers import projectconfig
from skyferry.core.errors import ConfigurationError

ROOT = Path(__file__).resolve().parent.parent
STACKS_DIR = ROOT / "stacks"
#: What a ``secure:`` value reads as offline: it stands for a secret of any valid length.
SECRET_PLACEHOLDER = "[encrypted: set with pulumi config set --secret]"  # noqa: S105 (a placeholder)


def stack_names() -> list[str]:
    """The stacks that have a config file in ``stacks/``."""
    return sorted(p.name[len("Pulumi.") : -len(".yaml")] for p in STACKS_DIR.glob("Pulumi.*.yaml"))


def _as_string(value: Any) -> str:
    """A stack file value as Pulumi holds it: a scalar's text, anything else as JSON."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str | int | float):
        return str(value)
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


def stack_values(config: dict[str, Any]) -> dict[str, projectconfig.StackValue]:
    """``config:`` of a stack file as Pulumi holds it: text, secure flag, object flag."""
    values: dict[str, projectconfig.StackValue] = {}
    for key, value in config.items():
        plain = _unwrap_secure(value)
        values[key] = projectconfig.StackValue(
            _as_string(plain),
            secure=_contains_secure(value),
            object=isinstance(plain, dict | list),
        )
    return values


def parse_config(
    config: dict[str, Any], stack: str | None = None, project: projectconfig.Project | None = None
) -> tuple[dict[str, str], set[str]]:
    """``config:`` of a stack file → (values as strings, keys whose value is or holds a secret).

    With the ``stack``'s name, Pulumi's project rules are applied first (``Pulumi.yaml`` unless
    ``project`` is given): a :class:`~providers.projectconfig.PulumiConfigError` when Pulumi
    would refuse the stack, and ``Pulumi.yaml``'s defaults filled in.  Without it, the file's
    values only, as they are.
    """
    values = stack_values(config)
    if stack is not None:
        values = projectconfig.apply(project or projectconfig.load_project(), stack, values)
    return {k: v.text for k, v in values.items()}, {k for k, v in values.items() if v.secure}


def read_stack(stack: str, stacks_dir: Path = STACKS_DIR) -> tuple[dict[str, str], set[str]]:
    """The config of ``stack`` as Pulumi would pass it; ConfigurationError naming the file or key."""
    path = stacks_dir / f"Pulumi.{stack}.yaml"
    if not path.is_file():
        names = stack_names()
        close = difflib.get_close_matches(stack, names, n=1)
        raise ConfigurationError(
            f"no stack {stack!r}: {path.name} not found in stacks/ (known: {', '.join(names) or 'none'})",
            hint=f"did you mean --stack {close[0]}?" if close else None,
        )
    try:
        document = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigurationError(f"{path.name} is not valid YAML: {e}") from e
    config = document.get("config", {}) if isinstance(document, dict) else None
    if not isinstance(config, dict):
        raise ConfigurationError(f"{path.name}: 'config' must be a mapping")
    return parse_config(config, stack)
