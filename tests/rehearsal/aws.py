"""The AWS rehearsal: the graph's data resources and roles on a moto server that enforces IAM.

* :class:`IamMoto` starts :mod:`tests.rehearsal.moto_iam` (moto with IAM enforced as AWS
  enforces it) on a free loopback port, with auth off while the rehearsal provisions.
* :func:`provision` creates what the graph declares, from the graph's inputs: the DynamoDB
  table and its index, the SNS FIFO topic, every SQS queue with its attributes (FIFO,
  deduplication scope, throughput limit, visibility, retention, redrive to its DLQ, KMS key),
  the queue policies, the subscriptions (raw delivery), the S3 bucket with its versioning,
  encryption, public-access block, ownership, lifecycle and policy, the secret and its value,
  the log groups, and the IAM roles with their inline and managed policies.  Network,
  load balancer, ECS cluster and services, ECR and KMS are not emulated: the rehearsal plays
  ECS itself.
* ECS's part: the *execution role* resolves each container's ``secrets`` (``GetSecretValue``
  on moto, so its policy is enforced); the task's volumes are mounted where its
  containers' ``mountPoints`` say (the worker's ``/tmp``, where its heartbeat is); the
  container ``healthCheck`` runs in the container, as ECS runs it; and the task gets the
  *task role*'s credentials from a container-credentials endpoint (ECS serves it at
  ``169.254.170.2``; here on loopback, through ``AWS_CONTAINER_CREDENTIALS_FULL_URI``,
  which botocore reads the same way).
  Sessions come from ``sts:AssumeRole`` while auth is still off: moto cannot sign as the
  ``ecs-tasks.amazonaws.com`` service principal, so the trust policy is checked from the
  graph instead (``test_roles_trust_ecs_tasks``).
* The only endpoint rewrite: ``AWS_ENDPOINT_URL`` (the SDK's own variable) points the
  implicit regional endpoints at moto.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx

from tests.rehearsal.stack import ROOT, Deployment
from tests.rehearsal.workloads import Probe, Workload, port_variables
from tests.services import dynamodb as dynamodb_service
from tests.services import free_port, started

ADMIN_USER = "rehearsal-admin"


@dataclass(frozen=True)
class Credentials:
    """Temporary credentials of an assumed role (or an IAM user's key)."""

    access_key: str
    secret_key: str
    token: str | None = None
    expiration: str = ""

    def env(self) -> dict[str, str]:
        """As the SDK's environment variables."""
        env = {"AWS_ACCESS_KEY_ID": self.access_key, "AWS_SECRET_ACCESS_KEY": self.secret_key}
        if self.token:
            env["AWS_SESSION_TOKEN"] = self.token
        return env


class IamMoto:
    """A moto server of the rehearsal's own, IAM enforced once :meth:`enforce` is called."""

    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.decisions = workdir / "aws-decisions.jsonl"
        self.log = workdir / "moto.log"
        self._stack = contextlib.ExitStack()

    def start(self) -> None:
        """Start the server (auth off) and wait until it owns its port."""
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "MOTO_", "INITIAL_NO_AUTH"))},
            "MOTO_IAM_LOAD_MANAGED_POLICIES": "true",
            "PYTHONPATH": str(ROOT),
        }
        args = [sys.executable, "-m", "tests.rehearsal.moto_iam", str(self.port), str(self.decisions)]
        self._stack.enter_context(started(args, self.port, env=env, log=str(self.log)))

    def enforce(self) -> None:
        """Turn IAM enforcement on for every later request."""
        httpx.post(f"{self.endpoint}/moto-api/reset-auth", content=b"0", timeout=10).raise_for_status()

    def stop(self) -> None:
        """Stop the server by PID."""
        self._stack.close()

    def client(self, service: str, region: str, credentials: Credentials) -> Any:
        """A boto3 client on this server with ``credentials``."""
        import boto3

        return boto3.client(
            service,
            region_name=region,
            endpoint_url=self.endpoint,
            aws_access_key_id=credentials.access_key,
            aws_secret_access_key=credentials.secret_key,
            aws_session_token=credentials.token,
        )


@dataclass
class Provisioned:
    """What :func:`provision` made: the admin's key and a session per role (by role name)."""

    admin: Credentials
    roles: dict[str, Credentials] = field(default_factory=dict)
    queue_urls: dict[str, str] = field(default_factory=dict)


def _bootstrap_credentials() -> Credentials:
    return Credentials("AKIAREHEARSALBOOT", "rehearsal-bootstrap")


def provision(moto: IamMoto, deployment: Deployment) -> Provisioned:
    """Create the graph's data resources, secrets and roles on moto (auth still off)."""
    region = deployment.config["aws:region"]
    boot = _bootstrap_credentials()
    iam = moto.client("iam", region, boot)
    iam.create_user(UserName=ADMIN_USER)
    iam.put_user_policy(
        UserName=ADMIN_USER,
        PolicyName="everything",
        PolicyDocument=json.dumps(
            {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}
        ),
    )
    key = iam.create_access_key(UserName=ADMIN_USER)["AccessKey"]
    result = Provisioned(admin=Credentials(key["AccessKeyId"], key["SecretAccessKey"]))
    client = lambda service: moto.client(service, region, boot)  # noqa: E731

    dynamo = client("dynamodb")
    for node in deployment.nodes("aws:dynamodb/table:Table"):
        spec = dynamodb_service.spec_from_table_inputs(node.inputs)
        sse = node.inputs.get("serverSideEncryption") or {}
        if sse.get("enabled"):
            spec["SSESpecification"] = {"Enabled": True, "SSEType": "KMS", "KMSMasterKeyId": sse.get("kmsKeyArn", "")}
        if "deletionProtectionEnabled" in node.inputs:
            spec["DeletionProtectionEnabled"] = bool(node.inputs["deletionProtectionEnabled"])
        dynamo.create_table(TableName=node.inputs["name"], **spec)

    sns = client("sns")
    for node in deployment.nodes("aws:sns/topic:Topic"):
        attributes = {"FifoTopic": str(bool(node.inputs.get("fifoTopic"))).lower()}
        if "contentBasedDeduplication" in node.inputs:
            attributes["ContentBasedDeduplication"] = str(bool(node.inputs["contentBasedDeduplication"])).lower()
        if node.inputs.get("kmsMasterKeyId"):
            attributes["KmsMasterKeyId"] = node.inputs["kmsMasterKeyId"]
        sns.create_topic(Name=node.inputs["name"], Attributes=attributes)

    sqs = client("sqs")
    for node in deployment.nodes("aws:sqs/queue:Queue"):
        result.queue_urls[node.inputs["name"]] = sqs.create_queue(
            QueueName=node.inputs["name"], Attributes=queue_attributes(node.inputs)
        )["QueueUrl"]
    for node in deployment.nodes("aws:sqs/queuePolicy:QueuePolicy"):
        name = str(node.inputs["queueUrl"]).rsplit("/", 1)[-1]
        sqs.set_queue_attributes(QueueUrl=result.queue_urls[name], Attributes={"Policy": node.inputs["policy"]})
    for node in deployment.nodes("aws:sns/topicSubscription:TopicSubscription"):
        attributes = {}
        if node.inputs.get("rawMessageDelivery"):
            attributes["RawMessageDelivery"] = "true"
        if node.inputs.get("filterPolicy"):
            attributes["FilterPolicy"] = node.inputs["filterPolicy"]
        sns.subscribe(
            TopicArn=node.inputs["topic"],
            Protocol=node.inputs["protocol"],
            Endpoint=node.inputs["endpoint"],
            Attributes=attributes,
        )

    s3 = client("s3")
    for node in deployment.nodes("aws:s3/bucket:Bucket"):
        name = node.outputs["bucket"]
        s3.create_bucket(Bucket=name, CreateBucketConfiguration={"LocationConstraint": region})
    _bucket_settings(s3, deployment)

    secrets = client("secretsmanager")
    for node in deployment.nodes("aws:secretsmanager/secret:Secret"):
        secrets.create_secret(Name=node.inputs["name"], KmsKeyId=node.inputs.get("kmsKeyId", ""))
    for node in deployment.nodes("aws:secretsmanager/secretVersion:SecretVersion"):
        secrets.put_secret_value(SecretId=node.inputs["secretId"], SecretString=node.inputs["secretString"])

    logs = client("logs")
    for node in deployment.nodes("aws:cloudwatch/logGroup:LogGroup"):
        logs.create_log_group(logGroupName=node.inputs["name"])

    for node in deployment.nodes("aws:iam/role:Role"):
        iam.create_role(RoleName=node.outputs["name"], AssumeRolePolicyDocument=node.inputs["assumeRolePolicy"])
    for node in deployment.nodes("aws:iam/rolePolicy:RolePolicy"):
        iam.put_role_policy(
            RoleName=node.inputs["role"], PolicyName=node.outputs["id"], PolicyDocument=node.inputs["policy"]
        )
    for node in deployment.nodes("aws:iam/rolePolicyAttachment:RolePolicyAttachment"):
        iam.attach_role_policy(RoleName=node.inputs["role"], PolicyArn=node.inputs["policyArn"])

    sts = client("sts")
    for node in deployment.nodes("aws:iam/role:Role"):
        result.roles[node.outputs["name"]] = assume(sts, node.outputs["arn"])
    return result


def assume(sts: Any, role_arn: str, session: str = "ecs-task") -> Credentials:
    """A session of ``role_arn`` (``sts:AssumeRole``)."""
    answer = sts.assume_role(RoleArn=role_arn, RoleSessionName=session)["Credentials"]
    expiration = answer["Expiration"]
    return Credentials(
        answer["AccessKeyId"],
        answer["SecretAccessKey"],
        answer["SessionToken"],
        expiration.isoformat() if hasattr(expiration, "isoformat") else str(expiration),
    )


def queue_attributes(inputs: dict[str, Any]) -> dict[str, str]:
    """``CreateQueue`` attributes from the inputs of a Pulumi ``aws.sqs.Queue``."""
    names = {
        "fifoQueue": "FifoQueue",
        "contentBasedDeduplication": "ContentBasedDeduplication",
        "deduplicationScope": "DeduplicationScope",
        "fifoThroughputLimit": "FifoThroughputLimit",
        "visibilityTimeoutSeconds": "VisibilityTimeout",
        "messageRetentionSeconds": "MessageRetentionPeriod",
        "kmsMasterKeyId": "KmsMasterKeyId",
        "redrivePolicy": "RedrivePolicy",
        "receiveWaitTimeSeconds": "ReceiveMessageWaitTimeSeconds",
        "delaySeconds": "DelaySeconds",
        "maxMessageSize": "MaximumMessageSize",
    }
    attributes = {}
    for key, name in names.items():
        if key in inputs and inputs[key] is not None:
            value = inputs[key]
            attributes[name] = str(value).lower() if isinstance(value, bool) else str(value)
    return attributes


def _bucket_settings(s3: Any, deployment: Deployment) -> None:
    for node in deployment.nodes("aws:s3/bucketVersioning:BucketVersioning"):
        status = node.inputs["versioningConfiguration"]["status"]
        s3.put_bucket_versioning(Bucket=node.inputs["bucket"], VersioningConfiguration={"Status": status})
    for node in deployment.nodes(
        "aws:s3/bucketServerSideEncryptionConfiguration:BucketServerSideEncryptionConfiguration"
    ):
        rules = [
            {
                "ApplyServerSideEncryptionByDefault": {
                    "SSEAlgorithm": r["applyServerSideEncryptionByDefault"]["sseAlgorithm"],
                    "KMSMasterKeyID": r["applyServerSideEncryptionByDefault"].get("kmsMasterKeyId", ""),
                },
                "BucketKeyEnabled": bool(r.get("bucketKeyEnabled")),
            }
            for r in node.inputs["rules"]
        ]
        s3.put_bucket_encryption(Bucket=node.inputs["bucket"], ServerSideEncryptionConfiguration={"Rules": rules})
    for node in deployment.nodes("aws:s3/bucketPublicAccessBlock:BucketPublicAccessBlock"):
        flags = ("blockPublicAcls", "blockPublicPolicy", "ignorePublicAcls", "restrictPublicBuckets")
        s3.put_public_access_block(
            Bucket=node.inputs["bucket"],
            PublicAccessBlockConfiguration={f[0].upper() + f[1:]: bool(node.inputs.get(f)) for f in flags},
        )
    for node in deployment.nodes("aws:s3/bucketOwnershipControls:BucketOwnershipControls"):
        s3.put_bucket_ownership_controls(
            Bucket=node.inputs["bucket"],
            OwnershipControls={"Rules": [{"ObjectOwnership": node.inputs["rule"]["objectOwnership"]}]},
        )
    for node in deployment.nodes("aws:s3/bucketLifecycleConfiguration:BucketLifecycleConfiguration"):
        rules = []
        for rule in node.inputs["rules"]:
            converted: dict[str, Any] = {
                "ID": rule["id"],
                "Status": rule["status"],
                "Filter": {"Prefix": rule.get("filter", {}).get("prefix", "")},
            }
            if "expiration" in rule:
                converted["Expiration"] = {"Days": rule["expiration"]["days"]}
            if "noncurrentVersionExpiration" in rule:
                converted["NoncurrentVersionExpiration"] = {
                    "NoncurrentDays": rule["noncurrentVersionExpiration"]["noncurrentDays"]
                }
            if "abortIncompleteMultipartUpload" in rule:
                converted["AbortIncompleteMultipartUpload"] = {
                    "DaysAfterInitiation": rule["abortIncompleteMultipartUpload"]["daysAfterInitiation"]
                }
            rules.append(converted)
        s3.put_bucket_lifecycle_configuration(Bucket=node.inputs["bucket"], LifecycleConfiguration={"Rules": rules})
    for node in deployment.nodes("aws:s3/bucketPolicy:BucketPolicy"):
        s3.put_bucket_policy(Bucket=node.inputs["bucket"], Policy=node.inputs["policy"])


# -- ECS's part ------------------------------------------------------------------------------------


class CredentialsEndpoint:
    """The container-credentials endpoint ECS serves to a task: its task role's session."""

    def __init__(self, sessions: dict[str, Credentials]) -> None:
        self.sessions = sessions
        sessions_ = sessions

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                role = self.path.rsplit("/", 1)[-1]
                found = sessions_.get(role)
                if found is None:
                    self.send_error(404)
                    return
                expiration = found.expiration or (datetime.now(UTC) + timedelta(hours=1)).isoformat()
                body = json.dumps(
                    {
                        "AccessKeyId": found.access_key,
                        "SecretAccessKey": found.secret_key,
                        "Token": found.token,
                        "Expiration": expiration,
                        "RoleArn": role,
                    }
                ).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def url(self, role: str) -> str:
        """The ``AWS_CONTAINER_CREDENTIALS_FULL_URI`` of ``role``'s session."""
        return f"http://127.0.0.1:{self.server.server_address[1]}/v2/credentials/{role}"

    def stop(self) -> None:
        """Stop serving."""
        self.server.shutdown()
        self.server.server_close()


@contextlib.contextmanager
def credentials_endpoint(sessions: dict[str, Credentials]) -> Iterator[CredentialsEndpoint]:
    """A :class:`CredentialsEndpoint`, stopped afterwards."""
    endpoint = CredentialsEndpoint(sessions)
    try:
        yield endpoint
    finally:
        endpoint.stop()


def role_name(arn: str) -> str:
    """The role name of a role ARN."""
    return arn.rsplit("/", 1)[-1]


def task_workloads(deployment: Deployment, moto: IamMoto, provisioned: Provisioned) -> dict[str, Workload]:
    """Every container of every ECS task definition, as ECS would start it."""
    region = deployment.config["aws:region"]
    workloads: dict[str, Workload] = {}
    for definition in deployment.nodes("aws:ecs/taskDefinition:TaskDefinition"):
        execution = provisioned.roles[role_name(definition.inputs["executionRoleArn"])]
        secrets = moto.client("secretsmanager", region, execution)
        services = [
            s
            for s in deployment.nodes("aws:ecs/service:Service")
            if s.inputs.get("taskDefinition") == definition.outputs["arn"]
        ]
        for container in json.loads(definition.inputs["containerDefinitions"]):
            env = {e["name"]: e["value"] for e in container.get("environment", [])}
            secret_env = {}
            for secret in container.get("secrets", []):
                # ECS's agent resolves the reference with the execution role (enforced by moto).
                value = secrets.get_secret_value(SecretId=secret["valueFrom"])["SecretString"]
                env[secret["name"]] = value
                secret_env[secret["name"]] = secret["valueFrom"]
            ports = tuple(int(p["containerPort"]) for p in container.get("portMappings", []))
            probes = _probes(deployment, services, container, ports)
            family = definition.inputs["family"]
            name = f"ecs:{family}/{container['name']}"
            # a task volume is the task's own (bind mounts on Fargate's ephemeral storage)
            volumes = {
                m["containerPath"]: f"task:{family}:{m['sourceVolume']}" for m in container.get("mountPoints", [])
            }
            workloads[name] = Workload(
                name=name,
                platform=f"ECS Fargate task definition {definition.inputs['family']}, container {container['name']}",
                kind="service" if services else "job",
                entrypoint=tuple(container["entryPoint"]) if container.get("entryPoint") else None,
                args=tuple(container.get("command") or ()),
                env=env,
                secret_env=secret_env,
                ports=ports,
                probes=probes,
                volumes=volumes,
                identity=definition.inputs["taskRoleArn"],
                platform_env={
                    "AWS_REGION": region,
                    "AWS_DEFAULT_REGION": region,
                    "AWS_EXECUTION_ENV": "AWS_ECS_FARGATE",
                },
                port_variables=port_variables(env, ports, probes),
            )
    return workloads


def _probes(
    deployment: Deployment, services: list[Any], container: dict[str, Any], ports: tuple[int, ...]
) -> list[Probe]:
    probes: list[Probe] = []
    check = container.get("healthCheck")
    if check:
        command = check["command"]
        argv = ["sh", "-c", command[1]] if command[0] == "CMD-SHELL" else command[1:]
        probes.append(Probe("exec", "health", command=tuple(argv), source="container healthCheck"))
    for service in services:
        for balancer in service.inputs.get("loadBalancers") or []:
            if balancer.get("containerName") != container["name"]:
                continue
            group = deployment.by_output("arn", balancer["targetGroupArn"])
            health = (group.inputs.get("healthCheck") if group else None) or {}
            matcher = str(health.get("matcher", "200"))
            low, _, high = matcher.partition("-")
            probes.append(
                Probe(
                    "http",
                    "load-balancer health",
                    port=int(balancer["containerPort"]),
                    path=health.get("path", "/"),
                    ok_status=(int(low), int(high or low)),
                    source=f"target group {group.name if group else '?'} health check",
                )
            )
    return probes
