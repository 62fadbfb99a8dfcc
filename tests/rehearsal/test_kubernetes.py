"""The kubernetes stack rehearsed: the chart rendered with the release's values, its pods running.

The in-chart PostgreSQL (password authentication on) and NATS JetStream are real servers on
addresses of their own standing for the Services' ClusterIPs; the pods reach them by the
Services' names.  Kubernetes has no cloud identity to check: the pods mount no service
account token, and they reach PostgreSQL as the chart's user with the Secret's password.
"""

from __future__ import annotations

import asyncio
from typing import Any
from urllib.parse import unquote, urlsplit

import pytest

from tests.rehearsal import contracts
from tests.rehearsal import kubernetes as target
from tests.rehearsal.harness import Rehearsal
from tests.rehearsal.stack import Deployment

API = "k8s:skyferry-api/api"
WORKER = "k8s:skyferry-worker/worker"


def _nats_server(kubernetes: Rehearsal) -> target.ServiceProcess:
    port = urlsplit(kubernetes.deployment.graph.outputs["broker_url"].value).port
    return next(s for s in kubernetes.extra["services"].values() if s.port == port)


def _stream_config(kubernetes: Rehearsal) -> Any:
    """The stack's stream, read as the app's user (the in-chart NATS lets in no one else)."""
    import nats

    url = urlsplit(kubernetes.workload_env(WORKER)["SKYFERRY_BROKER_URL"])
    nats_server = _nats_server(kubernetes)

    async def read() -> Any:
        client = await nats.connect(
            servers=[f"nats://{nats_server.address}:{nats_server.port}"],
            user=unquote(url.username or ""),
            password=unquote(url.password or ""),
            connect_timeout=5,
            allow_reconnect=False,
        )
        try:
            return await client.jetstream().stream_info(url.path.strip("/"))
        finally:
            await client.close()

    return asyncio.run(read())


def _refusal(server: target.ServiceProcess, **credentials: str) -> str | None:
    """What the server answers a client with ``credentials`` (``user``, ``password``): None if let in."""
    import nats

    async def attempt() -> str | None:
        try:
            client = await nats.connect(
                servers=[f"nats://{server.address}:{server.port}"],
                connect_timeout=5,
                allow_reconnect=False,
                **credentials,  # type: ignore[arg-type]
            )
        except Exception as e:
            return str(e)
        await client.close()
        return None

    return asyncio.run(attempt())


def test_pulumi_accepts_the_stack_config(kubernetes: Rehearsal) -> None:
    contracts.pulumi_accepts(kubernetes.deployment)


def test_identifiers_are_realistic(kubernetes: Rehearsal) -> None:
    contracts.identifiers_are_realistic(kubernetes.deployment, {"id": r"[a-z0-9-]+(/[a-z0-9-]+)?|[0-9a-f-]{36}"})


def test_the_chart_runs_what_the_release_asks(kubernetes: Rehearsal) -> None:
    """``helm template`` with the release's values: the stack's image, its Secret, its archive URL."""
    manifests = kubernetes.extra["manifests"]
    release = kubernetes.deployment.one("kubernetes:helm.sh/v3:Release")
    image = kubernetes.deployment.config["skyferry:image"]
    deployments = target.by_kind(manifests, "Deployment")
    assert {d["metadata"]["name"] for d in deployments} == {"skyferry-api", "skyferry-worker"}
    for deployment in deployments:
        for container in deployment["spec"]["template"]["spec"]["containers"]:
            assert container["image"] == image, deployment["metadata"]["name"]
    [config] = [m for m in target.by_kind(manifests, "ConfigMap") if m["metadata"]["name"] == "skyferry"]
    assert config["data"]["SKYFERRY_ARCHIVE_URL"] == release.inputs["values"]["config"]["archiveUrl"]
    assert {s["metadata"]["name"] for s in target.by_kind(manifests, "StatefulSet")} == {
        "skyferry-postgresql",
        "skyferry-nats",
    }


def test_in_chart_services_are_the_charts(kubernetes: Rehearsal) -> None:
    """PostgreSQL takes the Secret's store URL (user, password, database) over its Service's name."""
    import psycopg

    store_url = kubernetes.workload_env(API)["SKYFERRY_STORE_URL"]
    postgres = next(s for s in kubernetes.extra["services"].values() if s.port == 5432)
    with psycopg.connect(store_url, hostaddr=postgres.address, connect_timeout=5) as connection:
        assert connection.execute("SELECT current_user").fetchone() == (urlsplit(store_url).username,)


def test_the_in_chart_nats_lets_in_only_the_secrets_user(kubernetes: Rehearsal) -> None:
    """nats-server runs the chart's nats.conf with the Secret's nats-password: the pods' broker URL
    gets in, no credential, a wrong password or another user does not; the probes need none."""
    import httpx

    nats_server = _nats_server(kubernetes)
    [conf] = [
        m
        for m in target.by_kind(kubernetes.extra["manifests"], "ConfigMap")
        if m["metadata"]["name"] == "skyferry-nats"
    ]
    assert "authorization {" in conf["data"]["nats.conf"]
    url = urlsplit(kubernetes.workload_env(WORKER)["SKYFERRY_BROKER_URL"])
    assert kubernetes.workload_env(API)["SKYFERRY_BROKER_URL"] == kubernetes.workload_env(WORKER)["SKYFERRY_BROKER_URL"]
    password = unquote(url.password or "")
    data = kubernetes.deployment.one("kubernetes:core/v1:Secret").inputs["stringData"]
    assert password
    assert password == data["nats-password"]
    assert _refusal(nats_server, user=unquote(url.username or ""), password=password) is None
    refusals = {
        "no credential": _refusal(nats_server),
        "a wrong password": _refusal(nats_server, user=unquote(url.username or ""), password=password + "x"),
        "another user": _refusal(nats_server, user="intruder", password=password),
    }
    for who, refusal in refusals.items():
        assert refusal is not None, f"{who} was let in"
        assert "authorization" in refusal.lower(), f"{who}: {refusal}"
    # the StatefulSet's probes ask the monitoring port, which takes no credential
    [statefulset] = [
        s
        for s in target.by_kind(kubernetes.extra["manifests"], "StatefulSet")
        if s["metadata"]["name"] == "skyferry-nats"
    ]
    [container] = statefulset["spec"]["template"]["spec"]["containers"]
    for purpose in ("livenessProbe", "readinessProbe"):
        probe = container[purpose]["httpGet"]
        response = httpx.get(f"http://{nats_server.address}:{nats_server.monitor_port}{probe['path']}", timeout=5)
        assert response.status_code == 200, (purpose, response.text)


def test_workloads_run_the_graphs_command_and_environment(kubernetes: Rehearsal) -> None:
    assert set(kubernetes.launches) == {API, WORKER}
    assert kubernetes.launches[API].workload.args == ("serve",)
    assert kubernetes.launches[WORKER].workload.args == ("worker",)
    contracts.workloads_get_the_graphs_environment(kubernetes)
    data = kubernetes.deployment.one("kubernetes:core/v1:Secret").inputs["stringData"]
    contracts.secrets_resolved(
        kubernetes,
        {
            "SKYFERRY_STORE_URL": data["store-url"],
            "SKYFERRY_BROKER_URL": data["broker-url"],
            "SKYFERRY_API_TOKEN": data["api-token"],
        },
    )


def test_api_passes_its_probes(kubernetes: Rehearsal) -> None:
    assert {p.purpose for p in kubernetes.workloads[API].probes} == {"liveness", "readiness"}
    contracts.probes_pass(kubernetes, API)


def test_worker_passes_its_exec_liveness_probe(kubernetes: Rehearsal) -> None:
    assert [p.kind for p in kubernetes.workloads[WORKER].probes] == ["exec"]
    contracts.keeps_running(kubernetes, WORKER)
    contracts.probes_pass(kubernetes, WORKER)


def test_a_hung_worker_fails_its_liveness_probe(kubernetes: Rehearsal) -> None:
    contracts.liveness_catches_a_hang(kubernetes, WORKER)


def test_end_to_end_through_the_api(kubernetes: Rehearsal) -> None:
    contracts.end_to_end(kubernetes)


def test_store_fed_worker_publishes_nothing(kubernetes: Rehearsal) -> None:
    """The stack feeds its read models from the store: nothing is published, so no stream is even made."""
    import nats.js.errors

    contracts.end_to_end(kubernetes)
    if "broker_fed" in kubernetes.extra:
        pytest.skip("the worker was switched to broker-fed already")
    with pytest.raises(nats.js.errors.NotFoundError):
        _stream_config(kubernetes)


def test_pods_mount_no_token_and_use_the_charts_database_user(kubernetes: Rehearsal) -> None:
    import psycopg

    contracts.end_to_end(kubernetes)
    for deployment in target.by_kind(kubernetes.extra["manifests"], "Deployment"):
        assert deployment["spec"]["template"]["spec"]["automountServiceAccountToken"] is False, deployment["metadata"][
            "name"
        ]
    [statefulset] = [
        s for s in target.by_kind(kubernetes.extra["manifests"], "StatefulSet") if "postgres" in s["metadata"]["name"]
    ]
    user = next(
        e["value"]
        for e in statefulset["spec"]["template"]["spec"]["containers"][0]["env"]
        if e["name"] == "POSTGRES_USER"
    )
    postgres = next(s for s in kubernetes.extra["services"].values() if s.port == 5432)
    store_url = kubernetes.workload_env(API)["SKYFERRY_STORE_URL"]
    with psycopg.connect(store_url, hostaddr=postgres.address, connect_timeout=5) as connection:
        users = {
            row[0]
            for row in connection.execute(
                "SELECT DISTINCT usename FROM pg_stat_activity WHERE backend_type = 'client backend'"
            )
        }
    assert users == {user}


def test_export_then_import_in_the_worker_pod(kubernetes: Rehearsal) -> None:
    """Exports run in a worker pod, the only one that mounts the archive volume (``docs/onprem.md``)."""
    archive = "/var/lib/skyferry/archive"
    assert kubernetes.workloads[WORKER].volumes[archive] == "pvc:skyferry-archive"
    assert archive not in kubernetes.workloads[API].volumes  # the API's pods may run on every node
    reports = contracts.export_then_import(kubernetes, WORKER)
    assert reports["export"]["archive"] == f"file://{archive}"


def test_a_database_password_with_reserved_characters_survives_the_url() -> None:
    password = "p@ss/w#rd%?x:y"
    variant = _with_password(password)
    url = urlsplit(variant.one("kubernetes:core/v1:Secret").inputs["stringData"]["store-url"])
    assert unquote(url.password or "") == password
    assert (url.hostname, url.port, url.path) == ("skyferry-postgresql.skyferry.svc.cluster.local", 5432, "/skyferry")


def _with_password(password: str) -> Deployment:
    from tests.rehearsal.stack import deploy

    return deploy("kubernetes", secrets_chosen={"skyferry:databasePassword": password})


def test_an_api_token_is_required_or_optional_for_real() -> None:
    def references(variant: Deployment) -> dict[str, tuple[set[str], bool]]:
        raise AssertionError("the kubernetes stack must refuse a config without skyferry:apiToken")

    contracts.api_token_is_optional_or_refused("kubernetes", references)


def test_public_api_endpoint_uses_tls(kubernetes: Rehearsal) -> None:
    assert kubernetes.deployment.graph.outputs["api_url"].value.startswith("https://")
    for ingress in target.by_kind(kubernetes.extra["manifests"], "Ingress"):
        hosts = {r["host"] for r in ingress["spec"]["rules"]}
        covered = {h for t in ingress["spec"].get("tls", []) for h in t.get("hosts", [])}
        assert hosts <= covered, f"{ingress['metadata']['name']}: {hosts - covered} served without TLS"


def test_broker_fed_end_to_end_through_the_stacks_stream(kubernetes: Rehearsal) -> None:
    contracts.broker_fed_end_to_end(kubernetes, WORKER)
    assert _stream_config(kubernetes).state.messages > 0, "the relay published nothing to the stack's stream"


def test_broker_retention_is_bounded(kubernetes: Rehearsal) -> None:
    kubernetes.broker_fed(WORKER)
    config = _stream_config(kubernetes).config
    assert (config.max_age or 0) > 0 or (config.max_bytes or -1) > 0, f"the stream keeps everything: {config}"
