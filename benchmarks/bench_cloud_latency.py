"""Import into the cloud stores and relay publishing, at 0 ms and at 20 ms each way to the service.

``python -m benchmarks --only cloud_latency`` (root, ``ip`` and ``tc`` needed).  On the
emulators every request answers within a millisecond, so a writer that waits for each
request before sending the next looks fast here and crawls against a service 20-80 ms
away.  This benchmark puts a cloud's round trip between skyferry and each emulator:

* Each emulator runs in a network namespace of its own (``skyferry-bench-<emulator>``):
  moto server (DynamoDB, SNS+SQS), the npm Cosmos DB emulator, Google's Firestore and
  Pub/Sub emulators (when the machine has them).  The measuring process runs in the same
  namespace, so only that namespace's loopback carries the traffic and nothing of the
  machine's own network is touched.
* The delay: ``tc qdisc replace dev lo root netem delay 20ms`` on that loopback (every
  packet crosses it once, so 20 ms each way, 40 ms a round trip).  Where the kernel has
  no ``netem`` (``CONFIG_NET_SCH_NETEM`` unset, as on some microVMs), a delay proxy in the
  namespace takes its place: it forwards each connection's bytes in both directions, each
  chunk 20 ms after it arrived (without waiting for the previous one, so requests still
  pipeline), and holds a new connection's first bytes for one more round trip (a TCP
  connect).  The 0 ms figure goes through the same path with no delay.  The figures say
  which was used.
* Leftovers of a crashed run are removed by name before anything starts (the processes
  still inside a ``skyferry-bench-*`` namespace are killed, the namespace deleted), and
  again at the end.

Figures (events/s; the "raw" column is the same path at 0 ms; goal: at 20 ms, >= 70 % of
0 ms): ``import`` of an archive (``import_archive``, as ``skyferry import`` runs it) into a
fresh DynamoDB table, Cosmos DB database and Firestore project; ``relay publish`` of a
SQLite store's events (``Relay.run_once``) to a fresh SNS+SQS topic and Pub/Sub topic.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

from benchmarks.figures import Figure
from skyferry.core.messages import Event, new_event_id
from tests import services

PREFIX = "skyferry-bench-"
DELAY_MS = 20
ROOT = Path(__file__).resolve().parents[1]
REGION = "us-east-1"
AWS_ENV = {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench", "AWS_DEFAULT_REGION": REGION}
COSMOS_KEY = "C2y6yDjf5/R+ob0N8A7Cgv30VRDJIWEHLM+4QDU5DE2nQ9nDuVTqobD4b8mGGyPMbIZnqyMsEcaGQy67XIw/Jw=="
"""The well-known public key of the Cosmos DB emulators (not a secret)."""
EMULATOR_PORT = 18000
PROXY_PORT = 18001


# --- namespaces --------------------------------------------------------------------------------------


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check, timeout=30)


def remove_namespace(name: str) -> None:
    """Remove the namespace ``name`` if it exists, killing what still runs inside it (a crashed run's)."""
    if name not in _ip("netns", "list").stdout.split():
        return
    pids = _ip("netns", "pids", name, check=False).stdout.split()
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, ValueError):
            os.kill(int(pid), signal.SIGKILL)
    for pid in pids:  # wait until they are gone, so the namespace really goes
        deadline = time.monotonic() + 10
        while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
    _ip("netns", "delete", name)


def leftovers() -> list[str]:
    """Namespaces of this benchmark that an earlier run left behind."""
    return [line.split()[0] for line in _ip("netns", "list").stdout.splitlines() if line.startswith(PREFIX)]


@contextlib.contextmanager
def namespace(name: str) -> Iterator[str]:
    """A fresh network namespace with its loopback up; removed afterwards, whatever happens."""
    remove_namespace(name)
    _ip("netns", "add", name)
    try:
        _ip("-n", name, "link", "set", "lo", "up")
        yield name
    finally:
        remove_namespace(name)


def netem(name: str, delay_ms: int) -> bool:
    """Put ``delay_ms`` on the namespace's loopback with netem; ``False`` when the kernel has no netem."""
    done = subprocess.run(
        ["ip", "netns", "exec", name, "tc", "qdisc", "replace", "dev", "lo", "root", "netem", "delay",
         f"{delay_ms}ms", "limit", "100000"],
        capture_output=True,
        text=True,
        timeout=30,
    )  # fmt: skip
    return done.returncode == 0


@contextlib.contextmanager
def inside(name: str, args: list[str], log: Path, env: dict[str, str] | None = None) -> Iterator[int]:
    """Run ``args`` in namespace ``name`` (its own process group); stop it by its group id."""
    with open(log, "ab") as out:
        process = subprocess.Popen(
            ["ip", "netns", "exec", name, *args],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=ROOT,
            start_new_session=True,
        )
        try:
            yield process.pid
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait()


def wait_listening(pid: int, port: int, what: str, timeout: float = 120) -> None:
    """Wait until ``pid`` itself listens on ``port`` (another process answering is an error)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not Path(f"/proc/{pid}").exists():
            raise RuntimeError(f"{what} exited before listening on port {port}")
        if services.owns_port(pid, port):
            return
        time.sleep(0.2)
    raise RuntimeError(f"{what} did not listen on port {port} within {timeout:.0f} s")


# --- the delay proxy (where the kernel has no netem) ----------------------------------------------------


async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, delay: float, not_before: float) -> None:
    """Forward ``reader`` to ``writer``, each chunk ``delay`` seconds after it arrived (none before ``not_before``)."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

    async def deliver() -> None:
        while True:
            due, data = await queue.get()
            wait = due - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            if not data:
                with contextlib.suppress(OSError):
                    writer.write_eof()
                return
            writer.write(data)
            await writer.drain()

    sender = asyncio.ensure_future(deliver())
    try:
        while True:
            data = await reader.read(1 << 16)
            queue.put_nowait((max(loop.time() + delay, not_before), data))
            if not data:
                break
        await sender
    except (ConnectionError, OSError):
        sender.cancel()


async def _proxy(listen: int, target: int, delay: float) -> None:
    async def connection(client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        accepted = asyncio.get_running_loop().time()
        try:
            server_reader, server_writer = await asyncio.open_connection("127.0.0.1", target)
        except OSError:
            client_writer.close()
            return
        # a TCP connect costs one round trip before the client's first bytes can leave
        await asyncio.gather(
            _pump(client_reader, server_writer, delay, accepted + 3 * delay),
            _pump(server_reader, client_writer, delay, 0.0),
            return_exceptions=True,
        )
        for writer in (client_writer, server_writer):
            writer.close()

    server = await asyncio.start_server(connection, "127.0.0.1", listen, backlog=512)
    async with server:
        await server.serve_forever()


# --- emulators -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Emulator:
    """An emulator: how to start it on a port, and the endpoint a client uses through a port."""

    name: str
    command: Callable[[int], list[str]]
    endpoint: Callable[[int], str]
    timeout: float = 120


def _moto(port: int) -> list[str]:
    # connections kept alive, as the service's are (werkzeug closes each after one request)
    return [sys.executable, str(ROOT / "tests" / "services" / "moto_server.py"), str(port), "--keep-alive"]


def _cosmos(port: int) -> list[str]:
    from tests.services import cosmos

    # connections kept alive, as the service's are (the emulator's own CLI closes each)
    command = cosmos.emulator_command(port)
    if command is None:
        raise LookupError("cosmosdb-server (npm @vercel/cosmosdb-server) is not installed: run `make deps`")
    return command


def _google(name: str) -> Callable[[int], list[str]]:
    def command(port: int) -> list[str]:
        from tests.services import gcloud_emulators

        return gcloud_emulators.command(name, port)

    return command


EMULATORS = {
    "moto": Emulator("moto", _moto, lambda port: f"http://127.0.0.1:{port}", 60),
    "cosmos": Emulator("cosmos", _cosmos, lambda port: f"https://127.0.0.1:{port}/", 60),
    "firestore": Emulator("firestore", _google("firestore"), lambda port: f"127.0.0.1:{port}"),
    "pubsub": Emulator("pubsub", _google("pubsub"), lambda port: f"127.0.0.1:{port}"),
}

#: (figure, emulator, job, target, events, streams): the counts keep each round within a
#: minute or two on the emulators of a loaded 2-core machine, and each import many writes
#: long, so that its throughput, not its fixed start (connections, the checkpoint read and
#: written once), is what is measured.  The events interleave their streams as an export's
#: do.  Not more for DynamoDB: moto deep-copies the whole table on every TransactWriteItems
#: (as a backup; once per item before ``tests/services/moto_server.py`` made it once per
#: call), so its time per write grows with the table and would hide the round trip.  Cosmos
#: DB writes one commit per stream of a block: 1,000 events of 50 streams are one block of
#: 50 commits at 32 in flight (128 streams a block), too few for a round to measure more
#: than its start, so its job is 10,000 events; and since 10,000 events are still one
#: block (one chunk of an export), a second job of 40,000 events (four chunks) shows what
#: a longer import keeps between chunks.  The relay is a
#: long-lived process: 10 batches of 500, so that its start (a connection, the topic looked
#: up) is not most of what a round measures.
JOBS = (
    ("import into DynamoDB", "moto", "import", "dynamodb", 1000, 50),
    ("relay publish to SNS+SQS", "moto", "relay", "sns+sqs", 5000, 50),
    ("import into Cosmos DB", "cosmos", "import", "cosmos", 10000, 50),
    ("import into Cosmos DB, four chunks", "cosmos", "import", "cosmos", 40000, 50),
    ("import into Firestore", "firestore", "import", "firestore", 10000, 50),
    ("relay publish to Pub/Sub", "pubsub", "relay", "pubsub", 5000, 50),
)
ROUNDS = 2
"""Rounds at each delay, interleaved, after one warm-up round; the best of each is printed."""
ORDER = tuple(d for n in range(ROUNDS) for d in ((0, DELAY_MS) if n % 2 == 0 else (DELAY_MS, 0)))
"""0, 20, 20, 0: an emulator that slows down as it runs (moto keeps what it was sent; its
transactions copy the table) favours neither delay, as it did 0 ms with 0, 20, 0, 20."""


# --- what runs inside a namespace ------------------------------------------------------------------------


def _target_url(target: str, endpoint: str) -> tuple[str, Callable[[], None]]:
    """A fresh store or broker URL of ``target`` on ``endpoint``, and how to remove it."""
    tag = uuid.uuid4().hex[:12]
    if target == "dynamodb":
        import boto3

        from skyferry.adapters.stores import dynamodb

        client = boto3.client("dynamodb", region_name=REGION, endpoint_url=endpoint)
        dynamodb.create_table(client, f"bench-{tag}")
        url = f"dynamodb://bench-{tag}?region={REGION}&endpoint={quote(endpoint, safe=':/')}"

        def drop() -> None:
            client.delete_table(TableName=f"bench-{tag}")

        return url, drop
    if target == "cosmos":
        from azure.cosmos import CosmosClient, PartitionKey

        from skyferry.adapters.stores import cosmos

        admin = CosmosClient(endpoint, credential=COSMOS_KEY, connection_verify=False)
        database = admin.create_database(f"b{tag}")
        database.create_container("events", partition_key=PartitionKey(path=cosmos.EVENTS_PARTITION_KEY_PATH))
        database.create_container(
            cosmos.views_container_name("events"), partition_key=PartitionKey(path=cosmos.VIEWS_PARTITION_KEY_PATH)
        )
        url = f"cosmos://localhost/b{tag}/events?endpoint={endpoint}&key={COSMOS_KEY}&verify=false"
        return url, lambda: admin.delete_database(f"b{tag}")
    if target == "firestore":
        return f"firestore://b-{tag}/(default)?emulator={endpoint}", lambda: None
    if target == "sns+sqs":
        url = (
            f"sns+sqs://b-{tag}?region={REGION}&endpoint={quote(endpoint, safe=':/')}"
            "&provision=true&wait=0&backoff=0&visibility=30"
        )
        return url, lambda: None
    if target == "pubsub":
        return f"pubsub://b-{tag}/events?emulator={endpoint}", lambda: None
    raise ValueError(target)


def _stores(url: str, target: str) -> tuple[Any, Any]:
    """The event store and view store of ``url``.  Cosmos DB: with the SDK's endpoint discovery
    off, else the client follows the address the emulator gives for itself (its own port,
    not the delay proxy's), and both delays would measure the direct path."""
    from skyferry.adapters.registry import open_event_store, open_view_store

    if target != "cosmos":
        return open_event_store(url), open_view_store(url)
    from azure.cosmos import CosmosClient

    from skyferry.adapters.stores import cosmos

    class Undiscovered(cosmos.CosmosLocation):
        def client(self, **options: Any) -> CosmosClient:
            return super().client(enable_endpoint_discovery=False, **options)

    parsed = cosmos.CosmosLocation.parse(url)
    location = Undiscovered(**{name: getattr(parsed, name) for name in parsed.__dataclass_fields__})
    return cosmos.CosmosEventStore(location), cosmos.CosmosViewStore(location)


def child(job: dict[str, Any]) -> dict[str, Any]:
    """Inside the namespace: run one measurement, return events and seconds."""
    from skyferry.adapters.registry import open_archive, open_broker, open_event_store, open_view_store
    from skyferry.core.relay import Relay
    from skyferry.migrate.importer import import_archive

    os.environ.update(AWS_ENV)
    url, remove = _target_url(job["target"], job["endpoint"])
    try:
        if job["job"] == "import":
            store, views = _stores(url, job["target"])
            start = time.perf_counter()
            report = import_archive(open_archive(job["archive"]), store, views)
            seconds = time.perf_counter() - start
            events = report.written
            path = report.write_path
        else:
            source = open_event_store(job["source"])
            checkpoints = open_view_store(job["source"])
            broker = open_broker(url)
            relay = Relay(source, checkpoints, broker, name=f"$bench-{uuid.uuid4().hex[:8]}", batch_size=500)
            start = time.perf_counter()
            events = relay.run_once()
            seconds = time.perf_counter() - start
            path = "run_once"
            broker.close()
    finally:
        with contextlib.suppress(Exception):
            remove()
    return {"events": events, "seconds": seconds, "path": path}


# --- the orchestration ---------------------------------------------------------------------------------


def _source(directory: Path, count: int, streams: int) -> tuple[str, str]:
    """A SQLite store of ``count`` events in ``streams`` streams, interleaved, and its export (an
    archive directory)."""
    from skyferry.adapters.archives.local import LocalArchive
    from skyferry.adapters.stores.sqlite import SQLiteEventStore
    from skyferry.migrate.export import export

    directory.mkdir(parents=True)
    url = f"sqlite:///{directory}/source.db"
    store = SQLiteEventStore(url)
    now = datetime.now(UTC)
    data = {"amount": "12.50", "currency": "EUR", "account_id": "acc-0001", "note": "benchmark payload"}
    store.bulk_append(
        [
            Event(new_event_id(), f"acct-{i % streams}", i // streams + 1, "MoneyDeposited", 1, data, {}, now, now)
            for i in range(count)
        ]
    )
    archive = directory / "archive"
    export(store, LocalArchive.from_url(str(archive)))
    store.close()
    return url, str(archive)


def measure(name: str, emulator: Emulator, jobs: list[dict[str, Any]], directory: Path) -> list[dict[str, Any]]:
    """Start ``emulator`` in namespace ``PREFIX + name`` and run ``jobs`` there at 0 and 20 ms."""
    log = directory / f"{name}.log"
    results: list[dict[str, Any]] = []
    env = {**os.environ, **AWS_ENV}
    with namespace(PREFIX + name) as ns, inside(ns, emulator.command(EMULATOR_PORT), log, env) as pid:
        wait_listening(pid, EMULATOR_PORT, f"the {name} emulator", emulator.timeout)
        kernel = netem(ns, 0)
        # a warm-up round first (a JVM emulator's first requests are its slowest), not counted;
        # then the delays interleaved, so that both see the same machine load
        for counted, delay in [(False, 0)] + [(True, d) for d in ORDER]:
            port = EMULATOR_PORT
            proxy: contextlib.AbstractContextManager[int] = contextlib.nullcontext(0)
            if kernel:
                netem(ns, delay)
            else:
                argv = [sys.executable, "-m", "benchmarks.bench_cloud_latency", "proxy", str(PROXY_PORT)]
                proxy = inside(ns, [*argv, str(EMULATOR_PORT), str(delay)], log, env)
                port = PROXY_PORT
            with proxy as proxy_pid:
                if proxy_pid:
                    wait_listening(proxy_pid, PROXY_PORT, "the delay proxy", 30)
                for job in jobs:
                    request = {**job, "endpoint": emulator.endpoint(port)}
                    done = subprocess.run(
                        ["ip", "netns", "exec", ns, sys.executable, "-m", "benchmarks.bench_cloud_latency", "child",
                         json.dumps(request)],
                        capture_output=True,
                        text=True,
                        cwd=ROOT,
                        env=env,
                        timeout=900,
                    )  # fmt: skip
                    if done.returncode != 0:
                        raise RuntimeError(f"{job['figure']} at {delay} ms failed:\n{done.stderr[-3000:]}")
                    result = json.loads(done.stdout.strip().splitlines()[-1])
                    if counted:
                        results.append({**job, **result, "delay": delay, "how": "netem" if kernel else "delay proxy"})
                    rate = result["events"] / result["seconds"]
                    what = "" if counted else " (warm-up, not counted)"
                    print(f"  {job['figure']} at {delay} ms: {rate:,.1f} events/s{what}", file=sys.stderr, flush=True)
    return results


def _figures(results: list[dict[str, Any]]) -> list[Figure]:
    """One figure per job: the best rate at 20 ms beside the best at 0 ms."""
    figures = []
    for figure, *_ in JOBS:
        best: dict[int, dict[str, Any]] = {}
        for r in results:
            r["rate"] = r["events"] / r["seconds"]
            if r["figure"] == figure and (r["delay"] not in best or r["rate"] > best[r["delay"]]["rate"]):
                best[r["delay"]] = r
        if 0 not in best or DELAY_MS not in best:
            continue
        slow, fast = best[DELAY_MS], best[0]
        figures.append(
            Figure(
                f"{figure} at {DELAY_MS} ms",
                slow["rate"],
                "events/s",
                fast["rate"],
                "0 ms",
                goal=0.7,
                note=f"{slow['events']} events, {slow['path']}, {slow['how']}, load {os.getloadavg()[0]:.2f}",
            )
        )
    return figures


def run(args: argparse.Namespace) -> list[Figure]:
    """Every job of :data:`JOBS` whose emulator this machine has, at 0 and 20 ms."""
    if os.geteuid() != 0 or not shutil.which("ip") or not shutil.which("tc"):
        raise RuntimeError("needs root with ip and tc (iproute2): network namespaces and tc netem")
    for name in leftovers():
        remove_namespace(name)
    quick = bool(getattr(args, "quick", False))
    figures: list[Figure] = []
    with tempfile.TemporaryDirectory(prefix="skyferry-bench-latency-") as name:
        directory = Path(name)
        sources: dict[tuple[int, int], tuple[str, str]] = {}
        missing: list[str] = []
        for emulator_name, emulator in EMULATORS.items():
            try:
                emulator.command(EMULATOR_PORT)
            except LookupError as e:
                missing.append(f"{emulator_name}: {e}")
                continue
            jobs = []
            for figure, owner, job, target, count, streams in JOBS:
                if owner != emulator_name:
                    continue
                count = count // 4 if quick else count
                if (count, streams) not in sources:
                    sources[count, streams] = _source(directory / f"{count}-{streams}", count, streams)
                source, archive = sources[count, streams]
                jobs.append({"figure": figure, "job": job, "target": target, "archive": archive, "source": source})
            figures += _figures(measure(emulator_name, emulator, jobs, directory))
        for reason in missing:
            print(f"bench_cloud_latency: skipped {reason}", file=sys.stderr)
    return figures


if __name__ == "__main__":
    if sys.argv[1] == "child":
        print(json.dumps(child(json.loads(sys.argv[2]))))
    elif sys.argv[1] == "proxy":
        asyncio.run(_proxy(int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]) / 1000))
