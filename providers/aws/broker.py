"""The aws target's broker: an SNS FIFO topic, and per consumer group an SQS FIFO queue and its dead-letter queue.

The topic and queue names come from :mod:`skyferry.adapters.brokers.sns_sqs`; the groups are
the app's (``skyferry.ledger.CONSUMER_GROUPS``) and the redrive backstop derives from the
deliveries the app subscribes with (``skyferry.ledger.MAX_DELIVERIES``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING

import pulumi
import pulumi_aws as aws

from providers.aws.config import AwsConfig
from providers.aws.network import Network, account_of
from providers.base import Platform
from skyferry.adapters.brokers import sns_sqs
from skyferry.ledger import CONSUMER_GROUPS, MAX_DELIVERIES

if TYPE_CHECKING:
    from providers.aws.identity import Identity


@dataclass(frozen=True)
class Broker:
    """The topic, each group's (queue, dead-letter queue), and the app's ``sns+sqs://`` URL."""

    topic: aws.sns.Topic
    queues: dict[str, tuple[aws.sqs.Queue, aws.sqs.Queue]]
    url: pulumi.Output[str]


def declare_broker(platform: Platform[AwsConfig], network: Network, identity: Identity) -> Broker:
    """The topic; per group a queue subscribed to it (raw delivery), its dead-letter queue and policy."""
    name = platform.common.name
    key = identity.key
    topic_name = sns_sqs.topic_name(f"{name}-events")
    topic = aws.sns.Topic(
        f"{name}-events",
        name=topic_name,
        fifo_topic=True,
        content_based_deduplication=False,
        kms_master_key_id=key.arn,
        tags=platform.tags(),
        opts=platform.child_opts(),
    )
    queues: dict[str, tuple[aws.sqs.Queue, aws.sqs.Queue]] = {}
    for group in CONSUMER_GROUPS:
        queue_name, dead_name = sns_sqs.queue_names(topic_name, group)
        dead = aws.sqs.Queue(
            f"{name}-{group}-dlq",
            name=dead_name,
            fifo_queue=True,
            content_based_deduplication=False,
            message_retention_seconds=14 * 24 * 3600,
            kms_master_key_id=key.arn,
            tags=platform.tags(),
            opts=platform.child_opts(),
        )
        queue = aws.sqs.Queue(
            f"{name}-{group}",
            name=queue_name,
            fifo_queue=True,
            content_based_deduplication=False,
            deduplication_scope="messageGroup",
            fifo_throughput_limit="perMessageGroupId",
            visibility_timeout_seconds=60,
            message_retention_seconds=platform.common.broker_retention_days * 24 * 3600,
            kms_master_key_id=key.arn,
            redrive_policy=dead.arn.apply(
                lambda arn: json.dumps(
                    {
                        "deadLetterTargetArn": arn,
                        "maxReceiveCount": sns_sqs.redrive_receive_count(MAX_DELIVERIES),
                    }
                )
            ),
            tags=platform.tags(),
            opts=platform.child_opts(),
        )
        aws.sqs.QueuePolicy(
            f"{name}-{group}",
            queue_url=queue.url,
            policy=pulumi.Output.all(queue.arn, topic.arn).apply(
                lambda arns: json.dumps(
                    {
                        "Version": "2012-10-17",
                        "Statement": [
                            {
                                "Sid": "TopicDelivers",
                                "Effect": "Allow",
                                "Principal": {"Service": "sns.amazonaws.com"},
                                "Action": "sqs:SendMessage",
                                "Resource": arns[0],
                                "Condition": {"ArnEquals": {"aws:SourceArn": arns[1]}},
                            }
                        ],
                    }
                )
            ),
            opts=platform.child_opts(),
        )
        aws.sns.TopicSubscription(
            f"{name}-{group}",
            topic=topic.arn,
            protocol="sqs",
            endpoint=queue.arn,
            raw_message_delivery=True,
            opts=platform.child_opts(),
        )
        queues[group] = (queue, dead)
    url = pulumi.Output.concat(
        "sns+sqs://",
        topic.name,
        f"?region={network.region}&account=",
        topic.arn.apply(account_of),
    )
    return Broker(topic=topic, queues=queues, url=url)
