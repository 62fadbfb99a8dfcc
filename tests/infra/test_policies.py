"""Each policy fires on a deliberately bad resource, names resource and rule, and stays quiet on a good one."""

from __future__ import annotations

import json
from collections.abc import Callable

import pulumi
import pulumi_aws as aws
import pulumi_azure_native as azure
import pulumi_gcp as gcp
import pulumi_kubernetes as k8s
import pytest

from providers import policies
from providers.graph import Graph

KMS = "arn:aws:kms:eu-west-1:123456789012:key/1234"
GCP_KEY = "projects/p/locations/l/keyRings/r/cryptoKeys/k"


def findings(run_program: Callable[..., Graph], fn: Callable[[], object], rule: str) -> list[policies.Finding]:
    return [f for f in policies.evaluate(run_program(fn)) if f.rule == rule]


def dynamodb_bad() -> None:
    aws.dynamodb.Table(
        "events", attributes=[{"name": "pk", "type": "S"}], hash_key="pk", billing_mode="PAY_PER_REQUEST"
    )


def dynamodb_good() -> None:
    aws.dynamodb.Table(
        "events",
        attributes=[{"name": "pk", "type": "S"}],
        hash_key="pk",
        billing_mode="PAY_PER_REQUEST",
        server_side_encryption={"enabled": True, "kms_key_arn": KMS},
        point_in_time_recovery={"enabled": True},
        deletion_protection_enabled=True,
    )


def s3_bad() -> None:
    aws.s3.Bucket("archive")


def s3_good() -> None:
    bucket = aws.s3.Bucket("archive")
    aws.s3.BucketPublicAccessBlock(
        "archive-pab",
        bucket=bucket.id,
        block_public_acls=True,
        block_public_policy=True,
        ignore_public_acls=True,
        restrict_public_buckets=True,
    )
    aws.s3.BucketServerSideEncryptionConfiguration(
        "archive-sse",
        bucket=bucket.id,
        rules=[{"apply_server_side_encryption_by_default": {"sse_algorithm": "aws:kms", "kms_master_key_id": KMS}}],
    )


def gcs_bad() -> None:
    gcp.storage.Bucket("archive", location="EU")


def gcs_good() -> None:
    gcp.storage.Bucket(
        "archive",
        location="EU",
        uniform_bucket_level_access=True,
        public_access_prevention="enforced",
        encryption={"default_kms_key_name": GCP_KEY},
    )


def gcs_public_member() -> None:
    gcp.storage.BucketIAMMember("open", bucket="b", role="roles/storage.objectViewer", member="allUsers")


def cosmos(good: bool) -> Callable[[], None]:
    def declare() -> None:
        extra = (
            {
                "key_vault_key_uri": "https://kv.vault.azure.net/keys/k",
                "public_network_access": "Disabled",
                "backup_policy": {"type": "Continuous"},
            }
            if good
            else {}
        )
        account = azure.cosmosdb.DatabaseAccount(
            "cosmos",
            resource_group_name="rg",
            database_account_offer_type="Standard",
            locations=[{"location_name": "westeurope"}],
            **extra,
        )
        if good:
            azure.authorization.ManagementLockByScope("cosmos-lock", level="CanNotDelete", scope=account.id)

    return declare


def rds_public() -> None:
    aws.rds.Instance(
        "db", instance_class="db.t4g.micro", engine="postgres", allocated_storage=20, publicly_accessible=True
    )


def iam_policy(action: str, resource: str = "arn:aws:s3:::archive/*") -> Callable[[], None]:
    def declare() -> None:
        document = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": action, "Resource": resource}]}
        aws.iam.Policy("app", policy=json.dumps(document))

    return declare


def gcp_owner() -> None:
    gcp.projects.IAMMember(
        "owner", project="p", role="roles/owner", member="serviceAccount:x@p.iam.gserviceaccount.com"
    )


def azure_contributor() -> None:
    azure.authorization.RoleAssignment(
        "contrib",
        principal_id="00000000-0000-0000-0000-000000000001",
        scope="/subscriptions/s",
        role_definition_id="/subscriptions/s/providers/Microsoft.Authorization/roleDefinitions/"
        "b24988ac-6180-42a0-ab88-20f7382dd24c",
    )


def function_env(secret: bool) -> Callable[[], None]:
    def declare() -> None:
        value: pulumi.Input[str] = pulumi.Output.secret("hunter2") if secret else "hunter2"
        aws.lambda_.Function(
            "token",
            role="arn:aws:iam::1:role/r",
            runtime="python3.12",
            handler="h.main",
            code=pulumi.AssetArchive({}),
            environment={"variables": {"DB_PASSWORD": value}},
        )

    return declare


def credential_output(secret: bool) -> Callable[[], None]:
    def declare() -> None:
        url = "postgresql://app:hunter2@db:5432/x"
        pulumi.export("store_url", pulumi.Output.secret(url) if secret else url)

    return declare


def firestore(good: bool) -> Callable[[], None]:
    def declare() -> None:
        extra = (
            {
                "delete_protection_state": "DELETE_PROTECTION_ENABLED",
                "cmek_config": {"kms_key_name": GCP_KEY},
                "point_in_time_recovery_enablement": "POINT_IN_TIME_RECOVERY_ENABLED",
            }
            if good
            else {}
        )
        gcp.firestore.Database("events", project="p", location_id="eur3", type="FIRESTORE_NATIVE", **extra)

    return declare


def ecs(user: str | None) -> Callable[[], None]:
    def declare() -> None:
        container = {"name": "api", "image": "skyferry:1", "essential": True, **({"user": user} if user else {})}
        aws.ecs.TaskDefinition(
            "api",
            family="api",
            container_definitions=json.dumps([container]),
            requires_compatibilities=["FARGATE"],
            network_mode="awsvpc",
            cpu="256",
            memory="512",
        )

    return declare


def release(run_as_non_root: bool) -> None:
    k8s.helm.v3.Release(
        "app", chart="charts/skyferry", values={"podSecurityContext": {"runAsNonRoot": run_as_non_root}}
    )


def deployment(secure: bool) -> None:
    ctx = {"run_as_non_root": True, "run_as_user": 10001} if secure else {}
    k8s.apps.v1.Deployment(
        "api",
        spec={
            "selector": {"match_labels": {"a": "b"}},
            "template": {
                "metadata": {"labels": {"a": "b"}},
                "spec": {"containers": [{"name": "api", "image": "x", "security_context": ctx}]},
            },
        },
    )


def alb_listener(secure: bool, internal: bool = False, opt_in: bool = False) -> Callable[[], None]:
    def declare() -> None:
        balancer = aws.lb.LoadBalancer("api", internal=internal, load_balancer_type="application")
        aws.lb.Listener(
            "listener",
            load_balancer_arn=balancer.arn,
            port=443 if secure else 80,
            protocol="HTTPS" if secure else "HTTP",
            certificate_arn="arn:aws:acm:eu-west-1:123456789012:certificate/x" if secure else None,
            default_actions=[{"type": "forward", "target_group_arn": "arn:aws:elasticloadbalancing:tg"}],
            tags={"skyferry-plain-http": "opt-in"} if opt_in else None,
        )

    return declare


def http_redirect() -> None:
    balancer = aws.lb.LoadBalancer("api", load_balancer_type="application")
    aws.lb.Listener(
        "listener",
        load_balancer_arn=balancer.arn,
        port=80,
        protocol="HTTP",
        default_actions=[
            {"type": "redirect", "redirect": {"port": "443", "protocol": "HTTPS", "status_code": "HTTP_301"}}
        ],
    )


def container_app(allow_insecure: bool) -> Callable[[], None]:
    def declare() -> None:
        azure.app.ContainerApp(
            "api",
            resource_group_name="rg",
            managed_environment_id="env",
            configuration={"ingress": {"external": True, "target_port": 8000, "allow_insecure": allow_insecure}},
        )

    return declare


def ingress(tls: bool) -> Callable[[], None]:
    def declare() -> None:
        k8s.networking.v1.Ingress(
            "api",
            spec={
                "rules": [{"host": "api.example.com"}],
                **({"tls": [{"hosts": ["api.example.com"], "secret_name": "api-tls"}]} if tls else {}),
            },
        )

    return declare


def chart_ingress(tls: bool, plain_http: bool = False) -> Callable[[], None]:
    def declare() -> None:
        values = {"ingress": {"enabled": True, "host": "a.example.com", "tls": {"enabled": tls}}}
        if plain_http:
            values["ingress"]["plainHttp"] = True
        k8s.helm.v3.Release("app", chart="skyferry", values=values)

    return declare


CASES = [
    ("encryption-cmk", dynamodb_bad, dynamodb_good, "events"),
    ("encryption-cmk", s3_bad, s3_good, "archive"),
    ("encryption-cmk", gcs_bad, gcs_good, "archive"),
    ("encryption-cmk", cosmos(False), cosmos(True), "cosmos"),
    ("encryption-cmk", firestore(False), firestore(True), "events"),
    ("no-public-data-store", s3_bad, s3_good, "archive"),
    ("no-public-data-store", gcs_bad, gcs_good, "archive"),
    ("no-public-data-store", cosmos(False), cosmos(True), "cosmos"),
    ("no-public-data-store", rds_public, gcs_good, "db"),
    ("no-public-data-store", gcs_public_member, gcs_good, "open"),
    ("no-wildcard-iam", iam_policy("*"), iam_policy("s3:GetObject"), "app"),
    ("no-wildcard-iam", iam_policy("s3:*"), iam_policy("s3:PutObject"), "app"),
    ("no-wildcard-iam", iam_policy("s3:GetObject", "*"), iam_policy("s3:GetObject"), "app"),
    ("no-wildcard-iam", gcp_owner, gcs_good, "owner"),
    ("no-wildcard-iam", azure_contributor, gcs_good, "contrib"),
    ("secret-outputs", function_env(False), function_env(True), "token"),
    ("secret-outputs", credential_output(False), credential_output(True), "output store_url"),
    ("event-store-protection", dynamodb_bad, dynamodb_good, "events"),
    ("event-store-protection", firestore(False), firestore(True), "events"),
    ("event-store-protection", cosmos(False), cosmos(True), "cosmos"),
    ("non-root-containers", ecs(None), ecs("10001"), "api"),
    ("non-root-containers", ecs("0"), ecs("10001:10001"), "api"),
    ("non-root-containers", lambda: release(False), lambda: release(True), "app"),
    ("non-root-containers", lambda: deployment(False), lambda: deployment(True), "api"),
    ("tls-in-transit", alb_listener(False), alb_listener(True), "listener"),
    ("tls-in-transit", alb_listener(False), alb_listener(False, internal=True), "listener"),
    ("tls-in-transit", alb_listener(False), alb_listener(False, opt_in=True), "listener"),
    ("tls-in-transit", alb_listener(False), http_redirect, "listener"),
    ("tls-in-transit", container_app(True), container_app(False), "api"),
    ("tls-in-transit", ingress(False), ingress(True), "api"),
    ("tls-in-transit", chart_ingress(False), chart_ingress(True), "app"),
    ("tls-in-transit", chart_ingress(False), chart_ingress(False, plain_http=True), "app"),
]


@pytest.mark.parametrize(("rule", "bad", "good", "resource"), CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_policy_fires_on_bad_and_not_on_good(
    rule: str, bad: Callable[[], None], good: Callable[[], None], resource: str, run_program: Callable[..., Graph]
) -> None:
    fired = findings(run_program, bad, rule)
    assert fired, f"{rule} did not fire"
    assert any(f.resource_name == resource for f in fired)
    assert all(f.rule == rule and f.message for f in fired)
    assert f"[{rule}]" in str(fired[0])
    assert resource in str(fired[0])
    assert findings(run_program, good, rule) == []


def test_every_rule_has_a_firing_case() -> None:
    assert {c[0] for c in CASES} == set(policies.RULES)


def test_unknown_rule_name_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown rule"):
        policies.rule("made-up", "*")
