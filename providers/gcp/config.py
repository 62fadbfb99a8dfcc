"""Settings of the gcp target: the structured key ``skyferry:gcp``.

| key | default | meaning |
|---|---|---|
| ``project`` | ``gcp:project`` | the project to deploy to |
| ``projectNumber`` | required | the project's number: names the service agents that use the CMEK key |
| ``region`` | ``gcp:region`` | region of Cloud Run, the bucket, the KMS key ring and Artifact Registry |
| ``firestoreLocation`` | the region | Firestore location: the region only (see below) |
| ``databaseId`` | ``<name>-events`` | Firestore database id |
| ``kmsKeyName`` | — | an existing Cloud KMS key in the region for CMEK; none: a key ring and key are created there |
| ``allowUnauthenticated`` | true | let anyone reach the API URL (the API checks its bearer token) |

``projectNumber`` is what ``gcloud projects describe PROJECT --format='value(projectNumber)'``
prints; it also gives the API URL before the first deploy.

One CMEK key encrypts Firestore, the topics and the archive bucket.  Firestore takes only a
key in its own location (``nam5``: ``us``, ``eur3``: ``europe``) and a bucket only one in
the bucket's, which is the region: so the platform's ``validate`` refuses a
``firestoreLocation`` other than the region, and a ``kmsKeyName`` outside it.
"""

from __future__ import annotations

from pydantic import Field

from providers.base import TargetConfig


class GcpConfig(TargetConfig):
    """The gcp target's settings (``skyferry:gcp``)."""

    project: str | None = Field(default=None, pattern=r"^[a-z][a-z0-9-]{4,28}[a-z0-9]$", description="project id")
    project_number: str = Field(pattern=r"^\d{6,20}$", description="the project's number (service agents)")
    region: str | None = Field(default=None, pattern=r"^[a-z]+-[a-z]+\d$", description="region")
    firestore_location: str | None = Field(
        default=None, pattern=r"^[a-z0-9-]+$", description="Firestore location (the region)"
    )
    database_id: str | None = Field(
        default=None, pattern=r"^[a-z][a-z0-9-]{2,61}[a-z0-9]$", description="Firestore database id"
    )
    kms_key_name: str | None = Field(
        default=None,
        pattern=r"^projects/[^/]+/locations/[^/]+/keyRings/[^/]+/cryptoKeys/[^/]+$",
        description="existing Cloud KMS key (projects/…/cryptoKeys/…)",
    )
    allow_unauthenticated: bool = Field(default=True, description="public API URL (token-protected)")
