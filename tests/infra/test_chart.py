"""The Helm chart: lint, render every ci/*-values.yaml, validate strictly, checkov, schema, hardening."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.infra.tools import ROOT, helm, python_tool

CHART = ROOT / "charts" / "skyferry"
CI_VALUES = sorted((CHART / "ci").glob("*-values.yaml"))
WORKLOADS = {"Deployment", "StatefulSet", "Job"}


def render(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [helm(), "template", "sf", str(CHART), "--namespace", "skyferry", *args],
        capture_output=True,
        text=True,
        check=False,
    )


def docs_of(values_file: Path, *args: str) -> list[dict[str, Any]]:
    result = render("-f", str(values_file), *args)
    return manifests(result)


def manifests(result: subprocess.CompletedProcess[str]) -> list[dict[str, Any]]:
    assert result.returncode == 0, result.stderr
    return [d for d in yaml.safe_load_all(result.stdout) if d]


def workload(docs: list[dict[str, Any]], component: str) -> dict[str, Any]:
    """The Deployment or Job of one app component (api, worker, migration)."""
    return next(
        d
        for d in docs
        if d["kind"] in WORKLOADS and d["metadata"]["labels"].get("app.kubernetes.io/component") == component
    )


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Every ci values file rendered to a manifest file."""
    out = tmp_path_factory.mktemp("rendered")
    files = {}
    for values in CI_VALUES:
        result = render("-f", str(values))
        assert result.returncode == 0, f"{values.name}: {result.stderr}"
        path = out / f"{values.stem}.yaml"
        path.write_text(result.stdout)
        files[values.name] = path
    return files


def test_ci_values_cover_each_way_to_install() -> None:
    names = {p.name for p in CI_VALUES}
    assert {
        "external-values.yaml",
        "on-prem-values.yaml",
        "inline-secret-values.yaml",
        "migration-values.yaml",
    } <= names


@pytest.mark.parametrize("values", CI_VALUES, ids=lambda p: p.name)
def test_helm_lint(values: Path) -> None:
    result = subprocess.run(
        [helm(), "lint", "--strict", str(CHART), "-f", str(values)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 chart(s) failed" in result.stdout


def test_kubernetes_validate_strict(rendered: dict[str, Path]) -> None:
    result = subprocess.run(
        [*python_tool("kubernetes-validate"), "--strict", "--quiet", *map(str, rendered.values())],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_checkov_zero_failed_and_every_skip_has_a_reason(rendered: dict[str, Path]) -> None:
    args = [*python_tool("checkov"), "--framework", "kubernetes", "--skip-download", "-o", "json"]
    for path in rendered.values():
        args += ["-f", str(path)]
    result = subprocess.run(args, capture_output=True, text=True, check=False)
    reports = json.loads(result.stdout)
    reports = reports if isinstance(reports, list) else [reports]
    failed = [f"{c['check_id']} {c['resource']}" for r in reports for c in r["results"]["failed_checks"]]
    assert failed == []
    passed = sum(r["summary"]["passed"] for r in reports)
    assert passed > 100
    skips = [s for r in reports for s in r["results"]["skipped_checks"]]
    assert {s["check_id"] for s in skips} <= {"CKV_K8S_35", "CKV_K8S_9"}
    for skipped in skips:
        reason = (skipped.get("check_result") or {}).get("suppress_comment", "")
        assert len(reason) > 20, f"{skipped['check_id']} skipped without a reason in the chart"


def test_every_container_is_hardened(rendered: dict[str, Path]) -> None:
    seen = 0
    for path in rendered.values():
        for doc in yaml.safe_load_all(path.read_text()):
            if not doc or doc["kind"] not in WORKLOADS:
                continue
            pod = doc["spec"]["template"]["spec"]
            assert pod["securityContext"]["runAsNonRoot"] is True
            assert pod["securityContext"]["runAsUser"] >= 10000
            assert pod["automountServiceAccountToken"] is False
            for container in pod["containers"]:
                ctx = container["securityContext"]
                seen += 1
                assert ctx["readOnlyRootFilesystem"] is True, container["name"]
                assert ctx["allowPrivilegeEscalation"] is False, container["name"]
                assert ctx["capabilities"]["drop"] == ["ALL"], container["name"]
                assert set(container["resources"]["requests"]) == {"cpu", "memory"}, container["name"]
                if doc["kind"] != "Job":
                    assert "livenessProbe" in container, container["name"]
    assert seen >= 6


def test_the_worker_probe_checks_a_heartbeat_the_worker_can_write(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The worker's liveness probe is a real check (``skyferry alive``) of a file on a writable mount."""
    from skyferry.cli import run

    docs = docs_of(CHART / "ci" / "on-prem-values.yaml")
    worker = next(d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] == "sf-skyferry-worker")
    container = worker["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e.get("value") for e in container["env"]}
    heartbeat = Path(env["SKYFERRY_HEARTBEAT_FILE"])
    mounts = [Path(m["mountPath"]) for m in container["volumeMounts"]]
    assert any(heartbeat.is_relative_to(m) for m in mounts)  # the root filesystem is read-only
    command = container["livenessProbe"]["exec"]["command"]
    assert command[:2] == ["skyferry", "alive"]
    local = tmp_path / heartbeat.name  # the same command, against a file of this test
    monkeypatch.setenv("SKYFERRY_HEARTBEAT_FILE", str(local))
    assert run(command[1:]) == 3  # the worker has not started
    local.touch()
    assert run(command[1:]) == 0


def test_on_prem_values_bring_postgres_nats_and_network_policies() -> None:
    docs = docs_of(CHART / "ci" / "on-prem-values.yaml")
    by_kind: dict[str, set[str]] = {}
    for d in docs:
        by_kind.setdefault(d["kind"], set()).add(d["metadata"]["name"])
        assert d["metadata"].get("namespace") == "skyferry" or d["kind"] in {"ClusterRole"}
    assert by_kind["StatefulSet"] == {"sf-skyferry-postgresql", "sf-skyferry-nats"}
    assert by_kind["Deployment"] == {"sf-skyferry-api", "sf-skyferry-worker"}
    assert {"sf-skyferry-api", "sf-skyferry-worker"} <= by_kind["PodDisruptionBudget"]
    assert by_kind["HorizontalPodAutoscaler"] == {"sf-skyferry-api"}
    assert "Secret" not in by_kind  # existingSecret
    policies = {d["metadata"]["name"]: d for d in docs if d["kind"] == "NetworkPolicy"}
    pg = policies["sf-skyferry-postgresql"]["spec"]["ingress"][0]
    assert pg["ports"] == [{"port": 5432, "protocol": "TCP"}]
    allowed = pg["from"][0]["podSelector"]["matchExpressions"][1]["values"]
    assert allowed == ["api", "worker", "migration"]
    api = next(d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] == "sf-skyferry-api")
    container = api["spec"]["template"]["spec"]["containers"][0]
    assert container["args"] == ["serve"]
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"  # the API's routes (app/skyferry/api)
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    nats = next(d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "sf-skyferry-nats")
    assert "jetstream" in nats["data"]["nats.conf"]


def test_the_in_chart_nats_lets_in_only_its_user_with_the_secrets_password() -> None:
    """nats.conf has an authorization block whose password nats-server reads from NATS_PASSWORD,
    which the StatefulSet takes from the Secret's nats-password; the probes stay on the monitoring port."""
    docs = docs_of(CHART / "ci" / "on-prem-values.yaml")
    conf = next(d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "sf-skyferry-nats")
    lines = [line.strip() for line in conf["data"]["nats.conf"].splitlines()]
    block = lines[lines.index("authorization {") : lines.index("}", lines.index("authorization {")) + 1]
    assert block == ["authorization {", 'user: "skyferry"', "password: $NATS_PASSWORD", "}"]
    assert "http_port: 8222" in lines
    [statefulset] = [d for d in docs if d["kind"] == "StatefulSet" and d["metadata"]["name"] == "sf-skyferry-nats"]
    [container] = statefulset["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e for e in container["env"]}
    assert env["NATS_PASSWORD"]["valueFrom"]["secretKeyRef"] == {"name": "skyferry-credentials", "key": "nats-password"}
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    for probe in ("livenessProbe", "readinessProbe"):
        assert ports[container[probe]["httpGet"]["port"]] == 8222, probe  # the monitoring port: no credential


def test_the_in_chart_nats_needs_a_password() -> None:
    """Like the in-chart PostgreSQL: the Secret the chart makes gets nats-password, or the chart refuses."""
    inline = ("-f", str(CHART / "ci" / "inline-secret-values.yaml"), "--set", "nats.enabled=true")
    refused = render(*inline)
    assert refused.returncode != 0
    assert "secret.natsPassword is required with the in-chart NATS" in refused.stderr
    password = "Nats-password-0123456789"
    secret = next(
        d for d in manifests(render(*inline, "--set", f"secret.natsPassword={password}")) if d["kind"] == "Secret"
    )
    assert secret["stringData"]["nats-password"] == password
    # nats-server reads the password through its config parser: a shape it would misread is refused
    for bad in ("short-1", "0123456789abcdefghij", "has#a-comment-sign-in-it", "has space in it here"):
        result = render(*inline, "--set-string", f"secret.natsPassword={bad}")
        assert result.returncode != 0, bad
        assert "/secret/natsPassword" in result.stderr, bad
    without = next(d for d in docs_of(CHART / "ci" / "inline-secret-values.yaml") if d["kind"] == "Secret")
    assert "nats-password" not in without["stringData"]  # an external NATS: nothing to hold


def test_migration_is_an_indexed_job_with_one_shard_per_index() -> None:
    docs = docs_of(CHART / "ci" / "migration-values.yaml")
    job = next(d for d in docs if d["kind"] == "Job")
    assert job["spec"]["completionMode"] == "Indexed"
    assert job["spec"]["completions"] == 8
    assert job["spec"]["parallelism"] == 4
    container = job["spec"]["template"]["spec"]["containers"][0]
    assert container["command"] == ["skyferry"]  # no shell expands the arguments
    assert container["args"] == [
        "migrate",
        "--from",
        "env:MIGRATE_FROM",  # the URLs stay in the environment, out of the process list
        "--to",
        "env:MIGRATE_TO",
        "--shard",
        "$(JOB_COMPLETION_INDEX)/8",
        "--json",
        "--transform",
        "skyferry.migrate.transforms:identity",
    ]
    env = {e["name"]: e for e in container["env"]}
    assert env["MIGRATE_FROM"]["valueFrom"]["secretKeyRef"]["key"] == "migration-from"


def test_a_migration_needs_an_existing_secret_holding_its_keys() -> None:
    """The Job reads migration-from and migration-to; the Secret the chart makes from ``secret``
    holds neither, so its pods would never start (CreateContainerConfigError): refused instead."""
    inline = ("-f", str(CHART / "ci" / "inline-secret-values.yaml"), "--set", "migration.enabled=true")
    refused = render(*inline)
    assert refused.returncode != 0
    assert "/existingSecret" in refused.stderr  # the schema
    unchecked = render(*inline, "--skip-schema-validation")  # the template says why, naming the values
    assert unchecked.returncode != 0
    for named in ("migration.enabled needs existingSecret", "migration-from", "migration-to"):
        assert named in unchecked.stderr, unchecked.stderr
    docs = docs_of(CHART / "ci" / "migration-values.yaml")
    [container] = workload(docs, "migration")["spec"]["template"]["spec"]["containers"]
    refs = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in container["env"]}
    assert refs["MIGRATE_FROM"] == {"name": "skyferry-credentials", "key": "migration-from"}
    assert refs["MIGRATE_TO"] == {"name": "skyferry-credentials", "key": "migration-to"}


def test_inline_secret_values_create_the_secret() -> None:
    from skyferry.settings import load_settings

    docs = docs_of(CHART / "ci" / "inline-secret-values.yaml")
    secret = next(d for d in docs if d["kind"] == "Secret")
    assert set(secret["stringData"]) == {"store-url", "broker-url", "api-token"}
    token = secret["stringData"]["api-token"]
    assert load_settings(api_token=token).require_token() == token  # the API starts with it
    api = next(d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"].endswith("-api"))
    env = {e["name"]: e for e in api["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["SKYFERRY_STORE_URL"]["valueFrom"]["secretKeyRef"]["name"] == secret["metadata"]["name"]


@pytest.mark.parametrize(
    ("override", "complaint"),
    [
        ("api.replicaCount=0", "minimum"),
        ("securityContext.readOnlyRootFilesystem=false", "readOnlyRootFilesystem"),
        ("podSecurityContext.runAsNonRoot=false", "runAsNonRoot"),
        ("image.tag=latest", "/image/tag"),
        ("service.type=ExternalName", "/service/type"),
        ("config.archiveUrl=ftp://x", "/config/archiveUrl"),
        ("unknownKey=1", "unknownKey"),
        ("migration.shards=0", "/migration/shards"),
        ("archive.persistence.accessModes={ReadOnlyMany}", "/archive/persistence/accessModes"),
        ("migration.fromSecretKey=", "/migration/fromSecretKey"),
        ("archive.persistence.accessModes={ReadWriteOnce,ReadWriteOnce}", "/archive/persistence/accessModes"),
        ("ingress.enabled=true,ingress.host=a.example.com,ingress.tls.enabled=false", "plainHttp"),
    ],
)
def test_schema_rejects_bad_values(override: str, complaint: str) -> None:
    result = render("--set", "existingSecret=x", "--set", override)
    assert result.returncode != 0
    assert complaint in result.stderr


def test_an_ingress_without_tls_needs_the_explicit_opt_in() -> None:
    plain = ("--set", "ingress.enabled=true,ingress.host=a.example.com,ingress.tls.enabled=false")
    result = render("--set", "existingSecret=x", *plain, "--set", "ingress.plainHttp=true")
    assert result.returncode == 0, result.stderr
    [ingress] = [d for d in yaml.safe_load_all(result.stdout) if d and d["kind"] == "Ingress"]
    assert "tls" not in ingress["spec"]
    default = render("--set", "existingSecret=x", "--set", "ingress.enabled=true,ingress.host=a.example.com")
    [ingress] = [d for d in yaml.safe_load_all(default.stdout) if d and d["kind"] == "Ingress"]
    assert ingress["spec"]["tls"] == [{"hosts": ["a.example.com"], "secretName": "sf-skyferry-tls"}]


@pytest.mark.parametrize("length", [1, 15, 16, 40])
def test_an_inline_api_token_is_as_long_as_the_api_requires(length: int) -> None:
    """The schema refuses a token the API would refuse (it would crash-loop); empty means existingSecret."""
    from skyferry.core.errors import ConfigurationError
    from skyferry.settings import load_settings

    token = "é" * length  # characters, as the API counts them, not bytes
    try:
        load_settings(api_token=token).require_token()
    except ConfigurationError:
        api_accepts = False
    else:
        api_accepts = True
    result = render("-f", str(CHART / "ci" / "inline-secret-values.yaml"), "--set", f"secret.apiToken={token}")
    assert (result.returncode == 0) == api_accepts == (length >= 16), result.stderr
    if not api_accepts:
        assert "/secret/apiToken" in result.stderr
    assert render("--set", "existingSecret=x", "--set", "secret.apiToken=").returncode == 0


def test_missing_secret_values_are_required() -> None:
    result = render()
    assert result.returncode != 0
    assert "secret.storeUrl is required" in result.stderr


def test_every_app_workload_gets_the_same_pod_spec() -> None:
    """api, worker and migration pods come from one helper: pull secrets, annotations, labels alike."""
    result = render(
        "-f",
        str(CHART / "ci" / "migration-values.yaml"),
        "--set",
        "imagePullSecrets[0].name=registry,podAnnotations.team=ledger,podLabels.tier=app",
    )
    assert result.returncode == 0, result.stderr
    pods = {
        d["metadata"]["labels"]["app.kubernetes.io/component"]: d["spec"]["template"]
        for d in yaml.safe_load_all(result.stdout)
        if d and d["kind"] in ("Deployment", "Job") and d["metadata"]["labels"].get("app.kubernetes.io/component")
    }
    assert set(pods) == {"api", "worker", "migration"}
    shared = ("imagePullSecrets", "serviceAccountName", "automountServiceAccountToken", "securityContext")
    for component, pod in pods.items():
        assert pod["spec"]["imagePullSecrets"] == [{"name": "registry"}], component
        assert pod["metadata"]["annotations"]["team"] == "ledger", component
        assert pod["metadata"]["labels"]["tier"] == "app", component
        assert pod["metadata"]["labels"]["app.kubernetes.io/component"] == component
        for key in shared:
            assert pod["spec"][key] == pods["api"]["spec"][key], f"{component}: {key} differs from the api's"
        [container] = pod["spec"]["containers"]
        [api_container] = pods["api"]["spec"]["containers"]
        for key in ("image", "imagePullPolicy", "securityContext", "envFrom"):
            assert container[key] == api_container[key], f"{component}: container {key} differs"
        # the same /tmp everywhere; the archive is the worker's alone
        without_archive = [v for v in pod["spec"]["volumes"] if v["name"] != "archive"]
        assert without_archive == pods["api"]["spec"]["volumes"], component
        mounts = [m for m in container["volumeMounts"] if m["name"] != "archive"]
        assert mounts == api_container["volumeMounts"], component
    assert pods["migration"]["spec"]["restartPolicy"] == "Never"


def mounts_of(deployment_or_job: dict[str, Any]) -> tuple[set[str], set[str]]:
    """The mount paths of a workload's containers, and the PersistentVolumeClaims its pods mount."""
    pod = deployment_or_job["spec"]["template"]["spec"]
    paths = {m["mountPath"] for c in pod["containers"] for m in c.get("volumeMounts", [])}
    claims = {v["persistentVolumeClaim"]["claimName"] for v in pod.get("volumes", []) if "persistentVolumeClaim" in v}
    return paths, claims


def test_only_the_worker_mounts_the_archive() -> None:
    """Exports run in a worker pod (docs/onprem.md): the autoscaled API and the migration Job's
    parallel shards never mount the archive volume, so a ReadWriteOnce claim is never wanted by
    pods on several nodes (a pod on another node would wait for the volume forever)."""
    docs = docs_of(CHART / "ci" / "on-prem-values.yaml", "--set", "migration.enabled=true")
    archive = "/var/lib/skyferry/archive"
    config = next(d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "sf-skyferry")
    assert config["data"]["SKYFERRY_ARCHIVE_URL"] == f"file://{archive}"  # where `skyferry export` writes by default
    paths, claims = mounts_of(workload(docs, "worker"))
    assert archive in paths
    assert claims == {"sf-skyferry-archive"}
    for component in ("api", "migration"):
        paths, claims = mounts_of(workload(docs, component))
        assert archive not in paths, component
        assert claims == set(), component


def test_a_read_write_once_archive_is_mounted_by_one_worker_pod_at_a_time() -> None:
    """A volume that attaches to one node refuses more than one worker, and the worker is
    replaced rather than rolled (a rolling update starts the new pod before the old one goes)."""
    persistent = ("--set", "existingSecret=x", "--set", "archive.persistence.enabled=true")
    for modes in ("{ReadWriteOnce}", "{ReadWriteOncePod}"):
        refused = render(*persistent, "--set", f"worker.replicaCount=2,archive.persistence.accessModes={modes}")
        assert refused.returncode != 0, modes
        for named in ("archive.persistence.accessModes", "worker.replicaCount=2", "[ReadWriteMany]"):
            assert named in refused.stderr, (modes, refused.stderr)
    docs = manifests(render(*persistent))
    [claim] = [d for d in docs if d["kind"] == "PersistentVolumeClaim"]
    assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]  # the default
    assert workload(docs, "worker")["spec"]["strategy"] == {"type": "Recreate"}
    shared = manifests(
        render(*persistent, "--set", "worker.replicaCount=3,archive.persistence.accessModes={ReadWriteMany}")
    )
    [claim] = [d for d in shared if d["kind"] == "PersistentVolumeClaim"]
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]
    assert "strategy" not in workload(shared, "worker")["spec"]  # rolled, as Deployments are by default
    ephemeral = manifests(render("--set", "existingSecret=x", "--set", "worker.replicaCount=3"))
    assert not [d for d in ephemeral if d["kind"] == "PersistentVolumeClaim"]  # each pod its own emptyDir
    assert "strategy" not in workload(ephemeral, "worker")["spec"]
