"""Firestore store on Google's emulator: the adapter beside the raw SDK call doing the same write.

The emulator is not Firestore (no replication, no throttling), so absolute rates say
little; the ratios show what the adapter's design costs per operation:

* **append, 1 event** -- ``FirestoreEventStore.append`` (one transaction: begin, one
  batched read of stream head + event id + global head, commit of event + two heads) vs.
  the raw ``create`` of the same event document (no version check, no global position:
  the floor of a durable write).  Goal: >= 25 %.
* **append, 10 events** -- events per second, same comparison with a raw batch of 10
  creates.  Goal: >= 40 %.
* **read_all** -- events per second of ``read_all`` pages of 1,000 vs. the raw query
  ``position > n ORDER BY position LIMIT 1000``.  Goal: >= 70 %.
* **appends/s, 4 processes' worth of contention** -- 4 store instances appending
  concurrently (they contend on the global head on the server) vs. the raw rate of
  transactions incrementing one shared document from 4 threads: the single-document
  ceiling that bounds every Firestore design with a gap-free global order.  Goal: >= 50 %.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import tempfile
import threading
import uuid
from collections.abc import Callable, Iterator
from typing import Any

from google.cloud import firestore

from benchmarks.figures import Figure, compare
from skyferry.adapters.stores.firestore import EVENTS_COLLECTION, FirestoreEventStore, _event_fields
from skyferry.core.messages import Event, NewEvent, utc_now
from skyferry.core.ports import ANY, NO_STREAM
from tests import services
from tests.services import gcloud_emulators


@contextlib.contextmanager
def emulator() -> Iterator[str]:
    """A private Firestore emulator on a free loopback port, stopped by PID."""
    port = services.free_port()
    log = os.path.join(tempfile.gettempdir(), f"skyferry-bench-firestore-{port}.log")
    with services.started(gcloud_emulators.command("firestore", port), port, timeout=120, log=log):
        yield f"127.0.0.1:{port}"


def _event(stream_id: str, version: int) -> Event:
    now = utc_now()
    return Event(str(uuid.uuid4()), stream_id, version, "Deposited", 1, {"amount": 10}, {}, now, now)


def _threads(count: int, work: Callable[[int], object]) -> None:
    threads = [threading.Thread(target=work, args=(i,)) for i in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def run(args: argparse.Namespace) -> list[Figure]:
    """Append and read on the emulator; figures in operations or events per second."""
    appends = 30 if args.quick else 150
    with emulator() as host:
        url = f"firestore://bench-{uuid.uuid4().hex[:8]}/(default)?emulator={host}"
        store = FirestoreEventStore.from_url(url)
        client: Any = store.client
        raw_events = client.collection(f"raw_{EVENTS_COLLECTION}")
        figures: list[Figure] = []

        def adapter_single() -> None:
            sid = f"s-{uuid.uuid4().hex[:8]}"
            for i in range(appends):
                store.append(sid, [NewEvent("Deposited", {"amount": 10})], i)

        def raw_single() -> None:
            for i in range(appends):
                raw_events.document(str(uuid.uuid4())).create(_event_fields(_event("r", i + 1), i + 1))

        ours, raw = compare(appends, adapter_single, raw_single)
        figures.append(Figure("append, 1 event", ours, "appends/s", raw, "create", goal=0.25))

        batches = max(3, appends // 10)

        def adapter_batch() -> None:
            sid = f"b-{uuid.uuid4().hex[:8]}"
            for i in range(batches):
                store.append(
                    sid, [NewEvent("Deposited", {"amount": n}) for n in range(10)], NO_STREAM if i == 0 else ANY
                )

        def raw_batch() -> None:
            for i in range(batches):
                batch = client.batch()
                for n in range(10):
                    batch.create(raw_events.document(str(uuid.uuid4())), _event_fields(_event("r", n + 1), i * 10 + n))
                batch.commit()

        ours, raw = compare(batches * 10, adapter_batch, raw_batch)
        figures.append(Figure("append, 10 events", ours, "events/s", raw, "batch of creates", goal=0.4))

        total = int(store.last_position() or 0)

        def adapter_read() -> None:
            after: str | None = None
            while batch := store.read_all(after=after, limit=1000):
                after = batch[-1].position

        def raw_read() -> None:
            last = 0
            while True:
                query = (
                    client.collection(EVENTS_COLLECTION)
                    .where(filter=firestore.FieldFilter("position", ">", last))
                    .order_by("position")
                    .limit(1000)
                )
                docs = [d.to_dict() for d in query.stream()]
                if not docs:
                    return
                last = docs[-1]["position"]

        ours, raw = compare(total, adapter_read, raw_read)
        figures.append(Figure("read_all, pages of 1,000", ours, "events/s", raw, "query", goal=0.7))

        writers = 4
        per_writer = max(5, appends // 10)
        stores = [FirestoreEventStore.from_url(url) for _ in range(writers)]

        def contended() -> None:
            _threads(
                writers,
                lambda w: [
                    stores[w].append(f"c{w}-{uuid.uuid4().hex[:6]}", [NewEvent("Deposited", {"n": i})], NO_STREAM)
                    for i in range(per_writer)
                ],
            )

        counter = client.collection("raw_meta").document("counter")

        def raw_counter() -> None:
            def bump(_: int) -> None:
                for _ in range(per_writer):

                    @firestore.transactional
                    def increment(transaction: Any) -> None:
                        snap = next(iter(transaction.get_all([counter])))
                        value = snap.get("n") if snap.exists else 0
                        transaction.set(counter, {"n": value + 1})

                    increment(client.transaction(max_attempts=50))

            _threads(writers, bump)

        ours, raw = compare(writers * per_writer, contended, raw_counter, repeat=2)
        figures.append(
            Figure(
                "appends/s, 4 contending instances",
                ours,
                "appends/s",
                raw,
                "one-document transaction ceiling",
                goal=0.5,
            )
        )
        for s in (store, *stores):
            s.close()
        return figures
