"""The azure target's event and view store: Cosmos DB for NoSQL, its database and the events and views containers.

The partition key paths come from :mod:`skyferry.adapters.stores.cosmos`.  Continuous backup,
local auth disabled, public network access disabled (a private endpoint), a CanNotDelete
lock, and the customer-managed key when there is one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

import pulumi
from pulumi_azure_native import authorization, cosmosdb

from providers.azure.config import AzureConfig
from providers.azure.network import Network, private_endpoint
from providers.base import Platform
from skyferry.adapters.stores import cosmos as cosmos_adapter

if TYPE_CHECKING:
    from providers.azure.identity import Identity

DATABASE: Final = "skyferry"
EVENTS_CONTAINER: Final = "events"
VIEWS_CONTAINER: Final = cosmos_adapter.views_container_name(EVENTS_CONTAINER)


@dataclass(frozen=True)
class Store:
    """The Cosmos DB account and database, and the app's ``cosmos://`` URL."""

    account: cosmosdb.DatabaseAccount
    database: cosmosdb.SqlResourceSqlDatabase
    url: pulumi.Output[str]


def declare_store(platform: Platform[AzureConfig], network: Network, identity: Identity) -> Store:
    """The Cosmos DB account (locked, private), its database and the events and views containers."""
    encryption: dict[str, Any] = {}
    if identity.key is not None and identity.key_identity is not None:
        encryption = {
            "key_vault_key_uri": pulumi.Output.concat(identity.vault_uri, "keys/", identity.key_name),
            "identity": {"type": "UserAssigned", "userAssignedIdentities": [identity.key_identity.id]},
            "default_identity": pulumi.Output.concat("UserAssignedIdentity=", identity.key_identity.id),
        }
    account = cosmosdb.DatabaseAccount(
        f"{platform.common.name}-cosmos",
        account_name=f"cosmos-{network.compact}",
        resource_group_name=network.group.name,
        location=network.location,
        kind="GlobalDocumentDB",
        database_account_offer_type="Standard",
        locations=[{"locationName": network.location, "failoverPriority": 0, "isZoneRedundant": False}],
        consistency_policy={"defaultConsistencyLevel": platform.section.consistency},
        backup_policy={"type": "Continuous", "continuousModeProperties": {"tier": "Continuous30Days"}},
        disable_local_auth=True,
        disable_key_based_metadata_write_access=True,
        public_network_access="Disabled",
        minimal_tls_version="Tls12",
        tags=platform.tags(**{"skyferry-role": "event-store"}),
        opts=platform.child_opts(protect=platform.common.deletion_protection, depends_on=identity.cmk_ready),
        **encryption,
    )
    authorization.ManagementLockByScope(
        f"{platform.common.name}-cosmos-lock",
        scope=account.id,
        level="CanNotDelete",
        notes="skyferry event store: remove this lock deliberately before deleting the account",
        opts=platform.child_opts(),
    )
    database = cosmosdb.SqlResourceSqlDatabase(
        f"{platform.common.name}-db",
        account_name=account.name,
        resource_group_name=network.group.name,
        database_name=DATABASE,
        resource={"id": DATABASE},
        options={"autoscaleSettings": {"maxThroughput": platform.section.max_throughput}},
        opts=platform.child_opts(),
    )
    for label, container, path in (
        ("events", EVENTS_CONTAINER, cosmos_adapter.EVENTS_PARTITION_KEY_PATH),
        ("views", VIEWS_CONTAINER, cosmos_adapter.VIEWS_PARTITION_KEY_PATH),
    ):
        cosmosdb.SqlResourceSqlContainer(
            f"{platform.common.name}-{label}",
            account_name=account.name,
            resource_group_name=network.group.name,
            database_name=database.name,
            container_name=container,
            resource={
                "id": container,
                "partitionKey": {"paths": [path], "kind": "Hash", "version": 2},
            },
            opts=platform.child_opts(protect=platform.common.deletion_protection),
        )
    private_endpoint(platform, network, account, "Sql")
    url = pulumi.Output.concat("cosmos://", account.name, f"/{DATABASE}/{EVENTS_CONTAINER}")
    return Store(account=account, database=database, url=url)
