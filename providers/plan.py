"""``skyferry plan --stack NAME``: what ``pulumi up`` would create, offline, with policy findings.

Runs the stack program (``stacks/__main__.py``'s two lines) under Pulumi mocks with the
stack's config file (Pulumi's own config rules applied first), then prints every resource,
the stack outputs and the policy findings, as a table, JSON, or a Mermaid graph.  No Pulumi
CLI, no credentials, no network.  Secret values are never printed.

What a user reads:

* **Deterministic**: resources are ordered by role, then type, then name, and every mapping by
  key, so two runs print the same bytes (the program registers resources concurrently).
* **Unknowns are unknown**: ids, ARNs, endpoints and the like are assigned by the cloud at
  deployment; under mocks they are made up.  Every value the mocks made up (and every host
  under ``.invalid``, the placeholder the platforms use for a name the cloud assigns) is shown
  as ``(known after deploy)``.
* **Grouped by role**: store, broker, compute, network, identity (and other), in the table and
  in the Mermaid picture, which draws one subgraph per role and one edge per pair of roles
  that depend on each other (with how many dependencies it stands for).
* The table fits 120 columns.

The app mounts :func:`command` lazily (``app/skyferry/cli.py`` imports this module only inside its
``plan`` command, so an app image without the infra dependencies still works).

Exit codes: 0 no finding, 1 policy findings, 2 bad input (unknown stack or format, bad config).
"""

from __future__ import annotations

import json
import re
import sys
import textwrap
from collections import Counter
from collections.abc import Callable
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
UNKNOWN = "(known after deploy)"
WIDTH = 120
ROLES = ("store", "broker", "compute", "network", "identity", "other")
_SKIP_SETTINGS = ("tags", "labels", "metadata.labels", "tagsAll")
_INVALID_HOST = re.compile(r"[A-Za-z0-9.-]*\.invalid\b")

#: Role of a resource, by the first pattern its type token matches (identity first: a queue
#: policy or an IAM member is about who may do what, whatever it is attached to).
_ROLE_PATTERNS: tuple[tuple[str, str], ...] = (
    (
        "identity",
        r"iam|IAM|Policy|RoleAssignment|ManagementLock|kms|KeyVault|keyvault|Key\b|secret|Secret|managedidentity"
        r"|serviceaccount|ServiceIdentity|CryptoKey|KeyRing",
    ),
    ("broker", r"sns|sqs|servicebus|pubsub|nats"),
    ("store", r"dynamodb|cosmosdb|documentdb|firestore|s3[:/]|storage|sql|postgres"),
    ("network", r"ec2|lb[:/]|alb|network|privatedns|Namespace"),
    (
        "compute",
        r"ecs|ecr|containerregistry|appautoscaling|cloudwatch|app:|cloudrun|artifactregistry|helm|operationalinsights|monitor",
    ),
)


def role_of(node: Node) -> str:
    """The role of a resource in the plan's grouping (see :data:`ROLES`)."""
    for role, pattern in _ROLE_PATTERNS:
        if re.search(pattern, node.type):
            return role
    return "other"


@dataclass
class Plan:
    """The offline plan of one stack: its resource graph and the policy findings over it."""

    stack: str
    graph: Graph
    findings: list[policies.Finding]

    def ordered(self) -> list[Node]:
        """The resources in print order: the component first, then by role, type and name."""
        return sorted(
            self.graph.nodes,
            key=lambda n: (n.custom, ROLES.index(role_of(n)), n.type, n.name, n.urn),
        )


def make_plan(stack: str, stacks_dir: Path = STACKS_DIR) -> Plan:
    """Run ``stack``'s program under mocks and evaluate the policies (ConfigurationError on bad input)."""
    values, secret_keys = read_stack(stack, stacks_dir)
    graph = run_program(lambda: deploy(current_stack_config()), values, secret_keys, stack=stack)
    findings = sorted(policies.evaluate(graph), key=lambda f: (f.rule, f.resource_type, f.resource_name, f.message))
    return Plan(stack=stack, graph=graph, findings=findings)


def _unknowns(graph: Graph) -> Callable[[str], str]:
    """A function showing every made-up value (or ``.invalid`` host) in a string as unknown."""
    tokens = sorted((t for t in graph.fabricated if len(t) >= 6), key=len, reverse=True)
    alternatives = "|".join(re.escape(t) for t in tokens)
    # a whole token only: skyferry-id is made up, skyferry-identity is a name
    pattern = re.compile(rf"(?<![\w-])(?:{alternatives})(?![\w-])") if tokens else None

    def show(text: str) -> str:
        if text in graph.fabricated:
            return UNKNOWN
        if pattern is not None:
            text = pattern.sub(UNKNOWN, text)
        return _INVALID_HOST.sub(UNKNOWN, text)

    return show


def shown_inputs(node: Node, show: Callable[[str], str] = str) -> Any:
    """The node's inputs as printed: keys sorted, secrets masked, made-up values unknown."""

    def walk(value: Any, path: str) -> Any:
        if path and node.is_secret(path):
            return SECRET_MASK
        if isinstance(value, dict):
            return {k: walk(value[k], f"{path}.{k}" if path else k) for k in sorted(value)}
        if isinstance(value, list):
            return [walk(v, f"{path}.{i}" if path else str(i)) for i, v in enumerate(value)]
        if isinstance(value, str):
            return _shown_text(value, show)
        return value

    return walk(node.inputs, "")


def _shown_text(value: str, show: Callable[[str], str]) -> str:
    """A string input as printed: an embedded JSON document (a policy) with its keys sorted."""
    if value[:1] in "[{":
        try:
            return show(json.dumps(json.loads(value), sort_keys=True))
        except ValueError:
            pass
    return show(value)


def masked_inputs(node: Node) -> Any:
    """The node's inputs with every secret value replaced by ``[secret]`` (keys sorted)."""
    return shown_inputs(node)


def key_settings(node: Node, show: Callable[[str], str] = str, limit: int = 6) -> list[str]:
    """A few ``path=value`` scalars that characterize the resource (secrets masked, tags skipped)."""
    flat: list[str] = []

    def walk(value: Any, path: str) -> None:
        if path.startswith(_SKIP_SETTINGS) or path.endswith(("containerDefinitions",)):
            return
        if isinstance(value, dict):
            for k in value:
                walk(value[k], f"{path}.{k}" if path else k)
        elif isinstance(value, list):
            if all(not isinstance(v, (dict, list)) for v in value) and value:
                flat.append(f"{path}=[{', '.join(str(v) for v in value)[:40]}]")
            else:
                for i, v in enumerate(value):
                    walk(v, f"{path}.{i}")
        elif value not in (None, "", {}):
            text = str(value) if isinstance(value, (str, int, float, bool)) else repr(value)
            flat.append(f"{path}={text if len(text) <= 48 else text[:45] + '...'}")

    inputs = shown_inputs(node, show)
    walk({k: v for k, v in inputs.items() if k not in ("kind", "apiVersion")}, "")
    flat.sort(key=lambda item: (item.split("=", 1)[0].count("."), item))  # top-level settings first
    return flat[:limit]


def _short(urn: str | None, graph: Graph) -> str:
    if not urn:
        return ""
    parent = graph.node(urn)
    return parent.name if parent else ""


def short_type(type_: str) -> str:
    """``aws:s3/bucketVersioning:BucketVersioning`` → ``aws:s3:BucketVersioning`` (the module path dropped)."""
    parts = type_.split(":")
    if len(parts) == 3:
        return f"{parts[0]}:{parts[1].split('/')[0]}:{parts[2]}"
    return type_


def as_json(plan: Plan) -> str:
    """The plan as JSON: resources (full inputs, secrets masked, unknowns marked), outputs, findings."""
    show = _unknowns(plan.graph)
    document = {
        "stack": plan.stack,
        "resources": [
            {
                "urn": n.urn,
                "type": n.type,
                "name": n.name,
                "role": role_of(n),
                "parent": _short(n.parent, plan.graph) or None,
                "dependencies": sorted(d.rsplit("::", 1)[-1] for d in n.dependencies),
                "inputs": shown_inputs(n, show),
            }
            for n in plan.ordered()
        ],
        "outputs": {
            k: {"value": SECRET_MASK if o.secret else _shown_output(o.value, show), "secret": o.secret}
            for k, o in plan.graph.outputs.items()
        },
        "findings": [
            {"rule": f.rule, "resource_type": f.resource_type, "resource": f.resource_name, "message": f.message}
            for f in plan.findings
        ],
    }
    return json.dumps(document, indent=2, default=str)


def _shown_output(value: Any, show: Callable[[str], str]) -> Any:
    return show(value) if isinstance(value, str) else value


def _fit(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def as_table(plan: Plan) -> str:
    """The plan as text that fits :data:`WIDTH` columns: resources by role, outputs, findings."""
    show = _unknowns(plan.graph)
    components = [n for n in plan.ordered() if not n.custom]
    nodes = [n for n in plan.ordered() if n.custom]
    under = "".join(f", under {short_type(c.type)} {c.name!r}" for c in components[:1])
    lines = [
        f"Stack {plan.stack}: {len(plan.graph.nodes)} resources to create{under}",
        f"{UNKNOWN}: assigned by the cloud when the resource is created",
    ]
    type_width = min(48, max((len(short_type(n.type)) for n in nodes), default=4))
    name_width = WIDTH - 2 - type_width - 2
    for role in ROLES:
        members = [n for n in nodes if role_of(n) == role]
        if not members:
            continue
        lines += ["", f"{role.upper()} ({len(members)})"]
        for node in members:
            lines.append(f"  {_fit(short_type(node.type), type_width):<{type_width}}  {_fit(node.name, name_width)}")
            settings = "; ".join(key_settings(node, show))
            if settings:
                lines += textwrap.wrap(
                    settings, WIDTH, initial_indent="      ", subsequent_indent="      ", break_on_hyphens=False
                )
    lines += ["", "OUTPUTS"]
    for key, out in plan.graph.outputs.items():
        value = SECRET_MASK if out.secret else _shown_output(out.value, show)
        lines += textwrap.wrap(f"{key} = {value}", WIDTH, initial_indent="  ", subsequent_indent="      ")
    lines += ["", f"POLICY FINDINGS: {len(plan.findings)}"]
    for finding in plan.findings:
        lines += textwrap.wrap(str(finding), WIDTH, initial_indent="  ", subsequent_indent="      ")
    return "\n".join(lines)


def _mermaid_label(text: str) -> str:
    return text.replace('"', "#quot;")


def as_mermaid(plan: Plan) -> str:
    """The resource graph as a Mermaid flowchart: one subgraph per role, one edge per pair of roles.

    An edge ``A -->|n| B`` says that n resources of role A depend on resources of role B.
    Resources with a policy finding are outlined in red.
    """
    nodes = [n for n in plan.ordered() if n.custom]
    ids = {n.urn: f"r{i}" for i, n in enumerate(nodes)}
    roles = {n.urn: role_of(n) for n in nodes}
    components = [n for n in plan.graph.nodes if not n.custom]
    title = components[0].type if components else plan.stack
    lines = ["flowchart LR", f"  %% {plan.stack}: {_mermaid_label(title)}, {len(nodes)} resources"]
    for role in ROLES:
        members = [n for n in nodes if roles[n.urn] == role]
        if not members:
            continue
        lines.append(f'  subgraph {role}["{role} ({len(members)})"]')
        for n in members:
            label = f"{_mermaid_label(n.name)}<br/><small>{_mermaid_label(short_type(n.type))}</small>"
            lines.append(f'    {ids[n.urn]}["{label}"]')
        lines.append("  end")
    edges: Counter[tuple[str, str]] = Counter()
    for n in nodes:
        for dep in set(n.dependencies):
            if dep in roles and roles[dep] != roles[n.urn]:
                edges[(roles[n.urn], roles[dep])] += 1
    for (source, target), count in sorted(edges.items(), key=lambda e: (ROLES.index(e[0][0]), ROLES.index(e[0][1]))):
        lines.append(f"  {source} -->|{count}| {target}")
    flagged = sorted({ids[f.urn] for f in plan.findings if f.urn in ids}, key=lambda i: int(i[1:]))
    if flagged:
        lines.append("  classDef finding stroke:#d33,stroke-width:3px")
        lines.append(f"  class {','.join(flagged)} finding")
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
