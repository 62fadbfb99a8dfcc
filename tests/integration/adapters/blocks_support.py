"""What the DynamoDB and Firestore tests of bulk writes in flight share (``_blocks``)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import pytest

from skyferry.adapters.stores import _blocks
from skyferry.core.errors import TransientError
from skyferry.core.messages import Event, NewEvent
from skyferry.core.ports import NO_STREAM


def exported(streams: int, per_stream: int, prefix: str) -> list[Event]:
    """``per_stream`` exported events of each of ``streams`` streams, taking turns."""
    now = datetime.now(UTC)
    return [
        Event(str(uuid.uuid4()), f"{prefix}-{s}", v, "T", 1, {"v": v}, {}, now, now)
        for v in range(1, per_stream + 1)
        for s in range(streams)
    ]


class Died(BaseException):
    """The writer's process dies (not an ``Exception``: nothing is released, as when it is killed)."""


def check_a_dead_writers_holes(store: Any, events: Sequence[Event], monkeypatch: pytest.MonkeyPatch) -> None:
    """``store`` writes ``events`` (three parts or more) and dies after the first part: readers
    stop at its holes while its claims live, settle them as gaps once they expire, and the
    writer's late second part is then refused."""
    written: list[tuple[Sequence[Event], _blocks.Claim, dict[str, Any]]] = []
    real = store._write_part

    def dies_after_the_first_part(part: Sequence[Event], claim: _blocks.Claim, **context: Any) -> int:
        written.append((part, claim, context))
        if len(written) > 1:
            raise Died
        return int(real(part, claim, **context))

    monkeypatch.setattr(store, "_write_part", dies_after_the_first_part)
    with pytest.raises(Died):
        store.bulk_append(events, in_flight=1)
    first = {e.id for e in written[0][0]}
    assert {e.id for e in store.read_all(limit=2000)} < first, "the reader stops at the first hole"
    store.append("dead-after", [NewEvent("T", {})], NO_STREAM)
    assert "dead-after" not in {e.stream_id for e in store.read_all(limit=2000)}
    monkeypatch.setattr(_blocks, "now", lambda: time.time() + _blocks.CLAIM_SECONDS + 1)  # time passes
    everything = store.read_all(limit=2000)
    assert {e.id for e in everything} == first | {store.read_stream("dead-after")[0].id}
    assert everything[-1].stream_id == "dead-after"
    assert store.last_position() == everything[-1].position
    late_part, late_claim, context = written[1]
    with pytest.raises(TransientError, match="expired"):
        real(late_part, late_claim, **context)
    stored = {e.id for sid in {e.stream_id for e in events} for e in store.read_stream(sid)}
    assert stored == first
