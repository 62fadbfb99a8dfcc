"""The ``dynamodb://`` stores on moto server: a fresh table per test, deleted afterwards."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

from tests.services import moto_server


def client() -> Any:
    """A boto3 DynamoDB client pointed at the session's moto server."""
    import boto3

    return boto3.client("dynamodb", region_name=moto_server.REGION, endpoint_url=moto_server.endpoint())


def url_for(table: str) -> str:
    """The store URL of ``table`` on moto."""
    return f"dynamodb://{table}?region={moto_server.REGION}&endpoint={quote(moto_server.endpoint(), safe=':/')}"


@contextlib.contextmanager
def fresh_table(spec: dict[str, Any] | None = None) -> Iterator[str]:
    """Create a table (by default from the adapter's own spec) and delete it afterwards."""
    from app.adapters.stores import dynamodb

    dynamo = client()
    name = f"skyferry-test-{uuid.uuid4().hex[:12]}"
    if spec is None:
        dynamodb.create_table(dynamo, name)
    else:
        dynamo.create_table(**{**spec, "TableName": name})
        dynamo.get_waiter("table_exists").wait(TableName=name, WaiterConfig={"Delay": 0.2, "MaxAttempts": 100})
    try:
        yield name
    finally:
        dynamo.delete_table(TableName=name)


@contextlib.contextmanager
def provide(kind: str, scheme: str) -> Iterator[str]:
    """A fresh table for one test (event store and view store share it)."""
    with fresh_table() as name:
        yield url_for(name)
