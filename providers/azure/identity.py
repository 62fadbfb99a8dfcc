"""The azure target's identity and secrets: the app's managed identity, Key Vault, the token and the key.

:func:`declare_identity` creates the user-assigned identity the apps run as, Key Vault
(RBAC authorization, purge protection, soft delete, network default deny, a private
endpoint) holding the API token and, when ``customerManagedKey``, the RSA key that encrypts
Cosmos DB and the storage account, with the identity that uses it.  :func:`grant_access`
gives the app identity its data-plane roles, each scoped to one resource (never the group):
the Cosmos DB database, the Service Bus topic, the archive container, the token's secret.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

import pulumi
from pulumi_azure_native import authorization, cosmosdb, keyvault, managedidentity

from providers.azure.archive import Archive
from providers.azure.broker import Broker
from providers.azure.config import AzureConfig
from providers.azure.network import Network, private_endpoint
from providers.azure.store import DATABASE, Store
from providers.base import Platform
from skyferry.adapters.archives import blob as blob_adapter
from skyferry.adapters.brokers import servicebus as servicebus_adapter

CMK_KEY_NAME: Final = "skyferry-data"
API_TOKEN_SECRET: Final = "api-token"  # noqa: S105 (the secret's name in Key Vault, not a value)

#: Built-in role definition ids (Azure RBAC), by name.
ROLE_IDS: Final[dict[str, str]] = {
    servicebus_adapter.SENDER_ROLE: "69a216fc-b8fb-44d8-bc22-1f3c2cd27a39",
    servicebus_adapter.RECEIVER_ROLE: "4f6d3b9b-027b-4f4c-9142-0e5a2a2247e0",
    blob_adapter.BLOB_DATA_ROLE: blob_adapter.BLOB_DATA_ROLE_ID,
    "Key Vault Secrets User": "4633458b-17de-408a-b874-0445c86b69e6",
    "Key Vault Crypto Service Encryption User": "e147488a-f6f5-4113-8e2d-b22465e65bf6",
    "AcrPull": "7f951dda-4ed3-4680-a7ca-43fe172d538d",
}
#: Cosmos DB's built-in data-plane role "Cosmos DB Built-in Data Contributor".
COSMOS_DATA_CONTRIBUTOR: Final = "00000000-0000-0000-0000-000000000002"


@dataclass(frozen=True)
class Client:
    """Where role definitions and the vault's tenant come from."""

    subscription_id: pulumi.Output[str]
    tenant_id: pulumi.Output[str]


def _subscription_of(resource_id: str) -> str:
    """The subscription id in an ARM resource id (``/subscriptions/<id>/...``)."""
    parts = (resource_id or "").split("/")
    return (
        parts[2] if len(parts) > 2 and parts[1].lower() == "subscriptions" else "00000000-0000-0000-0000-000000000000"
    )


def vault_uri(vault: keyvault.Vault) -> pulumi.Output[str]:
    """``https://<vault>.vault.azure.net/`` (known at plan time, unlike the vaultUri output)."""
    uri: pulumi.Output[str] = pulumi.Output.concat("https://", vault.name, ".vault.azure.net/")
    return uri


@dataclass(frozen=True)
class Identity:
    """The app identity, Key Vault and the token's secret, and the customer-managed key when there is one.

    ``cmk_ready`` is what a resource encrypted with the key must wait for (the key and its
    identity's role), empty without a key.
    """

    app: managedidentity.UserAssignedIdentity
    client: Client
    vault: keyvault.Vault
    vault_uri: pulumi.Output[str]
    secret: keyvault.Secret
    key: keyvault.Key | None
    key_name: str
    key_identity: managedidentity.UserAssignedIdentity | None
    cmk_ready: list[pulumi.Resource]


@dataclass(frozen=True)
class Access:
    """The app identity's role assignments (the apps wait for them)."""

    assignments: list[pulumi.Resource]


def assign(
    platform: Platform[AzureConfig],
    label: str,
    client: Client,
    scope: pulumi.Input[str],
    identity: managedidentity.UserAssignedIdentity,
    role: str,
) -> authorization.RoleAssignment:
    """The built-in role ``role`` (a key of :data:`ROLE_IDS`) for ``identity`` on ``scope`` only."""
    return authorization.RoleAssignment(
        f"{platform.common.name}-{label}",
        scope=scope,
        principal_id=identity.principal_id,
        principal_type="ServicePrincipal",
        role_definition_id=pulumi.Output.concat(
            "/subscriptions/",
            client.subscription_id,
            "/providers/Microsoft.Authorization/roleDefinitions/",
            ROLE_IDS[role],
        ),
        opts=platform.child_opts(depends_on=[identity]),
    )


def declare_identity(platform: Platform[AzureConfig], network: Network) -> Identity:
    """The app identity, Key Vault (private) with the API token, and the customer-managed key and its identity."""
    name = platform.common.name
    tags = platform.tags()
    group = network.group
    app_identity = managedidentity.UserAssignedIdentity(
        f"{name}-app", resource_group_name=group.name, location=network.location, tags=tags, opts=platform.child_opts()
    )
    # No invokes: the subscription comes from the group's id, the tenant from the identity.
    client = Client(subscription_id=group.id.apply(_subscription_of), tenant_id=app_identity.tenant_id)
    vault = keyvault.Vault(
        f"{name}-kv",
        vault_name=f"kv{network.compact}"[:24],
        resource_group_name=group.name,
        location=network.location,
        properties={
            "tenantId": client.tenant_id,
            "sku": {"family": "A", "name": "standard"},
            "enableRbacAuthorization": True,
            "enablePurgeProtection": True,
            "enableSoftDelete": True,
            "softDeleteRetentionInDays": 90,
            "publicNetworkAccess": "Disabled",
            "networkAcls": {"defaultAction": "Deny", "bypass": "AzureServices"},
        },
        tags=tags,
        opts=platform.child_opts(),
    )
    private_endpoint(platform, network, vault, "vault")
    cmk_ready: list[pulumi.Resource] = []
    secret = keyvault.Secret(
        f"{name}-api-token",
        resource_group_name=group.name,
        vault_name=vault.name,
        secret_name=API_TOKEN_SECRET,
        properties={"value": pulumi.Output.secret(platform.common.api_token.get_secret_value())},
        tags=tags,
        opts=platform.child_opts(),
    )
    key = key_identity = None
    if platform.section.customer_managed_key:
        key = keyvault.Key(
            f"{name}-cmk",
            resource_group_name=group.name,
            vault_name=vault.name,
            key_name=CMK_KEY_NAME,
            properties={"kty": "RSA", "keySize": 3072, "keyOps": ["wrapKey", "unwrapKey"]},
            tags=tags,
            opts=platform.child_opts(),
        )
        key_identity = managedidentity.UserAssignedIdentity(
            f"{name}-cmk",
            resource_group_name=group.name,
            location=network.location,
            tags=tags,
            opts=platform.child_opts(),
        )
        crypto = assign(
            platform, "cmk-crypto", client, key.id, key_identity, "Key Vault Crypto Service Encryption User"
        )
        cmk_ready = [key, crypto]
    return Identity(
        app=app_identity,
        client=client,
        vault=vault,
        vault_uri=vault_uri(vault),
        secret=secret,
        key=key,
        key_name=CMK_KEY_NAME,
        key_identity=key_identity,
        cmk_ready=cmk_ready,
    )


def grant_access(
    platform: Platform[AzureConfig],
    network: Network,
    identity: Identity,
    store: Store,
    broker: Broker,
    archive: Archive,
) -> Access:
    """Data-plane roles of the app identity, each scoped to one resource (never the group)."""
    app, client = identity.app, identity.client
    account = store.account
    assignments: list[pulumi.Resource] = [
        cosmosdb.SqlResourceSqlRoleAssignment(
            f"{platform.common.name}-cosmos-data",
            account_name=account.name,
            resource_group_name=network.group.name,
            principal_id=app.principal_id,
            role_definition_id=pulumi.Output.concat(account.id, "/sqlRoleDefinitions/", COSMOS_DATA_CONTRIBUTOR),
            scope=pulumi.Output.concat(account.id, "/dbs/", DATABASE),
            opts=platform.child_opts(depends_on=[store.database, app]),
        ),
        assign(platform, "sb-send", client, broker.topic.id, app, servicebus_adapter.SENDER_ROLE),
        assign(platform, "sb-receive", client, broker.topic.id, app, servicebus_adapter.RECEIVER_ROLE),
        assign(platform, "blob-data", client, archive.container.id, app, blob_adapter.BLOB_DATA_ROLE),
        assign(platform, "kv-secret", client, identity.secret.id, app, "Key Vault Secrets User"),
    ]
    return Access(assignments=assignments)
