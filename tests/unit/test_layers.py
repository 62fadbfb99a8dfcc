"""The import layering that docs/architecture.md states is the one the code has.

The table of layers is read from docs/architecture.md itself (the rows after the line
``<!-- layers -->``): each row names a layer, the modules it holds (a module and everything
under it; the longest match wins) and the layers it may import.  Every import of
``app/skyferry``, ``providers`` and ``stacks`` is found by parsing the sources (``ast``,
imports inside functions included), resolved to the module it names, and checked
against the table.  Two rules are not in the table:

* the app imports ``providers`` only from ``skyferry.cli``, inside a function (``skyferry
  plan``), so that an image without the infra dependencies still runs every other command;
* the kernel and the domain import no web framework, CLI, driver, cloud SDK or Pulumi.

A module that belongs to no layer fails the check: add it to the table (and so to the
document) rather than letting the layering drift.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOC = "docs/architecture.md"
SOURCES = {"skyferry": "app/skyferry", "providers": "providers", "stacks": "stacks"}

LAZY_ONLY = {("skyferry.cli", "providers")}
"""(importing module, imported top-level package): allowed only inside a function."""

TECHNOLOGY = frozenset(
    {
        "fastapi",
        "starlette",
        "uvicorn",
        "typer",
        "httpx",
        "sqlite3",
        "apsw",
        "psycopg",
        "psycopg_pool",
        "boto3",
        "botocore",
        "azure",
        "google",
        "grpc",
        "nats",
        "pulumi",
        "pulumi_aws",
        "pulumi_azure_native",
        "pulumi_gcp",
        "pulumi_kubernetes",
        "zstandard",
        "cryptography",
        "prometheus_client",
    }
)
"""Third-party and driver packages the layers in :data:`TECHNOLOGY_FREE` never import."""
TECHNOLOGY_FREE = frozenset({"core", "domain"})


@dataclass(frozen=True)
class Layer:
    name: str
    modules: tuple[str, ...]
    may_import: frozenset[str]


def read_layers(doc: str) -> dict[str, Layer]:
    """The layer table of ``doc``: the Markdown table right after ``<!-- layers -->``."""
    lines = doc.splitlines()
    try:
        start = lines.index("<!-- layers -->") + 1
    except ValueError:
        raise AssertionError(f"{DOC} has no '<!-- layers -->' table") from None
    rows = []
    for line in lines[start:]:
        if not line.startswith("|"):
            if rows:
                break
            continue
        rows.append([cell.strip() for cell in line.strip().strip("|").split("|")])
    layers: dict[str, Layer] = {}
    for cells in rows[2:]:  # after the header and the --- line
        name = cells[0].strip("*` ")
        modules = tuple(re.findall(r"`([\w.]+)`", cells[1]))
        may = frozenset(w for w in re.findall(r"[a-z]+", cells[2]) if w != "nothing")
        layers[name] = Layer(name, modules, may | {name})
    assert layers, f"the layer table of {DOC} is empty"
    for layer in layers.values():
        unknown = layer.may_import - set(layers)
        assert not unknown, f"{DOC}: layer {layer.name} may import unknown layers {sorted(unknown)}"
    return layers


def layer_of(module: str, layers: dict[str, Layer]) -> str | None:
    """The layer holding ``module``: the longest module prefix of the table that matches."""
    best, best_len = None, -1
    for layer in layers.values():
        for prefix in layer.modules:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > best_len:
                best, best_len = layer.name, len(prefix)
    return best


@dataclass(frozen=True)
class Import:
    source: str  # the importing module
    target: str  # the imported module (``pkg.mod``; a name imported from a module is dropped)
    line: int
    lazy: bool  # inside a function


def module_files(root: Path) -> Iterator[tuple[str, Path]]:
    """``(dotted name, file)`` of every module of our packages under ``root``."""
    for package, folder in SOURCES.items():
        base = root / folder
        for path in sorted(base.rglob("*.py")):
            rel = path.relative_to(base).with_suffix("")
            parts = [p for p in rel.parts if p != "__init__"]
            yield ".".join([package, *parts]), path


def imports_of(module: str, path: Path, known: set[str]) -> Iterator[Import]:
    """Every import in ``path``; one of our modules (``known``) resolved to the module it names."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    is_package = path.name == "__init__.py"
    lazy_nodes: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            lazy_nodes.update(id(inner) for inner in ast.walk(node) if inner is not node)
    for node in ast.walk(tree):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                package = module.split(".") if is_package else module.split(".")[:-1]
                base = ".".join(package[: len(package) - node.level + 1])
                origin = f"{base}.{node.module}" if node.module else base
            else:
                origin = node.module or ""
            for alias in node.names:
                candidate = f"{origin}.{alias.name}"
                targets.append(candidate if candidate in known else origin)
        for target in targets:
            yield Import(module, target, node.lineno, id(node) in lazy_nodes)


def violations(root: Path) -> list[str]:
    """Every import that the layer table of ``root``'s docs/architecture.md does not allow."""
    layers = read_layers((root / DOC).read_text(encoding="utf-8"))
    modules = dict(module_files(root))
    known = set(modules)
    found: list[str] = []
    for module, path in modules.items():
        rel = path.relative_to(root).as_posix()
        layer = layer_of(module, layers)
        if layer is None:
            if path.read_text(encoding="utf-8").strip():  # an empty __init__.py constrains nothing
                found.append(f"{rel}: {module} is in no layer of {DOC}")
            continue
        for imp in imports_of(module, path, known):
            top = imp.target.split(".")[0]
            where = f"{rel}:{imp.line}: {module} imports {imp.target}"
            if top not in SOURCES:
                if layer in TECHNOLOGY_FREE and top in TECHNOLOGY:
                    found.append(f"{where}: the {layer} layer knows no framework, driver or SDK")
                continue
            if module.split(".")[0] == "skyferry" and top != "skyferry":
                if not ((module, top) in LAZY_ONLY and imp.lazy):
                    found.append(f"{where}: the app imports {top} only lazily, from the plan command of skyferry.cli")
                continue
            target_layer = layer_of(imp.target, layers)
            if target_layer is None:
                found.append(f"{where}: {imp.target} is in no layer of {DOC}")
            elif target_layer not in layers[layer].may_import:
                found.append(f"{where}: layer {layer} may not import layer {target_layer}")
    return found


# -- the repository ---------------------------------------------------------------------------


def test_the_code_keeps_the_layers_of_the_architecture_document() -> None:
    found = violations(ROOT)
    assert not found, f"imports that {DOC} does not allow:\n" + "\n".join(found)


def test_every_layer_of_the_document_holds_modules_that_exist() -> None:
    layers = read_layers((ROOT / DOC).read_text(encoding="utf-8"))
    known = {name for name, _ in module_files(ROOT)}
    for layer in layers.values():
        for prefix in layer.modules:
            assert any(m == prefix or m.startswith(prefix + ".") for m in known), (layer.name, prefix)


def test_the_kernel_imports_nothing_but_the_kernel() -> None:
    """The rule the rest stands on, stated without the table: core knows no other layer."""
    modules = dict(module_files(ROOT))
    known = set(modules)
    seen = 0
    for module, path in modules.items():
        if module.startswith("skyferry.core"):
            for imp in imports_of(module, path, known):
                if imp.target.split(".")[0] in SOURCES:
                    seen += 1
                    assert imp.target.startswith("skyferry.core"), imp
    assert seen > 10  # the parser found the kernel's own imports


# -- planted violations, on a temporary tree -------------------------------------------------

TABLE = """# Architecture

<!-- layers -->
| layer | modules | may import |
|---|---|---|
| core | `skyferry.core` | nothing |
| domain | `skyferry.ledger` | core |
| entry | `skyferry.cli` | core, domain |
| providers | `providers` | core |
| stacks | `stacks` | providers |

Prose after the table.
"""

CLEAN = {
    "app/skyferry/core/ports.py": "import orjson\n\nfrom skyferry.core import errors\nfrom . import errors as e\n",
    "app/skyferry/core/errors.py": "",
    "app/skyferry/ledger/account.py": "from skyferry.core.ports import Port\nimport pydantic\n",
    "app/skyferry/cli.py": "from skyferry.ledger import account\n\n\ndef plan():\n"
    "    from providers.plan import command\n",
    "providers/plan.py": "from skyferry.core.errors import E\n",
    "stacks/__main__.py": "from providers import plan\n",
}


def _tree(root: Path, files: dict[str, str]) -> Path:
    for name, text in {DOC: TABLE, **files}.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return root


def test_a_clean_tree_passes(tmp_path: Path) -> None:
    assert violations(_tree(tmp_path, CLEAN)) == []


PLANTED = [
    ("app/skyferry/core/ports.py", "from skyferry.ledger import account", "layer core may not import layer domain"),
    ("app/skyferry/core/ports.py", "from ..ledger.account import x", "layer core may not import layer domain"),
    ("app/skyferry/core/ports.py", "def f():\n    import skyferry.cli", "layer core may not import layer entry"),
    ("app/skyferry/core/errors.py", "import providers.plan", "imports providers only lazily"),
    ("app/skyferry/ledger/account.py", "import boto3", "knows no framework, driver or SDK"),
    ("app/skyferry/cli.py", "import providers.plan", "imports providers only lazily"),
    ("app/skyferry/ledger/account.py", "def f():\n    import providers", "imports providers only lazily"),
    ("stacks/__main__.py", "import skyferry.cli", "layer stacks may not import layer entry"),
    ("app/skyferry/" + "extra.py", "from skyferry.core import ports", "skyferry.extra is in no layer"),
]


@pytest.mark.parametrize(("name", "line", "expected"), PLANTED)
def test_a_planted_violation_is_reported(tmp_path: Path, name: str, line: str, expected: str) -> None:
    files = dict(CLEAN)
    files[name] = files.get(name, "") + "\n" + line + "\n"
    found = violations(_tree(tmp_path, files))
    assert len(found) == 1, found
    assert found[0].startswith(f"{name}:"), found
    assert expected in found[0], found


def test_a_table_naming_an_unknown_layer_is_refused() -> None:
    with pytest.raises(AssertionError, match="unknown layers"):
        read_layers(TABLE.replace("| core, domain |", "| core, nowhere |"))
