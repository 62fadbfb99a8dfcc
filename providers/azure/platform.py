"""skyferry on Azure: the ``skyferry:azure:Platform`` component.

What it declares, every child with ``parent=self``:

* a resource group and a Log Analytics workspace;
* a VNet with a delegated /23 subnet for the Container Apps environment and a /24 for
  private endpoints, with private DNS zones for Cosmos DB, Blob Storage and Key Vault;
* a user-assigned managed identity for the apps and one for encryption at rest;
* Key Vault (RBAC authorization, purge protection, soft delete, network default deny)
  holding the API token and, when ``customerManagedKey``, the RSA key that encrypts
  Cosmos DB and the storage account;
* a Cosmos DB for NoSQL account (continuous backup, local auth disabled, public network
  access disabled, CanNotDelete lock), its database and the events and views containers,
  whose partition key paths come from :mod:`skyferry.adapters.stores.cosmos`;
* a Service Bus namespace (local auth disabled), the app's topic with duplicate
  detection, and a session subscription per consumer group with dead-lettering;
* a storage account (no public blob access, TLS 1.2, HTTPS only, shared keys disabled,
  versioning and soft delete) with the archive container;
* a Container Apps environment with the api (external ingress) and worker apps, which
  run as the app identity and read the API token from Key Vault;
* data-plane role assignments of the app identity scoped to the Cosmos DB database, the
  Service Bus topic, the archive container and the API-token secret only.
"""

from __future__ import annotations

import hashlib
import ipaddress
from dataclasses import dataclass
from typing import Any, Final

import pulumi
from pulumi_azure_native import (
    app,
    authorization,
    containerregistry,
    cosmosdb,
    keyvault,
    managedidentity,
    monitor,
    network,
    operationalinsights,
    privatedns,
    resources,
    servicebus,
    storage,
)

from providers.azure.config import AzureConfig
from providers.base import Platform, StackConfigError, StandardOutputs
from providers.environment import AppUrls, api_environment, worker_environment
from skyferry.adapters.archives import blob as blob_adapter
from skyferry.adapters.brokers import servicebus as servicebus_adapter
from skyferry.adapters.stores import cosmos as cosmos_adapter
from skyferry.ledger import CONSUMER_GROUPS, MAX_DELIVERIES

API_PORT: Final = 8000
WORKER_HEALTH_PORT: Final = 8080
DATABASE: Final = "skyferry"
EVENTS_CONTAINER: Final = "events"
VIEWS_CONTAINER: Final = cosmos_adapter.views_container_name(EVENTS_CONTAINER)
TOPIC: Final = "skyferry-events"
TOPIC_MAX_MEGABYTES: Final = 5120
"""The topic's size quota: the largest of the Standard tier (5 GB; Premium allows more)."""
ARCHIVE_CONTAINER: Final = "exports"
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

PRIVATE_DNS: Final[dict[str, str]] = {
    "Sql": "privatelink.documents.azure.com",
    "blob": "privatelink.blob.core.windows.net",
    "vault": "privatelink.vaultcore.azure.net",
}

_CPU_STEPS: Final = (250, 500, 750, 1000, 1250, 1500, 1750, 2000, 2500, 3000, 3500, 4000)


def container_resources(cpu_millicores: int) -> tuple[float, str]:
    """Container Apps (consumption) CPU and memory: the next allowed step, memory 2 GiB per core."""
    millicores = next((m for m in _CPU_STEPS if m >= cpu_millicores), _CPU_STEPS[-1])
    return millicores / 1000, f"{millicores * 2 / 1000:g}Gi"


@dataclass(frozen=True)
class _Client:
    """Where role definitions and the vault's tenant come from."""

    subscription_id: pulumi.Output[str]
    tenant_id: pulumi.Output[str]


def _subscription_of(resource_id: str) -> str:
    """The subscription id in an ARM resource id (``/subscriptions/<id>/...``)."""
    parts = (resource_id or "").split("/")
    return (
        parts[2] if len(parts) > 2 and parts[1].lower() == "subscriptions" else "00000000-0000-0000-0000-000000000000"
    )


def _vault_uri(vault: keyvault.Vault) -> pulumi.Output[str]:
    """``https://<vault>.vault.azure.net/`` (known at plan time, unlike the vaultUri output)."""
    uri: pulumi.Output[str] = pulumi.Output.concat("https://", vault.name, ".vault.azure.net/")
    return uri


def registry_name(compact: str) -> str:
    """The container registry's name: ``acr`` + the stack's compact name (5-50 letters and digits)."""
    return f"acr{compact}"[:50]


def unique_suffix(*parts: str) -> str:
    """A short stable suffix for globally unique names (storage, vault, Cosmos DB)."""
    return hashlib.sha256("/".join(parts).encode()).hexdigest()[:6]


class AzurePlatform(Platform[AzureConfig]):
    """skyferry on Azure (see the module docstring)."""

    target = "azure"
    config_model = AzureConfig

    def build(self) -> StandardOutputs:
        """Declare every resource and return the standard outputs."""
        cfg = self.section
        name = self.common.name
        location = pulumi.Config("azure-native").get("location")
        if not location:
            raise StackConfigError(
                "azure-native:location",
                "required: the region to deploy to (pulumi config set azure-native:location ...)",
            )
        self.location = location
        suffix = unique_suffix(pulumi.get_project(), pulumi.get_stack(), name)
        compact = name.replace("-", "")[:14] + suffix
        tags = self.tags()

        group = resources.ResourceGroup(f"{name}-rg", location=self.location, tags=tags, opts=self.child_opts())
        workspace = operationalinsights.Workspace(
            f"{name}-logs",
            resource_group_name=group.name,
            location=self.location,
            sku={"name": "PerGB2018"},
            retention_in_days=cfg.log_retention_days,
            tags=tags,
            opts=self.child_opts(),
        )
        app_identity = managedidentity.UserAssignedIdentity(
            f"{name}-app", resource_group_name=group.name, location=self.location, tags=tags, opts=self.child_opts()
        )
        # No invokes: the subscription comes from the group's id, the tenant from the identity.
        client = _Client(subscription_id=group.id.apply(_subscription_of), tenant_id=app_identity.tenant_id)
        subnets = self._network(group, tags)

        vault, secret, key, key_identity = self._key_vault(group, compact, client, tags)
        account, database = self._cosmos(group, compact, key, key_identity, vault, tags)
        namespace, topic = self._service_bus(group, compact, tags)
        account_storage, archive = self._storage(group, compact, key, key_identity, vault, tags)
        for target, group_id in ((account, "Sql"), (account_storage, "blob"), (vault, "vault")):
            self._private_endpoint(group, subnets["endpoints"], target, group_id, subnets["dns"][group_id], tags)

        assignments = self._roles(group, client, app_identity, account, database, topic, archive, secret)
        registry = self._registry(group, compact, tags)
        assignments.append(self._assign("acr-pull", client, registry.id, app_identity, "AcrPull"))
        self._registry_server = registry.login_server

        store_url = pulumi.Output.concat("cosmos://", account.name, f"/{DATABASE}/{EVENTS_CONTAINER}")
        broker_url = pulumi.Output.concat("servicebus://", namespace.name, "/", topic.name)
        archive_url = pulumi.Output.concat("az://", account_storage.name, "/", archive.name)
        environment, api_app = self._container_apps(
            group,
            workspace,
            subnets["apps"],
            app_identity,
            secret,
            store_url,
            broker_url,
            archive_url,
            assignments,
            tags,
        )
        api_url = pulumi.Output.all(environment.default_domain, api_app.name).apply(
            lambda parts: f"https://{parts[1]}.{parts[0] or 'containerapps.invalid'}"
        )
        return StandardOutputs(
            target="azure",
            api_url=api_url,
            store_url=store_url,
            broker_url=broker_url,
            archive_url=archive_url,
            image=self.common.image,
        )

    # -- network -------------------------------------------------------------------------

    def _network(self, group: resources.ResourceGroup, tags: dict[str, str]) -> dict[str, Any]:
        block = ipaddress.ip_network(self.section.vnet_cidr)
        apps_subnet = next(block.subnets(new_prefix=23))
        endpoints_subnet = list(block.subnets(new_prefix=24))[2]
        vnet = network.VirtualNetwork(
            f"{self.common.name}-vnet",
            resource_group_name=group.name,
            location=self.location,
            address_space={"addressPrefixes": [str(block)]},
            tags=tags,
            opts=self.child_opts(ignore_changes=["subnets"]),
        )
        apps = network.Subnet(
            f"{self.common.name}-apps",
            resource_group_name=group.name,
            virtual_network_name=vnet.name,
            address_prefix=str(apps_subnet),
            delegations=[{"name": "apps", "serviceName": "Microsoft.App/environments"}],
            opts=self.child_opts(),
        )
        endpoints = network.Subnet(
            f"{self.common.name}-endpoints",
            resource_group_name=group.name,
            virtual_network_name=vnet.name,
            address_prefix=str(endpoints_subnet),
            private_endpoint_network_policies="Disabled",
            opts=self.child_opts(depends_on=[apps]),
        )
        zones: dict[str, privatedns.PrivateZone] = {}
        for group_id, zone_name in PRIVATE_DNS.items():
            zone = privatedns.PrivateZone(
                f"{self.common.name}-dns-{group_id.lower()}",
                resource_group_name=group.name,
                private_zone_name=zone_name,
                location="global",
                tags=tags,
                opts=self.child_opts(),
            )
            privatedns.VirtualNetworkLink(
                f"{self.common.name}-dns-{group_id.lower()}-link",
                resource_group_name=group.name,
                private_zone_name=zone.name,
                location="global",
                virtual_network={"id": vnet.id},
                registration_enabled=False,
                tags=tags,
                opts=self.child_opts(),
            )
            zones[group_id] = zone
        return {"apps": apps, "endpoints": endpoints, "dns": zones}

    def _private_endpoint(
        self,
        group: resources.ResourceGroup,
        subnet: network.Subnet,
        target: pulumi.CustomResource,
        group_id: str,
        zone: privatedns.PrivateZone,
        tags: dict[str, str],
    ) -> None:
        label = f"{self.common.name}-pe-{group_id.lower()}"
        endpoint = network.PrivateEndpoint(
            label,
            resource_group_name=group.name,
            location=self.location,
            subnet={"id": subnet.id},
            private_link_service_connections=[
                {"name": label, "privateLinkServiceId": target.id, "groupIds": [group_id]}
            ],
            tags=tags,
            opts=self.child_opts(),
        )
        network.PrivateDnsZoneGroup(
            f"{label}-dns",
            resource_group_name=group.name,
            private_endpoint_name=endpoint.name,
            private_dns_zone_configs=[{"name": group_id.lower(), "privateDnsZoneId": zone.id}],
            opts=self.child_opts(),
        )

    # -- Key Vault -------------------------------------------------------------------------

    def _key_vault(
        self, group: resources.ResourceGroup, compact: str, client: Any, tags: dict[str, str]
    ) -> tuple[keyvault.Vault, keyvault.Secret, keyvault.Key | None, managedidentity.UserAssignedIdentity | None]:
        vault = keyvault.Vault(
            f"{self.common.name}-kv",
            vault_name=f"kv{compact}"[:24],
            resource_group_name=group.name,
            location=self.location,
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
            opts=self.child_opts(),
        )
        self._vault = vault
        self._cmk_ready: list[pulumi.Resource] = []
        secret = keyvault.Secret(
            f"{self.common.name}-api-token",
            resource_group_name=group.name,
            vault_name=vault.name,
            secret_name=API_TOKEN_SECRET,
            properties={"value": pulumi.Output.secret(self.common.api_token.get_secret_value())},
            tags=tags,
            opts=self.child_opts(),
        )
        key = key_identity = None
        if self.section.customer_managed_key:
            key = keyvault.Key(
                f"{self.common.name}-cmk",
                resource_group_name=group.name,
                vault_name=vault.name,
                key_name=CMK_KEY_NAME,
                properties={"kty": "RSA", "keySize": 3072, "keyOps": ["wrapKey", "unwrapKey"]},
                tags=tags,
                opts=self.child_opts(),
            )
            key_identity = managedidentity.UserAssignedIdentity(
                f"{self.common.name}-cmk",
                resource_group_name=group.name,
                location=self.location,
                tags=tags,
                opts=self.child_opts(),
            )
            crypto = self._assign(
                "cmk-crypto", client, key.id, key_identity, "Key Vault Crypto Service Encryption User"
            )
            self._cmk_ready = [key, crypto]
        return vault, secret, key, key_identity

    def _role_definition(self, client: Any, role: str) -> pulumi.Output[str]:
        return pulumi.Output.concat(
            "/subscriptions/",
            client.subscription_id,
            "/providers/Microsoft.Authorization/roleDefinitions/",
            ROLE_IDS[role],
        )

    def _assign(
        self,
        label: str,
        client: Any,
        scope: pulumi.Input[str],
        identity: managedidentity.UserAssignedIdentity,
        role: str,
    ) -> authorization.RoleAssignment:
        return authorization.RoleAssignment(
            f"{self.common.name}-{label}",
            scope=scope,
            principal_id=identity.principal_id,
            principal_type="ServicePrincipal",
            role_definition_id=self._role_definition(client, role),
            opts=self.child_opts(depends_on=[identity]),
        )

    # -- Container Registry ----------------------------------------------------------------

    def _registry(self, group: resources.ResourceGroup, compact: str, tags: dict[str, str]) -> Any:
        """The image registry ``acr<suffix>.azurecr.io``: no admin user, the apps pull as their identity.

        Its name is in ``skyferry plan`` (``registryName``), so the image can be pushed after
        ``pulumi up --target`` created the registry alone and before the apps are created.
        """
        return containerregistry.Registry(
            f"{self.common.name}-acr",
            registry_name=registry_name(compact),
            resource_group_name=group.name,
            location=self.location,
            sku={"name": "Standard"},
            admin_user_enabled=False,
            anonymous_pull_enabled=False,
            tags=tags,
            opts=self.child_opts(),
        )

    # -- Cosmos DB -------------------------------------------------------------------------

    def _cosmos(
        self,
        group: resources.ResourceGroup,
        compact: str,
        key: keyvault.Key | None,
        key_identity: managedidentity.UserAssignedIdentity | None,
        vault: keyvault.Vault,
        tags: dict[str, str],
    ) -> tuple[cosmosdb.DatabaseAccount, cosmosdb.SqlResourceSqlDatabase]:
        encryption: dict[str, Any] = {}
        if key is not None and key_identity is not None:
            encryption = {
                "key_vault_key_uri": pulumi.Output.concat(_vault_uri(vault), "keys/", CMK_KEY_NAME),
                "identity": {"type": "UserAssigned", "userAssignedIdentities": [key_identity.id]},
                "default_identity": pulumi.Output.concat("UserAssignedIdentity=", key_identity.id),
            }
        account = cosmosdb.DatabaseAccount(
            f"{self.common.name}-cosmos",
            account_name=f"cosmos-{compact}",
            resource_group_name=group.name,
            location=self.location,
            kind="GlobalDocumentDB",
            database_account_offer_type="Standard",
            locations=[{"locationName": self.location, "failoverPriority": 0, "isZoneRedundant": False}],
            consistency_policy={"defaultConsistencyLevel": self.section.consistency},
            backup_policy={"type": "Continuous", "continuousModeProperties": {"tier": "Continuous30Days"}},
            disable_local_auth=True,
            disable_key_based_metadata_write_access=True,
            public_network_access="Disabled",
            minimal_tls_version="Tls12",
            tags={**tags, "skyferry-role": "event-store"},
            opts=self.child_opts(protect=self.common.deletion_protection, depends_on=self._cmk_ready),
            **encryption,
        )
        authorization.ManagementLockByScope(
            f"{self.common.name}-cosmos-lock",
            scope=account.id,
            level="CanNotDelete",
            notes="skyferry event store: remove this lock deliberately before deleting the account",
            opts=self.child_opts(),
        )
        database = cosmosdb.SqlResourceSqlDatabase(
            f"{self.common.name}-db",
            account_name=account.name,
            resource_group_name=group.name,
            database_name=DATABASE,
            resource={"id": DATABASE},
            options={"autoscaleSettings": {"maxThroughput": self.section.max_throughput}},
            opts=self.child_opts(),
        )
        for label, container, path in (
            ("events", EVENTS_CONTAINER, cosmos_adapter.EVENTS_PARTITION_KEY_PATH),
            ("views", VIEWS_CONTAINER, cosmos_adapter.VIEWS_PARTITION_KEY_PATH),
        ):
            cosmosdb.SqlResourceSqlContainer(
                f"{self.common.name}-{label}",
                account_name=account.name,
                resource_group_name=group.name,
                database_name=database.name,
                container_name=container,
                resource={
                    "id": container,
                    "partitionKey": {"paths": [path], "kind": "Hash", "version": 2},
                },
                opts=self.child_opts(protect=self.common.deletion_protection),
            )
        return account, database

    # -- Service Bus -----------------------------------------------------------------------

    def _service_bus(
        self, group: resources.ResourceGroup, compact: str, tags: dict[str, str]
    ) -> tuple[servicebus.Namespace, servicebus.Topic]:
        premium = self.section.service_bus_sku == "Premium"
        retention = f"P{self.common.broker_retention_days}D"
        namespace = servicebus.Namespace(
            f"{self.common.name}-sb",
            namespace_name=f"sb-{compact}",
            resource_group_name=group.name,
            location=self.location,
            sku={
                "name": self.section.service_bus_sku,
                "tier": self.section.service_bus_sku,
                **({"capacity": 1} if premium else {}),
            },
            disable_local_auth=True,
            minimum_tls_version="1.2",
            public_network_access="Disabled" if premium else "Enabled",
            tags=tags,
            opts=self.child_opts(),
        )
        topic = servicebus.Topic(
            f"{self.common.name}-topic",
            namespace_name=namespace.name,
            resource_group_name=group.name,
            topic_name=TOPIC,
            requires_duplicate_detection=True,
            duplicate_detection_history_time_window=servicebus_adapter.DUPLICATE_DETECTION_WINDOW,
            support_ordering=True,
            max_message_size_in_kilobytes=1024 if premium else None,
            # bounded: unconsumed events expire (the store keeps them), and the topic never
            # grows past what its tier allows before it refuses sends
            max_size_in_megabytes=TOPIC_MAX_MEGABYTES,
            default_message_time_to_live=retention,
            opts=self.child_opts(),
        )
        for consumer_group in CONSUMER_GROUPS:
            servicebus.Subscription(
                f"{self.common.name}-sub-{consumer_group}",
                namespace_name=namespace.name,
                resource_group_name=group.name,
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
                opts=self.child_opts(),
            )
        return namespace, topic

    # -- Blob Storage ----------------------------------------------------------------------

    def _storage(
        self,
        group: resources.ResourceGroup,
        compact: str,
        key: keyvault.Key | None,
        key_identity: managedidentity.UserAssignedIdentity | None,
        vault: keyvault.Vault,
        tags: dict[str, str],
    ) -> tuple[storage.StorageAccount, storage.BlobContainer]:
        extra: dict[str, Any] = {}
        encryption: dict[str, Any] = {"services": {"blob": {"enabled": True, "keyType": "Account"}}}
        if key is not None and key_identity is not None:
            extra["identity"] = {"type": "UserAssigned", "userAssignedIdentities": [key_identity.id]}
            encryption.update(
                keySource="Microsoft.Keyvault",
                keyVaultProperties={"keyName": CMK_KEY_NAME, "keyVaultUri": _vault_uri(vault)},
                identity={"userAssignedIdentity": key_identity.id},
                requireInfrastructureEncryption=True,
            )
        else:
            encryption["keySource"] = "Microsoft.Storage"
        account = storage.StorageAccount(
            f"{self.common.name}-st",
            account_name=f"st{compact}"[:24],
            resource_group_name=group.name,
            location=self.location,
            kind="StorageV2",
            sku={"name": "Standard_ZRS"},
            allow_blob_public_access=False,
            allow_shared_key_access=False,
            enable_https_traffic_only=True,
            minimum_tls_version="TLS1_2",
            public_network_access="Disabled",
            network_rule_set={"defaultAction": "Deny", "bypass": "AzureServices"},
            encryption=encryption,
            tags=tags,
            opts=self.child_opts(depends_on=self._cmk_ready),
            **extra,
        )
        storage.BlobServiceProperties(
            f"{self.common.name}-blob-service",
            account_name=account.name,
            resource_group_name=group.name,
            blob_services_name="default",
            is_versioning_enabled=True,
            delete_retention_policy={"enabled": True, "days": 30},
            container_delete_retention_policy={"enabled": True, "days": 30},
            opts=self.child_opts(),
        )
        storage.ManagementPolicy(
            f"{self.common.name}-archive-retention",
            account_name=account.name,
            resource_group_name=group.name,
            management_policy_name="default",
            policy={
                "rules": [
                    {
                        "name": "expire-exports",
                        "type": "Lifecycle",
                        "enabled": True,
                        "definition": {
                            "filters": {"blobTypes": ["blockBlob"], "prefixMatch": [f"{ARCHIVE_CONTAINER}/"]},
                            "actions": {
                                "baseBlob": {
                                    "delete": {"daysAfterModificationGreaterThan": self.common.archive_retention_days}
                                },
                                "version": {"delete": {"daysAfterCreationGreaterThan": 30}},
                            },
                        },
                    }
                ]
            },
            opts=self.child_opts(),
        )
        archive = storage.BlobContainer(
            f"{self.common.name}-exports",
            account_name=account.name,
            resource_group_name=group.name,
            container_name=ARCHIVE_CONTAINER,
            public_access="None",
            opts=self.child_opts(),
        )
        return account, archive

    # -- identity ------------------------------------------------------------------------

    def _roles(
        self,
        group: resources.ResourceGroup,
        client: Any,
        identity: managedidentity.UserAssignedIdentity,
        account: cosmosdb.DatabaseAccount,
        database: cosmosdb.SqlResourceSqlDatabase,
        topic: servicebus.Topic,
        archive: storage.BlobContainer,
        secret: keyvault.Secret,
    ) -> list[pulumi.Resource]:
        """Data-plane roles of the app identity, each scoped to one resource (never the group)."""
        assignments: list[pulumi.Resource] = [
            cosmosdb.SqlResourceSqlRoleAssignment(
                f"{self.common.name}-cosmos-data",
                account_name=account.name,
                resource_group_name=group.name,
                principal_id=identity.principal_id,
                role_definition_id=pulumi.Output.concat(account.id, "/sqlRoleDefinitions/", COSMOS_DATA_CONTRIBUTOR),
                scope=pulumi.Output.concat(account.id, "/dbs/", DATABASE),
                opts=self.child_opts(depends_on=[database, identity]),
            ),
            self._assign("sb-send", client, topic.id, identity, servicebus_adapter.SENDER_ROLE),
            self._assign("sb-receive", client, topic.id, identity, servicebus_adapter.RECEIVER_ROLE),
            self._assign("blob-data", client, archive.id, identity, blob_adapter.BLOB_DATA_ROLE),
            self._assign("kv-secret", client, secret.id, identity, "Key Vault Secrets User"),
        ]
        return assignments

    # -- Container Apps --------------------------------------------------------------------

    def _container_apps(
        self,
        group: resources.ResourceGroup,
        workspace: operationalinsights.Workspace,
        subnet: network.Subnet,
        identity: managedidentity.UserAssignedIdentity,
        secret: keyvault.Secret,
        store_url: pulumi.Output[str],
        broker_url: pulumi.Output[str],
        archive_url: pulumi.Output[str],
        assignments: list[pulumi.Resource],
        tags: dict[str, str],
    ) -> tuple[app.ManagedEnvironment, app.ContainerApp]:
        environment = app.ManagedEnvironment(
            f"{self.common.name}-env",
            resource_group_name=group.name,
            location=self.location,
            # Logs go to Log Analytics through a diagnostic setting: no workspace key to hold.
            app_logs_configuration={"destination": "azure-monitor"},
            vnet_configuration={"infrastructureSubnetId": subnet.id, "internal": False},
            workload_profiles=[{"name": "Consumption", "workloadProfileType": "Consumption"}],
            zone_redundant=False,
            tags=tags,
            opts=self.child_opts(),
        )
        monitor.DiagnosticSetting(
            f"{self.common.name}-env-logs",
            resource_uri=environment.id,
            workspace_id=workspace.id,
            logs=[{"categoryGroup": "allLogs", "enabled": True}],
            metrics=[{"category": "AllMetrics", "enabled": True}],
            opts=self.child_opts(),
        )
        cpu, memory = container_resources(self.common.cpu_millicores)
        urls = AppUrls(store=store_url, broker=broker_url, archive=archive_url)
        api_env = api_environment(urls, port=API_PORT)
        # probes are HTTP only: the worker answers them from its heartbeat
        worker_env = worker_environment(urls, health_port=WORKER_HEALTH_PORT)
        # only the API serves requests: only it reads the token
        token = {
            "name": "api-token",
            "keyVaultUrl": pulumi.Output.concat(_vault_uri(self._vault), "secrets/", API_TOKEN_SECRET),
            "identity": identity.id,
        }
        env: dict[str, list[dict[str, Any]]] = {}
        for role, container_env in (("api", api_env), ("worker", worker_env)):
            env[role] = [
                *({"name": k, "value": v} for k, v in container_env.urls.items()),
                {"name": "AZURE_CLIENT_ID", "value": identity.client_id},
                *({"name": k, "value": v} for k, v in container_env.process.items()),
                *([{"name": container_env.secret, "secretRef": "api-token"}] if container_env.secret else []),
            ]
        health = {"path": "/healthz", "port": WORKER_HEALTH_PORT}
        probes = {
            "api": [
                {"type": "Liveness", "httpGet": {"path": "/healthz", "port": API_PORT}},
                {"type": "Readiness", "httpGet": {"path": "/readyz", "port": API_PORT}},
            ],
            "worker": [
                {"type": "Startup", "httpGet": health, "periodSeconds": 5, "failureThreshold": 24},
                {"type": "Liveness", "httpGet": health, "periodSeconds": 30, "timeoutSeconds": 10},
            ],
        }
        apps: dict[str, app.ContainerApp] = {}
        for role, minimum, maximum in (
            ("api", self.common.api_replicas, max(self.common.api_max_replicas, self.common.api_replicas)),
            ("worker", self.common.worker_replicas, self.common.worker_replicas),
        ):
            apps[role] = app.ContainerApp(
                f"{self.common.name}-{role}",
                container_app_name=f"{self.common.name}-{role}",
                resource_group_name=group.name,
                location=self.location,
                managed_environment_id=environment.id,
                workload_profile_name="Consumption",
                identity={"type": "UserAssigned", "userAssignedIdentities": [identity.id]},
                configuration={
                    "activeRevisionsMode": "Single",
                    "registries": [{"server": self._registry_server, "identity": identity.id}],
                    "secrets": [token] if role == "api" else [],
                    **(
                        {
                            "ingress": {
                                "external": True,
                                "targetPort": API_PORT,
                                "transport": "http",
                                "allowInsecure": False,
                            }
                        }
                        if role == "api"
                        else {}
                    ),
                },
                template={
                    "containers": [
                        {
                            "name": role,
                            "image": self.common.image,
                            "args": ["serve"] if role == "api" else ["worker"],
                            "env": env[role],
                            "resources": {"cpu": cpu, "memory": memory},
                            "probes": probes[role],
                        }
                    ],
                    "scale": {"minReplicas": minimum, "maxReplicas": maximum},
                },
                tags={**tags, "skyferry-role": role},
                opts=self.child_opts(depends_on=assignments),
            )
        return environment, apps["api"]
