"""Settings of the kubernetes target: the structured key ``skyferry:kubernetes``.

| key | default | meaning |
|---|---|---|
| ``context`` | current context | kubeconfig context to deploy to |
| ``namespace`` | ``skyferry`` | namespace of the release (created) |
| ``postgres`` | ``in-chart`` | ``in-chart`` StatefulSet, or ``external`` (then ``externalStoreUrl``) |
| ``externalStoreUrl`` | — | secret: ``postgresql://user:pw@host:5432/db`` when postgres is external |
| ``nats`` | ``in-chart`` | ``in-chart`` JetStream StatefulSet, or ``external`` (then ``externalBrokerUrl``) |
| ``externalBrokerUrl`` | — | ``nats://host:4222/STREAM`` when nats is external |
| ``natsPassword`` | — | secret: password of the in-chart NATS's user, required when nats is in-chart (below) |
| ``ingressHost`` | — | public host name of the API (Ingress with TLS); none: in-cluster URL only |
| ``ingressClassName`` | — | IngressClass of the Ingress |
| ``storageClass`` | cluster default | StorageClass of every PersistentVolumeClaim |
| ``postgresStorageGib`` | 10 | PostgreSQL volume, GiB |
| ``natsStorageGib`` | 5 | JetStream volume, GiB |
| ``archiveStorageGib`` | 10 | export archive volume, GiB |
| ``archiveAccessMode`` | ``ReadWriteOnce`` | of the archive volume; ``ReadWriteMany`` for more than one worker |

Only the worker pods mount the archive volume (exports run there).  A ``ReadWriteOnce`` volume
attaches to one node, so it allows one worker: the stack refuses ``workerReplicas`` above 1
without ``ReadWriteMany``.

The in-chart nats-server reads ``natsPassword`` from its environment through its config
parser, which misreads a value holding ``#``, ``,``, ``;``, ``}`` or a space, or looking like a
number or a date: the password is 16 or more letters, digits, ``-`` or ``_``, beginning with a
letter (``n$(openssl rand -hex 24)`` is one).
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, SecretStr, field_validator

from providers.base import TargetConfig
from providers.stackfile import SECRET_PLACEHOLDER

_DNS_LABEL = r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$"
#: What nats-server's config parser reads back unchanged from an environment variable.
NATS_PASSWORD = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{15,}$")


class KubernetesConfig(TargetConfig):
    """The kubernetes target's settings (``skyferry:kubernetes``)."""

    context: str | None = Field(default=None, min_length=1, description="kubeconfig context")
    namespace: str = Field(default="skyferry", pattern=_DNS_LABEL, description="namespace of the release")
    postgres: Literal["in-chart", "external"] = Field(default="in-chart", description="where PostgreSQL runs")
    external_store_url: SecretStr | None = Field(default=None, description="external PostgreSQL URL (secret)")
    nats: Literal["in-chart", "external"] = Field(default="in-chart", description="where NATS JetStream runs")
    external_broker_url: str | None = Field(
        default=None, pattern=r"^nats://[^\s@]+$", description="external NATS URL (no credentials)"
    )
    nats_password: SecretStr | None = Field(default=None, description="password of the in-chart NATS (secret)")
    ingress_host: str | None = Field(
        default=None, pattern=r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$", description="public API host name"
    )
    ingress_class_name: str | None = Field(default=None, pattern=_DNS_LABEL, description="IngressClass")
    storage_class: str | None = Field(default=None, pattern=_DNS_LABEL, description="StorageClass of volumes")
    postgres_storage_gib: int = Field(default=10, ge=1, le=10000, description="PostgreSQL volume, GiB")
    nats_storage_gib: int = Field(default=5, ge=1, le=10000, description="JetStream volume, GiB")
    archive_storage_gib: int = Field(default=10, ge=1, le=100000, description="archive volume, GiB")
    archive_access_mode: Literal["ReadWriteOnce", "ReadWriteMany"] = Field(
        default="ReadWriteOnce", description="access mode of the archive volume (ReadWriteMany: several workers)"
    )

    @field_validator("nats_password")
    @classmethod
    def _nats_can_read(cls, value: SecretStr | None) -> SecretStr | None:
        """A password nats-server reads back as it is (an encrypted value read offline stands for a good one)."""
        if value is None or value.get_secret_value() == SECRET_PLACEHOLDER:
            return value
        if not NATS_PASSWORD.match(value.get_secret_value()):
            raise ValueError(
                "16 or more letters, digits, - or _, beginning with a letter (nats-server reads it through its"
                " config parser, which misreads other characters)"
            )
        return value
