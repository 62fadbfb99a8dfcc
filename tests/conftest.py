"""Session-wide test wiring: the service finalizers (emulators are stopped by PID at the end)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests import services


@pytest.fixture(scope="session", autouse=True)
def _stop_services_at_session_end() -> Iterator[None]:
    yield
    services.stop_all()
