"""The stack program under mocks, once per stack config: same outputs everywhere, no policy finding."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from providers import policies
from providers.base import OUTPUT_NAMES
from providers.graph import Graph
from providers.stackfile import read_stack, stack_names
from tests.infra.conftest import STACKS, require_target


def test_every_target_has_an_example_stack() -> None:
    assert set(STACKS) <= set(stack_names())
    for name in STACKS:
        values, _ = read_stack(name)
        assert values["skyferry:target"] == name


@pytest.mark.parametrize("stack", STACKS)
def test_stack_graph_outputs_and_policies(stack: str, run_stack: Callable[[str], Graph]) -> None:
    require_target(stack)
    graph = run_stack(stack)
    platforms = graph.by_type(f"skyferry:{stack}:Platform")
    assert len(platforms) == 1, f"one skyferry:{stack}:Platform component expected"
    platform = platforms[0]
    # every resource hangs under the component (parent=self), directly or through a child
    urns = {n.urn: n for n in graph.nodes}
    for node in graph.nodes:
        if node is platform:
            continue
        chain = node
        while chain.parent in urns and chain is not platform:
            chain = urns[chain.parent]
        assert chain is platform, f"{node.type} {node.name} is not a descendant of the Platform component"
    assert len(graph.nodes) > 3
    # the standard outputs: same names on every target, string values, URLs where URLs are due
    assert tuple(graph.outputs) == OUTPUT_NAMES
    assert graph.outputs["target"].value == stack
    for name in ("api_url", "store_url", "broker_url", "archive_url"):
        value = graph.outputs[name].value
        assert isinstance(value, str), f"{name} is not a string: {value!r}"
        assert "://" in value, f"{name} is not a URL: {value!r}"
    assert graph.outputs["api_url"].value.startswith(("https://", "http://"))
    assert not graph.outputs["api_url"].value.endswith("/")
    values, _ = read_stack(stack)
    assert graph.outputs["image"].value == values["skyferry:image"]
    findings = policies.evaluate(graph)
    assert findings == [], "\n".join(str(f) for f in findings)


def test_output_names_are_identical_across_targets(run_stack: Callable[[str], Graph]) -> None:
    names = {}
    for stack in STACKS:
        try:
            require_target(stack)
        except pytest.skip.Exception:
            continue
        names[stack] = tuple(run_stack(stack).outputs)
    assert names, "no target is implemented"
    assert set(names.values()) == {OUTPUT_NAMES}, names
