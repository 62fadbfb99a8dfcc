"""The gcp target's compute: the Cloud Run service api, the Cloud Run worker pool worker, and their registry.

Both run as the app's service account with the environment of :mod:`providers.environment`;
only the api reads the token, from Secret Manager.  The api listens on ``$PORT``
(:data:`API_PORT`), is autoscaled and probed on ``/healthz``, and is public when
``allowUnauthenticated`` (the API checks its bearer token); the worker is probed on its
health port, answered from its heartbeat.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pulumi
import pulumi_gcp as gcp

from providers.base import Platform, StackConfigError
from providers.environment import AppUrls, api_environment, worker_environment
from providers.gcp.config import GcpConfig
from providers.gcp.identity import Access, Identity, mark_secret
from providers.gcp.network import Network

API_PORT = 8000
WORKER_HEALTH_PORT = 8080
#: CPU counts Cloud Run accepts with CPU always allocated (a worker pool; below 1 CPU a service
#: must throttle between requests and serve one at a time), the memory each needs at least, and
#: the most each may have (above 4 GiB at least 2 CPUs, above 8 GiB 4, above 16 GiB 6, above
#: 24 GiB 8; 32 GiB at most).
CLOUD_RUN_CPUS = (1, 2, 4, 6, 8)
_CLOUD_RUN_MIN_MEMORY_MIB = {1: 512, 2: 512, 4: 2048, 6: 4096, 8: 4096}
_CLOUD_RUN_MAX_MEMORY_MIB = {1: 4096, 2: 8192, 4: 16384, 6: 24576, 8: 32768}


def cloud_run_size(cpu_millicores: int, memory_mib: int) -> tuple[str, int]:
    """The smallest Cloud Run size at least as big as asked: CPUs and memory.

    The CPU count is the smallest that covers ``cpu_millicores`` and may have ``memory_mib``
    (large memory raises the CPUs); memory is raised to that count's minimum.  Memory no CPU
    count may have (above 32 GiB) is a :class:`StackConfigError` naming ``skyferry:memoryMib``.
    """
    cpus = next(
        (c for c in CLOUD_RUN_CPUS if c * 1000 >= cpu_millicores and _CLOUD_RUN_MAX_MEMORY_MIB[c] >= memory_mib),
        None,
    )
    if cpus is None:
        raise StackConfigError(
            "skyferry:memoryMib",
            f"{memory_mib} MiB with {cpu_millicores} millicores is no size Cloud Run offers "
            f"(at most {CLOUD_RUN_CPUS[-1]} CPUs and {_CLOUD_RUN_MAX_MEMORY_MIB[CLOUD_RUN_CPUS[-1]]} MiB)",
        )
    return str(cpus), max(memory_mib, _CLOUD_RUN_MIN_MEMORY_MIB[cpus])


@dataclass(frozen=True)
class Compute:
    """What the workloads expose: the API's base URL (the Cloud Run service's)."""

    api_url: pulumi.Output[str]


def declare_compute(
    platform: Platform[GcpConfig],
    network: Network,
    identity: Identity,
    access: Access,
    urls: AppUrls[pulumi.Output[str]],
) -> Compute:
    """The image repository, the api service (public when allowed) and the worker pool."""
    name = platform.common.name
    gcp.artifactregistry.Repository(
        f"{name}-images",
        project=network.project,
        location=network.region,
        repository_id=name,
        format="DOCKER",
        description="skyferry images",
        docker_config={"immutable_tags": True},
        labels=platform.tags(),
        # only its own API: `pulumi up --target` can create the registry alone, before the image
        opts=platform.child_opts(depends_on=[network.services["artifactregistry.googleapis.com"]]),
    )
    api = _api(platform, network, identity, urls)
    _worker(platform, network, identity, urls)
    if platform.section.allow_unauthenticated:
        gcp.cloudrunv2.ServiceIamMember(
            f"{name}-api-public",
            project=network.project,
            location=network.region,
            name=api.name,
            role="roles/run.invoker",
            member="allUsers",
            opts=platform.child_opts(),
        )
    # The API's URL: the service's `uri`, else its deterministic URL
    # https://SERVICE-PROJECT_NUMBER.REGION.run.app (known before the first deploy).
    fallback = f"https://{name}-api-{platform.section.project_number}.{network.region}.run.app"
    api_url: pulumi.Output[str] = api.uri.apply(lambda uri: (uri or fallback).rstrip("/"))
    return Compute(api_url=api_url)


def _resources(platform: Platform[GcpConfig]) -> dict[str, Any]:
    """CPU and memory limits Cloud Run accepts (see :func:`cloud_run_size`)."""
    cpu, memory = cloud_run_size(platform.common.cpu_millicores, platform.common.memory_mib)
    return {"cpu": cpu, "memory": f"{memory}Mi"}


def _api(
    platform: Platform[GcpConfig], network: Network, identity: Identity, urls: AppUrls[pulumi.Output[str]]
) -> gcp.cloudrunv2.Service:
    """The API: a Cloud Run v2 service on ``$PORT`` (8000), autoscaled, probed on ``/healthz``."""
    name = platform.common.name
    common = platform.common
    env = api_environment(urls, port=API_PORT)  # SKYFERRY_PORT = $PORT, which Cloud Run sets to API_PORT
    envs: list[dict[str, Any]] = [{"name": k, "value": v} for k, v in env.urls.items()]
    if env.secret:
        envs.append(
            {
                "name": env.secret,
                "value_source": {
                    "secret_key_ref": {"secret": mark_secret(identity.secret.secret_id), "version": "latest"}
                },
            }
        )
    envs += [{"name": k, "value": v} for k, v in env.process.items()]
    container: dict[str, Any] = {
        "image": common.image,
        "args": ["serve"],
        "envs": envs,
        # Cloud Run sets $PORT to the container port; serve binds SKYFERRY_PORT, 8000 by default
        "ports": {"container_port": API_PORT},
        "resources": {"limits": _resources(platform), "cpu_idle": True, "startup_cpu_boost": True},
        "startup_probe": {"http_get": {"path": "/healthz"}, "period_seconds": 5, "failure_threshold": 24},
        "liveness_probe": {"http_get": {"path": "/healthz"}},
    }
    minimum, maximum = common.api_replicas, max(common.api_replicas, common.api_max_replicas)
    template: Any = {
        "service_account": identity.account.email,
        "scaling": {"min_instance_count": minimum, "max_instance_count": maximum},
        "max_instance_request_concurrency": 80,
        "containers": [container],
    }
    return gcp.cloudrunv2.Service(
        f"{name}-api",
        project=network.project,
        location=network.region,
        name=f"{name}-api",
        ingress="INGRESS_TRAFFIC_ALL",
        deletion_protection=False,
        labels=platform.tags(**{"skyferry-role": "api"}),
        template=template,
        opts=platform.child_opts(depends_on=network.apis),
    )


def _worker(
    platform: Platform[GcpConfig], network: Network, identity: Identity, urls: AppUrls[pulumi.Output[str]]
) -> gcp.cloudrunv2.WorkerPool:
    """The worker: a Cloud Run worker pool (no port, no request-driven scaling, CPU always on).

    It pulls from the store and the broker and serves no traffic, which is what worker pools
    are for: a service would have to listen on ``$PORT`` and pass a startup probe.  Its
    probes ask the worker's heartbeat over HTTP (``SKYFERRY_HEALTH_PORT``), so a hung worker
    is restarted.  The API token is not given to it: the worker never serves the API.
    """
    name = platform.common.name
    env = worker_environment(urls, health_port=WORKER_HEALTH_PORT)
    envs: list[dict[str, Any]] = [{"name": k, "value": v} for k, v in {**env.urls, **env.process}.items()]
    probe = {"http_get": {"path": "/healthz", "port": WORKER_HEALTH_PORT}}
    container: dict[str, Any] = {
        "image": platform.common.image,
        "args": ["worker"],
        "envs": envs,
        "resources": {"limits": _resources(platform)},
        "startup_probe": {**probe, "period_seconds": 5, "failure_threshold": 24},
        "liveness_probe": {**probe, "period_seconds": 30, "timeout_seconds": 10, "failure_threshold": 3},
    }
    return gcp.cloudrunv2.WorkerPool(
        f"{name}-worker",
        project=network.project,
        location=network.region,
        name=f"{name}-worker",
        deletion_protection=False,
        labels=platform.tags(**{"skyferry-role": "worker"}),
        scaling={"scaling_mode": "MANUAL", "manual_instance_count": platform.common.worker_replicas},
        template={"service_account": identity.account.email, "containers": [container]},
        opts=platform.child_opts(depends_on=network.apis),
    )
