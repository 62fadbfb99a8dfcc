"""The azure target's compute: the Container Apps api and worker, their registry and their logs.

A Container Apps environment on the VNet's apps subnet (logs to Log Analytics through a
diagnostic setting), the registry ``acr<suffix>.azurecr.io`` the apps pull from as their
identity, the api with external HTTPS ingress and probes ``/healthz`` and ``/readyz``, and
the worker with HTTP probes on its health port (answered from its heartbeat).  Both run as
the app identity with the environment of :mod:`providers.environment`; only the api reads
the token, from Key Vault.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

import pulumi
from pulumi_azure_native import app, containerregistry, monitor, operationalinsights

from providers.azure.config import AzureConfig
from providers.azure.identity import API_TOKEN_SECRET, Access, Identity, assign
from providers.azure.network import Network
from providers.base import Platform, StackConfigError
from providers.environment import AppUrls, api_environment, worker_environment

API_PORT: Final = 8000
WORKER_HEALTH_PORT: Final = 8080

#: CPU (millicores) of the consumption profile's pairs, each with 2 GiB of memory a core
#: (0.25/0.5Gi to 2/4Gi, and up to 4/8Gi on the consumption workload profile).
_CPU_STEPS: Final = (250, 500, 750, 1000, 1250, 1500, 1750, 2000, 2500, 3000, 3500, 4000)


def container_resources(cpu_millicores: int, memory_mib: int) -> tuple[float, str]:
    """Container Apps (consumption) CPU and memory: the smallest pair at least as big as asked.

    Memory is 2 GiB a core, so the CPU is raised until the memory holds ``memory_mib``
    (``container_resources(500, 4096)`` is ``(2.0, "4Gi")``); more than the largest pair,
    4 cores and 8 GiB, is a :class:`StackConfigError` naming the key.
    """
    millicores = next((m for m in _CPU_STEPS if m >= cpu_millicores and m * 2048 >= memory_mib * 1000), None)
    if millicores is None:
        key, asked = (
            ("skyferry:cpuMillicores", f"{cpu_millicores} millicores")
            if cpu_millicores > _CPU_STEPS[-1]
            else ("skyferry:memoryMib", f"{memory_mib} MiB")
        )
        raise StackConfigError(
            key, f"{asked} is more than Container Apps' largest consumption size (4 cores, 8 GiB = 8192 MiB)"
        )
    return millicores / 1000, f"{millicores * 2 / 1000:g}Gi"


def registry_name(compact: str) -> str:
    """The container registry's name: ``acr`` + the stack's compact name (5-50 letters and digits)."""
    return f"acr{compact}"[:50]


@dataclass(frozen=True)
class Compute:
    """What the workloads expose: the API's base URL (its Container App's HTTPS domain)."""

    api_url: pulumi.Output[str]


def declare_compute(
    platform: Platform[AzureConfig],
    network: Network,
    identity: Identity,
    access: Access,
    urls: AppUrls[pulumi.Output[str]],
) -> Compute:
    """Log Analytics, the registry (pulled as the app identity), the environment and the api and worker apps."""
    name = platform.common.name
    app_identity = identity.app
    workspace = operationalinsights.Workspace(
        f"{name}-logs",
        resource_group_name=network.group.name,
        location=network.location,
        sku={"name": "PerGB2018"},
        retention_in_days=platform.section.log_retention_days,
        tags=platform.tags(),
        opts=platform.child_opts(),
    )
    # Its name is in `skyferry plan` (registryName), so the image can be pushed after
    # `pulumi up --target` created the registry alone and before the apps are created.
    registry = containerregistry.Registry(
        f"{name}-acr",
        registry_name=registry_name(network.compact),
        resource_group_name=network.group.name,
        location=network.location,
        sku={"name": "Standard"},
        admin_user_enabled=False,
        anonymous_pull_enabled=False,
        tags=platform.tags(),
        opts=platform.child_opts(),
    )
    acr_pull = assign(platform, "acr-pull", identity.client, registry.id, app_identity, "AcrPull")
    environment = app.ManagedEnvironment(
        f"{platform.common.name}-env",
        resource_group_name=network.group.name,
        location=network.location,
        # Logs go to Log Analytics through a diagnostic setting: no workspace key to hold.
        app_logs_configuration={"destination": "azure-monitor"},
        vnet_configuration={"infrastructureSubnetId": network.apps_subnet.id, "internal": False},
        workload_profiles=[{"name": "Consumption", "workloadProfileType": "Consumption"}],
        zone_redundant=False,
        tags=platform.tags(),
        opts=platform.child_opts(),
    )
    monitor.DiagnosticSetting(
        f"{platform.common.name}-env-logs",
        resource_uri=environment.id,
        workspace_id=workspace.id,
        logs=[{"categoryGroup": "allLogs", "enabled": True}],
        metrics=[{"category": "AllMetrics", "enabled": True}],
        opts=platform.child_opts(),
    )
    cpu, memory = container_resources(platform.common.cpu_millicores, platform.common.memory_mib)
    api_env = api_environment(urls, port=API_PORT)
    # probes are HTTP only: the worker answers them from its heartbeat
    worker_env = worker_environment(urls, health_port=WORKER_HEALTH_PORT)
    # only the API serves requests: only it reads the token
    token = {
        "name": "api-token",
        "keyVaultUrl": pulumi.Output.concat(identity.vault_uri, "secrets/", API_TOKEN_SECRET),
        "identity": app_identity.id,
    }
    env: dict[str, list[dict[str, Any]]] = {}
    for role, container_env in (("api", api_env), ("worker", worker_env)):
        env[role] = [
            *({"name": k, "value": v} for k, v in container_env.urls.items()),
            {"name": "AZURE_CLIENT_ID", "value": app_identity.client_id},
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
        ("api", platform.common.api_replicas, max(platform.common.api_max_replicas, platform.common.api_replicas)),
        ("worker", platform.common.worker_replicas, platform.common.worker_replicas),
    ):
        apps[role] = app.ContainerApp(
            f"{platform.common.name}-{role}",
            container_app_name=f"{platform.common.name}-{role}",
            resource_group_name=network.group.name,
            location=network.location,
            managed_environment_id=environment.id,
            workload_profile_name="Consumption",
            identity={"type": "UserAssigned", "userAssignedIdentities": [app_identity.id]},
            configuration={
                "activeRevisionsMode": "Single",
                "registries": [{"server": registry.login_server, "identity": app_identity.id}],
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
                        "image": platform.common.image,
                        "args": ["serve"] if role == "api" else ["worker"],
                        "env": env[role],
                        "resources": {"cpu": cpu, "memory": memory},
                        "probes": probes[role],
                    }
                ],
                "scale": {"minReplicas": minimum, "maxReplicas": maximum},
            },
            tags=platform.tags(**{"skyferry-role": role}),
            opts=platform.child_opts(depends_on=[*access.assignments, acr_pull]),
        )
    api_url = pulumi.Output.all(environment.default_domain, apps["api"].name).apply(
        lambda parts: f"https://{parts[1]}.{parts[0] or 'containerapps.invalid'}"
    )
    return Compute(api_url=api_url)
