"""``servicebus://`` for the tests: a URL that makes the adapter use the in-memory fake.

There is no Service Bus emulator outside Docker, so nothing here runs against a real
namespace.  Each test gets a fresh :class:`~tests.services.servicebus_fake.FakeNamespace`
with the application's topic, registered under a unique name; the URL's
``client=NAME`` makes the adapter build its clients from it, and ``provision=true``
lets it create a subscription per consumer group as ``providers/azure`` would.  To point
the adapter at a real namespace instead, drop ``client=`` and ``provision=`` and give the
real namespace and topic (with ``DefaultAzureCredential`` able to sign in).
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator

from skyferry.adapters.brokers import servicebus
from tests.services.servicebus_fake import FakeAdministrationClient, FakeNamespace, FakeServiceBusClient

TOPIC = "skyferry-events"


def fake_url(namespace: FakeNamespace, *, retry_backoff: float = 0.05, workers: int = 4) -> Iterator[str]:
    """Register ``namespace`` and yield a URL using it (a generator for ``contextmanager``)."""
    name = f"fake-{uuid.uuid4().hex[:12]}"
    servicebus.register_client_factory(
        name, lambda location: (FakeServiceBusClient(namespace), FakeAdministrationClient(namespace))
    )
    try:
        yield (
            f"servicebus://{name}/{TOPIC}?client={name}&provision=true&retry_backoff={retry_backoff}&workers={workers}"
        )
    finally:
        servicebus.unregister_client_factory(name)


@contextlib.contextmanager
def provide(kind: str, scheme: str) -> Iterator[str]:
    """A fresh fake namespace holding the topic, for one broker test."""
    if kind != "broker":
        raise ValueError(f"the Service Bus test service provides brokers, not {kind}")
    namespace = FakeNamespace()
    namespace.create_topic(TOPIC)
    yield from fake_url(namespace)
