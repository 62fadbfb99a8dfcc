"""The kubernetes target under mocks: the Helm release, its Secret, and the values it renders."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from providers.base import StackConfigError
from providers.graph import Graph
from providers.kubernetes.compute import CHART, split_image
from skyferry.adapters.brokers.nats import NatsBroker
from tests.infra.tools import helm

BASE = {
    "skyferry:target": "kubernetes",
    "skyferry:name": "ledger",
    "skyferry:image": "registry.example.com/skyferry@sha256:" + "a" * 64,
    "skyferry:databasePassword": "pg-secret-value",
    "skyferry:apiToken": "token-secret-value",
    "skyferry:apiReplicas": "3",
    "skyferry:apiMaxReplicas": "3",
    "skyferry:cpuMillicores": "750",
    "skyferry:memoryMib": "2048",
    "skyferry:kubernetes": json.dumps({"natsPassword": "Nats-secret-value-0123"}),
}
SECRETS = {"skyferry:databasePassword", "skyferry:apiToken", "skyferry:kubernetes"}


def section(**fields: str) -> str:
    """The ``skyferry:kubernetes`` section of ``BASE`` (its NATS password) with ``fields``."""
    return json.dumps({**json.loads(BASE["skyferry:kubernetes"]), **fields})


def only(graph: Graph, type_: str) -> Any:
    nodes = graph.by_type(type_)
    assert len(nodes) == 1, f"expected one {type_}, got {len(nodes)}"
    return nodes[0]


def rendered(release: Any, values: dict[str, Any], tmp_path: Path) -> list[dict[str, Any]]:
    """The documents ``helm template`` makes of the chart with the release's name, namespace and ``values``."""
    values_file = tmp_path / "values.yaml"
    values_file.write_text(yaml.safe_dump(values))
    result = subprocess.run(
        [helm(), "template", release.name, str(CHART), "-n", release.get("namespace"), "-f", str(values_file)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return [d for d in yaml.safe_load_all(result.stdout) if d]


def test_in_chart_services_release_and_secret(run_config: Callable[..., Graph]) -> None:
    graph = run_config({**BASE, "skyferry:kubernetes": section(namespace="ledger-ns")}, SECRETS)
    provider = only(graph, "pulumi:providers:kubernetes")
    release = only(graph, "kubernetes:helm.sh/v3:Release")
    secret = only(graph, "kubernetes:core/v1:Secret")
    namespace = only(graph, "kubernetes:core/v1:Namespace")
    assert namespace.get("metadata.name") == "ledger-ns"
    assert release.get("chart") == str(CHART)
    assert release.get("namespace") == "ledger-ns"
    assert release.get("atomic") is True
    assert release.name == "ledger"
    values = release.get("values")
    assert values["fullnameOverride"] == "ledger"
    assert values["existingSecret"] == secret.get("metadata.name") == "ledger-credentials"
    assert values["postgresql"]["enabled"] is True
    assert values["nats"]["enabled"] is True
    assert values["image"] == {"repository": "registry.example.com/skyferry", "tag": "", "digest": "sha256:" + "a" * 64}
    assert values["api"]["replicaCount"] == 3
    assert values["api"]["autoscaling"]["enabled"] is False
    assert values["api"]["resources"]["requests"] == {"cpu": "750m", "memory": "2048Mi"}
    assert values["podSecurityContext"]["runAsNonRoot"] is True
    # credentials only in the Secret, as secrets; never in the release values
    assert secret.is_secret("stringData.store-url")
    assert secret.is_secret("stringData.api-token")
    assert secret.get("stringData.store-url") == (
        "postgresql://skyferry:pg-secret-value@ledger-postgresql.ledger-ns.svc.cluster.local:5432/skyferry"
    )
    assert "pg-secret-value" not in json.dumps(values)
    assert "token-secret-value" not in json.dumps(values)
    # the release waits for its namespace and Secret, and deploys through the stack's provider
    assert {namespace.urn, secret.urn} <= set(release.dependencies)
    assert provider.parent == only(graph, "skyferry:kubernetes:Platform").urn
    # outputs carry no credential
    assert (
        graph.outputs["store_url"].value
        == "postgresql://skyferry@ledger-postgresql.ledger-ns.svc.cluster.local:5432/skyferry"
    )
    # bounded: 7 days and 80 % of the 5 GiB JetStream volume, the oldest messages dropped first;
    # the output names the user, not the password
    assert graph.outputs["broker_url"].value == (
        "nats://skyferry@ledger-nats.ledger-ns.svc.cluster.local:4222"
        f"/skyferry?max_age={7 * 86400}&max_bytes={4294967296}"
    )
    broker = NatsBroker(graph.outputs["broker_url"].value)
    assert (broker.max_age, broker.max_bytes) == (7 * 86400, 4 * 2**30)
    assert graph.outputs["api_url"].value == "http://ledger-api.ledger-ns.svc.cluster.local:80"


def test_the_in_chart_nats_url_carries_the_user_and_password_as_secrets(run_config: Callable[..., Graph]) -> None:
    """The app's broker URL (the Secret's broker-url) authenticates as the chart's NATS user; the
    password the server checks is the Secret's nats-password; both are secret, never in the values."""
    graph = run_config(BASE, SECRETS)
    secret = only(graph, "kubernetes:core/v1:Secret")
    values = only(graph, "kubernetes:helm.sh/v3:Release").get("values")
    assert secret.is_secret("stringData.broker-url")
    assert secret.is_secret("stringData.nats-password")
    url = urlsplit(secret.get("stringData.broker-url"))
    assert (url.username, url.password) == (values["nats"]["username"], "Nats-secret-value-0123")
    assert secret.get("stringData.nats-password") == "Nats-secret-value-0123"
    assert (url.hostname, url.port, url.path) == ("ledger-nats.skyferry.svc.cluster.local", 4222, "/skyferry")
    assert "Nats-secret-value-0123" not in json.dumps(values)
    assert "Nats-secret-value-0123" not in json.dumps({k: o.value for k, o in graph.outputs.items()})
    broker = NatsBroker(secret.get("stringData.broker-url"))
    assert "Nats-secret-value-0123" not in broker.url  # what the app logs
    assert broker.max_bytes == 4 * 2**30


def test_the_in_chart_nats_needs_a_secret_password_it_can_read(run_config: Callable[..., Graph]) -> None:
    """Required with the in-chart NATS, exactly as databasePassword is for the in-chart PostgreSQL;
    a secret; and of a shape nats-server's config parser reads back unchanged."""
    without = {**BASE, "skyferry:kubernetes": json.dumps({})}
    with pytest.raises(StackConfigError) as caught:
        run_config(without, SECRETS)
    assert caught.value.key == "skyferry:kubernetes.natsPassword"
    assert "in-chart NATS" in caught.value.problem
    with pytest.raises(StackConfigError) as caught:
        run_config(BASE, SECRETS - {"skyferry:kubernetes"})
    assert caught.value.key == "skyferry:kubernetes.natsPassword"
    assert "must be a secret" in caught.value.problem
    for bad in ("short-1", "0123456789abcdefghij", "p@ss/w#rd%?x-long-enough", "has space in it here"):
        with pytest.raises(StackConfigError) as caught:
            run_config({**BASE, "skyferry:kubernetes": section(natsPassword=bad)}, SECRETS)
        assert caught.value.key == "skyferry:kubernetes.natsPassword", bad
        assert bad not in str(caught.value), bad  # a secret is never echoed
    external = json.dumps({"nats": "external", "externalBrokerUrl": "nats://nats.internal:4222/ledger"})
    graph = run_config({**BASE, "skyferry:kubernetes": external}, SECRETS)  # nothing in-chart to protect
    assert "nats-password" not in only(graph, "kubernetes:core/v1:Secret").get("stringData")


@pytest.mark.parametrize("password", ["p@ss/w#rd%?x", "a:b@c", "100%"])
def test_the_in_chart_store_url_encodes_any_password(run_config: Callable[..., Graph], password: str) -> None:
    from psycopg.conninfo import conninfo_to_dict

    graph = run_config({**BASE, "skyferry:databasePassword": password}, SECRETS)
    url = only(graph, "kubernetes:core/v1:Secret").get("stringData.store-url")
    parsed = conninfo_to_dict(url)  # libpq's own parser, as the postgres adapter connects
    assert parsed["password"] == password
    assert (parsed["host"], parsed["port"], parsed["dbname"], parsed["user"]) == (
        "ledger-postgresql.skyferry.svc.cluster.local",
        "5432",
        "skyferry",
        "skyferry",
    )


def test_external_endpoints_and_ingress(run_config: Callable[..., Graph]) -> None:
    external = {
        "context": "prod",
        "postgres": "external",
        "externalStoreUrl": "postgresql://app:ext-pw@db.internal:5432/ledger",
        "nats": "external",
        "externalBrokerUrl": "nats://nats.internal:4222/ledger",
        "ingressHost": "ledger.example.com",
    }
    values = {**BASE, "skyferry:kubernetes": json.dumps(external)}
    graph = run_config(values, SECRETS)
    release = only(graph, "kubernetes:helm.sh/v3:Release")
    assert only(graph, "pulumi:providers:kubernetes").get("context") == "prod"
    chart_values = release.get("values")
    assert chart_values["postgresql"]["enabled"] is False
    assert chart_values["nats"]["enabled"] is False
    assert chart_values["ingress"] == {"enabled": True, "host": "ledger.example.com", "className": ""}
    assert "ext-pw" not in json.dumps(chart_values)
    assert graph.outputs["store_url"].value == "postgresql://app@db.internal:5432/ledger"
    assert graph.outputs["api_url"].value == "https://ledger.example.com"
    assert "postgres-password" not in only(graph, "kubernetes:core/v1:Secret").get("stringData")


def test_release_values_render_through_the_chart(run_config: Callable[..., Graph], tmp_path: Path) -> None:
    graph = run_config({**BASE, "skyferry:apiMaxReplicas": "9"}, SECRETS)
    release = only(graph, "kubernetes:helm.sh/v3:Release")
    docs = rendered(release, release.get("values"), tmp_path)
    kinds = {(d["kind"], d["metadata"]["name"]) for d in docs}
    assert ("Deployment", "ledger-api") in kinds
    assert ("Deployment", "ledger-worker") in kinds
    assert ("StatefulSet", "ledger-postgresql") in kinds
    assert ("StatefulSet", "ledger-nats") in kinds
    assert ("HorizontalPodAutoscaler", "ledger-api") in kinds
    assert ("Secret", "ledger-credentials") not in kinds  # the Pulumi-made Secret is used
    # the service names the outputs point at are the ones the chart creates
    services = {d["metadata"]["name"] for d in docs if d["kind"] == "Service"}
    assert {"ledger-api", "ledger-postgresql", "ledger-nats"} <= services
    api = next(d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] == "ledger-api")
    container = api["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == "registry.example.com/skyferry@sha256:" + "a" * 64
    # the in-chart NATS lets in the user the app's broker URL names
    conf = next(d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "ledger-nats")
    user = urlsplit(only(graph, "kubernetes:core/v1:Secret").get("stringData.broker-url")).username
    assert f'user: "{user}"' in conf["data"]["nats.conf"]


def test_more_than_one_worker_needs_an_archive_volume_every_node_mounts(
    run_config: Callable[..., Graph], tmp_path: Path
) -> None:
    """The worker pods mount the archive volume: ReadWriteOnce (the default) allows one worker; more
    need ReadWriteMany, which the release passes to the chart, and the chart renders."""
    graph = run_config(BASE, SECRETS)
    persistence = only(graph, "kubernetes:helm.sh/v3:Release").get("values")["archive"]["persistence"]
    assert persistence["accessModes"] == ["ReadWriteOnce"]
    two = {**BASE, "skyferry:workerReplicas": "2"}
    with pytest.raises(StackConfigError) as caught:
        run_config(two, SECRETS)
    assert caught.value.key == "skyferry:kubernetes.archiveAccessMode"
    assert "ReadWriteMany" in caught.value.problem
    assert "skyferry:workerReplicas" in caught.value.problem
    shared = section(archiveAccessMode="ReadWriteMany", storageClass="nfs")
    release = only(run_config({**two, "skyferry:kubernetes": shared}, SECRETS), "kubernetes:helm.sh/v3:Release")
    values = release.get("values")
    assert values["archive"]["persistence"]["accessModes"] == ["ReadWriteMany"]
    assert values["worker"]["replicaCount"] == 2
    [claim] = [d for d in rendered(release, values, tmp_path) if d["kind"] == "PersistentVolumeClaim"]
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]
    assert claim["spec"]["storageClassName"] == "nfs"


@pytest.mark.parametrize(
    ("image", "expected"),
    [
        ("ghcr.io/skyferry/skyferry:0.1.0", {"repository": "ghcr.io/skyferry/skyferry", "tag": "0.1.0", "digest": ""}),
        ("localhost:5000/skyferry", {"repository": "localhost:5000/skyferry", "tag": "", "digest": ""}),
        ("r.io/s@sha256:" + "b" * 64, {"repository": "r.io/s", "tag": "", "digest": "sha256:" + "b" * 64}),
    ],
)
def test_split_image(image: str, expected: dict[str, str]) -> None:
    assert split_image(image) == expected
