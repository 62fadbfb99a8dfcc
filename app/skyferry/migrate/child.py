"""A second process for the CPU-bound half of an export or an import.

An export from a local store, or an import into one, is CPU-bound in Python, and threads
do not help: the GIL runs all of that work on one core.  So the half that needs none of
the parent's connections runs in a child, on another core: the export's reading and
preparing (:mod:`skyferry.migrate.reader`), the import's checking and decoding
(:mod:`skyferry.migrate.decoder`).  :class:`ChildProcess` starts ``python -m <module>``,
whose ``main`` is :func:`serve`; the child sends its results as frames on its stdout.

Safety:

* the child is started as a new interpreter, never forked (a parent holding threads or
  gRPC channels must not fork), with ``-P``: a module in the working directory is never
  imported instead of an installed one;
* its request comes on stdin, because it may hold a password or a key (argv is public);
* it ends by saying what it did last, and anything but the end asked for is an error: an
  export or an import is never silently shorter;
* it dies with its parent: ``PR_SET_PDEATHSIG`` on Linux, and elsewhere its next write
  fails on the closed pipe;
* an error in the child is sent back pickled and raised in the parent with its type (so
  the exit code is the same); a child that ends without finishing is a
  :class:`~skyferry.core.errors.TransientError` (exit code 3: run the command again).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import pickle
import signal
import struct
import subprocess
import sys
import traceback
from collections.abc import Callable, Iterator
from types import TracebackType
from typing import IO, Any, Final, Self

import orjson

from skyferry.core.errors import SkyferryError, TransientError

_HEADER: Final = struct.Struct("<cQ")
_FRAME, _ERROR, _DONE = b"R", b"E", b"D"


class ChildProcess:
    """``python -m module``, given ``request`` (and the parent's pid) on its stdin: the bodies
    of its frames come out of :meth:`_bodies`, once; leave the ``with`` block to stop it early.

    The child starts at construction, so it boots while the caller works on something else.
    ``end`` is what the child must say it did last; ``name`` names it in errors, and
    ``command`` is what to run again after it failed.
    """

    def __init__(self, module: str, request: dict[str, Any], *, end: str, name: str, command: str) -> None:
        # -P: the working directory is not put on the path, so none of its modules is imported instead
        argv = [sys.executable, "-P", "-m", module]
        self._process = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        _widen(self._process.stdout)
        self._end, self._name, self._command = end, name, command
        assert self._process.stdin is not None
        with contextlib.suppress(BrokenPipeError), self._process.stdin as stdin:  # a child that died is seen later
            stdin.write(orjson.dumps({**request, "parent": os.getpid()}))

    def _bodies(self) -> Iterator[bytes]:
        """The bodies of the child's frames, up to the end it was asked for; a child's error is
        raised here with its type, a shorter end or an early exit is a ``TransientError``."""
        pipe = self._process.stdout
        assert pipe is not None
        while True:
            header = pipe.read(_HEADER.size)
            if len(header) < _HEADER.size:
                break
            kind, size = _HEADER.unpack(header)
            body = pipe.read(size)
            if len(body) < size:
                break
            if kind == _FRAME:
                yield body
            elif kind == _ERROR:
                raise pickle.loads(body)  # noqa: S301  # our own child, a private pipe
            elif kind == _DONE and body.decode() == self._end:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self._process.wait(timeout=30)  # it only has to exit (else close() stops it)
                return
            else:  # never a silently shorter result
                raise TransientError(
                    f"{self._name} sent {kind!r} {body[:80]!r}, not the end {self._end}; run the {self._command} again"
                )
        code = self._process.wait()
        raise TransientError(
            f"{self._name} ended (exit code {code}) before it finished; see its errors above, "
            f"then run the {self._command} again"
        )

    def close(self) -> None:
        """Stop the child (if still running) and reap it."""
        if self._process.poll() is None:
            self._process.kill()
        self._process.wait()
        if self._process.stdout is not None:
            self._process.stdout.close()

    def __enter__(self) -> Self:
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


def _pickled(error: BaseException, name: str) -> bytes:
    """``error`` pickled, or a TransientError saying what it was when it cannot be."""
    try:
        body = pickle.dumps(error)
        pickle.loads(body)  # noqa: S301  # it must come back whole in the parent
        return body
    except Exception:
        return pickle.dumps(TransientError(f"{name} failed: {type(error).__name__}: {error}"))


def serve(work: Callable[[dict[str, Any], Callable[[bytes], None]], str], name: str) -> None:
    """The child's ``main``: read the request on stdin, then ``work(request, send)``, which
    sends each frame's body with ``send`` and returns what it did last (the end the parent
    checks); an error is sent back instead (see the module docstring)."""
    from skyferry.runtime import tune_process

    _die_with_parent()
    tune_process()
    out = sys.stdout.buffer
    sys.stdout = sys.stderr  # a stray print must not corrupt the frames
    request: dict[str, Any] = orjson.loads(sys.stdin.buffer.read())
    if os.getppid() != request["parent"]:  # the parent died before PR_SET_PDEATHSIG was set
        return
    try:
        end = work(request, lambda body: _send(out, _FRAME, body))
        _send(out, _DONE, end.encode())
    except BrokenPipeError:
        return  # the parent stopped reading: it stopped the command
    except BaseException as e:
        if not isinstance(e, SkyferryError | KeyboardInterrupt):
            traceback.print_exc()  # a bug: its traceback is lost in pickling
        with contextlib.suppress(BrokenPipeError):
            _send(out, _ERROR, _pickled(e, name))
    with contextlib.suppress(BrokenPipeError):
        out.flush()
