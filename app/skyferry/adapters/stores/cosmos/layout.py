"""The documents of the ``cosmos://`` stores: containers, partitions and document ids.

The events container (partition key :data:`EVENTS_PARTITION_KEY_PATH`) holds, in each
stream's partition, one commit document per append (``c-<first version>``) and the part
documents of a large append (``p-...``); in the reserved partition :data:`LOG_PARTITION`,
the global log's slots (``s-<n>``).  The views container (partition key
:data:`VIEWS_PARTITION_KEY_PATH`) holds, in the one partition :data:`VIEWS_PARTITION`,
documents (``d-<hash>``), checkpoints (``k-<hash>``) and commit records (``t-<tx>``).
The partition key paths are imported by ``providers/azure``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any, Final

import orjson

from skyferry.core.messages import (
    Event,
    NewEvent,
    encode_json,
    format_timestamp,
)

EVENTS_PARTITION_KEY_PATH: Final = "/stream_id"
"""Partition key path of the events container (imported by ``providers/azure``)."""
VIEWS_PARTITION_KEY_PATH: Final = "/pk"
"""Partition key path of the views container (imported by ``providers/azure``)."""
LOG_PARTITION: Final = "$log"
"""The partition of the events container holding the global log (not a valid stream id)."""


VIEWS_PARTITION: Final = "views"
"""The one logical partition of the views container."""
MAX_BATCH_OPERATIONS: Final = 100
"""Cosmos DB's limit on the operations of one transactional batch."""
INLINE_LIMIT: Final = 1_500_000
"""Bytes of events kept inside the commit document; more go to part documents (2 MB item limit)."""


_VERSION_DIGITS: Final = 12


def views_container_name(events_container: str) -> str:
    """The default views container beside ``events_container``."""
    return f"{events_container}-views"


def _commit_id(first: int) -> str:
    return f"c-{first:0{_VERSION_DIGITS}d}"


def _slot_id(slot: int) -> str:
    return f"s-{slot:0{_VERSION_DIGITS}d}"


def _event_body(event: NewEvent | Event, recorded_at: str) -> dict[str, Any]:
    """One event inside a commit or part document; ``data`` and ``metadata`` as their canonical
    JSON text (``d``, ``m``): Cosmos DB keeps numbers as doubles, so a native JSON value would
    come back changed (``-0.0``, ``1.0``, ``1e16``, ``2**53 + 1``, ``2**63 - 1``)."""
    return {
        "id": event.id,
        "type": event.type,
        "schema_version": event.schema_version,
        "d": encode_json(event.data).decode(),
        "m": encode_json(event.metadata).decode(),
        "occurred_at": format_timestamp(event.occurred_at),
        "recorded_at": recorded_at,
    }


def _event_of(body: Mapping[str, Any], stream_id: str, version: int) -> Event:
    """The event of a body written by :func:`_event_body` (or, before JSON text, with the
    native ``data`` / ``metadata`` of earlier versions)."""
    if "d" in body:
        body = {**body, "data": orjson.loads(body["d"]), "metadata": orjson.loads(body["m"])}
    return Event.from_dict({**body, "stream_id": stream_id, "version": version})


def _doc_id(collection: str, key: str) -> str:
    digest = hashlib.sha256(f"{collection}\x00{key}".encode()).hexdigest()[:40]
    return f"d-{digest}"


def _checkpoint_id(projection: str, key: str) -> str:
    digest = hashlib.sha256(f"{projection}\x00{key}".encode()).hexdigest()[:40]
    return f"k-{digest}"


def _record_id(tx: str) -> str:
    return f"t-{tx}"
