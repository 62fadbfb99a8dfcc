"""The contracts every target's rehearsal checks, one function each (the tests call them).

Each returns nothing and fails with a message that names the resource, the workload or
the call that broke the contract.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from typing import Any

from tests.rehearsal.harness import STARTUP_SECONDS, Rehearsal, probe_failures, stays_up
from tests.rehearsal.stack import Deployment
from tests.rehearsal.workloads import probe_once, wait_for_probe

#: Values a mock that does not know a resource would produce.
FAKE_MARKERS = re.compile(
    r"\bmock\b|arn:mock|\.invalid\b|mock-region|mock-project|00000000-0000-0000-0000-000000000000"
)


def _strings(value: Any) -> Iterable[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item)


def pulumi_accepts(deployment: Deployment) -> None:
    """Pulumi's own config validation accepts the stack file (nothing missing, secrets secure)."""
    assert deployment.refusals == [], "\n".join(deployment.refusals)


def identifiers_are_realistic(deployment: Deployment, patterns: dict[str, str]) -> int:
    """No output of the graph is a placeholder, and every identifier of a kind has its cloud's shape.

    ``patterns`` maps an output key (``arn``, ``email``, ``id`` …) to the regular expression
    its values must match.  Returns how many identifiers were checked.
    """
    checked = 0
    fakes = []
    for node in deployment.graph.nodes:
        for key, value in node.outputs.items():
            for text in _strings(value):
                if FAKE_MARKERS.search(text):
                    fakes.append(f"{node.type} {node.name}.{key} = {text!r}")
            pattern = patterns.get(key)
            if pattern is not None and isinstance(value, str) and value:
                assert re.fullmatch(pattern, value), f"{node.type} {node.name}.{key} = {value!r} is not like {pattern}"
                checked += 1
    for name, output in deployment.graph.outputs.items():
        for text in _strings(output.value):
            if FAKE_MARKERS.search(text):
                fakes.append(f"stack output {name} = {text!r}")
    assert not fakes, "placeholder identifiers:\n" + "\n".join(fakes)
    assert checked, f"no identifier matched any of {sorted(patterns)}"
    return checked


def workloads_get_the_graphs_environment(rehearsal: Rehearsal) -> None:
    """Each workload runs with the graph's command and environment, plus only named rewrites."""
    assert rehearsal.launches, "no workload was started"
    for name, launch in rehearsal.launches.items():
        workload = launch.workload
        env = launch.env
        for key, value in workload.env.items():
            if key in workload.port_variables:
                assert env[key] == str(launch.host_ports[workload.port_variables[key]]), f"{name}: {key}"
            else:
                assert env.get(key) == value, f"{name}: {key} is {env.get(key)!r}, the graph gives {value!r}"
        unexplained = set(launch.rehearsal_env) - set(launch.reasons)
        assert not unexplained, f"{name}: rewrites without a reason: {sorted(unexplained)}"
        overridden = set(launch.rehearsal_env) & set(workload.env) - set(workload.port_variables)
        assert not overridden, f"{name}: the rehearsal overrides the graph's {sorted(overridden)}"
        assert "PYTEST_CURRENT_TEST" not in env, f"{name}: the test process's environment leaked into the workload"
        assert workload.args, f"{name}: the graph gives no command"


def secrets_resolved(rehearsal: Rehearsal, values: dict[str, str]) -> None:
    """Every secret reference a workload has resolves to the value the graph stores (``values`` by env name),
    and only a workload that serves the API is given the API's token."""
    for name, workload in rehearsal.workloads.items():
        token = "SKYFERRY_API_TOKEN" in workload.secret_env or "SKYFERRY_API_TOKEN" in workload.env
        assert token == (workload.args[:1] == ("serve",)), f"{name} ({workload.args}): API token given: {token}"
    seen = 0
    for name, launch in rehearsal.launches.items():
        for variable in launch.workload.secret_env:
            assert variable in values, f"{name}: {variable} comes from a secret the graph does not fill"
            assert launch.env[variable] == values[variable], f"{name}: {variable} resolved to another value"
            seen += 1
    assert seen, "no workload reads a secret"


def probes_pass(rehearsal: Rehearsal, name: str) -> None:
    """Every probe the platform runs on workload ``name`` passes (and it was given some)."""
    assert name in rehearsal.running, f"{name} was not started"
    failures = probe_failures(rehearsal, name)
    assert not failures, f"{name}:\n" + "\n".join(failures) + "\n" + rehearsal.running[name].output()[-2000:]


def listens_on(rehearsal: Rehearsal, name: str, variable: str) -> None:
    """Workload ``name`` listens on the port its environment's ``variable`` names (Cloud Run's ``$PORT``).

    In the rehearsal that is the free host port serving the container port the platform
    puts in ``variable``; the app reaches it only through a variable of the graph that
    carries that same container port, so this fails when the app is told another port.
    """
    port = int(rehearsal.launches[name].env[variable])
    listening = rehearsal.running[name].listening_ports()
    assert port in listening, f"{name}: ${variable} is {port}, but it listens on {sorted(listening)}"


def liveness_catches_a_hang(rehearsal: Rehearsal, name: str) -> None:
    """While workload ``name`` hangs its liveness probes fail; once it runs on they pass again.

    The container's main process is stopped (SIGSTOP: every thread, as a deadlock would),
    so it makes no progress and its heartbeat (``SKYFERRY_HEARTBEAT_FILE``, in the
    container's own ``/tmp``) ages: it is set an hour back meanwhile, which is what waiting
    past the probe's limit would do.  An HTTP probe gets no answer from a stopped process;
    an exec probe (``skyferry alive``) sees the stale heartbeat.
    """
    running = rehearsal.running[name]
    liveness = [p for p in running.workload.probes if p.purpose in {"liveness", "health"}]
    assert liveness, f"{name}: no liveness probe, so a hung worker would go on unnoticed"
    heartbeat = rehearsal.workload_env(name)["SKYFERRY_HEARTBEAT_FILE"]
    age = "import os, sys, time; t = time.time() - 3600; os.utime(sys.argv[1], (t, t))"
    with running.hung():
        aged = rehearsal.run_as(name, ["python", "-c", age, heartbeat], timeout=60)
        assert aged.returncode == 0, f"{name}: could not age {heartbeat}: {aged.stdout}{aged.stderr}"
        during = [probe_once(running, probe, timeout=3) for probe in liveness]
    passed = [f"{r.probe.describe()}: {r.detail}" for r in during if r.ok]
    assert not passed, f"{name}: hung, and still passes:\n" + "\n".join(passed)
    after = [wait_for_probe(running, probe, STARTUP_SECONDS) for probe in liveness]
    failed = [f"{r.probe.describe()}: {r.detail}" for r in after if not r.ok]
    assert not failed, f"{name}: running again, and still fails:\n" + "\n".join(failed)


def keeps_running(rehearsal: Rehearsal, name: str) -> None:
    """Workload ``name``'s main process is up (a platform restarts or fails a service that exits)."""
    running = rehearsal.running[name]
    assert stays_up(running), f"{name} exited with {running.returncode()}:\n{running.output()[-3000:]}"


def end_to_end(rehearsal: Rehearsal) -> None:
    """A transfer through the API is carried out by the worker and shown by every read model."""
    outcome = rehearsal.drive_once()
    assert outcome.ok, outcome.error
    result = outcome.value
    assert result.transfer_status == "completed"
    assert sorted(result.balances.values()) == ["30.00", "70.00"]
    assert result.history >= 3, "history read model: the deposit and the transfer's debit are missing"
    assert result.daily_totals, "daily_totals read model: nothing for today"
    assert result.daily_totals[0]["transferred"] == "30.00"


def broker_fed_end_to_end(rehearsal: Rehearsal, worker: str) -> None:
    """Switched to broker-fed read models, the worker carries a transfer through the stack's broker."""
    outcome = rehearsal.broker_fed(worker)
    assert outcome.ok, outcome.error
    assert outcome.value.transfer_status == "completed"
    assert sorted(outcome.value.balances.values()) == ["30.00", "70.00"]


def export_then_import(rehearsal: Rehearsal, workload: str) -> dict[str, Any]:
    """``skyferry export`` to the stack's archive, then ``import`` from it, run as ``workload``.

    The import goes into the same store: every event is already there, so it must write
    nothing and skip them all (an import is idempotent).  Returns both reports.
    """
    assert rehearsal.drive_once().ok, "the end-to-end run failed: nothing to export"
    env = rehearsal.workload_env(workload)
    store, archive = env["SKYFERRY_STORE_URL"], env["SKYFERRY_ARCHIVE_URL"]
    exported = rehearsal.run_as(workload, ["skyferry", "export", "--from", store, "--to", archive, "--json"])
    assert exported.returncode == 0, f"export as {workload} failed:\n{exported.stdout}\n{exported.stderr}"
    export_report = json.loads(exported.stdout.strip().splitlines()[-1])
    assert export_report["events"] > 0
    imported = rehearsal.run_as(workload, ["skyferry", "import", "--from", archive, "--to", store, "--json"])
    assert imported.returncode == 0, f"import as {workload} failed:\n{imported.stdout}\n{imported.stderr}"
    import_report = json.loads(imported.stdout.strip().splitlines()[-1])
    assert import_report["events"] == export_report["events"]
    assert import_report["written"] == 0
    assert import_report["skipped"] == export_report["events"]
    return {"export": export_report, "import": import_report}


def app_consumer_groups() -> set[str]:
    """The consumer groups the app's worker subscribes in broker-fed mode (the process manager and every projection)."""
    from skyferry.ledger.process import TransferProcess
    from skyferry.ledger.projections import ledger_projections

    return {TransferProcess.name, *(p.name for p in ledger_projections())}


def api_token_is_optional_or_refused(target: str, references: Any) -> None:
    """Without ``skyferry:apiToken``, the stack either refuses the config naming the key, or every
    workload still starts: each secret it references has a value, and the API gets a token.

    ``references(deployment)`` returns ``{workload: (secret env names without a value, whether it serves the API)}``.
    """
    from providers.base import StackConfigError

    try:
        variant = deploy_variant(target, {"skyferry:apiToken": None})
    except StackConfigError as e:
        refused = e
    else:
        refused = None
    if refused is not None:
        assert refused.key == "skyferry:apiToken", refused
        return
    for name, (unfilled, serves_api) in references(variant).items():
        assert not unfilled, f"{name}: {sorted(unfilled)} reference a secret that has no value without an apiToken"
        assert not serves_api, f"{name}: serves the API, which refuses to start without SKYFERRY_API_TOKEN"


def deploy_variant(target: str, overrides: dict[str, Any]) -> Deployment:
    """The example stack of ``target`` with ``overrides`` (the program's own errors propagate)."""
    from tests.rehearsal.stack import deploy

    return deploy(target, overrides=overrides)
