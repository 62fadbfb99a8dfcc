"""The kubernetes target's archive: the chart's archive volume, mounted at ``/var/lib/skyferry/archive``.

Nothing is declared here: the chart claims the volume (``archiveStorageGib``,
``archiveAccessMode``) and mounts it in the worker pods alone, where exports run.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from providers.base import Platform
from providers.kubernetes.config import KubernetesConfig
from providers.kubernetes.network import Network

if TYPE_CHECKING:
    from providers.kubernetes.identity import Identity

ARCHIVE_URL = "file:///var/lib/skyferry/archive"


@dataclass(frozen=True)
class Archive:
    """The app's ``file://`` archive URL (the volume's mount point)."""

    url: str


def declare_archive(platform: Platform[KubernetesConfig], network: Network, identity: Identity) -> Archive:
    """The archive's URL: the path where the chart mounts its volume."""
    return Archive(url=ARCHIVE_URL)
