#!/usr/bin/env python3
"""Build the skyferry image with a real container engine: ``make image TARGET=aws``.

Standard library only (it runs before ``make deps``); ``tests/services/container.py`` loads
it, so the tests build exactly what ``make image`` builds.  Three steps:

1. **An engine** (:func:`find_engine`): ``$SKYFERRY_ENGINE`` (``podman`` or ``docker``), else
   podman when it is installed, else docker when its daemon answers.  With ``--install``
   (what ``make image`` passes), Debian's podman is installed with apt-get when there is none.
   Podman runs without a daemon, so nothing is left running; the image is built and run with
   host networking only, so no bridge, NAT or firewall rule is ever made.
2. **The images the Dockerfile starts from** (:func:`base_images`): the registries' own
   (``python:3.12-slim-bookworm``, ``ghcr.io/astral-sh/uv:0.8``) when the registries answer;
   else two made here and passed as the ``BASE_IMAGE`` / ``UV_IMAGE`` build arguments:

   - ``localhost/skyferry-base:bookworm-<key>``: a minimal Debian bookworm root filesystem with
     python3 (3.11), made by ``mmdebstrap`` from the machine's own Debian mirror, with the
     machine's extra CA certificates (``/usr/local/share/ca-certificates``) added while it is
     made, so that ``uv sync`` in the build trusts a TLS-inspecting proxy.  The tarball is cached
     in :data:`CACHE` (``~/.cache/skyferry/image``): outside the checkout, so ``make clean`` and
     a clean clone (CI) on the same machine reuse it, as they reuse uv's own cache beside it.
     ``<key>`` hashes the recipe, the mirror and the certificates: change one, get a new one.
   - ``localhost/skyferry-uv:<version>``: the ``uv`` binary of PyPI's ``uv`` wheel (the version
     the Dockerfile's ``UV_IMAGE`` names), alone in the image, as ``/uv``.

3. **The build** (:func:`build`): ``<engine> build -f app/Dockerfile --network host`` from the
   repository root, tagged ``skyferry:<target>``; prints the image ID and size.  Dangling
   skyferry images over a day old are pruned (the engine's layer cache stays).

Environment: ``SKYFERRY_ENGINE`` (podman|docker), ``SKYFERRY_IMAGE_BASE`` (auto|registry|local),
``SKYFERRY_IMAGE_CACHE`` (the cache directory).  See docs/image.md.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import importlib.util
import io
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.error
import urllib.request
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "app" / "Dockerfile"
TARGETS = ("kubernetes", "aws", "azure", "gcp", "all")
CACHE = Path(
    os.environ.get("SKYFERRY_IMAGE_CACHE")
    or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "skyferry" / "image"
)

SUITE = "bookworm"
BASE_PYTHON = "3.11"
"""The python3 of Debian bookworm: the ``PYTHON_VERSION`` build argument with the local base."""
BASE_PACKAGES = ("python3", "ca-certificates", "netbase", "tzdata")
BASE_HOOKS = ("/usr/share/mmdebstrap/hooks/merged-usr",)
"""Merged /usr made by mmdebstrap's own hook, as Debian's images have it, rather than by the usrmerge
package, which would pull in perl (50 MB)."""
BASE_DPKG_OPTIONS = (
    "path-exclude=/usr/share/doc/*",
    "path-include=/usr/share/doc/*/copyright",
    "path-exclude=/usr/share/man/*",
    "path-exclude=/usr/share/info/*",
    "path-exclude=/usr/share/locale/*",
    "path-exclude=/usr/share/lintian/*",
)
BASE_ENV = (
    "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "LANG=C.UTF-8",
    "SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt",
)
HOST_CAS = Path("/usr/local/share/ca-certificates")
REGISTRIES = ("https://registry-1.docker.io/v2/", "https://ghcr.io/v2/")
LABEL = "org.opencontainers.image.title=skyferry"


class ImageError(RuntimeError):
    """The image cannot be built here; the message says what is missing and what to do."""


class NoEngine(ImageError):
    """No container engine can be had on this machine (none installed, none installable)."""


class Unprepared(ImageError):
    """A tool the local base images need is missing (mmdebstrap), and apt-get may not install it here."""


def log(message: str) -> None:
    """One progress line on stderr (stdout carries only the image ID)."""
    print(f"image: {message}", file=sys.stderr, flush=True)


def run(args: Sequence[str], *, env: Mapping[str, str] | None = None, quiet: bool = False) -> str:
    """Run ``args``; return its stdout.  Its stderr streams through unless ``quiet``; failing raises."""
    result = subprocess.run(
        list(args),
        env=None if env is None else {**os.environ, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE if quiet else None,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        detail = f": {result.stderr.strip()[-2000:]}" if quiet and result.stderr else ""
        raise ImageError(f"`{' '.join(args[:3])} ...` failed with exit {result.returncode}{detail}")
    return result.stdout


# --- 1. The engine -------------------------------------------------------------------------


@dataclass(frozen=True)
class Engine:
    """A container engine's command line: ``podman`` or ``docker`` (same subcommands and flags)."""

    name: str
    binary: str
    env: dict[str, str] = field(default_factory=dict)
    """Environment the engine's commands need (podman: its containers.conf)."""

    def command(self, *args: str) -> list[str]:
        """The command line of ``<engine> args``."""
        return [self.binary, *args]

    def run(self, *args: str, quiet: bool = True) -> str:
        """Run ``<engine> args``; return stdout; :class:`ImageError` when it fails."""
        return run(self.command(*args), env=self.env, quiet=quiet)

    def image_exists(self, name: str) -> bool:
        """Whether the engine holds an image called ``name`` (never pulls)."""
        probe = subprocess.run(
            self.command("image", "inspect", "--format", "{{.Id}}", name),
            env={**os.environ, **self.env},
            capture_output=True,
            check=False,
        )
        return probe.returncode == 0


def podman_conf() -> Path:
    """A containers.conf for podman on this machine (written to :data:`CACHE`; nothing committed).

    Podman asks for 1048576 open files in every container; a root without CAP_SYS_RESOURCE
    (a VM's sandbox) cannot raise its hard limit that far and ``podman run`` fails with
    "error setting rlimit type 7".  The containers get this process's hard limit instead.
    No systemd here, so cgroups are managed directly and logs and events go to files; runc, as
    crun refuses the hybrid cgroup v1 + v2 layout of these machines (when runc is installed).
    """
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    nofile = 1048576 if hard == resource.RLIM_INFINITY else hard
    text = (
        "# Written by scripts/image.py for this machine.\n"
        "[containers]\n"
        f'default_ulimits = ["nofile={nofile}:{nofile}", "nproc=4096:4096"]\n'
        'log_driver = "k8s-file"\n'
        "[engine]\n"
        'cgroup_manager = "cgroupfs"\n'
        'events_logger = "file"\n' + ('runtime = "runc"\n' if shutil.which("runc") else "")
    )
    path = CACHE / "containers.conf"
    if not path.exists() or path.read_text() != text:
        CACHE.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(f".{os.getpid()}")
        partial.write_text(text)
        partial.replace(path)  # atomic: another checkout may read it right now
    return path


def _docker_answers(binary: str) -> bool:
    with contextlib.suppress(OSError, subprocess.TimeoutExpired):
        return subprocess.run([binary, "info"], capture_output=True, timeout=20, check=False).returncode == 0
    return False


def find_engine() -> Engine | None:
    """The engine to use, or None when there is none (see the module's docstring)."""
    wanted = os.environ.get("SKYFERRY_ENGINE", "")
    if wanted not in {"", "podman", "docker"}:
        raise ImageError(f"SKYFERRY_ENGINE={wanted!r}: expected podman or docker")
    if wanted in {"", "podman"} and (podman := shutil.which("podman")):
        env = {} if os.environ.get("CONTAINERS_CONF") else {"CONTAINERS_CONF": str(podman_conf())}
        return Engine("podman", podman, env)
    if wanted in {"", "docker"}:
        # Debian's docker CLI first: another one on PATH may lack the buildx plugin BuildKit needs.
        for binary in ("/usr/bin/docker", shutil.which("docker")):
            if binary and Path(binary).is_file() and _docker_answers(binary):
                return Engine("docker", binary, {"DOCKER_BUILDKIT": "1"})
    return None


def apt_install(*packages: str, missing: type[ImageError] = Unprepared) -> None:
    """Install Debian packages with apt-get (root only), waiting for another apt-get to finish."""
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        raise missing(f"{' '.join(packages)} is missing and cannot be installed here (apt-get as root)")
    log(f"installing {' '.join(packages)} with apt-get")
    started = time.monotonic()
    env = {"DEBIAN_FRONTEND": "noninteractive"}
    lock = ("-o", "DPkg::Lock::Timeout=900")
    run(["apt-get", *lock, "update", "-qq"], env=env, quiet=True)
    run(["apt-get", *lock, "install", "-y", "-qq", "--no-install-recommends", *packages], env=env, quiet=True)
    log(f"installed {' '.join(packages)} in {time.monotonic() - started:.0f} s")


def engine(install: bool) -> Engine:
    """:func:`find_engine`, installing Debian's podman first when ``install`` and there is none."""
    found = find_engine()
    if found is None and install and os.environ.get("SKYFERRY_ENGINE", "") in {"", "podman"}:
        apt_install("podman", "runc", missing=NoEngine)
        found = find_engine()
    if found is None:
        raise NoEngine("no container engine: install podman (apt-get install podman) or start docker")
    return found


# --- 2. The images the Dockerfile starts from ----------------------------------------------


def registries_answer(timeout: float = 10.0) -> bool:
    """Whether Docker Hub and ghcr.io answer HTTPS (any HTTP status counts, 401 included)."""
    for url in REGISTRIES:
        try:
            urllib.request.urlopen(url, timeout=timeout).close()  # noqa: S310 (fixed https URLs)
        except urllib.error.HTTPError:
            continue
        except (urllib.error.URLError, OSError):
            return False
    return True


def debian_sources() -> list[str]:
    """One-line apt sources of the machine's Debian mirror for :data:`SUITE` (deb.debian.org if none)."""
    entries: list[tuple[str, list[str], list[str]]] = []
    sources = Path("/etc/apt/sources.list.d")
    for path in sorted(sources.glob("*.sources")) if sources.is_dir() else []:
        for stanza in re.split(r"\n\s*\n", path.read_text()):
            fields = dict(
                (key.strip().lower(), value.strip())
                for key, _, value in (line.partition(":") for line in stanza.splitlines())
                if value and not key.startswith("#")
            )
            if "deb" in fields.get("types", "").split():
                entries += [
                    (uri, fields.get("suites", "").split(), fields.get("components", "").split())
                    for uri in fields.get("uris", "").split()
                ]
    for path in [Path("/etc/apt/sources.list"), *(sorted(sources.glob("*.list")) if sources.is_dir() else [])]:
        if path.is_file():
            for line in path.read_text().splitlines():
                words = re.sub(r"\[[^]]*\]", "", line.split("#")[0]).split()
                if len(words) >= 3 and words[0] == "deb":
                    entries.append((words[1], [words[2]], words[3:]))
    lines = [
        f"deb {uri} {suite} main"
        for uri, suites, components in entries
        for suite in suites
        if re.search(r"/debian(-security)?/?$", uri) and suite.startswith(SUITE) and "main" in components
    ]
    return list(dict.fromkeys(lines)) or [
        f"deb http://deb.debian.org/debian {SUITE} {SUITE}-updates main",
        f"deb http://deb.debian.org/debian-security {SUITE}-security main",
    ]


def host_cas() -> list[Path]:
    """The machine's extra CA certificates (a TLS-inspecting proxy's, say)."""
    return sorted(HOST_CAS.rglob("*.crt")) if HOST_CAS.is_dir() else []


def base_key(sources: Sequence[str], cas: Sequence[Path]) -> str:
    """A hash of everything the base root filesystem is made from."""
    recipe = {
        "suite": SUITE,
        "packages": BASE_PACKAGES,
        "hooks": BASE_HOOKS,
        "dpkg": BASE_DPKG_OPTIONS,
        "env": BASE_ENV,
        "sources": list(sources),
        "cas": {str(path.relative_to(HOST_CAS)): hashlib.sha256(path.read_bytes()).hexdigest() for path in cas},
    }
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:12]


def make_rootfs(tarball: Path, sources: Sequence[str], cas: Sequence[Path], install: bool) -> None:
    """``mmdebstrap`` a minimal bookworm with python3 into ``tarball`` (the host's CAs added)."""
    if not shutil.which("mmdebstrap"):
        if not install:
            raise Unprepared("mmdebstrap is missing: run `make image` (installs it with apt-get)")
        apt_install("mmdebstrap")
    hooks = []
    if cas:  # mmdebstrap's copy-in: host files into a directory of the new root
        hooks.append(f"copy-in {' '.join(str(path) for path in cas)} {HOST_CAS}")
        hooks.append('chroot "$1" update-ca-certificates --fresh >/dev/null')
    partial = tarball.with_suffix(".partial.tar")
    args = [
        "mmdebstrap",
        "--quiet",
        "--variant=minbase",
        f"--include={','.join(BASE_PACKAGES)}",
        *(f"--hook-dir={hook}" for hook in BASE_HOOKS),
        *(f"--dpkgopt={option}" for option in BASE_DPKG_OPTIONS),
        *(f"--customize-hook={hook}" for hook in hooks),
        SUITE,
        str(partial),
        *sources,
    ]
    log(f"making the Debian {SUITE} root filesystem with python3 (mmdebstrap; a few minutes)")
    started = time.monotonic()
    run(args, quiet=True)
    partial.rename(tarball)
    seconds = time.monotonic() - started
    log(f"root filesystem cached: {tarball.name}, {tarball.stat().st_size / 1e6:.0f} MB, {seconds:.0f} s")


def uv_version_spec() -> str:
    """The uv version the Dockerfile's ``UV_IMAGE`` default names (``0.8`` gives ``0.8.*``)."""
    found = re.search(r"^ARG UV_IMAGE=\S+:(\d+(?:\.\d+)*)\s*$", DOCKERFILE.read_text(), re.MULTILINE)
    if found is None:
        raise ImageError(f"{DOCKERFILE.relative_to(ROOT)}: no `ARG UV_IMAGE=...:<version>` line")
    version = found.group(1)
    return f"=={version}" if version.count(".") == 2 else f"=={version}.*"


def uv_wheel() -> Path:
    """PyPI's uv wheel of :func:`uv_version_spec` for this machine (pip download; cached)."""
    directory = CACHE / "uv"
    spec = uv_version_spec()
    prefix = spec.removeprefix("==").removesuffix(".*")
    wheels = sorted(directory.glob(f"uv-{prefix}*.whl")) if directory.is_dir() else []
    if wheels:
        return wheels[-1]
    pip = [sys.executable, "-m", "pip"]
    if importlib.util.find_spec("pip") is None:
        venv = CACHE / "pip"
        run([sys.executable, "-m", "venv", str(venv)], quiet=True)
        pip = [str(venv / "bin" / "pip")]
    log(f"downloading the uv wheel (uv{spec}) from PyPI")
    run([*pip, "download", "--quiet", "--no-deps", "--only-binary=:all:", "--dest", str(directory), f"uv{spec}"])
    wheels = sorted(directory.glob(f"uv-{prefix}*.whl"))
    if not wheels:
        raise ImageError(f"pip downloaded no uv{spec} wheel into {directory}")
    return wheels[-1]


def uv_tarball(wheel: Path) -> bytes:
    """A tar holding the wheel's ``uv`` binary as ``/uv`` (mode 0755)."""
    with zipfile.ZipFile(wheel) as archive:
        name = next((n for n in archive.namelist() if re.fullmatch(r"uv-[^/]+\.data/scripts/uv", n)), None)
        if name is None:
            raise ImageError(f"{wheel.name} holds no uv-*.data/scripts/uv")
        binary = archive.read(name)
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        info = tarfile.TarInfo("uv")
        info.size, info.mode, info.mtime = len(binary), 0o755, 0
        tar.addfile(info, io.BytesIO(binary))
    return out.getvalue()


def import_image(eng: Engine, name: str, tarball: Path | bytes, changes: Sequence[str] = ()) -> None:
    """``<engine> import`` a root filesystem tarball as ``name``."""
    with tempfile.TemporaryDirectory() as tmp:
        if isinstance(tarball, bytes):
            path = Path(tmp) / "image.tar"
            path.write_bytes(tarball)
        else:
            path = tarball
        eng.run("import", *(arg for change in changes for arg in ("--change", change)), str(path), name)
    log(f"imported {name}")


def local_bases(eng: Engine, install: bool) -> dict[str, str]:
    """The build arguments naming the local base and uv images (made, or taken from the cache)."""
    sources, cas = debian_sources(), host_cas()
    base = f"localhost/skyferry-base:{SUITE}-{base_key(sources, cas)}"
    if not eng.image_exists(base):
        tarball = CACHE / f"{base.rpartition(':')[2]}.tar"
        if not tarball.exists():
            CACHE.mkdir(parents=True, exist_ok=True)
            make_rootfs(tarball, sources, cas, install)
            for old in CACHE.glob(f"{SUITE}-*.tar"):
                if old != tarball:
                    old.unlink()
        import_image(eng, base, tarball, [*(f"ENV {env}" for env in BASE_ENV), 'CMD ["python3"]'])
    wheel = uv_wheel()
    uv = f"localhost/skyferry-uv:{wheel.name.split('-')[1]}"
    if not eng.image_exists(uv):
        import_image(eng, uv, uv_tarball(wheel))
    return {"BASE_IMAGE": base, "UV_IMAGE": uv, "PYTHON_VERSION": BASE_PYTHON}


def base_images(eng: Engine, install: bool, mode: str = "auto") -> dict[str, str]:
    """The build arguments choosing the images the Dockerfile starts from.

    ``registry``: none (the Dockerfile's defaults); ``local``: :func:`local_bases`; ``auto``: the
    first when the registries answer, else the second.
    """
    if mode not in {"auto", "registry", "local"}:
        raise ImageError(f"SKYFERRY_IMAGE_BASE={mode!r}: expected auto, registry or local")
    if mode == "registry" or (mode == "auto" and registries_answer()):
        return {}
    log("no registry answers: using local base images")
    return local_bases(eng, install)


# --- 3. The build ----------------------------------------------------------------------------


def build(target: str, *, install: bool = False, mode: str | None = None, quiet: bool = False) -> tuple[Engine, str]:
    """Build ``app/Dockerfile`` for ``target``, tagged ``skyferry:<target>``; return (engine, image ID).

    The engine's output streams to stderr, or with ``quiet`` is kept for the error of a failed build.
    """
    if target not in TARGETS:
        raise ImageError(f"unknown target {target!r}: expected one of {', '.join(TARGETS)}")
    eng = engine(install)
    bases = base_images(eng, install, mode or os.environ.get("SKYFERRY_IMAGE_BASE") or "auto")
    with tempfile.TemporaryDirectory() as tmp:
        iidfile = Path(tmp) / "iid"
        args = [
            "build",
            "--file",
            str(DOCKERFILE),
            "--network",
            "host",
            "--build-arg",
            f"TARGET={target}",
            *(arg for key, value in bases.items() for arg in ("--build-arg", f"{key}={value}")),
            "--iidfile",
            str(iidfile),
            "--tag",
            f"skyferry:{target}",
            str(ROOT),
        ]
        log(f"building skyferry:{target} with {eng.name}")
        started = time.monotonic()
        result = subprocess.run(
            eng.command(*args),
            env={**os.environ, **eng.env},
            stdout=subprocess.PIPE if quiet else sys.stderr,
            stderr=subprocess.STDOUT if quiet else None,
            text=True,
            check=False,
        )
        if result.returncode != 0:
            output = f":\n{result.stdout[-3000:]}" if quiet else " (its output is above)"
            raise ImageError(f"{eng.name} build failed with exit {result.returncode}{output}")
        image_id = iidfile.read_text().strip()
    seconds = time.monotonic() - started
    log(f"built skyferry:{target} {image_id[:19]} in {seconds:.0f} s, {size_mb(eng, image_id):.0f} MB")
    with contextlib.suppress(ImageError):
        eng.run("image", "prune", "--force", "--filter", f"label={LABEL}", "--filter", "until=24h")
    return eng, image_id


def size_mb(eng: Engine, image: str) -> float:
    """The image's size (uncompressed, all layers) in MB."""
    return int(eng.run("image", "inspect", "--format", "{{.Size}}", image).strip()) / 1e6


def main(argv: list[str] | None = None) -> int:
    """``python3 scripts/image.py [--target T] [--install] [--base auto|registry|local]``: prints the ID."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--target", default="aws", choices=TARGETS)
    parser.add_argument("--install", action="store_true", help="install the engine and mmdebstrap when missing")
    parser.add_argument("--base", choices=("auto", "registry", "local"), default=None)
    parser.add_argument(
        "--if-possible",
        action="store_true",
        help="an engine or tool that cannot be had here is no error (the image's tests then say so)",
    )
    args = parser.parse_args(argv)
    try:
        _, image_id = build(args.target, install=args.install, mode=args.base)
    except (NoEngine, Unprepared) as e:
        if not args.if_possible:
            print(f"image: error: {e}", file=sys.stderr)
            return 1
        print(f"image: not built: {e}; the image's tests will say so", file=sys.stderr)
        return 0
    except ImageError as e:
        print(f"image: error: {e}", file=sys.stderr)
        return 1
    print(image_id)
    return 0


if __name__ == "__main__":
    sys.exit(main())
