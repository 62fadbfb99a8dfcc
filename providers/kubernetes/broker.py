"""The kubernetes target's broker: NATS JetStream, the chart's StatefulSet or an external server.

Nothing is declared here: the chart runs the in-chart NATS.  The in-chart stream is bounded:
it keeps ``brokerRetentionDays`` and at most 80 % of its volume, the oldest messages dropped
first, so JetStream never fills up and refuses the relay.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from providers.base import Platform
from providers.kubernetes.config import KubernetesConfig
from providers.kubernetes.network import Network

if TYPE_CHECKING:
    from providers.kubernetes.identity import Identity

NATS_PORT = 4222
STREAM = "skyferry"


@dataclass(frozen=True)
class Broker:
    """The app's ``nats://`` URL (it holds no credential)."""

    url: str


def declare_broker(platform: Platform[KubernetesConfig], network: Network, identity: Identity) -> Broker:
    """The URL of the in-chart server's bounded stream, or the external one."""
    section = platform.section
    if section.nats != "in-chart":
        return Broker(url=str(section.external_broker_url))
    max_age = platform.common.broker_retention_days * 24 * 3600
    max_bytes = section.nats_storage_gib * 2**30 * 4 // 5
    return Broker(
        url=f"nats://{platform.common.name}-nats.{network.svc}:{NATS_PORT}/{STREAM}?max_age={max_age}&max_bytes={max_bytes}"
    )
