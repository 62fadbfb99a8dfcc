"""Run the Pulumi program offline under mocks and collect the full resource graph.

Used by ``skyferry plan`` and by ``tests/infra``: no Pulumi CLI, no credentials, no cloud.
:class:`GraphMonitor` subclasses Pulumi's ``MockMonitor`` to record, for every resource,
its type, name, parent, dependencies, inputs, and which inputs are secret; the stack's
outputs are recorded with their secretness.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import pulumi
from google.protobuf import json_format
from pulumi.runtime import mocks as pulumi_mocks
from pulumi.runtime import settings as pulumi_settings

_SIG_KEY = "4dabf18193072939515e22adb298388d"
_SECRET_SIG = "1b47061264138c4ac30d75fd1eb44270"  # noqa: S105 (Pulumi wire signature)
_RESOURCE_SIG = "5cf8f73096256a8f31e491e813e4eb8e"

#: Fake values a mocked resource returns besides its inputs (ids, ARNs, URLs).
#: The ARN has an ARN's shape (code reads the account out of it) with an account no one has.
MOCK_ACCOUNT = "000000000000"
_STATE_DEFAULTS: dict[str, str] = {
    "arn": f"arn:aws:mock:mock-region:{MOCK_ACCOUNT}:mock",
    "url": "https://mock.invalid",
    "endpoint": "mock.invalid",
}

#: What the invokes return under mocks (caller identity, client config, regions).
_INVOKE_RESULT: dict[str, str] = {
    "accountId": MOCK_ACCOUNT,
    "arn": f"arn:aws:iam::{MOCK_ACCOUNT}:user/mock",
    "id": "mock",
    "name": "mock-region",
    "region": "mock-region",
    "project": "mock-project",
    "subscriptionId": "00000000-0000-0000-0000-000000000000",
    "tenantId": "00000000-0000-0000-0000-000000000000",
    "objectId": "00000000-0000-0000-0000-000000000000",
    "clientId": "00000000-0000-0000-0000-000000000000",
}

_RUN_LOCK = threading.Lock()


@dataclass
class Node:
    """One resource the program declares, as ``pulumi up`` would create it."""

    urn: str
    type: str
    name: str
    custom: bool
    parent: str | None
    dependencies: list[str]
    inputs: dict[str, Any]
    secret_paths: set[str] = field(default_factory=set)
    protect: bool = False
    outputs: dict[str, Any] = field(default_factory=dict)

    def get(self, path: str, default: Any = None) -> Any:
        """The input at a dotted ``path`` (``serverSideEncryption.enabled``), or ``default``."""
        value: Any = self.inputs
        for part in path.split("."):
            if isinstance(value, Mapping) and part in value:
                value = value[part]
            elif isinstance(value, list) and part.isdigit() and int(part) < len(value):
                value = value[int(part)]
            else:
                return default
        return value

    def is_secret(self, path: str) -> bool:
        """Whether the input at ``path`` (or a value containing it) was passed as a secret."""
        return any(path == p or path.startswith(p + ".") for p in self.secret_paths)


@dataclass
class StackOutput:
    """One stack output: its value and whether it is a secret output."""

    value: Any
    secret: bool


@dataclass
class Graph:
    """The collected graph of one stack: resources in declaration order and the stack outputs.

    ``fabricated`` holds the values the mocks made up (ids, ARNs, invoke results): what the
    cloud assigns at deployment, unknown before it (``skyferry plan`` shows them as such).
    """

    stack: str
    nodes: list[Node]
    outputs: dict[str, StackOutput]
    fabricated: frozenset[str] = frozenset()

    def by_type(self, type_: str) -> list[Node]:
        """Every node of a Pulumi type token (``aws:dynamodb/table:Table``)."""
        return [n for n in self.nodes if n.type == type_]

    def node(self, urn: str) -> Node | None:
        """The node with ``urn``, if declared."""
        return next((n for n in self.nodes if n.urn == urn), None)

    def children(self, urn: str) -> list[Node]:
        """Direct children of the node ``urn``."""
        return [n for n in self.nodes if n.parent == urn]

    def referencing(self, node: Node) -> list[Node]:
        """Nodes that depend on ``node`` (declared dependency or an input holding its id/name/urn)."""
        marks = {node.urn, str(node.outputs.get("id", "")), node.name}
        marks.discard("")
        result = []
        for other in self.nodes:
            if other is node:
                continue
            if node.urn in other.dependencies or _mentions(other.inputs, marks):
                result.append(other)
        return result


def _mentions(value: Any, marks: set[str]) -> bool:
    if isinstance(value, str):
        return value in marks
    if isinstance(value, Mapping):
        return any(_mentions(v, marks) for v in value.values())
    if isinstance(value, list):
        return any(_mentions(v, marks) for v in value)
    return False


def _plain(value: Any, path: str, secrets: set[str]) -> Any:
    """Strip Pulumi's wire signatures from a decoded struct, noting secret paths."""
    if isinstance(value, dict):
        sig = value.get(_SIG_KEY)
        if sig == _SECRET_SIG:
            secrets.add(path)
            return _plain(value.get("value"), path, secrets)
        if sig == _RESOURCE_SIG:
            return value.get("urn")
        return {k: _plain(v, f"{path}.{k}" if path else k, secrets) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v, f"{path}.{i}" if path else str(i), secrets) for i, v in enumerate(value)]
    if isinstance(value, float) and value.is_integer():
        return int(value)  # protobuf Struct numbers are doubles; the program declared an int
    return value


class GraphMocks(pulumi.runtime.Mocks):
    """Mocks that echo inputs back as state, with a fake id and a few common fake attributes.

    Every value made up here is recorded in ``fabricated``.
    """

    def __init__(self) -> None:
        self.fabricated: set[str] = {*_STATE_DEFAULTS.values(), *_INVOKE_RESULT.values(), MOCK_ACCOUNT}

    def new_resource(self, args: pulumi.runtime.MockResourceArgs) -> tuple[str | None, dict[Any, Any]]:
        """Every resource gets ``<name>-id`` and its inputs as its state."""
        self.fabricated.add(f"{args.name}-id")
        state: dict[str, Any] = dict(_STATE_DEFAULTS)
        state.update(args.inputs)
        identity = state.get("identity")
        if args.typ.startswith("azure-native:") and isinstance(identity, dict):
            # azure-native takes identity.userAssignedIdentities as a list of ids but returns a
            # map; echoing the list back breaks output translation.  The graph keeps the inputs.
            state["identity"] = {k: v for k, v in identity.items() if k != "userAssignedIdentities"}
        state.setdefault("name", args.name)
        return f"{args.name}-id", state

    def call(self, args: pulumi.runtime.MockCallArgs) -> tuple[dict[Any, Any], list[tuple[str, str]] | None]:
        """Invokes (get caller identity, regions …) return plausible fake values."""
        return dict(_INVOKE_RESULT), []  # no failures; MockMonitor iterates the list, so it must not be None


class GraphMonitor(pulumi_mocks.MockMonitor):
    """A MockMonitor that records every registration with its parent, dependencies and secrets."""

    def __init__(self, mocks: pulumi.runtime.Mocks) -> None:
        super().__init__(mocks)
        self.nodes: list[Node] = []
        self.component_outputs: dict[str, dict[str, Any]] = {}
        self.project = "project"
        self.stack = "stack"

    def make_urn(self, parent: str, type_: str, name: str) -> str:
        """The URN ``pulumi up`` gives the resource: the stack's and project's names (the base class
        reads them from the runtime's context, which its worker threads do not see), and the type
        qualified by every ancestor's but the stack's (``skyferry:aws:Platform$aws:ecr/…``).
        """
        qualified = parent.split("::")[2] if parent else ""
        if qualified and qualified != "pulumi:pulumi:Stack":  # the stack qualifies no type
            type_ = f"{qualified}${type_}"
        return f"urn:pulumi:{self.stack}::{self.project}::{type_}::{name}"

    def RegisterResource(self, request: Any) -> Any:  # noqa: N802 (gRPC method name)
        """Record the registration, then let the base class answer it."""
        response = super().RegisterResource(request)  # type: ignore[no-untyped-call]
        if request.type != "pulumi:pulumi:Stack":
            secrets: set[str] = set()
            inputs = _plain(json_format.MessageToDict(request.object), "", secrets)
            urn = self.make_urn(request.parent, request.type, request.name)
            registration = self.resources.get(urn)
            self.nodes.append(
                Node(
                    urn=urn,
                    type=request.type,
                    name=request.name,
                    custom=bool(request.custom),
                    parent=request.parent or None,
                    dependencies=list(request.dependencies),
                    inputs=inputs if isinstance(inputs, dict) else {},
                    secret_paths=secrets,
                    protect=bool(getattr(request, "protect", False)),
                    outputs={"id": registration.id} if registration else {},
                )
            )
        return response

    def RegisterResourceOutputs(self, request: Any) -> Any:  # noqa: N802 (gRPC method name)
        """Record a component's registered outputs (raw, with secret signatures)."""
        self.component_outputs[request.urn] = json_format.MessageToDict(request.outputs)
        return super().RegisterResourceOutputs(request)  # type: ignore[no-untyped-call]


def _without_aliases(args: pulumi.ResourceTransformationArgs) -> pulumi.ResourceTransformationResult:
    """The resource without its aliases (the mock run's only transformation).

    Aliases match a resource with the state an earlier name or type left; a mock run has no
    state.  azure-native declares a score of them per resource (one per past API version),
    and resolving them was half of an Azure plan's run.
    """
    opts = copy.copy(args.opts)
    opts.aliases = None
    return pulumi.ResourceTransformationResult(args.props, opts)


class _Outstanding:
    """Pulumi's set of outstanding outputs with an O(1) ``remove``.

    The runtime keeps every unresolved output in a deque and removes each when it resolves:
    a linear search per output, quadratic in a stack's outputs (azure-native makes thousands:
    a tenth of a plan's time).  This keeps insertion order and the deque's operations.
    """

    def __init__(self) -> None:
        self._items: dict[Any, None] = {}

    def append(self, item: Any) -> None:
        self._items[item] = None

    def remove(self, item: Any) -> None:
        try:
            del self._items[item]
        except KeyError:
            raise ValueError(item) from None

    def popleft(self) -> Any:
        item = next(iter(self._items))
        del self._items[item]
        return item

    def clear(self) -> None:
        self._items.clear()

    def __len__(self) -> int:
        return len(self._items)

    def __iter__(self) -> Iterator[Any]:
        return iter(list(self._items))


@contextlib.contextmanager
def _fresh_runtime() -> Iterator[None]:
    """Serialize runs (the Pulumi runtime is process-global) and reset it afterwards."""
    with _RUN_LOCK:
        # Pulumi's mocks use the thread's current event loop; anything that ran asyncio.run()
        # before (an adapter, a test) leaves none, so each run gets its own and closes it.
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        try:
            yield
        finally:
            pulumi_settings.ROOT.set(None)
            pulumi.runtime.set_all_config({}, [])
            asyncio.set_event_loop(None)
            loop.close()


def run_program(
    program: Callable[[], Any],
    config: Mapping[str, str],
    secret_keys: set[str] | frozenset[str] = frozenset(),
    *,
    project: str = "skyferry",
    stack: str = "dev",
    monitor: GraphMonitor | None = None,
) -> Graph:
    """Run ``program`` under mocks with ``config`` (strings, as Pulumi passes them); return its graph.

    Errors the program raises (a bad config, a policy the component enforces) propagate
    unchanged, before or after some resources were declared; pass your own ``monitor`` to
    see what was declared before an error.
    """
    with _fresh_runtime():
        mocks = GraphMocks()
        monitor = monitor or GraphMonitor(mocks)
        monitor.project, monitor.stack = project, stack
        pulumi_settings.ROOT.set(None)
        pulumi.runtime.set_all_config(dict(config), sorted(secret_keys))
        pulumi.runtime.set_mocks(mocks, project=project, stack=stack, preview=False, monitor=monitor)
        pulumi_settings.SETTINGS.outputs = _Outstanding()
        collected: dict[str, StackOutput] = {}

        async def resolve(outputs: dict[str, Any]) -> None:
            for key, value in outputs.items():
                out = pulumi.Output.from_input(value)
                collected[key] = StackOutput(value=await out.future(), secret=bool(await out.is_secret()))

        def body() -> Any:
            pulumi.runtime.register_stack_transformation(_without_aliases)
            program()
            root = pulumi_settings.get_root_resource()
            outputs = dict(getattr(root, "outputs", {}) or {})
            return asyncio.ensure_future(resolve(outputs))

        pulumi.runtime.test(body)()  # type: ignore[no-untyped-call]
        return Graph(stack=stack, nodes=list(monitor.nodes), outputs=collected, fabricated=frozenset(mocks.fabricated))
