"""The GCP platform: ``skyferry:gcp:Platform``, composed of the target's role modules.

Every child is declared with ``parent=self`` by one step per role, in the order every
target composes them: :mod:`~providers.gcp.network` (the project, region and APIs),
:mod:`~providers.gcp.identity`, :mod:`~providers.gcp.store`, :mod:`~providers.gcp.broker`,
:mod:`~providers.gcp.archive`, the identity's grants, then :mod:`~providers.gcp.compute`.
The Firestore composite indexes and index exemptions, the Pub/Sub subscription and
dead-letter names and the roles of the app's service account come from the adapter modules
(:mod:`skyferry.adapters.stores.firestore`, :mod:`skyferry.adapters.brokers.pubsub`,
:mod:`skyferry.adapters.archives.gcs`), so the infrastructure cannot drift from what the app
expects.

Least privilege: the service account gets ``roles/datastore.user`` on the project under an
IAM condition naming the one database (Firestore has no per-database policy), Pub/Sub
roles on each topic and subscription, storage roles on the archive bucket, and secret
access on the API token only.  No project-wide Pub/Sub, Storage or Secret Manager role.
"""

from __future__ import annotations

from providers.base import Platform, StackConfig, StackConfigError, StandardOutputs
from providers.environment import AppUrls
from providers.gcp import archive, broker, compute, identity, network, store
from providers.gcp.config import GcpConfig


class GcpPlatform(Platform[GcpConfig]):
    """Firestore + Pub/Sub + Cloud Storage + Cloud Run, under one Cloud KMS key."""

    target = "gcp"
    config_model = GcpConfig

    @classmethod
    def validate(cls, config: StackConfig[GcpConfig]) -> None:
        """The sizes fit Cloud Run; the CMEK key is where Firestore and the bucket can use it."""
        compute.cloud_run_size(config.common.cpu_millicores, config.common.memory_mib)
        cls._validate_key_location(config.target)

    @staticmethod
    def _validate_key_location(section: GcpConfig) -> None:
        """One CMEK key encrypts Firestore and the archive bucket: both need it in their location.

        Firestore takes only a key in its own location (``nam5``: ``us``, ``eur3``: ``europe``),
        a bucket only one in the bucket's, and the bucket is in the region, where the created
        key ring is too; so Firestore stays in the region and a given ``kmsKeyName`` must be
        there.  Skipped while the region is unknown (:func:`network.declare_network` refuses that).
        """
        region = network.region_of(section)
        if region is None:
            return
        if section.firestore_location is not None and store.kms_location(section.firestore_location) != region:
            raise StackConfigError(
                "skyferry:gcp.firestoreLocation",
                f"Firestore in {section.firestore_location!r} needs its CMEK key in KMS location "
                f"{store.kms_location(section.firestore_location)!r}, but the stack's one key (created, or "
                f"kmsKeyName) encrypts the archive bucket too, which needs it in the region {region!r}: "
                f"drop firestoreLocation (Firestore then goes to {region!r} too)",
            )
        if section.kms_key_name is not None and store.key_location(section.kms_key_name) != region:
            raise StackConfigError(
                "skyferry:gcp.kmsKeyName",
                f"the key is in {store.key_location(section.kms_key_name)!r}, but Firestore and the archive "
                f"bucket in the region {region!r} need their CMEK key there: give a key in {region!r}",
            )

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
