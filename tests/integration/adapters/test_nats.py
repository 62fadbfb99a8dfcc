"""NATS JetStream broker: subjects, bad settings, an unreachable server, a server restart.

The restart tests use a private nats-server this test starts and stops by PID
(``tests.services.nats.private_server``); the others use the session's server, each
with its own stream.
"""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import Callable
from urllib.parse import quote

import nats
import pytest

from skyferry.adapters.brokers.nats import NatsBroker, encode_token, partition_of
from skyferry.core.errors import ConfigurationError, TransientError, ValidationError
from skyferry.core.ports import Message
from tests.services import free_port
from tests.services import nats as nats_service


def wait_until(predicate: Callable[[], bool], what: str, timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.02)
    pytest.fail(f"timed out after {timeout} s waiting for {what}")


def message(key: str, n: int = 0) -> Message:
    return Message(id=str(uuid.uuid4()), key=key, body=f"body {n}".encode(), attributes={"n": str(n)})


class Collector:
    def __init__(self, fail: Callable[[Message], bool] = lambda m: False) -> None:
        self.lock = threading.Lock()
        self.got: list[Message] = []
        self.fail = fail

    def __call__(self, m: Message) -> None:
        if self.fail(m):
            raise RuntimeError(f"refusing {m.id}")
        with self.lock:
            self.got.append(m)

    def ids(self) -> list[str]:
        with self.lock:
            return [m.id for m in self.got]


async def stored_subjects(server: str, stream: str) -> list[str]:
    nc = await nats.connect(servers=[server])
    try:
        js = nc.jetstream()
        info = await js.stream_info(stream, subjects_filter=">")
        return sorted((info.state.subjects or {}).keys())
    finally:
        await nc.close()


# --- subjects ------------------------------------------------------------------------------------


def test_each_stream_id_gets_its_own_legal_subject() -> None:
    with nats_service.fresh_stream() as url:
        broker = NatsBroker(url)
        keys = ["acct-1", "tenant:7/account.9", "konto/Ärger:ü.日本-1_x", "\U0001d400" * 200]
        try:
            broker.publish([message(k) for k in keys])
            server, stream = url.rsplit("/", 1)
            subjects = asyncio.run(stored_subjects(server, stream))
        finally:
            broker.close()
    assert subjects == sorted(f"skyferry.{stream}.ev.{partition_of(k, 8)}.{encode_token(k)}" for k in keys)


def test_the_longest_stream_id_travels_through_a_real_server() -> None:
    key = "\U0001d400" * 200
    with nats_service.fresh_stream() as url:
        broker = NatsBroker(url)
        got = Collector()
        try:
            broker.subscribe("g", got)
            sent = message(key)
            broker.publish([sent])
            wait_until(lambda: sent.id in got.ids(), "the message")
            assert got.got[0].key == key
        finally:
            broker.close()


def test_a_key_too_long_for_a_subject_publishes_nothing_of_the_batch() -> None:
    with nats_service.fresh_stream() as url:
        broker = NatsBroker(url)
        try:
            with pytest.raises(ValidationError, match="subject token"):
                broker.publish([message("fine"), message("\U0001d400" * 300)])
            broker.publish([message("sentinel")])
            server, stream = url.rsplit("/", 1)
            assert asyncio.run(stored_subjects(server, stream)) == [
                f"skyferry.{stream}.ev.{partition_of('sentinel', 8)}.sentinel"
            ]
        finally:
            broker.close()


def test_a_dead_letter_says_why_it_died() -> None:
    with nats_service.fresh_stream("backoff=0.01") as url:
        broker = NatsBroker(url)
        try:
            poison = message("k")
            broker.subscribe("g", Collector(lambda m: m.id == poison.id), max_deliveries=2)
            broker.publish([poison])
            wait_until(lambda: bool(broker.dead_letters("g")), "the dead letter")
            [dead] = broker.dead_letters("g")
            assert (dead.id, dead.key, dead.body) == (poison.id, "k", poison.body)
            assert dead.attributes["n"] == "0"
            assert f"refusing {poison.id}" in dead.attributes["dead_letter_error"]
            assert broker.dead_letters("other-group") == []
        finally:
            broker.close()


# --- bad settings -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "names"),
    [
        ("nats://127.0.0.1:4222/bad.name", "bad.name"),
        ("nats://127.0.0.1:4222/has space", "has space"),
        ("nats://127.0.0.1:4222/" + "x" * 33, "x" * 33),
        ("nats://127.0.0.1:4222/S?partitions=0", "partitions"),
        ("nats://127.0.0.1:4222/S?ack_wait=soon", "ack_wait"),
        ("nats://127.0.0.1:4222/S?max_age=-1", "max_age"),
        ("http://127.0.0.1:4222/S", "nats://"),
    ],
)
def test_bad_urls_are_refused_naming_the_value(url: str, names: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        NatsBroker(url)
    assert names in str(caught.value)


async def stream_max_age(server: str, stream: str) -> float | None:
    return (await stream_config(server, stream)).max_age


async def stream_config(server: str, stream: str) -> nats.js.api.StreamConfig:
    nc = await nats.connect(servers=[server])
    try:
        return (await nc.jetstream().stream_info(stream)).config
    finally:
        await nc.close()


def test_max_age_bounds_how_long_the_stream_keeps_messages() -> None:
    with nats_service.fresh_stream("max_age=3600") as url:
        broker = NatsBroker(url)
        try:
            broker.publish([message("k")])
            server, stream = url.split("?")[0].rsplit("/", 1)
            assert asyncio.run(stream_max_age(server, stream)) == 3600
        finally:
            broker.close()


def test_a_password_in_the_url_is_not_shown() -> None:
    broker = NatsBroker("nats://app:s3cret@127.0.0.1:4222/S")
    assert "s3cret" not in broker.url
    broker.close()


def test_a_server_that_requires_a_password_lets_in_the_right_one_only() -> None:
    """As the chart's in-chart NATS: the URL's user and password get in; a wrong password, or none,
    is a ConfigurationError (not worth retrying) that, like the broker's url, never shows the password."""
    password = "Right-password-0123456789"
    wrong = "Wrong-password-9876543210"
    with nats_service.private_server(password=password) as server:
        base = f"nats://skyferry:{password}@127.0.0.1:{server.port}/S"
        broker = NatsBroker(base)
        try:
            assert password not in broker.url
            broker.publish([message("k")])
            got = Collector()
            subscription = broker.subscribe("g", got)
            try:
                wait_until(lambda: len(got.ids()) == 1, "the message through the authenticated connection")
            finally:
                subscription.close()
        finally:
            broker.close()
        for url, secret in (
            (f"nats://skyferry:{wrong}@127.0.0.1:{server.port}/S", wrong),
            (f"nats://someone:{password}@127.0.0.1:{server.port}/S", password),
            (f"{server.url}/S", None),
        ):
            refused = NatsBroker(url)
            try:
                with pytest.raises(ConfigurationError, match="refused") as caught:
                    refused.publish([message("k")])
                if secret is not None:
                    assert secret not in str(caught.value), url
                    assert secret not in refused.url, url
                    assert secret not in repr(caught.value), url
            finally:
                refused.close()


def test_a_password_is_sent_percent_decoded_as_in_any_url() -> None:
    """A password holding a character a URL reserves is written percent-encoded; the server
    gets the password itself."""
    password = "p@ss:w/rd%40-0123456789"  # what the URL reserves, and a % that decoding must not touch twice
    with nats_service.private_server(password=password) as server:
        broker = NatsBroker(f"nats://skyferry:{quote(password, safe='')}@127.0.0.1:{server.port}/S")
        try:
            broker.publish([message("k")])
            assert "p%40ss" not in broker.url
        finally:
            broker.close()


def test_an_unreachable_server_is_a_transient_error() -> None:
    port = free_port()
    broker = NatsBroker(f"nats://127.0.0.1:{port}/S")
    try:
        with pytest.raises(TransientError, match=str(port)):
            broker.publish([message("k")])
    finally:
        broker.close()


def test_a_server_without_jetstream_is_a_configuration_error() -> None:
    with nats_service.private_server(jetstream=False) as server:
        broker = NatsBroker(f"{server.url}/S")
        try:
            with pytest.raises(ConfigurationError, match="JetStream"):
                broker.publish([message("k")])
        finally:
            broker.close()


# --- a server restart -----------------------------------------------------------------------------


def test_publishing_while_the_server_is_down_fails_then_everything_arrives_once_it_is_back() -> None:
    with nats_service.private_server() as server:
        url = f"{server.url}/RESTART?publish_timeout=2"
        publisher, consumer = NatsBroker(url), NatsBroker(url)
        got = Collector()
        try:
            consumer.subscribe("g", got)
            before = [message("k", n) for n in range(5)]
            publisher.publish(before)
            wait_until(lambda: set(got.ids()) >= {m.id for m in before}, "the messages before the outage")

            server.stop()
            during = [message("k", n) for n in range(5, 10)]
            with pytest.raises(TransientError):
                publisher.publish(during)

            server.start()
            deadline = time.monotonic() + 60
            while True:  # what a relay does: publish the same batch again until accepted
                try:
                    publisher.publish(during)
                    break
                except TransientError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.2)
            wait_until(lambda: set(got.ids()) >= {m.id for m in during}, "the messages after the outage")
            time.sleep(0.5)
            ids = got.ids()
            assert sorted(ids) == sorted(m.id for m in before + during), "lost or duplicated across the restart"
            assert [int(m.attributes["n"]) for m in got.got] == list(range(10))
        finally:
            publisher.close()
            consumer.close()


def test_two_worker_replicas_compete_and_keep_each_keys_order() -> None:
    """Two broker instances (two connections, as two pods would have) in one group."""
    with nats_service.fresh_stream() as url:
        replicas = [NatsBroker(url), NatsBroker(url)]
        lock = threading.Lock()
        handled: list[tuple[int, Message]] = []
        active: dict[str, int] = {}
        overlap: list[str] = []

        def handler_for(replica: int) -> Callable[[Message], None]:
            def handle(m: Message) -> None:
                with lock:
                    active[m.key] = active.get(m.key, 0) + 1
                    if active[m.key] > 1:
                        overlap.append(m.key)
                time.sleep(0.002)
                with lock:
                    active[m.key] -= 1
                    handled.append((replica, m))

            return handle

        try:
            for index, replica in enumerate(replicas):
                replica.subscribe("projector", handler_for(index))
            keys = [f"acct-{i}" for i in range(12)]
            sent = [message(k, n) for n in range(10) for k in keys]
            for start in range(0, len(sent), 20):
                replicas[0].publish(sent[start : start + 20])
            wait_until(lambda: len(handled) >= len(sent), "every message")
            time.sleep(0.5)
            assert sorted(m.id for _, m in handled) == sorted(m.id for m in sent), "lost or duplicated"
            for k in keys:
                assert [int(m.attributes["n"]) for _, m in handled if m.key == k] == list(range(10))
            assert not overlap, f"two replicas handled one key at once: {overlap[:3]}"
        finally:
            for replica in replicas:
                replica.close()


def test_a_stream_is_bounded_by_default_and_discards_the_oldest() -> None:
    """A stream nobody reads (projections fed from the store) never fills the server's store."""
    with nats_service.fresh_stream("") as url:
        broker = NatsBroker(url)
        try:
            broker.publish([message("k")])
            server, stream = url.split("?")[0].rsplit("/", 1)
            config = asyncio.run(stream_config(server, stream))
            assert config.max_age == 7 * 24 * 3600
            assert config.discard == nats.js.api.DiscardPolicy.OLD
        finally:
            broker.close()
    with nats_service.fresh_stream("max_bytes=1048576") as url:
        broker = NatsBroker(url)
        try:
            # 3 MB into a 1 MiB stream: every publish accepted, the oldest messages dropped
            broker.publish([Message(id=str(uuid.uuid4()), key=f"k{i}", body=b"x" * 100_000) for i in range(30)])
            server, stream = url.split("?")[0].rsplit("/", 1)
            assert asyncio.run(stream_config(server, stream)).max_bytes == 1048576
        finally:
            broker.close()
