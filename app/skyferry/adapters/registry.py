"""Which adapter serves which URL: the one registry, used by the app and by the tests.

Each table maps a URL scheme to ``"module:Class"``; the class has a ``from_url(url)``
classmethod (an event store's also takes ``existing=True``: open a store to read, creating
nothing; and it has an ``identity``, which :func:`same_store` compares).  Modules are
imported only when their scheme is opened, so an image built for one cloud never needs
another cloud's SDK.  A store URL names one technology that
serves both the event store and the view store (one database holds both).
"""

from __future__ import annotations

import difflib
import importlib
import re
from typing import Any, Final, TypeVar
from urllib.parse import SplitResult, unquote_plus, urlsplit

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
EXTRAS: dict[str, str] = {
    "postgresql": "postgres",
    "postgres": "postgres",
    "nats": "nats",
    "dynamodb": "aws",
    "sns+sqs": "aws",
    "s3": "aws",
    "cosmos": "azure",
    "servicebus": "azure",
    "az": "azure",
    "firestore": "gcp",
    "pubsub": "gcp",
    "gs": "gcp",
}
"""The package extra (pyproject's optional dependencies) each scheme's adapter needs."""

T = TypeVar("T")


def split_url(url: str) -> SplitResult:
    """``urlsplit(url)``, its port checked; a URL that cannot be read is a ``ConfigurationError`` saying why.

    ``urlsplit`` raises ``ValueError`` for an unmatched ``[`` or ``]`` in the host (an IPv6
    address is written ``[::1]``), and ``.port`` for a port that is not a number from 0 to
    65535: bad input, not a bug.
    """
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 -- read to check it
    except ValueError as e:
        reason = str(e)
        if "IPv6" in reason:
            reason = "its host has an unmatched '[' or ']' (an IPv6 address is written in brackets: [::1])"
        elif reason.startswith("Port"):
            reason = "its port must be a number from 0 to 65535"
        raise ConfigurationError(f"{redact(url)!r} is not a valid URL: {reason}") from e
    return parts


def scheme_of(url: str) -> str:
    """The URL's scheme, lower-cased; a bare path (no ``scheme://``) counts as ``file``.

    A URL that cannot be read (:func:`split_url`) is a ``ConfigurationError``.
    """
    if "://" not in url:
        return "file"
    return split_url(url).scheme.lower()


def unknown_scheme(url: str, kinds: dict[str, dict[str, str]]) -> ConfigurationError | None:
    """The error for ``url`` when no adapter of ``kinds`` (``{"event store": EVENT_STORES}``) serves it.

    ``None`` when one does.  The error says what was typed and what would be served: a close
    scheme (``postgresq`` -> ``postgresql``), the known ones of each kind, or the missing ``//``
    of ``sqlite:/path`` (which would otherwise read as a local path).
    """
    prefix = re.match(r"([A-Za-z][A-Za-z0-9+.-]*):(?!//)", url)
    every = {name for table in (EVENT_STORES, BROKERS, ARCHIVES) for name in table}
    if prefix and prefix.group(1).lower() in every and "://" not in url:
        scheme = prefix.group(1).lower()
        example = "sqlite:///relative.db or sqlite:////absolute/path.db" if scheme == "sqlite" else f"{scheme}://..."
        return ConfigurationError(f"{url!r} is not a URL: '//' is missing after '{scheme}:'", hint=example)
    scheme = scheme_of(url)
    schemes = sorted({name for table in kinds.values() for name in table})
    if scheme in schemes:
        return None
    close = difflib.get_close_matches(scheme, schemes, n=1) or [  # and s4 -> s3
        name for name in schemes if len(name) == len(scheme) <= 3 and sum(map(str.__ne__, name, scheme)) == 1
    ]
    known = [
        f"{'an' if kind[0] in 'aeiou' else 'a'} {kind}: "
        + ("a directory, " if "file" in table else "")
        + ", ".join(f"{name}://" for name in sorted(table))
        for kind, table in kinds.items()
    ]
    hint = (f"did you mean {close[0]}://? " if close else "") + "; ".join(known)
    what = " or ".join(kinds)
    return ConfigurationError(f"unknown {what} URL scheme {scheme!r} in {redact(url)!r}", hint=hint)


def load(table: dict[str, str], url: str, what: str) -> type[Any]:
    """The adapter class serving ``url`` in ``table``, or a ConfigurationError saying what is known."""
    error = unknown_scheme(url, {what: table})
    if error is not None:
        raise error
    scheme = scheme_of(url)
    module_name, _, class_name = table[scheme].partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        extra = EXTRAS.get(scheme, scheme)
        raise ConfigurationError(
            f"the {what} adapter for {scheme}:// needs a package that is not installed ({e.name})",
            hint=f"install the {extra!r} extra: pip install 'skyferry[{extra}]' (in a checkout: make deps-app)",
        ) from e
    cls: type[Any] = getattr(module, class_name)
    return cls


def open_event_store(url: str, *, existing: bool = False) -> EventStore:
    """Open the event store at ``url`` (no I/O until first use).

    ``existing``: a store opened to be read (a source, a store to verify or rebuild) must
    already exist.  It is checked at once, with one read, and a missing file, database,
    schema, table or container raises ``ConfigurationError`` naming it; nothing is
    created.  Without it, stores that can (SQLite, PostgreSQL) create themselves on first use.
    """
    cls = load(EVENT_STORES, url, "event store")
    if not existing:
        created: EventStore = cls.from_url(url)
        return created
    store: EventStore = cls.from_url(url, existing=True)
    try:
        store.last_position()
    except BaseException:
        store.close()
        raise
    return store


def same_store(a: EventStore, b: EventStore) -> bool:
    """Whether two opened event stores are one store (however their URLs are spelled: a
    relative and an absolute path, another password, other pool options)."""
    if a is b:
        return True
    mine, theirs = getattr(a, "identity", None), getattr(b, "identity", None)
    return mine is not None and mine == theirs


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


SECRET_PARAMETER: Final = re.compile(r"pass|pwd|secret|token|key|sig|credential|auth|cert", re.IGNORECASE)
"""A query parameter whose name matches this may hold a secret (``password``, ``sslpassword``,
``key``, ``accountkey``, ``sig``, ``token``, ``client_secret``, ``sslkey`` ...): :func:`redact`
hides its value.  A rule, not a list: a parameter added later is covered."""


def redact(url: str) -> str:
    """``url`` with its password and the value of every query parameter that may hold a
    secret (:data:`SECRET_PARAMETER`) replaced by ``***``: safe for logs and reports (``//`` kept)."""
    if "://" not in url:
        return url
    try:
        parts = urlsplit(url)
    except ValueError:  # a malformed host: split as urlsplit does, without reading the host
        scheme, _, rest = url.partition("://")
        rest, _, fragment = rest.partition("#")
        rest, _, query = rest.partition("?")
        netloc, slash, path = rest.partition("/")
        parts = SplitResult(scheme, netloc, slash + path, query, fragment)
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, _, host = netloc.rpartition("@")
        user = userinfo.split(":", 1)[0]
        netloc = f"{user}:***@{host}" if ":" in userinfo else f"{user}@{host}"
    query = "&".join(
        f"{k}=***" if SECRET_PARAMETER.search(unquote_plus(k)) else f"{k}{sep}{v}"
        for k, sep, v in (pair.partition("=") for pair in parts.query.split("&") if pair)
    )
    return (
        f"{parts.scheme}://{netloc}{parts.path}"
        + (f"?{query}" if query else "")
        + (f"#{parts.fragment}" if parts.fragment else "")
    )
