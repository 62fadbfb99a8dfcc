"""What every target's rehearsal shares: start the workloads, watch their probes, drive the app.

A target module (``aws.py`` …) provisions the emulators from the graph and reads its
:class:`~tests.rehearsal.workloads.Workload` specs from it; :class:`Rehearsal` then starts
each service, gives each probe the platform's start-up budget, keeps what it saw for the
contract tests, drives the app once through the API and runs ``export``/``import`` as the
workload's identity.  Every outcome is kept (never raised here), so each contract is
checked by its own test.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.rehearsal.drive import drive
from tests.rehearsal.stack import Deployment
from tests.rehearsal.workloads import Launch, Launcher, ProbeResult, Running, Workload, port_layer, wait_for_probe

STARTUP_SECONDS = 60.0
"""How long a workload may take to pass its start-up probes (Cloud Run's default startup
probe allows 240 s, Kubernetes' readiness has no limit: 60 s is ample for a process here)."""


@dataclass
class Outcome:
    """A step that either worked (``value``) or failed (``error``, with the workload logs)."""

    value: Any = None
    error: str = ""

    @property
    def ok(self) -> bool:
        """Whether the step worked."""
        return not self.error


@dataclass
class Rehearsal:
    """One target's rehearsal: the deployment, its workloads started, and what was seen."""

    deployment: Deployment
    workdir: Path
    launcher: Launcher
    workloads: dict[str, Workload]
    rehearsal_env: Callable[[Workload], tuple[dict[str, str], dict[str, str]]]
    token: str
    api: str
    calls_log: Path
    launches: dict[str, Launch] = field(default_factory=dict)
    running: dict[str, Running] = field(default_factory=dict)
    probes: dict[str, list[ProbeResult]] = field(default_factory=dict)
    drive: Outcome = field(default_factory=Outcome)
    extra: dict[str, Any] = field(default_factory=dict)

    def launch(self, workload: Workload) -> Launch:
        """The layered environment and port mapping of ``workload``."""
        host_ports, port_env, port_reasons = port_layer(workload)
        env, reasons = self.rehearsal_env(workload)
        return Launch(
            workload=workload,
            image_env=dict(getattr(self.launcher, "image_env", {})),
            rehearsal_env={**env, **port_env},
            reasons={**reasons, **port_reasons},
            host_ports=host_ports,
        )

    def start(self) -> None:
        """Start every service workload and watch its start-up probes."""
        for name, workload in self.workloads.items():
            if workload.kind != "service":
                continue
            launch = self.launch(workload)
            self.launches[name] = launch
            self.running[name] = self.launcher.start(
                launch, self.workdir / f"{name.replace(':', '-').replace('/', '-')}.log"
            )
        with ThreadPoolExecutor(max_workers=8) as pool:
            waits = {
                name: [
                    pool.submit(wait_for_probe, running, probe, STARTUP_SECONDS) for probe in running.workload.probes
                ]
                for name, running in self.running.items()
            }
        self.probes = {name: [w.result() for w in futures] for name, futures in waits.items()}

    def stop(self) -> None:
        """Stop every started workload."""
        for running in self.running.values():
            running.stop()

    def logs(self) -> str:
        """The tail of every workload's log, for failure messages."""
        return "\n".join(f"--- {name} ---\n{r.output()[-3000:]}" for name, r in self.running.items())

    def api_base(self) -> str:
        """The API's base URL on the machine: its mapped port, or where it really listens."""
        running = self.running[self.api]
        port = running.workload.ports[0] if running.workload.ports else 8000
        mapped = running.launch.host_ports.get(port)
        listening = running.listening_ports()
        if mapped in listening or not listening:
            return f"http://127.0.0.1:{mapped}"
        return f"http://127.0.0.1:{min(listening)}"

    def drive_once(self) -> Outcome:
        """Drive the app end to end through the API (see :mod:`tests.rehearsal.drive`), once."""
        if self.drive.value is None and not self.drive.error:
            try:
                self.drive = Outcome(value=drive(self.api_base(), self.token))
            except Exception as e:  # kept for the contract tests, with the logs
                self.drive = Outcome(error=f"{e!r}\n{self.logs()}")
        return self.drive

    def broker_fed(self, worker: str) -> Outcome:
        """Switch the worker to broker-fed read models and drive the app again (once).

        The stacks run store-fed, where nothing is published; the broker they declare is
        used only by a switch to ``SKYFERRY_PROJECTIONS_FROM=broker``.  The store-fed worker
        is stopped first (the two modes keep different checkpoints), then the same workload
        runs with that one variable more; the drive gives up as soon as the new worker dies
        or a consumer is refused its subscription.
        """
        if "broker_fed" in self.extra:
            outcome: Outcome = self.extra["broker_fed"]
            return outcome
        self.drive_once()  # the store-fed run comes first, with the stack's own worker
        self.running.pop(worker).stop()
        launch = self.launch(self.workloads[worker])
        launch.rehearsal_env["SKYFERRY_PROJECTIONS_FROM"] = "broker"
        launch.reasons["SKYFERRY_PROJECTIONS_FROM"] = (
            "the stack runs store-fed (nothing published): its broker is rehearsed as a switch to broker-fed uses it"
        )
        self.launches[worker] = launch
        running = self.launcher.start(launch, self.workdir / "broker-fed-worker.log")
        self.running[worker] = running
        seen = len(self.calls())

        def abort() -> str:
            if not running.alive():
                return f"the broker-fed worker exited with {running.returncode()}"
            refused = [c for c in self.calls()[seen:] if c.get("error")]
            return f"{refused[0]['kind']} refused: {refused[0]['error']}" if refused else ""

        try:
            outcome = Outcome(value=drive(self.api_base(), self.token, timeout=60, abort=abort))
        except Exception as e:  # kept for the contract tests, with the logs
            outcome = Outcome(error=f"{e!r}\n{self.logs()}")
        self.extra["broker_fed"] = outcome
        self.extra["broker_fed_calls"] = seen
        return outcome

    def run_as(self, name: str, argv: list[str], timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` in workload ``name``'s context: its environment, volumes and identity."""
        launch = self.launches.get(name) or self.launch(self.workloads[name])
        return self.launcher.run(launch, argv, self.workdir / "runs.log", timeout)

    def calls(self) -> list[dict[str, Any]]:
        """Every call the workloads made, as recorded (seam or emulator)."""
        if not self.calls_log.exists():
            return []
        return [json.loads(line) for line in self.calls_log.read_text().splitlines() if line.strip()]

    def store_fed_calls(self) -> list[dict[str, Any]]:
        """The calls recorded before the switch to broker-fed read models (all of them, before it)."""
        calls = self.calls()
        return calls[: self.extra.get("broker_fed_calls", len(calls))]

    def workload_env(self, name: str) -> dict[str, str]:
        """The environment workload ``name`` ran with."""
        launch = self.launches.get(name) or self.launch(self.workloads[name])
        return launch.env


def probe_failures(rehearsal: Rehearsal, name: str) -> list[str]:
    """The probes of workload ``name`` that did not pass, described."""
    return [f"{r.probe.describe()}: {r.detail}" for r in rehearsal.probes.get(name, []) if not r.ok]


def stays_up(running: Running, seconds: float = 2.0) -> bool:
    """Whether the container's main process is still running after ``seconds``."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not running.alive():
            return False
        time.sleep(0.1)
    return running.alive()


@contextlib.contextmanager
def rehearsed(rehearsal: Rehearsal) -> Iterator[Rehearsal]:
    """Start the workloads and stop them afterwards."""
    try:
        rehearsal.start()
        yield rehearsal
    finally:
        rehearsal.stop()
