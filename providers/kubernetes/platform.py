"""The kubernetes target's ComponentResource: the Helm chart wired to its store, broker and secrets.

Composed of the target's role modules, in the order every target composes them:
:mod:`~providers.kubernetes.network` (the cluster and namespace),
:mod:`~providers.kubernetes.identity`, :mod:`~providers.kubernetes.store`,
:mod:`~providers.kubernetes.broker`, :mod:`~providers.kubernetes.archive`, the identity's
grants (the credentials Secret), then :mod:`~providers.kubernetes.compute` (the release).
"""

from __future__ import annotations

from providers.base import Platform, StackConfig, StackConfigError, StandardOutputs
from providers.environment import AppUrls
from providers.kubernetes import archive, broker, compute, identity, network, store
from providers.kubernetes.config import KubernetesConfig


class KubernetesPlatform(Platform[KubernetesConfig]):
    """skyferry on Kubernetes: one Helm release of ``charts/skyferry`` (type ``skyferry:kubernetes:Platform``).

    The store and broker URLs (with credentials) go into a Secret the chart reads through
    ``existingSecret``; the release values never hold a credential.
    """

    target = "kubernetes"
    config_model = KubernetesConfig

    @classmethod
    def validate(cls, config: StackConfig[KubernetesConfig]) -> None:
        """External endpoints need their URL; the in-chart PostgreSQL and NATS need a secret password each;
        more than one worker needs an archive volume every node can mount (the chart refuses otherwise)."""
        kcfg = config.target
        if kcfg.postgres == "external" and kcfg.external_store_url is None:
            raise StackConfigError(
                "skyferry:kubernetes.externalStoreUrl", "required (as a secret) when postgres is external"
            )
        if kcfg.postgres == "in-chart" and config.common.database_password is None:
            raise StackConfigError("skyferry:databasePassword", "required (as a secret) for the in-chart PostgreSQL")
        if kcfg.nats == "in-chart" and kcfg.nats_password is None:
            raise StackConfigError(
                "skyferry:kubernetes.natsPassword",
                "required (as a secret: pulumi config set --secret --path) for the in-chart NATS, which lets in"
                " only its user with that password",
            )
        if kcfg.nats == "external" and kcfg.external_broker_url is None:
            raise StackConfigError("skyferry:kubernetes.externalBrokerUrl", "required when nats is external")
        if config.common.worker_replicas > 1 and kcfg.archive_access_mode != "ReadWriteMany":
            raise StackConfigError(
                "skyferry:kubernetes.archiveAccessMode",
                f"every worker pod mounts the archive volume, which {kcfg.archive_access_mode} attaches to one node:"
                f" skyferry:workerReplicas {config.common.worker_replicas} needs ReadWriteMany"
                " (from a skyferry:kubernetes.storageClass that provides it), or set skyferry:workerReplicas to 1",
            )

    def build(self) -> StandardOutputs:
        """Declare every role's resources, in the order shared by all targets; return the standard outputs."""
        where = network.declare_network(self)
        who = identity.declare_identity(self, where)
        events = store.declare_store(self, where, who)
        messages = broker.declare_broker(self, where, who)
        exports = archive.declare_archive(self, where, who)
        access = identity.grant_access(self, where, who, events, messages, exports)
        urls = AppUrls(store=events.secret_url, broker=messages.secret_url, archive=exports.url)
        app = compute.declare_compute(self, where, who, access, urls)
        return StandardOutputs(
            target=self.target,
            api_url=app.api_url,
            store_url=events.url,
            broker_url=messages.url,
            archive_url=exports.url,
            image=self.common.image,
        )
