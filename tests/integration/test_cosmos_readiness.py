"""The Azure API's readiness probe (``/readyz`` calls ``last_position``) costs the same for any log length.

Run on the Cosmos DB emulator: the documents the probe's queries return are counted, for a
short log and for one ten times longer.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from skyferry.adapters.stores import cosmos
from skyferry.adapters.stores.cosmos import CosmosEventStore
from skyferry.core.messages import NewEvent
from skyferry.core.ports import NO_STREAM
from tests.services import cosmos as service


@pytest.fixture
def url() -> Iterator[str]:
    with service.fresh_database() as name:
        yield service.url_for(name)


def _rows_read(store: CosmosEventStore, monkeypatch: pytest.MonkeyPatch) -> tuple[str | None, int]:
    read: list[int] = []
    original = store._query

    def counting(what: str, query: str, params: Any, partition: str | None) -> list[Any]:
        rows = original(what, query, params, partition)
        read.append(len(rows))
        return rows

    monkeypatch.setattr(store, "_query", counting)
    try:
        return store.last_position(), sum(read)
    finally:
        monkeypatch.undo()


def test_last_position_reads_a_bounded_number_of_slots(url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    store = CosmosEventStore.from_url(url)
    try:
        assert _rows_read(store, monkeypatch) == (None, 0)
        for i in range(3):
            store.append(f"s-{i}", [NewEvent("E", {"i": i})], NO_STREAM)
        short_position, short_cost = _rows_read(store, monkeypatch)
        for i in range(3, 30):
            store.append(f"s-{i}", [NewEvent("E", {"i": i})], NO_STREAM)
        long_position, long_cost = _rows_read(store, monkeypatch)
        assert short_position is not None
        assert long_position is not None
        assert long_position == store.read_all(limit=1000)[-1].position
        assert short_cost <= cosmos.LAST_SLOTS
        assert long_cost <= cosmos.LAST_SLOTS, f"read {long_cost} slots of a 30-slot log"
    finally:
        store.close()
