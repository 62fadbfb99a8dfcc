"""``--transform module:function``: upcast, rename or drop events while they are copied.

The function receives one :class:`~skyferry.core.messages.Event` and returns an ``Event`` (the
same one or a changed copy, made with ``dataclasses.replace``), ``None`` to drop it, or a
list of events to split it.  Split events need ids of their own that are the same on every
run (``uuid.uuid5`` of the original id, for example), so that a resumed copy recognises
what it already wrote.

A transform that changes the number of events must be allowed with ``--allow-count-change``;
the copy then renumbers each stream's versions (contiguous from 1) and the manifest
records the transform and the counts.  Without it, the first event dropped or split stops
the command with exit code 2 before it is written.
"""

from __future__ import annotations

import difflib
import importlib
import os
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import replace
from typing import Any

import orjson

from skyferry.core.errors import ConfigurationError, ValidationError
from skyferry.core.messages import Event
from skyferry.core.ports import EventStore
from skyferry.migrate.options import at_least

TransformResult = Event | Sequence[Event] | None
TransformFunction = Callable[[Event], TransformResult]

RESUME_WINDOW = 10_000
"""How many of a target stream's last events a resumed renumbering copy looks at."""


def load_transform(spec: str) -> TransformFunction:
    """Import ``module:function``, from the working directory or the installed packages, as
    ``python -m`` would; raises :class:`ConfigurationError` naming what is wrong."""
    module_name, sep, function_name = spec.partition(":")
    if not sep or not module_name or not function_name:
        raise ConfigurationError(f"--transform {spec!r}: expected module:function")
    if module_name.startswith("."):
        raise ConfigurationError(
            f"--transform {spec!r}: {module_name!r} is a relative module name; give the whole name (package.module)"
        )
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise ConfigurationError(f"--transform {spec!r}: cannot import {module_name!r} ({e})") from e
    except (Exception, SystemExit) as e:  # the user's module failed while it was imported: its error, not ours
        raise ConfigurationError(
            f"--transform {spec!r}: importing {module_name!r} raised {type(e).__name__}: {e}",
            hint=f"fix {module_name} (--debug shows the traceback)",
        ) from e
    function = getattr(module, function_name, None)
    if not callable(function):
        raise ConfigurationError(f"--transform {spec!r}: {module_name} has no function {function_name!r}")
    loaded: TransformFunction = function
    return loaded


class Transformer:
    """Applies a transform to batches, counting events in and out, renumbering when allowed."""

    def __init__(
        self,
        spec: str,
        function: TransformFunction,
        *,
        allow_count_change: bool = False,
        target: EventStore | None = None,
    ) -> None:
        self.spec = spec
        self.function = function
        self.allow_count_change = allow_count_change
        self.events_in = 0
        self.events_out = 0
        self.changed = 0
        self._target = target
        self._counters: dict[str, int] = {}
        self._written_ids: dict[str, set[str]] = {}

    def outputs(self, event: Event) -> list[Event]:
        """What the transform makes of one event (checked, not yet renumbered)."""
        try:
            result = self.function(event)
        except Exception as e:
            raise ValidationError(
                f"--transform {self.spec} failed on event {event.id} "
                f"(stream {event.stream_id!r} version {event.version}): {e!r}"
            ) from e
        outputs = [] if result is None else [result] if isinstance(result, Event) else list(result)
        for output in outputs:
            if not isinstance(output, Event):
                raise ValidationError(f"--transform {self.spec} returned {type(output).__name__}, not Event")
            output.to_new().validate()
        if len(outputs) != 1 and not self.allow_count_change:
            raise ValidationError(
                f"--transform {self.spec} turned event {event.id} (stream {event.stream_id!r} version "
                f"{event.version}) into {len(outputs)} events; pass --allow-count-change to allow it"
            )
        return outputs

    def apply(self, batch: Iterable[Event]) -> list[Event]:
        """The transformed batch; with ``allow_count_change``, versions renumbered per stream."""
        out: list[Event] = []
        for event in batch:
            self.events_in += 1
            outputs = self.outputs(event)
            if outputs != [event]:
                self.changed += 1
            for output in outputs:
                if output.stream_id != event.stream_id and not self.allow_count_change:
                    raise ValidationError(
                        f"--transform {self.spec} moved event {event.id} to another stream; "
                        "pass --allow-count-change to allow it"
                    )
                placed = self._renumber(output) if self.allow_count_change else output
                if placed is not None:
                    out.append(placed.with_position(event.position))
        self.events_out += len(out)
        self._written_ids.clear()
        return out

    def _renumber(self, event: Event) -> Event | None:
        stream_id = event.stream_id
        if stream_id not in self._counters:
            version = self._target.stream_version(stream_id) if self._target is not None else 0
            self._counters[stream_id] = version
            if version and self._target is not None:
                tail = self._target.read_stream(stream_id, from_version=max(1, version - RESUME_WINDOW + 1))
                self._written_ids[stream_id] = {e.id for e in tail}
        if event.id in self._written_ids.get(stream_id, ()):
            return None  # written by the interrupted run this one resumes
        self._counters[stream_id] += 1
        return replace(event, version=self._counters[stream_id])

    def record(self) -> dict[str, Any]:
        """What the manifest (or the migration report) records about the transform."""
        return {
            "spec": self.spec,
            "allow_count_change": self.allow_count_change,
            "events_in": self.events_in,
            "events_out": self.events_out,
            "events_changed": self.changed,
        }


def _pretty(events: Sequence[Event]) -> list[str]:
    return [
        line
        for event in events
        for line in orjson.dumps(event.to_dict(), option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS)
        .decode()
        .splitlines()
    ]


def dry_run_diff(transformer: Transformer, events: Iterable[Event], limit: int) -> tuple[str, int]:
    """A unified diff of the first ``limit`` events the transform changes, and how many it read."""
    at_least(limit, 1, "--dry-run-limit")
    blocks: list[str] = []
    seen = 0
    for event in events:
        seen += 1
        outputs = transformer.outputs(event)
        if outputs == [event]:
            continue
        label = f"{event.stream_id}@{event.version}"
        blocks.extend(
            difflib.unified_diff(
                _pretty([event]), _pretty(outputs), f"source {label}", f"transformed {label}", lineterm=""
            )
        )
        if outputs == []:
            blocks.append(f"(event {event.id} is dropped)")
        if len(blocks) and sum(1 for b in blocks if b.startswith("--- ")) >= limit:
            break
    return "\n".join(blocks), seen
