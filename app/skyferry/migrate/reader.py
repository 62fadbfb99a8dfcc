"""Reading a store for export: here, or in a second process on another core.

An export is CPU-bound in Python when the store is local (SQLite): decoding rows, encoding
each event twice, hashing the chains.  Threads do not help, since the GIL runs all of that
on one core.  So when :func:`~skyferry.migrate.export.export` is given the URL it opened the
store from, it reads the first batch itself and hands the rest to :class:`ReaderProcess`:
``python -m skyferry.migrate.reader`` opens the same URL, reads with :func:`batches`, and sends
the events prepared (:func:`~skyferry.migrate.format.prepare_events`: data and metadata as
canonical JSON, timestamps as text) as ``marshal`` frames on its stdout, while the
exporting process encodes lines, extends the hash chains and writes chunks.  The archive
is the same byte for byte either way (tested).

Safety:

* the child is started as a new interpreter, never forked (a parent holding threads or
  gRPC channels must not fork);
* its request comes on stdin, because the URL may hold a password (argv is public);
* it ends by saying how far it read, and anything but the end asked for is an error: an
  export is never silently shorter;
* it dies with its parent: ``PR_SET_PDEATHSIG`` on Linux, and elsewhere its next write
  fails on the closed pipe;
* an error in the child is sent back pickled and raised in the parent with its type (so
  the exit code is the same); a child that ends without finishing is a
  :class:`~skyferry.core.errors.TransientError` (exit code 3: run the export again).
"""

from __future__ import annotations

import contextlib
import ctypes
import marshal
import os
import pickle
import signal
import struct
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from types import TracebackType
from typing import IO, Any, Final

import orjson

from skyferry.core.errors import SkyferryError, TransientError
from skyferry.core.messages import Event
from skyferry.core.ports import EventStore
from skyferry.migrate.format import Prepared, prepare_events
from skyferry.migrate.sharding import Shard, owned
from skyferry.migrate.transforms import Transformer

READ_BATCH: Final = 5000
READ_PATIENCE: Final = 10.0
"""Seconds :func:`batches` waits for ``read_all`` to reach the end it was asked to read to."""

_HEADER: Final = struct.Struct("<cQ")
_ROWS, _ERROR, _DONE = b"R", b"E", b"D"


def batches(
    store: EventStore,
    end: str | None,
    shard: Shard | None,
    transformer: Transformer | None,
    after: str | None = None,
    limit: int | Callable[[], int] = READ_BATCH,
) -> Iterator[tuple[list[Event], str]]:
    """``(events, position read up to)``: the events to export (of ``shard``, through
    ``transformer``) in batches of up to ``limit`` (or of what ``limit()`` answers before
    each read), after ``after`` and up to position ``end`` (the last when the export
    started, so that exporting a live store ends).

    ``read_all`` may answer nothing for a while before ``end`` (an eventually consistent
    index, as DynamoDB's): it is asked again for up to :data:`READ_PATIENCE` seconds, then
    :class:`TransientError` is raised: what is read is never silently shorter."""
    waited_since: float | None = None
    while end is not None and after != end:
        batch = store.read_all(after=after, limit=limit() if callable(limit) else limit)
        if not batch:
            now = time.monotonic()
            waited_since = waited_since or now
            if now - waited_since > READ_PATIENCE:
                raise TransientError(
                    f"{store.url}: read_all gave nothing after position {after} for {READ_PATIENCE:g} s, "
                    f"before the last position {end}; run the command again"
                )
            time.sleep(0.1)
            continue
        waited_since = None
        positions = [event.position for event in batch]
        cut = positions.index(end) if end in positions else None
        if cut is not None:
            batch = batch[: cut + 1]
        last = batch[-1].position
        assert last is not None  # read_all gives every event its position
        after = last
        mine = batch if shard is None else [event for event in batch if owned(shard, event.stream_id)]
        if transformer is not None:
            mine = transformer.apply(mine)
        yield mine, last
        if cut is not None:
            return


class ReaderProcess:
    """The prepared events of ``url``'s store after ``after`` up to ``end`` (of ``shard``),
    read by a child process; iterate once, and leave the ``with`` block to stop it early.

    The child starts at construction, so it boots while the caller works on something else.
    """

    def __init__(self, url: str, *, after: str, end: str, shard: Shard | None, limit: int = READ_BATCH) -> None:
        self._process = subprocess.Popen(
            [sys.executable, "-m", "skyferry.migrate.reader"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        _widen(self._process.stdout)
        self._end = end
        shard_text = None if shard is None else str(shard)
        request = {"url": url, "after": after, "end": end, "shard": shard_text, "limit": limit, "parent": os.getpid()}
        assert self._process.stdin is not None
        with contextlib.suppress(BrokenPipeError), self._process.stdin as stdin:  # a child that died is seen later
            stdin.write(orjson.dumps(request))

    def __iter__(self) -> Iterator[list[Prepared]]:
        return self._frames()  # the with block stops the child, whether or not it was read to the end

    def _frames(self) -> Iterator[list[Prepared]]:
        pipe = self._process.stdout
        assert pipe is not None
        new = tuple.__new__
        while True:
            header = pipe.read(_HEADER.size)
            if len(header) < _HEADER.size:
                break
            kind, size = _HEADER.unpack(header)
            body = pipe.read(size)
            if len(body) < size:
                break
            if kind == _ROWS:
                yield [new(Prepared, row) for row in marshal.loads(body)]  # noqa: S302  # our own child, a private pipe
            elif kind == _ERROR:
                raise pickle.loads(body)  # noqa: S301  # our own child, a private pipe
            elif kind == _DONE and body.decode() == self._end:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self._process.wait(timeout=30)  # it only has to exit (else close() stops it)
                return
            else:  # never a silently shorter export
                raise TransientError(
                    f"the export's reader process sent {kind!r} {body[:80]!r}, not the end at position "
                    f"{self._end}; run the export again"
                )
        code = self._process.wait()
        raise TransientError(
            f"the export's reader process ended (exit code {code}) before it finished; see its errors above, "
            "then run the export again"
        )

    def close(self) -> None:
        """Stop the child (if still running) and reap it."""
        if self._process.poll() is None:
            self._process.kill()
        self._process.wait()
        if self._process.stdout is not None:
            self._process.stdout.close()

    def __enter__(self) -> ReaderProcess:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None) -> None:
        self.close()


def _widen(pipe: IO[bytes] | None) -> None:
    """Let the child write up to 1 MiB ahead of the parent (Linux; 64 KiB is the default,
    1 MiB the unprivileged limit): measured 2-8 % faster.  Best effort."""
    if pipe is not None and sys.platform.startswith("linux"):
        import fcntl

        with contextlib.suppress(OSError):
            fcntl.fcntl(pipe.fileno(), fcntl.F_SETPIPE_SZ, 1 << 20)


def _die_with_parent() -> None:
    """Ask Linux to kill this process when its parent dies (a no-op elsewhere)."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            pr_set_pdeathsig = 1
            ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)


def _send(out: IO[bytes], kind: bytes, body: bytes) -> None:
    out.write(_HEADER.pack(kind, len(body)))
    out.write(body)


def _pickled(error: BaseException) -> bytes:
    """``error`` pickled, or a TransientError saying what it was when it cannot be."""
    try:
        body = pickle.dumps(error)
        pickle.loads(body)  # noqa: S301  # it must come back whole in the parent
        return body
    except Exception:
        return pickle.dumps(TransientError(f"the export's reader process failed: {type(error).__name__}: {error}"))


def main() -> None:
    """The child: read the request on stdin, send frames on stdout (see the module docstring)."""
    from skyferry.adapters import registry
    from skyferry.runtime import tune_process

    _die_with_parent()
    tune_process()
    out = sys.stdout.buffer
    sys.stdout = sys.stderr  # a stray print must not corrupt the frames
    request: dict[str, Any] = orjson.loads(sys.stdin.buffer.read())
    if os.getppid() != request["parent"]:  # the parent died before PR_SET_PDEATHSIG was set
        return
    try:
        store = registry.open_event_store(request["url"], existing=True)
        try:
            shard = Shard.parse(request["shard"])
            source = batches(store, request["end"], shard, None, after=request["after"], limit=request["limit"])
            read_to = request["after"]
            for events, position in source:  # the pipe lets the next batch be read while this one is encoded
                _send(out, _ROWS, marshal.dumps([tuple(event) for event in prepare_events(events)]))
                read_to = position
        finally:
            store.close()
        _send(out, _DONE, read_to.encode())  # how far it read: the parent checks it is the end
    except BrokenPipeError:
        return  # the parent stopped reading: it stopped the export
    except BaseException as e:
        if not isinstance(e, SkyferryError | KeyboardInterrupt):
            traceback.print_exc()  # a bug: its traceback is lost in pickling
        with contextlib.suppress(BrokenPipeError):
            _send(out, _ERROR, _pickled(e))
    with contextlib.suppress(BrokenPipeError):
        out.flush()


if __name__ == "__main__":
    main()
