"""The aws target's identity and secrets: the KMS key, the API token, and the tasks' roles.

:func:`declare_identity` creates what the data needs first: the customer-managed KMS key
(the table, topic, queues, bucket, logs and secret are encrypted with it) and the API token
in Secrets Manager.  :func:`grant_access` then creates the ECS execution role (pull the
image, read the token) and the task role, which allows exactly the actions the adapters
call, on exactly the ARNs they touch (:func:`task_role_policy`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import pulumi
import pulumi_aws as aws

from providers.aws.archive import ARCHIVE_PREFIX, Archive
from providers.aws.broker import Broker
from providers.aws.config import AwsConfig
from providers.aws.network import Network, account_of
from providers.aws.store import Store
from providers.base import Platform
from skyferry.adapters.archives import s3 as s3_adapter
from skyferry.adapters.brokers import sns_sqs
from skyferry.adapters.stores import dynamodb


def task_role_policy(
    table_arn: str,
    topic_arn: str,
    queue_arns: list[str],
    bucket_arn: str,
    key_arn: str,
) -> dict[str, Any]:
    """The task role's policy: the adapters' IAM actions, each on only the ARNs it touches."""
    return {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Sid": "EventAndViewStore",
                "Effect": "Allow",
                "Action": list(dynamodb.IAM_ACTIONS),
                "Resource": [table_arn, f"{table_arn}/index/{dynamodb.POSITION_INDEX}"],
            },
            {
                "Sid": "Publish",
                "Effect": "Allow",
                "Action": list(sns_sqs.IAM_ACTIONS_PUBLISH),
                "Resource": [topic_arn],
            },
            {
                "Sid": "Consume",
                "Effect": "Allow",
                "Action": list(sns_sqs.IAM_ACTIONS_CONSUME),
                "Resource": sorted(queue_arns),
            },
            {
                "Sid": "ArchiveObjects",
                "Effect": "Allow",
                "Action": list(s3_adapter.IAM_OBJECT_ACTIONS),
                "Resource": [f"{bucket_arn}/{ARCHIVE_PREFIX}/*"],
            },
            {
                # Listing is limited to the archive's prefix; a request without s3:prefix passes
                # (IfExists): S3 checks s3:ListBucket for a HeadObject/GetObject of a missing key
                # with no prefix in the context, and answers 404 (not 403) only when it is allowed.
                "Sid": "ArchiveList",
                "Effect": "Allow",
                "Action": list(s3_adapter.IAM_BUCKET_ACTIONS),
                "Resource": [bucket_arn],
                "Condition": {"StringLikeIfExists": {"s3:prefix": [f"{ARCHIVE_PREFIX}/*", ARCHIVE_PREFIX]}},
            },
            {
                "Sid": "EncryptedData",
                "Effect": "Allow",
                "Action": ["kms:Decrypt", "kms:GenerateDataKey"],
                "Resource": [key_arn],
            },
        ],
    }


@dataclass(frozen=True)
class Identity:
    """The KMS key every resource is encrypted with, and the API token's secret and its value."""

    key: aws.kms.Key
    secret: aws.secretsmanager.Secret
    token_version: aws.secretsmanager.SecretVersion


@dataclass(frozen=True)
class Access:
    """The ECS roles: the execution role (image, token) and the task role (the adapters' calls)."""

    execution_role: aws.iam.Role
    task_role: aws.iam.Role


def declare_identity(platform: Platform[AwsConfig], network: Network) -> Identity:
    """The customer-managed KMS key (with its policy and alias) and the API token in Secrets Manager."""
    name = platform.common.name
    key = _kms_key(platform, name, network.region)
    secret = aws.secretsmanager.Secret(
        f"{name}-api-token",
        name=f"{name}/api-token",
        kms_key_id=key.arn,
        recovery_window_in_days=7,
        tags=platform.tags(),
        opts=platform.child_opts(),
    )
    token = aws.secretsmanager.SecretVersion(
        f"{name}-api-token",
        secret_id=secret.id,
        secret_string=pulumi.Output.secret(platform.common.api_token.get_secret_value()),
        opts=platform.child_opts(),
    )
    return Identity(key=key, secret=secret, token_version=token)


def _kms_key(platform: Platform[AwsConfig], name: str, region: str) -> aws.kms.Key:
    def policy(key_arn: str) -> str:
        account_id = account_of(key_arn)
        root = f"arn:aws:iam::{account_id}:root"
        return json.dumps(
            {
                "Version": "2012-10-17",
                "Statement": [
                    {
                        "Sid": "AccountAdministers",
                        "Effect": "Allow",
                        "Principal": {"AWS": root},
                        "Action": [
                            "kms:Create*",
                            "kms:Describe*",
                            "kms:Enable*",
                            "kms:List*",
                            "kms:Put*",
                            "kms:Update*",
                            "kms:Revoke*",
                            "kms:Disable*",
                            "kms:Get*",
                            "kms:Delete*",
                            "kms:TagResource",
                            "kms:UntagResource",
                            "kms:ScheduleKeyDeletion",
                            "kms:CancelKeyDeletion",
                            "kms:Encrypt",
                            "kms:Decrypt",
                            "kms:ReEncrypt*",
                            "kms:GenerateDataKey*",
                            "kms:CreateGrant",
                        ],
                        "Resource": "*",
                    },
                    {
                        "Sid": "ServicesEncrypt",
                        "Effect": "Allow",
                        "Principal": {
                            "Service": ["sns.amazonaws.com", "sqs.amazonaws.com", f"logs.{region}.amazonaws.com"]
                        },
                        "Action": [
                            "kms:Decrypt",
                            "kms:GenerateDataKey*",
                            "kms:Encrypt",
                            "kms:ReEncrypt*",
                            "kms:Describe*",
                        ],
                        "Resource": "*",
                        "Condition": {"StringEquals": {"aws:SourceAccount": account_id}},
                    },
                ],
            }
        )

    key = aws.kms.Key(
        f"{name}-data",
        description=f"skyferry {name}: event store, broker, archive, logs and secrets",
        enable_key_rotation=True,
        deletion_window_in_days=30,
        tags=platform.tags(),
        opts=platform.child_opts(),
    )
    # a separate policy resource: the policy names the key's own account, read from its ARN
    aws.kms.KeyPolicy(f"{name}-data", key_id=key.key_id, policy=key.arn.apply(policy), opts=platform.child_opts())
    aws.kms.Alias(f"{name}-data", name=f"alias/{name}-data", target_key_id=key.key_id, opts=platform.child_opts())
    return key


def grant_access(
    platform: Platform[AwsConfig],
    network: Network,
    identity: Identity,
    store: Store,
    broker: Broker,
    archive: Archive,
) -> Access:
    """The execution role (the managed ECS policy, the token, the key) and the task role (:func:`task_role_policy`)."""
    name = platform.common.name
    key, secret = identity.key, identity.secret
    assume = json.dumps(
        {
            "Version": "2012-10-17",
            "Statement": [
                {
                    "Effect": "Allow",
                    "Principal": {"Service": "ecs-tasks.amazonaws.com"},
                    "Action": "sts:AssumeRole",
                }
            ],
        }
    )
    execution = aws.iam.Role(
        f"{name}-execution", assume_role_policy=assume, tags=platform.tags(), opts=platform.child_opts()
    )
    aws.iam.RolePolicyAttachment(
        f"{name}-execution",
        role=execution.name,
        policy_arn="arn:aws:iam::aws:policy/service-role/AmazonECSTaskExecutionRolePolicy",
        opts=platform.child_opts(),
    )
    aws.iam.RolePolicy(
        f"{name}-execution-secrets",
        role=execution.id,
        policy=pulumi.Output.all(secret.arn, key.arn).apply(
            lambda arns: json.dumps(
                {
                    "Version": "2012-10-17",
                    "Statement": [
                        {"Effect": "Allow", "Action": ["secretsmanager:GetSecretValue"], "Resource": [arns[0]]},
                        {"Effect": "Allow", "Action": ["kms:Decrypt"], "Resource": [arns[1]]},
                    ],
                }
            )
        ),
        opts=platform.child_opts(),
    )
    task = aws.iam.Role(f"{name}-task", assume_role_policy=assume, tags=platform.tags(), opts=platform.child_opts())
    queues = [queue for pair in broker.queues.values() for queue in pair]
    aws.iam.RolePolicy(
        f"{name}-task-data",
        role=task.id,
        policy=pulumi.Output.all(
            store.table.arn, broker.topic.arn, archive.bucket.arn, key.arn, *[q.arn for q in queues]
        ).apply(
            lambda arns: json.dumps(
                task_role_policy(
                    table_arn=arns[0], topic_arn=arns[1], bucket_arn=arns[2], key_arn=arns[3], queue_arns=arns[4:]
                )
            )
        ),
        opts=platform.child_opts(),
    )
    return Access(execution_role=execution, task_role=task)
