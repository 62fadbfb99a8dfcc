"""The on-premises data plane under faults: PostgreSQL + NATS JetStream, real services.

* the broker is unreachable while the relay publishes, then comes back: every event is
  delivered, and applied once in effect by a projection consuming from the broker;
* the relay process is killed with SIGKILL in the middle of a batch and restarted:
  nothing is lost, and what it had half-published is absorbed (JetStream dedup by
  event id, consumer checkpoints);
* two API processes append to the same accounts at once: each version is written
  once, and the money the clients were told about is the money the store holds.

(A connection dropped mid-append is in ``tests/integration/adapters/test_postgres.py``.)
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path

import nats
import pytest
from nats.js.errors import NotFoundError

from skyferry.adapters.brokers.nats import NatsBroker
from skyferry.adapters.stores.postgres import PostgresViewStore
from skyferry.bootstrap import Ledger, bootstrap
from skyferry.core.errors import TransientError
from skyferry.core.projections import ProjectionConsumer, ReadModels
from skyferry.ledger import commands as cmd
from skyferry.ledger.projections import BalancesProjection
from skyferry.settings import Settings
from tests.services import nats as nats_service
from tests.services import postgres

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]


def wait_until(predicate: Callable[[], bool], what: str, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    pytest.fail(f"timed out after {timeout} s waiting for {what}")


@pytest.fixture
def store_url() -> Iterator[str]:
    with postgres.fresh_schema() as url:
        yield url


@pytest.fixture
def consumer_url() -> Iterator[str]:
    """A second schema: the read side of a consumer that learns events only from the broker."""
    with postgres.fresh_schema() as url:
        yield url


class BrokerFedBalances:
    """The balances projection fed from the broker into a view store of its own."""

    def __init__(self, ledger: Ledger, broker_url: str, views_url: str) -> None:
        self.views = PostgresViewStore(views_url)
        self.consumer = ProjectionConsumer(ledger.events, self.views, BalancesProjection())
        self.broker = NatsBroker(broker_url)
        self.broker.subscribe("balances-from-broker", self.consumer.handle)

    def balances(self) -> dict[str, Decimal]:
        return {key: Decimal(doc["balance"]) for key, doc in ReadModels(self.views).query("balances", "balances")}

    def close(self) -> None:
        self.broker.close()
        self.views.close()


def truth(ledger: Ledger, accounts: list[str]) -> dict[str, Decimal]:
    """Each account's balance from its events (not from any projection)."""
    return {a: Decimal(ledger.account_state(a)["balance"]) for a in accounts}


def open_accounts(ledger: Ledger, count: int, deposit: str = "100.00") -> list[str]:
    accounts = [f"acct-{uuid.uuid4().hex[:8]}" for _ in range(count)]
    for account in accounts:
        ledger.execute(cmd.OpenAccount(account_id=account, owner="test", currency="EUR"))
        ledger.execute(cmd.Deposit(account_id=account, amount=deposit, currency="EUR"))
    return accounts


async def stream_message_count(server: str, stream: str) -> int:
    """Messages the JetStream stream holds (0 when it was never created: nothing was published)."""
    nc = await nats.connect(servers=[server])
    try:
        info = await nc.jetstream().stream_info(stream)
        return int(info.state.messages)
    except NotFoundError:
        return 0
    finally:
        await nc.close()


# --- the worker command on PostgreSQL + JetStream ---------------------------------------------------


def test_the_store_fed_worker_command_projects_from_postgres_and_publishes_nothing(store_url: str) -> None:
    with nats_service.fresh_stream() as broker_url:
        ledger = bootstrap(Settings(store_url=store_url, broker_url=broker_url))
        try:
            a, b = open_accounts(ledger, 2)
            ledger.execute(
                cmd.TransferMoney(transfer_id="t-1", from_account=a, to_account=b, amount="30.00", currency="EUR")
            )
            skyferry = Path(sys.executable).parent / "skyferry"
            run = [str(skyferry), "worker", "--once", "--store", store_url, "--broker", broker_url]
            done = subprocess.run(run, cwd=ROOT, capture_output=True, timeout=300, check=False)
            assert done.returncode == 0, done.stderr.decode()
            assert Decimal(ledger.balance(a)["balance"]) == Decimal("70.00")
            assert Decimal(ledger.balance(b)["balance"]) == Decimal("130.00")
            assert ledger.transfer("t-1")["status"] == "completed"
            # Nobody reads the broker in this mode: nothing is published (a broker with bounded
            # retention can never fill up), and the relay's checkpoint follows the process manager.
            assert ledger.relay.position() == ledger.events.last_position()
            server, stream = broker_url.rsplit("/", 1)
            assert asyncio.run(stream_message_count(server, stream)) == 0
        finally:
            ledger.close()


# --- the broker is unreachable, then back --------------------------------------------------------


def test_broker_down_while_relaying_then_back_delivers_every_event_once_in_effect(
    store_url: str, consumer_url: str
) -> None:
    with nats_service.private_server() as server:
        broker_url = f"{server.url}/LEDGER?publish_timeout=2"
        ledger = bootstrap(Settings(store_url=store_url, broker_url=broker_url))
        fed = BrokerFedBalances(ledger, broker_url, consumer_url)
        try:
            accounts = open_accounts(ledger, 3)
            assert ledger.relay.run_once() == 6
            wait_until(lambda: fed.balances() == truth(ledger, accounts), "the balances before the outage")

            server.stop()
            for account in accounts:  # the API keeps accepting commands: they only need PostgreSQL
                ledger.execute(cmd.Deposit(account_id=account, amount="5.00", currency="EUR"))
                ledger.execute(cmd.Withdraw(account_id=account, amount="2.50", currency="EUR"))
            checkpoint = ledger.relay.position()
            with pytest.raises(TransientError):
                ledger.relay.run_once()
            assert ledger.relay.position() == checkpoint, "the checkpoint moved past unpublished events"

            server.start()
            deadline = time.monotonic() + 60
            while True:
                try:
                    relayed = ledger.relay.run_once()
                    break
                except TransientError:
                    assert time.monotonic() < deadline, "the relay never got through after the broker came back"
                    time.sleep(0.2)
            assert relayed == 6
            assert ledger.relay.position() == ledger.events.last_position()

            want = truth(ledger, accounts)
            assert want == {a: Decimal("102.50") for a in accounts}
            wait_until(lambda: fed.balances() == want, "the balances after the outage")
            time.sleep(0.5)  # a late duplicate would show now
            assert fed.balances() == want
            assert fed.consumer.applied == 12
        finally:
            fed.close()
            ledger.close()


# --- the relay is killed mid-batch ----------------------------------------------------------------

RELAY_SCRIPT = textwrap.dedent(
    """
    import sys, threading, time
    from skyferry.adapters.brokers.nats import NatsBroker
    from skyferry.adapters.stores.postgres import PostgresEventStore, PostgresViewStore
    from skyferry.core.relay import Relay

    class HalfwayPausingBroker(NatsBroker):
        # Publishes each batch in two halves with a pause between: a kill lands mid-batch.
        def publish(self, messages):
            half = len(messages) // 2
            super().publish(messages[:half])
            time.sleep(0.05)
            super().publish(messages[half:])

    store_url, broker_url = sys.argv[1], sys.argv[2]
    relay = Relay(PostgresEventStore(store_url), PostgresViewStore(store_url), HalfwayPausingBroker(broker_url),
                  batch_size=20)
    print("ready", flush=True)
    relay.run(threading.Event(), poll_interval=0.05)
    """
)


def test_relay_killed_mid_batch_then_restarted_loses_nothing_and_duplicates_are_absorbed(
    store_url: str, consumer_url: str
) -> None:
    with nats_service.fresh_stream() as broker_url:
        ledger = bootstrap(Settings(store_url=store_url, broker_url=broker_url))
        fed = BrokerFedBalances(ledger, broker_url, consumer_url)
        process: subprocess.Popen[bytes] | None = None
        try:
            accounts = open_accounts(ledger, 10)
            for round_ in range(8):
                for account in accounts:
                    ledger.execute(cmd.Deposit(account_id=account, amount=f"{round_ + 1}.00", currency="EUR"))
            total = 10 * 2 + 8 * 10
            last = ledger.events.last_position()

            process = subprocess.Popen(
                [sys.executable, "-c", RELAY_SCRIPT, store_url, broker_url],
                cwd=ROOT,
                env={**os.environ, "PYTHONPATH": str(ROOT)},
                stdout=subprocess.PIPE,
                start_new_session=True,
            )
            assert process.stdout is not None
            assert process.stdout.readline().strip() == b"ready"
            second_batch_end = ledger.events.read_all(None, 40)[-1].position or ""
            wait_until(lambda: (ledger.relay.position() or "") >= second_batch_end, "two batches relayed")
            os.kill(process.pid, signal.SIGKILL)
            process.wait(30)
            checkpoint = ledger.relay.position()
            assert checkpoint is not None
            assert checkpoint < (last or ""), "the relay finished before it was killed: nothing was tested"

            restarted = ledger.relay.run_once()  # the restarted relay: same checkpoint
            assert 0 < restarted < total
            assert ledger.relay.position() == last

            want = truth(ledger, accounts)
            wait_until(lambda: fed.balances() == want, "the balances after the restart")
            time.sleep(0.5)
            assert fed.balances() == want
            server, stream = broker_url.rsplit("/", 1)
            assert asyncio.run(stream_message_count(server, stream)) == total, "JetStream kept a duplicate"
        finally:
            if process is not None and process.poll() is None:
                os.kill(process.pid, signal.SIGKILL)
                process.wait(30)
            fed.close()
            ledger.close()


# --- two API processes on the same accounts -----------------------------------------------------------

API_SCRIPT = textwrap.dedent(
    """
    import json, random, sys
    from decimal import Decimal
    from skyferry.core.errors import ConcurrencyError, DomainError
    from skyferry.ledger import commands as cmd
    from skyferry.bootstrap import bootstrap
    from skyferry.settings import Settings

    store_url, seed, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    accounts = sys.argv[4].split(",")
    ledger = bootstrap(Settings(store_url=store_url, broker_url="memory://"))
    rng = random.Random(seed)
    deposited = withdrawn = Decimal(0)
    conflicts = rejected = 0
    for i in range(count):
        account = rng.choice(accounts)
        amount = f"{rng.randint(1, 30)}.{rng.randint(0, 99):02d}"
        deposit = rng.random() < 0.55
        command = (cmd.Deposit if deposit else cmd.Withdraw)(account_id=account, amount=amount, currency="EUR")
        while True:
            try:
                ledger.execute(command)
            except ConcurrencyError:
                conflicts += 1
                continue
            except DomainError:
                rejected += 1
            else:
                if deposit:
                    deposited += Decimal(amount)
                else:
                    withdrawn += Decimal(amount)
            break
    ledger.close()
    print(json.dumps({"deposited": str(deposited), "withdrawn": str(withdrawn), "conflicts": conflicts,
                      "rejected": rejected}))
    """
)


def test_two_api_processes_on_the_same_accounts_write_each_version_once_and_conserve_money(
    store_url: str,
) -> None:
    ledger = bootstrap(Settings(store_url=store_url, broker_url="memory://"))
    try:
        accounts = open_accounts(ledger, 4, deposit="50.00")
        before = sum(truth(ledger, accounts).values(), Decimal(0))
        processes = [
            subprocess.Popen(
                [sys.executable, "-c", API_SCRIPT, store_url, str(seed), "120", ",".join(accounts)],
                cwd=ROOT,
                env={**os.environ, "PYTHONPATH": str(ROOT)},
                stdout=subprocess.PIPE,
            )
            for seed in (1, 2)
        ]
        reports = []
        for process in processes:
            out, _ = process.communicate(timeout=300)
            assert process.returncode == 0
            reports.append(json.loads(out))

        deposited = sum((Decimal(r["deposited"]) for r in reports), Decimal(0))
        withdrawn = sum((Decimal(r["withdrawn"]) for r in reports), Decimal(0))
        for account in accounts:
            sid = next(s for s in ledger.events.list_streams() if s.endswith(account))
            events = ledger.events.read_stream(sid)
            assert [e.version for e in events] == list(range(1, len(events) + 1))
            assert len({e.id for e in events}) == len(events)
        held = sum(truth(ledger, accounts).values(), Decimal(0))
        assert held == before + deposited - withdrawn, "the store holds other money than the clients were told"
        assert all(v >= 0 for v in truth(ledger, accounts).values()), "an overdraft got through"

        ledger.run_worker_once()
        assert all(check["conserved"] for check in ledger.money_check().values()), ledger.money_check()
        assert {a: Decimal(ledger.balance(a)["balance"]) for a in accounts} == truth(ledger, accounts)
    finally:
        ledger.close()
