"""The aws target's archive: an S3 bucket for exports, under the prefix ``exports/``.

Versioned, encrypted with the target's KMS key, public access blocked, owner-enforced,
TLS-only by its bucket policy, and the exports expired after ``archiveRetentionDays``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING

import pulumi
import pulumi_aws as aws

from providers.aws.config import AwsConfig
from providers.aws.network import Network
from providers.base import Platform

if TYPE_CHECKING:
    from providers.aws.identity import Identity

ARCHIVE_PREFIX = "exports"


@dataclass(frozen=True)
class Archive:
    """The bucket and the app's ``s3://`` archive URL."""

    bucket: aws.s3.Bucket
    url: pulumi.Output[str]


def declare_archive(platform: Platform[AwsConfig], network: Network, identity: Identity) -> Archive:
    """The archive bucket: versioned, KMS-encrypted, private, TLS only, exports expired after the retention."""
    name = platform.common.name
    key = identity.key
    bucket = aws.s3.Bucket(
        f"{name}-archive",
        bucket_prefix=f"{name}-archive-",
        force_destroy=False,
        tags=platform.tags(),
        opts=platform.child_opts(),
    )
    aws.s3.BucketVersioning(
        f"{name}-archive",
        bucket=bucket.id,
        versioning_configuration={"status": "Enabled"},
        opts=platform.child_opts(),
    )
    aws.s3.BucketServerSideEncryptionConfiguration(
        f"{name}-archive",
        bucket=bucket.id,
        rules=[
            {
                "apply_server_side_encryption_by_default": {
                    "sse_algorithm": "aws:kms",
                    "kms_master_key_id": key.arn,
                },
                "bucket_key_enabled": True,
            }
        ],
        opts=platform.child_opts(),
    )
    aws.s3.BucketPublicAccessBlock(
        f"{name}-archive",
        bucket=bucket.id,
        block_public_acls=True,
        block_public_policy=True,
        ignore_public_acls=True,
        restrict_public_buckets=True,
        opts=platform.child_opts(),
    )
    aws.s3.BucketOwnershipControls(
        f"{name}-archive",
        bucket=bucket.id,
        rule={"object_ownership": "BucketOwnerEnforced"},
        opts=platform.child_opts(),
    )
    aws.s3.BucketLifecycleConfiguration(
        f"{name}-archive",
        bucket=bucket.id,
        rules=[
            {
                "id": "expire-exports",
                "status": "Enabled",
                "filter": {"prefix": f"{ARCHIVE_PREFIX}/"},
                "expiration": {"days": platform.common.archive_retention_days},
                "noncurrent_version_expiration": {"noncurrent_days": 30},
                "abort_incomplete_multipart_upload": {"days_after_initiation": 2},
            }
        ],
        opts=platform.child_opts(),
    )
    aws.s3.BucketPolicy(
        f"{name}-archive",
        bucket=bucket.id,
        policy=bucket.arn.apply(
            lambda arn: json.dumps(
                {
                    "Version": "2012-10-17",
                    "Statement": [
                        {
                            "Sid": "TlsOnly",
                            "Effect": "Deny",
                            "Principal": {"AWS": "*"},
                            "Action": "s3:*",
                            "Resource": [arn, f"{arn}/*"],
                            "Condition": {"Bool": {"aws:SecureTransport": "false"}},
                        }
                    ],
                }
            )
        ),
        opts=platform.child_opts(),
    )
    # (a name known only after creation is None under mocks: show the logical name there)
    url = bucket.bucket.apply(lambda b: f"s3://{b or name + '-archive'}/{ARCHIVE_PREFIX}?region={network.region}")
    return Archive(bucket=bucket, url=url)
