"""The AWS platform: ``skyferry:aws:Platform``.

Every child is declared with ``parent=self``.  The DynamoDB table's keys and index, the
queue names and the IAM actions come from the adapter modules
(:mod:`skyferry.adapters.stores.dynamodb`, :mod:`skyferry.adapters.brokers.sns_sqs`,
:mod:`skyferry.adapters.archives.s3`), so the infrastructure cannot drift from what the app
expects.  The task role gets exactly the actions the adapters call, on exactly the ARNs
they touch (see :func:`task_role_policy`).
"""

from __future__ import annotations

import functools
import json
import math
from typing import Any

import pulumi
import pulumi_aws as aws

from providers.aws.config import AwsConfig
from providers.base import Platform, StackConfig, StackConfigError, StandardOutputs
from providers.environment import AppUrls, api_environment, worker_environment
from providers.policies import PLAIN_HTTP_OPT_IN, PLAIN_HTTP_TAG
from skyferry.adapters.archives import s3 as s3_adapter
from skyferry.adapters.brokers import sns_sqs
from skyferry.adapters.stores import dynamodb
from skyferry.ledger import CONSUMER_GROUPS, MAX_DELIVERIES

API_PORT = 8000
ARCHIVE_PREFIX = "exports"

RUN_AS_USER = "10001"
_FARGATE_CPU = (256, 512, 1024, 2048, 4096)
_FARGATE_MEMORY = {256: (512, 2048), 512: (1024, 4096), 1024: (2048, 8192), 2048: (4096, 16384), 4096: (8192, 30720)}


def fargate_size(cpu_millicores: int, memory_mib: int) -> tuple[int, int]:
    """The smallest valid Fargate (cpu units, memory MiB) at least as big as asked."""
    units = next((c for c in _FARGATE_CPU if c >= math.ceil(cpu_millicores * 1.024)), _FARGATE_CPU[-1])
    low, high = _FARGATE_MEMORY[units]
    step = 1024 if units > 256 or memory_mib > 512 else 512
    memory = max(low, min(high, math.ceil(memory_mib / step) * step))
    return units, memory


def account_of(arn: str) -> str:
    """The account id field of an ARN (empty when the ARN has none, as under mocks)."""
    parts = arn.split(":")
    return parts[4] if len(parts) > 5 else ""


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


class AwsPlatform(Platform[AwsConfig]):
    """DynamoDB + SNS/SQS FIFO + S3 + ECS Fargate behind an ALB, all under one KMS key."""

    target = "aws"
    config_model = AwsConfig

    @classmethod
    def validate(cls, config: StackConfig[AwsConfig]) -> None:
        """TLS by default: a certificate, unless plain HTTP is chosen explicitly."""
        section = config.target
        if section.certificate_arn is None and not section.plain_http:
            raise StackConfigError(
                "skyferry:aws.certificateArn",
                "required: the ALB serves the API over HTTPS with this ACM certificate "
                "(or set skyferry:aws.plainHttp to true to serve plain HTTP, not recommended)",
            )
        if section.certificate_arn is not None and section.plain_http:
            raise StackConfigError("skyferry:aws.plainHttp", "true, but certificateArn is given: choose one")

    def build(self) -> StandardOutputs:
        """Declare every resource (see the package docstring) and return the standard outputs."""
        section = self.section
        region = pulumi.Config("aws").get("region")
        if not region:
            raise StackConfigError("aws:region", "required: the region to deploy to (pulumi config set aws:region ...)")
        self.region = region
        name = self.common.name
        key = self._kms_key(name)
        table = self._table(name, key)
        topic, queues = self._broker(name, key)
        account = topic.arn.apply(account_of)
        bucket = self._bucket(name, key)
        repository = aws.ecr.Repository(
            f"{name}-images",
            name=f"{name}",
            image_tag_mutability="IMMUTABLE",
            image_scanning_configuration={"scan_on_push": True},
            encryption_configurations=[{"encryption_type": "KMS", "kms_key": key.arn}],
            tags=self.tags(),
            opts=self.child_opts(),
        )
        self.repository = repository
        secret = aws.secretsmanager.Secret(
            f"{name}-api-token",
            name=f"{name}/api-token",
            kms_key_id=key.arn,
            recovery_window_in_days=7,
            tags=self.tags(),
            opts=self.child_opts(),
        )
        token = aws.secretsmanager.SecretVersion(
            f"{name}-api-token",
            secret_id=secret.id,
            secret_string=pulumi.Output.secret(self.common.api_token.get_secret_value()),
            opts=self.child_opts(),
        )
        self.token_version = token
        logs = {
            role: aws.cloudwatch.LogGroup(
                f"{name}-{role}",
                name=f"/skyferry/{name}/{role}",
                retention_in_days=section.log_retention_days,
                kms_key_id=key.arn,
                tags=self.tags(),
                opts=self.child_opts(),
            )
            for role in ("api", "worker")
        }

        store_url = pulumi.Output.concat("dynamodb://", table.name, f"?region={region}")
        broker_url = pulumi.Output.concat(
            "sns+sqs://",
            topic.name,
            f"?region={region}&account=",
            account,
        )
        # (a name known only after creation is None under mocks: show the logical name there)
        archive_url = bucket.bucket.apply(lambda b: f"s3://{b or name + '-archive'}/{ARCHIVE_PREFIX}?region={region}")
        execution_role, task_role = self._roles(name, key, table, topic, queues, bucket, secret)
        vpc_id, public_subnets, private_subnets = self._network(name)
        api_url = self._compute(
            name,
            vpc_id,
            public_subnets,
            private_subnets,
            execution_role,
            task_role,
            logs,
            secret,
            AppUrls(store=store_url, broker=broker_url, archive=archive_url),
        )
        return StandardOutputs(
            target="aws",
            api_url=api_url,
            store_url=store_url,
            broker_url=broker_url,
            archive_url=archive_url,
            image=self.common.image,
        )

    # --- data -------------------------------------------------------------------------------

    def _kms_key(self, name: str) -> aws.kms.Key:
        region = self.region

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
            tags=self.tags(),
            opts=self.child_opts(),
        )
        # a separate policy resource: the policy names the key's own account, read from its ARN
        aws.kms.KeyPolicy(f"{name}-data", key_id=key.key_id, policy=key.arn.apply(policy), opts=self.child_opts())
        aws.kms.Alias(f"{name}-data", name=f"alias/{name}-data", target_key_id=key.key_id, opts=self.child_opts())
        return key

    def _table(self, name: str, key: aws.kms.Key) -> aws.dynamodb.Table:
        """The event + view store table, from the adapter's own key schema and index."""
        keys = {k["KeyType"]: k["AttributeName"] for k in dynamodb.KEY_SCHEMA}
        table = aws.dynamodb.Table(
            f"{name}-events",
            name=f"{name}-events",
            billing_mode="PAY_PER_REQUEST",
            hash_key=keys["HASH"],
            range_key=keys["RANGE"],
            attributes=[
                {"name": a["AttributeName"], "type": a["AttributeType"]} for a in dynamodb.ATTRIBUTE_DEFINITIONS
            ],
            global_secondary_indexes=[
                {
                    "name": index["IndexName"],
                    "hash_key": next(k["AttributeName"] for k in index["KeySchema"] if k["KeyType"] == "HASH"),
                    "range_key": next(k["AttributeName"] for k in index["KeySchema"] if k["KeyType"] == "RANGE"),
                    "projection_type": index["Projection"]["ProjectionType"],
                }
                for index in dynamodb.GLOBAL_SECONDARY_INDEXES
            ],
            point_in_time_recovery={"enabled": True},
            server_side_encryption={"enabled": True, "kms_key_arn": key.arn},
            deletion_protection_enabled=self.common.deletion_protection,
            tags=self.tags(**{"skyferry-role": "event-store"}),
            opts=self.child_opts(protect=self.common.deletion_protection),
        )
        self.table = table
        return table

    def _broker(self, name: str, key: aws.kms.Key) -> tuple[aws.sns.Topic, list[aws.sqs.Queue]]:
        topic_name = sns_sqs.topic_name(f"{name}-events")
        topic = aws.sns.Topic(
            f"{name}-events",
            name=topic_name,
            fifo_topic=True,
            content_based_deduplication=False,
            kms_master_key_id=key.arn,
            tags=self.tags(),
            opts=self.child_opts(),
        )
        queues: list[aws.sqs.Queue] = []
        self.queues: dict[str, tuple[aws.sqs.Queue, aws.sqs.Queue]] = {}
        for group in CONSUMER_GROUPS:
            queue_name, dead_name = sns_sqs.queue_names(topic_name, group)
            dead = aws.sqs.Queue(
                f"{name}-{group}-dlq",
                name=dead_name,
                fifo_queue=True,
                content_based_deduplication=False,
                message_retention_seconds=14 * 24 * 3600,
                kms_master_key_id=key.arn,
                tags=self.tags(),
                opts=self.child_opts(),
            )
            queue = aws.sqs.Queue(
                f"{name}-{group}",
                name=queue_name,
                fifo_queue=True,
                content_based_deduplication=False,
                deduplication_scope="messageGroup",
                fifo_throughput_limit="perMessageGroupId",
                visibility_timeout_seconds=60,
                message_retention_seconds=self.common.broker_retention_days * 24 * 3600,
                kms_master_key_id=key.arn,
                redrive_policy=dead.arn.apply(
                    lambda arn: json.dumps(
                        {
                            "deadLetterTargetArn": arn,
                            "maxReceiveCount": sns_sqs.redrive_receive_count(MAX_DELIVERIES),
                        }
                    )
                ),
                tags=self.tags(),
                opts=self.child_opts(),
            )
            aws.sqs.QueuePolicy(
                f"{name}-{group}",
                queue_url=queue.url,
                policy=pulumi.Output.all(queue.arn, topic.arn).apply(
                    lambda arns: json.dumps(
                        {
                            "Version": "2012-10-17",
                            "Statement": [
                                {
                                    "Sid": "TopicDelivers",
                                    "Effect": "Allow",
                                    "Principal": {"Service": "sns.amazonaws.com"},
                                    "Action": "sqs:SendMessage",
                                    "Resource": arns[0],
                                    "Condition": {"ArnEquals": {"aws:SourceArn": arns[1]}},
                                }
                            ],
                        }
                    )
                ),
                opts=self.child_opts(),
            )
            aws.sns.TopicSubscription(
                f"{name}-{group}",
                topic=topic.arn,
                protocol="sqs",
                endpoint=queue.arn,
                raw_message_delivery=True,
                opts=self.child_opts(),
            )
            queues += [queue, dead]
            self.queues[group] = (queue, dead)
        self.topic = topic
        return topic, queues

    def _bucket(self, name: str, key: aws.kms.Key) -> aws.s3.Bucket:
        bucket = aws.s3.Bucket(
            f"{name}-archive",
            bucket_prefix=f"{name}-archive-",
            force_destroy=False,
            tags=self.tags(),
            opts=self.child_opts(),
        )
        aws.s3.BucketVersioning(
            f"{name}-archive",
            bucket=bucket.id,
            versioning_configuration={"status": "Enabled"},
            opts=self.child_opts(),
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
            opts=self.child_opts(),
        )
        aws.s3.BucketPublicAccessBlock(
            f"{name}-archive",
            bucket=bucket.id,
            block_public_acls=True,
            block_public_policy=True,
            ignore_public_acls=True,
            restrict_public_buckets=True,
            opts=self.child_opts(),
        )
        aws.s3.BucketOwnershipControls(
            f"{name}-archive",
            bucket=bucket.id,
            rule={"object_ownership": "BucketOwnerEnforced"},
            opts=self.child_opts(),
        )
        aws.s3.BucketLifecycleConfiguration(
            f"{name}-archive",
            bucket=bucket.id,
            rules=[
                {
                    "id": "expire-exports",
                    "status": "Enabled",
                    "filter": {"prefix": f"{ARCHIVE_PREFIX}/"},
                    "expiration": {"days": self.common.archive_retention_days},
                    "noncurrent_version_expiration": {"noncurrent_days": 30},
                    "abort_incomplete_multipart_upload": {"days_after_initiation": 2},
                }
            ],
            opts=self.child_opts(),
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
            opts=self.child_opts(),
        )
        self.bucket = bucket
        return bucket

    # --- identity ---------------------------------------------------------------------------

    def _roles(
        self,
        name: str,
        key: aws.kms.Key,
        table: aws.dynamodb.Table,
        topic: aws.sns.Topic,
        queues: list[aws.sqs.Queue],
        bucket: aws.s3.Bucket,
        secret: aws.secretsmanager.Secret,
    ) -> tuple[aws.iam.Role, aws.iam.Role]:
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
            f"{name}-execution", assume_role_policy=assume, tags=self.tags(), opts=self.child_opts()
        )
        aws.iam.RolePolicyAttachment(
            f"{name}-execution",
            role=execution.name,
            policy_arn="arn:aws:iam::aws:policy/service-role/AmazonECSTaskExecutionRolePolicy",
            opts=self.child_opts(),
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
            opts=self.child_opts(),
        )
        task = aws.iam.Role(f"{name}-task", assume_role_policy=assume, tags=self.tags(), opts=self.child_opts())
        aws.iam.RolePolicy(
            f"{name}-task-data",
            role=task.id,
            policy=pulumi.Output.all(table.arn, topic.arn, bucket.arn, key.arn, *[q.arn for q in queues]).apply(
                lambda arns: json.dumps(
                    task_role_policy(
                        table_arn=arns[0], topic_arn=arns[1], bucket_arn=arns[2], key_arn=arns[3], queue_arns=arns[4:]
                    )
                )
            ),
            opts=self.child_opts(),
        )
        self.task_role = task
        return execution, task

    # --- network and compute ----------------------------------------------------------------

    def _network(self, name: str) -> tuple[pulumi.Input[str], list[pulumi.Input[str]], list[pulumi.Input[str]]]:
        section = self.section
        if section.vpc_id is not None:
            return section.vpc_id, list(section.public_subnet_ids), list(section.private_subnet_ids)
        zones = [f"{self.region}a", f"{self.region}b"]
        octets = section.vpc_cidr.split(".")[:2]
        vpc = aws.ec2.Vpc(
            f"{name}-vpc",
            cidr_block=section.vpc_cidr,
            enable_dns_hostnames=True,
            enable_dns_support=True,
            tags=self.tags(Name=f"{name}-vpc"),
            opts=self.child_opts(),
        )
        gateway = aws.ec2.InternetGateway(f"{name}-igw", vpc_id=vpc.id, tags=self.tags(), opts=self.child_opts())
        public_routes = aws.ec2.RouteTable(
            f"{name}-public",
            vpc_id=vpc.id,
            routes=[{"cidr_block": "0.0.0.0/0", "gateway_id": gateway.id}],
            tags=self.tags(),
            opts=self.child_opts(),
        )
        public: list[aws.ec2.Subnet] = []
        private: list[aws.ec2.Subnet] = []
        for i in range(2):
            zone = zones[i]
            subnet = aws.ec2.Subnet(
                f"{name}-public-{i}",
                vpc_id=vpc.id,
                cidr_block=f"{octets[0]}.{octets[1]}.{i}.0/24",
                availability_zone=zone,
                map_public_ip_on_launch=False,
                tags=self.tags(Name=f"{name}-public-{i}"),
                opts=self.child_opts(),
            )
            aws.ec2.RouteTableAssociation(
                f"{name}-public-{i}", subnet_id=subnet.id, route_table_id=public_routes.id, opts=self.child_opts()
            )
            public.append(subnet)
        address = aws.ec2.Eip(f"{name}-nat", domain="vpc", tags=self.tags(), opts=self.child_opts())
        nat = aws.ec2.NatGateway(
            f"{name}-nat", subnet_id=public[0].id, allocation_id=address.id, tags=self.tags(), opts=self.child_opts()
        )
        private_routes = aws.ec2.RouteTable(
            f"{name}-private",
            vpc_id=vpc.id,
            routes=[{"cidr_block": "0.0.0.0/0", "nat_gateway_id": nat.id}],
            tags=self.tags(),
            opts=self.child_opts(),
        )
        for i in range(2):
            zone = zones[i]
            subnet = aws.ec2.Subnet(
                f"{name}-private-{i}",
                vpc_id=vpc.id,
                cidr_block=f"{octets[0]}.{octets[1]}.{10 + i}.0/24",
                availability_zone=zone,
                tags=self.tags(Name=f"{name}-private-{i}"),
                opts=self.child_opts(),
            )
            aws.ec2.RouteTableAssociation(
                f"{name}-private-{i}", subnet_id=subnet.id, route_table_id=private_routes.id, opts=self.child_opts()
            )
            private.append(subnet)
        # DynamoDB and S3 traffic stays on the AWS network (and off the NAT bill)
        aws.ec2.VpcEndpoint(
            f"{name}-dynamodb",
            vpc_id=vpc.id,
            service_name=f"com.amazonaws.{self.region}.dynamodb",
            vpc_endpoint_type="Gateway",
            route_table_ids=[private_routes.id],
            tags=self.tags(),
            opts=self.child_opts(),
        )
        aws.ec2.VpcEndpoint(
            f"{name}-s3",
            vpc_id=vpc.id,
            service_name=f"com.amazonaws.{self.region}.s3",
            vpc_endpoint_type="Gateway",
            route_table_ids=[private_routes.id],
            tags=self.tags(),
            opts=self.child_opts(),
        )
        return vpc.id, [s.id for s in public], [s.id for s in private]

    def _compute(
        self,
        name: str,
        vpc_id: pulumi.Input[str],
        public_subnets: list[pulumi.Input[str]],
        private_subnets: list[pulumi.Input[str]],
        execution_role: aws.iam.Role,
        task_role: aws.iam.Role,
        logs: dict[str, aws.cloudwatch.LogGroup],
        secret: aws.secretsmanager.Secret,
        urls: AppUrls[pulumi.Output[str]],
    ) -> pulumi.Output[str]:
        section = self.section
        https = section.certificate_arn is not None
        alb_sg = aws.ec2.SecurityGroup(
            f"{name}-alb",
            vpc_id=vpc_id,
            description="skyferry ALB: HTTP(S) from the allowed CIDRs",
            ingress=[
                {"protocol": "tcp", "from_port": port, "to_port": port, "cidr_blocks": section.allowed_cidrs}
                for port in ([443, 80] if https else [80])
            ],
            egress=[{"protocol": "tcp", "from_port": API_PORT, "to_port": API_PORT, "cidr_blocks": [section.vpc_cidr]}],
            tags=self.tags(),
            opts=self.child_opts(),
        )
        tasks_sg = aws.ec2.SecurityGroup(
            f"{name}-tasks",
            vpc_id=vpc_id,
            description="skyferry tasks: the API port from the ALB only; HTTPS out to AWS APIs",
            ingress=[{"protocol": "tcp", "from_port": API_PORT, "to_port": API_PORT, "security_groups": [alb_sg.id]}],
            egress=[{"protocol": "tcp", "from_port": 443, "to_port": 443, "cidr_blocks": ["0.0.0.0/0"]}],
            tags=self.tags(),
            opts=self.child_opts(),
        )
        alb = aws.lb.LoadBalancer(
            f"{name}-api",
            load_balancer_type="application",
            internal=False,
            security_groups=[alb_sg.id],
            subnets=public_subnets,
            drop_invalid_header_fields=True,
            tags=self.tags(),
            opts=self.child_opts(),
        )
        target_group = aws.lb.TargetGroup(
            f"{name}-api",
            port=API_PORT,
            protocol="HTTP",
            target_type="ip",
            vpc_id=vpc_id,
            health_check={"path": "/readyz", "matcher": "200", "interval": 15, "healthy_threshold": 2},
            tags=self.tags(),
            opts=self.child_opts(),
        )
        if https:
            listener = aws.lb.Listener(
                f"{name}-https",
                load_balancer_arn=alb.arn,
                port=443,
                protocol="HTTPS",
                ssl_policy="ELBSecurityPolicy-TLS13-1-2-2021-06",
                certificate_arn=section.certificate_arn,
                default_actions=[{"type": "forward", "target_group_arn": target_group.arn}],
                opts=self.child_opts(),
            )
            aws.lb.Listener(
                f"{name}-http-redirect",
                load_balancer_arn=alb.arn,
                port=80,
                protocol="HTTP",
                default_actions=[
                    {"type": "redirect", "redirect": {"port": "443", "protocol": "HTTPS", "status_code": "HTTP_301"}}
                ],
                opts=self.child_opts(),
            )
        else:  # the explicit opt-in skyferry:aws.plainHttp (validate refuses it otherwise)
            listener = aws.lb.Listener(
                f"{name}-http",
                load_balancer_arn=alb.arn,
                port=80,
                protocol="HTTP",
                default_actions=[{"type": "forward", "target_group_arn": target_group.arn}],
                tags=self.tags(**{PLAIN_HTTP_TAG: PLAIN_HTTP_OPT_IN}),
                opts=self.child_opts(),
            )
        cluster = aws.ecs.Cluster(
            f"{name}",
            settings=[{"name": "containerInsights", "value": "enabled"}],
            tags=self.tags(),
            opts=self.child_opts(),
        )
        cpu, memory = fargate_size(self.common.cpu_millicores, self.common.memory_mib)
        services: dict[str, aws.ecs.Service] = {}
        for role, replicas in (("api", self.common.api_replicas), ("worker", self.common.worker_replicas)):
            log_group = logs[role]
            definition = pulumi.Output.all(secret.arn, log_group.name, urls.store, urls.broker, urls.archive).apply(
                functools.partial(self._containers, role)
            )
            task_definition = aws.ecs.TaskDefinition(
                f"{name}-{role}",
                family=f"{name}-{role}",
                requires_compatibilities=["FARGATE"],
                network_mode="awsvpc",
                cpu=str(cpu),
                memory=str(memory),
                # the root filesystem is read-only: /tmp (HOME, the worker's heartbeat) is a task volume
                volumes=[{"name": "tmp"}],
                execution_role_arn=execution_role.arn,
                task_role_arn=task_role.arn,
                runtime_platform={"operating_system_family": "LINUX", "cpu_architecture": "X86_64"},
                container_definitions=definition,
                tags=self.tags(),
                opts=self.child_opts(),
            )
            services[role] = aws.ecs.Service(
                f"{name}-{role}",
                cluster=cluster.arn,
                task_definition=task_definition.arn,
                desired_count=replicas,
                launch_type="FARGATE",
                network_configuration={
                    "subnets": private_subnets,
                    "security_groups": [tasks_sg.id],
                    "assign_public_ip": False,
                },
                load_balancers=(
                    [{"target_group_arn": target_group.arn, "container_name": "api", "container_port": API_PORT}]
                    if role == "api"
                    else []
                ),
                deployment_circuit_breaker={"enable": True, "rollback": True},
                propagate_tags="SERVICE",
                tags=self.tags(),
                opts=self.child_opts(depends_on=[listener, self.token_version] if role == "api" else []),
            )
        scaling = aws.appautoscaling.Target(
            f"{name}-api",
            service_namespace="ecs",
            scalable_dimension="ecs:service:DesiredCount",
            resource_id=pulumi.Output.concat("service/", cluster.name, "/", services["api"].name),
            min_capacity=self.common.api_replicas,
            max_capacity=max(self.common.api_replicas, self.common.api_max_replicas),
            opts=self.child_opts(),
        )
        aws.appautoscaling.Policy(
            f"{name}-api-cpu",
            policy_type="TargetTrackingScaling",
            service_namespace=scaling.service_namespace,
            scalable_dimension=scaling.scalable_dimension,
            resource_id=scaling.resource_id,
            target_tracking_scaling_policy_configuration={
                "target_value": 60,
                "predefined_metric_specification": {"predefined_metric_type": "ECSServiceAverageCPUUtilization"},
            },
            opts=self.child_opts(),
        )
        self.services = services
        scheme = "https" if https else "http"
        api_url: pulumi.Output[str] = alb.dns_name.apply(lambda host: f"{scheme}://{host or name + '-api.elb.invalid'}")
        return api_url

    def _containers(self, role: str, values: list[str]) -> str:
        """The task's container definitions (JSON): ``values`` = secret ARN, log group, store, broker, archive URL."""
        api = role == "api"
        urls = AppUrls(store=values[2], broker=values[3], archive=values[4])
        env = api_environment(urls, port=API_PORT) if api else worker_environment(urls)
        environment = [{"name": k, "value": v} for k, v in {**env.urls, **env.process}.items()]
        container: dict[str, Any] = {
            "name": role,
            "image": self.common.image,
            "command": ["serve"] if api else ["worker"],
            "essential": True,
            "user": RUN_AS_USER,
            "readonlyRootFilesystem": True,
            "mountPoints": [{"sourceVolume": "tmp", "containerPath": "/tmp"}],  # noqa: S108
            "portMappings": [{"containerPort": API_PORT, "protocol": "tcp"}] if api else [],
            "environment": environment,
            # only the API serves requests: the worker never sees the token
            "secrets": [{"name": env.secret, "valueFrom": values[0]}] if env.secret else [],
            "logConfiguration": {
                "logDriver": "awslogs",
                "options": {"awslogs-group": values[1], "awslogs-region": self.region, "awslogs-stream-prefix": role},
            },
            "linuxParameters": {"capabilities": {"drop": ["ALL"]}, "initProcessEnabled": True},
        }
        if not api:
            # a hung worker stops touching its heartbeat: ECS replaces the task
            container["healthCheck"] = {
                "command": ["CMD", "skyferry", "alive", "--max-age", "120"],
                "interval": 30,
                "timeout": 10,
                "retries": 3,
                "startPeriod": 60,
            }
        return json.dumps([container])
