"""The gcp target's identity and secrets: the app's service account, the CMEK key, the API token, and every grant.

:func:`declare_identity` creates the service account the api and worker run as, the Cloud
KMS key ring and key (or uses a given key) with encrypt/decrypt for the Firestore, Pub/Sub
and Cloud Storage service agents, and the API token in Secret Manager.
:func:`grant_access` then grants least privilege: ``roles/datastore.user`` on the project
under an IAM condition naming the one database (Firestore has no per-database policy),
the adapter's Pub/Sub roles on each topic and subscription (and the Pub/Sub service agent
what forwarding dead letters needs), storage roles on the archive bucket, and secret access
on the API token only.  No project-wide Pub/Sub, Storage or Secret Manager role.
"""

from __future__ import annotations

from dataclasses import dataclass

import pulumi
import pulumi_gcp as gcp

from providers.base import Platform
from providers.gcp.archive import Archive
from providers.gcp.broker import Broker
from providers.gcp.config import GcpConfig
from providers.gcp.network import Network
from providers.gcp.store import Store
from skyferry.adapters.archives import gcs as gcs_adapter
from skyferry.adapters.brokers import pubsub as pubsub_adapter
from skyferry.adapters.stores import firestore as firestore_adapter

KMS_ROLE = "roles/cloudkms.cryptoKeyEncrypterDecrypter"
KEY_ROTATION = "7776000s"  # 90 days


def mark_secret(value: pulumi.Input[str]) -> pulumi.Output[str]:
    """``value`` as a secret output (for ids the secret-outputs policy would otherwise flag)."""
    secret: pulumi.Output[str] = pulumi.Output.secret(pulumi.Output.from_input(value))
    return secret


@dataclass(frozen=True)
class Identity:
    """The app's service account (and its IAM member), the CMEK key and its grants, and the token's secret."""

    account: gcp.serviceaccount.Account
    member: pulumi.Output[str]
    key_name: pulumi.Input[str]
    key_grants: list[gcp.kms.CryptoKeyIAMMember]
    agent_members: dict[str, str]
    secret: gcp.secretmanager.Secret


@dataclass(frozen=True)
class Access:
    """Nothing the workloads wait for: every grant is on a resource the app reaches at run time."""


def declare_identity(platform: Platform[GcpConfig], network: Network) -> Identity:
    """The service account, the CMEK key (created or given) and the service agents' use of it, the API token."""
    name = platform.common.name
    project = network.project
    apis = network.apis
    account = gcp.serviceaccount.Account(
        f"{name}-app",
        project=project,
        account_id=f"{name}-app",
        display_name="skyferry app (api and worker)",
        opts=platform.child_opts(depends_on=apis),
    )
    member = account.email.apply(lambda e: f"serviceAccount:{e}")
    key_name, key_grants, agent_members = _kms_key(platform, network)
    secret = gcp.secretmanager.Secret(
        f"{name}-api-token",
        project=project,
        secret_id=f"{name}-api-token",
        replication={"auto": {}},
        labels=platform.tags(),
        opts=platform.child_opts(depends_on=apis),
    )
    if platform.common.api_token is not None:
        gcp.secretmanager.SecretVersion(
            f"{name}-api-token-value",
            # A secret's id is not sensitive, but the secret-outputs policy flags any
            # plain-text value under a key named "secret"; marking it secret costs nothing.
            secret=mark_secret(secret.id),
            secret_data=pulumi.Output.secret(platform.common.api_token.get_secret_value()),
            opts=platform.child_opts(),
        )
    return Identity(
        account=account,
        member=member,
        key_name=key_name,
        key_grants=key_grants,
        agent_members=agent_members,
        secret=secret,
    )


def _kms_key(
    platform: Platform[GcpConfig], network: Network
) -> tuple[pulumi.Input[str], list[gcp.kms.CryptoKeyIAMMember], dict[str, str]]:
    """The CMEK key: the configured one, or a created key ring + key (rotated every 90 days).

    The Firestore, Pub/Sub and Cloud Storage service agents get encrypt/decrypt on it.
    """
    name = platform.common.name
    section = platform.section
    if section.kms_key_name:
        key_id: pulumi.Input[str] = section.kms_key_name
    else:
        ring = gcp.kms.KeyRing(
            f"{name}-keys",
            project=network.project,
            location=network.region,
            name=f"{name}-keys",
            opts=platform.child_opts(depends_on=network.apis),
        )
        key = gcp.kms.CryptoKey(
            f"{name}-data",
            key_ring=ring.id,
            name=f"{name}-data",
            purpose="ENCRYPT_DECRYPT",
            rotation_period=KEY_ROTATION,
            labels=platform.tags(),
            opts=platform.child_opts(protect=platform.common.deletion_protection),
        )
        key_id = key.id
    number = section.project_number
    identities = [
        gcp.projects.ServiceIdentity(
            f"{name}-{service}-agent",
            project=network.project,
            service=f"{service}.googleapis.com",
            opts=platform.child_opts(depends_on=network.apis),
        )
        for service in ("firestore", "pubsub")
    ]
    agent_members = {
        "firestore": f"serviceAccount:service-{number}@gcp-sa-firestore.iam.gserviceaccount.com",
        "pubsub": f"serviceAccount:service-{number}@gcp-sa-pubsub.iam.gserviceaccount.com",
        "storage": f"serviceAccount:service-{number}@gs-project-accounts.iam.gserviceaccount.com",
    }
    key_grants = [
        gcp.kms.CryptoKeyIAMMember(
            f"{name}-key-{service}",
            crypto_key_id=key_id,
            role=KMS_ROLE,
            member=agent,
            opts=platform.child_opts(depends_on=identities),
        )
        for service, agent in agent_members.items()
    ]
    return key_id, key_grants, agent_members


def _grant(
    platform: Platform[GcpConfig],
    project: str,
    resource: str,
    target: gcp.pubsub.Topic | gcp.pubsub.Subscription,
    member: pulumi.Input[str],
) -> None:
    """Grant ``member`` the adapter's roles (``pubsub_adapter.IAM_ROLES``) on one topic or subscription."""
    kind = "topic" if isinstance(target, gcp.pubsub.Topic) else "subscription"
    grant = gcp.pubsub.TopicIAMMember if kind == "topic" else gcp.pubsub.SubscriptionIAMMember
    for role in pubsub_adapter.IAM_ROLES[kind]:
        grant(
            f"{resource}-{role.split('/')[-1].replace('.', '-')}",
            project=project,
            role=role,
            member=member,
            opts=platform.child_opts(),
            **{kind: target.name},
        )


def grant_access(
    platform: Platform[GcpConfig],
    network: Network,
    identity: Identity,
    store: Store,
    broker: Broker,
    archive: Archive,
) -> Access:
    """The app's roles on the database, each topic and subscription, the bucket and the token; the agent's."""
    name = platform.common.name
    project = network.project
    member = identity.member
    gcp.secretmanager.SecretIamMember(
        f"{name}-api-token-access",
        project=project,
        secret_id=identity.secret.secret_id,
        role="roles/secretmanager.secretAccessor",
        member=member,
        opts=platform.child_opts(),
    )
    condition_expression = store.database.name.apply(lambda db: f'resource.name == "projects/{project}/databases/{db}"')
    for role in firestore_adapter.IAM_ROLES:
        gcp.projects.IAMMember(
            f"{name}-app-{role.split('/')[-1].replace('.', '-')}",
            project=project,
            role=role,
            member=member,
            condition={
                "title": "only the skyferry database",
                "description": "Firestore IAM is project-level; this limits it to one database",
                "expression": condition_expression,
            },
            opts=platform.child_opts(),
        )
    _grant(platform, project, f"{name}-events", broker.topic, member)
    agent = identity.agent_members["pubsub"]
    for group, subscriptions in broker.groups.items():
        # The app: publish to the topics, consume the subscriptions (adapter's roles).
        _grant(platform, project, f"{name}-{group}-dead-letter", subscriptions.dead_topic, member)
        _grant(platform, project, f"{name}-{group}", subscriptions.subscription, member)
        _grant(platform, project, f"{name}-{group}-dead-letter", subscriptions.dead_subscription, member)
        # The Pub/Sub service agent forwards server-side dead letters.
        gcp.pubsub.TopicIAMMember(
            f"{name}-{group}-dead-letter-agent-publisher",
            project=project,
            topic=subscriptions.dead_topic.name,
            role="roles/pubsub.publisher",
            member=agent,
            opts=platform.child_opts(),
        )
        gcp.pubsub.SubscriptionIAMMember(
            f"{name}-{group}-agent-subscriber",
            project=project,
            subscription=subscriptions.subscription.name,
            role="roles/pubsub.subscriber",
            member=agent,
            opts=platform.child_opts(),
        )
    for role in gcs_adapter.IAM_ROLES:
        gcp.storage.BucketIAMMember(
            f"{name}-archive-{role.split('/')[-1].replace('.', '-')}",
            bucket=archive.bucket.name,
            role=role,
            member=member,
            opts=platform.child_opts(),
        )
    return Access()
