"""The app container's ``SKYFERRY_*`` environment, built in one place from ``skyferry.settings``.

Every target gives its api and worker containers the same settings: the store, broker and
archive URLs, the API token (the api only, from the target's secret store), where ``serve``
binds (the api), and the worker's heartbeat file (and, where probes are HTTP only, its
health port).  :func:`api_environment` and :func:`worker_environment` build them, each name
derived from a field of :class:`skyferry.settings.Settings` (:func:`variable` refuses a
name the model lacks), so no target spells a variable, and a renamed setting fails here.

A target renders a :class:`ContainerEnvironment` in its own form (an ECS container
definition, a Container App's ``env``, a Cloud Run container's ``envs``): the URLs first,
then the process's own settings, and the secret as its platform references one.  The Helm
chart sets the same variables from its templates; ``tests/infra/test_environment.py`` checks
them against :data:`PLATFORM_SETTINGS` and the names these functions produce.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Generic, TypeVar

from skyferry.settings import Settings

PREFIX: Final = str(Settings.model_config.get("env_prefix", ""))
"""The prefix of every setting's variable (``SKYFERRY_``)."""

LISTEN_HOST: Final = "0.0.0.0"
"""Where ``serve`` binds in a container: every interface, so the platform's traffic reaches it."""

WORKER_HEARTBEAT_FILE: Final = "/tmp/skyferry-worker.heartbeat"  # noqa: S108 (the container's own /tmp)
"""The file the worker touches while it makes progress (``skyferry alive`` reads its age)."""

#: The settings a deployment may set, by field name; every other field keeps its default.
#: (``log_level`` is the chart's value ``config.logLevel``; the cloud targets keep the default.)
PLATFORM_SETTINGS: Final = (
    "store_url",
    "broker_url",
    "archive_url",
    "api_token",
    "host",
    "port",
    "heartbeat_file",
    "health_port",
    "log_level",
)

V = TypeVar("V")


def variable(field: str) -> str:
    """The environment variable of the settings field ``field`` (``store_url`` → ``SKYFERRY_STORE_URL``).

    Raises ``KeyError`` when :class:`skyferry.settings.Settings` has no such field.
    """
    if field not in Settings.model_fields:
        raise KeyError(f"skyferry.settings.Settings has no field {field!r}")
    return f"{PREFIX}{field.upper()}"


@dataclass(frozen=True)
class AppUrls(Generic[V]):
    """Where the app's data lives: its store, broker and archive URLs (values or Pulumi outputs)."""

    store: V
    broker: V
    archive: V


@dataclass(frozen=True)
class ContainerEnvironment(Generic[V]):
    """One container's ``SKYFERRY_*`` variables, in the order every target renders them.

    - ``urls``: the store, broker and archive URLs, in that order;
    - ``process``: the process's own settings (the api's bind address and port; the worker's
      heartbeat file and health port);
    - ``secret``: the variable the platform fills from its secret store (the api's token),
      or ``None`` (the worker never sees the token).
    """

    urls: dict[str, V]
    process: dict[str, str]
    secret: str | None

    def names(self) -> list[str]:
        """Every variable this environment sets (the secret's included)."""
        return [*self.urls, *self.process, *([self.secret] if self.secret else [])]


def _urls(urls: AppUrls[V]) -> dict[str, V]:
    return {
        variable("store_url"): urls.store,
        variable("broker_url"): urls.broker,
        variable("archive_url"): urls.archive,
    }


def api_environment(urls: AppUrls[V], *, port: int) -> ContainerEnvironment[V]:
    """The api's environment: the URLs, ``serve`` on every interface at ``port``, the token as a secret."""
    return ContainerEnvironment(
        urls=_urls(urls),
        process={variable("host"): LISTEN_HOST, variable("port"): str(port)},
        secret=variable("api_token"),
    )


def worker_environment(urls: AppUrls[V], *, health_port: int | None = None) -> ContainerEnvironment[V]:
    """The worker's environment: the URLs, its heartbeat file, and its health port when probes are HTTP."""
    process = {variable("heartbeat_file"): WORKER_HEARTBEAT_FILE}
    if health_port is not None:
        process[variable("health_port")] = str(health_port)
    return ContainerEnvironment(urls=_urls(urls), process=process, secret=None)
