"""Google's Firestore and Pub/Sub emulators from the Cloud SDK's ``platform/`` folder.

They come with some machine images only (no package registry ships them), so a machine
without them skips the Google tests with the reason (``may_skip_in_ci=True``).  Each
emulator is started once per session, straight from its jar with the machine's Java, on
a free loopback port, checked to own that port, and stopped by PID at session end.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path

from tests import services

_lock = threading.Lock()
_hosts: dict[str, str] = {}
_failures: dict[str, str] = {}


def sdk_root() -> Path | None:
    """The Cloud SDK root: ``$SKYFERRY_GCLOUD_SDK_ROOT``, or found from ``gcloud`` on PATH."""
    configured = os.environ.get("SKYFERRY_GCLOUD_SDK_ROOT")
    if configured:
        return Path(configured)
    gcloud = shutil.which("gcloud")
    if gcloud is None:
        return None
    root = Path(gcloud).resolve().parent.parent
    if (root / "platform").is_dir():
        return root
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out = subprocess.run(
            [gcloud, "info", "--format=value(installation.sdk_root)"],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        ).stdout.strip()
        if out:
            return Path(out)
    return None


def command(name: str, port: int) -> list[str]:
    """The command line starting emulator ``name`` on ``port``; ``LookupError`` if it is absent."""
    java = shutil.which("java")
    if java is None:
        raise LookupError("java is not installed (the Google emulators need Java 11+)")
    root = sdk_root()
    if root is None:
        raise LookupError("the Google Cloud SDK (gcloud) is not installed")
    if name == "firestore":
        jar = root / "platform/cloud-firestore-emulator/cloud-firestore-emulator.jar"
        if not jar.is_file():
            raise LookupError(f"the Cloud SDK has no Firestore emulator ({jar.name} not under platform/)")
        return [
            java,
            "-Duser.language=en",
            "-cp",
            str(jar),
            "com.google.cloud.datastore.emulator.firestore.CloudFirestore",
            "start",
            "--host=127.0.0.1",
            f"--port={port}",
        ]
    jars = sorted((root / "platform/pubsub-emulator/lib").glob("cloud-pubsub-emulator-*-all.jar"))
    if not jars:
        raise LookupError("the Cloud SDK has no Pub/Sub emulator (platform/pubsub-emulator/lib)")
    return [java, "-jar", str(jars[-1]), "--host=127.0.0.1", f"--port={port}"]


def _stop(manager: contextlib.AbstractContextManager[object]) -> None:
    manager.__exit__(None, None, None)


def host(name: str) -> str:
    """``127.0.0.1:PORT`` of the session's ``name`` emulator (``firestore`` or ``pubsub``)."""
    with _lock:
        if name in _hosts:
            return _hosts[name]
        if name in _failures:
            services.unavailable(_failures[name], may_skip_in_ci=True)
        try:
            port = services.free_port()
            args = command(name, port)
        except LookupError as e:
            _failures[name] = f"Google {name} emulator unavailable: {e}"
            services.unavailable(_failures[name], may_skip_in_ci=True)
        log = os.path.join(tempfile.gettempdir(), f"skyferry-{name}-emulator-{port}.log")
        manager = services.started(args, port, timeout=120, log=log)
        try:
            manager.__enter__()
        except RuntimeError as e:
            _failures[name] = f"Google {name} emulator did not start: {e} (log: {log})"
            services.unavailable(_failures[name], may_skip_in_ci=True)
        services.on_session_end(lambda: _stop(manager))
        _hosts[name] = f"127.0.0.1:{port}"
        return _hosts[name]
