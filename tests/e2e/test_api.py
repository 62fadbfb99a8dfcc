"""The HTTP API as a client drives it: commands, queries, and every bad input docs/api.md lists.

Each bad input gets a clear error naming what is wrong, and nothing is stored: the
event store's last position is the same before and after.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from skyferry.api.app import create_app
from skyferry.bootstrap import Ledger
from skyferry.core.errors import TransientError
from skyferry.core.messages import Event
from skyferry.core.projections import ViewBatch
from skyferry.migrate.fence import lift_fence, set_fence
from skyferry.settings import Settings
from tests.e2e.conftest import AUTH
from tests.threads import at_once

EUR = {"currency": "EUR"}


@pytest.fixture
def alice(client: TestClient) -> str:
    """An open account holding 100.00 EUR."""
    assert client.post("/accounts", json={"account_id": "alice", "owner": "Alice", **EUR}).status_code == 201
    assert client.post("/accounts/alice/deposits", json={"amount": "100.00", **EUR}).status_code == 201
    return "alice"


@pytest.fixture
def unchanged(ledger: Ledger, alice: str) -> Iterator[None]:
    """Asserts that the test stored no event."""
    before = ledger.events.last_position()
    yield
    assert ledger.events.last_position() == before, "a rejected request stored an event"


# --- commands and queries -----------------------------------------------------------------


def test_commands_answer_201_with_the_stored_events_and_an_etag(client: TestClient) -> None:
    opened = client.post("/accounts", json={"account_id": "bob", "owner": "Bob", **EUR})
    assert opened.status_code == 201
    assert opened.headers["ETag"] == '"1"'
    body = opened.json()
    assert (body["stream_id"], body["first_version"], body["last_version"], body["replayed"]) == (
        "account-bob",
        1,
        1,
        False,
    )
    assert body["events"][0]["type"] == "AccountOpened"
    deposited = client.post("/accounts/bob/deposits", json={"amount_minor": 1250, **EUR})
    assert deposited.status_code == 201
    assert deposited.json()["events"][0]["data"]["amount"] == "12.50"


def test_a_transfer_is_accepted_with_202_and_completed_by_the_worker(
    client: TestClient, ledger: Ledger, alice: str
) -> None:
    assert client.post("/accounts", json={"account_id": "bob", "owner": "Bob", **EUR}).status_code == 201
    accepted = client.post(
        "/transfers", json={"transfer_id": "t1", "from_account": alice, "to_account": "bob", "amount": "40.00", **EUR}
    )
    assert accepted.status_code == 202
    assert accepted.headers["Location"] == "/transfers/t1"
    ledger.run_worker_once()
    assert client.get("/transfers/t1").json()["status"] == "completed"
    assert client.get("/accounts/bob/balance").json()["balance"] == "40.00"
    assert client.get(f"/accounts/{alice}/balance").json()["balance"] == "60.00"


def test_queries_read_the_models_and_as_of_reads_the_past(client: TestClient, ledger: Ledger, alice: str) -> None:
    ledger.run_worker_once()
    moment = client.get(f"/accounts/{alice}").json()
    assert moment["balance"] == "100.00"
    history = client.get(f"/accounts/{alice}/history").json()
    assert [entry["version"] for entry in history] == [2, 1]
    first_event = ledger.events.read_stream("account-alice")[0]
    as_of = first_event.recorded_at.isoformat()
    past = client.get(f"/accounts/{alice}/balance", params={"as_of": as_of})
    assert past.status_code == 200
    assert past.json()["balance"] == "0.00"
    assert client.get(f"/accounts/{alice}", params={"at_version": 2}).json()["balance"] == "100.00"
    day = first_event.occurred_at.date().isoformat()
    totals = client.get(f"/daily-totals/{day}").json()
    assert totals[0]["deposited"] == "100.00"


def test_a_naive_as_of_is_refused(client: TestClient, alice: str) -> None:
    response = client.get(f"/accounts/{alice}/balance", params={"as_of": "2026-01-01T00:00:00"})
    assert response.status_code == 422
    assert "timezone" in response.json()["message"]


def test_a_stale_if_match_gets_409_with_the_actual_version(client: TestClient, alice: str, unchanged: None) -> None:
    response = client.post(f"/accounts/{alice}/deposits", json={"amount": "1.00", **EUR}, headers={"If-Match": '"1"'})
    assert response.status_code == 409
    assert response.json()["error"] == "version_conflict"
    assert response.json()["actual_version"] == 2


def test_a_repeated_idempotency_key_returns_the_first_result_and_stores_nothing(
    client: TestClient, ledger: Ledger, alice: str
) -> None:
    key = {"Idempotency-Key": "pay-42"}
    first = client.post(f"/accounts/{alice}/deposits", json={"amount": "5.00", **EUR}, headers=key)
    position = ledger.events.last_position()
    again = client.post(f"/accounts/{alice}/deposits", json={"amount": "5.00", **EUR}, headers=key)
    assert again.status_code == 201
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.json()["events"] == first.json()["events"]
    assert ledger.events.last_position() == position
    reused = client.post(f"/accounts/{alice}/deposits", json={"amount": "6.00", **EUR}, headers=key)
    assert reused.status_code == 422
    assert reused.json()["error"] == "idempotency_key_reused"
    assert ledger.events.last_position() == position


def test_concurrent_requests_with_one_key_and_other_bodies_get_422(
    client: TestClient, ledger: Ledger, alice: str
) -> None:
    key = {"Idempotency-Key": "race-1"}
    responses = at_once(
        20, lambda i: client.post(f"/accounts/{alice}/deposits", json={"amount": str(i + 1), **EUR}, headers=key)
    )
    statuses = sorted(r.status_code for r in responses)
    assert statuses == [201] + [422] * 19, [r.text for r in responses]
    assert {r.json()["error"] for r in responses if r.status_code == 422} == {"idempotency_key_reused"}
    stored = next(r for r in responses if r.status_code == 201)
    assert ledger.events.stream_version("account-alice") == 3
    retry = client.post(
        f"/accounts/{alice}/deposits", json={"amount": stored.json()["events"][0]["data"]["amount"], **EUR}, headers=key
    )
    assert (retry.status_code, retry.headers["Idempotent-Replayed"]) == (201, "true")


def test_one_key_for_deposits_to_ten_accounts_stores_one(client: TestClient, ledger: Ledger) -> None:
    for n in range(10):
        assert client.post("/accounts", json={"account_id": f"acc-{n}", "owner": "O", **EUR}).status_code == 201
    key = {"Idempotency-Key": "race-2"}
    responses = at_once(
        10, lambda i: client.post(f"/accounts/acc-{i}/deposits", json={"amount": "5.00", **EUR}, headers=key)
    )
    assert sorted(r.status_code for r in responses) == [201] + [422] * 9
    assert sum(ledger.events.stream_version(f"account-acc-{n}") for n in range(10)) == 11


def test_a_client_key_in_the_process_managers_namespace_is_refused(
    client: TestClient, ledger: Ledger, alice: str
) -> None:
    assert client.post("/accounts", json={"account_id": "bob", "owner": "Bob", **EUR}).status_code == 201
    started = client.post(
        "/transfers", json={"transfer_id": "t1", "from_account": alice, "to_account": "bob", "amount": "40.00", **EUR}
    ).json()["events"][0]["id"]
    crafted = {"Idempotency-Key": f"transfer-process:debit:{started}"}
    response = client.post(f"/accounts/{alice}/deposits", json={"amount": "1.00", **EUR}, headers=crafted)
    assert response.status_code == 422
    assert "reserved" in response.json()["message"]
    ledger.run_worker_once()
    assert client.get("/transfers/t1").json()["status"] == "completed"


def test_domain_rules_give_409_with_a_stable_code(client: TestClient, alice: str, unchanged: None) -> None:
    overdraft = client.post(f"/accounts/{alice}/withdrawals", json={"amount": "100.01", **EUR})
    assert overdraft.status_code == 409
    assert overdraft.json()["error"] == "insufficient_funds"
    other_currency = client.post(f"/accounts/{alice}/deposits", json={"amount": "1.00", "currency": "USD"})
    assert other_currency.status_code == 409
    assert other_currency.json()["error"] == "currency_mismatch"
    again = client.post("/accounts", json={"account_id": alice, "owner": "Alice", **EUR})
    assert again.status_code == 409
    assert again.json()["error"] == "account_already_exists"


def test_writes_are_refused_with_503_while_the_store_is_fenced_and_queries_still_work(
    client: TestClient, ledger: Ledger, alice: str
) -> None:
    set_fence(ledger.views, "migration cutover to postgresql://db.internal:5432/ledger?schema=tenant_a")
    position = ledger.events.last_position()
    refused = client.post(f"/accounts/{alice}/deposits", json={"amount": "1.00", **EUR})
    assert refused.status_code == 503
    assert refused.json()["error"] == "read_only"
    assert "migration cutover" in refused.json()["message"]
    assert "db.internal" not in refused.text  # it names no store
    assert "sqlite" not in refused.text
    assert refused.headers["Retry-After"]
    assert ledger.events.last_position() == position
    assert client.get(f"/accounts/{alice}").status_code == 200
    lift_fence(ledger.views)
    assert client.post(f"/accounts/{alice}/deposits", json={"amount": "1.00", **EUR}).status_code == 201


# --- bad input ----------------------------------------------------------------------------


def _errors(response: Any) -> dict[str, str]:
    return {e["field"]: e["reason"] for e in response.json()["errors"]}


def test_malformed_json_is_400_and_says_so(client: TestClient, alice: str, unchanged: None) -> None:
    response = client.post(
        f"/accounts/{alice}/deposits", content=b'{"amount": "1.00", ', headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 400
    assert response.json()["error"] == "malformed_json"
    assert "not valid JSON" in response.json()["message"]


@pytest.mark.parametrize(
    ("body", "said"),
    [
        (b'{"amount": "1.00", "currency": "EUR", "x": "\xff"}', "not valid UTF-8"),
        (b"[" * 1500 + b"]" * 1500, "depth limit"),
        (b'{"amount": NaN, "currency": "EUR"}', "line 1 column 12"),
        (b'{"amount": 1e400, "currency": "EUR"}', "infinity"),
        (b'{"amount": "1.00", "currency": "EUR", "x": "\\ud800"}', "surrogate"),
    ],
    ids=["bad-utf8", "too-deep", "nan", "out-of-range", "lone-surrogate"],
)
def test_json_the_parser_would_bend_is_400_malformed_json_naming_what(
    client: TestClient, alice: str, unchanged: None, body: bytes, said: str
) -> None:
    response = client.post(f"/accounts/{alice}/deposits", content=body, headers={"Content-Type": "application/json"})
    assert response.status_code == 400, response.text
    assert response.json()["error"] == "malformed_json"
    assert said in response.json()["message"]


def test_a_malformed_body_is_refused_by_a_route_that_takes_none(
    client: TestClient, alice: str, unchanged: None
) -> None:
    response = client.post(
        f"/accounts/{alice}/close", content=b"{not json at all", headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 400, response.text
    assert response.json()["error"] == "malformed_json"
    assert client.get(f"/accounts/{alice}").json()["status"] == "open"


def test_a_body_that_is_not_an_object_is_422(client: TestClient, alice: str, unchanged: None) -> None:
    response = client.post(f"/accounts/{alice}/deposits", json=["1.00", "EUR"])
    assert response.status_code == 422


@pytest.mark.parametrize("owner", ["A\u0000B", "A\tB", "A\nB", "A\u007fB", "A\u0085B"])
def test_an_owner_holding_a_control_character_is_422_naming_it(
    client: TestClient, alice: str, unchanged: None, owner: str
) -> None:
    response = client.post("/accounts", json={"account_id": "ctl", "owner": owner, **EUR})
    assert response.status_code == 422, response.text
    assert "control character" in _errors(response)["owner"]
    assert client.get("/accounts/ctl").status_code == 404


def test_an_owner_in_any_script_is_kept_as_given(client: TestClient) -> None:
    owner = "Zoë Ñúñez 王 \u00a0😀"
    assert client.post("/accounts", json={"account_id": "zoe", "owner": owner, **EUR}).status_code == 201
    assert client.get("/accounts/zoe").json()["owner"] == owner


def test_unknown_fields_are_named(client: TestClient, alice: str, unchanged: None) -> None:
    response = client.post(f"/accounts/{alice}/deposits", json={"amount": "1.00", "colour": "red", **EUR})
    assert response.status_code == 422
    assert _errors(response) == {"colour": "unknown field"}
    opened = client.post("/accounts", json={"account_id": "x1", "owner": "X", "admin": True, **EUR})
    assert _errors(opened) == {"admin": "unknown field"}


@pytest.mark.parametrize(
    ("amount", "reason"),
    [
        ("-5.00", "positive"),
        ("0", "positive"),
        ("0.00", "positive"),
        ("ten", "decimal"),
        ("1.001", "decimals"),
        (1.5, "decimal string"),
        (1.5, "with a fraction"),
        (True, "not true"),
        (False, "not false"),
        ("NaN", ""),
        ("1e400", ""),
    ],
)
def test_bad_amounts_are_422_naming_the_amount(
    client: TestClient, alice: str, unchanged: None, amount: Any, reason: str
) -> None:
    response = client.post(f"/accounts/{alice}/withdrawals", json={"amount": amount, **EUR})
    assert response.status_code == 422, response.text
    errors = _errors(response)
    assert "amount" in errors, errors
    assert reason.lower() in errors["amount"].lower()


@pytest.mark.parametrize(
    "amount", ["1e2", "+10", "1_000", "\uff11\uff10", "\u0661\u0660", "10.", ".5", " 10", "10 ", "0x10"]
)
def test_amounts_outside_the_documented_pattern_are_422(
    client: TestClient, alice: str, unchanged: None, amount: str
) -> None:
    response = client.post(f"/accounts/{alice}/deposits", json={"amount": amount, **EUR})
    assert response.status_code == 422, response.text
    assert "digits 0-9" in _errors(response)["amount"]


def test_the_documented_amount_pattern_is_the_one_enforced(client: TestClient) -> None:
    schema = client.get("/openapi.json").json()["components"]["schemas"]["Amount"]["properties"]["amount"]
    assert {"type": "string", "pattern": "^[0-9]+(\\.[0-9]+)?$"} in schema["anyOf"]


def test_an_unknown_currency_and_a_missing_field_are_named(client: TestClient, alice: str, unchanged: None) -> None:
    response = client.post(f"/accounts/{alice}/deposits", json={"amount": "1.00", "currency": "XYZ"})
    assert response.status_code == 422
    assert "currency" in _errors(response)
    missing = client.post(f"/accounts/{alice}/deposits", json={"amount": "1.00"})
    assert _errors(missing) == {"currency": "field required"}


def test_an_oversized_body_is_413_before_it_is_read(client: TestClient, alice: str, unchanged: None) -> None:
    body = b'{"amount": "1.00", "currency": "EUR", "pad": "' + b"x" * 5000 + b'"}'
    response = client.post(f"/accounts/{alice}/deposits", content=body, headers={"Content-Type": "application/json"})
    assert response.status_code == 413
    assert "4096 bytes" in response.json()["message"]


def test_an_oversized_streamed_body_is_413(client: TestClient, alice: str, unchanged: None) -> None:
    def chunks() -> Iterator[bytes]:
        yield b'{"amount": "1.00", "currency": "EUR", "pad": "'
        for _ in range(10):
            yield b"x" * 1000
        yield b'"}'

    response = client.post(
        f"/accounts/{alice}/deposits", content=chunks(), headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 413


def test_an_unknown_account_is_404(client: TestClient, alice: str, unchanged: None) -> None:
    response = client.post("/accounts/nobody/deposits", json={"amount": "1.00", **EUR})
    assert response.status_code == 404
    assert response.json()["error"] == "account_not_found"
    assert "nobody" in response.json()["message"]
    assert client.get("/accounts/nobody").status_code == 404
    assert client.get("/accounts/nobody/balance").status_code == 404
    assert client.get("/transfers/nothing").status_code == 404


@pytest.mark.parametrize("account_id", ["has space", "a" * 65, "semi;colon", "ünïcode-ok-but-not-here"])
def test_an_invalid_account_id_is_422_naming_it(
    client: TestClient, alice: str, unchanged: None, account_id: str
) -> None:
    response = client.post("/accounts", json={"account_id": account_id, "owner": "X", **EUR})
    assert response.status_code == 422
    assert "account_id" in _errors(response)
    in_path = client.post(f"/accounts/{account_id}/deposits", json={"amount": "1.00", **EUR})
    assert in_path.status_code in (404, 422)
    if in_path.status_code == 422:
        assert "account_id" in _errors(in_path)


def test_a_transfer_to_the_same_account_is_422(client: TestClient, alice: str, unchanged: None) -> None:
    response = client.post(
        "/transfers", json={"transfer_id": "t", "from_account": alice, "to_account": alice, "amount": "1.00", **EUR}
    )
    assert response.status_code == 422
    assert "must differ" in response.json()["message"]


@pytest.mark.parametrize("version", [2**63, 2**64, 10**30])
def test_a_version_beyond_64_bits_is_a_clear_422(client: TestClient, alice: str, unchanged: None, version: int) -> None:
    response = client.get(f"/accounts/{alice}", params={"at_version": version})
    assert response.status_code == 422
    assert response.json()["error"] == "invalid_input"
    assert "at_version must be from 1 to 9223372036854775807" in response.json()["message"]
    stale = client.post(
        f"/accounts/{alice}/deposits", json={"amount": "1.00", **EUR}, headers={"If-Match": str(version)}
    )
    assert stale.status_code == 422
    assert "expected_version" in stale.json()["message"]


def test_a_bad_if_match_is_422(client: TestClient, alice: str, unchanged: None) -> None:
    response = client.post(f"/accounts/{alice}/deposits", json={"amount": "1.00", **EUR}, headers={"If-Match": "x"})
    assert response.status_code == 422
    assert "If-Match" in response.json()["message"]


# --- authentication, health, metrics, OpenAPI ---------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [{"Authorization": ""}, {"Authorization": "Bearer wrong-token"}, {"Authorization": "Basic dXNlcjpwYXNz"}],
)
def test_a_missing_or_wrong_token_is_401_and_nothing_is_stored(
    client: TestClient, ledger: Ledger, alice: str, headers: dict[str, str]
) -> None:
    position = ledger.events.last_position()
    response = client.post(f"/accounts/{alice}/deposits", json={"amount": "1.00", **EUR}, headers=headers)
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert client.get(f"/accounts/{alice}", headers=headers).status_code == 401
    assert client.get("/metrics", headers=headers).status_code == 401
    assert client.get("/openapi.json", headers=headers).status_code == 401
    assert ledger.events.last_position() == position


def test_the_token_is_checked_before_the_body(client: TestClient, alice: str, unchanged: None) -> None:
    anonymous = {"Authorization": "", "Content-Type": "application/json"}
    malformed = client.post(f"/accounts/{alice}/deposits", content=b'{"amount": ', headers=anonymous)
    assert malformed.status_code == 401
    assert malformed.json()["error"] == "unauthorized"
    oversized = client.post(f"/accounts/{alice}/deposits", content=b"x" * 10_000, headers=anonymous)
    assert oversized.status_code == 401
    invalid = client.post("/accounts", json={"account_id": "has space"}, headers={"Authorization": "Bearer wrong"})
    assert invalid.status_code == 401
    assert client.get("/nowhere", headers={"Authorization": ""}).status_code == 401  # routes are not revealed


@pytest.mark.parametrize(
    ("content_type", "said"),
    [
        (None, "it is missing"),
        ("application/x-www-form-urlencoded", "not 'application/x-www-form-urlencoded'"),
        ("text/plain", "not 'text/plain'"),
    ],
)
def test_a_body_without_the_json_content_type_gets_a_message_naming_the_header(
    client: TestClient, ledger: Ledger, alice: str, content_type: str | None, said: str
) -> None:
    body = b'{"amount": "1.00", "currency": "EUR"}'
    headers = {"Content-Type": content_type} if content_type else {}  # no header at all for None
    response = client.post(f"/accounts/{alice}/deposits", content=body, headers=headers)
    assert ledger.events.stream_version("account-alice") == 2  # nothing stored
    assert response.status_code == 415
    assert response.json()["error"] == "unsupported_media_type"
    assert "Content-Type: application/json" in response.json()["message"]
    assert said in response.json()["message"]
    ok = client.post(
        f"/accounts/{alice}/deposits", content=body, headers={"Content-Type": "application/json; charset=utf-8"}
    )
    assert ok.status_code == 201


def test_an_unexpected_error_is_a_json_500_naming_no_detail(
    settings: Settings, ledger: Ledger, alice: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*_: object) -> dict[str, Any]:
        raise OverflowError("Python int too large to convert to SQLite INTEGER")

    monkeypatch.setattr(ledger, "account_state", broken)
    with TestClient(create_app(settings, ledger), headers=AUTH, raise_server_exceptions=False) as quiet:
        response = quiet.get(f"/accounts/{alice}")
    assert response.status_code == 500
    assert response.json() == {"error": "internal_error", "message": "internal error; see the server log"}


def test_health_needs_no_token(client: TestClient) -> None:
    anonymous = {"Authorization": ""}
    assert client.get("/healthz", headers=anonymous).json() == {"status": "ok", "detail": ""}
    assert client.get("/readyz", headers=anonymous).json()["status"] == "ready"


def test_metrics_count_requests_by_route_and_commands_by_outcome(client: TestClient, alice: str) -> None:
    client.post(f"/accounts/{alice}/withdrawals", json={"amount": "999.00", **EUR})
    text = client.get("/metrics", headers=AUTH).text
    assert (
        'skyferry_http_requests_total{method="POST",route="/accounts/{account_id}/deposits",status="201"} 1.0' in text
    )
    assert 'skyferry_commands_total{command="Withdraw",outcome="InsufficientFunds"} 1.0' in text


def test_openapi_lists_every_endpoint(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    for path in (
        "/accounts",
        "/accounts/{account_id}/deposits",
        "/accounts/{account_id}/withdrawals",
        "/accounts/{account_id}/close",
        "/transfers",
        "/accounts/{account_id}/balance",
        "/accounts/{account_id}/history",
        "/daily-totals/{day}",
        "/healthz",
        "/readyz",
        "/metrics",
    ):
        assert path in spec["paths"], path
    assert "HTTPBearer" in spec["components"]["securitySchemes"]


# --- readiness, runners, parked events ----------------------------------------------------------


def test_readyz_without_the_token_never_shows_the_store_error(
    client: TestClient, ledger: Ledger, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = 'connection to server at "db.internal" (10.0.0.5), port 5432 failed: schema "tenant_a"'

    def unreachable() -> str | None:
        raise TransientError(secret)

    monkeypatch.setattr(ledger.events, "last_position", unreachable)
    anonymous = client.get("/readyz", headers={"Authorization": ""})
    assert anonymous.status_code == 503
    assert anonymous.json() == {"status": "unavailable", "detail": ""}
    assert "db.internal" not in anonymous.text
    detailed = client.get("/readyz", headers=AUTH)
    assert detailed.status_code == 503
    assert secret in detailed.json()["detail"]


def test_readyz_with_the_token_and_metrics_show_each_runners_lag_and_parked_events(
    client: TestClient, ledger: Ledger, alice: str
) -> None:
    before = {r["name"]: r for r in client.get("/readyz", headers=AUTH).json()["runners"]}
    assert set(before) == {"transfer-process", "balances", "history", "daily_totals", "transfers"}
    assert before["balances"]["lag_seconds"] > 0  # alice's events wait for the worker
    assert client.get("/readyz", headers={"Authorization": ""}).json() == {"status": "ready", "detail": ""}
    projection = ledger.projections["history"]
    healthy = projection.apply

    def failing(event: Event, views: ViewBatch) -> None:
        if event.type == "MoneyDeposited":
            raise ValueError("history cannot take deposits today")
        healthy(event, views)

    projection.apply = failing  # type: ignore[method-assign]
    ledger.run_worker_once()  # tries the deposit 4 times in 1.4 s, parks it, goes on
    after = {r["name"]: r for r in client.get("/readyz", headers=AUTH).json()["runners"]}
    assert {name: (r["lag_seconds"], r["parked"]) for name, r in after.items()} == {
        "transfer-process": (0.0, 0),
        "balances": (0.0, 0),
        "history": (0.0, 1),
        "daily_totals": (0.0, 0),
        "transfers": (0.0, 0),
    }
    text = client.get("/metrics").text
    assert 'skyferry_parked_events{runner="history"} 1.0' in text
    assert 'skyferry_runner_lag_seconds{runner="balances"} 0.0' in text


def test_readyz_fails_while_the_in_process_worker_is_down(client: TestClient, ledger: Ledger) -> None:
    stop = threading.Event()
    stop.set()  # the worker thread ends at once: gone, which readiness must say
    thread = ledger.start_worker(stop)
    thread.join(timeout=30)
    response = client.get("/readyz", headers=AUTH)
    assert response.status_code == 503
    assert "the worker is down" in response.json()["detail"]
    assert response.json()["worker"]["up"] is False
    assert client.get("/readyz", headers={"Authorization": ""}).json() == {"status": "unavailable", "detail": ""}
    assert "skyferry_worker_up 0.0" in client.get("/metrics").text
