"""Where imports and migrations keep their progress: in the *target's* view store.

Every checkpoint is a ``ViewStore`` checkpoint of the projection :data:`PROJECTION`, under
a key naming the job (``import:<archive digest>`` or ``migrate:<source and options>``),
whose value is a small JSON object.  Keeping it in the target means a rerun anywhere (a
new pod, another laptop) continues where the killed one stopped.
"""

from __future__ import annotations

import hashlib
from typing import Any, Final

import orjson

from skyferry.core.ports import ViewStore

PROJECTION: Final = "skyferry_migrate"


def job_key(kind: str, *parts: str | None) -> str:
    """A short stable key for a job: ``kind:`` plus a hash of what identifies it."""
    text = "\x1f".join("" if part is None else part for part in parts)
    return f"{kind}:{hashlib.sha256(text.encode()).hexdigest()[:32]}"


def load(views: ViewStore, key: str) -> dict[str, Any] | None:
    """The job's checkpoint, or ``None`` when it never committed one."""
    raw = views.get_checkpoint(PROJECTION, key)
    if raw is None:
        return None
    value = orjson.loads(raw)
    return value if isinstance(value, dict) else None


def save(views: ViewStore, key: str, value: dict[str, Any]) -> None:
    """Commit the job's checkpoint (atomically, like any view-store checkpoint)."""
    views.commit(PROJECTION, [], {key: orjson.dumps(value).decode()})
