"""``skyferry plan --stack NAME``: what ``pulumi up`` would create, offline, with policy findings.

Runs the stack program (``stacks/__main__.py``'s two lines) under Pulumi mocks with the
stack's config file, then prints every resource (type, name, parent, key settings), the
stack outputs and the policy findings, as a table, JSON, or a Mermaid graph.  No Pulumi
CLI, no credentials, no network.  Secret values are never printed.

The app mounts :func:`command` lazily (``app/skyferry/cli.py`` imports this module only inside its
``plan`` command, so an app image without the infra dependencies still works)::

    @app.command()
    def plan(stack: str = typer.Option(..., "--stack"), format: str = typer.Option("table", "--format")) -> None:
        from providers.plan import command
        raise typer.Exit(command(stack, format))

Exit codes: 0 no finding, 1 policy findings, 2 bad input (unknown stack or format, bad config).
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from providers import policies
from providers.base import current_stack_config, deploy
from providers.graph import Graph, Node, run_program
from providers.stackfile import STACKS_DIR, read_stack
from skyferry.core.errors import ConfigurationError

FORMATS = ("table", "json", "mermaid")
SECRET_MASK = "[secret]"  # noqa: S105 (a mask, not a password)
_SKIP_SETTINGS = ("tags", "labels", "metadata.labels", "tagsAll")


@dataclass
class Plan:
    """The offline plan of one stack: its resource graph and the policy findings over it."""

    stack: str
    graph: Graph
    findings: list[policies.Finding]


def make_plan(stack: str, stacks_dir: Path = STACKS_DIR) -> Plan:
    """Run ``stack``'s program under mocks and evaluate the policies (ConfigurationError on bad input)."""
    values, secret_keys = read_stack(stack, stacks_dir)
    graph = run_program(lambda: deploy(current_stack_config()), values, secret_keys, stack=stack)
    return Plan(stack=stack, graph=graph, findings=policies.evaluate(graph))


def masked_inputs(node: Node) -> Any:
    """The node's inputs with every secret value replaced by ``[secret]``."""

    def walk(value: Any, path: str) -> Any:
        if path and node.is_secret(path):
            return SECRET_MASK
        if isinstance(value, dict):
            return {k: walk(v, f"{path}.{k}" if path else k) for k, v in value.items()}
        if isinstance(value, list):
            return [walk(v, f"{path}.{i}" if path else str(i)) for i, v in enumerate(value)]
        return value

    return walk(node.inputs, "")


def key_settings(node: Node, limit: int = 6) -> list[str]:
    """A few ``path=value`` scalars that characterize the resource (secrets masked, tags skipped)."""
    flat: list[str] = []

    def walk(value: Any, path: str) -> None:
        if path.startswith(_SKIP_SETTINGS) or path.endswith(("containerDefinitions",)):
            return
        if isinstance(value, dict):
            for k, v in value.items():
                walk(v, f"{path}.{k}" if path else k)
        elif isinstance(value, list):
            if all(not isinstance(v, (dict, list)) for v in value) and value:
                flat.append(f"{path}=[{', '.join(str(v) for v in value)[:40]}]")
            else:
                for i, v in enumerate(value):
                    walk(v, f"{path}.{i}")
        elif value not in (None, "", {}):
            text = str(value) if isinstance(value, (str, int, float, bool)) else repr(value)
            flat.append(f"{path}={text if len(text) <= 48 else text[:45] + '...'}")

    walk({k: v for k, v in masked_inputs(node).items() if k not in ("kind", "apiVersion")}, "")
    flat.sort(key=lambda item: item.split("=", 1)[0].count("."))  # top-level settings first
    return flat[:limit]


def _short(urn: str | None, graph: Graph) -> str:
    if not urn:
        return ""
    parent = graph.node(urn)
    return parent.name if parent else ""


def as_json(plan: Plan) -> str:
    """The plan as JSON: resources (full inputs, secrets masked), outputs, findings."""
    document = {
        "stack": plan.stack,
        "resources": [
            {
                "urn": n.urn,
                "type": n.type,
                "name": n.name,
                "parent": _short(n.parent, plan.graph) or None,
                "dependencies": [d.rsplit("::", 1)[-1] for d in n.dependencies],
                "inputs": masked_inputs(n),
            }
            for n in plan.graph.nodes
        ],
        "outputs": {
            k: {"value": SECRET_MASK if o.secret else o.value, "secret": o.secret}
            for k, o in plan.graph.outputs.items()
        },
        "findings": [
            {"rule": f.rule, "resource_type": f.resource_type, "resource": f.resource_name, "message": f.message}
            for f in plan.findings
        ],
    }
    return json.dumps(document, indent=2, sort_keys=False, default=str)


def as_table(plan: Plan) -> str:
    """The plan as aligned text tables: resources, outputs, findings."""
    rows = [("TYPE", "NAME", "PARENT", "KEY SETTINGS")]
    rows += [(n.type, n.name, _short(n.parent, plan.graph), "; ".join(key_settings(n))) for n in plan.graph.nodes]
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    lines = [f"Stack {plan.stack}: {len(plan.graph.nodes)} resources to create", ""]
    lines += [f"{r[0]:<{widths[0]}}  {r[1]:<{widths[1]}}  {r[2]:<{widths[2]}}  {r[3]}".rstrip() for r in rows]
    lines += ["", "OUTPUTS"]
    for key, out in plan.graph.outputs.items():
        lines.append(f"  {key} = {SECRET_MASK if out.secret else out.value}")
    lines += ["", f"POLICY FINDINGS: {len(plan.findings)}"]
    lines += [f"  {f}" for f in plan.findings]
    return "\n".join(lines)


def _mermaid_label(text: str) -> str:
    return text.replace('"', "#quot;")


def as_mermaid(plan: Plan) -> str:
    """The resource graph as a Mermaid flowchart: solid edges parent→child, dotted edges dependencies."""
    ids = {n.urn: f"r{i}" for i, n in enumerate(plan.graph.nodes)}
    lines = ["flowchart TD"]
    flagged = {f.urn for f in plan.findings}
    for n in plan.graph.nodes:
        lines.append(f'  {ids[n.urn]}["{_mermaid_label(n.name)}<br/><small>{_mermaid_label(n.type)}</small>"]')
    for n in plan.graph.nodes:
        if n.parent in ids:
            lines.append(f"  {ids[n.parent]} --> {ids[n.urn]}")
        for dep in n.dependencies:
            if dep in ids and dep != n.parent:
                lines.append(f"  {ids[dep]} -.-> {ids[n.urn]}")
    if flagged & ids.keys():
        lines.append("  classDef finding stroke:#d33,stroke-width:3px")
        lines.append(f"  class {','.join(ids[u] for u in ids if u in flagged)} finding")
    return "\n".join(lines)


RENDERERS = {"table": as_table, "json": as_json, "mermaid": as_mermaid}


def command(
    stack: str,
    fmt: str = "table",
    out: TextIO | None = None,
    err: TextIO | None = None,
    stacks_dir: Path = STACKS_DIR,
) -> int:
    """Print the plan of ``stack`` in ``fmt``; return the exit code (0 clean, 1 findings, 2 bad input)."""
    out = out or sys.stdout
    err = err or sys.stderr
    if fmt not in RENDERERS:
        print(f"--format: unknown format {fmt!r}; expected one of {', '.join(FORMATS)}", file=err)
        return 2
    try:
        plan = make_plan(stack, stacks_dir)
    except ConfigurationError as e:
        print(f"plan {stack}: {e}", file=err)
        return 2
    print(RENDERERS[fmt](plan), file=out)
    return 1 if plan.findings else 0
