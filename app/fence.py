"""The write fence: a flag in the view store that makes the API read-only.

A live migration's cutover (issue 4, item 5) fences the *source* store: from then on
the API answers every command with ``503`` and ``Retry-After`` while queries still work,
so the migration can drain, verify and hand over.  The flag is one document in the view
store of the fenced store -- collection :data:`FENCE_COLLECTION`, key :data:`FENCE_KEY`
-- so every API process sharing that store sees it without a restart::

    from app.fence import set_fence, clear_fence
    set_fence(views, reason="cutover to postgresql://...", by="skyferry migrate")
    clear_fence(views)   # to roll back
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from app.core.messages import format_timestamp, utc_now
from app.core.ports import ViewChange, ViewStore

FENCE_COLLECTION: Final = "$system"
FENCE_KEY: Final = "fence"
FENCE_PROJECTION: Final = "$fence"
"""The checkpoint namespace used for the fence's commits (no checkpoint is written)."""


@dataclass(frozen=True, slots=True)
class Fence:
    """Why and since when writes are refused."""

    reason: str
    since: str
    by: str


def get_fence(views: ViewStore) -> Fence | None:
    """The fence set on ``views``, or ``None`` when writes are allowed."""
    doc = views.get(FENCE_COLLECTION, FENCE_KEY)
    if doc is None or not doc.value.get("fenced"):
        return None
    value = doc.value
    return Fence(str(value.get("reason", "")), str(value.get("since", "")), str(value.get("by", "")))


def set_fence(views: ViewStore, *, reason: str, by: str = "skyferry") -> Fence:
    """Fence ``views``'s store: the API refuses commands with 503 until :func:`clear_fence`."""
    fence = Fence(reason=reason, since=format_timestamp(utc_now()), by=by)
    doc = {"fenced": True, "reason": fence.reason, "since": fence.since, "by": fence.by}
    views.commit(FENCE_PROJECTION, [ViewChange(FENCE_COLLECTION, FENCE_KEY, doc)], {})
    return fence


def clear_fence(views: ViewStore) -> None:
    """Allow writes again (idempotent)."""
    views.commit(FENCE_PROJECTION, [ViewChange(FENCE_COLLECTION, FENCE_KEY, None)], {})
