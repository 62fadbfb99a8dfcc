"""DynamoDB store on moto server: requests per event beside the raw DynamoDB call doing the same write.

moto is not DynamoDB, so only request counts are meaningful here (they are what AWS bills
and what bounds latency: one round trip each); moto's rates are printed for reference.

* **append, 10 events per append** -- events per request of ``DynamoDBEventStore.append``
  (counter read + conditional transaction) vs. the raw ``TransactWriteItems`` of the same
  10 event items alone (no version check, no global position: the floor of an atomic
  write).  Goal: >= 50 % (one extra read per append).
* **read_all** -- events per request of ``read_all`` pages of 1,000 vs. the raw ``Query``
  of the ``by_position`` index.  Goal: >= 100 %.
"""

from __future__ import annotations

import argparse
import contextlib
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from benchmarks.figures import Figure
from skyferry.adapters.stores import dynamodb
from skyferry.core.messages import NewEvent, encode_json
from skyferry.core.ports import NO_STREAM

_MOTO = Path(__file__).resolve().parent.parent / "tests" / "services" / "moto_server.py"
REGION = "us-east-1"


@contextlib.contextmanager
def moto() -> Iterator[str]:
    """A private moto server on a free loopback port, stopped by PID."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    process = subprocess.Popen(
        [sys.executable, str(_MOTO), str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
                break
            if process.poll() is not None:
                raise RuntimeError("moto server exited before listening")
            time.sleep(0.1)
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(10)


class Counter:
    """Counts a client's API calls."""

    def __init__(self, client: Any) -> None:
        self.calls = 0
        client.meta.events.register("before-call.*.*", self._count)

    def _count(self, **kwargs: Any) -> None:
        self.calls += 1


def run(args: argparse.Namespace) -> list[Figure]:
    """Append and read on moto; figures in events per request."""
    import boto3

    appends = 10 if args.quick else 30
    with moto() as endpoint:
        make: Any = boto3.client
        client = make(
            "dynamodb",
            region_name=REGION,
            endpoint_url=endpoint,
            aws_access_key_id="bench",
            aws_secret_access_key="bench",
        )
        table = f"bench-{uuid.uuid4().hex[:8]}"
        dynamodb.create_table(client, table)
        counter = Counter(client)
        store = dynamodb.DynamoDBEventStore(table, client=client)
        batch = [NewEvent("MoneyDeposited", {"amount": "12.50", "currency": "EUR"}) for _ in range(10)]
        start = time.perf_counter()
        for i in range(appends):
            store.append(f"acct-{i}", [NewEvent(e.type, e.data) for e in batch], NO_STREAM)
        adapter_seconds = time.perf_counter() - start
        adapter_requests = counter.calls

        raw_client = make(
            "dynamodb",
            region_name=REGION,
            endpoint_url=endpoint,
            aws_access_key_id="bench",
            aws_secret_access_key="bench",
        )
        raw_counter = Counter(raw_client)
        raw_table = f"bench-raw-{uuid.uuid4().hex[:8]}"
        dynamodb.create_table(raw_client, raw_table)
        raw_counter.calls = 0
        start = time.perf_counter()
        for i in range(appends):
            raw_client.transact_write_items(
                TransactItems=[
                    {
                        "Put": {
                            "TableName": raw_table,
                            "Item": {
                                "pk": {"S": f"s#acct-{i}"},
                                "sk": {"S": f"{v:010d}"},
                                "d": {"S": encode_json(e.data).decode()},
                            },
                        }
                    }
                    for v, e in enumerate(batch, start=1)
                ]
            )
        raw_seconds = time.perf_counter() - start
        raw_requests = raw_counter.calls
        events = appends * len(batch)

        counter.calls = 0
        read = store.read_all(limit=1000)
        read_requests = counter.calls
        counter.calls = 0
        client.query(
            TableName=table,
            IndexName=dynamodb.POSITION_INDEX,
            KeyConditionExpression="g = :g AND p > :p",
            ExpressionAttributeValues={":g": {"S": dynamodb.ALL}, ":p": {"N": "0"}},
            Limit=1000,
        )
        raw_read_requests = counter.calls
        for name in (table, raw_table):
            client.delete_table(TableName=name)
    return [
        Figure(
            "append, 10 events per append",
            events / adapter_requests,
            "events/request",
            events / raw_requests,
            "TransactWriteItems alone",
            goal=0.5,
            note=f"{adapter_requests * 1000 / events:.0f} requests per 1,000 events",
        ),
        Figure(
            "append on moto (reference only)",
            events / adapter_seconds,
            "events/s",
            events / raw_seconds,
            "TransactWriteItems alone",
        ),
        Figure(
            "read_all, pages of 1,000",
            len(read) / read_requests,
            "events/request",
            len(read) / raw_read_requests,
            "Query of the index",
            goal=1.0,
        ),
    ]
