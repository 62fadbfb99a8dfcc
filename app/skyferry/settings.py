"""The one settings model of skyferry: every field is an environment variable ``SKYFERRY_<NAME>``.

=========================  ==========================  ===============================================
variable                   default                     meaning
=========================  ==========================  ===============================================
SKYFERRY_STORE_URL         ``sqlite:///skyferry.db``   event store + view store (URLs: README.md)
SKYFERRY_BROKER_URL        ``memory://``               broker
SKYFERRY_ARCHIVE_URL       ``./exports``               where ``export`` writes without ``--to`` (a new
                                                       ``export-<UTC time>`` under it)
SKYFERRY_API_TOKEN         (none; required by serve)   bearer token of every endpoint but health
SKYFERRY_SNAPSHOT_EVERY    ``100``                     snapshot an aggregate every N events (0: never)
SKYFERRY_MESSAGE_MODE      ``full``                    ``full`` (event-carried state) or ``thin``
SKYFERRY_MAX_BODY_BYTES    ``65536``                   larger request bodies get 413
SKYFERRY_HOST              ``127.0.0.1``               address ``serve`` binds
SKYFERRY_PORT              ``8000``                    port ``serve`` binds
SKYFERRY_WORKER_INTERVAL   ``0.2``                     seconds a worker sleeps when caught up
SKYFERRY_WORKER_MAX_IDLE   ``2.0``                     the most it sleeps while it stays idle (the
                                                       sleep doubles from the interval: fewer
                                                       reads of an idle cloud store)
SKYFERRY_PROJECTIONS_FROM  ``store``                   read models fed from ``store`` (read_all) or
                                                       ``broker`` (switching needs a rebuild)
SKYFERRY_LOG_LEVEL         ``info``                    Python logging level
SKYFERRY_HEARTBEAT_FILE    (none: no heartbeat)        a file the worker touches while it makes
                                                       progress, for ``skyferry alive``
SKYFERRY_HEALTH_PORT       (none: no endpoint)         port where the worker serves ``GET /healthz``
                                                       from its heartbeat (HTTP-only probes)
SKYFERRY_HEALTH_MAX_AGE    ``120``                     seconds of heartbeat age that still count
                                                       as alive on that endpoint
=========================  ==========================  ===============================================

A bad value is refused naming its variable: an empty URL or host (an unset shell variable is
not "the default", nor "every interface"), a number out of its range, and a wait that would
never end (``inf``, ``nan``; the intervals at most an hour, the heartbeat age a day).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from skyferry.core.errors import ConfigurationError

ProjectionsFrom = Literal["store", "broker"]
"""Where the worker's process manager and read models take events from: ``read_all``, or the broker."""


class Settings(BaseSettings):
    """Runtime configuration, read from ``SKYFERRY_*`` environment variables (and keyword overrides)."""

    model_config = SettingsConfigDict(env_prefix="SKYFERRY_", extra="ignore", frozen=True)

    store_url: str = "sqlite:///skyferry.db"
    broker_url: str = "memory://"
    archive_url: str = "./exports"
    api_token: SecretStr | None = None
    snapshot_every: int = Field(default=100, ge=0)
    message_mode: Literal["full", "thin"] = "full"
    max_body_bytes: int = Field(default=64 * 1024, ge=1024)
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    worker_interval: float = Field(default=0.2, gt=0, le=3600, allow_inf_nan=False)
    worker_max_idle: float = Field(default=2.0, gt=0, le=3600, allow_inf_nan=False)
    projections_from: ProjectionsFrom = "store"
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    heartbeat_file: str | None = None
    health_port: int | None = Field(default=None, ge=0, le=65535)
    health_max_age: float = Field(default=120, gt=0, le=86_400, allow_inf_nan=False)

    @field_validator("store_url", "broker_url", "host")
    @classmethod
    def _not_empty(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must not be empty")
        return value

    @field_validator("log_level", mode="before")
    @classmethod
    def _lower(cls, value: object) -> object:
        return value.lower() if isinstance(value, str) else value

    def require_token(self) -> str:
        """The API token; a ``ConfigurationError`` naming the variable when it is unset or too short."""
        token = self.api_token.get_secret_value() if self.api_token is not None else ""
        if len(token) < 16:
            raise ConfigurationError(
                "SKYFERRY_API_TOKEN must be set to a secret of at least 16 characters to serve the API"
            )
        return token


def load_settings(**overrides: object) -> Settings:
    """Read the settings from the environment; a bad value is a ``ConfigurationError`` naming it."""
    from pydantic import ValidationError as PydanticValidationError

    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except PydanticValidationError as e:
        problems = "; ".join(
            f"SKYFERRY_{'_'.join(str(p) for p in err['loc']).upper()}: {err['msg']}" for err in e.errors()
        )
        raise ConfigurationError(f"bad settings: {problems}") from e
