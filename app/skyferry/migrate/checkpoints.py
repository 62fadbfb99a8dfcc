"""Where imports and migrations keep their progress: in the *target's* view store.

Every checkpoint is a ``ViewStore`` checkpoint of the projection :data:`PROJECTION`, under
a key naming the job (``import:<archive digest>`` or ``migrate:<source and options>``),
whose value is a small JSON object.  Keeping it in the target means a rerun anywhere (a
new pod, another laptop) continues where the killed one stopped.
"""

from __future__ import annotations

import hashlib
import logging
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Final

import orjson

from skyferry.core.ports import ViewStore

PROJECTION: Final = "skyferry_migrate"

_log = logging.getLogger(__name__)


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
    _commit(views, key, orjson.dumps(value).decode())


def _commit(views: ViewStore, key: str, text: str) -> None:
    views.commit(PROJECTION, [], {key: text})


def _warm(views: ViewStore, key: str) -> None:
    try:
        load(views, key)
    except Exception as e:  # the first commit meets it again, and raises it
        _log.debug("reading the checkpoint of %s to warm its thread failed: %s", key, e)


class Saver:
    """Saves one job's checkpoints, after each batch, in order.

    With ``background`` (a target whose writes are round trips to a cloud, many in flight:
    ``TargetWriter.in_flight``) a checkpoint is committed on a thread of its own while
    the job writes its next batch, so the commit's round trips hide behind the writes
    instead of adding to every batch.  At most one commit runs at a time, in the order
    saved: :meth:`save` first waits for the one before (raising its error), and a
    checkpoint is only ever saved for a batch that is stored.  So a job that dies has its
    checkpoint at most one batch further back than it would inline, and its rerun writes
    that batch again, idempotently, as it does any batch after the checkpoint.  Without
    ``background`` (an embedded target, where a second writer would only queue for the same
    lock) each commit is made before :meth:`save` returns.
    """

    def __init__(self, views: ViewStore, key: str, *, background: bool) -> None:
        self.views = views
        self.key = key
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="skyferry-checkpoint") if background else None
        self._pending: Future[None] | None = None
        if self._executor is not None:
            # its thread reads the checkpoint once, now: what a store's client on that thread
            # needs (a connection, a handshake) is made beside the first batch, not after it
            self._pending = self._executor.submit(_warm, views, key)

    def save(self, value: dict[str, Any]) -> None:
        """Commit ``value`` as the job's checkpoint (in the background: once the one before it is)."""
        if self._executor is None:
            save(self.views, self.key, value)
            return
        self.flush()
        text = orjson.dumps(value).decode()  # encoded now: the caller goes on with its own dicts
        self._pending = self._executor.submit(_commit, self.views, self.key, text)

    def flush(self) -> None:
        """Wait until the last checkpoint saved is committed; raise its error if it failed."""
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.result()

    def close(self) -> None:
        """Let the last commit finish (so what was written is not copied again for nothing),
        then stop the thread.  Its error is logged, not raised: a job closed by a failure of
        its own raises that one.  Idempotent."""
        try:
            self.flush()
        except Exception as e:
            _log.warning("the checkpoint of %s could not be saved: %s", self.key, e)
        finally:
            if self._executor is not None:
                self._executor.shutdown()
                self._executor = None
