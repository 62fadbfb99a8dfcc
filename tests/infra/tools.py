"""Where the tests find helm and the infra command-line tools (``make deps`` puts helm in .cache/bin)."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from tests.services import unavailable

ROOT = Path(__file__).resolve().parents[2]


def helm() -> str:
    """The helm binary: ``.cache/bin/helm`` or on PATH; unavailable (with the reason) otherwise."""
    local = ROOT / ".cache" / "bin" / "helm"
    if local.is_file():
        return str(local)
    found = shutil.which("helm")
    if found is None:
        unavailable("helm is not installed: run `make deps` (unpacks it to .cache/bin/)")
    return found


def python_tool(name: str) -> list[str]:
    """A console script of the infra group installed beside this Python (kubernetes-validate, checkov)."""
    script = Path(sys.executable).parent / name
    if not script.is_file():
        unavailable(f"{name} is not installed: uv sync --all-groups (it is in the infra group)")
    return [str(script)]
