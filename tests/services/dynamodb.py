"""The ``dynamodb://`` stores on moto server: a fresh table per test, deleted afterwards.

The table each test gets is **the table the Pulumi AWS stack declares** (``stacks/Pulumi.aws.yaml``
run under mocks, its ``aws:dynamodb/table:Table`` turned into ``CreateTable`` arguments),
so the conformance suite proves that the infrastructure and the adapter agree.  Where the
infra dependency group is not installed, the adapter's own :func:`table_spec` is used and
the fallback is printed once.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import sys
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


def spec_from_table_inputs(inputs: dict[str, Any]) -> dict[str, Any]:
    """``CreateTable`` arguments from the inputs of a Pulumi ``aws.dynamodb.Table``."""
    key_schema = [{"AttributeName": inputs["hashKey"], "KeyType": "HASH"}]
    if inputs.get("rangeKey"):
        key_schema.append({"AttributeName": inputs["rangeKey"], "KeyType": "RANGE"})
    spec: dict[str, Any] = {
        "AttributeDefinitions": [
            {"AttributeName": a["name"], "AttributeType": a["type"]} for a in inputs.get("attributes", [])
        ],
        "KeySchema": key_schema,
        "BillingMode": inputs.get("billingMode", "PROVISIONED"),
    }
    indexes = []
    for index in inputs.get("globalSecondaryIndexes", []) or []:
        schema = [{"AttributeName": index["hashKey"], "KeyType": "HASH"}]
        if index.get("rangeKey"):
            schema.append({"AttributeName": index["rangeKey"], "KeyType": "RANGE"})
        projection: dict[str, Any] = {"ProjectionType": index["projectionType"]}
        if index.get("nonKeyAttributes"):
            projection["NonKeyAttributes"] = index["nonKeyAttributes"]
        indexes.append({"IndexName": index["name"], "KeySchema": schema, "Projection": projection})
    if indexes:
        spec["GlobalSecondaryIndexes"] = indexes
    if inputs.get("streamEnabled"):
        spec["StreamSpecification"] = {"StreamEnabled": True, "StreamViewType": inputs["streamViewType"]}
    return spec


@functools.cache
def pulumi_table_spec() -> dict[str, Any] | None:
    """The ``CreateTable`` arguments of the table the AWS stack declares (``None``: no infra group)."""
    # grpc's asyncio support, imported with pulumi, asks for the thread's event loop at import
    # time, and a test that ran asyncio.run() before (the NATS adapter does) left the thread
    # with none: import under a loop of its own.
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    try:
        from providers.base import current_stack_config, deploy
        from providers.graph import run_program
        from providers.stackfile import read_stack
    except ImportError as e:
        print(
            f"tests/services/dynamodb.py: infra group missing ({e.name}); using the adapter's table spec",
            file=sys.stderr,
        )
        return None
    finally:
        asyncio.set_event_loop(None)
        loop.close()
    values, secret = read_stack("aws")
    graph = run_program(lambda: deploy(current_stack_config()), values, secret, stack="aws")
    [table] = graph.by_type("aws:dynamodb/table:Table")
    return spec_from_table_inputs(table.inputs)


@contextlib.contextmanager
def fresh_table(spec: dict[str, Any] | None = None) -> Iterator[str]:
    """Create a table from ``spec`` (default: the adapter's own) and delete it afterwards."""
    from skyferry.adapters.stores import dynamodb

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
    """A fresh table, as Pulumi declares it, for one test (event store and view store share it)."""
    with fresh_table(pulumi_table_spec()) as name:
        yield url_for(name)
