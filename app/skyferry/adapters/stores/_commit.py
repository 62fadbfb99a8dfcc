"""The commit-record protocol: a view commit larger than one atomic write, atomic all the same.

DynamoDB (100 items per transaction) and Cosmos DB (100 operations per batch on the
service, none atomic on the emulator) cannot write a large view commit in one atomic
operation.  Both view stores make it atomic with the same protocol, written here once;
each store supplies the few operations it is made of (:class:`Writing`, :class:`Settling`).

A large commit
--------------
1. **Lock.**  Every document of the commit is rewritten, conditioned on what its writer
   read (the revision, or the ETag), with a *lock*: the commit's id ``tx`` and the
   document's new value, pending beside its old one.  A document locked by another
   commit fails the condition: the writer settles that lock (below) and tries again, or
   conflicts.
2. **Commit point.**  One single-item atomic write makes the commit's *record*
   :data:`COMMITTED`.  Before it nothing of the commit is visible; after it, all of it.
3. **Roll forward.**  Each pending value replaces the old one and the locks go; then the
   record is deleted.

A writer that fails (an ``Exception``) before its commit point rolls its own locks back
(:func:`write`) and raises the error that stopped it; the locks a failed roll-back leaves,
like those of a writer that dies or is interrupted (``KeyboardInterrupt``), are settled
by the next writer that meets them, after the lock timeout.

Readers resolve a locked document through its record: the pending value when the record
is :data:`COMMITTED`, the old value otherwise.  So a commit is seen whole or not at all.

Settling a lock another commit left (:func:`settle`)
----------------------------------------------------
=======================================  ==================================================
the commit's record                      the writer that meets one of its locks
=======================================  ==================================================
:data:`COMMITTED`                        rolls it forward (its writer died after its
                                         commit point)
:data:`ABORTED`                          rolls the locks back
:data:`PENDING` for less than the lock   leaves it alone: the commit is in progress, the
timeout (:data:`LOCK_TIMEOUT_SECONDS`)   writer conflicts
:data:`PENDING` for longer               presumes its writer dead and *aborts* the commit:
                                         one single-item atomic write that excludes the
                                         commit point (whichever comes first wins), then
                                         rolls the locks back
=======================================  ==================================================

An abort that loses the race to the commit point reads the record again and acts on
what it finds.  So a crash at any step leaves either locks of a commit that never
reaches its commit point (invisible; rolled back by the next writer that meets one,
after the lock timeout) or a committed record (visible whole; rolled forward by the next
writer that meets one of its locks).

How each store keeps its records
--------------------------------
* **DynamoDB** (``skyferry.adapters.stores.dynamodb.views``): the record ``t#<tx>`` is
  put :data:`PENDING`, with the time it started, before the first lock; the commit point
  updates it to :data:`COMMITTED` on condition that it is still pending, in the
  transaction that also writes the checkpoint; an abort updates it to :data:`ABORTED` on
  the same condition.  A lock whose record is gone belongs to a commit whose writer
  rolled back and deleted it: it is rolled back.  A writer meeting a committed lock rolls
  that document forward.
* **Cosmos DB** (``skyferry.adapters.stores.cosmos.views``): a commit has no record until
  its commit point, which *creates* the record :data:`COMMITTED`; an abort creates it
  :data:`ABORTED`: of two creates of one id exactly one succeeds, on the service and the
  emulator alike.  A lock without a record is pending since the time the lock carries
  (``tx_at``).  Aborted records are kept a day, so that a writer that stalled past its
  commit point finds the record taken and never commits late.  The checkpoint is one more
  locked document.  A writer meeting a committed lock rolls the whole commit forward and
  deletes its record.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from typing import Final, NamedTuple, Protocol

LOCK_TIMEOUT_SECONDS: Final = 120.0
"""Seconds after which a commit that locked documents but never reached its commit point is
presumed dead, and aborted and rolled back by the next writer that meets one of its locks."""

PENDING: Final = "pending"
"""The record of a commit before its commit point."""
COMMITTED: Final = "committed"
"""The record of a commit past its commit point: its pending values are the documents' values."""
ABORTED: Final = "aborted"
"""The record of a commit that never will commit: its locks are rolled back."""


class Record(NamedTuple):
    """A commit's record, as the protocol reads it."""

    status: str
    """:data:`PENDING`, :data:`COMMITTED` or :data:`ABORTED`."""
    started: float
    """When the commit started (seconds since the epoch): the age of a :data:`PENDING` one."""


class Writing(Protocol):
    """The steps of one large commit, as a store performs them (see the module docstring)."""

    def begin(self) -> None:
        """Anything the store records before the first lock (DynamoDB: the pending record)."""

    def lock(self) -> None:
        """Lock every document with its pending value; ``ConcurrencyError`` on a conflict."""

    def commit_point(self) -> None:
        """Make the record :data:`COMMITTED`; raise if the commit was aborted first."""

    def roll_forward(self) -> None:
        """After the commit point: the pending values become the values; the record goes."""

    def roll_back(self) -> None:
        """Before the commit point: remove this commit's own locks (and a record of its own)."""


class Settling(Protocol):
    """A lock of another commit that a writer met, as a store settles it."""

    def record(self) -> Record | None:
        """The commit's record; ``None`` when nothing of the commit is left to settle."""

    def abort(self) -> bool:
        """Atomically make a :data:`PENDING` commit :data:`ABORTED`; ``False`` when it was no
        longer pending (it committed, or another writer aborted it, first)."""

    def roll_forward(self) -> None:
        """Roll the committed commit's locks forward."""

    def roll_back(self) -> None:
        """Roll the aborted commit's locks back."""


def write(commit: Writing) -> None:
    """Run one large commit: begin, lock, commit point, roll forward.

    An ``Exception`` before the commit point rolls the commit's own locks back and is
    raised (a failure of the roll-back itself does not hide it); the locks it leaves, like
    those of a writer killed or interrupted (a ``BaseException``: no clean-up), are settled
    by the next writer after :data:`LOCK_TIMEOUT_SECONDS`.  A failure after the commit
    point leaves a committed record, which readers already resolve and the next writer
    rolls forward.
    """
    commit.begin()
    try:
        commit.lock()
        commit.commit_point()
    except Exception:
        with contextlib.suppress(Exception):
            commit.roll_back()
        raise
    commit.roll_forward()


def settle(commit: Settling, timeout: float, *, now: Callable[[], float] = time.time) -> bool:
    """Settle a lock of another commit (see the module docstring's table).

    ``True`` when the commit is settled (rolled forward, rolled back, or found settled
    already): the writer may try again; ``False`` when it is in progress, younger than
    ``timeout`` seconds: the writer conflicts.
    """
    record = commit.record()
    if record is None:
        return True
    if record.status == PENDING:
        if now() - record.started < timeout:
            return False
        if commit.abort():
            record = Record(ABORTED, record.started)
        else:  # it committed, or was aborted, first: act on what it is now
            record = commit.record()
            if record is None:
                return True
            if record.status == PENDING:  # pragma: no cover - an abort fails only off pending
                return False
    if record.status == COMMITTED:
        commit.roll_forward()
    else:
        commit.roll_back()
    return True
