"""The Azure rehearsal: the graph's Cosmos DB containers, blob container and Service Bus topic on
the emulators (and the fake), its Container Apps run as Container Apps runs them, every call checked.

* :func:`provision` creates, from the graph's inputs, the Cosmos DB database and its
  containers (partition key paths) on the Cosmos DB emulator and the archive container on
  an Azurite of the rehearsal's own that serves the graph's storage account name.  Service
  Bus has no emulator: the seam gives the worker the SDK-seam fake with the graph's topic
  (duplicate detection window) and subscriptions (sessions, max delivery count).
* Container Apps' part (:func:`app_workloads`): each app's container with its args and env,
  ``secretRef`` resolved through the app's ``configuration.secrets`` (a Key Vault
  reference is read with the named identity, which must hold a role granting
  ``secrets/getSecret`` on it), the ingress target port, the declared probes (on any
  port of the container: the worker's answer on ``SKYFERRY_HEALTH_PORT``), the default
  TCP startup probe Container Apps adds to an app with ingress, and a ``/tmp`` of the
  container's own.
* The endpoints are implicit in the account and namespace names, and no emulator accepts
  Entra ID tokens: the seam points ``CosmosClient`` and ``ContainerClient`` at the
  emulators with their keys, records every HTTP request with the identity
  ``DefaultAzureCredential`` would use (``AZURE_CLIENT_ID``), and
  :func:`identity_problems` checks each against the role assignments of that identity.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import re
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from tests.rehearsal.permissions import AzureGrant, AzureNeed, blob_needs, cosmos_needs, servicebus_needs
from tests.rehearsal.stack import ROOT, Deployment
from tests.rehearsal.workloads import Probe, Workload, port_variables, probe_of
from tests.services import free_port, started, unavailable


def iso_seconds(duration: str) -> float:
    """``PT10M`` -> 600.0 (the ISO 8601 durations Azure takes)."""
    match = re.fullmatch(r"P(?:(\d+)D)?(?:T(?:(\d+)H)?(?:(\d+)M)?(?:([\d.]+)S)?)?", duration)
    if match is None:
        raise ValueError(f"not an ISO 8601 duration: {duration!r}")
    days, hours, minutes, secs = (float(g or 0) for g in match.groups())
    return days * 86400 + hours * 3600 + minutes * 60 + secs


class Azurite:
    """An Azurite of the rehearsal's own, serving the graph's storage accounts (``AZURITE_ACCOUNTS``)."""

    def __init__(self, workdir: Path, accounts: list[str]) -> None:
        local = ROOT / "node_modules" / ".bin" / "azurite-blob"
        binary = str(local) if local.exists() else shutil.which("azurite-blob")
        if binary is None or shutil.which("node") is None:
            unavailable("azurite (npm) is not installed: run `make deps`")
        self.keys = {a: base64.b64encode(hashlib.sha256(a.encode()).digest()).decode() for a in accounts}
        self.port = free_port()
        self.args = [
            binary,
            "--blobHost",
            "127.0.0.1",
            "--blobPort",
            str(self.port),
            "--inMemoryPersistence",
            "--loose",
        ]
        self.args += ["--skipApiVersionCheck", "--disableTelemetry", "--silent"]
        env = {**os.environ, "AZURITE_ACCOUNTS": ";".join(f"{a}:{k}" for a, k in self.keys.items())}
        self._stack = contextlib.ExitStack()
        self._stack.enter_context(started(self.args, self.port, env=env, log=str(workdir / "azurite.log")))

    def endpoint(self, account: str) -> str:
        """The blob endpoint of ``account``."""
        return f"http://127.0.0.1:{self.port}/{account}"

    def stop(self) -> None:
        """Stop it by PID."""
        self._stack.close()


def provision(deployment: Deployment, cosmos_endpoint: str, cosmos_key: str, azurite: Azurite) -> dict[str, Any]:
    """Create the graph's Cosmos DB database and containers and its blob containers; what was made."""
    from azure.cosmos import CosmosClient, PartitionKey
    from azure.storage.blob import BlobServiceClient

    made: dict[str, Any] = {"databases": [], "containers": []}
    cosmos = CosmosClient(cosmos_endpoint, credential=cosmos_key, connection_verify=False)
    for node in deployment.nodes("azure-native:cosmosdb:SqlResourceSqlDatabase"):
        cosmos.create_database(node.inputs["resource"]["id"])
        made["databases"].append(node.inputs["resource"]["id"])
    for node in deployment.nodes("azure-native:cosmosdb:SqlResourceSqlContainer"):
        resource = node.inputs["resource"]
        key = resource["partitionKey"]
        cosmos.get_database_client(node.inputs["databaseName"]).create_container(
            resource["id"], partition_key=PartitionKey(path=key["paths"][0], kind=key.get("kind", "Hash"))
        )
    for node in deployment.nodes("azure-native:storage:BlobContainer"):
        account = node.inputs["accountName"]
        service = BlobServiceClient(
            azurite.endpoint(account), credential={"account_name": account, "account_key": azurite.keys[account]}
        )
        service.create_container(node.inputs["containerName"])
        made["containers"].append((account, node.inputs["containerName"]))
    return made


def remove(made: dict[str, Any], cosmos_endpoint: str, cosmos_key: str) -> None:
    """Drop the Cosmos DB databases :func:`provision` made (the emulator is shared by the session)."""
    from azure.cosmos import CosmosClient

    cosmos = CosmosClient(cosmos_endpoint, credential=cosmos_key, connection_verify=False)
    for name in made.get("databases", []):
        with contextlib.suppress(Exception):
            cosmos.delete_database(name)


def servicebus_spec(deployment: Deployment) -> dict[str, Any]:
    """The graph's Service Bus namespaces, topics and subscriptions, as the seam's fake takes them."""
    spec: dict[str, Any] = {}
    for topic in deployment.nodes("azure-native:servicebus:Topic"):
        window = (
            topic.inputs.get("duplicateDetectionHistoryTimeWindow")
            if topic.inputs.get("requiresDuplicateDetection")
            else None
        )
        topics = spec.setdefault(topic.inputs["namespaceName"], {"topics": {}})["topics"]
        topics[topic.inputs["topicName"]] = {
            "duplicate_window": iso_seconds(window) if window else 0.0,
            "subscriptions": {},
        }
    for subscription in deployment.nodes("azure-native:servicebus:Subscription"):
        topic = spec[subscription.inputs["namespaceName"]]["topics"][subscription.inputs["topicName"]]
        topic["subscriptions"][subscription.inputs["subscriptionName"]] = {
            "requires_session": bool(subscription.inputs.get("requiresSession")),
            "max_delivery_count": int(subscription.inputs.get("maxDeliveryCount", 10)),
        }
    return spec


def _secret_values(deployment: Deployment) -> dict[str, tuple[str, str]]:
    """Key Vault secret URL -> (its value, its ARM id), from the graph."""
    found = {}
    for node in deployment.nodes("azure-native:keyvault:Secret"):
        url = f"https://{node.inputs['vaultName']}.vault.azure.net/secrets/{node.inputs['secretName']}"
        found[url] = (str(node.inputs["properties"]["value"]), node.outputs["id"])
    return found


def app_workloads(deployment: Deployment) -> dict[str, Workload]:
    """Every container of every Container App, as Container Apps would start it."""
    vault_secrets = _secret_values(deployment)
    workloads: dict[str, Workload] = {}
    for node in deployment.nodes("azure-native:app:ContainerApp"):
        configuration = node.inputs.get("configuration") or {}
        secrets = {s["name"]: s for s in configuration.get("secrets", [])}
        ingress = configuration.get("ingress")
        target_port = int(ingress["targetPort"]) if ingress else None
        for container in node.inputs["template"]["containers"]:
            env: dict[str, str] = {}
            secret_env: dict[str, str] = {}
            for variable in container.get("env", []):
                if "value" in variable:
                    env[variable["name"]] = str(variable["value"])
                    continue
                secret = secrets.get(variable["secretRef"], {})
                if "keyVaultUrl" in secret:
                    secret_env[variable["name"]] = f"{secret['keyVaultUrl']} as {secret.get('identity', 'system')}"
                    if secret["keyVaultUrl"] in vault_secrets:
                        env[variable["name"]] = vault_secrets[secret["keyVaultUrl"]][0]
                else:
                    secret_env[variable["name"]] = f"app secret {variable['secretRef']}"
                    if "value" in secret:
                        env[variable["name"]] = str(secret["value"])
            probes = []
            for spec in container.get("probes", []):
                probe = probe_of(spec["type"].lower(), spec, f"{spec['type']} probe", default_port=target_port)
                if probe is not None:
                    probes.append(probe)
            if target_port is not None and not any(p.purpose == "startup" for p in probes):
                probes.append(
                    Probe(
                        "tcp",
                        "startup",
                        port=target_port,
                        source="Container Apps' default startup probe (TCP on the target port)",
                    )
                )
            app_name = node.inputs["containerAppName"]
            name = f"app:{app_name}/{container['name']}"
            ports = (target_port,) if target_port is not None else ()
            workloads[name] = Workload(
                name=name,
                platform=f"Container App {node.inputs['containerAppName']}, container {container['name']}",
                kind="service",
                entrypoint=tuple(container["command"]) if container.get("command") else None,
                args=tuple(container.get("args") or ()),
                env=env,
                secret_env=secret_env,
                ports=ports,
                probes=probes,
                # the container's own writable filesystem: its /tmp is no other replica's
                volumes={"/tmp": f"app:{app_name}:{container['name']}:tmp"},
                identity=env.get("AZURE_CLIENT_ID", ""),
                platform_env={
                    "CONTAINER_APP_NAME": app_name,
                    "CONTAINER_APP_REVISION": f"{app_name}--rhs0001",
                },
                port_variables=port_variables(env, ports, probes),
            )
    return workloads


# -- identity ---------------------------------------------------------------------------------


def identities(deployment: Deployment) -> dict[str, dict[str, str]]:
    """User-assigned identities by client id: their ARM id and principal id."""
    return {
        n.outputs["clientId"]: {"id": n.outputs["id"], "principal": n.outputs["principalId"]}
        for n in deployment.nodes("azure-native:managedidentity:UserAssignedIdentity")
    }


def grants(deployment: Deployment) -> list[AzureGrant]:
    """Every role assignment of the graph (Azure RBAC and Cosmos DB SQL role assignments)."""
    found = [
        AzureGrant(n.inputs["principalId"], n.inputs["roleDefinitionId"].rsplit("/", 1)[-1], n.inputs["scope"])
        for n in deployment.nodes("azure-native:authorization:RoleAssignment")
    ]
    found += [
        AzureGrant(n.inputs["principalId"], n.inputs["roleDefinitionId"].rsplit("/", 1)[-1], n.inputs["scope"])
        for n in deployment.nodes("azure-native:cosmosdb:SqlResourceSqlRoleAssignment")
    ]
    return found


def needs_of(call: dict[str, Any], deployment: Deployment, hosts: dict[str, str]) -> list[AzureNeed]:
    """What one recorded call needs; ``hosts`` maps an emulator host to ``cosmos`` or ``blob``."""
    if call["kind"] == "servicebus":
        namespace = next(
            n for n in deployment.nodes("azure-native:servicebus:Namespace") if n.outputs["name"] == call["namespace"]
        )
        return servicebus_needs(namespace.outputs["id"], call)
    service = hosts.get(call["host"])
    if service == "cosmos":
        [account] = deployment.nodes("azure-native:cosmosdb:DatabaseAccount")
        return cosmos_needs(account.outputs["id"], call)
    if service == "blob":
        parts = [p for p in call["path"].split("/") if p]
        container = next(
            (
                n
                for n in deployment.nodes("azure-native:storage:BlobContainer")
                if parts[:2] == [n.inputs["accountName"], n.inputs["containerName"]]
            ),
            None,
        )
        if container is None:
            return [AzureNeed(f"(a container the graph does not declare: {call['path']})", True, "", call["path"])]
        return blob_needs(container.outputs["id"], {**call, "path": "/" + "/".join(parts[1:])})
    return []


def identity_problems(
    calls: Iterable[dict[str, Any]], deployment: Deployment, hosts: dict[str, str], granted: list[AzureGrant]
) -> tuple[list[tuple[dict[str, Any], AzureNeed]], list[str]]:
    """Check every call against the role assignments of its identity: ``(checked, problems)``."""
    by_client = identities(deployment)
    checked: list[tuple[dict[str, Any], AzureNeed]] = []
    problems: list[str] = []
    for call in calls:
        identity = by_client.get(call["identity"])
        for need in needs_of(call, deployment, hosts):
            checked.append((call, need))
            if identity is None:
                problems.append(
                    f"{call['workload']}: calls as client id {call['identity']!r}, no identity of the graph"
                )
            elif not any(g.principal == identity["principal"] and g.covers(need) for g in granted):
                problems.append(
                    f"{call['workload']}: {need.call} needs {need.operation} on {need.scope}: "
                    "no role assignment of the graph grants it"
                )
    return checked, problems


def seam_config(
    path: Path,
    log: Path,
    workload: Workload,
    deployment: Deployment,
    cosmos_endpoint: str,
    cosmos_key: str,
    azurite: Azurite,
) -> None:
    """Write the seam's config for one Container App workload."""
    [account] = deployment.nodes("azure-native:cosmosdb:DatabaseAccount")
    config = {
        "log": str(log),
        "workload": workload.name,
        "azure": {
            "cosmos": {account.outputs["name"]: {"endpoint": cosmos_endpoint, "key": cosmos_key}},
            "blob": {a: {"endpoint": azurite.endpoint(a), "key": k} for a, k in azurite.keys.items()},
            "servicebus": servicebus_spec(deployment),
            "repo": str(ROOT),
        },
    }
    path.write_text(json.dumps(config))
