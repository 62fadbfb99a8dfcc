"""The gcp target under mocks: the resource graph, the outputs, every policy, least privilege,
and the Firestore indexes checked against the queries the adapter really runs.

The index test drives the ``firestore://`` adapters on Google's Firestore emulator while
recording every structured query they send, derives the composite indexes those queries
need (Firestore's rules: equality filters and ``__name__`` order are served by merged
single-field indexes; an order or range on a field next to an equality, or a second
ordered field, needs a composite index), and compares them with the indexes the stack
declares.  The emulator does not enforce indexes, so this derivation is what stands in
for the real service's "the query requires an index" error.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from google.cloud.firestore_v1.base_query import BaseQuery
from google.cloud.firestore_v1.query import Query

from providers import policies
from providers.base import OUTPUT_NAMES, StackConfigError, current_stack_config, deploy
from providers.graph import Graph, GraphMocks, GraphMonitor, Node, run_program
from skyferry.adapters.archives import gcs as gcs_adapter
from skyferry.adapters.brokers import pubsub as pubsub_adapter
from skyferry.adapters.stores import firestore as firestore_adapter
from skyferry.core.messages import NewEvent, utc_now
from skyferry.core.ports import ANY, NO_STREAM, ViewChange
from skyferry.ledger import CONSUMER_GROUPS
from tests.infra.conftest import require_target
from tests.services import firestore as firestore_service

BASE = {
    "skyferry:target": "gcp",
    "skyferry:name": "ledger",
    "skyferry:image": "europe-west1-docker.pkg.dev/acme-ledger/ledger/skyferry:1.2.3",
    "skyferry:apiToken": "token-secret-value-0123456789",
    "skyferry:gcp": '{"projectNumber": "987654321098"}',
    "gcp:project": "acme-ledger",
    "gcp:region": "europe-west1",
}
SECRETS = {"skyferry:apiToken"}

# What each predefined role grants, of the permissions the adapters need (from Google's
# IAM reference; only the permissions relevant here are listed).
ROLE_PERMISSIONS = {
    "roles/pubsub.publisher": {"pubsub.topics.publish"},
    "roles/pubsub.viewer": {"pubsub.topics.get", "pubsub.subscriptions.get"},
    "roles/pubsub.subscriber": {"pubsub.subscriptions.consume", "pubsub.topics.attachSubscription"},
    "roles/storage.objectUser": {
        "storage.objects.create",
        "storage.objects.delete",
        "storage.objects.get",
        "storage.objects.list",
    },
    "roles/storage.legacyBucketReader": {"storage.buckets.get", "storage.objects.list"},
}


def only(graph: Graph, type_: str) -> Node:
    nodes = graph.by_type(type_)
    assert len(nodes) == 1, f"expected one {type_}, got {[n.name for n in nodes]}"
    return nodes[0]


@pytest.fixture
def gcp_graph(run_config: Callable[..., Graph]) -> Graph:
    require_target("gcp")
    return run_config(BASE, SECRETS)


def app_member(graph: Graph) -> str:
    account = only(graph, "gcp:serviceaccount/account:Account")
    return f"serviceAccount:{account.outputs.get('email') or account.get('email')}"


# --- graph and outputs ------------------------------------------------------------------------


def test_outputs_are_the_standard_ones_and_open_with_the_adapters(gcp_graph: Graph) -> None:
    outputs = {k: v.value for k, v in gcp_graph.outputs.items()}
    assert tuple(outputs) == OUTPUT_NAMES
    assert outputs["store_url"] == "firestore://acme-ledger/ledger-events"
    assert outputs["broker_url"] == "pubsub://acme-ledger/events"
    assert outputs["archive_url"] == "gs://acme-ledger-ledger-archive/exports"
    assert outputs["api_url"] == "https://ledger-api-987654321098.europe-west1.run.app"
    assert firestore_adapter.parse_url(outputs["store_url"]) == ("acme-ledger", "ledger-events", None)
    assert pubsub_adapter.parse_url(outputs["broker_url"]) == ("acme-ledger", "events", None)
    assert gcs_adapter.parse_url(outputs["archive_url"])[:2] == ("acme-ledger-ledger-archive", "exports/")


def test_every_child_hangs_under_the_platform_component(gcp_graph: Graph) -> None:
    platform = only(gcp_graph, "skyferry:gcp:Platform")
    for node in gcp_graph.nodes:
        if node is not platform:
            assert node.parent == platform.urn, f"{node.type} {node.name} is not a child of the platform"


def test_firestore_database_is_native_protected_recoverable_and_encrypted(gcp_graph: Graph) -> None:
    database = only(gcp_graph, "gcp:firestore/database:Database")
    assert database.get("name") == "ledger-events"
    assert database.get("type") == "FIRESTORE_NATIVE"
    assert database.get("concurrencyMode") == "PESSIMISTIC"
    assert database.get("pointInTimeRecoveryEnablement") == "POINT_IN_TIME_RECOVERY_ENABLED"
    assert database.get("deleteProtectionState") == "DELETE_PROTECTION_ENABLED"
    assert database.protect
    key = only(gcp_graph, "gcp:kms/cryptoKey:CryptoKey")
    assert database.get("cmekConfig.kmsKeyName") == key.outputs.get("id", f"{key.name}-id")
    assert key.get("rotationPeriod") == "7776000s"


def declared_indexes(graph: Graph) -> set[tuple[str, tuple[tuple[str, str], ...]]]:
    declared = set()
    for node in graph.by_type("gcp:firestore/index:Index"):
        fields = tuple((f["fieldPath"], f["order"]) for f in node.get("fields") if f["fieldPath"] != "__name__")
        assert node.get("queryScope") == "COLLECTION"
        declared.add((node.get("collection"), fields))
    return declared


def adapter_indexes() -> set[tuple[str, tuple[tuple[str, str], ...]]]:
    return {(i.collection, i.fields) for i in firestore_adapter.COMPOSITE_INDEXES}


def test_pulumi_declares_exactly_the_adapters_indexes_and_exemptions(gcp_graph: Graph) -> None:
    assert declared_indexes(gcp_graph) == adapter_indexes()
    exempt = {(n.get("collection"), n.get("field")) for n in gcp_graph.by_type("gcp:firestore/field:Field")}
    assert exempt == set(firestore_adapter.UNINDEXED_FIELDS)
    for node in gcp_graph.by_type("gcp:firestore/field:Field"):
        assert not (node.get("indexConfig") or {}).get("indexes"), "an exempt field must have no index"


def test_pubsub_topic_and_one_ordered_subscription_with_dead_letters_per_group(gcp_graph: Graph) -> None:
    topics = {n.get("name"): n for n in gcp_graph.by_type("gcp:pubsub/topic:Topic")}
    subscriptions = {n.get("name"): n for n in gcp_graph.by_type("gcp:pubsub/subscription:Subscription")}
    groups = CONSUMER_GROUPS  # daily_totals included: the app's groups, not retyped
    assert set(topics) == {"events", *(pubsub_adapter.dead_letter_topic_id("events", g) for g in groups)}
    for topic in topics.values():
        assert topic.get("kmsKeyName"), f"topic {topic.name} is not CMEK-encrypted"
    for group in groups:
        sub = subscriptions[pubsub_adapter.subscription_id("events", group)]
        assert sub.get("enableMessageOrdering") is True
        assert sub.get("deadLetterPolicy.maxDeliveryAttempts") == 5
        dead = topics[pubsub_adapter.dead_letter_topic_id("events", group)]
        assert sub.get("deadLetterPolicy.deadLetterTopic") == dead.outputs.get("id", f"{dead.name}-id")
        assert pubsub_adapter.dead_letter_topic_id("events", group) in subscriptions
        assert sub.get("expirationPolicy.ttl") == "", "subscriptions must never expire"
        assert sub.get("messageRetentionDuration") == f"{7 * 24 * 3600}s", "bounded: 7 days"
    assert topics["events"].get("messageRetentionDuration") == f"{7 * 24 * 3600}s"


def test_the_worker_is_a_worker_pool_probed_on_its_heartbeat_and_the_api_a_service(gcp_graph: Graph) -> None:
    [api] = gcp_graph.by_type("gcp:cloudrunv2/service:Service")
    [worker] = gcp_graph.by_type("gcp:cloudrunv2/workerPool:WorkerPool")
    assert (api.get("name"), worker.get("name")) == ("ledger-api", "ledger-worker")
    # a worker pool: no $PORT to listen on, CPU always allocated, a fixed instance count
    assert worker.get("scaling") == {"scalingMode": "MANUAL", "manualInstanceCount": 1}
    container = worker.get("template.containers.0")
    assert container["args"] == ["worker"]
    envs = {e["name"]: e for e in container["envs"]}
    port = int(envs["SKYFERRY_HEALTH_PORT"]["value"])
    assert envs["SKYFERRY_HEARTBEAT_FILE"]["value"].startswith("/tmp/")
    for probe in ("startupProbe", "livenessProbe"):
        assert container[probe]["httpGet"] == {"path": "/healthz", "port": port}, probe
    assert "SKYFERRY_API_TOKEN" not in envs, "the worker never serves: no token"
    # the API listens on its container port, which Cloud Run passes as $PORT, and is probed there
    api_container = api.get("template.containers.0")
    assert api_container["args"] == ["serve"]
    assert api_container["ports"] == {"containerPort": 8000}
    api_port = {e["name"]: e.get("value") for e in api_container["envs"]}["SKYFERRY_PORT"]
    assert api_port == "8000", "serve binds SKYFERRY_PORT: the port Cloud Run passes as $PORT"
    assert api_container["startupProbe"]["httpGet"] == {"path": "/healthz"}
    assert api.get("template.scaling.minInstanceCount") == 2
    api_envs = {e["name"]: e for e in api_container["envs"]}
    assert "secretKeyRef" in api_envs["SKYFERRY_API_TOKEN"]["valueSource"]
    assert "value" not in api_envs["SKYFERRY_API_TOKEN"], "the token must come from Secret Manager"
    for workload, env in ((api, api_envs), (worker, envs)):
        assert workload.get("template.containers.0.image") == BASE["skyferry:image"]
        assert "serviceAccount" in workload.get("template"), "the app's own service account, not the default"
        assert env["SKYFERRY_STORE_URL"]["value"] == "firestore://acme-ledger/ledger-events"
        # Cloud Run: below 1 CPU only with request-based billing; 500 m asked is 1 CPU given
        assert workload.get("template.containers.0.resources.limits") == {"cpu": "1", "memory": "1024Mi"}


@pytest.mark.parametrize(
    ("millicores", "memory", "expected"),
    [
        (250, 512, ("1", 512)),
        (1000, 512, ("1", 512)),
        (1500, 1024, ("2", 1024)),
        (3000, 1024, ("4", 2048)),
        (1000, 4096, ("1", 4096)),
        # Cloud Run: above 4 GiB at least 2 CPUs, above 8 GiB at least 4: memory raises the CPUs
        (500, 4097, ("2", 4097)),
        (500, 8192, ("2", 8192)),
        (500, 8193, ("4", 8193)),
        (2000, 12288, ("4", 12288)),
        (250, 16384, ("4", 16384)),
    ],
)
def test_cloud_run_sizes_are_ones_cloud_run_accepts(millicores: int, memory: int, expected: tuple[str, int]) -> None:
    from providers.gcp.compute import cloud_run_size

    assert cloud_run_size(millicores, memory) == expected


def test_every_size_the_config_allows_is_one_cloud_run_accepts() -> None:
    """Every cpuMillicores and memoryMib the common config accepts maps to a valid Cloud Run pair."""
    from providers.gcp.compute import cloud_run_size

    memory_floor = {1: 512, 2: 512, 4: 2048, 6: 4096, 8: 4096}
    memory_ceiling = {1: 4096, 2: 8192, 4: 16384, 6: 24576, 8: 32768}
    for millicores in range(250, 4001, 250):
        for memory in range(512, 16385, 512):
            cpu, given = cloud_run_size(millicores, memory)
            cpus = int(cpu)
            assert cpus * 1000 >= millicores, (millicores, memory)
            assert given >= memory, (millicores, memory)
            assert memory_floor[cpus] <= given <= memory_ceiling[cpus], (millicores, memory, cpu, given)


def test_a_workload_asking_for_8_gib_gets_the_cpus_cloud_run_requires(run_config: Callable[..., Graph]) -> None:
    require_target("gcp")
    graph = run_config({**BASE, "skyferry:memoryMib": "8192"}, SECRETS)
    for type_ in ("gcp:cloudrunv2/service:Service", "gcp:cloudrunv2/workerPool:WorkerPool"):
        workload = only(graph, type_)
        assert workload.get("template.containers.0.resources.limits") == {"cpu": "2", "memory": "8192Mi"}


def test_archive_bucket_is_private_versioned_and_encrypted(gcp_graph: Graph) -> None:
    bucket = only(gcp_graph, "gcp:storage/bucket:Bucket")
    assert bucket.get("uniformBucketLevelAccess") is True
    assert bucket.get("publicAccessPrevention") == "enforced"
    assert bucket.get("versioning.enabled") is True
    assert bucket.get("encryption.defaultKmsKeyName")
    assert only(gcp_graph, "gcp:artifactregistry/repository:Repository").get("format") == "DOCKER"
    version = only(gcp_graph, "gcp:secretmanager/secretVersion:SecretVersion")
    assert version.is_secret("secretData")


# --- policies ----------------------------------------------------------------------------------


def test_the_default_gcp_stack_passes_every_policy(gcp_graph: Graph) -> None:
    assert policies.evaluate(gcp_graph) == []


def test_unprotected_event_store_is_a_finding(run_config: Callable[..., Graph]) -> None:
    require_target("gcp")
    graph = run_config({**BASE, "skyferry:deletionProtection": "false"}, SECRETS)
    findings = [f for f in policies.evaluate(graph) if f.rule == "event-store-protection"]
    assert [f.resource_type for f in findings] == ["gcp:firestore/database:Database"]


def test_a_given_kms_key_is_used_instead_of_a_created_one(run_config: Callable[..., Graph]) -> None:
    require_target("gcp")
    key = "projects/acme-ledger/locations/europe-west1/keyRings/shared/cryptoKeys/data"
    section = f'{{"projectNumber": "987654321098", "kmsKeyName": "{key}"}}'
    graph = run_config({**BASE, "skyferry:gcp": section}, SECRETS)
    assert graph.by_type("gcp:kms/keyRing:KeyRing") == []
    assert only(graph, "gcp:firestore/database:Database").get("cmekConfig.kmsKeyName") == key
    assert policies.evaluate(graph) == []


KEY_IN_REGION = "projects/acme-ledger/locations/europe-west1/keyRings/shared/cryptoKeys/data"
KEY_IN_EUROPE = "projects/acme-ledger/locations/europe/keyRings/shared/cryptoKeys/data"


@pytest.mark.parametrize(
    ("section", "key"),
    [
        # the created key ring is in the region: Firestore elsewhere cannot use it
        ({"firestoreLocation": "eur3"}, "skyferry:gcp.firestoreLocation"),
        ({"firestoreLocation": "europe-west3"}, "skyferry:gcp.firestoreLocation"),
        # a key in Firestore's location would not do either: the archive bucket in the region uses it
        ({"firestoreLocation": "eur3", "kmsKeyName": KEY_IN_EUROPE}, "skyferry:gcp.firestoreLocation"),
        ({"kmsKeyName": KEY_IN_EUROPE}, "skyferry:gcp.kmsKeyName"),
        ({"region": "europe-west3", "kmsKeyName": KEY_IN_REGION}, "skyferry:gcp.kmsKeyName"),
    ],
)
def test_a_cmek_key_outside_firestores_or_the_buckets_location_is_refused_before_anything_is_declared(
    section: dict[str, str], key: str
) -> None:
    """Firestore and Cloud Storage take a CMEK key in their own location only, and one key serves both."""
    require_target("gcp")
    monitor = GraphMonitor(GraphMocks())
    values = {**BASE, "skyferry:gcp": json.dumps({"projectNumber": "987654321098", **section})}
    with pytest.raises(StackConfigError) as caught:
        run_program(lambda: deploy(current_stack_config()), values, SECRETS, monitor=monitor)
    assert caught.value.key == key
    assert "europe-west" in str(caught.value)
    assert monitor.nodes == []


@pytest.mark.parametrize(
    "section",
    [
        {"firestoreLocation": "europe-west1"},
        {"firestoreLocation": "europe-west1", "kmsKeyName": KEY_IN_REGION},
        {"region": "europe-west1", "kmsKeyName": KEY_IN_REGION},
    ],
)
def test_firestore_in_the_region_with_the_key_there_is_accepted(
    run_config: Callable[..., Graph], section: dict[str, str]
) -> None:
    require_target("gcp")
    values = {**BASE, "skyferry:gcp": json.dumps({"projectNumber": "987654321098", **section})}
    graph = run_config(values, SECRETS)
    assert only(graph, "gcp:firestore/database:Database").get("locationId") == "europe-west1"
    rings = graph.by_type("gcp:kms/keyRing:KeyRing")
    assert [ring.get("location") for ring in rings] == ([] if "kmsKeyName" in section else ["europe-west1"])


@pytest.mark.parametrize(
    ("values", "key"),
    [
        ({"skyferry:gcp": '{"region": "europe-west1"}'}, "skyferry:gcp.projectNumber"),
        ({"skyferry:gcp": '{"projectNumber": "987654321098", "maxDeliveries": 3}'}, "skyferry:gcp.maxDeliveries"),
        ({"skyferry:gcp": '{"projectNumber": "987654321098", "consumerGroups": ["x"]}'}, "skyferry:gcp.consumerGroups"),
    ],
)
def test_bad_gcp_settings_name_the_key(run_config: Callable[..., Graph], values: dict[str, str], key: str) -> None:
    require_target("gcp")
    with pytest.raises(StackConfigError) as caught:
        run_config({**BASE, **values}, SECRETS)
    assert caught.value.key.startswith(key)


def test_a_missing_project_names_gcp_project(run_config: Callable[..., Graph]) -> None:
    require_target("gcp")
    values = {k: v for k, v in BASE.items() if k != "gcp:project"}
    with pytest.raises(Exception, match="gcp:project"):
        run_config(values, SECRETS)


# --- least privilege ------------------------------------------------------------------------------


def grants(graph: Graph, member: str) -> list[Node]:
    return [n for n in graph.nodes if n.get("member") == member]


def test_the_app_account_has_only_the_adapters_roles_on_their_resources(gcp_graph: Graph) -> None:
    member = app_member(gcp_graph)
    found = grants(gcp_graph, member)
    assert found, "no grant for the app's service account"
    by_type: dict[str, set[str]] = {}
    for node in found:
        by_type.setdefault(node.type, set()).add(node.get("role"))
    assert by_type == {
        "gcp:projects/iAMMember:IAMMember": set(firestore_adapter.IAM_ROLES),
        "gcp:pubsub/topicIAMMember:TopicIAMMember": set(pubsub_adapter.IAM_ROLES["topic"]),
        "gcp:pubsub/subscriptionIAMMember:SubscriptionIAMMember": set(pubsub_adapter.IAM_ROLES["subscription"]),
        "gcp:storage/bucketIAMMember:BucketIAMMember": set(gcs_adapter.IAM_ROLES),
        "gcp:secretmanager/secretIamMember:SecretIamMember": {"roles/secretmanager.secretAccessor"},
    }
    project_grant = only(gcp_graph, "gcp:projects/iAMMember:IAMMember")
    assert project_grant.get("condition.expression") == (
        'resource.name == "projects/acme-ledger/databases/ledger-events"'
    ), "the project-level Firestore role must be limited to the one database"
    # every topic and subscription the adapter touches is granted, and nothing else
    topics = {n.get("topic") for n in found if n.type.endswith("TopicIAMMember")}
    assert len(topics) == len(gcp_graph.by_type("gcp:pubsub/topic:Topic"))
    subscriptions = {n.get("subscription") for n in found if n.type.endswith("SubscriptionIAMMember")}
    assert len(subscriptions) == len(gcp_graph.by_type("gcp:pubsub/subscription:Subscription"))


def test_the_granted_roles_cover_the_adapters_permissions_and_no_role_is_spare() -> None:
    for kind, needed in pubsub_adapter.IAM_PERMISSIONS.items():
        roles = pubsub_adapter.IAM_ROLES[kind]
        assert set(needed) <= set().union(*(ROLE_PERMISSIONS[r] for r in roles))
        for role in roles:
            assert ROLE_PERMISSIONS[role] & set(needed), f"{role} grants nothing the adapter uses on a {kind}"
    assert set(gcs_adapter.IAM_PERMISSIONS) <= set().union(*(ROLE_PERMISSIONS[r] for r in gcs_adapter.IAM_ROLES))
    for role in gcs_adapter.IAM_ROLES:
        assert ROLE_PERMISSIONS[role] & set(gcs_adapter.IAM_PERMISSIONS)


def test_no_basic_roles_and_no_public_data(gcp_graph: Graph) -> None:
    for node in gcp_graph.nodes:
        role = str(node.get("role") or "")
        assert role not in {"roles/owner", "roles/editor", "roles/viewer"}, f"{node.name} grants {role}"
        if node.get("member") in {"allUsers", "allAuthenticatedUsers"}:
            assert node.type == "gcp:cloudrunv2/serviceIamMember:ServiceIamMember"
            assert node.get("role") == "roles/run.invoker"


# --- the indexes the adapter's queries really need ---------------------------------------------


def required_index(structured: Any) -> tuple[str, tuple[tuple[str, str], ...]] | None:
    """The composite index a structured query needs, or None (single-field or merged indexes)."""
    collection = structured.from_[0].collection_id
    equality: list[str] = []
    ranged: list[str] = []

    def walk(f: Any) -> None:
        if f.composite_filter.filters:
            for sub in f.composite_filter.filters:
                walk(sub)
            return
        field = f.field_filter
        path = field.field.field_path
        if path == "__name__":
            return
        if field.op.name == "EQUAL":
            equality.append(path)
        else:
            ranged.append(path)

    if structured.where:
        walk(structured.where)
    orders = [(o.field.field_path, o.direction.name) for o in structured.order_by if o.field.field_path != "__name__"]
    for path in ranged:
        if path not in [p for p, _ in orders]:
            orders.insert(0, (path, "ASCENDING"))
    if not orders:
        return None  # equality filters only (merged single-field indexes) or none
    if not equality and len(orders) == 1:
        return None  # one field, either direction: the automatic single-field index
    fields = tuple((p, "ASCENDING") for p in equality) + tuple(orders)
    return collection, fields


@pytest.fixture
def recorded_queries(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    seen: list[Any] = []
    original = Query.stream

    def stream(self: BaseQuery, *args: Any, **kwargs: Any) -> Any:
        seen.append(self._to_protobuf())
        return original(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(Query, "stream", stream)
    return seen


def test_the_adapters_queries_need_exactly_the_declared_indexes(
    recorded_queries: list[Any], run_config: Callable[..., Graph]
) -> None:
    require_target("gcp")
    with firestore_service.provide("event_store", "firestore") as url:
        events = firestore_adapter.FirestoreEventStore.from_url(url)
        views = firestore_adapter.FirestoreViewStore.from_url(url)
        try:
            sid = f"acct-{uuid.uuid4().hex[:8]}"
            events.append(sid, [NewEvent("Opened", {"n": 0}), NewEvent("Deposited", {"n": 1})], NO_STREAM)
            events.append(sid, [NewEvent("Deposited", {"n": 2})], ANY)
            events.read_stream(sid)
            events.read_stream(sid, from_version=2, to_version=3, limit=1)
            events.read_stream(sid, backwards=True)
            events.read_stream_as_of(sid, utc_now() + timedelta(seconds=1))
            list(events.list_streams("acct-"))
            events.read_all(after=None, limit=10)
            views.commit("p", [ViewChange("balances", "a1", {"owner": "x", "open": True})], {"$all": "1"})
            views.query("balances", prefix="a", where=("owner", "x"), limit=5)
            views.query("balances", where=("open", True))
            views.drop("balances")
            views.drop_checkpoints("p")
        finally:
            events.close()
            views.close()
    assert len(recorded_queries) >= 8
    needed = {index for index in map(required_index, recorded_queries) if index is not None}
    assert needed == adapter_indexes()
    assert declared_indexes(run_config(BASE, SECRETS)) == needed
