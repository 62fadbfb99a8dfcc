"""The gcp target's network: the project and region the app runs in, and the APIs it needs there.

GCP needs no network of its own declared: Cloud Run and the managed services (Firestore,
Pub/Sub, Cloud Storage, Secret Manager, Cloud KMS) are reached over Google's.  What every
other resource stands on is the project, the region, and the services enabled in it.
"""

from __future__ import annotations

from dataclasses import dataclass

import pulumi
import pulumi_gcp as gcp

from providers.base import Platform, StackConfigError
from providers.gcp.config import GcpConfig

APIS = (
    "firestore.googleapis.com",
    "pubsub.googleapis.com",
    "run.googleapis.com",
    "artifactregistry.googleapis.com",
    "secretmanager.googleapis.com",
    "cloudkms.googleapis.com",
    "storage.googleapis.com",
    "iam.googleapis.com",
)


@dataclass(frozen=True)
class Network:
    """Where the app runs: the project, the region, and the enabled APIs (by service name)."""

    project: str
    region: str
    services: dict[str, gcp.projects.Service]

    @property
    def apis(self) -> list[gcp.projects.Service]:
        """Every enabled API: what a resource of one of them waits for."""
        return list(self.services.values())


def region_of(section: GcpConfig) -> str | None:
    """The region: ``skyferry:gcp.region``, else the provider's ``gcp:region`` (None when neither is set)."""
    return section.region or pulumi.Config("gcp").get("region")


def declare_network(platform: Platform[GcpConfig]) -> Network:
    """The project and region (``skyferry:gcp`` or the provider's keys, required) and the enabled APIs."""
    section = platform.section
    gcp_config = pulumi.Config("gcp")
    project = section.project or gcp_config.get("project")
    if not project:
        raise StackConfigError("gcp:project", "required: the project to deploy to (or skyferry:gcp.project)")
    region = region_of(section)
    if not region:
        raise StackConfigError("gcp:region", "required: the region to deploy to (or skyferry:gcp.region)")
    name = platform.common.name
    services = {
        api: gcp.projects.Service(
            f"{name}-api-{api.split('.')[0]}",
            project=project,
            service=api,
            disable_on_destroy=False,
            opts=platform.child_opts(),
        )
        for api in APIS
    }
    return Network(project=project, region=region, services=services)
