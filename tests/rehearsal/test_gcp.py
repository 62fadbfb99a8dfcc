"""The gcp stack rehearsed: Google's emulators, the Cloud Run service and worker pool run as Cloud Run runs them.

No Google emulator enforces IAM: every call the workloads make is recorded at the SDK seam
with the service account the service runs as, and checked against the roles the graph
grants (:func:`tests.rehearsal.gcp.identity_problems`); every Firestore query is checked
against the graph's composite indexes and field exemptions.  Skipped, with the reason,
where Google's emulators are not installed.
"""

from __future__ import annotations

from typing import Any

from tests.rehearsal import contracts
from tests.rehearsal import gcp as target
from tests.rehearsal.harness import Rehearsal
from tests.rehearsal.permissions import GcpGrant, Need
from tests.rehearsal.stack import Deployment

API = "run:skyferry-api"
WORKER = "run:skyferry-worker"


def _sdk_calls(calls: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [c for c in calls if c["kind"] in {"grpc", "http"}]


def test_pulumi_accepts_the_stack_config(gcp: Rehearsal) -> None:
    contracts.pulumi_accepts(gcp.deployment)


def test_identifiers_are_realistic(gcp: Rehearsal) -> None:
    contracts.identifiers_are_realistic(
        gcp.deployment,
        {
            "email": r"[a-z0-9-]+@([a-z0-9-]+\.iam|gcp-sa-[a-z]+\.iam|gs-project-accounts\.iam)\.gserviceaccount\.com",
            "uri": r"https://[a-z0-9-]+-\d+\.[a-z0-9-]+\.run\.app",
            "member": r"serviceAccount:.+\.gserviceaccount\.com|allUsers",
        },
    )


def test_data_resources_are_the_graphs(gcp: Rehearsal) -> None:
    """The emulator holds each topic and subscription the graph declares, with its settings."""
    from tests.services import gcloud_emulators

    _, subscriber = target._pubsub_clients(gcloud_emulators.host("pubsub"))
    try:
        for node in gcp.deployment.nodes("gcp:pubsub/subscription:Subscription"):
            found = subscriber.get_subscription(request={"subscription": node.outputs["id"]})
            assert found.topic == node.inputs["topic"], node.name
            assert found.enable_message_ordering == bool(node.inputs.get("enableMessageOrdering")), node.name
            assert found.ack_deadline_seconds == node.inputs["ackDeadlineSeconds"], node.name
            assert found.message_retention_duration.total_seconds() == target.seconds(
                node.inputs["messageRetentionDuration"]
            ), node.name
            policy = node.inputs.get("deadLetterPolicy")
            if policy:
                assert found.dead_letter_policy.dead_letter_topic == policy["deadLetterTopic"], node.name
                assert found.dead_letter_policy.max_delivery_attempts == policy["maxDeliveryAttempts"], node.name
    finally:
        subscriber.close()


def test_workloads_run_the_graphs_command_and_environment(gcp: Rehearsal) -> None:
    assert set(gcp.launches) == {API, WORKER}
    assert gcp.launches[API].workload.args == ("serve",)
    assert gcp.launches[WORKER].workload.args == ("worker",)
    assert gcp.workloads[API].platform == "Cloud Run service skyferry-api"
    assert gcp.workloads[WORKER].platform == "Cloud Run worker pool skyferry-worker"
    contracts.workloads_get_the_graphs_environment(gcp)
    [version] = gcp.deployment.nodes("gcp:secretmanager/secretVersion:SecretVersion")
    contracts.secrets_resolved(gcp, {"SKYFERRY_API_TOKEN": version.inputs["secretData"]})


def test_api_listens_on_port_and_passes_its_probes(gcp: Rehearsal) -> None:
    """A service's container listens on ``$PORT``: ``serve`` binds ``SKYFERRY_PORT``, which the
    stack sets to the container port Cloud Run puts in ``PORT``."""
    assert {p.purpose for p in gcp.workloads[API].probes} == {"startup", "liveness"}
    contracts.listens_on(gcp, API, "PORT")
    contracts.probes_pass(gcp, API)


def test_worker_pool_passes_its_probes(gcp: Rehearsal) -> None:
    """A worker pool receives no requests (no port, no ``$PORT``); its probes ask the heartbeat's endpoint."""
    worker = gcp.workloads[WORKER]
    assert worker.ports == ()
    assert "PORT" not in gcp.launches[WORKER].env
    health = int(worker.env["SKYFERRY_HEALTH_PORT"])
    assert {(p.purpose, p.kind, p.port, p.path) for p in worker.probes} == {
        ("startup", "http", health, "/healthz"),
        ("liveness", "http", health, "/healthz"),
    }
    contracts.probes_pass(gcp, WORKER)


def test_worker_keeps_running(gcp: Rehearsal) -> None:
    contracts.keeps_running(gcp, WORKER)


def test_a_hung_worker_fails_its_liveness_probe(gcp: Rehearsal) -> None:
    contracts.liveness_catches_a_hang(gcp, WORKER)


def test_end_to_end_through_the_api(gcp: Rehearsal) -> None:
    contracts.end_to_end(gcp)


def test_store_fed_worker_publishes_nothing(gcp: Rehearsal) -> None:
    """The stack feeds its read models from the store: nobody reads the subscriptions, so nothing is published."""
    contracts.end_to_end(gcp)
    assert not [c for c in gcp.store_fed_calls() if c["kind"] == "grpc" and "Publisher/" in c["method"]]


def test_every_store_fed_call_is_granted_to_the_service_account(gcp: Rehearsal) -> None:
    """Each recorded SDK call, and Cloud Run's read of each secret, is granted by a role of the graph."""
    contracts.end_to_end(gcp)
    calls = _sdk_calls(gcp.store_fed_calls())
    granted = target.grants(gcp.deployment)
    checked, problems = target.identity_problems(calls, granted)
    for name, launch in gcp.launches.items():
        member = f"serviceAccount:{launch.workload.identity}"
        for variable, source in launch.workload.secret_env.items():
            secret = source.split()[1]
            need = Need(
                "secretmanager.versions.access",
                f"projects/{gcp.deployment.config['gcp:project']}/secrets/{secret}",
                "Cloud Run secret",
            )
            checked.append(({"workload": name}, need))
            if not any(g.member == member and g.covers(need) for g in granted):
                problems.append(f"{name}: Cloud Run cannot read {variable}'s secret as {member}")
    assert not problems, "\n".join(problems)
    permissions = {need.permission for _, need in checked}
    assert {"datastore.entities.get", "datastore.entities.create", "secretmanager.versions.access"} <= permissions
    assert {call["identity"] for call in calls} == {gcp.workloads[API].identity}


def test_the_identity_check_refuses_what_the_graph_does_not_grant(gcp: Rehearsal) -> None:
    """The negative proof: without the Firestore binding, or with it for another database, the calls are refused."""
    contracts.end_to_end(gcp)
    calls = [c for c in _sdk_calls(gcp.store_fed_calls()) if "firestore" in c.get("method", "")]
    assert calls
    granted = target.grants(gcp.deployment)
    without = [g for g in granted if g.role != "roles/datastore.user"]
    assert target.identity_problems(calls, without)[1]
    elsewhere = [
        GcpGrant(g.member, g.role, g.resource, 'resource.name == "projects/skyferry-example/databases/other"')
        if g.role == "roles/datastore.user"
        else g
        for g in granted
    ]
    assert target.identity_problems(calls, elsewhere)[1]


def test_every_firestore_query_has_an_index(gcp: Rehearsal) -> None:
    contracts.end_to_end(gcp)
    count, problems = target.query_problems(gcp.calls(), gcp.deployment)
    assert count, "no Firestore query was recorded"
    assert not problems, "\n".join(problems)
    needs_composite = {
        "from": [{"collection_id": "skyferry_events"}],
        "where": {"field_filter": {"field": {"field_path": "type"}, "op": "EQUAL"}},
        "order_by": [{"field": {"field_path": "recorded_at"}}],
    }
    assert target.index_problem(
        needs_composite, [n.inputs for n in gcp.deployment.nodes("gcp:firestore/index:Index")], set()
    )


def test_export_then_import_as_the_service_account(gcp: Rehearsal) -> None:
    reports = contracts.export_then_import(gcp, API)
    assert reports["export"]["archive"].startswith("gs://")
    storage = [c for c in gcp.calls() if c["kind"] == "http"]
    checked, problems = target.identity_problems(storage, target.grants(gcp.deployment))
    assert not problems, "\n".join(problems)
    assert any(need.permission == "storage.objects.create" for _, need in checked), (
        "the export wrote nothing to the bucket"
    )


def test_an_api_token_is_required_or_optional_for_real() -> None:
    def references(variant: Deployment) -> dict[str, tuple[set[str], bool]]:
        return {
            name: (set(w.secret_env) - set(w.env), w.args == ("serve",) and "SKYFERRY_API_TOKEN" not in w.env)
            for name, w in target.run_workloads(variant).items()
        }

    contracts.api_token_is_optional_or_refused("gcp", references)


def test_broker_retention_is_bounded(gcp: Rehearsal) -> None:
    """In store-fed mode nobody reads the subscriptions: what the relay publishes must expire (at most 7 days)."""
    for node in gcp.deployment.nodes("gcp:pubsub/subscription:Subscription"):
        assert 0 < target.seconds(node.inputs["messageRetentionDuration"]) <= 7 * 24 * 3600, node.name


def test_public_api_endpoint_uses_tls(gcp: Rehearsal) -> None:
    assert gcp.deployment.graph.outputs["api_url"].value.startswith("https://")


def test_broker_fed_end_to_end_through_the_stacks_subscriptions(gcp: Rehearsal) -> None:
    """On the emulator the adapter creates the subscriptions it misses; the identity check below says whether it may."""
    contracts.broker_fed_end_to_end(gcp, WORKER)


def test_every_broker_fed_call_is_granted_to_the_service_account(gcp: Rehearsal) -> None:
    """Broker-fed, the worker publishes and consumes the groups' subscriptions: each call must be granted.

    Were the stack's subscriptions not the app's groups, the worker would create its own,
    and ``pubsub.subscriptions.create`` is granted to nobody.
    """
    gcp.broker_fed(WORKER)
    calls = _sdk_calls(gcp.calls()[gcp.extra["broker_fed_calls"] :])
    checked, problems = target.identity_problems(calls, target.grants(gcp.deployment))
    assert not problems, "\n".join(sorted(set(problems)))
    permissions = {need.permission for _, need in checked}
    assert {"pubsub.topics.publish", "pubsub.subscriptions.consume"} <= permissions, permissions
