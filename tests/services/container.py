"""Start the built image as a platform starts it: the image's tests and the deployment rehearsal.

::

    image = ensure_image("aws")          # the image ID, or None when no engine is to be had
    with run_container(image, ["serve"], env={"SKYFERRY_API_TOKEN": token, ...}) as api:
        ...                              # api.id, api.logs(), api.exec("skyferry", "alive")
        code = api.stop()                # SIGTERM, SIGKILL after 10 s; the exit code
    result = run_once(image, ["migrate", "--from", url, "--to", "sqlite:////data/copy.db"],
                      mounts={tmp_path: "/data"})          # result.returncode, result.output

:func:`ensure_image` builds ``app/Dockerfile`` from this checkout with ``scripts/image.py``
(what ``make image`` runs; it never installs anything here), once per test session per target;
the engine's layer cache makes that a few seconds when ``make image`` ran before.  It returns the
image **ID**, not the tag, so a build from another checkout retagging ``skyferry:<target>``
meanwhile changes nothing for this session.

:func:`run_container` runs every container as the chart, ECS, Container Apps and Cloud Run do:
uid/gid 10001, read-only root filesystem with a writable ``/tmp`` (tmpfs), all capabilities
dropped, no privilege escalation (``no-new-privileges``), and host networking: the container
reaches the machine's PostgreSQL, NATS and emulators on 127.0.0.1, and its own ports are the
machine's (pass ``SKYFERRY_HOST=127.0.0.1`` and a free ``SKYFERRY_PORT``; the image's default
host is 0.0.0.0).  No bridge, NAT or firewall rule is made.  Environment values are handed to
the engine through its own environment (``--env NAME``), never on its command line.  A host
directory in ``mounts`` must be writable by uid 10001 (``os.chown(path, 10001, 10001)``).

Every container is stopped and removed by its ID: by :meth:`Container.stop` /
:meth:`Container.remove`, by leaving the ``with`` block, and in any case at the end of the
test session (:func:`tests.services.on_session_end`).
"""

from __future__ import annotations

import functools
import importlib.util
import json
import os
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType, TracebackType
from typing import Any

from tests.services import on_session_end


def _load_builder() -> ModuleType:
    """``scripts/image.py``, by its path (``scripts/`` is a folder of scripts, not a package)."""
    path = Path(__file__).resolve().parents[2] / "scripts" / "image.py"
    spec = importlib.util.spec_from_file_location("skyferry_image_builder", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


builder = _load_builder()
"""``scripts/image.py``: what ``make image`` runs (:func:`build`, :class:`ImageError`, ...)."""

USER = "10001:10001"
"""The image's user (``USER`` in app/Dockerfile, ``runAsUser`` in the chart)."""

PLATFORM_FLAGS = (
    "--network=host",
    "--read-only",
    "--tmpfs=/tmp:rw,nosuid,nodev,mode=1777",
    "--cap-drop=ALL",
    "--security-opt=no-new-privileges",
)
"""How every platform runs the image, beside ``--user``: the chart's securityContext, ECS's
``readonlyRootFilesystem`` and dropped capabilities, the sandboxes of Container Apps and Cloud Run."""

_built: dict[str, str] = {}


@functools.cache
def engine() -> builder.Engine | None:
    """The container engine of this machine (podman, or docker whose daemon answers), or None."""
    return builder.find_engine()


def ensure_image(target: str = "aws") -> str | None:
    """The ID of the image for ``target`` built from this checkout, or None when there is no engine.

    Builds once per session and target (``scripts/image.py``: local base images when no
    registry answers).  Raises ``builder.Unprepared`` when a local base is to be made but
    mmdebstrap is missing (only ``make image`` installs it), ``builder.ImageError`` when the
    build fails (its output in the message).
    """
    if engine() is None:
        return None
    if target not in _built:
        _, _built[target] = builder.build(target, quiet=True)
    return _built[target]


def image_size_mb(image: str) -> float:
    """The image's uncompressed size in MB."""
    return builder.size_mb(_engine(), image)


def image_config(image: str) -> dict[str, Any]:
    """The image's configuration (OCI ``config``: ``User``, ``Entrypoint``, ``Cmd``, ``Env``, ...)."""
    config: dict[str, Any] = json.loads(_engine().run("image", "inspect", "--format", "{{json .Config}}", image))
    return config


def _engine() -> builder.Engine:
    found = engine()
    if found is None:
        raise builder.NoEngine("no container engine on this machine")
    return found


@dataclass
class Container:
    """A started container, known by its ID; the methods run the engine's command line."""

    id: str
    engine: builder.Engine

    def _run(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self.engine.command(*args),
            env={**os.environ, **self.engine.env},
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def running(self) -> bool:
        """Whether the container is still running."""
        result = self._run("inspect", "--format", "{{.State.Running}}", self.id)
        return result.returncode == 0 and result.stdout.strip() == "true"

    def pid(self) -> int:
        """The host PID of the container's main process (0 once it stopped)."""
        return int(self._run("inspect", "--format", "{{.State.Pid}}", self.id).stdout.strip() or 0)

    def exit_code(self) -> int:
        """The exit code of the stopped container."""
        result = self._run("inspect", "--format", "{{.State.ExitCode}}", self.id)
        if result.returncode != 0:
            raise RuntimeError(f"cannot inspect container {self.id[:12]}: {result.stderr.strip()}")
        return int(result.stdout.strip())

    def wait(self, timeout: float) -> int:
        """Wait until the container exits; its exit code (``TimeoutError`` when it runs on)."""
        deadline = time.monotonic() + timeout
        while self.running():
            if time.monotonic() > deadline:
                raise TimeoutError(f"container {self.id[:12]} still runs after {timeout:g} s")
            time.sleep(0.1)
        return self.exit_code()

    def logs(self) -> str:
        """Everything the container wrote to stdout and stderr so far."""
        result = subprocess.run(
            self.engine.command("logs", self.id),
            env={**os.environ, **self.engine.env},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=60,
            check=False,
        )
        return result.stdout

    def exec(self, *argv: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` inside the running container (its user and environment), like an exec probe."""
        return self._run("exec", self.id, *argv, timeout=timeout)

    def stop(self, timeout: float = 10) -> int:
        """SIGTERM, then SIGKILL after ``timeout`` s (as the platforms stop a task); the exit code."""
        self._run("stop", f"--time={round(timeout)}", self.id, timeout=timeout + 60)
        return self.exit_code()

    def remove(self) -> None:
        """Remove the container (killing it if it still runs) and its anonymous volumes."""
        self._run("rm", "--force", "--volumes", self.id)

    def __enter__(self) -> Container:
        return self

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        """Stop (SIGTERM, SIGKILL after 10 s) and remove the container."""
        self._run("stop", "--time=10", self.id, timeout=70)
        self.remove()


def _mode(inside: str) -> str:
    return inside if inside.endswith((":ro", ":rw")) else f"{inside}:rw"


def run_container(
    image: str,
    command: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    mounts: Mapping[str | Path, str] | None = None,
    user: str | None = USER,
    entrypoint: str | None = None,
) -> Container:
    """Start ``image`` with ``command`` (the arguments after the ``skyferry`` entrypoint), detached.

    ``env``: the container's environment beside the image's ``ENV``.  ``mounts``: host
    directory → path in the container, read-write (``"/path:ro"``: read-only).  ``user``:
    ``uid:gid`` (default: the platforms' runAsUser; None: the image's own ``USER``).
    ``entrypoint``: another program than ``skyferry`` (e.g. ``python``).
    """
    eng = _engine()
    values = dict(env or {})
    args = ["run", "--detach", *([f"--user={user}"] if user else []), *PLATFORM_FLAGS]
    args += [f"--env={name}" for name in values]
    args += [f"--volume={Path(host).resolve()}:{_mode(inside)}" for host, inside in (mounts or {}).items()]
    if entrypoint is not None:
        args.append(f"--entrypoint={entrypoint}")
    result = subprocess.run(
        eng.command(*args, image, *command),
        env={**os.environ, **eng.env, **values},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(f"{eng.name} run {' '.join(command)} failed: {result.stderr.strip()[-2000:]}")
    container = Container(result.stdout.strip().splitlines()[-1], eng)
    on_session_end(container.remove)
    return container


@dataclass(frozen=True)
class Finished:
    """A container run to its end: exit code and output (stdout and stderr together)."""

    returncode: int
    output: str


def run_once(image: str, command: Sequence[str], *, timeout: float = 300, **options: Any) -> Finished:
    """Run ``command`` in a new container to its end (a job: ``migrate``, ``worker --once``); removed after.

    ``options``: those of :func:`run_container`; ``TimeoutError`` when it runs past ``timeout`` s.
    """
    with run_container(image, command, **options) as container:
        code = container.wait(timeout)
        return Finished(code, container.logs())
