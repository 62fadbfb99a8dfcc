"""The DynamoDB table of the ``dynamodb://`` stores: its keys, index, limits and item keys.

The constants are imported by ``providers/aws`` so that infra and adapter cannot drift.

Table layout (single-table design; ``pk`` and ``sk`` are strings)
-----------------------------------------------------------------
=====================  =====================  =================================================
pk                     sk                     what
=====================  =====================  =================================================
``s#<stream id>``      version, 10 digits     one event (``id``, ``t``, ``sv``, ``d``, ``m``,
                                              ``oa``, ``ra`` and its global position ``p``)
``e#<event id>``       ``id``                 id guard: where the event id is stored
``x#streams``          stream id              the stream index (``list_streams``)
``x#global``           ``position``           the global counter ``p`` (last position used)
``x#claims``           block and part number  positions a bulk write took ahead for one part
                                              (``ps``), until ``exp`` (Unix seconds)
``x#gaps``             position, 20 digits    a position no event took (``g``, ``p`` only)
``v#<collection>``     document key           a read-model document ``d`` with revision ``r``
``c#<projection>``     checkpoint key         a projection checkpoint ``val``
=====================  =====================  =================================================

``data`` and ``metadata`` are kept as canonical JSON text (``d``, ``m``), so numbers,
``null`` and empty objects round-trip exactly (a DynamoDB map would turn floats into
decimals).  An event item is at most 192 KiB of payload plus a bounded envelope, well
under DynamoDB's 400 KB item limit.
"""

from __future__ import annotations

from typing import Any, Final

from skyferry.core.ports import (
    WriteLimits,
)

# --- the table: imported by providers/aws so that infra and adapter cannot drift ----------

PARTITION_KEY: Final = "pk"
SORT_KEY: Final = "sk"
POSITION_INDEX: Final = "by_position"
POSITION_INDEX_HASH: Final = "g"
POSITION_INDEX_RANGE: Final = "p"
ALL: Final = "all"

ATTRIBUTE_DEFINITIONS: Final = (
    {"AttributeName": PARTITION_KEY, "AttributeType": "S"},
    {"AttributeName": SORT_KEY, "AttributeType": "S"},
    {"AttributeName": POSITION_INDEX_HASH, "AttributeType": "S"},
    {"AttributeName": POSITION_INDEX_RANGE, "AttributeType": "N"},
)
KEY_SCHEMA: Final = (
    {"AttributeName": PARTITION_KEY, "KeyType": "HASH"},
    {"AttributeName": SORT_KEY, "KeyType": "RANGE"},
)
GLOBAL_SECONDARY_INDEXES: Final[tuple[dict[str, Any], ...]] = (
    {
        "IndexName": POSITION_INDEX,
        "KeySchema": [
            {"AttributeName": POSITION_INDEX_HASH, "KeyType": "HASH"},
            {"AttributeName": POSITION_INDEX_RANGE, "KeyType": "RANGE"},
        ],
        "Projection": {"ProjectionType": "ALL"},
    },
)

#: The API operations the adapters in this module call, and the IAM actions each needs
#: (a transaction is authorized per item: put, update, delete, condition check).
IAM_ACTIONS_BY_OPERATION: Final[dict[str, tuple[str, ...]]] = {
    "GetItem": ("dynamodb:GetItem",),
    "Query": ("dynamodb:Query",),
    "BatchGetItem": ("dynamodb:BatchGetItem",),
    "BatchWriteItem": ("dynamodb:BatchWriteItem",),
    "TransactWriteItems": (
        "dynamodb:PutItem",
        "dynamodb:UpdateItem",
        "dynamodb:DeleteItem",
        "dynamodb:ConditionCheckItem",
    ),
}
#: Every IAM action the task role needs on the table and its index.
IAM_ACTIONS: Final = tuple(sorted({a for actions in IAM_ACTIONS_BY_OPERATION.values() for a in actions}))

MAX_TRANSACTION_ITEMS: Final = 100
MAX_APPEND_EVENTS: Final = (MAX_TRANSACTION_ITEMS - 2) // 2
#: Bytes of one append as :func:`event_bytes` / :func:`stream_bytes` count them (DynamoDB:
#: 4 MB per transaction, keys and attribute names included; the rest is the counter's).
MAX_APPEND_BYTES: Final = 3_800_000
#: What the writes of imports and migrations are cut to: the items of one transaction, two
#: an event (the event and its id guard), one a stream (its version check), one the counter.
WRITE_LIMITS: Final = WriteLimits(units=MAX_TRANSACTION_ITEMS - 1, per_event=2, per_stream=1, bytes=MAX_APPEND_BYTES)
MAX_COMMIT_ITEMS: Final = MAX_TRANSACTION_ITEMS


_VERSION_DIGITS: Final = 10
_MAX_VERSION_KEY: Final = "9" * _VERSION_DIGITS
_STREAMS: Final = "x#streams"
_GLOBAL: Final = "x#global"
_COUNTER_SK: Final = "position"
_CLAIMS: Final = "x#claims"
_GAPS: Final = "x#gaps"


def table_spec(name: str) -> dict[str, Any]:
    """The ``CreateTable`` arguments of the table the adapters expect (on-demand billing)."""
    return {
        "TableName": name,
        "AttributeDefinitions": [dict(a) for a in ATTRIBUTE_DEFINITIONS],
        "KeySchema": [dict(k) for k in KEY_SCHEMA],
        "GlobalSecondaryIndexes": [
            {**index, "KeySchema": [dict(k) for k in index["KeySchema"]]} for index in GLOBAL_SECONDARY_INDEXES
        ],
        "BillingMode": "PAY_PER_REQUEST",
    }


def create_table(client: Any, name: str) -> None:
    """Create the table and wait until it is active: for tests and local use."""
    client.create_table(**table_spec(name))
    client.get_waiter("table_exists").wait(TableName=name, WaiterConfig={"Delay": 0.2, "MaxAttempts": 100})


def _vkey(version: int) -> str:
    return f"{version:0{_VERSION_DIGITS}d}"


def _s(value: str) -> dict[str, str]:
    return {"S": value}


def _n(value: int) -> dict[str, str]:
    return {"N": str(value)}


def _tx_key(txid: str) -> dict[str, Any]:
    return {"pk": _s(f"t#{txid}"), "sk": _s("tx")}


def _doc_key(collection: str, key: str) -> dict[str, Any]:
    return {"pk": _s(f"v#{collection}"), "sk": _s(key)}
