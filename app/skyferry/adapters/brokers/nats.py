"""NATS JetStream broker: ``nats://HOST:PORT/STREAM``.

URL fields::

    nats://USER:PASSWORD@HOST:PORT/STREAM?partitions=8&ack_wait=30&backoff=0.1&duplicate_window=120

* ``USER:PASSWORD`` (or a ``TOKEN`` alone): the server's credentials, percent-encoded as in
  any URL (``p%40ss`` for ``p@ss``); they are sent decoded and never shown (``url`` and
  errors hide them).
* ``STREAM`` (default ``SKYFERRY``): the JetStream stream, created on first use (file
  storage, limits retention).  1 to 32 letters, digits, ``-`` or ``_``.
* ``partitions`` (default 8): ordering partitions per group (see below).  Changing it
  on a stream that holds undelivered messages breaks their per-key order.
* ``ack_wait`` (seconds, default 30): how long a delivered message may stay unacknowledged
  before JetStream redelivers it; a handler that runs longer is kept alive with
  ``+WPI`` (in progress) signals.
* ``backoff`` (seconds, default 0.1): the first redelivery delay after a handler error,
  doubling per attempt up to 10 s.
* ``duplicate_window`` (seconds, default 120): JetStream's ``Nats-Msg-Id`` dedup window.
* ``max_age`` (seconds, default 604800 = 7 days; 0 = forever): how long the stream keeps
  messages.  The event store stays the source of truth (rebuilds read ``read_all``); a group
  created later starts from the oldest message still kept.
* ``max_bytes`` (bytes, default 0 = no size limit): the most the stream keeps.  Both limits
  discard the oldest messages (JetStream's ``discard: old``), so a stream nobody reads never
  fills the server's store and publishing never stops for it.  The kubernetes target sets
  both from its volume (``providers/kubernetes``).
* ``publish_timeout`` (seconds, default 10): how long ``publish`` waits for JetStream's
  acknowledgements before raising :class:`TransientError`.

Subjects (all under ``skyferry.STREAM.``)::

    skyferry.STREAM.ev.<partition>.<key token>     one subject per ordering key (stream id)
    skyferry.STREAM.dlq.<group token>              the dead letters of one group

A key token is the stream id with every character outside ``A-Z a-z 0-9 -`` replaced
by ``_`` and the hex of its UTF-8 bytes (``acct/1`` → ``acct_2F1``): injective, and legal
in a subject whatever the id.  Messages are published with ``Nats-Msg-Id`` = message id,
so JetStream drops a re-publish inside the dedup window; the attributes travel as one
ASCII JSON header.

**Per-key order with competing consumers.**  A group has one durable pull consumer per
partition, each with ``max_ack_pending=1``, filtered on its partition's subjects; a
key always hashes (CRC-32) to the same partition.  Every ``subscribe`` of the group
pulls from all the group's partition consumers; JetStream hands a partition's next
message to whichever puller asks first, but never while the previous one is
unacknowledged.  So consumers compete for work, partitions progress in parallel, and
the messages of one key are handled one at a time, in publish order, including across
redeliveries (a failed message blocks its partition until it succeeds or is
dead-lettered).

A handler that raises gets ``NAK`` with a delay (backoff); at the ``max_deliveries``-th
failed attempt the message is published to the group's dead-letter subject (deduplicated
by id, so a crash in between cannot dead-letter it twice) and terminated, and its key
moves on.  ``dead_letters`` reads that subject with direct stream gets.

The SDK is asyncio: each broker runs one event loop in a private thread, behind the
synchronous port; handlers run in a thread pool, so a slow handler never blocks the
loop.  Errors: an unreachable server or a publish without acknowledgement is a
:class:`TransientError` (re-publishing is safe); a bad URL or an auth failure is a
:class:`ConfigurationError`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import json
import logging
import re
import threading
import zlib
from collections.abc import Coroutine, Mapping, Sequence
from typing import Any, Final, Self, TypeVar
from urllib.parse import parse_qsl, unquote, urlsplit

import nats
import nats.errors
import nats.js.errors
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy, DiscardPolicy, StorageType, StreamConfig

from skyferry.adapters.registry import redact
from skyferry.core.errors import ConfigurationError, SkyferryError, TransientError, ValidationError
from skyferry.core.ports import Message, MessageHandler

log = logging.getLogger(__name__)

T = TypeVar("T")

DEFAULT_STREAM: Final = "SKYFERRY"
DEFAULT_MAX_AGE: Final = 7 * 24 * 3600
"""Seconds a stream keeps a message by default: what no consumer took expires; the store keeps all."""
MAX_TOKEN: Final = 2400
"""Longest token: a 200-character stream id of 4-byte characters, 3 subject bytes per UTF-8 byte."""
_STREAM_NAME: Final = re.compile(r"^[A-Za-z0-9_-]{1,32}$")
_SAFE: Final = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-")
_HEX_ESCAPE: Final = re.compile(r"_([0-9A-F]{2})")
ATTRIBUTES_HEADER: Final = "Skyferry-Attributes"
ID_HEADER: Final = "Skyferry-Id"
KEY_HEADER: Final = "Skyferry-Key"
ERROR_HEADER: Final = "Skyferry-Error"
MSG_ID_HEADER: Final = "Nats-Msg-Id"
_FETCH_SECONDS: Final = 0.5
_MAX_BACKOFF: Final = 10.0
_CALL_TIMEOUT: Final = 30.0
_CONNECT_SECONDS: Final = 5.0


def encode_token(text: str) -> str:
    """``text`` as one legal subject token: ``[A-Za-z0-9-]`` kept, anything else ``_HH`` per UTF-8 byte."""
    out: list[str] = []
    for char in text:
        if char in _SAFE:
            out.append(char)
        else:
            out.extend(f"_{byte:02X}" for byte in char.encode("utf-8"))
    token = "".join(out)
    if not token:
        raise ValidationError("an empty key or group name cannot be a NATS subject token")
    if len(token) > MAX_TOKEN:
        raise ValidationError(f"{text[:40]!r}…: encoded as a NATS subject token it is {len(token)} > {MAX_TOKEN} bytes")
    return token


def decode_token(token: str) -> str:
    """Inverse of :func:`encode_token`."""
    raw = bytearray()
    index = 0
    while index < len(token):
        match = _HEX_ESCAPE.match(token, index)
        if match:
            raw.append(int(match.group(1), 16))
            index = match.end()
        else:
            raw += token[index].encode()
            index += 1
    return raw.decode("utf-8")


def partition_of(key: str, partitions: int) -> int:
    """The ordering partition of ``key`` (stable across processes)."""
    return zlib.crc32(key.encode("utf-8")) % partitions


async def _log_error(error: Exception) -> None:
    log.warning("NATS connection: %s: %s", type(error).__name__, error)


def _is_refusal(error: Exception) -> bool:
    """Whether the server refused the client's credentials (``-ERR 'Authorization Violation'``)."""
    return isinstance(error, nats.errors.AuthorizationError) or "authorization violation" in str(error).lower()


def _ascii_json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=True, separators=(",", ":"))


class NatsSubscription:
    """One ``subscribe`` call: a puller per partition consumer of the group."""

    def __init__(self, broker: NatsBroker, group: str, handler: MessageHandler, max_deliveries: int) -> None:
        self.broker = broker
        self.group = group
        self.handler = handler
        self.max_deliveries = max_deliveries
        self.stopping = asyncio.Event()
        self.tasks: list[asyncio.Task[None]] = []
        self.executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=broker.partitions, thread_name_prefix=f"nats-{group}"[:40]
        )
        self.closed = False

    async def start(self) -> None:
        js = await self.broker.jetstream()
        group_token = encode_token(self.group)
        subs: list[JetStreamContext.PullSubscription] = []
        for partition in range(self.broker.partitions):
            durable = f"{group_token}_p{partition}"
            config = ConsumerConfig(
                durable_name=durable,
                filter_subject=f"{self.broker.subject_prefix}.ev.{partition}.>",
                ack_policy=AckPolicy.EXPLICIT,
                deliver_policy=DeliverPolicy.ALL,
                max_ack_pending=1,
                ack_wait=self.broker.ack_wait,
                max_deliver=-1,
            )
            try:
                await js.add_consumer(self.broker.stream, config)
            except nats.js.errors.BadRequestError as e:
                # The durable exists with another config (an older ack_wait): keep using it.
                log.warning("consumer %s exists with another configuration: %s", durable, e)
            subs.append(await js.pull_subscribe_bind(durable=durable, stream=self.broker.stream))
        self.tasks = [asyncio.create_task(self._pull(sub)) for sub in subs]

    async def _pull(self, sub: JetStreamContext.PullSubscription) -> None:
        while not self.stopping.is_set():
            try:
                msgs = await sub.fetch(1, timeout=_FETCH_SECONDS)
            except (TimeoutError, nats.errors.TimeoutError):
                continue
            except nats.js.errors.NotFoundError:
                log.warning("group %s: its consumer is gone (stream deleted?); this puller stops", self.group)
                return
            except Exception as e:  # the connection is down or reconnecting: try again shortly
                log.warning("group %s: fetch failed (%s); retrying", self.group, e)
                await asyncio.sleep(_FETCH_SECONDS)
                continue
            for msg in msgs:
                await self._handle(msg)
        with contextlib.suppress(Exception):
            await sub.unsubscribe()

    async def _handle(self, msg: Msg) -> None:
        attempt = msg.metadata.num_delivered or 1
        try:
            message = self.broker.decode(msg, attempt)
        except Exception as e:
            log.error("group %s: undecodable message on %s dead-lettered: %s", self.group, msg.subject, e)
            await self._dead_letter(msg, None, e)
            return
        loop = asyncio.get_running_loop()
        future = loop.run_in_executor(self.executor, self.handler, message)
        keepalive = max(self.broker.ack_wait / 3, 0.5)
        while True:
            done, _ = await asyncio.wait({future}, timeout=keepalive)
            if done:
                break
            with contextlib.suppress(Exception):
                await msg.in_progress()
        try:
            future.result()
        except Exception as e:
            if attempt >= self.max_deliveries:
                log.error("group %s: message %s failed %d times, dead-lettered: %s", self.group, message.id, attempt, e)
                await self._dead_letter(msg, message, e)
            else:
                log.warning("group %s: message %s failed (attempt %d): %s", self.group, message.id, attempt, e)
                with contextlib.suppress(Exception):
                    await msg.nak(delay=self.broker.backoff_for(attempt))
            return
        with contextlib.suppress(Exception):  # an ack lost with the connection means a redelivery
            await msg.ack()

    async def _dead_letter(self, msg: Msg, message: Message | None, error: BaseException) -> None:
        js = await self.broker.jetstream()
        message_id = message.id if message else f"seq-{msg.metadata.sequence.stream}"
        headers = {
            MSG_ID_HEADER: f"dlq:{self.group}:{message_id}",
            ID_HEADER: message_id,
            KEY_HEADER: msg.subject.rsplit(".", 1)[-1],
            ATTRIBUTES_HEADER: (msg.headers or {}).get(ATTRIBUTES_HEADER, "{}"),
            ERROR_HEADER: _ascii_json(f"{type(error).__name__}: {error}"[:500]),
        }
        try:
            await js.publish(self.broker.dlq_subject(self.group), msg.data, headers=headers, timeout=10)
        except Exception as e:  # keep the message: it is redelivered and dead-lettered on a later attempt
            log.error("group %s: could not dead-letter %s (%s); it will be redelivered", self.group, message_id, e)
            with contextlib.suppress(Exception):
                await msg.nak(delay=self.broker.backoff_for(self.max_deliveries))
            return
        with contextlib.suppress(Exception):
            await msg.term()

    async def stop(self) -> None:
        self.stopping.set()
        if self.tasks:
            await asyncio.gather(*self.tasks, return_exceptions=True)

    def close(self) -> None:
        """Stop pulling; the in-flight messages settle (ack or nak) first."""
        if self.closed:
            return
        self.closed = True
        with contextlib.suppress(SkyferryError):
            self.broker.call(self.stop())
        self.executor.shutdown(wait=True)
        self.broker.forget(self)


class NatsBroker:
    """Broker on NATS JetStream (see the module docstring for subjects, ordering and dead letters)."""

    def __init__(self, url: str, *, client: NatsClient | None = None) -> None:
        parts = urlsplit(url)
        if parts.scheme.lower() != "nats":
            raise ConfigurationError(f"not a nats:// URL: {redact(url)!r}")
        self.url = redact(url)
        self.stream = parts.path.strip("/") or DEFAULT_STREAM
        if not _STREAM_NAME.match(self.stream):
            raise ConfigurationError(
                f"stream {self.stream!r} in {self.url!r}: use 1 to 32 letters, digits, - or _ (no dots)"
            )
        params = dict(parse_qsl(parts.query))
        try:
            self.partitions = int(params.get("partitions", "8"))
            self.ack_wait = float(params.get("ack_wait", "30"))
            self.backoff = float(params.get("backoff", "0.1"))
            self.duplicate_window = float(params.get("duplicate_window", "120"))
            self.publish_timeout = float(params.get("publish_timeout", "10"))
            self.max_age = float(params.get("max_age", str(DEFAULT_MAX_AGE)))
            self.max_bytes = int(params.get("max_bytes", "0"))
        except ValueError as e:
            raise ConfigurationError(
                f"{self.url}: partitions, ack_wait, backoff, duplicate_window, publish_timeout, max_age, max_bytes "
                "must be numbers"
            ) from e
        if (
            not 1 <= self.partitions <= 256
            or self.ack_wait < 1
            or self.backoff < 0
            or self.publish_timeout <= 0
            or self.max_age < 0
            or self.max_bytes < 0
        ):
            raise ConfigurationError(
                f"{self.url}: need 1 <= partitions <= 256, ack_wait >= 1, backoff >= 0, "
                "publish_timeout > 0, max_age >= 0, max_bytes >= 0"
            )
        host = parts.netloc.rpartition("@")[2]
        self.server = f"nats://{host or '127.0.0.1:4222'}"
        # the URL's credentials, percent-decoded as any URL's are (nats-py would send them as written)
        self._credentials: dict[str, str] = {}
        if parts.username is not None and parts.password is not None:
            self._credentials = {"user": unquote(parts.username), "password": unquote(parts.password)}
        elif parts.username is not None:
            self._credentials = {"token": unquote(parts.username)}
        self.subject_prefix = f"skyferry.{self.stream}"
        self._nc = client
        self._js: JetStreamContext | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._connect_lock: asyncio.Lock | None = None
        self._subscriptions: list[NatsSubscription] = []
        self._closed = False

    @classmethod
    def from_url(cls, url: str) -> Self:
        """Parse ``url`` (see the module docstring); no I/O."""
        return cls(url)

    # -- the private event loop ------------------------------------------------------

    def _ensure_loop(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._closed:
                raise ConfigurationError(f"{self.url}: the broker is closed")
            if self._loop is None:
                loop = asyncio.new_event_loop()
                thread = threading.Thread(target=loop.run_forever, name="skyferry-nats", daemon=True)
                thread.start()
                self._loop, self._thread = loop, thread
            return self._loop

    def call(self, coro: Coroutine[Any, Any, T], timeout: float = _CALL_TIMEOUT) -> T:
        """Run ``coro`` on the broker's loop and wait for it (a timeout is a TransientError)."""
        future = asyncio.run_coroutine_threadsafe(coro, self._ensure_loop())
        try:
            return future.result(timeout)
        except concurrent.futures.TimeoutError as e:
            future.cancel()
            raise TransientError(f"{self.url}: no answer from NATS within {timeout} s") from e

    async def jetstream(self) -> JetStreamContext:
        """The JetStream context, connecting and creating the stream on first use."""
        if self._js is not None:
            return self._js
        if self._connect_lock is None:
            self._connect_lock = asyncio.Lock()
        async with self._connect_lock:
            if self._js is None:
                self._js = await self._connect()
        return self._js

    async def _connect(self) -> JetStreamContext:
        if self._nc is None:
            self._nc = await self._first_connection()
        js = self._nc.jetstream()
        try:
            await js.stream_info(self.stream)
        except nats.js.errors.NotFoundError:
            await self._create_stream(js)
        except (nats.errors.NoRespondersError, nats.js.errors.ServiceUnavailableError) as e:
            raise ConfigurationError(f"{self.url}: the NATS server has no JetStream (start it with -js)") from e
        except (nats.errors.Error, nats.js.errors.Error) as e:
            raise TransientError(f"{self.url}: JetStream did not answer: {type(e).__name__}: {e}") from e
        return js

    async def _first_connection(self) -> NatsClient:
        """Connect, within a bounded wait; reconnect forever once connected.

        nats-py retries the first connection forever too, a refused one included (it only
        reports each refusal to ``error_cb``): a refusal of the URL's credentials ends the wait
        at once as a :class:`ConfigurationError`, since retrying cannot cure it.
        """
        refused = asyncio.Event()
        refusal: list[Exception] = []

        async def on_error(error: Exception) -> None:
            if not refused.is_set() and _is_refusal(error):
                refusal.append(error)
                refused.set()
            await _log_error(error)

        connecting = asyncio.ensure_future(
            nats.connect(
                servers=[self.server],
                name=f"skyferry-{self.stream}",
                **self._credentials,
                connect_timeout=2,
                allow_reconnect=True,
                max_reconnect_attempts=-1,
                reconnect_time_wait=0.5,
                error_cb=on_error,
            )
        )
        watching = asyncio.ensure_future(refused.wait())
        try:
            await asyncio.wait({connecting, watching}, timeout=_CONNECT_SECONDS, return_when=asyncio.FIRST_COMPLETED)
        finally:
            watching.cancel()
        if not connecting.done():
            connecting.cancel()
            with contextlib.suppress(BaseException):
                await connecting
            if refusal:
                raise ConfigurationError(f"{self.url}: NATS refused the connection: {refusal[0]}")
            raise TransientError(f"{self.url}: NATS is not reachable within {_CONNECT_SECONDS} s")
        try:
            return connecting.result()
        except nats.errors.NoServersError as e:
            raise TransientError(f"{self.url}: NATS is not reachable within {_CONNECT_SECONDS} s") from e
        except (nats.errors.AuthorizationError, nats.errors.Error) as e:
            raise ConfigurationError(f"{self.url}: NATS refused the connection: {e}") from e
        except OSError as e:
            raise TransientError(f"{self.url}: NATS is not reachable: {e}") from e

    async def _create_stream(self, js: JetStreamContext) -> None:
        config = StreamConfig(
            name=self.stream,
            subjects=[f"{self.subject_prefix}.>"],
            storage=StorageType.FILE,
            duplicate_window=min(self.duplicate_window, self.max_age) if self.max_age else self.duplicate_window,
            max_age=self.max_age or None,
            max_bytes=self.max_bytes or None,
            discard=DiscardPolicy.OLD,
        )
        try:
            await js.add_stream(config)
        except nats.js.errors.BadRequestError as e:
            if "already in use" not in str(e):
                raise ConfigurationError(f"{self.url}: cannot create stream {self.stream!r}: {e}") from e

    # -- publishing ------------------------------------------------------------------

    def subject_for(self, key: str) -> str:
        """The subject of ``key``'s messages."""
        return f"{self.subject_prefix}.ev.{partition_of(key, self.partitions)}.{encode_token(key)}"

    def dlq_subject(self, group: str) -> str:
        """The dead-letter subject of ``group``."""
        return f"{self.subject_prefix}.dlq.{encode_token(group)}"

    def backoff_for(self, attempt: int) -> float:
        """Delay before redelivering after the ``attempt``-th failed attempt."""
        return float(min(self.backoff * 2 ** max(attempt - 1, 0), _MAX_BACKOFF))

    def publish(self, messages: Sequence[Message]) -> None:
        """Publish and wait for every JetStream ack; keeps per-key order (one connection, in order)."""
        if not messages:
            return
        prepared = [(self.subject_for(m.key), m) for m in messages]
        self.call(self._publish(prepared))

    async def _publish(self, prepared: list[tuple[str, Message]]) -> None:
        js = await self.jetstream()
        try:
            futures = [
                await js.publish_async(
                    subject,
                    m.body,
                    headers={MSG_ID_HEADER: m.id, ATTRIBUTES_HEADER: _ascii_json(dict(m.attributes))},
                    wait_stall=self.publish_timeout,
                )
                for subject, m in prepared
            ]
            await asyncio.wait_for(asyncio.gather(*futures), timeout=self.publish_timeout)
        except (TimeoutError, nats.errors.Error, nats.js.errors.Error) as e:
            raise TransientError(
                f"{self.url}: JetStream did not acknowledge the publish ({type(e).__name__}: {e}); "
                "publishing again is safe"
            ) from e

    def decode(self, msg: Msg, attempt: int) -> Message:
        """A delivered JetStream message as a port :class:`Message`."""
        headers: Mapping[str, str] = msg.headers or {}
        return Message(
            id=headers.get(MSG_ID_HEADER) or headers.get(ID_HEADER) or f"seq-{msg.metadata.sequence.stream}",
            key=decode_token(headers.get(KEY_HEADER) or msg.subject.rsplit(".", 1)[-1]),
            body=msg.data,
            attributes=json.loads(headers.get(ATTRIBUTES_HEADER, "{}")),
            delivery_attempt=attempt,
        )

    # -- consuming -------------------------------------------------------------------

    def subscribe(self, group: str, handler: MessageHandler, *, max_deliveries: int = 5) -> NatsSubscription:
        """Start pulling for ``group``; returns once the group's consumers exist."""
        if max_deliveries < 1:
            raise ValidationError("max_deliveries must be >= 1")
        encode_token(group)
        subscription = NatsSubscription(self, group, handler, max_deliveries)
        self.call(self._start(subscription))
        with self._lock:
            self._subscriptions.append(subscription)
        return subscription

    async def _start(self, subscription: NatsSubscription) -> None:
        try:
            await subscription.start()
        except (nats.errors.Error, nats.js.errors.Error) as e:
            raise TransientError(f"{self.url}: could not create the consumers of {subscription.group!r}: {e}") from e

    def forget(self, subscription: NatsSubscription) -> None:
        """Called by a closed subscription."""
        with self._lock, contextlib.suppress(ValueError):
            self._subscriptions.remove(subscription)

    def dead_letters(self, group: str, limit: int = 100) -> list[Message]:
        """The dead letters of ``group``, oldest first, read without removing them."""
        return self.call(self._dead_letters(group, limit))

    async def _dead_letters(self, group: str, limit: int) -> list[Message]:
        js = await self.jetstream()
        subject = self.dlq_subject(group)
        found: list[Message] = []
        seq = 1
        while len(found) < limit:
            try:
                raw = await js.get_msg(self.stream, seq=seq, subject=subject, next=True)
            except nats.js.errors.NotFoundError:
                break
            except (nats.errors.Error, nats.js.errors.Error) as e:
                raise TransientError(f"{self.url}: could not read the dead letters of {group!r}: {e}") from e
            headers: Mapping[str, str] = raw.headers or {}
            found.append(
                Message(
                    id=headers.get(ID_HEADER, ""),
                    key=decode_token(headers.get(KEY_HEADER, "_3F")),
                    body=raw.data or b"",
                    attributes={
                        **json.loads(headers.get(ATTRIBUTES_HEADER, "{}")),
                        "dead_letter_error": json.loads(headers.get(ERROR_HEADER, '""')),
                    },
                )
            )
            seq = (raw.seq or seq) + 1
        return found

    def close(self) -> None:
        """Stop every subscription, drain the connection and stop the loop thread."""
        with self._lock:
            subscriptions = list(self._subscriptions)
        for subscription in subscriptions:
            subscription.close()
        with self._lock:
            loop, thread = self._loop, self._thread
            self._closed = True
        if loop is None:
            return
        if self._nc is not None:
            nc = self._nc
            with contextlib.suppress(Exception):
                asyncio.run_coroutine_threadsafe(nc.close(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        if thread is not None:
            thread.join(10)
        loop.close()
