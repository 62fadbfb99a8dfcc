"""app/Dockerfile: no container engine runs here, so the image is checked by its parts.

1. The Dockerfile itself: multi-stage, slim base, numeric non-root USER, entrypoint ``skyferry``,
   installs with ``--no-default-groups`` (no Pulumi, no dev tools) and only the target's extras.
2. The image's install, reproduced: ``uv sync --frozen --no-default-groups --no-editable`` with
   the extras ``app/image-extras.sh`` gives for the kubernetes target, into a fresh environment
   that is then made read-only (like the image's root filesystem).
3. The image's entrypoint commands run from that environment, from an empty working directory
   with HOME=/tmp-like dir: ``serve`` answers the chart's probes, ``worker`` runs until stopped,
   ``migrate --shard i/n`` completes, ``plan`` refuses cleanly (providers/ is not in the image).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import stat
import subprocess
import tomllib
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.infra.tools import ROOT
from tests.services import free_port, started, unavailable

DOCKERFILE = ROOT / "app" / "Dockerfile"
EXTRAS = ROOT / "app" / "image-extras.sh"
TARGETS = ("kubernetes", "aws", "azure", "gcp")


def extras_for(target: str) -> list[str]:
    result = subprocess.run(["sh", str(EXTRAS), target], capture_output=True, text=True, check=True)
    return result.stdout.split()


def final_stage(text: str) -> str:
    return text[text.rindex("\nFROM ") :]


def test_dockerfile_is_multi_stage_slim_and_non_root() -> None:
    text = DOCKERFILE.read_text()
    froms = re.findall(r"^FROM (\S+)(?: AS (\w+))?", text, re.MULTILINE)
    assert len(froms) >= 2
    # users build from the official slim Python image (`make image` may pass a local one)
    assert re.search(r"^ARG BASE_IMAGE=python:\$\{PYTHON_VERSION\}-slim-bookworm$", text, re.MULTILINE)
    assert all(image == "${BASE_IMAGE}" for image, stage in froms if stage != "uv")
    runtime = final_stage(text)
    users = re.findall(r"^USER (\S+)", runtime, re.MULTILINE)
    assert users, "the runtime stage sets no USER"
    uid = users[-1].split(":")[0]
    assert uid.isdigit()
    assert int(uid) >= 10000
    assert 'ENTRYPOINT ["skyferry"]' in runtime
    assert "COPY --from=build /opt/skyferry /opt/skyferry" in runtime
    assert "HOME=/tmp" in runtime
    assert "PYTHONDONTWRITEBYTECODE=1" in runtime
    # the runtime stage installs nothing: it only copies the built environment
    assert "pip install" not in runtime
    assert "uv sync" not in runtime


def test_install_has_no_pulumi_and_only_the_targets_extras() -> None:
    text = DOCKERFILE.read_text()
    syncs = re.findall(r"uv sync ([^\n\\]*)", text)
    assert len(syncs) == 2
    for args in syncs:
        assert "--frozen" in args
        assert "--no-default-groups" in args
        assert "--all-groups" not in args
        assert "--group" not in args
        assert '$(sh /usr/local/bin/image-extras "$TARGET")' in args
    declared = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"])
    for target in TARGETS:
        extras = extras_for(target)
        names = {extras[i + 1] for i, flag in enumerate(extras) if flag == "--extra"}
        assert names, target
        assert names <= declared, f"{target}: unknown extras {names - declared}"
    assert set(extras_for("kubernetes")) >= {"postgres", "nats"}
    assert "aws" not in extras_for("gcp")
    bad = subprocess.run(["sh", str(EXTRAS), "openstack"], capture_output=True, text=True, check=False)
    assert bad.returncode == 2
    assert "unknown target 'openstack'" in bad.stderr


@pytest.fixture(scope="module")
def image_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The image's /opt/skyferry, built the way the Dockerfile builds it, then made read-only."""
    uv = shutil.which("uv")
    if uv is None:
        unavailable("uv is not on PATH (make uv)")
    venv = tmp_path_factory.mktemp("image") / "opt-skyferry"
    env = {**os.environ, "UV_PROJECT_ENVIRONMENT": str(venv), "UV_COMPILE_BYTECODE": "1", "VIRTUAL_ENV": ""}
    args = [
        uv,
        "sync",
        "--frozen",
        "--offline",
        "--no-default-groups",
        "--no-editable",
        "--quiet",
        *extras_for("kubernetes"),
    ]
    result = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        unavailable(f"could not reproduce the image install offline from the uv cache: {result.stderr[-500:]}")
    for path in [venv, *venv.rglob("*")]:
        if not path.is_symlink():
            path.chmod(path.stat().st_mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))
    yield venv
    for path in [venv, *venv.rglob("*")]:
        if not path.is_symlink():
            path.chmod(path.stat().st_mode | stat.S_IWUSR)


def image_environ(venv: Path, home: Path, **extra: str) -> dict[str, str]:
    """The image's ENV: PATH to /opt/skyferry/bin first, HOME on a writable dir, no bytecode writes."""
    return {
        "PATH": f"{venv / 'bin'}:/usr/bin:/bin",
        "HOME": str(home),
        "PYTHONDONTWRITEBYTECODE": "1",
        "PYTHONUNBUFFERED": "1",
        "SKYFERRY_HOST": "127.0.0.1",
        "SKYFERRY_ARCHIVE_URL": f"file://{home / 'archive'}",
        **extra,
    }


def test_the_image_environment_has_the_app_but_no_pulumi(image_env: Path, tmp_path: Path) -> None:
    probe = "import importlib.util as u; print(*(u.find_spec(name) is None for name in ('pulumi', 'providers', 'app')))"
    python = image_env / "bin" / "python"
    result = subprocess.run([str(python), "-c", probe], cwd=tmp_path, capture_output=True, text=True, check=True)
    assert result.stdout.split() == ["True", "True", "True"], "the image holds only names skyferry owns"
    origin = subprocess.run(
        [str(python), "-c", "import skyferry; print(skyferry.__file__)"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert origin.startswith(str(image_env)), "the app must be installed into the image's environment"


def test_serve_worker_and_migrate_run_from_the_image_environment(image_env: Path, tmp_path: Path) -> None:
    workdir = tmp_path / "var-lib-skyferry"
    workdir.mkdir()
    store = f"sqlite:///{tmp_path / 'store.db'}"
    port = free_port()
    env = image_environ(
        image_env, tmp_path, SKYFERRY_STORE_URL=store, SKYFERRY_API_TOKEN="image-test-token", SKYFERRY_PORT=str(port)
    )
    skyferry = str(image_env / "bin" / "skyferry")
    worker = subprocess.Popen(
        [skyferry, "worker"],
        cwd=workdir,
        env=env,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        with started([skyferry, "serve"], port, env=env, log=str(tmp_path / "serve.log")):
            # the chart's probe paths (values.yaml api.livenessPath / api.readinessPath)
            assert httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=10).status_code == 200
            assert httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=10).status_code == 200
        assert worker.poll() is None, "the worker stopped on its own"
    finally:
        worker.send_signal(signal.SIGTERM)
        try:
            worker.wait(30)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait()
    stderr = worker.stderr.read().decode() if worker.stderr else ""
    assert worker.returncode in (0, -signal.SIGTERM, 128 + signal.SIGTERM), stderr
    assert list(workdir.iterdir()) == [], "the app wrote into its working directory"

    target = f"sqlite:///{tmp_path / 'copy.db'}"
    for shard in ("0/2", "1/2"):
        result = subprocess.run(
            [skyferry, "migrate", "--from", store, "--to", target, "--shard", shard, "--json"],
            cwd=workdir,
            env=env,
            capture_output=True,
            text=True,
            check=False,
        )
        assert result.returncode == 0, result.stderr
        assert '"command":"migrate"' in result.stdout.replace(" ", "")


def test_plan_is_refused_cleanly_in_the_image(image_env: Path, tmp_path: Path) -> None:
    result = subprocess.run(
        [str(image_env / "bin" / "skyferry"), "plan", "--stack", "kubernetes"],
        cwd=tmp_path,
        env=image_environ(image_env, tmp_path),
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 2
    assert "infra" in result.stderr
