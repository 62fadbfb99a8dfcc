"""Drive the deployed app end to end through its API, as a client would.

A transfer needs every part: the API stores the commands, the worker relays the events to
the broker, the transfer process manager debits and credits the accounts, and the
projections fill the read models the API then serves.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import httpx


@dataclass
class Drive:
    """What one end-to-end run did and saw."""

    accounts: tuple[str, str]
    transfer: str
    balances: dict[str, str] = field(default_factory=dict)
    transfer_status: str = ""
    history: int = 0
    daily_totals: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0


def _wait(client: httpx.Client, path: str, done: Any, timeout: float, abort: Callable[[], str]) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    response = client.get(path)
    while not (response.status_code == 200 and done(response.json())):
        reason = abort()
        if reason:
            raise AssertionError(f"GET {path}: given up: {reason}")
        if time.monotonic() > deadline:
            raise AssertionError(
                f"GET {path} did not reach the expected state in {timeout:.0f} s: "
                f"{response.status_code} {response.text[:300]}"
            )
        time.sleep(0.1)
        response = client.get(path)
    body: dict[str, Any] = response.json()
    return body


def _never() -> str:
    return ""


def drive(base_url: str, token: str, timeout: float = 90.0, abort: Callable[[], str] = _never) -> Drive:
    """Open two accounts, deposit, transfer, and wait for the read models to show it all.

    ``abort`` is asked while waiting: a non-empty answer (the worker died, a consumer has no
    subscription) ends the wait at once with that reason.
    """
    run = uuid.uuid4().hex[:8]
    first, second, transfer = f"a-{run}", f"b-{run}", f"t-{run}"
    started = time.monotonic()
    headers = {"Authorization": f"Bearer {token}"}
    with httpx.Client(base_url=base_url, headers=headers, timeout=30) as client:
        for account, owner in ((first, "Ada"), (second, "Grace")):
            response = client.post("/accounts", json={"account_id": account, "owner": owner, "currency": "EUR"})
            assert response.status_code == 201, response.text
        response = client.post(f"/accounts/{first}/deposits", json={"amount": "100.00", "currency": "EUR"})
        assert response.status_code == 201, response.text
        response = client.post(
            "/transfers",
            json={
                "transfer_id": transfer,
                "from_account": first,
                "to_account": second,
                "amount": "30.00",
                "currency": "EUR",
            },
        )
        assert response.status_code == 202, response.text
        status = _wait(client, f"/transfers/{transfer}", lambda b: b.get("status") == "completed", timeout, abort)
        result = Drive(accounts=(first, second), transfer=transfer, transfer_status=status["status"])
        for account, expected in ((first, "70.00"), (second, "30.00")):
            balance = _wait(
                client, f"/accounts/{account}/balance", lambda b, e=expected: b.get("balance") == e, timeout, abort
            )
            result.balances[account] = balance["balance"]
        history = client.get(f"/accounts/{first}/history")
        assert history.status_code == 200, history.text
        result.history = len(history.json())
        today = datetime.now(UTC).date().isoformat()
        totals = client.get(f"/daily-totals/{today}")
        assert totals.status_code == 200, totals.text
        result.daily_totals = totals.json()
    result.seconds = time.monotonic() - started
    return result
