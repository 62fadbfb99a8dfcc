"""The azure target's archive: a storage account and its ``exports`` blob container.

No public blob access, TLS 1.2, HTTPS only, shared keys disabled, public network access
disabled (a private endpoint), versioning and soft delete, exports expired after
``archiveRetentionDays``, and the customer-managed key when there is one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

import pulumi
from pulumi_azure_native import storage

from providers.azure.config import AzureConfig
from providers.azure.network import Network, private_endpoint
from providers.base import Platform

if TYPE_CHECKING:
    from providers.azure.identity import Identity

ARCHIVE_CONTAINER: Final = "exports"


@dataclass(frozen=True)
class Archive:
    """The storage account and the exports container, and the app's ``az://`` URL."""

    account: storage.StorageAccount
    container: storage.BlobContainer
    url: pulumi.Output[str]


def declare_archive(platform: Platform[AzureConfig], network: Network, identity: Identity) -> Archive:
    """The storage account (private, customer-managed key when there is one) and the exports container."""
    extra: dict[str, Any] = {}
    encryption: dict[str, Any] = {"services": {"blob": {"enabled": True, "keyType": "Account"}}}
    if identity.key is not None and identity.key_identity is not None:
        extra["identity"] = {"type": "UserAssigned", "userAssignedIdentities": [identity.key_identity.id]}
        encryption.update(
            keySource="Microsoft.Keyvault",
            keyVaultProperties={"keyName": identity.key_name, "keyVaultUri": identity.vault_uri},
            identity={"userAssignedIdentity": identity.key_identity.id},
            requireInfrastructureEncryption=True,
        )
    else:
        encryption["keySource"] = "Microsoft.Storage"
    account = storage.StorageAccount(
        f"{platform.common.name}-st",
        account_name=f"st{network.compact}"[:24],
        resource_group_name=network.group.name,
        location=network.location,
        kind="StorageV2",
        sku={"name": "Standard_ZRS"},
        allow_blob_public_access=False,
        allow_shared_key_access=False,
        enable_https_traffic_only=True,
        minimum_tls_version="TLS1_2",
        public_network_access="Disabled",
        network_rule_set={"defaultAction": "Deny", "bypass": "AzureServices"},
        encryption=encryption,
        tags=platform.tags(),
        opts=platform.child_opts(depends_on=identity.cmk_ready),
        **extra,
    )
    storage.BlobServiceProperties(
        f"{platform.common.name}-blob-service",
        account_name=account.name,
        resource_group_name=network.group.name,
        blob_services_name="default",
        is_versioning_enabled=True,
        delete_retention_policy={"enabled": True, "days": 30},
        container_delete_retention_policy={"enabled": True, "days": 30},
        opts=platform.child_opts(),
    )
    storage.ManagementPolicy(
        f"{platform.common.name}-archive-retention",
        account_name=account.name,
        resource_group_name=network.group.name,
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
                                "delete": {"daysAfterModificationGreaterThan": platform.common.archive_retention_days}
                            },
                            "version": {"delete": {"daysAfterCreationGreaterThan": 30}},
                        },
                    },
                }
            ]
        },
        opts=platform.child_opts(),
    )
    archive = storage.BlobContainer(
        f"{platform.common.name}-exports",
        account_name=account.name,
        resource_group_name=network.group.name,
        container_name=ARCHIVE_CONTAINER,
        public_access="None",
        opts=platform.child_opts(),
    )
    private_endpoint(platform, network, account, "blob")
    url = pulumi.Output.concat("az://", account.name, "/", archive.name)
    return Archive(account=account, container=archive, url=url)
