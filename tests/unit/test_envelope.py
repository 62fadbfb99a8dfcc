"""``Event`` and ``NewEvent`` are built on tuples, and behave as the frozen dataclasses they
replaced: the same constructors and defaults, immutable, equal only to their own kind,
and understood by :mod:`dataclasses`, ``copy`` and ``pickle``."""

from __future__ import annotations

import copy
import dataclasses
import pickle
from datetime import UTC, datetime
from typing import Any

import pytest

from skyferry.core.errors import ValidationError
from skyferry.core.messages import Event, NewEvent

MOMENT = datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)
ID = "0194c3f2-7d1e-7a00-8b00-000000000001"


def stored() -> Event:
    return Event(ID, "acct-1", 1, "Opened", 1, {"owner": "ada"}, {"actor": "x"}, MOMENT, MOMENT)


def test_a_new_event_makes_its_defaults_for_each_event() -> None:
    before = datetime.now(UTC)
    first, second = NewEvent("Opened", {"owner": "ada"}), NewEvent("Opened", {"owner": "ada"})
    assert first.id != second.id  # a fresh id each, valid as every store wants it
    first.validate()
    assert first.metadata == {}
    assert second.metadata == {}
    assert first.metadata is not second.metadata  # not one shared dict
    assert first.schema_version == 1
    assert first.recorded_at is None
    assert before <= first.occurred_at <= datetime.now(UTC)
    assert first.occurred_at.tzinfo is UTC


def test_values_given_are_kept_even_those_that_look_like_no_value() -> None:
    given = NewEvent(
        type="Opened",
        data={"owner": "ada"},
        metadata={"actor": "x"},
        id=ID,
        schema_version=3,
        occurred_at=MOMENT,
        recorded_at=MOMENT,
    )
    assert (given.type, given.id, given.schema_version, given.occurred_at, given.recorded_at) == (
        "Opened",
        ID,
        3,
        MOMENT,
        MOMENT,
    )
    assert given.metadata == {"actor": "x"}
    no_id: Any = None
    with pytest.raises(ValidationError, match="event id None is not a UUID"):
        NewEvent("Opened", {}, id=no_id).validate()  # None is kept, and refused, not replaced
    no_metadata: Any = None
    with pytest.raises(ValidationError, match="data and metadata must be JSON objects"):
        NewEvent("Opened", {}, no_metadata, ID).validate()


@pytest.mark.parametrize("make", [lambda: NewEvent("Opened", {"owner": "ada"}, id=ID, occurred_at=MOMENT), stored])
def test_each_is_immutable_and_equal_only_to_its_own_kind(make: Any) -> None:
    event = make()
    with pytest.raises(dataclasses.FrozenInstanceError):
        event.type = "Closed"
    with pytest.raises(dataclasses.FrozenInstanceError):
        del event.type
    assert event == make()
    assert (event != make()) is False
    assert (event == tuple(event)) is False  # a plain tuple never equals one
    assert event != tuple(event)
    assert event != dataclasses.replace(event, type="Closed")


def test_a_new_event_and_a_stored_one_are_never_equal() -> None:
    event = stored()
    assert event.to_new() != event
    assert event != event.to_new()


@pytest.mark.parametrize("make", [lambda: NewEvent("Opened", {"owner": "ada"}, id=ID, occurred_at=MOMENT), stored])
def test_dataclasses_copy_and_pickle_understand_each(make: Any) -> None:
    event = make()
    assert dataclasses.is_dataclass(event)
    names = [f.name for f in dataclasses.fields(event)]
    assert names == list(type(event)._fields)
    assert dataclasses.asdict(event) == dict(zip(names, (getattr(event, n) for n in names), strict=True))
    changed = dataclasses.replace(event, data={"owner": "grace"})
    assert type(changed) is type(event)
    assert changed.data == {"owner": "grace"}
    assert changed.id == event.id
    assert copy.deepcopy(event) == event
    assert copy.copy(event) == event
    assert pickle.loads(pickle.dumps(event)) == event  # noqa: S301 - the test's own bytes
    first_field = names[0]  # NewEvent's first field is its type, Event's its id
    assert repr(event).startswith(f"{type(event).__name__}({first_field}=")


def test_new_event_fields_show_their_defaults_to_dataclasses() -> None:
    defaults = {f.name: f for f in dataclasses.fields(NewEvent)}
    assert defaults["metadata"].default_factory is dict
    assert defaults["schema_version"].default == 1
    assert defaults["recorded_at"].default is None
    assert defaults["type"].default is dataclasses.MISSING
    assert defaults["data"].default is dataclasses.MISSING
