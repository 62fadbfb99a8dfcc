"""One skeleton for every target: the same role modules, the same step names, composed in the same order.

A target package holds ``config.py``, ``platform.py`` and one module per role
(:data:`ROLES`); each role module names its steps the same on every target (``declare_store``
in every ``store.py``) and returns the same-named result (``Store``), so that
``diff providers/aws/store.py providers/gcp/store.py`` compares like with like.  Each
``platform.py``'s ``build`` only calls those steps, in :data:`ORDER`.
"""

from __future__ import annotations

import ast

import pytest

from providers.base import TARGETS
from tests.infra.tools import ROOT

ROLES = ("network", "identity", "store", "broker", "archive", "compute")
OTHER_MODULES = ("__init__", "config", "platform")
#: The steps of each role module and the result classes they return.
STEPS = {
    "network": ({"declare_network"}, {"Network"}),
    "identity": ({"declare_identity", "grant_access"}, {"Identity", "Access"}),
    "store": ({"declare_store"}, {"Store"}),
    "broker": ({"declare_broker"}, {"Broker"}),
    "archive": ({"declare_archive"}, {"Archive"}),
    "compute": ({"declare_compute"}, {"Compute"}),
}
#: The order every platform.py's build calls them in.
ORDER = [
    ("network", "declare_network"),
    ("identity", "declare_identity"),
    ("store", "declare_store"),
    ("broker", "declare_broker"),
    ("archive", "declare_archive"),
    ("identity", "grant_access"),
    ("compute", "declare_compute"),
]


def _tree(target: str, module: str) -> ast.Module:
    return ast.parse((ROOT / "providers" / target / f"{module}.py").read_text())


def _steps(tree: ast.Module) -> set[str]:
    """The module's public step functions: ``declare_*`` and ``grant_*``."""
    return {
        node.name
        for node in tree.body
        if isinstance(node, ast.FunctionDef) and node.name.startswith(("declare_", "grant_"))
    }


def _classes(tree: ast.Module) -> set[str]:
    return {node.name for node in tree.body if isinstance(node, ast.ClassDef)}


@pytest.mark.parametrize("target", sorted(TARGETS))
def test_each_target_has_the_same_modules(target: str) -> None:
    package = ROOT / "providers" / target
    modules = {path.stem for path in package.glob("*.py")}
    assert modules == {*ROLES, *OTHER_MODULES}, f"providers/{target}/: {sorted(modules ^ {*ROLES, *OTHER_MODULES})}"


@pytest.mark.parametrize("role", ROLES)
def test_each_role_has_the_same_steps_on_every_target(role: str) -> None:
    steps, results = STEPS[role]
    for target in sorted(TARGETS):
        tree = _tree(target, role)
        assert _steps(tree) == steps, f"providers/{target}/{role}.py"
        assert results <= _classes(tree), f"providers/{target}/{role}.py lacks {sorted(results - _classes(tree))}"
        assert ast.get_docstring(tree), f"providers/{target}/{role}.py has no docstring"
        for node in tree.body:
            if isinstance(node, ast.FunctionDef) and node.name in steps:
                first = node.args.args[0]
                assert first.arg == "platform", f"{target}/{role}.py {node.name}: takes the platform first"
                assert ast.unparse(first.annotation or ast.Constant(None)).startswith("Platform["), node.name


@pytest.mark.parametrize("target", sorted(TARGETS))
def test_platform_composes_the_steps_in_one_order(target: str) -> None:
    """``build`` calls the role steps, in :data:`ORDER`, and declares nothing itself."""
    tree = _tree(target, "platform")
    platform = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name.endswith("Platform"))
    build = next(n for n in platform.body if isinstance(n, ast.FunctionDef) and n.name == "build")
    calls = [
        (node.func.value.id, node.func.attr)
        for node in ast.walk(build)
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and isinstance(node.func.value, ast.Name)
        and node.func.value.id in ROLES
    ]
    assert calls == ORDER, f"providers/{target}/platform.py"
    imported = {
        alias.name
        for node in tree.body
        if isinstance(node, ast.ImportFrom) and node.module == f"providers.{target}"
        for alias in node.names
    }
    assert imported == set(ROLES)
    clouds = {"pulumi_aws", "pulumi_azure_native", "pulumi_gcp", "pulumi_kubernetes"}
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [node.module or ""] if isinstance(node, ast.ImportFrom) else [a.name for a in node.names]
            assert not any(n.split(".")[0] in clouds for n in names), f"{target}/platform.py declares resources itself"


def test_role_modules_do_not_reach_into_each_other_at_run_time() -> None:
    """The data roles take the identity as a type only, so identity (which grants on them) may import them."""
    for target in sorted(TARGETS):
        for role in ("store", "broker", "archive"):
            source = (ROOT / "providers" / target / f"{role}.py").read_text()
            assert f"from providers.{target}.identity import Identity" in source.split("if TYPE_CHECKING:", 1)[-1]
            top = source.split("if TYPE_CHECKING:", 1)[0]
            assert f"providers.{target}.identity" not in top, f"{target}/{role}.py imports identity at run time"


def test_the_layout_is_what_the_docs_describe() -> None:
    guide = (ROOT / "docs" / "providers.md").read_text()
    architecture = (ROOT / "docs" / "architecture.md").read_text()
    for role in ROLES:
        assert f"`{role}.py`" in guide, role
        assert f"`{role}.py`" in architecture, role
    for _, step in ORDER:
        assert f"`{step}(platform" in guide, step
        assert f"`{step}`" in architecture, step
