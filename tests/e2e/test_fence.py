"""The write fence of a cutover is a rule of the kernel: the worker and the CLI honour it, not only the API."""

from __future__ import annotations

from pathlib import Path

import pytest

from skyferry.bootstrap import bootstrap
from skyferry.cli import run
from skyferry.core.errors import WriteFenced
from skyferry.ledger.commands import Deposit, OpenAccount, TransferMoney
from skyferry.migrate.fence import lift_fence, set_fence
from skyferry.settings import Settings


def test_a_worker_started_against_a_fenced_store_writes_nothing_until_the_fence_is_lifted(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"sqlite:///{tmp_path}/source.db"
    ledger = bootstrap(Settings(store_url=url, broker_url="memory://"))
    try:
        for account in ("a", "b"):
            ledger.execute(OpenAccount(account_id=account, owner=account, currency="EUR"))
        ledger.execute(Deposit(account_id="a", amount="10", currency="EUR"))
        ledger.execute(TransferMoney(transfer_id="t", from_account="a", to_account="b", amount="4", currency="EUR"))
        set_fence(ledger.views, f"migration cutover to sqlite:///{tmp_path}/target.db")
        fenced_at = ledger.events.last_position()

        with pytest.raises(WriteFenced):  # any command of any process: here the CLI's own
            ledger.execute(Deposit(account_id="a", amount="1", currency="EUR"))
        assert run(["worker", "--once", "--store", url]) == 3  # transient: run it again later
        err = capsys.readouterr().err
        assert "fenced for a migration cutover" in err
        assert "target.db" not in err
        assert ledger.events.last_position() == fenced_at  # the process manager did not debit
        assert ledger.balance("a")["balance"] == "10.00"  # the read models still caught up
        assert ledger.transfer("t")["status"] == "started"

        lift_fence(ledger.views)  # the cutover is rolled back
        assert run(["worker", "--once", "--store", url]) == 0
        assert ledger.transfer("t")["status"] == "completed"
        assert (ledger.balance("a")["balance"], ledger.balance("b")["balance"]) == ("6.00", "4.00")
    finally:
        ledger.close()
