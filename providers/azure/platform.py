"""skyferry on Azure: the ``skyferry:azure:Platform`` component, composed of the target's role modules.

What it declares, every child with ``parent=self``, one step per role in the order every
target composes them (network, identity, store, broker, archive, the identity's grants,
compute):

* a resource group and a Log Analytics workspace;
* a VNet with a delegated /23 subnet for the Container Apps environment and a /24 for
  private endpoints, with private DNS zones for Cosmos DB, Blob Storage and Key Vault (and
  Service Bus on Premium);
* a user-assigned managed identity for the apps and one for encryption at rest;
* Key Vault (RBAC authorization, purge protection, soft delete, network default deny)
  holding the API token and, when ``customerManagedKey``, the RSA key that encrypts
  Cosmos DB and the storage account;
* a Cosmos DB for NoSQL account (continuous backup, local auth disabled, public network
  access disabled, CanNotDelete lock), its database and the events and views containers,
  whose partition key paths come from :mod:`skyferry.adapters.stores.cosmos`;
* a Service Bus namespace (local auth disabled; on Premium, public access disabled and a
  private endpoint), the app's topic with duplicate detection, and a session subscription
  per consumer group with dead-lettering;
* a storage account (no public blob access, TLS 1.2, HTTPS only, shared keys disabled,
  versioning and soft delete) with the archive container;
* a Container Apps environment with the api (external ingress) and worker apps, which
  run as the app identity and read the API token from Key Vault;
* data-plane role assignments of the app identity scoped to the Cosmos DB database, the
  Service Bus topic, the archive container and the API-token secret only.
"""

from __future__ import annotations

from providers.azure import archive, broker, compute, identity, network, store
from providers.azure.config import AzureConfig
from providers.base import Platform, StackConfig, StandardOutputs
from providers.environment import AppUrls


class AzurePlatform(Platform[AzureConfig]):
    """skyferry on Azure (see the module docstring)."""

    target = "azure"
    config_model = AzureConfig

    @classmethod
    def validate(cls, config: StackConfig[AzureConfig]) -> None:
        """The sizes fit a Container App."""
        compute.container_resources(config.common.cpu_millicores, config.common.memory_mib)

    def build(self) -> StandardOutputs:
        """Declare every role's resources, in the order shared by all targets; return the standard outputs."""
        where = network.declare_network(self)
        who = identity.declare_identity(self, where)
        events = store.declare_store(self, where, who)
        messages = broker.declare_broker(self, where, who)
        exports = archive.declare_archive(self, where, who)
        access = identity.grant_access(self, where, who, events, messages, exports)
        urls = AppUrls(store=events.url, broker=messages.url, archive=exports.url)
        app = compute.declare_compute(self, where, who, access, urls)
        return StandardOutputs(
            target=self.target,
            api_url=app.api_url,
            store_url=events.url,
            broker_url=messages.url,
            archive_url=exports.url,
            image=self.common.image,
        )
