"""The kubernetes target's ComponentResource: the Helm chart wired to its store, broker and secrets."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import quote

import pulumi
import pulumi_kubernetes as k8s

from providers.base import Platform, StackConfig, StackConfigError, StandardOutputs
from providers.kubernetes.config import KubernetesConfig

CHART = Path(__file__).resolve().parent.parent.parent / "charts" / "skyferry"
API_PORT = 80
POSTGRES_PORT = 5432
NATS_PORT = 4222
STREAM = "skyferry"


def split_image(image: str) -> dict[str, str]:
    """``registry/repo:tag`` or ``repo@sha256:…`` → the chart's ``image`` values."""
    repository, _, digest = image.partition("@")
    tag = ""
    last = repository.rsplit("/", 1)[-1]
    if ":" in last:
        repository, _, tag = repository.rpartition(":")
    return {"repository": repository, "tag": tag, "digest": digest}


class KubernetesPlatform(Platform[KubernetesConfig]):
    """skyferry on Kubernetes: one Helm release of ``charts/skyferry`` (type ``skyferry:kubernetes:Platform``).

    The store and broker URLs (with credentials) go into a Secret the chart reads through
    ``existingSecret``; the release values never hold a credential.
    """

    target = "kubernetes"
    config_model = KubernetesConfig

    @classmethod
    def validate(cls, config: StackConfig[KubernetesConfig]) -> None:
        """External endpoints need their URL; the in-chart PostgreSQL needs a secret password."""
        kcfg = config.target
        if kcfg.postgres == "external" and kcfg.external_store_url is None:
            raise StackConfigError(
                "skyferry:kubernetes.externalStoreUrl", "required (as a secret) when postgres is external"
            )
        if kcfg.postgres == "in-chart" and config.common.database_password is None:
            raise StackConfigError("skyferry:databasePassword", "required (as a secret) for the in-chart PostgreSQL")
        if kcfg.nats == "external" and kcfg.external_broker_url is None:
            raise StackConfigError("skyferry:kubernetes.externalBrokerUrl", "required when nats is external")
        if config.common.store != "native":
            raise StackConfigError("skyferry:store", "the kubernetes target's native store is PostgreSQL: use 'native'")

    def build(self) -> StandardOutputs:
        """Namespace, credentials Secret, Helm release; returns the standard outputs."""
        cfg = self.section
        common = self.common
        release = common.name
        ns = cfg.namespace
        provider = k8s.Provider(f"{release}-k8s", context=cfg.context, opts=self.child_opts())
        opts = self.child_opts(provider=provider)
        namespace = k8s.core.v1.Namespace(f"{release}-ns", metadata={"name": ns, "labels": self.tags()}, opts=opts)
        in_ns = self.child_opts(provider=provider, depends_on=[namespace])

        svc = f"{ns}.svc.cluster.local"
        if cfg.postgres == "in-chart":
            host = f"{release}-postgresql.{svc}:{POSTGRES_PORT}"
            password = common.database_password.get_secret_value() if common.database_password else ""
            store_url_plain = f"postgresql://skyferry@{host}/skyferry"
            # percent-encoded: a password may hold @ / # % ? and still be one URL field
            store_url_secret = pulumi.Output.secret(f"postgresql://skyferry:{quote(password, safe='')}@{host}/skyferry")
        else:
            external = cfg.external_store_url.get_secret_value() if cfg.external_store_url else ""
            store_url_plain = _without_password(external)
            store_url_secret = pulumi.Output.secret(external)
            password = ""
        # bounded: the stream keeps brokerRetentionDays and at most 80 % of its volume, the oldest
        # messages dropped first, so JetStream never fills up and refuses the relay
        max_age = common.broker_retention_days * 24 * 3600
        broker_url = (
            f"nats://{release}-nats.{svc}:{NATS_PORT}/{STREAM}"
            f"?max_age={max_age}&max_bytes={cfg.nats_storage_gib * 2**30 * 4 // 5}"
            if cfg.nats == "in-chart"
            else str(cfg.external_broker_url)
        )
        archive_url = "file:///var/lib/skyferry/archive"
        secret_name = f"{release}-credentials"
        token = common.api_token.get_secret_value()
        secret_data: dict[str, Any] = {
            "store-url": store_url_secret,
            "broker-url": broker_url,
            "api-token": pulumi.Output.secret(token),
        }
        if password:
            secret_data["postgres-password"] = pulumi.Output.secret(password)
        credentials = k8s.core.v1.Secret(
            f"{release}-credentials",
            metadata={"name": secret_name, "namespace": ns, "labels": self.tags()},
            type="Opaque",
            string_data=secret_data,
            opts=in_ns,
        )
        values = self.chart_values(cfg, secret_name, archive_url)
        k8s.helm.v3.Release(
            release,
            name=release,
            chart=str(CHART),
            namespace=ns,
            values=values,
            atomic=True,
            cleanup_on_fail=True,
            opts=self.child_opts(provider=provider, depends_on=[namespace, credentials]),
        )
        api_url = f"https://{cfg.ingress_host}" if cfg.ingress_host else f"http://{release}-api.{svc}:{API_PORT}"
        return StandardOutputs(
            target=self.target,
            api_url=api_url,
            store_url=store_url_plain,
            broker_url=broker_url,
            archive_url=archive_url,
            image=common.image,
        )

    def chart_values(self, cfg: KubernetesConfig, secret_name: str, archive_url: str) -> dict[str, Any]:
        """The release values: sizes, replicas, image, in-chart services; never a credential."""
        common = self.common
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
            "archive": {
                "persistence": {"enabled": True, "size": f"{cfg.archive_storage_gib}Gi", "storageClass": storage_class}
            },
            "postgresql": {
                "enabled": cfg.postgres == "in-chart",
                "persistence": {"size": f"{cfg.postgres_storage_gib}Gi", "storageClass": storage_class},
            },
            "nats": {
                "enabled": cfg.nats == "in-chart",
                "jetstream": {"storageSize": f"{cfg.nats_storage_gib}Gi", "storageClass": storage_class},
            },
        }


def _without_password(url: str) -> str:
    """``url`` with the password removed from its user info (outputs never carry credentials)."""
    scheme, sep, rest = url.partition("://")
    if not sep or "@" not in rest.split("/", 1)[0]:
        return url
    userinfo, _, hostpart = rest.partition("@")
    return f"{scheme}://{userinfo.split(':', 1)[0]}@{hostpart}"
