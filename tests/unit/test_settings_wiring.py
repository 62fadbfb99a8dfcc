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


@pytest.mark.parametrize(
    ("variable", "value", "said"),
    [
        ("SKYFERRY_STORE_URL", "", "must not be empty"),
        ("SKYFERRY_BROKER_URL", "", "must not be empty"),
        ("SKYFERRY_HOST", "", "must not be empty"),
        ("SKYFERRY_WORKER_INTERVAL", "inf", "finite"),
        ("SKYFERRY_WORKER_MAX_IDLE", "1e400", "finite"),
        ("SKYFERRY_HEALTH_MAX_AGE", "nan", "finite"),
        ("SKYFERRY_HEALTH_MAX_AGE", "86401", "less than or equal to 86400"),
    ],
)
def test_an_empty_or_endless_setting_is_refused_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, said: str
) -> None:
    """An empty variable is a mistake (a shell's unset one), never "the default" nor "every
    interface"; a wait without end never ends."""
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigurationError, match=f"{variable}: .*{said}"):
        load_settings()
