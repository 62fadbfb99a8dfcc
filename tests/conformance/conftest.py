"""One fixture per port, parametrized over every adapter in the production registry.

A scheme served by an adapter class already covered (an alias such as ``postgres://``
for ``postgresql://``) is run once.  Each test gets a fresh, empty instance from
``tests/services/<module>.py``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from skyferry.adapters import registry
from skyferry.core.ports import Archive, Broker, EventStore, ViewStore
from tests import services


def _params(table: dict[str, str]) -> list[Any]:
    seen: dict[str, str] = {}
    for scheme, path in sorted(table.items()):
        seen.setdefault(path, scheme)
    return [pytest.param((scheme, path), id=scheme) for path, scheme in sorted(seen.items(), key=lambda i: i[1])]


@pytest.fixture(params=_params(registry.EVENT_STORES))
def event_store(request: pytest.FixtureRequest) -> Iterator[EventStore]:
    scheme, path = request.param
    with services.provide("event_store", path, scheme) as url:
        store = registry.open_event_store(url)
        try:
            yield store
        finally:
            store.close()


@pytest.fixture(params=_params(registry.VIEW_STORES))
def view_store(request: pytest.FixtureRequest) -> Iterator[ViewStore]:
    scheme, path = request.param
    with services.provide("view_store", path, scheme) as url:
        store = registry.open_view_store(url)
        try:
            yield store
        finally:
            store.close()


@pytest.fixture(params=_params(registry.BROKERS))
def broker(request: pytest.FixtureRequest) -> Iterator[Broker]:
    scheme, path = request.param
    with services.provide("broker", path, scheme) as url:
        broker = registry.open_broker(url)
        try:
            yield broker
        finally:
            broker.close()


@pytest.fixture(params=_params(registry.ARCHIVES))
def archive(request: pytest.FixtureRequest) -> Iterator[Archive]:
    scheme, path = request.param
    with services.provide("archive", path, scheme) as url:
        yield registry.open_archive(url)
