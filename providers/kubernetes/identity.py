"""The kubernetes target's identity and secrets: the credentials Secret the chart reads.

The app's identity is the chart's ServiceAccount (no token mounted), so
:func:`declare_identity` declares nothing and only names the Secret.  :func:`grant_access`
creates it, holding the store and broker URLs (with their passwords), the API token and the
in-chart PostgreSQL and NATS passwords, all secret; the release points ``existingSecret`` at it,
so the release values never hold a credential.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pulumi
import pulumi_kubernetes as k8s

from providers.base import Platform
from providers.kubernetes.archive import Archive
from providers.kubernetes.broker import Broker
from providers.kubernetes.config import KubernetesConfig
from providers.kubernetes.network import Network
from providers.kubernetes.store import Store


@dataclass(frozen=True)
class Identity:
    """The name of the Secret that holds the app's credentials."""

    secret_name: str


@dataclass(frozen=True)
class Access:
    """The credentials Secret (the release waits for it)."""

    credentials: k8s.core.v1.Secret


def declare_identity(platform: Platform[KubernetesConfig], network: Network) -> Identity:
    """Nothing to declare before the data (the chart's ServiceAccount is the app's identity): the Secret's name."""
    return Identity(secret_name=f"{platform.common.name}-credentials")


def grant_access(
    platform: Platform[KubernetesConfig],
    network: Network,
    identity: Identity,
    store: Store,
    broker: Broker,
    archive: Archive,
) -> Access:
    """The Secret ``<name>-credentials``: ``store-url``, ``broker-url``, ``api-token`` (and ``postgres-password``,
    ``nats-password``: what the in-chart servers let in)."""
    secret_data: dict[str, Any] = {
        "store-url": store.secret_url,
        "broker-url": broker.secret_url,
        "api-token": pulumi.Output.secret(platform.common.api_token.get_secret_value()),
    }
    if store.password:
        secret_data["postgres-password"] = pulumi.Output.secret(store.password)
    if broker.password:
        secret_data["nats-password"] = pulumi.Output.secret(broker.password)
    credentials = k8s.core.v1.Secret(
        f"{platform.common.name}-credentials",
        metadata={"name": identity.secret_name, "namespace": network.name, "labels": platform.tags()},
        type="Opaque",
        string_data=secret_data,
        opts=network.opts(platform),
    )
    return Access(credentials=credentials)
