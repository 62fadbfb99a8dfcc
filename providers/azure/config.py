"""Settings of the azure target: the structured key ``skyferry:azure``.

The region is the provider's own key, ``azure-native:location`` (required): every resource is
created there.

| key | default | meaning |
|---|---|---|
| ``serviceBusSku`` | ``Standard`` | ``Standard`` (RBAC only) or ``Premium`` (private endpoint, no public access) |
| ``customerManagedKey`` | ``true`` | Key Vault key for Cosmos DB and Blob Storage (false: Microsoft-managed) |
| ``consistency`` | ``Session`` | Cosmos DB default consistency: ``Session``, ``BoundedStaleness`` or ``Strong`` |
| ``maxThroughput`` | 1000 | Cosmos DB database autoscale maximum, RU/s |
| ``vnetCidr`` | ``10.50.0.0/16`` | address space of the VNet (a /23 for Container Apps, a /24 for private endpoints) |
| ``logRetentionDays`` | 30 | Log Analytics retention, days |
"""

from __future__ import annotations

import ipaddress
from typing import Literal

from pydantic import Field, field_validator

from providers.base import TargetConfig


class AzureConfig(TargetConfig):
    """The azure target's settings (``skyferry:azure``)."""

    service_bus_sku: Literal["Standard", "Premium"] = Field(default="Standard", description="Service Bus tier")
    customer_managed_key: bool = Field(default=True, description="Key Vault key for Cosmos DB and Blob Storage")
    consistency: Literal["Session", "BoundedStaleness", "Strong"] = Field(
        default="Session", description="Cosmos DB default consistency level"
    )
    max_throughput: int = Field(default=1000, ge=1000, le=1_000_000, multiple_of=1000, description="RU/s max")
    vnet_cidr: str = Field(default="10.50.0.0/16", description="VNet address space (at least a /22)")
    log_retention_days: int = Field(default=30, ge=30, le=730, description="Log Analytics retention")

    @field_validator("vnet_cidr")
    @classmethod
    def _cidr(cls, value: str) -> str:
        try:
            network = ipaddress.ip_network(value)
        except ValueError as e:
            raise ValueError(f"{value!r} is not a CIDR block") from e
        if network.version != 4 or network.prefixlen > 22:
            raise ValueError("vnetCidr must be an IPv4 block of /22 or larger")
        return value
