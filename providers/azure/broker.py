"""The azure target's broker: a Service Bus namespace and topic, and a session subscription per consumer group.

Duplicate detection on the topic (its window from :mod:`skyferry.adapters.brokers.servicebus`),
local auth disabled, the groups the app's (``skyferry.ledger.CONSUMER_GROUPS``), the delivery
backstop one more than the app's own dead-lettering (``skyferry.ledger.MAX_DELIVERIES``).

On Premium the namespace's public access is off, so the apps reach it through a private
endpoint on the VNet (group id ``namespace``, DNS zone ``privatelink.servicebus.windows.net``);
Standard has no network isolation (access by RBAC only) and no private endpoints.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

import pulumi
from pulumi_azure_native import servicebus

from providers.azure.config import AzureConfig
from providers.azure.network import Network, private_endpoint
from providers.base import Platform
from skyferry.adapters.brokers import servicebus as servicebus_adapter
from skyferry.ledger import CONSUMER_GROUPS, MAX_DELIVERIES

if TYPE_CHECKING:
    from providers.azure.identity import Identity

TOPIC: Final = "skyferry-events"
TOPIC_MAX_MEGABYTES: Final = 5120
"""The topic's size quota: the largest of the Standard tier (5 GB; Premium allows more)."""


@dataclass(frozen=True)
class Broker:
    """The namespace and topic, and the app's ``servicebus://`` URL."""

    namespace: servicebus.Namespace
    topic: servicebus.Topic
    url: pulumi.Output[str]


def declare_broker(platform: Platform[AzureConfig], network: Network, identity: Identity) -> Broker:
    """The namespace (Premium: private, on a private endpoint), the topic, a session subscription per group."""
    premium = platform.section.service_bus_sku == "Premium"
    retention = f"P{platform.common.broker_retention_days}D"
    namespace = servicebus.Namespace(
        f"{platform.common.name}-sb",
        namespace_name=f"sb-{network.compact}",
        resource_group_name=network.group.name,
        location=network.location,
        sku={
            "name": platform.section.service_bus_sku,
            "tier": platform.section.service_bus_sku,
            **({"capacity": 1} if premium else {}),
        },
        disable_local_auth=True,
        minimum_tls_version="1.2",
        public_network_access="Disabled" if premium else "Enabled",
        tags=platform.tags(),
        opts=platform.child_opts(),
    )
    if premium:
        # public access off: the apps on the VNet reach the namespace through this endpoint only
        private_endpoint(platform, network, namespace, "namespace")
    topic = servicebus.Topic(
        f"{platform.common.name}-topic",
        namespace_name=namespace.name,
        resource_group_name=network.group.name,
        topic_name=TOPIC,
        requires_duplicate_detection=True,
        duplicate_detection_history_time_window=servicebus_adapter.DUPLICATE_DETECTION_WINDOW,
        support_ordering=True,
        max_message_size_in_kilobytes=1024 if premium else None,
        # bounded: unconsumed events expire (the store keeps them), and the topic never
        # grows past what its tier allows before it refuses sends
        max_size_in_megabytes=TOPIC_MAX_MEGABYTES,
        default_message_time_to_live=retention,
        opts=platform.child_opts(),
    )
    for consumer_group in CONSUMER_GROUPS:
        servicebus.Subscription(
            f"{platform.common.name}-sub-{consumer_group}",
            namespace_name=namespace.name,
            resource_group_name=network.group.name,
            topic_name=topic.name,
            subscription_name=consumer_group,
            requires_session=True,
            # the backstop for a consumer that crashes on a message: one delivery after the
            # app's own dead-lettering (skyferry.ledger.MAX_DELIVERIES)
            max_delivery_count=MAX_DELIVERIES + 1,
            default_message_time_to_live=retention,
            # an expired event is dropped, not moved to the dead-letter queue (which counts
            # towards the topic's size and nobody reads): the store keeps every event
            dead_lettering_on_message_expiration=False,
            dead_lettering_on_filter_evaluation_exceptions=True,
            lock_duration="PT1M",
            opts=platform.child_opts(),
        )
    url = pulumi.Output.concat("servicebus://", namespace.name, "/", topic.name)
    return Broker(namespace=namespace, topic=topic, url=url)
