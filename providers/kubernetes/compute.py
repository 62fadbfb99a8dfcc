"""The kubernetes target's compute: one Helm release of ``charts/skyferry`` (api and worker Deployments, migration Job).

The release values hold sizes, replicas, the image and the in-chart services, never a
credential: the chart reads those from the credentials Secret (``existingSecret``).  The
chart's templates set the containers' ``SKYFERRY_*`` variables; ``tests/infra/test_environment.py``
checks them against :mod:`providers.environment`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pulumi_kubernetes as k8s

from providers.base import Platform
from providers.environment import AppUrls
from providers.kubernetes.broker import NATS_USER
from providers.kubernetes.config import KubernetesConfig
from providers.kubernetes.identity import Access, Identity
from providers.kubernetes.network import Network

CHART = Path(__file__).resolve().parent.parent.parent / "charts" / "skyferry"
API_PORT = 80


def split_image(image: str) -> dict[str, str]:
    """``registry/repo:tag`` or ``repo@sha256:…`` → the chart's ``image`` values."""
    repository, _, digest = image.partition("@")
    tag = ""
    last = repository.rsplit("/", 1)[-1]
    if ":" in last:
        repository, _, tag = repository.rpartition(":")
    return {"repository": repository, "tag": tag, "digest": digest}


@dataclass(frozen=True)
class Compute:
    """What the workloads expose: the API's base URL (the Ingress host, or the in-cluster Service)."""

    api_url: str


def declare_compute(
    platform: Platform[KubernetesConfig],
    network: Network,
    identity: Identity,
    access: Access,
    urls: AppUrls[Any],
) -> Compute:
    """The Helm release of the chart, after the namespace and the credentials Secret."""
    release = platform.common.name
    k8s.helm.v3.Release(
        release,
        name=release,
        chart=str(CHART),
        namespace=network.name,
        values=chart_values(platform, identity.secret_name, urls.archive),
        atomic=True,
        cleanup_on_fail=True,
        opts=network.opts(platform, access.credentials),
    )
    host = platform.section.ingress_host
    return Compute(api_url=f"https://{host}" if host else f"http://{release}-api.{network.svc}:{API_PORT}")


def chart_values(platform: Platform[KubernetesConfig], secret_name: str, archive_url: str) -> dict[str, Any]:
    """The release values: sizes, replicas, image, in-chart services; never a credential."""
    common = platform.common
    cfg = platform.section
    cpu = f"{common.cpu_millicores}m"
    memory = f"{common.memory_mib}Mi"
    resources = {"requests": {"cpu": cpu, "memory": memory}, "limits": {"cpu": cpu, "memory": memory}}
    storage_class = cfg.storage_class or ""
    return {
        "fullnameOverride": common.name,
        "image": split_image(common.image),
        "commonLabels": {k.replace("_", "-"): v for k, v in common.labels.items()},
        "existingSecret": secret_name,
        "podSecurityContext": {"runAsNonRoot": True, "runAsUser": 10001, "runAsGroup": 10001, "fsGroup": 10001},
        "api": {
            "replicaCount": common.api_replicas,
            "resources": resources,
            "autoscaling": {
                "enabled": common.api_max_replicas > common.api_replicas,
                "minReplicas": common.api_replicas,
                "maxReplicas": max(common.api_max_replicas, common.api_replicas),
            },
        },
        "worker": {"replicaCount": common.worker_replicas, "resources": resources},
        "ingress": {
            "enabled": bool(cfg.ingress_host),
            "host": cfg.ingress_host or "",
            "className": cfg.ingress_class_name or "",
        },
        "config": {"archiveUrl": archive_url},
        "archive": {  # mounted by the worker pods alone (where exports run)
            "persistence": {
                "enabled": True,
                "accessModes": [cfg.archive_access_mode],
                "size": f"{cfg.archive_storage_gib}Gi",
                "storageClass": storage_class,
            }
        },
        "postgresql": {
            "enabled": cfg.postgres == "in-chart",
            "persistence": {"size": f"{cfg.postgres_storage_gib}Gi", "storageClass": storage_class},
        },
        "nats": {
            "enabled": cfg.nats == "in-chart",
            "username": NATS_USER,  # the user of the broker URL (the password is the Secret's nats-password)
            "jetstream": {"storageSize": f"{cfg.nats_storage_gib}Gi", "storageClass": storage_class},
        },
    }
