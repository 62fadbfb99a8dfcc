"""The azure stack rehearsed: the Cosmos DB emulator, Azurite, the Service Bus fake, Container Apps.

No Azure emulator enforces RBAC: every call the workloads make is recorded at the SDK seam
with the identity ``DefaultAzureCredential`` would use (``AZURE_CLIENT_ID``) and checked
against that identity's role assignments in the graph, data-plane roles included
(:func:`tests.rehearsal.azure.identity_problems`).
"""

from __future__ import annotations

import time
from typing import Any

import httpx

from tests.rehearsal import azure as target
from tests.rehearsal import contracts
from tests.rehearsal.harness import Rehearsal
from tests.rehearsal.permissions import AzureNeed
from tests.rehearsal.stack import Deployment

API = "app:skyferry-api/api"
WORKER = "app:skyferry-worker/worker"
GUID = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"


def _sdk_calls(azure: Rehearsal) -> list[dict[str, Any]]:
    return [c for c in azure.calls() if c["kind"] in {"azure-http", "servicebus"}]


def test_pulumi_accepts_the_stack_config(azure: Rehearsal) -> None:
    contracts.pulumi_accepts(azure.deployment)


def test_identifiers_are_realistic(azure: Rehearsal) -> None:
    contracts.identifiers_are_realistic(
        azure.deployment,
        {
            "id": rf"/subscriptions/{GUID}/resourceGroups/[A-Za-z0-9-]+(/providers/.+)?|[0-9a-f-]{{36}}",
            "principalId": GUID,
            "clientId": GUID,
            "defaultDomain": r"[a-z0-9]+\.[a-z]+\.azurecontainerapps\.io",
        },
    )


def test_data_resources_are_the_graphs(azure: Rehearsal) -> None:
    """The emulator holds the graph's database and containers with their partition keys; Azurite its container."""
    from azure.cosmos import CosmosClient

    from tests.services import cosmos

    client = CosmosClient(cosmos.endpoint(), credential=cosmos.EMULATOR_KEY, connection_verify=False)
    for node in azure.deployment.nodes("azure-native:cosmosdb:SqlResourceSqlContainer"):
        properties = (
            client.get_database_client(node.inputs["databaseName"])
            .get_container_client(node.inputs["containerName"])
            .read()
        )
        assert properties["partitionKey"]["paths"] == node.inputs["resource"]["partitionKey"]["paths"], node.name
    from azure.storage.blob import BlobServiceClient

    azurite = azure.extra["azurite"]
    for node in azure.deployment.nodes("azure-native:storage:BlobContainer"):
        account = node.inputs["accountName"]
        service = BlobServiceClient(
            azurite.endpoint(account), credential={"account_name": account, "account_key": azurite.keys[account]}
        )
        assert service.get_container_client(node.inputs["containerName"]).exists(), node.name


def test_workloads_run_the_graphs_command_and_environment(azure: Rehearsal) -> None:
    assert set(azure.launches) == {API, WORKER}
    assert azure.launches[API].workload.args == ("serve",)
    assert azure.launches[WORKER].workload.args == ("worker",)
    contracts.workloads_get_the_graphs_environment(azure)
    [secret] = azure.deployment.nodes("azure-native:keyvault:Secret")
    contracts.secrets_resolved(azure, {"SKYFERRY_API_TOKEN": secret.inputs["properties"]["value"]})


def test_each_app_runs_as_an_identity_assigned_to_it(azure: Rehearsal) -> None:
    """AZURE_CLIENT_ID names a user-assigned identity of the app: else no token, on Azure."""
    by_client = target.identities(azure.deployment)
    for node in azure.deployment.nodes("azure-native:app:ContainerApp"):
        assigned = set(node.inputs["identity"]["userAssignedIdentities"])
        for container in node.inputs["template"]["containers"]:
            client_id = next(e["value"] for e in container["env"] if e["name"] == "AZURE_CLIENT_ID")
            assert client_id in by_client, f"{node.name}: AZURE_CLIENT_ID is no identity of the graph"
            assert by_client[client_id]["id"] in assigned, f"{node.name}: its identity is not assigned to the app"


def test_api_passes_its_probes(azure: Rehearsal) -> None:
    assert {p.purpose for p in azure.workloads[API].probes} == {"liveness", "readiness", "startup"}
    contracts.probes_pass(azure, API)


def test_worker_keeps_running(azure: Rehearsal) -> None:
    """The worker has no ingress; its probes ask the heartbeat's endpoint on ``SKYFERRY_HEALTH_PORT``."""
    worker = azure.workloads[WORKER]
    assert worker.ports == ()
    health = int(worker.env["SKYFERRY_HEALTH_PORT"])
    assert {(p.purpose, p.kind, p.port, p.path) for p in worker.probes} == {
        ("startup", "http", health, "/healthz"),
        ("liveness", "http", health, "/healthz"),
    }
    contracts.keeps_running(azure, WORKER)
    contracts.probes_pass(azure, WORKER)


def test_a_hung_worker_fails_its_liveness_probe(azure: Rehearsal) -> None:
    contracts.liveness_catches_a_hang(azure, WORKER)


def test_end_to_end_through_the_api(azure: Rehearsal) -> None:
    contracts.end_to_end(azure)


def test_store_fed_worker_publishes_nothing(azure: Rehearsal) -> None:
    """The stack feeds its read models from the store: nobody reads the subscriptions, so nothing is sent."""
    contracts.end_to_end(azure)
    assert not [c for c in azure.store_fed_calls() if c["kind"] == "servicebus" and c["operation"] == "send"]


def test_every_call_is_granted_to_the_apps_identity(azure: Rehearsal) -> None:
    """Each recorded call, and Container Apps' read of each Key Vault secret and pull from each
    registry, is granted by a role assignment."""
    contracts.end_to_end(azure)
    granted = target.grants(azure.deployment)
    checked, problems = target.identity_problems(_sdk_calls(azure), azure.deployment, azure.extra["hosts"], granted)
    principals = {i["id"]: i["principal"] for i in target.identities(azure.deployment).values()}
    secret_ids = {s.outputs["name"]: s.outputs["id"] for s in azure.deployment.nodes("azure-native:keyvault:Secret")}
    registries = {
        r.outputs["loginServer"]: r.outputs["id"]
        for r in azure.deployment.nodes("azure-native:containerregistry:Registry")
    }
    for node in azure.deployment.nodes("azure-native:app:ContainerApp"):
        for registry in (node.inputs.get("configuration") or {}).get("registries", []):
            assert "passwordSecretRef" not in registry, f"{node.name}: pulls with a password"
            assert "identity" in registry, f"{node.name}: pulls from {registry['server']} as nobody"
            scope = registries.get(registry["server"], registry["server"])
            need = AzureNeed("Microsoft.ContainerRegistry/registries/pull/read", False, scope, "Container Apps pull")
            checked.append(({"workload": node.name}, need))
            if not any(g.principal == principals.get(registry["identity"]) and g.covers(need) for g in granted):
                problems.append(f"{node.name}: Container Apps cannot pull from {registry['server']}")
        for secret in (node.inputs.get("configuration") or {}).get("secrets", []):
            if "keyVaultUrl" not in secret:
                continue
            scope = secret_ids.get(secret["keyVaultUrl"].rstrip("/").rsplit("/", 1)[-1], secret["keyVaultUrl"])
            need = AzureNeed("Microsoft.KeyVault/vaults/secrets/getSecret/action", True, scope, "Container Apps secret")
            checked.append(({"workload": node.name}, need))
            if not any(g.principal == principals.get(secret["identity"]) and g.covers(need) for g in granted):
                problems.append(f"{node.name}: Container Apps cannot read {secret['name']} as {secret['identity']}")
    assert not problems, "\n".join(problems)
    operations = {need.operation for _, need in checked}
    for expected in ("containers/executeQuery", "items/create", "secrets/getSecret/action", "pull/read"):
        assert any(o.endswith(expected) for o in operations), f"no {expected} among {sorted(operations)}"


def test_the_identity_check_refuses_what_the_graph_does_not_grant(azure: Rehearsal) -> None:
    """The negative proof: without the Cosmos DB data role the store calls are refused."""
    contracts.end_to_end(azure)
    granted = [g for g in target.grants(azure.deployment) if not g.role_id.startswith("00000000-")]
    _, problems = target.identity_problems(_sdk_calls(azure), azure.deployment, azure.extra["hosts"], granted)
    assert any("Microsoft.DocumentDB" in p for p in problems)


def test_export_then_import_as_the_apps_identity(azure: Rehearsal) -> None:
    reports = contracts.export_then_import(azure, API)
    assert reports["export"]["archive"].startswith("az://")
    checked, problems = target.identity_problems(
        _sdk_calls(azure), azure.deployment, azure.extra["hosts"], target.grants(azure.deployment)
    )
    assert not problems, "\n".join(problems)
    assert any(need.operation.endswith("blobs/write") for _, need in checked), "the export wrote no blob"


def test_broker_retention_is_bounded(azure: Rehearsal) -> None:
    """In store-fed mode nobody reads the subscriptions: what the relay publishes must expire."""
    for topic in azure.deployment.nodes("azure-native:servicebus:Topic"):
        subscriptions = [
            s
            for s in azure.deployment.nodes("azure-native:servicebus:Subscription")
            if s.inputs["topicName"] == topic.inputs["topicName"]
        ]
        for subscription in subscriptions:
            ttl = subscription.inputs.get("defaultMessageTimeToLive") or topic.inputs.get("defaultMessageTimeToLive")
            assert ttl, f"{subscription.name}: messages never expire"
            assert target.iso_seconds(ttl) <= 14 * 86400, f"{subscription.name}: messages kept {ttl}"


def test_a_readiness_probe_reads_a_bounded_number_of_documents(azure: Rehearsal) -> None:
    contracts.end_to_end(azure)
    before = len(azure.calls())
    assert httpx.get(azure.api_base() + "/readyz", timeout=30).status_code == 200
    time.sleep(0.5)
    probe = [c for c in azure.calls()[before:] if c["workload"] == API and c["kind"] == "azure-http"]
    documents = sum(int(c.get("item_count") or 0) for c in probe)
    assert probe, "the readiness probe made no call"
    assert documents <= 2, f"one readiness probe read {documents} documents in {len(probe)} requests"


def test_resources_are_in_the_stacks_location() -> None:
    variant = contracts.deploy_variant("azure", {"azure-native:location": "northeurope"})
    misplaced = [n.name for n in variant.graph.nodes if n.inputs.get("location") not in (None, "global", "northeurope")]
    assert not misplaced, f"not in northeurope: {misplaced}"


def test_an_api_token_is_required_or_optional_for_real() -> None:
    def references(variant: Deployment) -> dict[str, tuple[set[str], bool]]:
        return {
            name: (set(w.secret_env) - set(w.env), w.args == ("serve",) and "SKYFERRY_API_TOKEN" not in w.env)
            for name, w in target.app_workloads(variant).items()
        }

    contracts.api_token_is_optional_or_refused("azure", references)


def test_public_api_endpoint_uses_tls(azure: Rehearsal) -> None:
    assert azure.deployment.graph.outputs["api_url"].value.startswith("https://")
    for node in azure.deployment.nodes("azure-native:app:ContainerApp"):
        ingress = (node.inputs.get("configuration") or {}).get("ingress")
        if ingress and ingress.get("external"):
            assert ingress.get("allowInsecure") is False, node.name


def test_broker_fed_end_to_end_through_the_stacks_subscriptions(azure: Rehearsal) -> None:
    contracts.broker_fed_end_to_end(azure, WORKER)
    checked, problems = target.identity_problems(
        _sdk_calls(azure), azure.deployment, azure.extra["hosts"], target.grants(azure.deployment)
    )
    assert not problems, "\n".join(problems)
    assert any(need.operation.endswith("messages/receive/action") for _, need in checked)
