"""One moto server per test session, shared by the DynamoDB, SNS/SQS and S3 services.

The gaps of moto are closed so that the tests test the adapters: moto's server handles
requests in threads without isolating them, so a DynamoDB
transaction could interleave with a concurrent write and the concurrency tests would test
moto instead of the adapters.  This module therefore serves moto's WSGI app behind one
lock (each request runs alone, as on a real service whose operations are atomic; an SQS
long poll lets the others in while it waits, :func:`_long_polls_let_others_in`), its
FIFO queues get SQS's 5-minute deduplication window (:func:`_dedupe_like_sqs`), and a
DynamoDB transaction backs its table up once, not once per item
(:func:`_transactions_back_up_once`).  Run as
a script it is the server; imported, it starts that script on a free loopback port once.
"""

from __future__ import annotations

import os
import sys
import threading
from typing import Any

_LOCK = threading.Lock()
_endpoint: str | None = None

#: Fake credentials and region for moto (set for the session, restored at its end).
TEST_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_REGION": "us-east-1",
}
REGION = "us-east-1"


def endpoint() -> str:
    """The URL of the session's moto server, started on first use."""
    global _endpoint
    with _LOCK:
        if _endpoint is not None:
            return _endpoint
        import contextlib

        from tests import services

        try:
            import moto  # noqa: F401
        except ImportError:
            services.unavailable("moto[server] is not installed (uv sync --all-groups)")
        port = services.free_port()
        stack = contextlib.ExitStack()
        try:
            stack.enter_context(
                services.started([sys.executable, os.path.abspath(__file__), str(port)], port, timeout=60)
            )
        except RuntimeError as e:
            stack.close()
            services.unavailable(f"moto server did not start: {e}")
        saved = {name: os.environ.get(name) for name in TEST_ENV}
        os.environ.update(TEST_ENV)

        def stop() -> None:
            global _endpoint
            stack.close()
            for name, value in saved.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value
            _endpoint = None

        services.on_session_end(stop)
        _endpoint = f"http://127.0.0.1:{port}"
        return _endpoint


def _serve(port: int, keep_alive: bool = False) -> None:  # pragma: no cover - runs in the server process
    """Serve moto on ``port``.  ``keep_alive``: through uvicorn, which keeps connections open
    (werkzeug's server closes every one after its response, so each request is a new TCP
    connection; a benchmark that puts a round trip in front of moto needs the service's
    kept-alive connections, or it charges every request a connect too)."""
    from moto.moto_server.werkzeug_app import (
        DomainDispatcherApplication,
        MotoRequestHandler,
        create_backend_app,
    )
    from werkzeug.serving import run_simple

    _dedupe_like_sqs()
    _transactions_back_up_once()
    app = DomainDispatcherApplication(create_backend_app)
    lock = threading.Lock()
    _long_polls_let_others_in(lock)

    def serialized(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        with lock:
            result = app(environ, start_response)
            try:
                body = b"".join(result)
            finally:
                close = getattr(result, "close", None)
                if close is not None:
                    close()
        return [body]

    if keep_alive:
        import uvicorn
        from uvicorn.middleware.wsgi import WSGIMiddleware

        uvicorn.run(WSGIMiddleware(serialized), host="127.0.0.1", port=port, log_level="warning")  # type: ignore[arg-type]
        return
    run_simple("127.0.0.1", port, serialized, threaded=True, request_handler=MotoRequestHandler)


def _long_polls_let_others_in(lock: threading.Lock) -> None:  # pragma: no cover - runs in the server process
    """Release the server's lock while an SQS long poll waits for messages.

    moto's ``ReceiveMessage`` with ``WaitTimeSeconds`` waits inside the request, so behind
    the one lock a single long poll would stall every other request for up to 20 s; SQS
    serves other requests meanwhile.  The wait now sleeps briefly without the lock and
    moto's loop looks at the queue again once it holds the lock back.
    """
    import time

    from moto.sqs import models

    def wait_for_messages(self: Any, timeout: int) -> None:
        lock.release()
        try:
            time.sleep(min(timeout, 0.1))
        finally:
            lock.acquire()

    models.Queue.wait_for_messages = wait_for_messages  # type: ignore[method-assign]


def _dedupe_like_sqs() -> None:  # pragma: no cover - runs in the server process
    """Give moto's FIFO queues SQS's 5-minute deduplication window.

    moto drops a duplicate only while the first copy is still in the queue; SQS (and an SNS
    FIFO topic in front of it) drops it for 5 minutes after the first send, even when the
    first copy was received and deleted.  Without this, "a message published twice is
    delivered once" would test moto's gap rather than the adapter's deduplication ids.
    """
    import time

    from moto.sqs import models

    original = models.Queue.add_message
    window = 300.0

    def add_message(self: Any, message: Any) -> None:
        dedup = getattr(message, "deduplication_id", None)
        if self.fifo_queue and dedup:
            seen: dict[str, float] = self.__dict__.setdefault("_skyferry_dedup_seen", {})
            now = time.monotonic()
            for old in [k for k, at in seen.items() if now - at >= window]:
                del seen[old]
            if dedup in seen:
                return
            seen[dedup] = now
        original(self, message)

    models.Queue.add_message = add_message  # type: ignore[method-assign]


def _transactions_back_up_once() -> None:  # pragma: no cover - runs in the server process
    """Make a DynamoDB transaction copy each table it touches once, as a backup, not once per item.

    moto's ``TransactWriteItems`` deep-copies the whole table for every item of the
    transaction before it runs (to restore it if one fails), so a transaction cost its
    items times the table's size: a 50-item transaction on a table of a few thousand
    items took seconds, and a benchmark measured moto instead of the round trips.  The
    copies are all made before anything changes, so one copy per table is the same backup.
    Requests run one at a time behind the server's lock, so the module's ``copy`` can be
    swapped for the length of one call.
    """
    import copy

    from moto.dynamodb import models
    from moto.dynamodb.models.table import Table

    original = models.DynamoDBBackend.transact_write_items

    class _Once:
        """``copy`` for one call: a table deep-copied once (held, so its id is not reused)."""

        def __init__(self) -> None:
            self.made: dict[int, tuple[Any, Any]] = {}

        def deepcopy(self, value: Any, memo: Any = None) -> Any:
            if not isinstance(value, Table):
                return copy.deepcopy(value, memo)
            if id(value) not in self.made:
                self.made[id(value)] = (value, copy.deepcopy(value))
            return self.made[id(value)][1]

    def transact_write_items(self: Any, transact_items: Any) -> Any:
        models.copy = _Once()  # type: ignore[assignment]
        try:
            return original(self, transact_items)
        finally:
            models.copy = copy

    models.DynamoDBBackend.transact_write_items = transact_write_items  # type: ignore[method-assign]


if __name__ == "__main__":  # pragma: no cover
    _serve(int(sys.argv[1]), keep_alive="--keep-alive" in sys.argv[2:])
