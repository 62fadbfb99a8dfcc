"""Small aggregates, projections and fault-injecting wrappers for the kernel's unit tests."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict

from skyferry.core.aggregate import Aggregate, applies
from skyferry.core.errors import DomainError, TransientError, ValidationError
from skyferry.core.messages import Event, JSONObject, NewEvent
from skyferry.core.ports import ANY, FEATURE_PUBLISH_BEGIN, AppendResult, ExpectedVersion, Message, ViewChange
from skyferry.core.projections import Projection, ViewBatch


class Counter(Aggregate):
    """Sums ``Added`` amounts (schema 2 field ``amount``); ``Reset`` sets it to zero."""

    stream_prefix = "counter-"

    def __init__(self, aggregate_id: str) -> None:
        super().__init__(aggregate_id)
        self.total = 0
        self.seen: list[int] = []

    @applies("Added")
    def _added(self, event: Event) -> None:
        self.total += event.data["amount"]
        self.seen.append(event.data["amount"])

    @applies("Reset")
    def _reset(self, event: Event) -> None:
        self.total = 0

    def snapshot(self) -> JSONObject:
        return {"total": self.total, "seen": list(self.seen)}

    def restore_state(self, state: JSONObject) -> None:
        self.total = state["total"]
        self.seen = list(state["seen"])


class Add(BaseModel):
    model_config = ConfigDict(extra="forbid")
    counter_id: str
    amount: int


class Reset(BaseModel):
    model_config = ConfigDict(extra="forbid")
    counter_id: str


class TooNegative(DomainError):
    """The total would go below zero."""


def decide_add(counter: Counter, command: Add) -> NewEvent:
    if counter.total + command.amount < 0:
        raise TooNegative(f"total {counter.total} + {command.amount} < 0")
    return NewEvent("Added", {"amount": command.amount}, schema_version=2)


def decide_reset(counter: Counter, command: Reset) -> list[NewEvent]:
    return [NewEvent("Reset", {})]


class CountingProjection(Projection):
    """Per stream: the number of ``Added`` events and their sum; totals in one shared doc."""

    name: ClassVar[str] = "counting"
    handles: ClassVar[frozenset[str]] = frozenset({"Added"})
    collections: ClassVar[tuple[str, ...]] = ("counts",)

    def __init__(
        self, fail_on: Callable[[Event], bool] | None = None, fail_with: type[Exception] = RuntimeError
    ) -> None:
        self.fail_on = fail_on
        self.fail_with = fail_with

    def apply(self, event: Event, views: ViewBatch) -> None:
        if self.fail_on is not None and self.fail_on(event):
            raise self.fail_with(f"projection crashed on {event.id}")
        doc = views.get("counts", event.stream_id) or {"events": 0, "sum": 0}
        doc["events"] += 1
        doc["sum"] += event.data["amount"]
        views.put("counts", event.stream_id, doc)
        total = views.get("counts", "$total") or {"events": 0, "sum": 0}
        total["events"] += 1
        total["sum"] += event.data["amount"]
        views.put("counts", "$total", total)


class Delegate:
    """Forwards every attribute to ``inner``: subclass and override what a test changes."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


class NonTemporalStore(Delegate):
    """An event store that declares no optional feature."""

    features: frozenset[str] = frozenset()


class InterferingStore(Delegate):
    """Before each of the first ``conflicts`` appends to a stream, another writer appends first."""

    features: frozenset[str] = frozenset()

    def __init__(self, inner: Any, conflicts: int) -> None:
        super().__init__(inner)
        self.conflicts = conflicts
        self.appends = 0

    def append(self, stream_id: str, events: Sequence[NewEvent], expected_version: ExpectedVersion) -> AppendResult:
        self.appends += 1
        if self.conflicts > 0:
            self.conflicts -= 1
            self.inner.append(stream_id, [NewEvent("Added", {"amount": 1}, schema_version=2)], ANY)
        result: AppendResult = self.inner.append(stream_id, events, expected_version)
        return result


class FailingCommitViews(Delegate):
    """A view store whose ``commit`` runs ``before`` (once) and then may fail."""

    def __init__(self, inner: Any, before: Callable[[], None] | None = None, fail_times: int = 0) -> None:
        super().__init__(inner)
        self.before = before
        self.fail_times = fail_times
        self.commits = 0

    def commit(self, projection: str, changes: Sequence[ViewChange], checkpoint: dict[str, str]) -> None:
        self.commits += 1
        if self.before is not None:
            before, self.before = self.before, None
            before()
        if self.fail_times > 0:
            self.fail_times -= 1
            raise TransientError("view store connection dropped during commit")
        self.inner.commit(projection, changes, checkpoint)


class RefusingViews(Delegate):
    """A view store that refuses any commit writing a document whose key holds ``marker`` (as
    PostgreSQL's jsonb refuses a NUL character), with an error that is not transient.  Pick a
    marker that is not hexadecimal, so that no event id (in a parked record's key) holds it."""

    def __init__(self, inner: Any, marker: str) -> None:
        super().__init__(inner)
        self.marker = marker

    def commit(self, projection: str, changes: Sequence[ViewChange], checkpoint: dict[str, str]) -> None:
        if any(change.doc is not None and self.marker in change.key for change in changes):
            raise ValidationError(f"the store cannot hold a document with {self.marker!r}")
        self.inner.commit(projection, changes, checkpoint)


class FlakyBroker:
    """Accepts messages one by one; fails (TransientError) after ``accept`` messages until healed."""

    url = "flaky://"

    def __init__(self, accept: int | None = None) -> None:
        self.accept = accept
        self.accepted: list[Message] = []

    def publish(self, messages: Sequence[Message]) -> None:
        for message in messages:
            if self.accept is not None:
                if self.accept <= 0:
                    raise TransientError("broker unreachable")
                self.accept -= 1
            self.accepted.append(message)

    def subscribe(self, group: str, handler: Any, *, max_deliveries: int = 5) -> Any:
        raise NotImplementedError

    def dead_letters(self, group: str, limit: int = 100) -> list[Message]:
        return []

    def close(self) -> None:
        pass


class PipelinedFakeBroker(FlakyBroker):
    """Takes publishes in flight (``publish_begin``): a call's messages are accepted when its
    waiter is called.  ``fail_call`` makes that call (0-based) fail, and every call begun after
    it too until :meth:`heal` (as a broker ordering keys across calls must: nothing of a key
    after a failed call is accepted)."""

    url = "pipelined://"
    features = frozenset({FEATURE_PUBLISH_BEGIN})

    def __init__(self, fail_call: int | None = None) -> None:
        super().__init__()
        self.fail_call = fail_call
        self.begun = 0
        self.in_flight = 0
        self.most_in_flight = 0
        self.waited: list[int] = []
        self._failing_since: int | None = None

    def publish_begin(self, messages: Sequence[Message]) -> Callable[[], None]:
        call = self.begun
        self.begun += 1
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        if call == self.fail_call:
            self._failing_since = call
        failing = self._failing_since is not None
        batch = list(messages)

        def wait() -> None:
            if call in self.waited:
                if failing:
                    raise TransientError(f"call {call} failed")
                return
            self.waited.append(call)
            self.in_flight -= 1
            if failing:
                raise TransientError(f"call {call} failed")
            self.accepted.extend(batch)

        return wait

    def heal(self) -> None:
        """Calls begun from now on succeed."""
        self.fail_call = None
        self._failing_since = None
