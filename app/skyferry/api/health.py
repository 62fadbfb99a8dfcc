"""Readiness and the worker's metrics: what ``/readyz`` and ``/metrics`` say about the app.

Readiness fails (503) when a store does not answer or when the worker running inside this
process (``serve --worker``) is down, waiting to restart.  Without the bearer token the
answer is only the status: no store error (it names hosts, schemas, SQL), no runner.  With
it, the answer adds the reason, the in-process worker's state, and each runner's lag and
parked events.  ``/metrics`` exports the same per-runner figures as gauges.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from skyferry.bootstrap import Ledger

log = logging.getLogger(__name__)


def readiness(ledger: Ledger, detailed: bool) -> tuple[int, dict[str, Any]]:
    """``(HTTP status, body)`` of ``/readyz``; ``detailed`` only for an authenticated caller."""
    problem = ""
    try:
        ledger.events.last_position()
        ledger.views.get_checkpoint("$readiness")
    except Exception as e:
        log.warning("not ready: a store does not answer: %s", e)
        problem = f"a store does not answer: {e}"
    worker = ledger.worker_status()
    if not problem and worker is not None and not worker["up"]:
        problem = f"the worker is down ({worker['last_error']}); it restarts on its own"
    body: dict[str, Any] = {"status": "unavailable" if problem else "ready", "detail": problem if detailed else ""}
    if detailed:
        body["worker"] = worker
        body["runners"] = [] if problem.startswith("a store") else [r.to_dict() for r in ledger.runners()]
    return (503 if problem else 200), body


class RunnerCollector(Collector):
    """Prometheus gauges read at scrape time: per-runner lag and parked events, the in-process worker."""

    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger

    def describe(self) -> Iterator[GaugeMetricFamily]:
        """The gauges' names (no store read at registration)."""
        yield from self._families()

    def collect(self) -> Iterator[GaugeMetricFamily]:
        """The gauges, read from the stores now."""
        lag, parked, worker = self._families()
        try:
            runners = self.ledger.runners()
        except Exception as e:
            log.warning("metrics: cannot read the runners' state: %s", e)
            runners = []
        for runner in runners:
            if runner.lag_seconds is not None:
                lag.add_metric([runner.name], runner.lag_seconds)
            parked.add_metric([runner.name], runner.parked)
        status = self.ledger.worker_status()
        if status is not None:
            worker.add_metric([], 1.0 if status["up"] else 0.0)
        yield from (lag, parked, worker)

    @staticmethod
    def _families() -> tuple[GaugeMetricFamily, GaugeMetricFamily, GaugeMetricFamily]:
        return (
            GaugeMetricFamily(
                "skyferry_runner_lag_seconds",
                "Age of the oldest event a runner has not handled yet (0: caught up)",
                labels=["runner"],
            ),
            GaugeMetricFamily(
                "skyferry_parked_events", "Events a runner parked (skyferry parked list)", labels=["runner"]
            ),
            GaugeMetricFamily("skyferry_worker_up", "1 while the worker inside this process runs, 0 while it restarts"),
        )
