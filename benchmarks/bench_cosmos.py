"""Cosmos DB view store on the emulator: writes per HTTP request of ``commit`` beside raw batches.

The emulator (npm ``@vercel/cosmosdb-server``) is not Cosmos DB, so round trips are the
meaningful figure (each is one request's latency on the service); the emulator's rates are
printed as notes.  The raw limit is the same documents and checkpoint written as plain
transactional batches of upserts (one request per 100 writes, no reads, no revision
check, atomic only up to 100 writes and not at all on the emulator).  ``commit`` reads
every document first (one query), locks them, creates the commit record, rolls forward and
deletes the record in the last roll-forward batch: ``ceil(W / 100) + ceil((W + 1) / 100) + 2``
requests for ``W >= 2`` writes.

* **commit, 1 document + checkpoint** -- the common projection step.  Goal: >= 25 %.
* **commit, 10 documents + checkpoint**.  Goal: >= 25 %.
* **commit, 280 documents + checkpoint** -- over the 100-operation batch limit.  Goal: >= 30 %.
"""

from __future__ import annotations

import argparse
import time
import uuid
from typing import Any

from benchmarks.figures import Figure

SIZES = (1, 10, 280)
GOALS = {1: 0.25, 10: 0.25, 280: 0.3}


class _Counter:
    """A ``raw_request_hook`` counting HTTP requests (and doing the adapter's own fix-up)."""

    def __init__(self) -> None:
        self.requests = 0

    def __call__(self, request: Any) -> None:
        from skyferry.adapters.stores.cosmos.client import _batch_partition_keys

        self.requests += 1
        _batch_partition_keys(request)


def run(args: argparse.Namespace) -> list[Figure]:
    """Commits of 1, 10 and 280 documents on the emulator; figures in writes per request."""
    from azure.cosmos import CosmosClient, PartitionKey

    from skyferry.adapters.stores import cosmos
    from skyferry.core.ports import ViewChange
    from tests import services
    from tests.services import cosmos as service

    rounds = 3 if args.quick else 10
    figures: list[Figure] = []
    try:
        endpoint = service.endpoint()
        counter = _Counter()
        client = CosmosClient(
            endpoint, credential=service.EMULATOR_KEY, connection_verify=False, raw_request_hook=counter
        )
        name = f"bench{uuid.uuid4().hex[:12]}"
        database = client.create_database(name)
        try:
            container = database.create_container(
                cosmos.views_container_name("events"), partition_key=PartitionKey(path=cosmos.VIEWS_PARTITION_KEY_PATH)
            )
            views = cosmos.CosmosViewStore.from_url(service.url_for(name), client=client)
            views.get_checkpoint("warm-up")
            for size in SIZES:
                writes = (size + 1) * rounds
                counter.requests = 0
                start = time.perf_counter()
                for r in range(rounds):
                    changes = [ViewChange(f"c{size}", f"k{i:04d}", {"balance": r}) for i in range(size)]
                    views.commit(f"p{size}", changes, {"$all": str(r)})
                seconds = time.perf_counter() - start
                requests = counter.requests

                counter.requests = 0
                raw_start = time.perf_counter()
                for r in range(rounds):
                    operations: list[tuple[Any, ...]] = [
                        ("upsert", ({"id": f"raw{size}-{i}", "pk": cosmos.VIEWS_PARTITION, "v": r},))
                        for i in range(size + 1)
                    ]
                    for start_at in range(0, len(operations), cosmos.MAX_BATCH_OPERATIONS):
                        chunk = operations[start_at : start_at + cosmos.MAX_BATCH_OPERATIONS]
                        container.execute_item_batch(chunk, partition_key=cosmos.VIEWS_PARTITION)
                raw_seconds = time.perf_counter() - raw_start
                raw_requests = counter.requests
                figures.append(
                    Figure(
                        f"commit, {size} document{'s' if size > 1 else ''} + checkpoint",
                        writes / requests,
                        "writes/request",
                        writes / raw_requests,
                        "upsert batches alone",
                        goal=GOALS[size],
                        note=(
                            f"{requests / rounds:.1f} requests per commit vs {raw_requests / rounds:.1f}; emulator "
                            f"{rounds / seconds:.1f} commits/s vs {rounds / raw_seconds:.1f} batch rounds/s"
                        ),
                    )
                )
        finally:
            client.delete_database(name)
            client.close()
    finally:
        services.stop_all()
    return figures
