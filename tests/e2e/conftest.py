"""Fixtures of the end-to-end tests: a ledger on a fresh SQLite file and the API over it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr

from skyferry.api.app import create_app
from skyferry.bootstrap import Ledger, bootstrap
from skyferry.settings import Settings

TOKEN = "e2e-token-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
def store_url(tmp_path: Path) -> str:
    """A fresh SQLite file per test."""
    return f"sqlite:///{tmp_path}/e2e.db"


@pytest.fixture
def ledger(store_url: str) -> Iterator[Ledger]:
    """The ledger on that file with a private in-process broker."""
    opened = bootstrap(Settings(store_url=store_url, broker_url="memory://"))
    try:
        yield opened
    finally:
        opened.close()


@pytest.fixture
def settings(store_url: str) -> Settings:
    """Settings with the test token and a small body limit (4 KiB)."""
    return Settings(api_token=SecretStr(TOKEN), store_url=store_url, max_body_bytes=4096)


@pytest.fixture
def client(settings: Settings, ledger: Ledger) -> Iterator[TestClient]:
    """An HTTP client of the API, authorized by default."""
    with TestClient(create_app(settings, ledger), headers=AUTH) as test_client:
        yield test_client
