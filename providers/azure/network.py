"""The azure target's network: the location, the resource group, the VNet and its private DNS.

The VNet has a /23 subnet delegated to the Container Apps environment and a /24 for private
endpoints, with private DNS zones for Cosmos DB, Blob Storage and Key Vault, and for the
Service Bus namespace when its tier is Premium (the only tier with private endpoints; its
public access is then off); :func:`private_endpoint` puts one of those resources on it (the
store, the archive, the vault and a Premium broker each call it).
"""

from __future__ import annotations

import hashlib
import ipaddress
from dataclasses import dataclass
from typing import Final

import pulumi
from pulumi_azure_native import network, privatedns, resources

from providers.azure.config import AzureConfig
from providers.base import Platform, StackConfigError

PRIVATE_DNS: Final[dict[str, str]] = {
    "Sql": "privatelink.documents.azure.com",
    "blob": "privatelink.blob.core.windows.net",
    "vault": "privatelink.vaultcore.azure.net",
    "namespace": "privatelink.servicebus.windows.net",
}
"""The private DNS zone of each private endpoint's group id (Cosmos DB, Blob, Key Vault, Service Bus)."""


def private_dns_groups(section: AzureConfig) -> tuple[str, ...]:
    """The group ids whose DNS zones the stack needs: Service Bus's only on Premium (see :func:`private_endpoint`)."""
    premium = section.service_bus_sku == "Premium"
    return tuple(group_id for group_id in PRIVATE_DNS if group_id != "namespace" or premium)


def unique_suffix(*parts: str) -> str:
    """A short stable suffix for globally unique names (storage, vault, Cosmos DB)."""
    return hashlib.sha256("/".join(parts).encode()).hexdigest()[:6]


@dataclass(frozen=True)
class Network:
    """Where the app runs: the location, the resource group, the compact unique name, the subnets and DNS zones."""

    location: str
    compact: str
    group: resources.ResourceGroup
    apps_subnet: network.Subnet
    endpoints_subnet: network.Subnet
    dns: dict[str, privatedns.PrivateZone]


def declare_network(platform: Platform[AzureConfig]) -> Network:
    """The location (``azure-native:location``, required), the resource group, the VNet, subnets and DNS zones."""
    name = platform.common.name
    location = pulumi.Config("azure-native").get("location")
    if not location:
        raise StackConfigError(
            "azure-native:location",
            "required: the region to deploy to (pulumi config set azure-native:location ...)",
        )
    suffix = unique_suffix(pulumi.get_project(), pulumi.get_stack(), name)
    compact = name.replace("-", "")[:14] + suffix
    tags = platform.tags()
    group = resources.ResourceGroup(f"{name}-rg", location=location, tags=tags, opts=platform.child_opts())
    block = ipaddress.ip_network(platform.section.vnet_cidr)
    apps_subnet = next(block.subnets(new_prefix=23))
    endpoints_subnet = list(block.subnets(new_prefix=24))[2]
    vnet = network.VirtualNetwork(
        f"{name}-vnet",
        resource_group_name=group.name,
        location=location,
        address_space={"addressPrefixes": [str(block)]},
        tags=tags,
        opts=platform.child_opts(ignore_changes=["subnets"]),
    )
    apps = network.Subnet(
        f"{name}-apps",
        resource_group_name=group.name,
        virtual_network_name=vnet.name,
        address_prefix=str(apps_subnet),
        delegations=[{"name": "apps", "serviceName": "Microsoft.App/environments"}],
        opts=platform.child_opts(),
    )
    endpoints = network.Subnet(
        f"{name}-endpoints",
        resource_group_name=group.name,
        virtual_network_name=vnet.name,
        address_prefix=str(endpoints_subnet),
        private_endpoint_network_policies="Disabled",
        opts=platform.child_opts(depends_on=[apps]),
    )
    zones: dict[str, privatedns.PrivateZone] = {}
    for group_id in private_dns_groups(platform.section):
        zone_name = PRIVATE_DNS[group_id]
        zone = privatedns.PrivateZone(
            f"{name}-dns-{group_id.lower()}",
            resource_group_name=group.name,
            private_zone_name=zone_name,
            location="global",
            tags=tags,
            opts=platform.child_opts(),
        )
        privatedns.VirtualNetworkLink(
            f"{name}-dns-{group_id.lower()}-link",
            resource_group_name=group.name,
            private_zone_name=zone.name,
            location="global",
            virtual_network={"id": vnet.id},
            registration_enabled=False,
            tags=tags,
            opts=platform.child_opts(),
        )
        zones[group_id] = zone
    return Network(
        location=location, compact=compact, group=group, apps_subnet=apps, endpoints_subnet=endpoints, dns=zones
    )


def private_endpoint(
    platform: Platform[AzureConfig], where: Network, target: pulumi.CustomResource, group_id: str
) -> None:
    """A private endpoint of ``target`` in its private DNS zone.

    ``group_id``: ``Sql``, ``blob``, ``vault`` or ``namespace`` (the last declared on Premium only).
    """
    label = f"{platform.common.name}-pe-{group_id.lower()}"
    endpoint = network.PrivateEndpoint(
        label,
        resource_group_name=where.group.name,
        location=where.location,
        subnet={"id": where.endpoints_subnet.id},
        private_link_service_connections=[{"name": label, "privateLinkServiceId": target.id, "groupIds": [group_id]}],
        tags=platform.tags(),
        opts=platform.child_opts(),
    )
    network.PrivateDnsZoneGroup(
        f"{label}-dns",
        resource_group_name=where.group.name,
        private_endpoint_name=endpoint.name,
        private_dns_zone_configs=[{"name": group_id.lower(), "privateDnsZoneId": where.dns[group_id].id}],
        opts=platform.child_opts(),
    )
