"""The azure target under mocks: the resource graph, the outputs, every policy, least privilege.

Least privilege is checked two ways: every role assignment is scoped to one resource below
the resource group (never the group or the subscription), and the roles granted are
exactly the data-plane roles the three Azure adapters name for the calls they make.
"""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest

from providers import policies
from providers.azure import broker as azure_broker
from providers.azure import compute as azure_compute
from providers.azure import identity as azure_identity
from providers.azure import store as azure_store
from providers.base import OUTPUT_NAMES, StackConfigError, current_stack_config, deploy
from providers.graph import Graph, GraphMocks, GraphMonitor, Node, run_program
from skyferry.adapters.archives import blob as blob_adapter
from skyferry.adapters.archives.blob import BlobArchive
from skyferry.adapters.brokers import servicebus as servicebus_adapter
from skyferry.adapters.brokers.servicebus import ServiceBusLocation
from skyferry.adapters.stores import cosmos as cosmos_adapter
from skyferry.adapters.stores.cosmos import CosmosLocation
from skyferry.ledger import CONSUMER_GROUPS, MAX_DELIVERIES

BASE = {
    "skyferry:target": "azure",
    "skyferry:name": "ledger",
    "skyferry:image": "skyferry.azurecr.io/skyferry:1.2.3",
    "skyferry:apiToken": "token-secret-value-0123456789",
    "skyferry:apiReplicas": "2",
    "skyferry:apiMaxReplicas": "5",
    "azure-native:location": "northeurope",
}
SECRETS = {"skyferry:apiToken"}
ROLE_NAME_BY_ID = {guid: name for name, guid in azure_identity.ROLE_IDS.items()}


def only(graph: Graph, type_: str) -> Node:
    nodes = graph.by_type(type_)
    assert len(nodes) == 1, f"expected one {type_}, got {[n.name for n in nodes]}"
    return nodes[0]


@pytest.fixture
def azure_graph(run_config: Callable[..., Graph]) -> Graph:
    section = {"serviceBusSku": "Standard"}
    return run_config({**BASE, "skyferry:azure": json.dumps(section)}, SECRETS)


# --- the graph ------------------------------------------------------------------------------


def test_every_resource_is_a_child_of_the_platform_component(azure_graph: Graph) -> None:
    component = only(azure_graph, "skyferry:azure:Platform")
    children = [n for n in azure_graph.nodes if n.custom]
    assert children
    assert all(n.parent == component.urn for n in children), [n.name for n in children if n.parent != component.urn]


def test_the_containers_use_the_adapters_partition_keys(azure_graph: Graph) -> None:
    containers = {
        n.get("containerName"): n for n in azure_graph.by_type("azure-native:cosmosdb:SqlResourceSqlContainer")
    }
    assert set(containers) == {azure_store.EVENTS_CONTAINER, azure_store.VIEWS_CONTAINER}
    events = containers[azure_store.EVENTS_CONTAINER]
    views = containers[cosmos_adapter.views_container_name(azure_store.EVENTS_CONTAINER)]
    assert events.get("resource.partitionKey.paths") == [cosmos_adapter.EVENTS_PARTITION_KEY_PATH]
    assert views.get("resource.partitionKey.paths") == [cosmos_adapter.VIEWS_PARTITION_KEY_PATH]
    assert events.protect
    assert views.protect


def test_the_cosmos_account_is_private_keyless_backed_up_locked_and_cmk_encrypted(azure_graph: Graph) -> None:
    account = only(azure_graph, "azure-native:cosmosdb:DatabaseAccount")
    assert account.get("backupPolicy.type") == "Continuous"
    assert account.get("disableLocalAuth") is True
    assert account.get("publicNetworkAccess") == "Disabled"
    assert str(account.get("keyVaultKeyUri")).endswith("/keys/skyferry-data")
    assert account.get("locations.0.locationName") == "northeurope"
    assert account.protect
    lock = only(azure_graph, "azure-native:authorization:ManagementLockByScope")
    assert lock.get("level") == "CanNotDelete"
    assert lock in azure_graph.referencing(account)
    endpoint = next(
        n
        for n in azure_graph.by_type("azure-native:network:PrivateEndpoint")
        if n.get("privateLinkServiceConnections.0.groupIds") == ["Sql"]
    )
    assert account.urn in endpoint.dependencies


def test_service_bus_has_dedup_and_a_session_subscription_per_group(azure_graph: Graph) -> None:
    namespace = only(azure_graph, "azure-native:servicebus:Namespace")
    assert namespace.get("disableLocalAuth") is True
    topic = only(azure_graph, "azure-native:servicebus:Topic")
    assert topic.get("requiresDuplicateDetection") is True
    assert topic.get("duplicateDetectionHistoryTimeWindow") == servicebus_adapter.DUPLICATE_DETECTION_WINDOW
    subscriptions = {n.get("subscriptionName"): n for n in azure_graph.by_type("azure-native:servicebus:Subscription")}
    assert set(subscriptions) == set(CONSUMER_GROUPS)
    # bounded: a topic nobody reads expires its events instead of filling up and refusing sends
    assert topic.get("maxSizeInMegabytes") == 5120
    assert topic.get("defaultMessageTimeToLive") == "P7D"
    for sub in subscriptions.values():
        assert sub.get("requiresSession") is True
        # the backstop: one delivery after the app dead-letters (its retry policy, not a setting)
        assert sub.get("maxDeliveryCount") == MAX_DELIVERIES + 1 == 6
        assert sub.get("defaultMessageTimeToLive") == "P7D"
        assert sub.get("deadLetteringOnMessageExpiration") is False


def test_a_premium_namespace_without_public_access_is_reached_through_a_private_endpoint(
    run_config: Callable[..., Graph],
) -> None:
    """Public access off, Service Bus accepts connections only through a private endpoint on the VNet."""
    graph = run_config({**BASE, "skyferry:azure": json.dumps({"serviceBusSku": "Premium"})}, SECRETS)
    namespace = only(graph, "azure-native:servicebus:Namespace")
    assert namespace.get("publicNetworkAccess") == "Disabled"
    [endpoint] = [
        n
        for n in graph.by_type("azure-native:network:PrivateEndpoint")
        if n.get("privateLinkServiceConnections.0.groupIds") == ["namespace"]
    ]
    assert endpoint.get("privateLinkServiceConnections.0.privateLinkServiceId") == namespace.outputs["id"]
    subnet = next(n for n in graph.by_type("azure-native:network:Subnet") if n.name == "ledger-endpoints")
    assert endpoint.get("subnet.id") == subnet.outputs["id"]
    [zone] = [
        n
        for n in graph.by_type("azure-native:privatedns:PrivateZone")
        if n.get("privateZoneName") == "privatelink.servicebus.windows.net"
    ]
    [link] = [n for n in graph.by_type("azure-native:privatedns:VirtualNetworkLink") if zone.urn in n.dependencies]
    assert link.get("registrationEnabled") is False
    [dns] = [n for n in graph.by_type("azure-native:network:PrivateDnsZoneGroup") if endpoint.urn in n.dependencies]
    assert dns.get("privateDnsZoneConfigs.0.privateDnsZoneId") == zone.outputs["id"]
    assert policies.evaluate(graph) == []


def test_a_standard_namespace_has_no_private_endpoint_nor_its_dns_zone(azure_graph: Graph) -> None:
    """Standard has no private endpoints (and keeps public access, RBAC only): no zone nobody uses."""
    assert only(azure_graph, "azure-native:servicebus:Namespace").get("publicNetworkAccess") == "Enabled"
    groups = [
        n.get("privateLinkServiceConnections.0.groupIds")
        for n in azure_graph.by_type("azure-native:network:PrivateEndpoint")
    ]
    assert sorted(g[0] for g in groups) == ["Sql", "blob", "vault"]
    zones = {n.get("privateZoneName") for n in azure_graph.by_type("azure-native:privatedns:PrivateZone")}
    assert "privatelink.servicebus.windows.net" not in zones


def test_every_resource_is_in_the_providers_location(azure_graph: Graph) -> None:
    located = [n for n in azure_graph.nodes if "location" in n.inputs]
    assert len(located) > 10
    assert {n.get("location") for n in located} <= {"northeurope", "global"}, [
        (n.name, n.get("location")) for n in located if n.get("location") not in ("northeurope", "global")
    ]
    account = only(azure_graph, "azure-native:cosmosdb:DatabaseAccount")
    assert account.get("locations.0.locationName") == "northeurope"


def test_a_missing_location_names_the_providers_key(run_config: Callable[..., Graph]) -> None:
    values = {k: v for k, v in BASE.items() if k != "azure-native:location"}
    with pytest.raises(StackConfigError) as caught:
        run_config(values, SECRETS)
    assert caught.value.key == "azure-native:location"


def test_the_archive_account_is_private_tls12_versioned(azure_graph: Graph) -> None:
    account = only(azure_graph, "azure-native:storage:StorageAccount")
    assert account.get("allowBlobPublicAccess") is False
    assert account.get("allowSharedKeyAccess") is False
    assert account.get("minimumTlsVersion") == "TLS1_2"
    assert account.get("enableHttpsTrafficOnly") is True
    assert account.get("encryption.keySource") == "Microsoft.Keyvault"
    service = only(azure_graph, "azure-native:storage:BlobServiceProperties")
    assert service.get("isVersioningEnabled") is True
    container = only(azure_graph, "azure-native:storage:BlobContainer")
    assert container.get("publicAccess") == "None"


def test_key_vault_is_rbac_purge_protected_and_holds_the_token_as_a_secret(azure_graph: Graph) -> None:
    vault = only(azure_graph, "azure-native:keyvault:Vault")
    assert vault.get("properties.enableRbacAuthorization") is True
    assert vault.get("properties.enablePurgeProtection") is True
    assert vault.get("properties.networkAcls.defaultAction") == "Deny"
    secret = only(azure_graph, "azure-native:keyvault:Secret")
    assert secret.is_secret("properties.value") or secret.is_secret("properties")


def test_the_apps_run_as_the_identity_and_read_the_token_from_key_vault(azure_graph: Graph) -> None:
    identity = next(
        n for n in azure_graph.by_type("azure-native:managedidentity:UserAssignedIdentity") if n.name.endswith("-app")
    )
    apps = {n.get("containerAppName"): n for n in azure_graph.by_type("azure-native:app:ContainerApp")}
    assert set(apps) == {"ledger-api", "ledger-worker"}
    for name, node in apps.items():
        assert identity.urn in node.dependencies
        container = node.get("template.containers.0")
        env = {e["name"]: e for e in container["env"]}
        assert env["SKYFERRY_STORE_URL"]["value"].startswith("cosmos://")
        assert container["args"] == (["serve"] if name == "ledger-api" else ["worker"])
        if name == "ledger-api":
            assert env["SKYFERRY_API_TOKEN"].get("secretRef") == "api-token"
            assert "value" not in env["SKYFERRY_API_TOKEN"]
            assert [s["name"] for s in node.get("configuration.secrets")] == ["api-token"]
        else:  # the worker serves nothing: no token; its HTTP probes ask its heartbeat
            assert "SKYFERRY_API_TOKEN" not in env
            assert node.get("configuration.secrets") == []
            port = int(env["SKYFERRY_HEALTH_PORT"]["value"])
            assert env["SKYFERRY_HEARTBEAT_FILE"]["value"].startswith("/tmp/")
            probes = {p["type"]: p["httpGet"] for p in container["probes"]}
            assert probes == {
                "Startup": {"path": "/healthz", "port": port},
                "Liveness": {"path": "/healthz", "port": port},
            }
    assert apps["ledger-api"].get("configuration.ingress.external") is True
    assert apps["ledger-api"].get("configuration.ingress.allowInsecure") is False
    registry = only(azure_graph, "azure-native:containerregistry:Registry")
    assert registry.get("adminUserEnabled") is False
    for node in apps.values():
        [pull] = node.get("configuration.registries")
        assert pull["identity"] == identity.outputs["id"]
    assert apps["ledger-api"].get("template.scale.maxReplicas") == 5
    assert apps["ledger-worker"].get("configuration.ingress") is None


#: Container Apps' consumption pairs (cores, GiB): 0.25/0.5 to 2/4, and up to 4/8 on the
#: consumption workload profile the environment declares; memory is always 2 GiB a core.
CONSUMPTION_CORES = [n / 4 for n in range(1, 17)]


@pytest.mark.parametrize(
    ("millicores", "memory", "expected"),
    [
        (250, 512, (0.25, "0.5Gi")),
        (500, 1024, (0.5, "1Gi")),
        (1000, 512, (1.0, "2Gi")),
        # memoryMib raises the CPU until the pair's memory holds it
        (250, 1024, (0.5, "1Gi")),
        (500, 1536, (0.75, "1.5Gi")),
        (500, 4096, (2.0, "4Gi")),
        (500, 5000, (2.5, "5Gi")),
        (1000, 8192, (4.0, "8Gi")),
    ],
)
def test_container_sizes_hold_the_memory_asked(millicores: int, memory: int, expected: tuple[float, str]) -> None:
    assert azure_compute.container_resources(millicores, memory) == expected


def test_every_size_the_azure_target_accepts_is_a_consumption_pair_at_least_as_big() -> None:
    for millicores in range(250, 4001, 250):
        for memory in range(512, 8193, 256):
            cores, given = azure_compute.container_resources(millicores, memory)
            assert cores in CONSUMPTION_CORES, (millicores, memory, cores)
            assert given == f"{cores * 2:g}Gi", (millicores, memory, cores, given)
            assert cores * 1000 >= millicores, (millicores, memory, cores)
            assert cores * 2 * 1024 >= memory, (millicores, memory, cores, given)


def test_memory_no_consumption_pair_holds_is_refused_before_anything_is_declared() -> None:
    monitor = GraphMonitor(GraphMocks())
    values = {**BASE, "skyferry:memoryMib": "12288"}
    with pytest.raises(StackConfigError) as caught:
        run_program(lambda: deploy(current_stack_config()), values, SECRETS, monitor=monitor)
    assert caught.value.key == "skyferry:memoryMib"
    assert "8192 MiB" in str(caught.value)
    assert monitor.nodes == []


def test_the_apps_get_the_memory_asked(run_config: Callable[..., Graph]) -> None:
    graph = run_config({**BASE, "skyferry:cpuMillicores": "500", "skyferry:memoryMib": "4096"}, SECRETS)
    apps = graph.by_type("azure-native:app:ContainerApp")
    assert len(apps) == 2
    for node in apps:
        assert node.get("template.containers.0.resources") == {"cpu": 2.0, "memory": "4Gi"}


# --- outputs ----------------------------------------------------------------------------------


def test_the_outputs_are_the_standard_ones_and_open_with_the_adapters(azure_graph: Graph) -> None:
    assert tuple(azure_graph.outputs) == OUTPUT_NAMES
    values = {k: v.value for k, v in azure_graph.outputs.items()}
    assert values["target"] == "azure"
    assert values["api_url"].startswith("https://")
    store = CosmosLocation.parse(values["store_url"])
    assert (store.database, store.container, store.key) == (
        azure_store.DATABASE,
        azure_store.EVENTS_CONTAINER,
        None,
    )
    broker = ServiceBusLocation.parse(values["broker_url"])
    assert not broker.provision
    assert broker.client_name is None
    archive = BlobArchive.from_url(values["archive_url"])
    assert archive.container
    assert values["image"] == BASE["skyferry:image"]
    assert not any(v.secret for v in azure_graph.outputs.values()), "no output holds a credential"


# --- policies -----------------------------------------------------------------------------------


def test_the_stack_file_and_the_test_config_pass_every_policy(
    azure_graph: Graph, run_stack: Callable[[str], Graph]
) -> None:
    assert policies.evaluate(azure_graph) == []
    assert policies.evaluate(run_stack("azure")) == []


def test_without_customer_managed_keys_the_cmk_policy_fires(run_config: Callable[..., Graph]) -> None:
    graph = run_config({**BASE, "skyferry:azure": json.dumps({"customerManagedKey": False})}, SECRETS)
    findings = {(f.rule, f.resource_type) for f in policies.evaluate(graph)}
    assert findings == {
        ("encryption-cmk", "azure-native:cosmosdb:DatabaseAccount"),
        ("encryption-cmk", "azure-native:storage:StorageAccount"),
    }


def test_the_policies_fire_on_a_public_unprotected_account(run_program: Callable[..., Graph]) -> None:
    from pulumi_azure_native import cosmosdb, storage

    def bad() -> None:
        cosmosdb.DatabaseAccount(
            "bad",
            resource_group_name="rg",
            database_account_offer_type="Standard",
            locations=[{"locationName": "westeurope"}],
            public_network_access="Enabled",
            tags={"skyferry-role": "event-store"},
        )
        storage.StorageAccount("badst", resource_group_name="rg", kind="StorageV2", sku={"name": "Standard_LRS"})

    rules = {(f.rule, f.resource_name) for f in policies.evaluate(run_program(bad))}
    assert {("no-public-data-store", "bad"), ("event-store-protection", "bad"), ("encryption-cmk", "bad")} <= rules
    assert {("no-public-data-store", "badst"), ("encryption-cmk", "badst")} <= rules


# --- least privilege ----------------------------------------------------------------------------


def test_role_assignments_are_scoped_to_single_resources_below_the_group(azure_graph: Graph) -> None:
    group = only(azure_graph, "azure-native:resources:ResourceGroup")
    by_id = {str(n.outputs.get("id")): n for n in azure_graph.nodes if n.outputs.get("id")}
    granted: dict[str, set[str]] = {}
    for assignment in azure_graph.by_type("azure-native:authorization:RoleAssignment"):
        scope = str(assignment.get("scope"))
        assert scope != str(group.outputs.get("id"))
        assert not scope.startswith("/subscriptions/")
        target = by_id.get(scope)
        assert target is not None, f"{assignment.name}: scope {scope!r} is not one declared resource"
        assert target.type != "azure-native:resources:ResourceGroup"
        role = str(assignment.get("roleDefinitionId")).rsplit("/", 1)[-1]
        granted.setdefault(target.type, set()).add(ROLE_NAME_BY_ID[role])
    assert granted == {
        "azure-native:servicebus:Topic": {servicebus_adapter.SENDER_ROLE, servicebus_adapter.RECEIVER_ROLE},
        "azure-native:storage:BlobContainer": {blob_adapter.BLOB_DATA_ROLE},
        "azure-native:keyvault:Secret": {"Key Vault Secrets User"},
        "azure-native:keyvault:Key": {"Key Vault Crypto Service Encryption User"},
        "azure-native:containerregistry:Registry": {"AcrPull"},  # the apps pull their image as the identity
    }
    cosmos = only(azure_graph, "azure-native:cosmosdb:SqlResourceSqlRoleAssignment")
    account = only(azure_graph, "azure-native:cosmosdb:DatabaseAccount")
    assert cosmos.get("scope") == f"{account.outputs['id']}/dbs/{azure_store.DATABASE}"
    assert str(cosmos.get("roleDefinitionId")).endswith(azure_identity.COSMOS_DATA_CONTRIBUTOR)


def test_the_app_identity_gets_data_roles_only_and_the_encryption_identity_only_the_key(azure_graph: Graph) -> None:
    identities = {n.name: n for n in azure_graph.by_type("azure-native:managedidentity:UserAssignedIdentity")}
    app_identity, key_identity = identities["ledger-app"], identities["ledger-cmk"]
    for assignment in azure_graph.by_type("azure-native:authorization:RoleAssignment"):
        role = ROLE_NAME_BY_ID[str(assignment.get("roleDefinitionId")).rsplit("/", 1)[-1]]
        owner = key_identity if role == "Key Vault Crypto Service Encryption User" else app_identity
        assert owner.urn in assignment.dependencies, f"{assignment.name} is granted to the wrong identity"


def test_the_broker_never_needs_the_manage_right_without_provision() -> None:
    """Deployed, the adapter makes only Sender/Receiver calls: no administration client is touched."""
    from tests.services.servicebus_fake import FakeAdministrationClient, FakeNamespace, FakeServiceBusClient

    class Forbidden:
        def __getattr__(self, name: str) -> object:
            raise AssertionError(f"the administration API ({name}) needs the Manage right")

    namespace = FakeNamespace()
    namespace.create_topic(azure_broker.TOPIC)
    FakeAdministrationClient(namespace).create_subscription(azure_broker.TOPIC, "projections", requires_session=True)
    location = ServiceBusLocation.parse(f"servicebus://ns/{azure_broker.TOPIC}?retry_backoff=0")
    broker = servicebus_adapter.ServiceBusBroker(location, client=FakeServiceBusClient(namespace), admin=Forbidden())
    handled: list[str] = []
    subscription = broker.subscribe("projections", lambda m: handled.append(m.id))
    from skyferry.core.ports import Message

    broker.publish([Message(id="00000000-0000-0000-0000-000000000001", key="s", body=b"{}")])
    import time

    deadline = time.monotonic() + 30
    while not handled and time.monotonic() < deadline:
        time.sleep(0.02)
    subscription.close()
    assert handled == ["00000000-0000-0000-0000-000000000001"]
    assert broker.dead_letters("projections") == []


# --- config -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("section", "key"),
    [
        ({"vnetCidr": "10.0.0.0/26"}, "skyferry:azure.vnetCidr"),
        ({"location": "northeurope"}, "skyferry:azure.location"),
        ({"serviceBusSku": "Basic"}, "skyferry:azure.serviceBusSku"),
        ({"colour": "blue"}, "skyferry:azure.colour"),
    ],
)
def test_bad_config_is_rejected_naming_the_key(
    run_config: Callable[..., Graph], section: dict[str, object], key: str
) -> None:
    with pytest.raises(StackConfigError) as caught:
        run_config({**BASE, "skyferry:azure": json.dumps(section)}, SECRETS)
    assert caught.value.key == key
