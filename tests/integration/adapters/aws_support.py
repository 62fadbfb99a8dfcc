"""Helpers of the AWS adapters' integration tests (``test_dynamodb.py``, ``test_s3.py``) on moto server."""

from __future__ import annotations

import collections
import threading
from typing import Any

from tests.services import moto_server


class Counter:
    """Counts the API calls of the clients it is attached to, by operation name."""

    def __init__(self) -> None:
        self.calls: collections.Counter[str] = collections.Counter()
        self.lock = threading.Lock()

    def attach(self, client: Any) -> Any:
        client.meta.events.register("before-call.*.*", self._count)
        return client

    def _count(self, model: Any, **kwargs: Any) -> None:
        with self.lock:
            self.calls[model.name] += 1

    def total(self) -> int:
        return sum(self.calls.values())

    def reset(self) -> None:
        self.calls.clear()


def boto(service: str) -> Any:
    """A boto3 client of ``service`` pointed at the session's moto server."""
    import boto3

    make: Any = boto3.client
    return make(service, region_name=moto_server.REGION, endpoint_url=moto_server.endpoint())
