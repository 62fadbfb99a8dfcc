"""Which adapter serves which URL: the one registry, used by the app and by the tests.

Each table maps a URL scheme to ``"module:Class"``; the class has a ``from_url(url)``
classmethod.  Modules are imported only when their scheme is opened, so an image built
for one cloud never needs another cloud's SDK.  A store URL names one technology that
serves both the event store and the view store (one database holds both).
"""

from __future__ import annotations

import importlib
from typing import Any, TypeVar
from urllib.parse import urlsplit

from skyferry.core.errors import ConfigurationError
from skyferry.core.ports import Archive, Broker, EventStore, ViewStore

EVENT_STORES: dict[str, str] = {
    "memory": "skyferry.adapters.stores.memory:MemoryEventStore",
    "sqlite": "skyferry.adapters.stores.sqlite:SQLiteEventStore",
    "dynamodb": "skyferry.adapters.stores.dynamodb:DynamoDBEventStore",
    "cosmos": "skyferry.adapters.stores.cosmos:CosmosEventStore",
    "firestore": "skyferry.adapters.stores.firestore:FirestoreEventStore",
    "postgresql": "skyferry.adapters.stores.postgres:PostgresEventStore",
    "postgres": "skyferry.adapters.stores.postgres:PostgresEventStore",
}
VIEW_STORES: dict[str, str] = {
    "memory": "skyferry.adapters.stores.memory:MemoryViewStore",
    "sqlite": "skyferry.adapters.stores.sqlite:SQLiteViewStore",
    "dynamodb": "skyferry.adapters.stores.dynamodb:DynamoDBViewStore",
    "cosmos": "skyferry.adapters.stores.cosmos:CosmosViewStore",
    "firestore": "skyferry.adapters.stores.firestore:FirestoreViewStore",
    "postgresql": "skyferry.adapters.stores.postgres:PostgresViewStore",
    "postgres": "skyferry.adapters.stores.postgres:PostgresViewStore",
}
BROKERS: dict[str, str] = {
    "memory": "skyferry.adapters.brokers.memory:MemoryBroker",
    "servicebus": "skyferry.adapters.brokers.servicebus:ServiceBusBroker",
    "pubsub": "skyferry.adapters.brokers.pubsub:PubSubBroker",
    "sns+sqs": "skyferry.adapters.brokers.sns_sqs:SnsSqsBroker",
    "nats": "skyferry.adapters.brokers.nats:NatsBroker",
}
ARCHIVES: dict[str, str] = {
    "file": "skyferry.adapters.archives.local:LocalArchive",
    "gs": "skyferry.adapters.archives.gcs:GCSArchive",
    "az": "skyferry.adapters.archives.blob:BlobArchive",
    "s3": "skyferry.adapters.archives.s3:S3Archive",
}

T = TypeVar("T")


def scheme_of(url: str) -> str:
    """The URL's scheme, lower-cased; a bare path (no ``scheme://``) counts as ``file``."""
    if "://" not in url:
        return "file"
    return urlsplit(url).scheme.lower()


def load(table: dict[str, str], url: str, what: str) -> type[Any]:
    """The adapter class serving ``url`` in ``table``, or a ConfigurationError listing the known schemes."""
    scheme = scheme_of(url)
    target = table.get(scheme)
    if target is None:
        known = ", ".join(f"{name}://" for name in sorted(table))
        raise ConfigurationError(f"unknown {what} URL scheme {scheme!r} in {redact(url)!r}; known: {known}")
    module_name, _, class_name = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise ConfigurationError(
            f"the {what} adapter for {scheme}:// needs a package that is not installed ({e.name}); "
            "install skyferry with the extra of that technology"
        ) from e
    cls: type[Any] = getattr(module, class_name)
    return cls


def open_event_store(url: str) -> EventStore:
    """Open the event store at ``url`` (no I/O until first use)."""
    store: EventStore = load(EVENT_STORES, url, "event store").from_url(url)
    return store


def open_view_store(url: str) -> ViewStore:
    """Open the view store at ``url`` (the same URL as the event store)."""
    store: ViewStore = load(VIEW_STORES, url, "view store").from_url(url)
    return store


def open_broker(url: str) -> Broker:
    """Open the broker at ``url``."""
    broker: Broker = load(BROKERS, url, "broker").from_url(url)
    return broker


def open_archive(url: str) -> Archive:
    """Open the archive at ``url`` (a bare path is a local directory)."""
    archive: Archive = load(ARCHIVES, url, "archive").from_url(url)
    return archive


def redact(url: str) -> str:
    """``url`` with any password or key replaced by ``***``: safe for logs and reports."""
    parts = urlsplit(url)
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, _, host = netloc.rpartition("@")
        user = userinfo.split(":", 1)[0]
        netloc = f"{user}:***@{host}" if ":" in userinfo else f"{user}@{host}"
    query = "&".join(
        f"{k}=***" if k.lower() in {"password", "key", "secret", "token", "accountkey", "sig"} else f"{k}={v}"
        for k, _, v in (pair.partition("=") for pair in parts.query.split("&") if pair)
    )
    rebuilt = parts._replace(netloc=netloc, query=query)
    return rebuilt.geturl()
