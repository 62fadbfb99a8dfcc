"""The ``sns+sqs://`` broker on moto server: a fresh topic (and its queues) per test."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator
from urllib.parse import quote

from tests.services import moto_server


@contextlib.contextmanager
def provide(kind: str, scheme: str) -> Iterator[str]:
    """A fresh topic; the adapter provisions its queues (``provision=true``), removed afterwards.

    ``wait=0`` polls instead of long-polling and ``backoff=0`` redelivers a failed message at
    once, so the conformance suite runs in seconds.
    """
    import boto3

    endpoint = moto_server.endpoint()
    topic = f"sf-{uuid.uuid4().hex[:10]}"
    yield (
        f"sns+sqs://{topic}?region={moto_server.REGION}&endpoint={quote(endpoint, safe=':/')}"
        "&provision=true&wait=0&backoff=0&visibility=30"
    )
    sqs = boto3.client("sqs", region_name=moto_server.REGION, endpoint_url=endpoint)
    sns = boto3.client("sns", region_name=moto_server.REGION, endpoint_url=endpoint)
    for url in sqs.list_queues(QueueNamePrefix=topic).get("QueueUrls", []):
        sqs.delete_queue(QueueUrl=url)
    for page in sns.get_paginator("list_topics").paginate():
        for entry in page["Topics"]:
            if entry["TopicArn"].endswith(f":{topic}.fifo"):
                sns.delete_topic(TopicArn=entry["TopicArn"])
