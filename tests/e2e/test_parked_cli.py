"""``skyferry worker --once`` goes past a poisoned event; ``skyferry parked list|retry|skip`` resolves it."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from skyferry.adapters.stores.sqlite import SQLiteViewStore
from skyferry.bootstrap import bootstrap
from skyferry.cli import run
from skyferry.core.errors import ValidationError
from skyferry.core.messages import Event
from skyferry.core.ports import ViewChange
from skyferry.core.projections import ViewBatch
from skyferry.ledger.commands import Deposit, OpenAccount
from skyferry.ledger.projections import BalancesProjection
from skyferry.settings import Settings

HEALTHY = BalancesProjection.apply


def failing(self: BalancesProjection, event: Event, views: ViewBatch) -> None:
    """The balances projection with a bug that hits every event of the account ``poison``."""
    if event.data.get("account_id") == "poison":
        raise KeyError("balances: a bug that only this account's events hit")
    HEALTHY(self, event, views)


def test_the_worker_goes_past_a_poisoned_event_and_the_operator_resolves_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"sqlite:///{tmp_path}/ledger.db"
    ledger = bootstrap(Settings(store_url=url, broker_url="memory://"))
    for account in ("before", "poison", "after"):
        ledger.execute(OpenAccount(account_id=account, owner=account, currency="EUR"))
        ledger.execute(Deposit(account_id=account, amount="10", currency="EUR"))
    ledger.close()

    monkeypatch.setattr(BalancesProjection, "apply", failing)
    assert run(["worker", "--once", "--store", url]) == 0
    assert run(["worker", "--once", "--store", url]) == 0  # and on every later run
    capsys.readouterr()
    assert run(["parked", "list", "--json", "--store", url]) == 0
    parked = json.loads(capsys.readouterr().out)
    assert [(p["runner"], p["stream_id"], p["type"]) for p in parked] == [
        ("balances_g1", "account-poison", "AccountOpened"),
        ("balances_g1", "account-poison", "MoneyDeposited"),
    ]
    assert "KeyError" in parked[0]["error"]

    opened, deposited = parked[0]["key"], parked[1]["key"]
    assert run(["parked", "retry", opened, "--store", url]) == 1  # not fixed yet
    assert "failed again, still parked" in capsys.readouterr().out
    monkeypatch.setattr(BalancesProjection, "apply", HEALTHY)  # the fix is deployed
    assert run(["parked", "retry", opened, "--store", url]) == 0
    assert run(["parked", "skip", deposited, "--json", "--store", url]) == 0
    capsys.readouterr()
    assert run(["parked", "list", "--store", url]) == 0
    assert capsys.readouterr().out.strip() == "0 parked event(s)"
    assert run(["parked", "skip", deposited, "--store", url]) == 2
    assert "no parked event" in capsys.readouterr().err

    ledger = bootstrap(Settings(store_url=url, broker_url="memory://"))
    try:
        assert ledger.balance("before")["balance"] == "10.00"
        assert ledger.balance("after")["balance"] == "10.00"
        assert ledger.balance("poison")["balance"] == "0.00"  # opened on retry; the deposit was skipped
    finally:
        ledger.close()


def poisoned(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> tuple[str, str, str]:
    """A SQLite store whose worker parked the two events of the account ``poison``: ``(url, key, key)``."""
    url = f"sqlite:///{tmp_path}/ledger.db"
    ledger = bootstrap(Settings(store_url=url, broker_url="memory://"))
    for account in ("before", "poison"):
        ledger.execute(OpenAccount(account_id=account, owner=account, currency="EUR"))
        ledger.execute(Deposit(account_id=account, amount="10", currency="EUR"))
    ledger.close()
    with monkeypatch.context() as patched:
        patched.setattr(BalancesProjection, "apply", failing)
        assert run(["worker", "--once", "--store", url]) == 0
    capsys.readouterr()
    first, second = listed(url, capsys)
    return url, first["key"], second["key"]


def listed(url: str, capsys: pytest.CaptureFixture[str]) -> list[dict[str, object]]:
    assert run(["parked", "list", "--json", "--store", url]) == 0
    found: list[dict[str, object]] = json.loads(capsys.readouterr().out)
    return found


DONE = {"skip": "skipped", "retry": "retried"}


@pytest.mark.parametrize("action", ["skip", "retry"])
def test_a_bad_key_among_several_changes_nothing_and_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], action: str
) -> None:
    url, opened, deposited = poisoned(tmp_path, monkeypatch, capsys)
    before = listed(url, capsys)

    assert run(["parked", action, opened, "nosuch", "also-not", "--store", url]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err == (
        "skyferry: error: no parked event 'nosuch', 'also-not' (see skyferry parked list) (KEY)\n"
        f"hint: nothing was {DONE[action]}: every KEY must name a parked event\n"
    )
    assert listed(url, capsys) == before  # the good key was neither released nor retried

    assert run(["parked", action, opened, deposited, opened, "--store", url]) == 0  # the handler is fixed by now
    outcome = "skipped" if action == "skip" else "applied"
    assert capsys.readouterr().out == f"{opened}: {outcome}\n{deposited}: {outcome}\n"  # each key once
    assert listed(url, capsys) == []


@pytest.mark.parametrize("command", [["list"], ["skip", "some/key"], ["retry", "some/key"]])
def test_a_store_that_does_not_exist_is_refused_not_created(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], command: list[str]
) -> None:
    typo = tmp_path / "typo.db"
    assert run(["parked", *command, "--store", f"sqlite:///{typo}"]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert f"SQLite file {typo} does not exist" in err
    assert "--store" in err
    assert not typo.exists()
    assert os.listdir(tmp_path) == []


def test_a_retry_the_store_refuses_is_failed_again_not_bad_input(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    url, opened, _ = poisoned(tmp_path, monkeypatch, capsys)
    [before] = [p for p in listed(url, capsys) if p["key"] == opened]
    commit = SQLiteViewStore.commit

    def refusing(self: SQLiteViewStore, projection: str, changes: Sequence[ViewChange], checkpoint: Any) -> None:
        """As PostgreSQL refuses a value it cannot hold (a NUL character in jsonb)."""
        if any(change.doc is not None and change.key == "poison" for change in changes):
            raise ValidationError(f"{url}: PostgreSQL rejected a value while committing views")
        commit(self, projection, changes, checkpoint)

    monkeypatch.setattr(SQLiteViewStore, "commit", refusing)  # the handler is fixed; the store refuses its output
    assert run(["parked", "retry", opened, "--store", url]) == 1
    out, err = capsys.readouterr()
    assert out.startswith(f"{opened}: failed again, still parked: ValidationError: ")
    assert "skyferry: error: 1 parked event failed again" in err
    [after] = [p for p in listed(url, capsys) if p["key"] == opened]
    assert after["attempts"] == int(str(before["attempts"])) + 1
    assert str(after["error"]).startswith("ValidationError: ")
