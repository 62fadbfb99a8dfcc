"""Known problems the rehearsal catches today, each a strict ``xfail`` marker naming it.

A test marked with one of these fails today because of that problem.  When its fix lands
the test passes, strict ``xfail`` turns that into a failure, and the marker comes off the
test (and out of this list once no test uses it).
"""

from __future__ import annotations

import pytest


def waiting_for(problem: str) -> pytest.MarkDecorator:
    """A strict ``xfail`` for a known problem."""
    return pytest.mark.xfail(strict=True, reason=problem)


PULUMI_CONFIG = waiting_for(
    "Pulumi refuses the example stacks: project keys with no default (skyferry:labels, "
    "skyferry:databasePassword, the other targets' sections) are missing"
)
CLOUD_RUN_PORT = waiting_for(
    "Cloud Run: a service must listen on $PORT and pass its startup probe; skyferry worker listens on nothing "
    "and serve listens on SKYFERRY_PORT (it passes only while PORT is 8000)"
)
S3_LIST_CONDITION = waiting_for(
    "AWS: s3:ListBucket is granted only under an s3:prefix condition, so a missing manifest is a 403 and "
    "S3Archive.exists crashes on it: every fresh export with the task role"
)
BROKER_RETENTION = waiting_for(
    "the relay publishes every event to a broker that keeps it (Service Bus topic with no TTL, JetStream stream "
    "without limits) and nobody reads it in store-fed mode: the broker fills up and stalls the worker"
)
CONSUMER_GROUPS = waiting_for(
    "the consumer groups of the GCP and Azure stacks ('projections') are not the groups the app subscribes"
)
SQS_MAX_DELIVERIES = waiting_for(
    "skyferry:aws.maxDeliveries sets the SQS redrive count while the app always retries 5 times"
)
FIFO_REDELIVERY = waiting_for(
    "SNS+SQS FIFO: healthy messages queued behind a failing one inherit its receive count and are "
    "dead-lettered after one transient failure"
)
API_TOKEN = waiting_for(
    "apiToken is optional, but ECS and Cloud Run always reference its secret (created only when set) and the "
    "Azure API gets no SKYFERRY_API_TOKEN: the workloads fail to start without it"
)
POSTGRES_PASSWORD = waiting_for("the in-chart PostgreSQL URL embeds the raw password unencoded (@ / # % ? break it)")
READINESS_COST = waiting_for("the Azure readiness probe reads the whole Cosmos DB log on every probe")
PLAIN_HTTP = waiting_for("the AWS stack serves the bearer-token API on a plain-HTTP listener open to 0.0.0.0/0")
AZURE_LOCATION = waiting_for("azure-native:location is ignored: every resource stays in westeurope")
