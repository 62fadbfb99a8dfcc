"""Settings reach the ledger through the one composition root (``bootstrap``)."""

from __future__ import annotations

import pytest

from skyferry.bootstrap import bootstrap
from skyferry.core.errors import ConfigurationError
from skyferry.settings import load_settings


@pytest.mark.parametrize("source", ["store", "broker"])
def test_projections_source_and_message_mode_reach_the_ledger(source: str) -> None:
    settings = load_settings(
        store_url="memory://", broker_url="memory://", projections_from=source, message_mode="thin"
    )
    ledger = bootstrap(settings)
    try:
        assert ledger.projections_from == source
        assert ledger.relay.mode == "thin"
        assert ledger.events.url.startswith("memory:")
    finally:
        ledger.close()


def test_an_unknown_projection_source_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SKYFERRY_PROJECTIONS_FROM", "kafka")
    with pytest.raises(ConfigurationError, match="SKYFERRY_PROJECTIONS_FROM"):
        load_settings()
