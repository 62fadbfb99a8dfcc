"""The containers' ``SKYFERRY_*`` environment: one builder (``providers/environment.py``), and the chart agrees.

The cloud targets render what :func:`providers.environment.api_environment` and
:func:`providers.environment.worker_environment` build; the Helm chart sets its variables in
its templates, so the chart is rendered here and its variables checked against the builder:
every one is a setting the builder knows, and every one the builder requires is there.
"""

from __future__ import annotations

from typing import Any

import pytest

from providers.environment import (
    LISTEN_HOST,
    PLATFORM_SETTINGS,
    WORKER_HEARTBEAT_FILE,
    AppUrls,
    api_environment,
    variable,
    worker_environment,
)
from skyferry.settings import Settings, load_settings
from tests.infra.test_chart import CHART, docs_of

URLS = AppUrls(store="postgresql://h/db", broker="nats://h:4222/S", archive="file:///var/lib/skyferry/archive")


def test_every_variable_is_a_settings_field() -> None:
    for field in PLATFORM_SETTINGS:
        assert variable(field) == f"SKYFERRY_{field.upper()}"
    with pytest.raises(KeyError, match="no field"):
        variable("stor_url")
    known = {variable(f) for f in PLATFORM_SETTINGS}
    for env in (api_environment(URLS, port=8000), worker_environment(URLS, health_port=8080)):
        assert set(env.names()) <= known


def test_the_settings_model_reads_what_the_builder_sets(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each environment, given to the app, is read back as the settings it means."""
    for key in [k for k in Settings.model_fields]:
        monkeypatch.delenv(variable(key), raising=False)
    api = api_environment(URLS, port=8123)
    for name, value in {**api.urls, **api.process}.items():
        monkeypatch.setenv(name, value)
    assert api.secret is not None
    monkeypatch.setenv(api.secret, "t" * 16)
    settings = load_settings()
    assert (settings.store_url, settings.broker_url, settings.archive_url) == (URLS.store, URLS.broker, URLS.archive)
    assert (settings.host, settings.port, settings.require_token()) == (LISTEN_HOST, 8123, "t" * 16)
    worker = worker_environment(URLS, health_port=8080)
    assert worker.secret is None
    for name, value in worker.process.items():
        monkeypatch.setenv(name, value)
    settings = load_settings()
    assert (settings.heartbeat_file, settings.health_port) == (WORKER_HEARTBEAT_FILE, 8080)


def _chart_env(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    """The ``SKYFERRY_*`` variables of a workload's container: its ``env`` and its ConfigMap's."""
    workload = next(d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name)
    container = workload["spec"]["template"]["spec"]["containers"][0]
    configmaps = {d["metadata"]["name"]: d.get("data", {}) for d in docs if d["kind"] == "ConfigMap"}
    env: dict[str, Any] = {}
    for source in container.get("envFrom", []):
        env.update(configmaps[source["configMapRef"]["name"]])
    for item in container.get("env", []):
        env[item["name"]] = item.get("value", item.get("valueFrom"))
    return {k: v for k, v in env.items() if k.startswith("SKYFERRY_")}


@pytest.mark.parametrize("values", ["on-prem-values.yaml", "external-values.yaml", "migration-values.yaml"])
def test_the_chart_sets_the_builders_variables(values: str) -> None:
    docs = docs_of(CHART / "ci" / values)
    known = {variable(f) for f in PLATFORM_SETTINGS}
    api = _chart_env(docs, "Deployment", "sf-skyferry-api")
    worker = _chart_env(docs, "Deployment", "sf-skyferry-worker")
    # every variable the chart sets is a setting the builder knows ...
    for workload, env in (("api", api), ("worker", worker)):
        assert set(env) <= known, f"{workload}: {sorted(set(env) - known)} are not settings the builder sets"
    # ... and every variable the builder requires is set, with the builder's fixed values
    required_api = api_environment(URLS, port=8000)
    required_worker = worker_environment(URLS)
    assert set(required_api.names()) <= set(api), sorted(set(required_api.names()) - set(api))
    assert set(required_worker.names()) <= set(worker), sorted(set(required_worker.names()) - set(worker))
    assert api[variable("host")] == LISTEN_HOST
    assert worker[variable("heartbeat_file")] == WORKER_HEARTBEAT_FILE
    assert required_api.secret is not None
    assert "secretKeyRef" in api[required_api.secret], "the token comes from the Secret"
    assert required_api.secret not in worker, "the worker never sees the token"
    for job in (d for d in docs if d["kind"] == "Job"):
        env = _chart_env(docs, "Job", job["metadata"]["name"])
        assert set(env) <= known, sorted(set(env) - known)
        assert required_api.secret not in env, "a migration never sees the token"
