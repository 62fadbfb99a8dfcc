"""The gcp target's archive: a Cloud Storage bucket for exports, under the prefix ``exports/``.

Uniform bucket-level access, public access prevented, versioned, encrypted with the
target's CMEK key, and the exports deleted after ``archiveRetentionDays``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import pulumi
import pulumi_gcp as gcp

from providers.base import Platform
from providers.gcp.config import GcpConfig
from providers.gcp.network import Network

if TYPE_CHECKING:
    from providers.gcp.identity import Identity

ARCHIVE_PREFIX = "exports"


@dataclass(frozen=True)
class Archive:
    """The bucket and the app's ``gs://`` archive URL."""

    bucket: gcp.storage.Bucket
    url: pulumi.Output[str]


def declare_archive(platform: Platform[GcpConfig], network: Network, identity: Identity) -> Archive:
    """The archive bucket ``<project>-<name>-archive`` in the region."""
    name = platform.common.name
    bucket = gcp.storage.Bucket(
        f"{name}-archive",
        project=network.project,
        name=f"{network.project}-{name}-archive",
        location=network.region,
        uniform_bucket_level_access=True,
        public_access_prevention="enforced",
        versioning={"enabled": True},
        encryption={"default_kms_key_name": identity.key_name},
        lifecycle_rules=[
            {
                "action": {"type": "Delete"},
                "condition": {"age": platform.common.archive_retention_days},
            },
            {
                "action": {"type": "Delete"},
                "condition": {"days_since_noncurrent_time": 30, "with_state": "ARCHIVED"},
            },
        ],
        force_destroy=False,
        labels=platform.tags(),
        opts=platform.child_opts(depends_on=[*network.apis, *identity.key_grants]),
    )
    return Archive(bucket=bucket, url=bucket.name.apply(lambda b: f"gs://{b}/{ARCHIVE_PREFIX}"))
