"""The gcp target's broker: the Pub/Sub topic, and per consumer group an ordered subscription and a dead-letter topic.

The subscription and dead-letter names and the ack deadline come from
:mod:`skyferry.adapters.brokers.pubsub`; the groups are the app's
(``skyferry.ledger.CONSUMER_GROUPS``) and the server-side delivery limit derives from the
deliveries the app subscribes with (``skyferry.ledger.MAX_DELIVERIES``).  Every topic is
encrypted with the target's CMEK key; what no consumer took expires after the retention.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import pulumi
import pulumi_gcp as gcp

from providers.base import Platform
from providers.gcp.config import GcpConfig
from providers.gcp.network import Network
from skyferry.adapters.brokers import pubsub as pubsub_adapter
from skyferry.ledger import CONSUMER_GROUPS, MAX_DELIVERIES

if TYPE_CHECKING:
    from providers.gcp.identity import Identity

TOPIC_ID = "events"


def broker_url(project: str, topic: str) -> str:
    """The app's ``pubsub://`` URL."""
    return f"pubsub://{project}/{topic}"


@dataclass(frozen=True)
class Group:
    """One consumer group's subscription, and its dead-letter topic and subscription."""

    subscription: gcp.pubsub.Subscription
    dead_topic: gcp.pubsub.Topic
    dead_subscription: gcp.pubsub.Subscription


@dataclass(frozen=True)
class Broker:
    """The topic, each consumer group's subscriptions, and the app's ``pubsub://`` URL."""

    topic: gcp.pubsub.Topic
    groups: dict[str, Group]
    url: pulumi.Output[str]


def declare_broker(platform: Platform[GcpConfig], network: Network, identity: Identity) -> Broker:
    """The topic; per group an ordered subscription with a retry policy, and its dead-letter topic and subscription."""
    name = platform.common.name
    project = network.project
    key_name = identity.key_name
    waits = [*network.apis, *identity.key_grants]
    # bounded: what no consumer took expires (the store keeps every event)
    retention = f"{platform.common.broker_retention_days * 24 * 3600}s"
    topic = gcp.pubsub.Topic(
        f"{name}-events",
        project=project,
        name=TOPIC_ID,
        kms_key_name=key_name,
        message_retention_duration=retention,
        labels=platform.tags(),
        opts=platform.child_opts(depends_on=waits),
    )
    groups: dict[str, Group] = {}
    for group in CONSUMER_GROUPS:
        dead_id = pubsub_adapter.dead_letter_topic_id(TOPIC_ID, group)
        dead_topic = gcp.pubsub.Topic(
            f"{name}-{group}-dead-letter",
            project=project,
            name=dead_id,
            kms_key_name=key_name,
            message_retention_duration=retention,
            labels=platform.tags(),
            opts=platform.child_opts(depends_on=waits),
        )
        dead_subscription = gcp.pubsub.Subscription(
            f"{name}-{group}-dead-letter",
            project=project,
            name=dead_id,
            topic=dead_topic.id,
            ack_deadline_seconds=pubsub_adapter.ACK_DEADLINE_SECONDS,
            message_retention_duration=retention,
            expiration_policy={"ttl": ""},
            labels=platform.tags(),
            opts=platform.child_opts(),
        )
        subscription = gcp.pubsub.Subscription(
            f"{name}-{group}",
            project=project,
            name=pubsub_adapter.subscription_id(TOPIC_ID, group),
            topic=topic.id,
            enable_message_ordering=True,
            ack_deadline_seconds=pubsub_adapter.ACK_DEADLINE_SECONDS,
            message_retention_duration=retention,
            expiration_policy={"ttl": ""},
            dead_letter_policy={
                "dead_letter_topic": dead_topic.id,
                "max_delivery_attempts": pubsub_adapter.server_delivery_attempts(MAX_DELIVERIES),
            },
            retry_policy={"minimum_backoff": "1s", "maximum_backoff": "60s"},
            labels=platform.tags(),
            opts=platform.child_opts(),
        )
        groups[group] = Group(subscription=subscription, dead_topic=dead_topic, dead_subscription=dead_subscription)
    return Broker(topic=topic, groups=groups, url=topic.name.apply(lambda t: broker_url(project, t)))
