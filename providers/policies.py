"""Policies over the collected resource graph: each finding names the resource and the rule.

Run by ``skyferry plan`` and by ``tests/infra`` over every stack's graph (see
:mod:`providers.graph`).  A rule is a function ``(node, graph) -> list[str]`` (problem
messages) registered for resource types with :func:`rule`; ``"*"`` applies to every node.
A target adds checks for its own types with the same decorator, in its role module
(``providers/<target>/<role>.py``) or here (one place per rule keeps the rules comparable across clouds).

Rules:

- ``encryption-cmk``: encryption at rest with a customer-managed key where the cloud offers it.
- ``no-public-data-store``: no data store (database, bucket, queue) reachable from the internet.
- ``no-wildcard-iam``: no ``*`` actions or resources, no owner/editor/contributor roles.
- ``secret-outputs``: passwords, keys, tokens and credential-bearing URLs only as secrets.
- ``event-store-protection``: deletion protection and point-in-time recovery on event stores.
- ``non-root-containers``: containers never run as root.
- ``tls-in-transit``: a public API endpoint serves TLS (an ALB listener, a Container Apps
  ingress, a Kubernetes Ingress or the chart's); plain HTTP only where the resource carries
  the explicit opt-in (the tag or label ``skyferry-plain-http: opt-in``, or the chart's
  ``ingress.plainHttp: true``).  Cloud Run always serves HTTPS.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from providers.graph import Graph, Node

Check = Callable[[Node, Graph], list[str]]


@dataclass(frozen=True)
class Finding:
    """One policy violation: which rule, which resource (type, name, urn), and why."""

    rule: str
    resource_type: str
    resource_name: str
    urn: str
    message: str

    def __str__(self) -> str:
        return f"[{self.rule}] {self.resource_type} {self.resource_name!r}: {self.message}"


RULES: dict[str, str] = {
    "encryption-cmk": "encryption at rest with customer-managed keys where the cloud offers them",
    "no-public-data-store": "no publicly reachable data stores",
    "no-wildcard-iam": "no wildcard IAM actions or resources (and no owner/editor roles)",
    "secret-outputs": "secrets only as secret values and secret outputs",
    "event-store-protection": "deletion protection and point-in-time recovery on event stores",
    "non-root-containers": "containers run as a non-root user",
    "tls-in-transit": "public API endpoints serve TLS; plain HTTP only by an explicit opt-in",
}

_CHECKS: list[tuple[str, frozenset[str], Check]] = []


def rule(name: str, *types: str) -> Callable[[Check], Check]:
    """Register a check for ``types`` (Pulumi type tokens, or ``"*"``) under the rule ``name``."""
    if name not in RULES:
        raise ValueError(f"unknown rule {name!r}; declare it in RULES first")

    def register(check: Check) -> Check:
        _CHECKS.append((name, frozenset(types), check))
        return check

    return register


def evaluate(graph: Graph) -> list[Finding]:
    """Every finding of every rule over ``graph``, in declaration order."""
    findings: list[Finding] = []
    for node in graph.nodes:
        for name, types, check in _CHECKS:
            if "*" in types or node.type in types:
                findings.extend(Finding(name, node.type, node.name, node.urn, msg) for msg in check(node, graph))
    findings.extend(_output_findings(graph))
    return findings


# --- encryption-cmk -----------------------------------------------------------------------------


def _need(node: Node, path: str, what: str) -> list[str]:
    return [] if node.get(path) else [f"{what} ({path} not set)"]


@rule("encryption-cmk", "aws:dynamodb/table:Table")
def _dynamodb_cmk(node: Node, graph: Graph) -> list[str]:
    if node.get("serverSideEncryption.enabled") and node.get("serverSideEncryption.kmsKeyArn"):
        return []
    return ["table not encrypted with a customer-managed KMS key (serverSideEncryption.kmsKeyArn)"]


@rule("encryption-cmk", "aws:sqs/queue:Queue", "aws:sns/topic:Topic")
def _aws_messaging_cmk(node: Node, graph: Graph) -> list[str]:
    return _need(node, "kmsMasterKeyId", "not encrypted with a customer-managed KMS key")


@rule("encryption-cmk", "aws:s3/bucket:Bucket", "aws:s3/bucketV2:BucketV2")
def _s3_cmk(node: Node, graph: Graph) -> list[str]:
    if node.get("serverSideEncryptionConfiguration.rule.applyServerSideEncryptionByDefault.kmsMasterKeyId"):
        return []
    for other in graph.referencing(node):
        if "ServerSideEncryptionConfiguration" in other.type:
            for r in other.get("rules", []) or []:
                default = r.get("applyServerSideEncryptionByDefault", {}) if isinstance(r, dict) else {}
                if default.get("sseAlgorithm") in {"aws:kms", "aws:kms:dsse"} and default.get("kmsMasterKeyId"):
                    return []
    return ["bucket has no default encryption with a customer-managed KMS key"]


@rule("encryption-cmk", "aws:rds/cluster:Cluster", "aws:rds/instance:Instance")
def _rds_cmk(node: Node, graph: Graph) -> list[str]:
    if node.get("storageEncrypted") and node.get("kmsKeyId"):
        return []
    return ["database storage not encrypted with a customer-managed KMS key (storageEncrypted, kmsKeyId)"]


@rule("encryption-cmk", "aws:secretsmanager/secret:Secret", "aws:cloudwatch/logGroup:LogGroup")
def _aws_kms_key_id(node: Node, graph: Graph) -> list[str]:
    return _need(node, "kmsKeyId", "not encrypted with a customer-managed KMS key")


@rule("encryption-cmk", "azure-native:cosmosdb:DatabaseAccount", "azure-native:documentdb:DatabaseAccount")
def _cosmos_cmk(node: Node, graph: Graph) -> list[str]:
    return _need(node, "keyVaultKeyUri", "Cosmos DB account not encrypted with a Key Vault key")


@rule("encryption-cmk", "azure-native:storage:StorageAccount")
def _storage_account_cmk(node: Node, graph: Graph) -> list[str]:
    if str(node.get("encryption.keySource", "")).lower() == "microsoft.keyvault":
        return []
    return ["storage account not encrypted with a Key Vault key (encryption.keySource)"]


@rule("encryption-cmk", "gcp:firestore/database:Database")
def _firestore_cmk(node: Node, graph: Graph) -> list[str]:
    return _need(node, "cmekConfig.kmsKeyName", "Firestore database not encrypted with a Cloud KMS key")


@rule("encryption-cmk", "gcp:storage/bucket:Bucket")
def _gcs_cmk(node: Node, graph: Graph) -> list[str]:
    return _need(node, "encryption.defaultKmsKeyName", "bucket not encrypted with a Cloud KMS key")


@rule("encryption-cmk", "gcp:pubsub/topic:Topic")
def _pubsub_cmk(node: Node, graph: Graph) -> list[str]:
    return _need(node, "kmsKeyName", "topic not encrypted with a Cloud KMS key")


@rule("encryption-cmk", "gcp:sql/databaseInstance:DatabaseInstance")
def _cloudsql_cmk(node: Node, graph: Graph) -> list[str]:
    return _need(node, "encryptionKeyName", "Cloud SQL instance not encrypted with a Cloud KMS key")


# --- no-public-data-store ------------------------------------------------------------------------

_PUBLIC_MEMBERS = {"allUsers", "allAuthenticatedUsers"}
_PUBLIC_CIDRS = {"0.0.0.0/0", "::/0", "0.0.0.0"}


@rule("no-public-data-store", "aws:s3/bucket:Bucket", "aws:s3/bucketV2:BucketV2")
def _s3_public(node: Node, graph: Graph) -> list[str]:
    if node.get("acl") in {"public-read", "public-read-write"}:
        return [f"bucket ACL is {node.get('acl')}"]
    flags = ("blockPublicAcls", "blockPublicPolicy", "ignorePublicAcls", "restrictPublicBuckets")
    for other in graph.referencing(node):
        if other.type == "aws:s3/bucketPublicAccessBlock:BucketPublicAccessBlock" and all(
            other.get(f) is True for f in flags
        ):
            return []
    return ["bucket has no BucketPublicAccessBlock with all four blocks enabled"]


@rule("no-public-data-store", "aws:rds/instance:Instance", "aws:rds/clusterInstance:ClusterInstance")
def _rds_public(node: Node, graph: Graph) -> list[str]:
    return ["database is publicly accessible"] if node.get("publiclyAccessible") else []


@rule("no-public-data-store", "aws:ec2/securityGroup:SecurityGroup", "aws:ec2/securityGroupRule:SecurityGroupRule")
def _sg_public(node: Node, graph: Graph) -> list[str]:
    rules = list(node.get("ingress", []) or [])
    if node.get("type") == "ingress":
        rules.append(node.inputs)
    for r in rules:
        if not isinstance(r, dict):
            continue
        cidrs = set(r.get("cidrBlocks", []) or []) | set(r.get("ipv6CidrBlocks", []) or [])
        if cidrs & _PUBLIC_CIDRS and r.get("fromPort") not in (80, 443):
            return [f"ingress from the internet to port {r.get('fromPort')}"]
    return []


@rule("no-public-data-store", "azure-native:storage:StorageAccount")
def _azure_storage_public(node: Node, graph: Graph) -> list[str]:
    problems = []
    if node.get("allowBlobPublicAccess") is not False:
        problems.append("allowBlobPublicAccess is not false")
    if node.get("publicNetworkAccess") != "Disabled" and node.get("networkRuleSet.defaultAction") != "Deny":
        problems.append("reachable from any network (publicNetworkAccess / networkRuleSet.defaultAction)")
    return problems


@rule("no-public-data-store", "azure-native:cosmosdb:DatabaseAccount", "azure-native:documentdb:DatabaseAccount")
def _cosmos_public(node: Node, graph: Graph) -> list[str]:
    if node.get("publicNetworkAccess") == "Disabled" or node.get("isVirtualNetworkFilterEnabled") is True:
        return []
    return ["Cosmos DB account reachable from any network (publicNetworkAccess)"]


@rule(
    "no-public-data-store",
    "azure-native:dbforpostgresql:Server",
    "azure-native:dbforpostgresql:FlexibleServer",
)
def _azure_pg_public(node: Node, graph: Graph) -> list[str]:
    if node.get("network.publicNetworkAccess") == "Disabled" or node.get("publicNetworkAccess") == "Disabled":
        return []
    return ["PostgreSQL server reachable from any network (network.publicNetworkAccess)"]


@rule("no-public-data-store", "azure-native:servicebus:Namespace")
def _servicebus_public(node: Node, graph: Graph) -> list[str]:
    if node.get("publicNetworkAccess") == "Disabled" or node.get("sku.name") != "Premium":
        return []  # Standard tier has no network isolation: access is by RBAC only (documented)
    return ["Service Bus namespace reachable from any network (publicNetworkAccess)"]


@rule("no-public-data-store", "gcp:storage/bucket:Bucket")
def _gcs_public(node: Node, graph: Graph) -> list[str]:
    problems = []
    if node.get("publicAccessPrevention") != "enforced":
        problems.append("publicAccessPrevention is not 'enforced'")
    if node.get("uniformBucketLevelAccess") is not True:
        problems.append("uniformBucketLevelAccess is not enabled")
    return problems


@rule("no-public-data-store", "gcp:sql/databaseInstance:DatabaseInstance")
def _cloudsql_public(node: Node, graph: Graph) -> list[str]:
    if node.get("settings.ipConfiguration.ipv4Enabled") is False:
        return []
    return ["Cloud SQL instance has a public IPv4 address (settings.ipConfiguration.ipv4Enabled)"]


@rule("no-public-data-store", "*")
def _public_members(node: Node, graph: Graph) -> list[str]:
    members = [node.get("member"), *list(node.get("members", []) or [])]
    public = sorted({m for m in members if m in _PUBLIC_MEMBERS})
    if public and node.type.startswith("gcp:") and not node.type.startswith("gcp:cloudrun"):
        return [f"grants access to {', '.join(public)}"]
    return []


# --- no-wildcard-iam -----------------------------------------------------------------------------

_AWS_POLICY_KEYS = ("policy", "assumeRolePolicy")
_BROAD_ROLES = {
    "roles/owner",
    "roles/editor",
    "8e3af657-a8ff-443c-a75c-2fe8c4bcb635",  # Azure Owner
    "b24988ac-6180-42a0-ab88-20f7382dd24c",  # Azure Contributor
}


def _statements(document: Any) -> list[dict[str, Any]]:
    if isinstance(document, str):
        try:
            document = json.loads(document)
        except ValueError:
            return []
    if not isinstance(document, dict):
        return []
    statements = document.get("Statement", [])
    if isinstance(statements, dict):
        statements = [statements]
    return [s for s in statements if isinstance(s, dict)]


def _as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


@rule("no-wildcard-iam", "*")
def _aws_wildcards(node: Node, graph: Graph) -> list[str]:
    if not node.type.startswith("aws:"):
        return []
    documents = [node.get(k) for k in _AWS_POLICY_KEYS if node.get(k)]
    documents += [p.get("policy") for p in node.get("inlinePolicies", []) or [] if isinstance(p, dict)]
    problems = []
    for document in documents:
        for st in _statements(document):
            if st.get("Effect", "Allow") != "Allow":
                continue
            actions = [a for a in _as_list(st.get("Action", [])) if isinstance(a, str)]
            if any(a == "*" or a.endswith(":*") for a in actions):
                problems.append(f"wildcard action in {actions}")
            if "Principal" not in st and "*" in _as_list(st.get("Resource", [])):
                problems.append("wildcard resource '*'")
            if st.get("Principal") in ("*", {"AWS": "*"}):
                problems.append("wildcard principal '*'")
    return problems


@rule("no-wildcard-iam", "*")
def _broad_roles(node: Node, graph: Graph) -> list[str]:
    role = str(node.get("role") or node.get("roleDefinitionId") or "")
    if role and any(role == r or role.endswith("/" + r) for r in _BROAD_ROLES):
        return [f"grants the broad role {role}"]
    permissions = node.get("permissions") or node.get("permissions.0.actions") or []
    if node.type.startswith(("gcp:", "azure-native:")) and "*" in _as_list(permissions):
        return ["custom role with wildcard permissions"]
    return []


# --- secret-outputs ------------------------------------------------------------------------------

_SECRET_NAME = re.compile(r"(password|passwd|secret|token|apikey|api_key|accountkey|connectionstring|privatekey)", re.I)
_CREDENTIAL_URL = re.compile(r"://[^/@\s]*:[^/@\s]+@|[?&](password|key|secret|token|accountkey|sig)=", re.I)
_SECRET_EXEMPT_SUFFIXES = ("Arn", "Id", "Name", "Ref", "Ids", "Names", "Version", "Length", "Rotation")


def _secret_paths(value: Any, path: str = "") -> list[tuple[str, Any]]:
    found: list[tuple[str, Any]] = []
    if isinstance(value, dict):
        for k, v in value.items():
            sub = f"{path}.{k}" if path else k
            names_only = k.endswith(_SECRET_EXEMPT_SUFFIXES) or k.startswith("existing")
            if isinstance(v, str) and v and _SECRET_NAME.search(k) and not names_only:
                found.append((sub, v))
            elif isinstance(v, str) and _CREDENTIAL_URL.search(v):
                found.append((sub, "<url>"))
            else:
                found.extend(_secret_paths(v, sub))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            found.extend(_secret_paths(v, f"{path}.{i}" if path else str(i)))
    return found


@rule("secret-outputs", "*")
def _plain_secrets(node: Node, graph: Graph) -> list[str]:
    return [
        f"{path} holds a secret in plain text (wrap it with pulumi.Output.secret)"
        for path, _ in _secret_paths(node.inputs)
        if not node.is_secret(path)
    ]


def _output_findings(graph: Graph) -> list[Finding]:
    findings = []
    for name, out in graph.outputs.items():
        text = json.dumps(out.value) if not isinstance(out.value, str) else out.value
        if not out.secret and (_SECRET_NAME.search(name) or _CREDENTIAL_URL.search(text)):
            findings.append(
                Finding(
                    "secret-outputs",
                    "pulumi:pulumi:Stack",
                    f"output {name}",
                    "",
                    f"stack output {name!r} holds a credential but is not a secret output",
                )
            )
    return findings


# --- event-store-protection ----------------------------------------------------------------------


def _event_store(node: Node) -> bool:
    """Event-store resources are tagged/labelled ``skyferry-role: event-store`` by the platforms."""
    for key in ("tags", "labels"):
        value = node.get(key)
        if isinstance(value, dict) and value.get("skyferry-role") == "event-store":
            return True
    return False


@rule("event-store-protection", "aws:dynamodb/table:Table")
def _dynamodb_protection(node: Node, graph: Graph) -> list[str]:
    problems = []
    if node.get("deletionProtectionEnabled") is not True:
        problems.append("deletionProtectionEnabled is not true")
    if node.get("pointInTimeRecovery.enabled") is not True:
        problems.append("pointInTimeRecovery is not enabled")
    return problems


@rule("event-store-protection", "aws:rds/cluster:Cluster", "aws:rds/instance:Instance")
def _rds_protection(node: Node, graph: Graph) -> list[str]:
    problems = []
    if node.get("deletionProtection") is not True:
        problems.append("deletionProtection is not true")
    if int(node.get("backupRetentionPeriod") or 0) < 1:
        problems.append("backupRetentionPeriod < 1 (no point-in-time recovery)")
    return problems


@rule("event-store-protection", "azure-native:cosmosdb:DatabaseAccount", "azure-native:documentdb:DatabaseAccount")
def _cosmos_protection(node: Node, graph: Graph) -> list[str]:
    problems = []
    if node.get("backupPolicy.type") != "Continuous":
        problems.append("backupPolicy.type is not Continuous (no point-in-time restore)")
    locks = [n for n in graph.referencing(node) if n.type.startswith("azure-native:authorization:ManagementLock")]
    if not any(n.get("level") == "CanNotDelete" for n in locks) and not node.protect:
        problems.append("no CanNotDelete management lock (deletion protection)")
    return problems


@rule("event-store-protection", "gcp:firestore/database:Database")
def _firestore_protection(node: Node, graph: Graph) -> list[str]:
    problems = []
    if node.get("deleteProtectionState") != "DELETE_PROTECTION_ENABLED":
        problems.append("deleteProtectionState is not DELETE_PROTECTION_ENABLED")
    if node.get("pointInTimeRecoveryEnablement") != "POINT_IN_TIME_RECOVERY_ENABLED":
        problems.append("pointInTimeRecoveryEnablement is not POINT_IN_TIME_RECOVERY_ENABLED")
    return problems


@rule("event-store-protection", "gcp:sql/databaseInstance:DatabaseInstance")
def _cloudsql_protection(node: Node, graph: Graph) -> list[str]:
    problems = []
    if node.get("deletionProtection") is not True:
        problems.append("deletionProtection is not true")
    if node.get("settings.backupConfiguration.pointInTimeRecoveryEnabled") is not True:
        problems.append("settings.backupConfiguration.pointInTimeRecoveryEnabled is not true")
    return problems


@rule("event-store-protection", "*")
def _tagged_event_store(node: Node, graph: Graph) -> list[str]:
    """Any other resource tagged as the event store must at least be protected by Pulumi."""
    known = {t for name, types, _ in _CHECKS if name == "event-store-protection" for t in types if t != "*"}
    if _event_store(node) and node.type not in known and not node.protect:
        return ["event store without deletion protection (set protect=True or a provider-level flag)"]
    return []


# --- non-root-containers -------------------------------------------------------------------------

_ROOT_USERS = {"", "0", "root", "0:0", "root:root"}


@rule("non-root-containers", "aws:ecs/taskDefinition:TaskDefinition")
def _ecs_user(node: Node, graph: Graph) -> list[str]:
    raw = node.get("containerDefinitions", "[]")
    try:
        containers = json.loads(raw) if isinstance(raw, str) else raw
    except ValueError:
        return ["containerDefinitions is not valid JSON"]
    return [
        f"container {c.get('name')!r} runs as root (set user to a non-zero uid)"
        for c in containers or []
        if str(c.get("user", "")) in _ROOT_USERS
    ]


@rule("non-root-containers", "kubernetes:helm.sh/v3:Release", "kubernetes:helm.sh/v4:Chart")
def _chart_user(node: Node, graph: Graph) -> list[str]:
    values = node.get("values") or {}
    problems = []
    if (values.get("podSecurityContext") or {}).get("runAsNonRoot") is False:
        problems.append("values.podSecurityContext.runAsNonRoot is false")
    if str((values.get("podSecurityContext") or {}).get("runAsUser", "")) == "0":
        problems.append("values.podSecurityContext.runAsUser is 0")
    return problems


@rule(
    "non-root-containers",
    "kubernetes:apps/v1:Deployment",
    "kubernetes:apps/v1:StatefulSet",
    "kubernetes:batch/v1:Job",
    "kubernetes:core/v1:Pod",
)
def _k8s_user(node: Node, graph: Graph) -> list[str]:
    spec = node.get("spec.template.spec") or node.get("spec") or {}
    pod = spec.get("securityContext") or {}
    problems = []
    for c in spec.get("containers", []) or []:
        ctx = c.get("securityContext") or {}
        non_root = ctx.get("runAsNonRoot", pod.get("runAsNonRoot"))
        uid = ctx.get("runAsUser", pod.get("runAsUser"))
        if uid == 0 or (non_root is not True and not uid):
            problems.append(f"container {c.get('name')!r} may run as root (runAsNonRoot)")
    return problems


# --- tls-in-transit -------------------------------------------------------------------------------

PLAIN_HTTP_TAG = "skyferry-plain-http"
PLAIN_HTTP_OPT_IN = "opt-in"


def _opted_in(node: Node) -> bool:
    """Whether the node carries the explicit plain-HTTP opt-in (tag, label or annotation)."""
    for key in ("tags", "labels", "metadata.labels", "metadata.annotations"):
        value = node.get(key)
        if isinstance(value, dict) and value.get(PLAIN_HTTP_TAG) == PLAIN_HTTP_OPT_IN:
            return True
    return False


@rule("tls-in-transit", "aws:lb/listener:Listener", "aws:alb/listener:Listener")
def _alb_plain_http(node: Node, graph: Graph) -> list[str]:
    if node.get("protocol") not in ("HTTP", None) or _opted_in(node):
        return []
    actions = [a for a in node.get("defaultActions", []) or [] if isinstance(a, dict)]
    if actions and all(
        a.get("type") == "redirect" and a.get("redirect", {}).get("protocol") == "HTTPS" for a in actions
    ):
        return []
    balancers = [b for b in map(graph.node, node.dependencies) if b is not None and "loadBalancer" in b.type]
    if balancers and all(b.get("internal") is True for b in balancers):
        return []  # not reachable from the internet
    return [f"public listener serves plain HTTP on port {node.get('port')} (use HTTPS with a certificate)"]


@rule("tls-in-transit", "azure-native:app:ContainerApp")
def _container_app_plain_http(node: Node, graph: Graph) -> list[str]:
    ingress = node.get("configuration.ingress") or {}
    if not ingress.get("external") or _opted_in(node):
        return []
    if ingress.get("allowInsecure") is not False:
        return ["external ingress allows plain HTTP (configuration.ingress.allowInsecure is not false)"]
    return []


@rule("tls-in-transit", "kubernetes:networking.k8s.io/v1:Ingress")
def _ingress_plain_http(node: Node, graph: Graph) -> list[str]:
    if node.get("spec.tls") or _opted_in(node):
        return []
    return ["Ingress without TLS (spec.tls)"]


@rule("tls-in-transit", "kubernetes:helm.sh/v3:Release", "kubernetes:helm.sh/v4:Chart")
def _chart_ingress_plain_http(node: Node, graph: Graph) -> list[str]:
    ingress = (node.get("values") or {}).get("ingress") or {}
    if not ingress.get("enabled") or ingress.get("plainHttp") is True:
        return []
    if (ingress.get("tls") or {}).get("enabled") is False:
        return ["the chart's Ingress without TLS (values.ingress.tls.enabled is false)"]
    return []
