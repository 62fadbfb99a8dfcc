"""The kubernetes target's broker: NATS JetStream, the chart's StatefulSet or an external server.

Nothing is declared here: the chart runs the in-chart NATS.  The in-chart stream is bounded:
it keeps ``brokerRetentionDays`` and at most 80 % of its volume, the oldest messages dropped
first, so JetStream never fills up and refuses the relay.  The in-chart server lets in only
its user (``skyferry``) with ``natsPassword``: the app's URL carries both (it goes into the
credentials Secret, with the password the server reads); the output's carries the user only.
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

NATS_PORT = 4222
STREAM = "skyferry"
#: The in-chart server's one user (the chart's ``nats.username`` default).
NATS_USER = "skyferry"


@dataclass(frozen=True)
class Broker:
    """The broker's URL without its password (the output), the app's with it (a secret), and the password."""

    url: str
    secret_url: pulumi.Output[str]
    password: str


def declare_broker(platform: Platform[KubernetesConfig], network: Network, identity: Identity) -> Broker:
    """The ``nats://`` URLs of the in-chart server's bounded stream (user ``skyferry``), or the external one."""
    section = platform.section
    if section.nats != "in-chart":
        external = str(section.external_broker_url)
        return Broker(url=external, secret_url=pulumi.Output.secret(external), password="")
    max_age = platform.common.broker_retention_days * 24 * 3600
    max_bytes = section.nats_storage_gib * 2**30 * 4 // 5
    password = section.nats_password.get_secret_value() if section.nats_password else ""
    host = f"{platform.common.name}-nats.{network.svc}:{NATS_PORT}"
    stream = f"{STREAM}?max_age={max_age}&max_bytes={max_bytes}"
    # percent-encoded: the URL stays one URL whatever the password (the config checks its shape too)
    secret_url = pulumi.Output.secret(f"nats://{NATS_USER}:{quote(password, safe='')}@{host}/{stream}")
    return Broker(url=f"nats://{NATS_USER}@{host}/{stream}", secret_url=secret_url, password=password)
