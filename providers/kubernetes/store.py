"""The kubernetes target's event and view store: PostgreSQL, the chart's StatefulSet or an external server.

Nothing is declared here: the chart runs the in-chart PostgreSQL.  The app's URL carries
the password (it goes into the credentials Secret); the output's does not.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import quote

import pulumi

from providers.base import Platform
from providers.kubernetes.config import KubernetesConfig
from providers.kubernetes.network import Network

if TYPE_CHECKING:
    from providers.kubernetes.identity import Identity

POSTGRES_PORT = 5432


@dataclass(frozen=True)
class Store:
    """The store's URL without its password (the output), the app's with it (a secret), and the password."""

    url: str
    secret_url: pulumi.Output[str]
    password: str


def declare_store(platform: Platform[KubernetesConfig], network: Network, identity: Identity) -> Store:
    """The ``postgresql://`` URLs of the in-chart server (user ``skyferry``) or of the external one."""
    section = platform.section
    if section.postgres == "in-chart":
        database_password = platform.common.database_password
        host = f"{platform.common.name}-postgresql.{network.svc}:{POSTGRES_PORT}"
        password = database_password.get_secret_value() if database_password else ""
        # percent-encoded: a password may hold @ / # % ? and still be one URL field
        secret_url = pulumi.Output.secret(f"postgresql://skyferry:{quote(password, safe='')}@{host}/skyferry")
        return Store(url=f"postgresql://skyferry@{host}/skyferry", secret_url=secret_url, password=password)
    external = section.external_store_url.get_secret_value() if section.external_store_url else ""
    return Store(url=_without_password(external), secret_url=pulumi.Output.secret(external), password="")


def _without_password(url: str) -> str:
    """``url`` with the password removed from its user info (outputs never carry credentials)."""
    scheme, sep, rest = url.partition("://")
    if not sep or "@" not in rest.split("/", 1)[0]:
        return url
    userinfo, _, hostpart = rest.partition("@")
    return f"{scheme}://{userinfo.split(':', 1)[0]}@{hostpart}"
