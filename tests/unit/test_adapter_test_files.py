"""An adapter's integration tests are found by its name.

Every adapter of ``app/skyferry/adapters/registry.py`` has its integration tests in
``tests/integration/adapters/test_<module>.py``, or is listed in :data:`WITHOUT_INTEGRATION_TESTS`
with the reason it has none; every file there is named after a registered adapter, and no file
beside that folder is named after an adapter or a cloud.  An adapter is a module of
``app/skyferry/adapters/<kind>/``, or a package there when it is large
(``stores/postgres/``): its tests are named after the package, whichever of its modules
the registry names (``skyferry.adapters.stores.postgres.events`` -> ``test_postgres.py``).
"""

from __future__ import annotations

from pathlib import Path

from skyferry.adapters import registry

ADAPTER_TESTS = Path(__file__).resolve().parents[1] / "integration" / "adapters"

EMBEDDED = "embedded, no service to fault: what the contract does not cover is in tests/unit/test_embedded_adapters.py"
WITHOUT_INTEGRATION_TESTS: dict[str, str] = {
    "skyferry.adapters.stores.memory": EMBEDDED,
    "skyferry.adapters.stores.sqlite": EMBEDDED,
    "skyferry.adapters.brokers.memory": EMBEDDED,
    "skyferry.adapters.archives.local": EMBEDDED,
}
"""Registered adapter modules without a ``test_<module>.py``, and why (the conformance suite
runs every registered adapter in any case)."""


def registered_modules() -> set[str]:
    """The dotted names of the modules the registry's tables name."""
    tables = (registry.EVENT_STORES, registry.VIEW_STORES, registry.BROKERS, registry.ARCHIVES)
    return {path.partition(":")[0] for table in tables for path in table.values()}


def adapter_of(module: str) -> str:
    """The adapter a registered module belongs to: the module or package right under
    ``skyferry.adapters.<kind>`` (``skyferry.adapters.stores.postgres.events`` -> ``postgres``)."""
    parts = module.split(".")
    assert parts[:2] == ["skyferry", "adapters"], f"not an adapter module: {module}"
    assert len(parts) >= 4, f"not an adapter module: {module}"
    return parts[3]


def file_for(module: str) -> Path:
    """Where the integration tests of the adapter ``module`` belong."""
    return ADAPTER_TESTS / f"test_{adapter_of(module)}.py"


def test_every_registered_adapter_has_its_integration_tests_or_a_reason() -> None:
    missing = sorted(
        f"{module}: no {file_for(module).relative_to(ADAPTER_TESTS.parents[2]).as_posix()}"
        for module in registered_modules() - WITHOUT_INTEGRATION_TESTS.keys()
        if not file_for(module).is_file()
    )
    assert not missing, "add the file, or the module and its reason to WITHOUT_INTEGRATION_TESTS:\n" + "\n".join(
        missing
    )


def test_every_adapter_test_file_is_named_after_a_registered_adapter() -> None:
    names = {adapter_of(module) for module in registered_modules()}
    strays = sorted(p.name for p in ADAPTER_TESTS.glob("test_*.py") if p.stem.removeprefix("test_") not in names)
    assert not strays, f"named after no adapter module of the registry: {strays}"


def test_each_listed_reason_is_still_needed() -> None:
    assert ADAPTER_TESTS.is_dir()
    stale = sorted(
        module
        for module in WITHOUT_INTEGRATION_TESTS
        if module not in registered_modules() or file_for(module).is_file()
    )
    assert not stale, f"registered no more, or tested in tests/integration/adapters/ now: {stale}"


def test_no_file_beside_the_adapters_folder_is_named_after_an_adapter_or_a_cloud() -> None:
    names = {adapter_of(module) for module in registered_modules()} | {"aws", "azure", "gcp"}
    misplaced = sorted(
        p.name
        for p in ADAPTER_TESTS.parent.glob("test_*.py")
        if any(p.stem == f"test_{name}" or p.stem.startswith(f"test_{name}_") for name in names)
    )
    assert not misplaced, f"one adapter's tests belong in tests/integration/adapters/test_<module>.py: {misplaced}"
