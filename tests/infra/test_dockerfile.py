"""app/Dockerfile: only what running the built image (``tests/image/``) cannot show.

The image's tests build it from local base images (no registry here) and for one target; so
the defaults users build with and the other targets' extras are checked here, by their text.
"""

from __future__ import annotations

import re
import subprocess
import tomllib

from tests.infra.tools import ROOT

DOCKERFILE = ROOT / "app" / "Dockerfile"
EXTRAS = ROOT / "app" / "image-extras.sh"
TARGETS = ("kubernetes", "aws", "azure", "gcp")


def extras_for(target: str) -> list[str]:
    result = subprocess.run(["sh", str(EXTRAS), target], capture_output=True, text=True, check=True)
    return result.stdout.split()


def test_users_build_from_the_official_slim_python_and_uv_images() -> None:
    text = DOCKERFILE.read_text()
    args = dict(re.findall(r"^ARG (\w+)=(\S+)$", text, re.MULTILINE))
    assert args["PYTHON_VERSION"] == "3.12"
    assert args["BASE_IMAGE"] == "python:${PYTHON_VERSION}-slim-bookworm"
    assert re.fullmatch(r"ghcr\.io/astral-sh/uv:\d+\.\d+", args["UV_IMAGE"])
    # every stage starts from those (the build stage's interpreter is the runtime's)
    assert re.findall(r"^FROM (\S+)", text, re.MULTILINE) == ["${UV_IMAGE}", "${BASE_IMAGE}", "${BASE_IMAGE}"]
    # a `# syntax=` directive would make BuildKit fetch its frontend from Docker Hub
    assert not re.search(r"^#\s*syntax\s*=", text, re.MULTILINE | re.IGNORECASE)


def test_every_target_installs_only_extras_pyproject_declares() -> None:
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
