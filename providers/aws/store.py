"""The aws target's event and view store: one DynamoDB table, from the adapter's own key schema and index.

The keys, attribute definitions and the global secondary index come from
:mod:`skyferry.adapters.stores.dynamodb`, so the table is the one the adapter expects.
Encrypted with the target's KMS key, point-in-time recovery on, protected from deletion.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import pulumi
import pulumi_aws as aws

from providers.aws.config import AwsConfig
from providers.aws.network import Network
from providers.base import Platform
from skyferry.adapters.stores import dynamodb

if TYPE_CHECKING:
    from providers.aws.identity import Identity


@dataclass(frozen=True)
class Store:
    """The table and the app's ``dynamodb://`` URL."""

    table: aws.dynamodb.Table
    url: pulumi.Output[str]


def declare_store(platform: Platform[AwsConfig], network: Network, identity: Identity) -> Store:
    """The event + view store table, from the adapter's own key schema and index."""
    name = platform.common.name
    keys = {k["KeyType"]: k["AttributeName"] for k in dynamodb.KEY_SCHEMA}
    table = aws.dynamodb.Table(
        f"{name}-events",
        name=f"{name}-events",
        billing_mode="PAY_PER_REQUEST",
        hash_key=keys["HASH"],
        range_key=keys["RANGE"],
        attributes=[{"name": a["AttributeName"], "type": a["AttributeType"]} for a in dynamodb.ATTRIBUTE_DEFINITIONS],
        global_secondary_indexes=[
            {
                "name": index["IndexName"],
                "hash_key": next(k["AttributeName"] for k in index["KeySchema"] if k["KeyType"] == "HASH"),
                "range_key": next(k["AttributeName"] for k in index["KeySchema"] if k["KeyType"] == "RANGE"),
                "projection_type": index["Projection"]["ProjectionType"],
            }
            for index in dynamodb.GLOBAL_SECONDARY_INDEXES
        ],
        point_in_time_recovery={"enabled": True},
        server_side_encryption={"enabled": True, "kms_key_arn": identity.key.arn},
        deletion_protection_enabled=platform.common.deletion_protection,
        tags=platform.tags(**{"skyferry-role": "event-store"}),
        opts=platform.child_opts(protect=platform.common.deletion_protection),
    )
    url = pulumi.Output.concat("dynamodb://", table.name, f"?region={network.region}")
    return Store(table=table, url=url)
