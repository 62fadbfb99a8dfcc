"""The built image, run as the chart, ECS, Container Apps and Cloud Run run it.

Every container runs as ``tests/services/container.py`` starts it: uid 10001, a read-only root
filesystem with a tmpfs ``/tmp``, all capabilities dropped, no-new-privileges, host networking
with the app bound to 127.0.0.1.  The store is the machine's PostgreSQL (a fresh schema per
test), reached over loopback as a platform's app reaches its database.  What only the
Dockerfile's text can show stays in ``tests/infra/test_dockerfile.py``.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.services import free_port, owns_port, postgres
from tests.services.container import Container, image_config, run_container, run_once

TOKEN = "image-test-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
EUR = {"currency": "EUR"}
STOP_WITHIN = 10.0
"""Seconds between SIGTERM and SIGKILL on Cloud Run (ECS, Container Apps and Kubernetes give 30)."""
HEARTBEAT = "/tmp/skyferry-worker.heartbeat"
"""Where the chart's worker keeps its heartbeat (``SKYFERRY_HEARTBEAT_FILE``)."""
EXTRAS = Path(__file__).resolve().parents[2] / "app" / "image-extras.sh"
EXTRA_MODULES = {
    "postgres": "psycopg",
    "nats": "nats",
    "aws": "boto3",
    "azure": "azure.cosmos",
    "gcp": "google.cloud.firestore",
}
"""One module each extra of pyproject.toml installs."""


def app_env(store: str, **more: str) -> dict[str, str]:
    """The environment a platform gives the app: store, token, the address to bind."""
    return {"SKYFERRY_STORE_URL": store, "SKYFERRY_API_TOKEN": TOKEN, "SKYFERRY_HOST": "127.0.0.1", **more}


def skyferry_on_host(*args: str) -> subprocess.CompletedProcess[str]:
    """The work tree's ``skyferry`` (outside the image), to check what a container wrote."""
    command = str(Path(sys.executable).parent / "skyferry")
    return subprocess.run([command, *args], capture_output=True, text=True, timeout=300, check=False)


def listening_addresses(port: int) -> set[str]:
    """The local addresses (hex, as in /proc/net/tcp*) with a socket listening on ``port``."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            address, _, hex_port = fields[1].rpartition(":")
            if int(hex_port, 16) == port and fields[3] == "0A":
                found.add(address)
    return found


def stop_timed(container: Container) -> tuple[int, float]:
    """SIGTERM the container (SIGKILL after :data:`STOP_WITHIN` s); its exit code and the seconds it took."""
    started = time.monotonic()
    code = container.stop(timeout=STOP_WITHIN)
    return code, time.monotonic() - started


@dataclass
class Api:
    """A running ``serve`` container and its URL."""

    container: Container
    url: str
    port: int

    def post(self, path: str, body: dict[str, object]) -> httpx.Response:
        return httpx.post(self.url + path, json=body, headers=AUTH, timeout=30)

    def get(self, path: str, **kwargs: object) -> httpx.Response:
        return httpx.get(self.url + path, timeout=30, **kwargs)  # type: ignore[arg-type]

    def open_and_deposit(self, account: str, amount: str) -> None:
        opened = self.post("/accounts", {"account_id": account, "owner": "Ada", **EUR})
        assert opened.status_code == 201, opened.text
        deposited = self.post(f"/accounts/{account}/deposits", {"amount": amount, **EUR})
        assert deposited.status_code == 201, deposited.text


@pytest.fixture
def store() -> Iterator[str]:
    """A PostgreSQL URL with a schema of its own."""
    with postgres.fresh_schema() as url:
        yield url


@pytest.fixture
def api(image: str, store: str) -> Iterator[Api]:
    """``serve --no-worker`` on a free loopback port (a separate worker projects, as on every platform)."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with run_container(image, ["serve", "--no-worker"], env=app_env(store, SKYFERRY_PORT=str(port))) as container:
        deadline = time.monotonic() + 60
        while True:
            assert container.running(), f"serve exited:\n{container.logs()}"
            try:
                if httpx.get(url + "/healthz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, f"serve did not answer within 60 s:\n{container.logs()}"
            time.sleep(0.2)
        assert owns_port(container.pid(), port), "another process than the container answers on its port"
        yield Api(container, url, port)


def test_the_image_is_configured_as_the_platforms_expect(image: str) -> None:
    config = image_config(image)
    assert config["User"] == "10001:10001"
    assert config["Entrypoint"] == ["skyferry"]
    assert config["Cmd"] == ["serve"]
    assert config["WorkingDir"] == "/var/lib/skyferry"
    assert "8000/tcp" in config["ExposedPorts"]
    env = dict(item.split("=", 1) for item in config["Env"])
    assert env["HOME"] == "/tmp"
    assert env["PYTHONDONTWRITEBYTECODE"] == "1"
    assert env["PATH"].startswith("/opt/skyferry/bin:")
    assert env["SKYFERRY_ARCHIVE_URL"] == "file:///var/lib/skyferry/archive"


PROBE = """
import json, os
def writable(path):
    try:
        with open(os.path.join(path, ".probe"), "w"):
            pass
    except OSError:
        return False
    os.remove(os.path.join(path, ".probe"))
    return True
status = dict(line.split(":\\t", 1) for line in open("/proc/self/status").read().splitlines() if ":\\t" in line)
print(json.dumps({
    "uid": os.getuid(), "gid": os.getgid(), "cap_eff": status["CapEff"].strip(),
    "cap_bnd": status["CapBnd"].strip(), "no_new_privs": status["NoNewPrivs"].strip(),
    "writable": [p for p in ("/", "/opt/skyferry", "/var/lib/skyferry", "/etc", "/tmp") if writable(p)],
}))
"""


def test_a_container_runs_unprivileged_on_a_read_only_root(image: str) -> None:
    # no --user: the image's own USER must already be the platforms' runAsUser
    result = run_once(image, ["-c", PROBE], entrypoint="python", user=None)
    assert result.returncode == 0, result.output
    seen = json.loads(result.output.strip().splitlines()[-1])
    assert (seen["uid"], seen["gid"]) == (10001, 10001)
    assert int(seen["cap_eff"], 16) == 0
    assert int(seen["cap_bnd"], 16) == 0
    assert seen["no_new_privs"] == "1"
    assert seen["writable"] == ["/tmp"]


def test_serve_answers_its_probes_refuses_strangers_and_stops_on_sigterm(
    api: Api, summary: Callable[[str], None]
) -> None:
    assert api.get("/healthz").status_code == 200
    ready = api.get("/readyz")
    assert ready.status_code == 200, ready.text
    assert api.get("/accounts/nobody").status_code == 401
    assert api.get("/accounts/nobody", headers={"Authorization": "Bearer not-the-token-at-all"}).status_code == 401
    assert api.get("/accounts/nobody", headers=AUTH).status_code == 404
    assert listening_addresses(api.port) == {"0100007F"}, "serve must listen on 127.0.0.1 only"
    code, seconds = stop_timed(api.container)
    summary(f"serve: exit {code}, {seconds:.1f} s after SIGTERM (limit {STOP_WITHIN:g} s)")
    assert code == 0, f"serve exited with {code} after SIGTERM:\n{api.container.logs()}"
    assert seconds < STOP_WITHIN


def test_a_worker_projects_a_deposit_passes_its_liveness_probe_and_stops_on_sigterm(
    image: str, store: str, api: Api, summary: Callable[[str], None]
) -> None:
    api.open_and_deposit("ada", "10.50")
    assert api.get("/accounts/ada/balance", headers=AUTH).status_code == 404, "projected without a worker"
    env = app_env(store, SKYFERRY_HEARTBEAT_FILE=HEARTBEAT, SKYFERRY_WORKER_INTERVAL="0.2")
    with run_container(image, ["worker"], env=env) as worker:
        deadline = time.monotonic() + 60
        while (balance := api.get("/accounts/ada/balance", headers=AUTH)).status_code != 200:
            assert worker.running(), f"the worker exited:\n{worker.logs()}"
            assert time.monotonic() < deadline, f"not projected within 60 s:\n{worker.logs()}"
            time.sleep(0.2)
        assert balance.json()["balance"] == "10.50"
        probe = worker.exec("skyferry", "alive", "--max-age", "60")  # the chart's livenessProbe
        assert probe.returncode == 0, probe.stdout + probe.stderr
        assert probe.stdout.startswith("alive:")
        code, seconds = stop_timed(worker)
        summary(f"worker: exit {code}, {seconds:.1f} s after SIGTERM (limit {STOP_WITHIN:g} s)")
        assert code == 0, f"the worker exited with {code} after SIGTERM:\n{worker.logs()}"
        assert seconds < STOP_WITHIN


def test_worker_once_projects_what_is_there_and_exits(image: str, store: str, api: Api) -> None:
    api.open_and_deposit("bob", "7.25")
    result = run_once(image, ["worker", "--once"], env=app_env(store), timeout=120)
    assert result.returncode == 0, result.output
    handled = re.search(r"caught up \((\d+) event handlings", result.output)
    assert handled, result.output
    assert int(handled.group(1)) >= 2  # opened, deposited
    balance = api.get("/accounts/bob/balance", headers=AUTH)
    assert balance.status_code == 200, balance.text
    assert balance.json()["balance"] == "7.25"


def test_export_and_migrate_write_into_a_mounted_volume(image: str, store: str, api: Api, tmp_path: Path) -> None:
    api.open_and_deposit("cy", "3.00")
    data = tmp_path / "data"
    data.mkdir()
    os.chown(data, 10001, 10001)  # as a platform's volume is made writable for runAsUser (fsGroup)
    exported = run_once(image, ["export", "--from", store, "--to", "/data/export"], mounts={data: "/data"})
    assert exported.returncode == 0, exported.output
    checked = skyferry_on_host("verify", "--source", str(data / "export"), "--target", store)
    assert checked.returncode == 0, checked.stdout + checked.stderr

    migrated = run_once(
        image, ["migrate", "--from", store, "--to", "sqlite:////data/copy.db", "--json"], mounts={data: "/data"}
    )
    assert migrated.returncode == 0, migrated.output
    assert '"command":"migrate"' in migrated.output.replace(" ", "")
    checked = skyferry_on_host("verify", "--source", store, "--target", f"sqlite:///{data / 'copy.db'}")
    assert checked.returncode == 0, checked.stdout + checked.stderr


HOLDS = """
import importlib.util, json, shutil, sys
def present(name):
    try:
        return importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:
        return False
names = json.loads(sys.argv[1])
print(json.dumps({
    "modules": [n for n in names["modules"] if present(n)],
    "programs": [n for n in names["programs"] if shutil.which(n) or shutil.which(n, path="/usr/bin:/usr/local/bin")],
}))
"""
NOT_IN_THE_IMAGE = {
    "modules": ["pulumi", "pulumi_aws", "providers", "pytest", "_pytest", "ruff", "mypy", "hypothesis", "moto"],
    "programs": ["gcc", "cc", "c++", "g++", "clang", "make", "ld", "uv", "pulumi", "pytest", "ruff", "mypy"],
}


def test_the_image_holds_the_targets_sdks_and_no_pulumi_compiler_or_test_tools(image: str, image_target: str) -> None:
    words = subprocess.run(["sh", str(EXTRAS), image_target], capture_output=True, text=True, check=True).stdout.split()
    extras = (
        set(EXTRA_MODULES) if "--all-extras" in words else {words[i + 1] for i, w in enumerate(words) if w == "--extra"}
    )
    asked = {
        "modules": [*NOT_IN_THE_IMAGE["modules"], *EXTRA_MODULES.values()],
        "programs": NOT_IN_THE_IMAGE["programs"],
    }
    result = run_once(image, ["-c", HOLDS, json.dumps(asked)], entrypoint="python")
    assert result.returncode == 0, result.output
    held = json.loads(result.output.strip().splitlines()[-1])
    assert sorted(held["modules"]) == sorted(EXTRA_MODULES[extra] for extra in extras)
    assert held["programs"] == []


def test_plan_is_refused_cleanly_in_the_image(image: str) -> None:
    result = run_once(image, ["plan", "--stack", "kubernetes"])
    assert result.returncode == 2, result.output
    assert "infra" in result.output


SOURCES = """
import hashlib, json, pathlib, skyferry
root = pathlib.Path(skyferry.__file__).parent
print(json.dumps({str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in root.rglob("*.py")}))
"""


def test_the_image_runs_this_checkouts_code(image: str) -> None:
    """The image's ``skyferry`` package is ``app/skyferry`` of this checkout, file for file: no
    earlier build of the app is taken from a cache."""
    import hashlib

    app = EXTRAS.parent / "skyferry"
    here = {str(p.relative_to(app)): hashlib.sha256(p.read_bytes()).hexdigest() for p in app.rglob("*.py")}
    result = run_once(image, ["-c", SOURCES], entrypoint="python")
    assert result.returncode == 0, result.output
    shipped = json.loads(result.output.strip().splitlines()[-1])
    differ = sorted(name for name in here.keys() | shipped.keys() if here.get(name) != shipped.get(name))
    assert not differ, f"the image's skyferry differs from the checkout's in {differ}"
