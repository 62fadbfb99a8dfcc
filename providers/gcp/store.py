"""The gcp target's event and view store: a Firestore database (native mode), its composite indexes and exemptions.

The indexes and the fields left unindexed come from :mod:`skyferry.adapters.stores.firestore`.
Pessimistic concurrency (the adapter's gap-free ``read_all`` relies on it), point-in-time
recovery, delete protection, and the target's CMEK key, which Firestore requires in the
database's own location (:func:`kms_location`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

import pulumi
import pulumi_gcp as gcp

from providers.base import Platform
from providers.gcp.config import GcpConfig
from providers.gcp.network import Network
from skyferry.adapters.stores import firestore as firestore_adapter

if TYPE_CHECKING:
    from providers.gcp.identity import Identity


#: The Cloud KMS location of a key for a Firestore multi-region (a region's is the region).
FIRESTORE_MULTI_REGION_KMS: Final = {"nam5": "us", "eur3": "europe"}


def kms_location(firestore_location: str) -> str:
    """Where a CMEK key must be to encrypt a Firestore database in ``firestore_location``."""
    return FIRESTORE_MULTI_REGION_KMS.get(firestore_location, firestore_location)


def key_location(kms_key_name: str) -> str:
    """The location of a Cloud KMS key named ``projects/P/locations/L/keyRings/R/cryptoKeys/K``."""
    return kms_key_name.split("/")[3]


def store_url(project: str, database: str) -> str:
    """The app's ``firestore://`` URL."""
    return f"firestore://{project}/{database}"


def index_fields(index: firestore_adapter.CompositeIndex) -> list[Any]:
    """The ``fields`` of a ``gcp.firestore.Index`` for an adapter index (plus ``__name__``)."""
    fields = [{"field_path": path, "order": order} for path, order in index.fields]
    # Firestore appends __name__ in the direction of the last field; declaring it keeps
    # Pulumi's state equal to what the service reports (no perpetual diff).
    fields.append({"field_path": "__name__", "order": index.fields[-1][1]})
    return fields


@dataclass(frozen=True)
class Store:
    """The Firestore database and the app's ``firestore://`` URL."""

    database: gcp.firestore.Database
    url: pulumi.Output[str]


def declare_store(platform: Platform[GcpConfig], network: Network, identity: Identity) -> Store:
    """The database (``databaseId``, default ``<name>-events``), its composite indexes and exemptions."""
    name = platform.common.name
    project = network.project
    database_id = platform.section.database_id or f"{name}-events"
    location = platform.section.firestore_location or network.region
    protected = platform.common.deletion_protection
    database = gcp.firestore.Database(
        f"{name}-events",
        project=project,
        name=database_id,
        location_id=location,
        type="FIRESTORE_NATIVE",
        # The adapter's gap-free read_all relies on serializable transactions that lock
        # the head document: pessimistic concurrency is what Firestore native gives.
        concurrency_mode="PESSIMISTIC",
        app_engine_integration_mode="DISABLED",
        point_in_time_recovery_enablement="POINT_IN_TIME_RECOVERY_ENABLED",
        delete_protection_state="DELETE_PROTECTION_ENABLED" if protected else "DELETE_PROTECTION_DISABLED",
        deletion_policy="ABANDON" if protected else "DELETE",
        cmek_config={"kms_key_name": identity.key_name},
        opts=platform.child_opts(depends_on=[*network.apis, *identity.key_grants], protect=protected),
    )
    for index in firestore_adapter.COMPOSITE_INDEXES:
        gcp.firestore.Index(
            f"{name}-index-{index.collection}-{'-'.join(f'{p}-{o[:3].lower()}' for p, o in index.fields)}",
            project=project,
            database=database.name,
            collection=index.collection,
            query_scope=index.query_scope,
            api_scope="ANY_API",
            fields=index_fields(index),
            opts=platform.child_opts(),
        )
    for collection, field in firestore_adapter.UNINDEXED_FIELDS:
        gcp.firestore.Field(
            f"{name}-unindexed-{collection}-{field}",
            project=project,
            database=database.name,
            collection=collection,
            field=field,
            index_config={},  # an empty index config: no single-field index at all
            opts=platform.child_opts(),
        )
    return Store(database=database, url=database.name.apply(lambda db: store_url(project, db)))
