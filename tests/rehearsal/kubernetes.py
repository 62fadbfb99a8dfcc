"""The kubernetes rehearsal: the chart rendered with the release values the graph passes, its pods run.

* :func:`render` runs ``helm template`` with exactly the ``helm.v3.Release`` values of the
  graph (name, namespace, chart, values).
* The in-chart PostgreSQL and NATS StatefulSets run as a real ``postgres`` (initialised as
  the official image would be from the StatefulSet's ``POSTGRES_USER``/``POSTGRES_DB``/
  ``POSTGRES_PASSWORD``, password authentication on) and a real ``nats-server -js`` with the
  chart's own ``nats.conf`` (from its ConfigMap: the ``authorization`` block, the password
  from the StatefulSet's ``env``, so from the Secret), each on its own loopback address
  standing for the Service's ClusterIP, on the Service's port; only the listening address and
  the monitoring port (a free one) are given on the command line, and the JetStream
  ``store_dir`` (the data volume's) is a directory of the rehearsal's.
* Each Deployment's (and Job's) containers run with their args, their ``envFrom``
  ConfigMap and their ``env`` (``secretKeyRef`` resolved from the graph's Secret, the one
  the release names as ``existingSecret``), their ports, probes and volumes (an
  ``emptyDir`` per pod, a PersistentVolumeClaim shared).
* The cluster's DNS is the only rewrite: the seam resolves the Services' names
  (``skyferry-nats.skyferry.svc.cluster.local``) to their addresses, and libpq, which
  resolves names itself, gets ``PGHOSTADDR``.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from tests.infra.tools import helm
from tests.rehearsal.stack import Deployment
from tests.rehearsal.workloads import Workload, port_variables, probe_of
from tests.services import free_port, unavailable

CLUSTER_DOMAIN = "svc.cluster.local"


def render(deployment: Deployment, workdir: Path) -> list[dict[str, Any]]:
    """``helm template`` of the graph's release: every manifest."""
    release = deployment.one("kubernetes:helm.sh/v3:Release")
    values = workdir / "release-values.json"
    values.write_text(json.dumps(release.inputs["values"]))
    command = [
        helm(),
        "template",
        release.inputs["name"],
        release.inputs["chart"],
        "--namespace",
        release.inputs["namespace"],
        "-f",
        str(values),
    ]
    rendered = _run(command, timeout=300)
    return [m for m in yaml.safe_load_all(rendered) if m]


def _run(command: list[str], timeout: float) -> str:
    """Run ``command``; its output, or a ``RuntimeError`` carrying what it printed."""
    completed = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)
    if completed.returncode != 0:
        raise RuntimeError(f"{command[0]} exited with {completed.returncode}: {completed.stderr or completed.stdout}")
    return completed.stdout


def by_kind(manifests: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    """The manifests of one kind."""
    return [m for m in manifests if m.get("kind") == kind]


def cluster_address() -> str:
    """A loopback address of its own for one Service (127.x.y.z), as a ClusterIP is."""
    return f"127.{random.randint(64, 250)}.{random.randint(0, 255)}.{random.randint(2, 254)}"


def _free_on(address: str, port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind((address, port))
        except OSError:
            return False
    return True


class ServiceProcess:
    """A server standing for an in-chart StatefulSet, on its Service's address and port; stopped by PID."""

    def __init__(
        self,
        name: str,
        args: list[str],
        address: str,
        port: int,
        log: Path,
        data: Path | None = None,
        env: dict[str, str] | None = None,
        monitor_port: int | None = None,
    ) -> None:
        self.name, self.address, self.port, self.data = name, address, port, data
        self.monitor_port = monitor_port
        self._log = open(log, "wb")  # noqa: SIM115 (closed by stop)
        self.process = subprocess.Popen(
            args, stdout=self._log, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
        deadline = time.monotonic() + 60
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"{name} exited with {self.process.returncode} before listening (log: {log})")
            with contextlib.suppress(OSError), socket.create_connection((address, port), timeout=0.5):
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"{name} did not listen on {address}:{port} within 60 s")
            time.sleep(0.1)

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after 10 s."""
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        self._log.close()
        if self.data is not None:
            shutil.rmtree(self.data, ignore_errors=True)


def _env_of(
    container: dict[str, Any], config_maps: dict[str, dict[str, str]], secrets: dict[str, dict[str, str]]
) -> tuple[dict[str, str], dict[str, str]]:
    """A container's environment (``envFrom`` then ``env``) and which variables came from secrets."""
    env: dict[str, str] = {}
    from_secrets: dict[str, str] = {}
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            env.update(config_maps.get(source["configMapRef"]["name"], {}))
        elif "secretRef" in source:
            name = source["secretRef"]["name"]
            env.update(secrets.get(name, {}))
            from_secrets.update({k: f"secret {name}" for k in secrets.get(name, {})})
    for variable in container.get("env", []):
        if "value" in variable:
            env[variable["name"]] = str(variable["value"])
            continue
        reference = variable.get("valueFrom", {})
        if "secretKeyRef" in reference:
            ref = reference["secretKeyRef"]
            from_secrets[variable["name"]] = f"secret {ref['name']} key {ref['key']}"
            if ref["key"] in secrets.get(ref["name"], {}):
                env[variable["name"]] = secrets[ref["name"]][ref["key"]]
        elif "configMapKeyRef" in reference:
            ref = reference["configMapKeyRef"]
            env[variable["name"]] = config_maps.get(ref["name"], {}).get(ref["key"], "")
    return env, from_secrets


def secret_data(deployment: Deployment, manifests: list[dict[str, Any]]) -> dict[str, dict[str, str]]:
    """Every Secret the pods can read: the graph's (Pulumi-created) and the chart's own."""
    secrets = {
        n.inputs["metadata"]["name"]: dict(n.inputs.get("stringData") or {})
        for n in deployment.nodes("kubernetes:core/v1:Secret")
    }
    for manifest in by_kind(manifests, "Secret"):
        secrets[manifest["metadata"]["name"]] = dict(manifest.get("stringData") or {})
    return secrets


def start_in_chart_services(
    manifests: list[dict[str, Any]], secrets: dict[str, dict[str, str]], workdir: Path
) -> dict[str, ServiceProcess]:
    """A real server for each in-chart StatefulSet (PostgreSQL, NATS), on its Service's name and port."""
    services = {m["metadata"]["name"]: m for m in by_kind(manifests, "Service")}
    config_maps = {m["metadata"]["name"]: dict(m.get("data") or {}) for m in by_kind(manifests, "ConfigMap")}
    started: dict[str, ServiceProcess] = {}
    try:
        for statefulset in by_kind(manifests, "StatefulSet"):
            name = statefulset["spec"].get("serviceName") or statefulset["metadata"]["name"]
            service = services[name]
            [container] = statefulset["spec"]["template"]["spec"]["containers"]
            env, _ = _env_of(container, config_maps, secrets)
            port = int(service["spec"]["ports"][0]["port"])
            address = cluster_address()
            while not _free_on(address, port):
                address = cluster_address()
            image = container["image"]
            if "postgres" in image:
                started[name] = _postgres(name, env, address, port, workdir)
            elif "nats" in image:
                started[name] = _nats(name, statefulset, config_maps, env, address, port, workdir)
            else:
                raise RuntimeError(f"the rehearsal cannot run the in-chart {name} ({image})")
    except BaseException:
        for process in started.values():
            process.stop()
        raise
    return started


def _nats(
    name: str,
    statefulset: dict[str, Any],
    config_maps: dict[str, dict[str, str]],
    env: dict[str, str],
    address: str,
    port: int,
    workdir: Path,
) -> ServiceProcess:
    """nats-server with the chart's ``nats.conf`` (its ConfigMap, mounted where the args say) and
    the container's environment (``NATS_PASSWORD`` from the Secret), as the StatefulSet runs it."""
    binary = shutil.which("nats-server") or "/usr/sbin/nats-server"
    if not Path(binary).exists():
        unavailable("no nats-server binary (apt-get install -y nats-server)")
    pod = statefulset["spec"]["template"]["spec"]
    [container] = pod["containers"]
    args = list(container.get("args") or ())
    conf_path = Path(args[args.index("--config") + 1])
    mount = next(m for m in container["volumeMounts"] if conf_path.is_relative_to(m["mountPath"]))
    volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])
    conf = config_maps[volume["configMap"]["name"]][str(conf_path.relative_to(mount["mountPath"]))]
    # the data volume's mount (/data) is a directory of the rehearsal's: the one line rewritten
    data = tempfile.mkdtemp(prefix="nats-", dir=workdir)
    conf, rewrites = re.subn(r"(?m)^(\s*store_dir:\s*)\S+$", lambda m: f"{m.group(1)}{data}", conf)
    if rewrites != 1:
        raise RuntimeError(f"the chart's nats.conf has {rewrites} store_dir lines, the rehearsal expects one")
    config = workdir / f"{name}.conf"
    config.write_text(conf)
    monitor = free_port()
    command = [binary, "--config", str(config), "-a", address, "-p", str(port), "-m", str(monitor)]
    environment = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **env}
    return ServiceProcess(name, command, address, port, workdir / f"{name}.log", env=environment, monitor_port=monitor)


def _postgres(name: str, env: dict[str, str], address: str, port: int, workdir: Path) -> ServiceProcess:
    """PostgreSQL initialised as the official image is: the user, the database, password auth over TCP."""
    bins = sorted(Path("/usr/lib/postgresql").glob("*/bin"))
    if not bins:
        unavailable("PostgreSQL server binaries are not installed (/usr/lib/postgresql/*/bin)")
    binaries = bins[-1]
    data = Path(tempfile.mkdtemp(prefix="skyferry-rehearsal-pg-"))  # /tmp itself: the postgres user must reach it
    try:
        return _start_postgres(name, env, address, port, workdir, binaries, data)
    except BaseException:
        shutil.rmtree(data, ignore_errors=True)
        raise


def _start_postgres(
    name: str, env: dict[str, str], address: str, port: int, workdir: Path, binaries: Path, data: Path
) -> ServiceProcess:
    shutil.chown(data, "postgres", "postgres")
    password = data / "pw"
    password.write_text(env["POSTGRES_PASSWORD"])
    shutil.chown(password, "postgres", "postgres")
    as_postgres = ["setpriv", "--reuid=postgres", "--regid=postgres", "--init-groups"]
    user = env.get("POSTGRES_USER", "postgres")
    _run(
        [
            *as_postgres,
            str(binaries / "initdb"),
            "-D",
            str(data / "db"),
            "-U",
            user,
            f"--pwfile={password}",
            "--auth-host=scram-sha-256",
            "--auth-local=trust",
            "-E",
            "UTF8",
        ],
        timeout=300,
    )
    args = [
        *as_postgres,
        str(binaries / "postgres"),
        "-D",
        str(data / "db"),
        "-c",
        f"listen_addresses={address}",
        "-c",
        f"port={port}",
    ]
    args += ["-c", f"unix_socket_directories={data}", "-c", "fsync=off"]
    process = ServiceProcess(name, args, address, port, workdir / f"{name}.log", data)
    database = env.get("POSTGRES_DB", user)
    _run(
        [
            *as_postgres,
            str(binaries / "psql"),
            "-h",
            str(data),
            "-p",
            str(port),
            "-U",
            user,
            "-d",
            "postgres",
            "-c",
            f'CREATE DATABASE "{database}"',
        ],
        timeout=300,
    )
    return process


def pod_workloads(deployment: Deployment, manifests: list[dict[str, Any]]) -> dict[str, Workload]:
    """Every container of the chart's Deployments and Jobs, as the kubelet would start it."""
    config_maps = {m["metadata"]["name"]: dict(m.get("data") or {}) for m in by_kind(manifests, "ConfigMap")}
    secrets = secret_data(deployment, manifests)
    workloads: dict[str, Workload] = {}
    for manifest in by_kind(manifests, "Deployment") + by_kind(manifests, "Job"):
        pod = manifest["spec"]["template"]["spec"]
        owner = manifest["metadata"]["name"]
        claims = {v["name"]: v for v in pod.get("volumes", [])}
        for container in pod["containers"]:
            env, from_secrets = _env_of(container, config_maps, secrets)
            named = {p.get("name"): int(p["containerPort"]) for p in container.get("ports", [])}
            probes = []
            for purpose in ("startup", "liveness", "readiness"):
                spec = container.get(f"{purpose}Probe")
                probe = probe_of(purpose, spec, f"{purpose}Probe", named=named) if spec else None
                if probe is not None:
                    probes.append(probe)
            volumes = {}
            for mount in container.get("volumeMounts", []):
                volume = claims.get(mount["name"], {})
                claim = (volume.get("persistentVolumeClaim") or {}).get("claimName")
                volumes[mount["mountPath"]] = f"pvc:{claim}" if claim else f"pod:{owner}:{mount['name']}"
            name = f"k8s:{owner}/{container['name']}"
            ports = tuple(sorted(named.values()))
            workloads[name] = Workload(
                name=name,
                platform=f"{manifest['kind']} {owner}, container {container['name']}",
                kind="service" if manifest["kind"] == "Deployment" else "job",
                entrypoint=tuple(container["command"]) if container.get("command") else None,
                args=tuple(container.get("args") or ()),
                env=env,
                secret_env=from_secrets,
                ports=ports,
                probes=probes,
                volumes=volumes,
                identity=f"serviceaccount {pod.get('serviceAccountName', 'default')}",
                platform_env={"HOSTNAME": f"{owner}-rhs0001"},
                port_variables=port_variables(env, ports, probes),
            )
    return workloads


def dns_names(namespace: str, started: dict[str, ServiceProcess]) -> dict[str, str]:
    """Each in-chart Service's names (short, namespaced, fully qualified) -> its address."""
    names = {}
    for name, process in started.items():
        for alias in (name, f"{name}.{namespace}", f"{name}.{namespace}.svc", f"{name}.{namespace}.{CLUSTER_DOMAIN}"):
            names[alias] = process.address
    return names
