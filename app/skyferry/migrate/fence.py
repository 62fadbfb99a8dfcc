"""The write fence of a cutover: a flag document in the *source's* view store.

While the document ``skyferry_control/write_fence`` holds ``{"fenced": true, ...}``, the
API answers every command with 503 (read-only) and accepts queries.  ``migrate --cutover``
sets it before draining; ``migrate --unfence`` lifts it (to roll back a cutover).
"""

from __future__ import annotations

from typing import Any, Final

from skyferry.core.messages import format_timestamp, utc_now
from skyferry.core.ports import ViewChange, ViewStore

FENCE_COLLECTION: Final = "skyferry_control"
FENCE_KEY: Final = "write_fence"
_PROJECTION: Final = "skyferry_control"


def set_fence(views: ViewStore, reason: str) -> dict[str, Any]:
    """Fence writes on the store of ``views``; returns the flag document."""
    doc = {"fenced": True, "reason": reason, "since": format_timestamp(utc_now())}
    views.commit(_PROJECTION, [ViewChange(FENCE_COLLECTION, FENCE_KEY, doc)], {})
    return doc


def lift_fence(views: ViewStore) -> None:
    """Remove the fence (idempotent)."""
    views.commit(_PROJECTION, [ViewChange(FENCE_COLLECTION, FENCE_KEY, None)], {})


def is_fenced(views: ViewStore) -> bool:
    """Whether writes are fenced: what the API checks before running a command."""
    doc = views.get(FENCE_COLLECTION, FENCE_KEY)
    return doc is not None and doc.value.get("fenced") is True
