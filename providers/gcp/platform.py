"""The GCP platform: ``skyferry:gcp:Platform``.

Every child is declared with ``parent=self``.  The Firestore composite indexes and index
exemptions, the Pub/Sub subscription and dead-letter names and the roles of the app's
service account come from the adapter modules (:mod:`skyferry.adapters.stores.firestore`,
:mod:`skyferry.adapters.brokers.pubsub`, :mod:`skyferry.adapters.archives.gcs`), so the
infrastructure cannot drift from what the app expects.

Least privilege: the service account gets ``roles/datastore.user`` on the project under an
IAM condition naming the one database (Firestore has no per-database policy), Pub/Sub
roles on each topic and subscription, storage roles on the archive bucket, and secret
access on the API token only.  No project-wide Pub/Sub, Storage or Secret Manager role.
"""

from __future__ import annotations

from typing import Any

import pulumi
import pulumi_gcp as gcp

from providers.base import Platform, StackConfigError, StandardOutputs
from providers.environment import AppUrls, api_environment, worker_environment
from providers.gcp.config import GcpConfig
from skyferry.adapters.archives import gcs as gcs_adapter
from skyferry.adapters.brokers import pubsub as pubsub_adapter
from skyferry.adapters.stores import firestore as firestore_adapter
from skyferry.ledger import CONSUMER_GROUPS, MAX_DELIVERIES

API_PORT = 8000
WORKER_HEALTH_PORT = 8080
ARCHIVE_PREFIX = "exports"
#: CPU counts Cloud Run accepts with CPU always allocated (a worker pool; below 1 CPU a service
#: must throttle between requests and serve one at a time), and the memory each needs at least.
CLOUD_RUN_CPUS = (1, 2, 4, 6, 8)
_CLOUD_RUN_MIN_MEMORY_MIB = {1: 512, 2: 512, 4: 2048, 6: 4096, 8: 4096}
TOPIC_ID = "events"
APIS = (
    "firestore.googleapis.com",
    "pubsub.googleapis.com",
    "run.googleapis.com",
    "artifactregistry.googleapis.com",
    "secretmanager.googleapis.com",
    "cloudkms.googleapis.com",
    "storage.googleapis.com",
    "iam.googleapis.com",
)
KMS_ROLE = "roles/cloudkms.cryptoKeyEncrypterDecrypter"
KEY_ROTATION = "7776000s"  # 90 days


def cloud_run_size(cpu_millicores: int, memory_mib: int) -> tuple[str, int]:
    """The smallest Cloud Run CPU count at least as big as asked, and memory raised to its minimum."""
    cpus = next((c for c in CLOUD_RUN_CPUS if c * 1000 >= cpu_millicores), CLOUD_RUN_CPUS[-1])
    return str(cpus), max(memory_mib, _CLOUD_RUN_MIN_MEMORY_MIB[cpus])


def mark_secret(value: pulumi.Input[str]) -> pulumi.Output[str]:
    """``value`` as a secret output (for ids the secret-outputs policy would otherwise flag)."""
    secret: pulumi.Output[str] = pulumi.Output.secret(pulumi.Output.from_input(value))
    return secret


def store_url(project: str, database: str) -> str:
    """The app's ``firestore://`` URL."""
    return f"firestore://{project}/{database}"


def broker_url(project: str, topic: str) -> str:
    """The app's ``pubsub://`` URL."""
    return f"pubsub://{project}/{topic}"


def index_fields(index: firestore_adapter.CompositeIndex) -> list[Any]:
    """The ``fields`` of a ``gcp.firestore.Index`` for an adapter index (plus ``__name__``)."""
    fields = [{"field_path": path, "order": order} for path, order in index.fields]
    # Firestore appends __name__ in the direction of the last field; declaring it keeps
    # Pulumi's state equal to what the service reports (no perpetual diff).
    fields.append({"field_path": "__name__", "order": index.fields[-1][1]})
    return fields


class GcpPlatform(Platform[GcpConfig]):
    """Firestore + Pub/Sub + Cloud Storage + Cloud Run, under one Cloud KMS key."""

    target = "gcp"
    config_model = GcpConfig

    def build(self) -> StandardOutputs:
        """Declare every resource (see the package docstring) and return the standard outputs."""
        section = self.section
        gcp_config = pulumi.Config("gcp")
        project = section.project or gcp_config.get("project")
        if not project:
            raise StackConfigError("gcp:project", "required: the project to deploy to (or skyferry:gcp.project)")
        region = section.region or gcp_config.get("region")
        if not region:
            raise StackConfigError("gcp:region", "required: the region to deploy to (or skyferry:gcp.region)")
        self.project, self.region = project, region
        name = self.common.name
        database_id = section.database_id or f"{name}-events"
        location = section.firestore_location or region

        services = {
            api: gcp.projects.Service(
                f"{name}-api-{api.split('.')[0]}",
                project=project,
                service=api,
                disable_on_destroy=False,
                opts=self.child_opts(),
            )
            for api in APIS
        }
        apis = list(services.values())
        self.apis = apis
        account = gcp.serviceaccount.Account(
            f"{name}-app",
            project=project,
            account_id=f"{name}-app",
            display_name="skyferry app (api and worker)",
            opts=self.child_opts(depends_on=apis),
        )
        member = account.email.apply(lambda e: f"serviceAccount:{e}")
        self.member = member
        key_name = self._kms_key(name, section)
        database = self._firestore(name, database_id, location, key_name, member)
        topic = self._pubsub(name, key_name, member)
        bucket = self._bucket(name, key_name, member)
        repository = gcp.artifactregistry.Repository(
            f"{name}-images",
            project=project,
            location=region,
            repository_id=name,
            format="DOCKER",
            description="skyferry images",
            docker_config={"immutable_tags": True},
            labels=self.tags(),
            # only its own API: `pulumi up --target` can create the registry alone, before the image
            opts=self.child_opts(depends_on=[services["artifactregistry.googleapis.com"]]),
        )
        self.repository = repository
        secret = gcp.secretmanager.Secret(
            f"{name}-api-token",
            project=project,
            secret_id=f"{name}-api-token",
            replication={"auto": {}},
            labels=self.tags(),
            opts=self.child_opts(depends_on=apis),
        )
        if self.common.api_token is not None:
            gcp.secretmanager.SecretVersion(
                f"{name}-api-token-value",
                # A secret's id is not sensitive, but the secret-outputs policy flags any
                # plain-text value under a key named "secret"; marking it secret costs nothing.
                secret=mark_secret(secret.id),
                secret_data=pulumi.Output.secret(self.common.api_token.get_secret_value()),
                opts=self.child_opts(),
            )
        gcp.secretmanager.SecretIamMember(
            f"{name}-api-token-access",
            project=project,
            secret_id=secret.secret_id,
            role="roles/secretmanager.secretAccessor",
            member=member,
            opts=self.child_opts(),
        )
        store = database.name.apply(lambda db: store_url(project, db))
        broker = topic.name.apply(lambda t: broker_url(project, t))
        archive = bucket.name.apply(lambda b: f"gs://{b}/{ARCHIVE_PREFIX}")
        env = AppUrls(store=store, broker=broker, archive=archive)
        api = self._api(name, account, secret, env, apis)
        self._worker(name, account, env, apis)
        if section.allow_unauthenticated:
            gcp.cloudrunv2.ServiceIamMember(
                f"{name}-api-public",
                project=project,
                location=region,
                name=api.name,
                role="roles/run.invoker",
                member="allUsers",
                opts=self.child_opts(),
            )
        return StandardOutputs(
            target="gcp",
            api_url=self._api_url(api, f"{name}-api"),
            store_url=store,
            broker_url=broker,
            archive_url=archive,
            image=self.common.image,
        )

    def _api_url(self, api: gcp.cloudrunv2.Service, service: str) -> pulumi.Output[str]:
        """The API's URL: the service's ``uri``, else its deterministic URL
        ``https://SERVICE-PROJECT_NUMBER.REGION.run.app`` (known before the first deploy)."""
        fallback = f"https://{service}-{self.section.project_number}.{self.region}.run.app"
        url: pulumi.Output[str] = api.uri.apply(lambda uri: (uri or fallback).rstrip("/"))
        return url

    # -- encryption ----------------------------------------------------------------------------

    def _kms_key(self, name: str, section: GcpConfig) -> pulumi.Input[str]:
        """The CMEK key: the configured one, or a created key ring + key (rotated every 90 days).

        The Firestore, Pub/Sub and Cloud Storage service agents get encrypt/decrypt on it.
        """
        if section.kms_key_name:
            key_id: pulumi.Input[str] = section.kms_key_name
        else:
            ring = gcp.kms.KeyRing(
                f"{name}-keys",
                project=self.project,
                location=self.region,
                name=f"{name}-keys",
                opts=self.child_opts(depends_on=self.apis),
            )
            key = gcp.kms.CryptoKey(
                f"{name}-data",
                key_ring=ring.id,
                name=f"{name}-data",
                purpose="ENCRYPT_DECRYPT",
                rotation_period=KEY_ROTATION,
                labels=self.tags(),
                opts=self.child_opts(protect=self.common.deletion_protection),
            )
            key_id = key.id
        number = section.project_number
        identities = [
            gcp.projects.ServiceIdentity(
                f"{name}-{service}-agent",
                project=self.project,
                service=f"{service}.googleapis.com",
                opts=self.child_opts(depends_on=self.apis),
            )
            for service in ("firestore", "pubsub")
        ]
        self.agent_members = {
            "firestore": f"serviceAccount:service-{number}@gcp-sa-firestore.iam.gserviceaccount.com",
            "pubsub": f"serviceAccount:service-{number}@gcp-sa-pubsub.iam.gserviceaccount.com",
            "storage": f"serviceAccount:service-{number}@gs-project-accounts.iam.gserviceaccount.com",
        }
        self.key_grants = [
            gcp.kms.CryptoKeyIAMMember(
                f"{name}-key-{service}",
                crypto_key_id=key_id,
                role=KMS_ROLE,
                member=agent,
                opts=self.child_opts(depends_on=identities),
            )
            for service, agent in self.agent_members.items()
        ]
        return key_id

    # -- event and view store ------------------------------------------------------------------------

    def _firestore(
        self, name: str, database_id: str, location: str, key_name: pulumi.Input[str], member: pulumi.Output[str]
    ) -> gcp.firestore.Database:
        protected = self.common.deletion_protection
        database = gcp.firestore.Database(
            f"{name}-events",
            project=self.project,
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
            cmek_config={"kms_key_name": key_name},
            opts=self.child_opts(depends_on=[*self.apis, *self.key_grants], protect=protected),
        )
        self.indexes = [
            gcp.firestore.Index(
                f"{name}-index-{index.collection}-{'-'.join(f'{p}-{o[:3].lower()}' for p, o in index.fields)}",
                project=self.project,
                database=database.name,
                collection=index.collection,
                query_scope=index.query_scope,
                api_scope="ANY_API",
                fields=index_fields(index),
                opts=self.child_opts(),
            )
            for index in firestore_adapter.COMPOSITE_INDEXES
        ]
        self.exemptions = [
            gcp.firestore.Field(
                f"{name}-unindexed-{collection}-{field}",
                project=self.project,
                database=database.name,
                collection=collection,
                field=field,
                index_config={},  # an empty index config: no single-field index at all
                opts=self.child_opts(),
            )
            for collection, field in firestore_adapter.UNINDEXED_FIELDS
        ]
        condition_expression = database.name.apply(
            lambda db: f'resource.name == "projects/{self.project}/databases/{db}"'
        )
        for role in firestore_adapter.IAM_ROLES:
            gcp.projects.IAMMember(
                f"{name}-app-{role.split('/')[-1].replace('.', '-')}",
                project=self.project,
                role=role,
                member=member,
                condition={
                    "title": "only the skyferry database",
                    "description": "Firestore IAM is project-level; this limits it to one database",
                    "expression": condition_expression,
                },
                opts=self.child_opts(),
            )
        return database

    # -- broker ------------------------------------------------------------------------------------

    def _grant(
        self, resource: str, target: gcp.pubsub.Topic | gcp.pubsub.Subscription, member: pulumi.Input[str]
    ) -> None:
        """Grant ``member`` the adapter's roles (``pubsub_adapter.IAM_ROLES``) on one topic or subscription."""
        kind = "topic" if isinstance(target, gcp.pubsub.Topic) else "subscription"
        grant = gcp.pubsub.TopicIAMMember if kind == "topic" else gcp.pubsub.SubscriptionIAMMember
        for role in pubsub_adapter.IAM_ROLES[kind]:
            grant(
                f"{resource}-{role.split('/')[-1].replace('.', '-')}",
                project=self.project,
                role=role,
                member=member,
                opts=self.child_opts(),
                **{kind: target.name},
            )

    def _pubsub(self, name: str, key_name: pulumi.Input[str], member: pulumi.Output[str]) -> gcp.pubsub.Topic:
        # bounded: what no consumer took expires (the store keeps every event)
        retention = f"{self.common.broker_retention_days * 24 * 3600}s"
        topic = gcp.pubsub.Topic(
            f"{name}-events",
            project=self.project,
            name=TOPIC_ID,
            kms_key_name=key_name,
            message_retention_duration=retention,
            labels=self.tags(),
            opts=self.child_opts(depends_on=[*self.apis, *self.key_grants]),
        )
        self._grant(f"{name}-events", topic, member)
        agent = self.agent_members["pubsub"]
        self.subscriptions: dict[str, gcp.pubsub.Subscription] = {}
        for group in CONSUMER_GROUPS:
            dead_id = pubsub_adapter.dead_letter_topic_id(TOPIC_ID, group)
            dead_topic = gcp.pubsub.Topic(
                f"{name}-{group}-dead-letter",
                project=self.project,
                name=dead_id,
                kms_key_name=key_name,
                message_retention_duration=retention,
                labels=self.tags(),
                opts=self.child_opts(depends_on=[*self.apis, *self.key_grants]),
            )
            dead_subscription = gcp.pubsub.Subscription(
                f"{name}-{group}-dead-letter",
                project=self.project,
                name=dead_id,
                topic=dead_topic.id,
                ack_deadline_seconds=pubsub_adapter.ACK_DEADLINE_SECONDS,
                message_retention_duration=retention,
                expiration_policy={"ttl": ""},
                labels=self.tags(),
                opts=self.child_opts(),
            )
            subscription = gcp.pubsub.Subscription(
                f"{name}-{group}",
                project=self.project,
                name=pubsub_adapter.subscription_id(TOPIC_ID, group),
                topic=topic.id,
                enable_message_ordering=True,
                ack_deadline_seconds=pubsub_adapter.ACK_DEADLINE_SECONDS,
                message_retention_duration=retention,
                expiration_policy={"ttl": ""},
                dead_letter_policy={
                    "dead_letter_topic": dead_topic.id,
                    "max_delivery_attempts": pubsub_adapter.server_delivery_attempts(MAX_DELIVERIES),
                },
                retry_policy={"minimum_backoff": "1s", "maximum_backoff": "60s"},
                labels=self.tags(),
                opts=self.child_opts(),
            )
            self.subscriptions[group] = subscription
            # The app: publish to the topics, consume the subscriptions (adapter's roles).
            self._grant(f"{name}-{group}-dead-letter", dead_topic, member)
            self._grant(f"{name}-{group}", subscription, member)
            self._grant(f"{name}-{group}-dead-letter", dead_subscription, member)
            # The Pub/Sub service agent forwards server-side dead letters.
            gcp.pubsub.TopicIAMMember(
                f"{name}-{group}-dead-letter-agent-publisher",
                project=self.project,
                topic=dead_topic.name,
                role="roles/pubsub.publisher",
                member=agent,
                opts=self.child_opts(),
            )
            gcp.pubsub.SubscriptionIAMMember(
                f"{name}-{group}-agent-subscriber",
                project=self.project,
                subscription=subscription.name,
                role="roles/pubsub.subscriber",
                member=agent,
                opts=self.child_opts(),
            )
        return topic

    # -- archive ------------------------------------------------------------------------------------

    def _bucket(self, name: str, key_name: pulumi.Input[str], member: pulumi.Output[str]) -> gcp.storage.Bucket:
        bucket = gcp.storage.Bucket(
            f"{name}-archive",
            project=self.project,
            name=f"{self.project}-{name}-archive",
            location=self.region,
            uniform_bucket_level_access=True,
            public_access_prevention="enforced",
            versioning={"enabled": True},
            encryption={"default_kms_key_name": key_name},
            lifecycle_rules=[
                {
                    "action": {"type": "Delete"},
                    "condition": {"age": self.common.archive_retention_days},
                },
                {
                    "action": {"type": "Delete"},
                    "condition": {"days_since_noncurrent_time": 30, "with_state": "ARCHIVED"},
                },
            ],
            force_destroy=False,
            labels=self.tags(),
            opts=self.child_opts(depends_on=[*self.apis, *self.key_grants]),
        )
        for role in gcs_adapter.IAM_ROLES:
            gcp.storage.BucketIAMMember(
                f"{name}-archive-{role.split('/')[-1].replace('.', '-')}",
                bucket=bucket.name,
                role=role,
                member=member,
                opts=self.child_opts(),
            )
        return bucket

    # -- compute -------------------------------------------------------------------------------------

    def _resources(self) -> dict[str, Any]:
        """CPU and memory limits Cloud Run accepts (see :func:`cloud_run_size`)."""
        cpu, memory = cloud_run_size(self.common.cpu_millicores, self.common.memory_mib)
        return {"cpu": cpu, "memory": f"{memory}Mi"}

    def _api(
        self,
        name: str,
        account: gcp.serviceaccount.Account,
        secret: gcp.secretmanager.Secret,
        urls: AppUrls[pulumi.Output[str]],
        apis: list[gcp.projects.Service],
    ) -> gcp.cloudrunv2.Service:
        """The API: a Cloud Run v2 service on ``$PORT`` (8000), autoscaled, probed on ``/healthz``."""
        common = self.common
        env = api_environment(urls, port=API_PORT)  # SKYFERRY_PORT = $PORT, which Cloud Run sets to API_PORT
        envs: list[dict[str, Any]] = [{"name": k, "value": v} for k, v in env.urls.items()]
        if env.secret:
            envs.append(
                {
                    "name": env.secret,
                    "value_source": {"secret_key_ref": {"secret": mark_secret(secret.secret_id), "version": "latest"}},
                }
            )
        envs += [{"name": k, "value": v} for k, v in env.process.items()]
        container: dict[str, Any] = {
            "image": common.image,
            "args": ["serve"],
            "envs": envs,
            # Cloud Run sets $PORT to the container port; serve binds SKYFERRY_PORT, 8000 by default
            "ports": {"container_port": API_PORT},
            "resources": {"limits": self._resources(), "cpu_idle": True, "startup_cpu_boost": True},
            "startup_probe": {"http_get": {"path": "/healthz"}, "period_seconds": 5, "failure_threshold": 24},
            "liveness_probe": {"http_get": {"path": "/healthz"}},
        }
        minimum, maximum = common.api_replicas, max(common.api_replicas, common.api_max_replicas)
        template: Any = {
            "service_account": account.email,
            "scaling": {"min_instance_count": minimum, "max_instance_count": maximum},
            "max_instance_request_concurrency": 80,
            "containers": [container],
        }
        return gcp.cloudrunv2.Service(
            f"{name}-api",
            project=self.project,
            location=self.region,
            name=f"{name}-api",
            ingress="INGRESS_TRAFFIC_ALL",
            deletion_protection=False,
            labels=self.tags(**{"skyferry-role": "api"}),
            template=template,
            opts=self.child_opts(depends_on=apis),
        )

    def _worker(
        self,
        name: str,
        account: gcp.serviceaccount.Account,
        urls: AppUrls[pulumi.Output[str]],
        apis: list[gcp.projects.Service],
    ) -> gcp.cloudrunv2.WorkerPool:
        """The worker: a Cloud Run worker pool (no port, no request-driven scaling, CPU always on).

        It pulls from the store and the broker and serves no traffic, which is what worker pools
        are for: a service would have to listen on ``$PORT`` and pass a startup probe.  Its
        probes ask the worker's heartbeat over HTTP (``SKYFERRY_HEALTH_PORT``), so a hung worker
        is restarted.  The API token is not given to it: the worker never serves the API.
        """
        env = worker_environment(urls, health_port=WORKER_HEALTH_PORT)
        envs: list[dict[str, Any]] = [{"name": k, "value": v} for k, v in {**env.urls, **env.process}.items()]
        probe = {"http_get": {"path": "/healthz", "port": WORKER_HEALTH_PORT}}
        container: dict[str, Any] = {
            "image": self.common.image,
            "args": ["worker"],
            "envs": envs,
            "resources": {"limits": self._resources()},
            "startup_probe": {**probe, "period_seconds": 5, "failure_threshold": 24},
            "liveness_probe": {**probe, "period_seconds": 30, "timeout_seconds": 10, "failure_threshold": 3},
        }
        return gcp.cloudrunv2.WorkerPool(
            f"{name}-worker",
            project=self.project,
            location=self.region,
            name=f"{name}-worker",
            deletion_protection=False,
            labels=self.tags(**{"skyferry-role": "worker"}),
            scaling={"scaling_mode": "MANUAL", "manual_instance_count": self.common.worker_replicas},
            template={"service_account": account.email, "containers": [container]},
            opts=self.child_opts(depends_on=apis),
        )
