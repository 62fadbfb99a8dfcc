"""Workloads as a platform runs them: the spec read from the graph, a launcher, the platform's probes.

A :class:`Workload` is what the graph declares for one container: the image's entrypoint
or the command that replaces it, the arguments, the environment with every secret reference
resolved to the secret's value, the ports the platform sends traffic to, the probes it runs,
the volumes it mounts and the identity it runs as.  What the rehearsal adds is kept apart
and named (:class:`Launch`): the image's own ``ENV`` (read from ``app/Dockerfile``), what
the platform injects (``PORT`` on Cloud Run, ``AWS_REGION`` and the credentials endpoint on
ECS), and the rehearsal's rewrites, each with its reason (an emulator endpoint where the
cloud's is implicit, a host port where the container port is taken on a shared machine).

Two launchers, one switch (``SKYFERRY_REHEARSAL_LAUNCHER``; ``auto``, the default, takes
``image`` where a container engine answers and ``process`` elsewhere):

``process``
    ``skyferry`` from the work tree's environment, as a child process with exactly that
    environment (nothing inherited from the test process).  Volumes are mounted in a private
    mount namespace (``unshare --mount``), as the platform mounts them: a path the machine
    lacks (``/var/lib/skyferry/archive``), and a pod's, task's or container's own ``/tmp``
    (where the worker keeps its heartbeat).  uid 10001 and the
    read-only root filesystem are not reproduced.
``image``
    The real image, built from this checkout for the stack's target by
    :func:`tests.services.container.ensure_image` (what ``make image`` builds), each workload
    a container as the platforms run it: uid 10001, read-only root, a tmpfs ``/tmp``,
    capabilities dropped, host network, the same environment and volumes.  Skipped, with
    the reason, where no container engine answers.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

import httpx

from tests.services import free_port, listening_ports, unavailable

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "app" / "Dockerfile"
SEAM_DIR = Path(__file__).resolve().parent / "seam"
LAUNCHER_VARIABLE = "SKYFERRY_REHEARSAL_LAUNCHER"
#: ``PATH`` of the base image (``python:*-slim``) before the Dockerfile's own ``ENV PATH=…:$PATH``.
BASE_IMAGE_PATH = "/usr/local/bin:/usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin"
#: Where nothing may be mounted over in the process launcher's namespace.
_SYSTEM_DIRS = frozenset(
    {"/", "/usr", "/etc", "/bin", "/lib", "/proc", "/sys", "/dev", "/root", "/home", "/tmp", "/var", "/work"}
)


@dataclass(frozen=True)
class Probe:
    """One check the platform runs against a container (ports are container ports)."""

    kind: Literal["http", "tcp", "exec"]
    purpose: str
    port: int | None = None
    path: str = "/"
    command: tuple[str, ...] = ()
    ok_status: tuple[int, int] = (200, 399)
    source: str = ""

    def describe(self) -> str:
        """``startup http GET :8000/healthz`` and the like."""
        target = (
            f"GET :{self.port}{self.path}"
            if self.kind == "http"
            else f"tcp :{self.port}"
            if self.kind == "tcp"
            else " ".join(self.command)
        )
        return f"{self.purpose} {self.kind} {target} ({self.source})"


def probe_of(
    purpose: str,
    spec: dict[str, object],
    source: str,
    default_port: int | None = None,
    named: dict[str, int] | None = None,
) -> Probe | None:
    """A probe from the shape Kubernetes, Cloud Run and Container Apps share.

    ``httpGet``/``tcpSocket``/``grpc`` with a ``port`` (a number, or a container port's
    name; ``default_port`` when absent) or ``exec`` with a ``command``.  gRPC health is
    checked as a TCP connection.
    """
    for kind, key in (("http", "httpGet"), ("tcp", "tcpSocket"), ("tcp", "grpc")):
        target = spec.get(key)
        if isinstance(target, dict):
            port = target.get("port", default_port)
            if port is None:
                raise ValueError(f"{source}: a {key} probe names no port and the container has none to default to")
            number = (named or {}).get(port, port) if isinstance(port, str) else port
            path = str(target.get("path", "/")) if kind == "http" else "/"
            return Probe(kind, purpose, port=int(str(number)), path=path, source=source)  # type: ignore[arg-type]
    command = spec.get("exec")
    if isinstance(command, dict):
        return Probe("exec", purpose, command=tuple(command["command"]), source=source)
    return None


def port_variables(env: Mapping[str, str], ports: Iterable[int], probes: Iterable[Probe] = ()) -> dict[str, int]:
    """The variables of ``env`` that tell the app a port of its container: one of ``ports`` or a probe's.

    ``SKYFERRY_PORT=8000`` beside a container port 8000, ``SKYFERRY_HEALTH_PORT=8080``
    beside a probe on 8080: the rehearsal serves each such port on a free host port
    (:func:`port_layer`), and the variable carries that port instead, as ``docker run -p``
    would leave the container its own.
    """
    wanted = {*ports, *(p.port for p in probes if p.port is not None)}
    return {name: int(value) for name, value in env.items() if value.isdigit() and int(value) in wanted}


@dataclass
class Workload:
    """One container as the graph declares it (see the module docstring).

    ``kind`` is ``service`` for what the platform keeps running (an ECS service, a Cloud
    Run service or worker pool, a Container App, a Deployment: the rehearsal starts it) and
    ``job`` for what runs to its end.  ``ports`` are the ports the platform sends requests
    to; a probe may ask another one (:meth:`container_ports`).
    """

    name: str
    platform: str
    kind: Literal["service", "job"]
    args: tuple[str, ...]
    env: dict[str, str]
    entrypoint: tuple[str, ...] | None = None
    secret_env: dict[str, str] = field(default_factory=dict)
    ports: tuple[int, ...] = ()
    probes: list[Probe] = field(default_factory=list)
    volumes: dict[str, str] = field(default_factory=dict)
    identity: str = ""
    platform_env: dict[str, str] = field(default_factory=dict)
    port_variables: dict[str, int] = field(default_factory=dict)

    def container_ports(self) -> set[int]:
        """Every port of the container the platform connects to: its request ports and its probes'."""
        return {*self.ports, *(p.port for p in self.probes if p.port is not None)}

    def argv(self, image_entrypoint: tuple[str, ...]) -> list[str]:
        """The container's command line: the entrypoint (the image's unless replaced) and args."""
        return [*(self.entrypoint if self.entrypoint is not None else image_entrypoint), *self.args]


@dataclass
class Launch:
    """How one workload is started: its environment in layers, with the rehearsal's part named."""

    workload: Workload
    image_env: dict[str, str]
    rehearsal_env: dict[str, str]
    reasons: dict[str, str]
    host_ports: dict[int, int]

    @property
    def env(self) -> dict[str, str]:
        """The process environment: image, platform, graph, then the rehearsal's rewrites."""
        return {**self.image_env, **self.workload.platform_env, **self.workload.env, **self.rehearsal_env}


def image_config(dockerfile: Path = DOCKERFILE) -> tuple[dict[str, str], tuple[str, ...], tuple[str, ...]]:
    """``(ENV, ENTRYPOINT, CMD)`` of the image's runtime stage, read from the Dockerfile."""
    text = dockerfile.read_text().replace("\\\n", " ")
    runtime = text[text.rindex("\nFROM ") :]
    env: dict[str, str] = {"PATH": BASE_IMAGE_PATH}
    entrypoint: tuple[str, ...] = ()
    cmd: tuple[str, ...] = ()
    for line in runtime.splitlines():
        line = line.strip()
        if line.startswith("ENV "):
            for pair in shlex.split(line[4:]):
                key, _, value = pair.partition("=")
                env[key] = re.sub(r"\$(\w+)|\$\{(\w+)\}", lambda m: env.get(m[1] or m[2], ""), value)
        elif line.startswith("ENTRYPOINT "):
            entrypoint = tuple(json.loads(line[len("ENTRYPOINT ") :]))
        elif line.startswith("CMD "):
            cmd = tuple(json.loads(line[len("CMD ") :]))
    return env, entrypoint, cmd


def port_layer(workload: Workload) -> tuple[dict[int, int], dict[str, str], dict[str, str]]:
    """Host ports for the container ports, and the variables that tell the app its port.

    A container port is a port of the container's own network; the rehearsal's processes
    share the machine's, where another test may hold it, so each gets a free host port
    (``docker run -p`` does the same), and the variable through which the platform tells
    the app its port carries the host port instead.
    """
    ports = sorted({*workload.container_ports(), *workload.port_variables.values()})
    host = {port: free_port() for port in ports}
    env = {name: str(host[port]) for name, port in workload.port_variables.items()}
    reasons = {
        name: f"container port {port} is served on free host port {host[port]}"
        for name, port in workload.port_variables.items()
    }
    return host, env, reasons


class Running:
    """A started workload: its main process (or container), its host ports and its log."""

    def __init__(self, launch: Launch, log: Path, launcher: Launcher) -> None:
        self.launch = launch
        self.log = log
        self.launcher = launcher

    @property
    def workload(self) -> Workload:
        """The workload's spec."""
        return self.launch.workload

    def alive(self) -> bool:
        """Whether the container's main process still runs."""
        raise NotImplementedError

    def pid(self) -> int:
        """The host PID of the main process."""
        raise NotImplementedError

    def returncode(self) -> int | None:
        """The exit code once it stopped (None while it runs)."""
        raise NotImplementedError

    def output(self) -> str:
        """What it printed so far (stdout and stderr)."""
        raise NotImplementedError

    def settled(self) -> bool:
        """Whether the app is past its start-up: it listens, or the seam saw it call a service."""
        if self.listening_ports():
            return True
        seam = self.launch.rehearsal_env.get("SKYFERRY_REHEARSAL_SEAM")
        if not seam:
            return False
        log = Path(json.loads(Path(seam).read_text())["log"])
        if not log.exists():
            return False
        marker = f'"pid": {self.pid()}, '
        return any(marker in line and '"kind": "start"' not in line for line in log.read_text().splitlines())

    def listening_ports(self) -> set[int]:
        """TCP ports the process tree listens on (from ``/proc``; containers share the host's network)."""
        pid = self.pid()
        return listening_ports(pid) if pid else set()

    def stop(self) -> None:
        """Stop as a platform does: SIGTERM, then SIGKILL after 10 s."""
        self.launcher.stop(self)

    @contextlib.contextmanager
    def hung(self) -> Iterator[None]:
        """The main process stopped (SIGSTOP, every thread of it) for the block: a hung container."""
        pid = self.pid()
        os.kill(pid, signal.SIGSTOP)
        try:
            yield
        finally:
            os.kill(pid, signal.SIGCONT)


class ProcessRunning(Running):
    """A workload started by :class:`ProcessLauncher`: a child process of its own session."""

    def __init__(self, launch: Launch, process: subprocess.Popen[bytes], log: Path, launcher: Launcher) -> None:
        super().__init__(launch, log, launcher)
        self.process = process

    def alive(self) -> bool:
        """Whether the process still runs."""
        return self.process.poll() is None

    def pid(self) -> int:
        """The process's PID."""
        return self.process.pid

    def returncode(self) -> int | None:
        """Its exit code once it stopped."""
        return self.process.poll()

    def output(self) -> str:
        """Its log file."""
        return self.log.read_text(errors="replace") if self.log.exists() else ""


class Launcher(Protocol):
    """Starts workloads; ``process`` and ``image`` implement it."""

    mode: str

    def start(self, launch: Launch, log: Path) -> Running:
        """Start the workload's container command."""
        ...

    def run(self, launch: Launch, argv: list[str], log: Path, timeout: float) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` in the workload's context (an exec probe, ``kubectl exec``, an ECS task override)."""
        ...

    def stop(self, running: Running) -> None:
        """Stop a started workload."""
        ...


class ProcessLauncher:
    """Workloads as processes from the work tree (see the module docstring)."""

    mode = "process"

    def __init__(self, workdir: Path, volumes: Mapping[str, Path]) -> None:
        self.workdir = workdir
        self.volumes = dict(volumes)
        self.bin = Path(sys.executable).parent
        self.image_env, self.entrypoint, _ = image_config()

    def environment(self, launch: Launch) -> dict[str, str]:
        """The process environment: the image's ``PATH`` points at the work tree's environment."""
        env = dict(launch.env)
        env["PATH"] = env.get("PATH", "/usr/bin:/bin").replace("/opt/skyferry/bin", str(self.bin))
        # the work tree's app first: the environment may be another checkout's (an editable install)
        env["PYTHONPATH"] = f"{SEAM_DIR}{os.pathsep}{ROOT / 'app'}"
        return env

    def _source(self, volume: str) -> Path:
        """The machine directory behind a volume (one per ``pod:…`` emptyDir, one per ``pvc:…`` claim)."""
        if volume not in self.volumes:
            self.volumes[volume] = Path(tempfile.mkdtemp(prefix=f"vol-{volume.replace(':', '-')}-", dir=self.workdir))
        return self.volumes[volume]

    def command(self, launch: Launch, argv: list[str]) -> list[str]:
        """``argv`` wrapped in a private mount namespace where the workload's volumes are mounted.

        A mount path the machine lacks gets a tmpfs on its nearest existing directory first
        (``/var/lib``: inside the namespace only).  A mount over a directory that holds the
        rehearsal's own directory or the work tree (``/tmp``) keeps them reachable (stashed on
        a tmpfs over ``/mnt`` and bound back), since the seam's config and log live in the one
        and the seam and the app's code in the other.
        """
        first = argv[0]
        resolved = [str(self.bin / first) if "/" not in first and (self.bin / first).exists() else first, *argv[1:]]
        mounts = sorted((self._source(volume), path) for path, volume in launch.workload.volumes.items())
        if not mounts:
            return resolved
        script: list[str] = []
        covered = [
            kept
            for kept in (self.workdir, ROOT)
            if any(Path(t).exists() and str(kept).startswith(t.rstrip("/") + "/") for _, t in mounts)
        ]
        stash = {kept: f"/mnt/{index}" for index, kept in enumerate(covered)}
        if stash:
            script.append("mount -t tmpfs tmpfs /mnt")
            for kept, place in stash.items():
                script += [f"mkdir -p {place}", f"mount --bind {shlex.quote(str(kept))} {place}"]
        anchors: set[str] = set()
        for _, target in mounts:
            anchor = Path(target)
            while not anchor.exists():
                anchor = anchor.parent
            if str(anchor) != target:
                if str(anchor) in _SYSTEM_DIRS:
                    raise RuntimeError(
                        f"cannot mount {target}: its nearest existing directory {anchor} is a system directory"
                    )
                anchors.add(str(anchor))
        script += [f"mount -t tmpfs tmpfs {shlex.quote(a)}" for a in sorted(anchors)]
        for source, target in mounts:
            reachable = str(source)
            if self.workdir in stash:
                reachable = reachable.replace(str(self.workdir), stash[self.workdir], 1)
            script += [
                f"mkdir -p {shlex.quote(target)}",
                f"mount --bind {shlex.quote(reachable)} {shlex.quote(target)}",
            ]
        for kept, place in stash.items():
            script += [f"mkdir -p {shlex.quote(str(kept))}", f"mount --bind {place} {shlex.quote(str(kept))}"]
        script.append('exec "$@"')
        unshare = shutil.which("unshare") or "/usr/bin/unshare"
        return [unshare, "--mount", "--propagation", "private", "/bin/sh", "-c", " && ".join(script), "sh", *resolved]

    def start(self, launch: Launch, log: Path) -> Running:
        """Start the container command as a process of its own session."""
        argv = self.command(launch, launch.workload.argv(self.entrypoint))
        out = open(log, "wb")  # noqa: SIM115 (closed when the process is stopped)
        process = subprocess.Popen(
            argv,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=self.environment(launch),
            cwd=self.workdir,
            start_new_session=True,
        )
        out.close()
        return ProcessRunning(launch, process, log, self)

    def run(self, launch: Launch, argv: list[str], log: Path, timeout: float) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` with the workload's environment and volumes; the output is appended to ``log``."""
        completed = subprocess.run(
            self.command(launch, argv),
            env=self.environment(launch),
            cwd=self.workdir,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        with open(log, "a") as f:
            f.write(f"$ {shlex.join(argv)}\n{completed.stdout}{completed.stderr}[exit {completed.returncode}]\n")
        return completed

    def stop(self, running: Running) -> None:
        """SIGTERM to the process group, SIGKILL after 10 s."""
        assert isinstance(running, ProcessRunning)
        process = running.process
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait()


class ContainerRunning(Running):
    """A workload started by :class:`ImageLauncher`: a container of the real image."""

    def __init__(self, launch: Launch, container: Any, log: Path, launcher: Launcher) -> None:
        super().__init__(launch, log, launcher)
        self.container = container

    def alive(self) -> bool:
        """Whether the container still runs."""
        return bool(self.container.running())

    def pid(self) -> int:
        """The host PID of the container's main process (0 once it stopped)."""
        return int(self.container.pid())

    def returncode(self) -> int | None:
        """The container's exit code once it stopped."""
        return None if self.container.running() else int(self.container.exit_code())

    def output(self) -> str:
        """The container's logs."""
        return str(self.container.logs())


class ImageLauncher:
    """Workloads as containers of the real image, started by :mod:`tests.services.container`.

    That module runs the image as every platform does (uid 10001, read-only root with a tmpfs
    ``/tmp``, all capabilities dropped, no privilege escalation, host network).  The work tree
    and the rehearsal's directory are mounted at their own paths (read-only, and for the
    seam's config and log), each other volume from a directory of its own (writable by uid
    10001); an ``exec`` probe or ``run_as`` runs inside the workload's running container.
    """

    mode = "image"

    def __init__(self, workdir: Path, target: str, volumes: Mapping[str, Path]) -> None:
        from tests.services import container

        image = container.ensure_image(target)
        if image is None:
            unavailable(
                "image launcher: no container engine on this machine (podman, or docker whose daemon answers)",
                may_skip_in_ci=True,
            )
        self.container, self.image = container, image
        self.workdir = workdir
        self.volumes = dict(volumes)
        self.running: dict[str, ContainerRunning] = {}
        workdir.chmod(0o777)

    def _options(self, launch: Launch) -> dict[str, Any]:
        env = {**launch.workload.platform_env, **launch.workload.env, **launch.rehearsal_env}
        env["PYTHONPATH"] = str(SEAM_DIR)
        mounts: dict[str | Path, str] = {ROOT: f"{ROOT}:ro", self.workdir: str(self.workdir)}
        for path, volume in sorted(launch.workload.volumes.items()):
            if path == "/tmp":
                continue  # the platforms' tmpfs: one per container, as an emptyDir is per pod
            if volume not in self.volumes:
                self.volumes[volume] = Path(
                    tempfile.mkdtemp(prefix=f"vol-{volume.replace(':', '-')}-", dir=self.workdir)
                )
                os.chown(self.volumes[volume], 10001, 10001)
            mounts[self.volumes[volume]] = path
        entry = launch.workload.entrypoint
        return {"env": env, "mounts": mounts, "entrypoint": entry[0] if entry else None}

    def _command(self, launch: Launch, argv: list[str]) -> list[str]:
        entry = launch.workload.entrypoint
        return [*(entry[1:] if entry else ()), *argv]

    def start(self, launch: Launch, log: Path) -> Running:
        """Run the image with the workload's command, detached."""
        options = self._options(launch)
        started = self.container.run_container(self.image, self._command(launch, list(launch.workload.args)), **options)
        running = ContainerRunning(launch, started, log, self)
        self.running[launch.workload.name] = running
        return running

    def run(self, launch: Launch, argv: list[str], log: Path, timeout: float) -> subprocess.CompletedProcess[str]:
        """``argv`` inside the workload's running container, else in a new one run to its end."""
        running = self.running.get(launch.workload.name)
        if running is not None and running.alive():
            completed = running.container.exec(*argv, timeout=timeout)
        else:
            options = self._options(launch)
            options["entrypoint"] = argv[0]
            finished = self.container.run_once(self.image, argv[1:], timeout=timeout, **options)
            completed = subprocess.CompletedProcess(argv, finished.returncode, finished.output, "")
        with open(log, "a") as f:
            f.write(f"$ {shlex.join(argv)}\n{completed.stdout}{completed.stderr}[exit {completed.returncode}]\n")
        return completed

    def stop(self, running: Running) -> None:
        """Stop (SIGTERM, SIGKILL after 10 s) and remove the container."""
        assert isinstance(running, ContainerRunning)
        running.log.write_text(running.output())
        running.container.stop()
        running.container.remove()


def launcher(workdir: Path, target: str, volumes: Mapping[str, Path] | None = None) -> Launcher:
    """The launcher ``SKYFERRY_REHEARSAL_LAUNCHER`` chooses for ``target``'s image: by default
    (``auto``) the real image where a container engine answers, so what is rehearsed is what
    ships, else the work tree."""
    mode = os.environ.get(LAUNCHER_VARIABLE, "auto")
    if mode == "auto":
        from tests.services import container

        mode = "image" if container.engine() is not None else "process"
    if mode == "image":
        return ImageLauncher(workdir, target, volumes or {})
    if mode != "process":
        raise ValueError(f"{LAUNCHER_VARIABLE} must be 'auto', 'process' or 'image', not {mode!r}")
    return ProcessLauncher(workdir, volumes or {})


# -- probes --------------------------------------------------------------------------------------


@dataclass
class ProbeResult:
    """The outcome of a probe: passed or not, and what was seen."""

    probe: Probe
    ok: bool
    detail: str


def probe_once(running: Running, probe: Probe, timeout: float = 5.0) -> ProbeResult:
    """Run ``probe`` once against a started workload, as the platform would."""
    if probe.kind == "exec":
        completed = running.launcher.run(running.launch, list(probe.command), running.log, timeout=60)
        return ProbeResult(
            probe,
            completed.returncode == 0,
            f"exit {completed.returncode}: {completed.stdout.strip()}{completed.stderr.strip()}",
        )
    assert probe.port is not None
    port = running.launch.host_ports.get(probe.port)
    if port is None:
        return ProbeResult(probe, False, f"container port {probe.port} is not a port of the workload")
    if probe.kind == "tcp":
        import socket

        try:
            with socket.create_connection(("127.0.0.1", port), timeout=timeout):
                return ProbeResult(probe, True, f"connected to :{probe.port}")
        except OSError as e:
            return ProbeResult(probe, False, f"nothing accepts on container port {probe.port}: {e}")
    try:
        response = httpx.get(f"http://127.0.0.1:{port}{probe.path}", timeout=timeout)
    except httpx.HTTPError as e:
        return ProbeResult(probe, False, f"GET {probe.path} on container port {probe.port}: {e!r}")
    low, high = probe.ok_status
    return ProbeResult(
        probe, low <= response.status_code <= high, f"GET {probe.path}: {response.status_code} {response.text[:200]}"
    )


def wait_for_probe(running: Running, probe: Probe, within: float, grace: float = 5.0) -> ProbeResult:
    """Probe until it passes, the process exits, or the platform would give up.

    ``within`` is the start-up budget; a workload that has *settled* (it listens on some
    port, or has made a call recorded by the seam) and still fails the probe ``grace``
    seconds later will not pass it: there is no point waiting out the whole budget.
    """
    deadline = time.monotonic() + within
    settled_at: float | None = None
    result = probe_once(running, probe)
    while not result.ok and time.monotonic() < deadline and running.alive():
        if settled_at is None and running.settled():
            settled_at = time.monotonic()
        if settled_at is not None and time.monotonic() - settled_at > grace:
            break
        time.sleep(0.25)
        result = probe_once(running, probe)
    if not result.ok and not running.alive():
        result.detail += f"; the process exited with {running.returncode()}"
    return result
