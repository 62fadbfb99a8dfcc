"""One stack as ``pulumi up`` would run it: its config loaded as Pulumi loads it, its program under mocks.

* The config: ``stacks/Pulumi.<stack>.yaml`` merged with the project's ``Pulumi.yaml`` the
  way Pulumi's ``mergeConfig`` does (a project key of our namespace that the stack does not
  set takes its ``default``; one with neither ``default`` nor ``value`` is *missing*; a
  ``secret: true`` key must be ``secure:`` in the stack).  What Pulumi would refuse is
  recorded in :attr:`Deployment.refusals` (its own contract test), and the run goes on
  with what was given, so every other contract is still checked.
* Every ``secure:`` value is replaced by a generated secret, as ``pulumi config set
  --secret`` would have stored one (the file's ciphertexts are placeholders).
* The program is ``stacks/__main__.py`` itself (``current_stack_config()`` then
  ``deploy()``), run under :class:`~tests.rehearsal.mocks.RealisticMocks`; the graph keeps
  every resource's inputs and its outputs (ids, ARNs, emails, URLs).
"""

from __future__ import annotations

import copy
import runpy
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from providers.graph import Graph, GraphMonitor, Node, run_program
from providers.stackfile import STACKS_DIR, parse_config
from tests.rehearsal.mocks import RealisticMocks

ROOT = Path(__file__).resolve().parents[2]
PROJECT_FILE = ROOT / "Pulumi.yaml"
PROGRAM = ROOT / "stacks" / "__main__.py"


@dataclass
class Deployment:
    """What the rehearsal deploys: the stack's config (secrets in clear), the graph, what Pulumi refuses."""

    stack: str
    config: dict[str, str]
    secret_keys: set[str]
    secret_values: dict[str, str]
    refusals: list[str]
    graph: Graph
    project: str = "skyferry"
    extra: dict[str, Any] = field(default_factory=dict)

    def nodes(self, type_: str) -> list[Node]:
        """Every resource of a Pulumi type token."""
        return self.graph.by_type(type_)

    def one(self, type_: str) -> Node:
        """The one resource of ``type_`` (the graph must declare exactly one)."""
        found = self.graph.by_type(type_)
        assert len(found) == 1, f"expected one {type_}, the graph declares {len(found)}"
        return found[0]

    def by_output(self, key: str, value: Any) -> Node | None:
        """The resource whose output ``key`` is ``value`` (``id``, ``arn``, ``name`` …)."""
        return next((n for n in self.graph.nodes if n.outputs.get(key) == value), None)


class StateMonitor(GraphMonitor):
    """A :class:`GraphMonitor` that also keeps each resource's full output state."""

    def RegisterResource(self, request: Any) -> Any:
        """Record the node (the base class), then its outputs as the mocks computed them."""
        response = super().RegisterResource(request)
        if request.type != "pulumi:pulumi:Stack" and self.nodes:
            node = self.nodes[-1]
            registration = self.resources.get(node.urn)
            if registration is not None:
                node.outputs = {"id": registration.id, **dict(registration.state)}
        return response


def secret_value(key: str) -> str:
    """A fresh value for a ``secure:`` key: what an operator would store with ``--secret``."""
    return "sf-" + secrets.token_urlsafe(24)


def _walk_secure(value: Any, path: str, found: dict[str, str], chosen: Mapping[str, str]) -> Any:
    if isinstance(value, dict):
        if set(value) == {"secure"}:
            found[path] = chosen.get(path) or secret_value(path)
            return found[path]
        return {k: _walk_secure(v, f"{path}.{k}", found, chosen) for k, v in value.items()}
    if isinstance(value, list):
        return [_walk_secure(v, f"{path}.{i}", found, chosen) for i, v in enumerate(value)]
    return value


def _default_text(value: Any) -> str:
    """A project default as Pulumi stores it (``createConfigValue``: primitives as text, else JSON)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str | int | float):
        return str(value)
    import json

    return json.dumps(value)


def pulumi_refusals(stack: str, project: Mapping[str, Any], config: Mapping[str, Any]) -> list[str]:
    """What Pulumi's config validation refuses in ``config`` (a stack file's ``config:``), as it words it.

    The rules of ``mergeConfig`` (``sdk/go/common/workspace`` in Pulumi's repository): a key
    of the project's namespace with neither ``default`` nor ``value`` must be set by the
    stack, and a ``secret: true`` key must be a ``secure:`` value.
    """
    name = project.get("name", "")
    declared: Mapping[str, Any] = project.get("config") or {}
    missing = sorted(
        key
        for key, spec in declared.items()
        if key.split(":", 1)[0] == name
        and key not in config
        and not (isinstance(spec, dict) and ("default" in spec or "value" in spec))
    )
    refusals = []
    if missing:
        plural = "values" if len(missing) > 1 else "value"
        refusals.append(f"Stack '{stack}' is missing configuration {plural} " + ", ".join(f"'{k}'" for k in missing))
    for key, spec in sorted(declared.items()):
        value = config.get(key)
        secure = isinstance(value, dict) and set(value) == {"secure"}
        if isinstance(spec, dict) and spec.get("secret") and value is not None and not secure:
            refusals.append(f"Stack '{stack}' with configuration key '{key}' must be encrypted as it's secret")
    return refusals


def load_config(
    stack: str,
    overrides: Mapping[str, Any] | None = None,
    secrets_chosen: Mapping[str, str] | None = None,
    stacks_dir: Path = STACKS_DIR,
) -> tuple[dict[str, str], set[str], dict[str, str], list[str]]:
    """The stack's config as the program receives it: ``(values, secret keys, secret values, refusals)``.

    ``overrides`` replace top-level keys of the stack file (``None`` removes a key), for a
    variant of the example stack; ``secrets_chosen`` fixes the value of a ``secure:`` path.
    """
    project = yaml.safe_load(PROJECT_FILE.read_text())
    document = yaml.safe_load((stacks_dir / f"Pulumi.{stack}.yaml").read_text()) or {}
    config = copy.deepcopy(document.get("config") or {})
    for key, value in (overrides or {}).items():
        if value is None:
            config.pop(key, None)
        else:
            config[key] = value
    refusals = pulumi_refusals(stack, project, config)
    _, secret_keys = parse_config(config)
    found: dict[str, str] = {}
    clear = {k: _walk_secure(v, k, found, secrets_chosen or {}) for k, v in config.items()}
    values, _ = parse_config(clear)
    for key, spec in (project.get("config") or {}).items():
        if key not in values and isinstance(spec, dict) and ("default" in spec or "value" in spec):
            values[key] = _default_text(spec.get("default", spec.get("value")))
    return values, secret_keys, found, refusals


def run_stack_program(values: Mapping[str, str], secret_keys: set[str], stack: str) -> Graph:
    """``stacks/__main__.py`` under :class:`RealisticMocks`; the graph with every resource's outputs."""
    monitor = StateMonitor(RealisticMocks(values))

    def program() -> None:
        runpy.run_path(str(PROGRAM), run_name="__main__")

    return run_program(program, values, secret_keys, stack=stack, monitor=monitor)


def deploy(
    stack: str, overrides: Mapping[str, Any] | None = None, secrets_chosen: Mapping[str, str] | None = None
) -> Deployment:
    """Load ``stack`` as Pulumi does and run its program: the :class:`Deployment` to rehearse."""
    values, secret_keys, secret_values, refusals = load_config(stack, overrides, secrets_chosen)
    graph = run_stack_program(values, secret_keys, stack)
    return Deployment(
        stack=stack,
        config=values,
        secret_keys=secret_keys,
        secret_values=secret_values,
        refusals=refusals,
        graph=graph,
    )
