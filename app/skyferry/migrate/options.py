"""What the data-portability commands check of their options before they read or write.

* :func:`at_least` range-checks a number (``--chunk-events 0`` would never end);
* :func:`location` reads a store or archive URL that holds a secret from the environment
  (``env:NAME``) or a file (``@PATH``), so that no password appears on a command line,
  which every user of the machine can read in the process list;
* :func:`distinct` refuses a source and a target that are one store;
* :func:`default_archive` is where ``export`` writes without ``--to``: a new archive under
  the deployment's (``SKYFERRY_ARCHIVE_URL``, which every stack sets).
"""

from __future__ import annotations

import math
import os
from datetime import datetime
from pathlib import Path
from typing import Final

from skyferry.adapters.registry import same_store
from skyferry.core.errors import ConfigurationError
from skyferry.core.ports import EventStore
from skyferry.settings import load_settings

ENV_PREFIX: Final = "env:"
FILE_PREFIX: Final = "@"


def at_least(value: float, minimum: float, option: str) -> None:
    """Refuse ``value`` below ``minimum`` (or not a finite number), naming ``option``."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value < minimum:
        raise ConfigurationError(f"{option} must be at least {minimum:g}, not {value!r}")


def location(value: str, option: str) -> str:
    """The URL ``value`` names: itself, the environment variable ``NAME`` of ``env:NAME``, or
    the content of the file ``PATH`` of ``@PATH`` (surrounding whitespace stripped); empty is refused."""
    if not value.strip():
        raise ConfigurationError(f"{option} is empty: give a store URL or an archive", where=option)
    if value.startswith(ENV_PREFIX):
        name = value.removeprefix(ENV_PREFIX)
        found = os.environ.get(name, "").strip()
        if not name or not found:
            raise ConfigurationError(f"{option} {value}: the environment variable {name!r} is not set or empty")
        return found
    if value.startswith(FILE_PREFIX):
        path = value.removeprefix(FILE_PREFIX)
        try:
            found = Path(path).read_text(encoding="utf-8").strip()
        except OSError as e:
            raise ConfigurationError(f"{option} {value}: cannot read the file ({e.strerror})") from e
        except UnicodeDecodeError as e:
            raise ConfigurationError(f"{option} {value}: the file is not text (it should hold one URL)") from e
        if not found:
            raise ConfigurationError(f"{option} {value}: the file is empty")
        return found
    return value


def distinct(source: EventStore, target: EventStore, what: str) -> None:
    """Refuse a ``source`` and a ``target`` that are one store (``what`` names the command)."""
    if same_store(source, target):
        raise ConfigurationError(
            f"{what}: the source and the target are the same store ({source.url}); name two different stores"
        )


def under(url: str, name: str) -> str:
    """The archive URL of ``name`` inside the archive ``url``: its path gains ``/name``, its
    query (``?region=...``) stays at the end."""
    head, mark, query = url.partition("?")
    trimmed = head.rstrip("/")
    if trimmed.endswith(":"):  # the root itself (file:///): keep its slashes
        trimmed = head.removesuffix("/")
    return f"{trimmed}/{name}{mark}{query}"


def default_archive(now: datetime) -> str:
    """Where ``export`` writes without ``--to``: ``export-<UTC time>`` (``20261206T124501Z``)
    under ``SKYFERRY_ARCHIVE_URL`` (default ``./exports``), so that no export replaces another."""
    return under(load_settings().archive_url, f"export-{now:%Y%m%dT%H%M%SZ}")
