"""SNS FIFO -> SQS FIFO broker (``sns+sqs://``).

URL
---
``sns+sqs://TOPIC?region=eu-west-1&account=123456789012``

``TOPIC``
    The SNS FIFO topic name (``.fifo`` is added when missing).  Each consumer group has one
    SQS FIFO queue ``<topic>-<group>.fifo`` subscribed to the topic with raw message
    delivery, and a dead-letter queue ``<topic>-<group>-dlq.fifo`` wired by a redrive
    policy (``providers/aws`` creates them for the configured groups; see
    :func:`queue_names`).
``account``
    The AWS account of the topic (else asked of STS once).
``region``, ``profile``, ``attempts``
    See :mod:`skyferry.adapters.aws`.
``wait``
    Long-poll seconds of ``ReceiveMessage`` (default 10; 0 polls, for tests).
``visibility``
    Seconds a received message stays hidden while its handler runs (default 60).
``backoff``
    First retry delay in whole seconds after a handler fails (default 1; doubled per
    attempt up to 300; 0 retries at once).
``inflight``
    ``PublishBatch`` requests in flight at once (default :data:`PUBLISH_IN_FLIGHT`, 1 to
    :data:`MAX_PUBLISH_IN_FLIGHT`; see ``publish`` below).
``endpoint``
    A custom endpoint (moto server, LocalStack): **for tests and local use**.
``provision``
    ``true`` creates the topic, the queues, the subscriptions and the redrive policies on
    demand: **for tests and local use** (production gets them from Pulumi, and the task
    role may not create anything).

Mapping of the port
-------------------
* ``MessageGroupId`` = the ordering key (the stream id) when it is at most 128 printable
  ASCII characters, else its SHA-256 (same key, same group; the key itself travels in the
  ``sf-key`` attribute).  ``MessageDeduplicationId`` = the message id (the event id): SNS
  drops a re-publish within its 5-minute window, and the SQS queues inherit the ids.
* The body goes as UTF-8 text when it is valid UTF-8 (a 192 KiB event fits SNS's 256 KB),
  else base64 (attribute ``sf-enc``).  The port's attributes travel as one JSON attribute
  (``sf-attrs``), because SNS allows only 10 message attributes.
* ``publish`` uses ``PublishBatch`` (10 messages or 256 KB per request), ``inflight``
  requests at once: the messages are dealt into that many lanes by message group (a
  group always to the same lane, in publish order), each lane sends its batches one after
  another, and the lanes run side by side.  SNS FIFO orders a group by the order it
  receives its messages, and no two requests holding one group are ever in flight
  together, so each key keeps its order; ``publish`` returns once every lane is done.
  ``publish_begin`` (the relay's batches in flight) sends through one pool per broker in
  which a request waits for the earlier ones holding any of its groups, from any call.
* ``subscribe`` polls the group's queue (``ReceiveMessage``, 10 at a time) from a thread.
  FIFO queues hand out a message group to one consumer at a time, which gives order per
  key and competing consumers.  A handled message is deleted (``DeleteMessageBatch``); a
  failed one is hidden for the backoff (``ChangeMessageVisibility``), and so are the later
  messages of its group in the same batch, so the key waits for it.  After
  ``max_deliveries`` failed attempts the message is sent to the dead-letter queue and
  deleted, and its key moves on.
* Attempts are the handler's failures, counted by the consumer, not SQS's
  ``ApproximateReceiveCount``: a FIFO receive hands out the later messages of a group with
  the first, so every failure of the first raises their receive count too, and a healthy
  message behind a failing one would be dead-lettered after one failure of its own.  The
  count is kept in memory (a restarted consumer starts again from 1: a poison message gets
  more attempts, never fewer).  The queue's redrive policy is the backstop for a consumer
  that crashes on a message every time; its ``maxReceiveCount``
  (:func:`redrive_receive_count`) leaves room for the receives a message gets while up to
  nine messages before it in its batch fail.
* ``dead_letters`` receives from the DLQ and makes the messages visible again at once, so
  it reads without removing.  A FIFO queue hands out at most 10 messages of one group
  while they are in flight, so it returns at most 10 dead letters per key.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import re
import threading
import time
import zlib
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any, Final
from urllib.parse import quote

from skyferry.adapters import aws
from skyferry.core.errors import ConfigurationError, TransientError, ValidationError
from skyferry.core.inflight import NotRun, OrderedPool
from skyferry.core.ports import FEATURE_PUBLISH_BEGIN, Message, MessageHandler, nothing_to_wait_for

log = logging.getLogger(__name__)

#: The API operations the broker calls (without ``provision``) and the IAM actions each needs.
IAM_ACTIONS_BY_OPERATION: Final[dict[str, tuple[str, ...]]] = {
    "PublishBatch": ("sns:Publish",),
    "GetQueueUrl": ("sqs:GetQueueUrl",),
    "ReceiveMessage": ("sqs:ReceiveMessage",),
    "DeleteMessageBatch": ("sqs:DeleteMessage",),
    "ChangeMessageVisibility": ("sqs:ChangeMessageVisibility",),
    "ChangeMessageVisibilityBatch": ("sqs:ChangeMessageVisibility",),
    "SendMessage": ("sqs:SendMessage",),
}
#: Operations called only with ``provision=true`` (tests and local use), never granted by Pulumi.
PROVISION_OPERATIONS: Final = frozenset(
    {"CreateTopic", "CreateQueue", "GetQueueAttributes", "SetQueueAttributes", "Subscribe", "GetCallerIdentity"}
)
IAM_ACTIONS_PUBLISH: Final = ("sns:Publish",)
IAM_ACTIONS_CONSUME: Final = tuple(
    sorted({a for actions in IAM_ACTIONS_BY_OPERATION.values() for a in actions if a.startswith("sqs:")})
)

KEY_ATTRIBUTE: Final = "sf-key"
ATTRS_ATTRIBUTE: Final = "sf-attrs"
ENCODING_ATTRIBUTE: Final = "sf-enc"
ATTEMPTS_ATTRIBUTE: Final = "sf-attempts"
MAX_BATCH_BYTES: Final = 256 * 1024 - 4 * 1024
MAX_BACKOFF: Final = 300
RECEIVE_BATCH: Final = 10
"""Messages one ``ReceiveMessage`` returns at most (SQS's limit)."""
MAX_RECEIVE_COUNT: Final = 1000
"""SQS's largest redrive ``maxReceiveCount``."""
_REMEMBERED_FAILURES: Final = 10_000
_GROUP_ID = re.compile(r"[\x21-\x7e]{1,128}")
_GROUP_NAME = re.compile(r"[A-Za-z0-9_-]+")


def topic_name(topic: str) -> str:
    """The FIFO topic name (with ``.fifo``)."""
    return topic if topic.endswith(".fifo") else f"{topic}.fifo"


def queue_names(topic: str, group: str) -> tuple[str, str]:
    """The names of a group's queue and dead-letter queue: shared with ``providers/aws``."""
    if not _GROUP_NAME.fullmatch(group):
        raise ValidationError(f"consumer group {group!r}: use letters, digits, '-' and '_' only")
    base = topic_name(topic).removesuffix(".fifo")
    queue, dead = f"{base}-{group}.fifo", f"{base}-{group}-dlq.fifo"
    if len(dead) > 80:
        raise ValidationError(f"consumer group {group!r}: queue name {dead!r} is over SQS's 80 characters")
    return queue, dead


def redrive_receive_count(max_deliveries: int) -> int:
    """The redrive ``maxReceiveCount`` of a group's queue for ``max_deliveries`` handler attempts.

    A message is received once per attempt of its own, and once more each time one of the
    at most nine messages before it in a batch fails; each of those fails at most
    ``max_deliveries`` times.  So a healthy message is never redriven, and a message whose
    consumer crashes every time still reaches the dead-letter queue.
    """
    if max_deliveries < 1:
        raise ValidationError("max_deliveries must be at least 1")
    return min(MAX_RECEIVE_COUNT, RECEIVE_BATCH * max_deliveries)


def group_id(key: str) -> str:
    """The ``MessageGroupId`` of an ordering key."""
    return key if _GROUP_ID.fullmatch(key) else hashlib.sha256(key.encode()).hexdigest()


def dedup_id(message_id: str) -> str:
    """The ``MessageDeduplicationId`` of a message id."""
    return message_id if _GROUP_ID.fullmatch(message_id) else hashlib.sha256(message_id.encode()).hexdigest()


def _encode(message: Message) -> tuple[str, dict[str, Any]]:
    try:
        text, encoding = message.body.decode("utf-8"), "utf8"
    except UnicodeDecodeError:
        text, encoding = base64.b64encode(message.body).decode(), "b64"
    if not text:
        text, encoding = "-", "empty"
    attributes = {
        KEY_ATTRIBUTE: {"DataType": "String", "StringValue": message.key},
        ATTRS_ATTRIBUTE: {"DataType": "String", "StringValue": json.dumps(dict(message.attributes))},
        ENCODING_ATTRIBUTE: {"DataType": "String", "StringValue": encoding},
    }
    return text, attributes


def _message_id(raw: dict[str, Any]) -> str:
    """The port's message id of a received message (its deduplication id)."""
    return str(raw.get("Attributes", {}).get("MessageDeduplicationId") or raw["MessageId"])


def _decode(raw: dict[str, Any], attempt: int | None = None) -> Message:
    attributes = {name: value.get("StringValue", "") for name, value in raw.get("MessageAttributes", {}).items()}
    encoding = attributes.get(ENCODING_ATTRIBUTE, "utf8")
    text = raw.get("Body", "")
    body = b"" if encoding == "empty" else base64.b64decode(text) if encoding == "b64" else text.encode()
    system = raw.get("Attributes", {})
    if attempt is None:
        attempt = int(attributes.get(ATTEMPTS_ATTRIBUTE) or system.get("ApproximateReceiveCount", "1"))
    return Message(
        id=_message_id(raw),
        key=attributes.get(KEY_ATTRIBUTE, system.get("MessageGroupId", "")),
        body=body,
        attributes=json.loads(attributes.get(ATTRS_ATTRIBUTE) or "{}"),
        delivery_attempt=attempt,
    )


PUBLISH_IN_FLIGHT: Final = 32
"""``PublishBatch`` requests in flight by default (URL option ``inflight``): all the client's
connections, since a relay keeps several batches in flight (16 left a 20 ms round trip showing:
``docs/performance.md``)."""
MAX_PUBLISH_IN_FLIGHT: Final = 32
"""The most ``inflight`` accepts: the HTTP connections of one boto3 client (``aws.make_client``)."""


def _lanes(entries: list[dict[str, Any]], lanes: int) -> list[list[dict[str, Any]]]:
    """``entries`` dealt into at most ``lanes`` lists by message group, each in publish order."""
    if lanes == 1:
        return [entries]
    dealt: dict[int, list[dict[str, Any]]] = {}
    for entry in entries:
        lane = zlib.crc32(entry["MessageGroupId"].encode()) % lanes
        dealt.setdefault(lane, []).append(entry)
    return list(dealt.values())


def _batches(entries: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    batches: list[list[dict[str, Any]]] = []
    size = 0
    for entry in entries:
        entry_size = len(entry["Message"].encode()) + sum(
            len(k) + len(v["StringValue"].encode()) for k, v in entry["MessageAttributes"].items()
        )
        if not batches or len(batches[-1]) == 10 or size + entry_size > MAX_BATCH_BYTES:
            batches.append([])
            size = 0
        batches[-1].append(entry)
        size += entry_size
    return batches


class SnsSqsSubscription:
    """A consumer thread polling one group's queue; ``close`` stops it after its batch."""

    def __init__(self, broker: SnsSqsBroker, group: str, handler: MessageHandler, max_deliveries: int) -> None:
        self._broker = broker
        self._group = group
        self._handler = handler
        self._max = max_deliveries
        self._failures: dict[str, int] = {}  # message id -> handler failures seen (insertion order)
        self._queue_url, self._dlq_url = broker._queues(group, max_deliveries)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"sns+sqs:{group}", daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Stop polling; messages received but not handled are redelivered later."""
        self._stop.set()
        if self._thread is not threading.current_thread():
            self._thread.join(timeout=self._broker._wait + self._broker._visibility + 5)

    def _run(self) -> None:
        failures = 0
        while not self._stop.is_set():
            try:
                self._poll()
                failures = 0
            except Exception:
                failures += 1
                log.exception("sns+sqs consumer of group %r failed; retrying", self._group)
                self._stop.wait(min(30.0, aws.backoff(failures, base=0.5, cap=30.0) + 0.1))

    def _poll(self) -> None:
        broker = self._broker
        response = broker._call(
            broker._sqs.receive_message,
            "ReceiveMessage",
            QueueUrl=self._queue_url,
            MaxNumberOfMessages=10,
            WaitTimeSeconds=broker._wait,
            VisibilityTimeout=broker._visibility,
            AttributeNames=["All"],
            MessageAttributeNames=["All"],
        )
        received = response.get("Messages", [])
        if not received:
            if broker._wait == 0:
                self._stop.wait(0.05)
            return
        done: list[str] = []
        held: dict[str, int] = {}  # message group -> seconds its failed message is hidden
        for raw in received:
            group = raw.get("Attributes", {}).get("MessageGroupId", "")
            if group in held:
                self._hide(raw, held[group])
                continue
            message = _decode(raw, attempt=self._failures.get(_message_id(raw), 0) + 1)
            try:
                self._handler(message)
            except Exception:
                log.warning(
                    "handler of group %r failed on message %s (attempt %d of %d)",
                    self._group,
                    message.id,
                    message.delivery_attempt,
                    self._max,
                    exc_info=True,
                )
                if message.delivery_attempt >= self._max:
                    self._dead_letter(raw, message)
                    self._failures.pop(message.id, None)
                    done.append(raw["ReceiptHandle"])
                else:
                    self._remember_failure(message.id, message.delivery_attempt)
                    delay = min(MAX_BACKOFF, broker._backoff * 2 ** (message.delivery_attempt - 1))
                    held[group] = delay
                    self._hide(raw, delay)
                continue
            self._failures.pop(message.id, None)
            done.append(raw["ReceiptHandle"])
        for start in range(0, len(done), 10):
            broker._call(
                broker._sqs.delete_message_batch,
                "DeleteMessageBatch",
                QueueUrl=self._queue_url,
                Entries=[{"Id": str(i), "ReceiptHandle": h} for i, h in enumerate(done[start : start + 10])],
            )

    def _remember_failure(self, message_id: str, failures: int) -> None:
        self._failures.pop(message_id, None)
        self._failures[message_id] = failures
        while len(self._failures) > _REMEMBERED_FAILURES:
            del self._failures[next(iter(self._failures))]

    def _hide(self, raw: dict[str, Any], seconds: int) -> None:
        broker = self._broker
        broker._call(
            broker._sqs.change_message_visibility,
            "ChangeMessageVisibility",
            QueueUrl=self._queue_url,
            ReceiptHandle=raw["ReceiptHandle"],
            VisibilityTimeout=seconds,
        )

    def _dead_letter(self, raw: dict[str, Any], message: Message) -> None:
        broker = self._broker
        attributes = dict(raw.get("MessageAttributes", {}))
        attributes[ATTEMPTS_ATTRIBUTE] = {"DataType": "String", "StringValue": str(message.delivery_attempt)}
        system = raw.get("Attributes", {})
        broker._call(
            broker._sqs.send_message,
            "SendMessage",
            QueueUrl=self._dlq_url,
            MessageBody=raw["Body"],
            MessageAttributes={
                k: {"DataType": v.get("DataType", "String"), "StringValue": v.get("StringValue", "")}
                for k, v in attributes.items()
            },
            MessageGroupId=system.get("MessageGroupId") or group_id(message.key),
            MessageDeduplicationId=dedup_id(message.id),
        )
        log.error(
            "message %s of group %r dead-lettered after %d attempts", message.id, self._group, message.delivery_attempt
        )


class SnsSqsBroker:
    """Broker on an SNS FIFO topic with one SQS FIFO queue (+ DLQ) per consumer group.

    ``sns`` and ``sqs`` are boto3 clients (tests may hand in their own); without them they
    are built on first use from the URL's options.
    """

    features = frozenset({FEATURE_PUBLISH_BEGIN})

    def __init__(
        self,
        topic: str,
        *,
        sns: Any | None = None,
        sqs: Any | None = None,
        options: aws.AwsOptions | None = None,
    ) -> None:
        if not topic:
            raise ConfigurationError("sns+sqs:// URL names no topic: sns+sqs://TOPIC?region=...")
        self._topic = topic_name(topic)
        self._options = options or aws.AwsOptions()
        extra = dict(self._options.extra or {})
        known = {"account", "wait", "visibility", "backoff", "provision", "inflight"}
        if set(extra) - known:
            raise ConfigurationError(
                f"sns+sqs:// URL has unknown options {sorted(set(extra) - known)}; known: region, endpoint, "
                f"profile, attempts, {', '.join(sorted(known))}"
            )
        try:
            self._wait = int(extra.get("wait", "10"))
            self._visibility = int(extra.get("visibility", "60"))
            self._backoff = int(extra.get("backoff", "1"))
        except ValueError as e:
            raise ConfigurationError("sns+sqs:// URL options wait, visibility and backoff are whole seconds") from e
        inflight = extra.get("inflight", str(PUBLISH_IN_FLIGHT))
        if not inflight.isdigit() or not 1 <= int(inflight) <= MAX_PUBLISH_IN_FLIGHT:
            raise ConfigurationError(
                f"sns+sqs:// URL option inflight must be a whole number from 1 to {MAX_PUBLISH_IN_FLIGHT}, "
                f"not {inflight!r}"
            )
        self._inflight = int(inflight)
        self._pipeline: OrderedPool[None] | None = None  # publish_begin's pool, built on first use
        self._begun = 0  # calls of publish_begin whose waiter has not been called yet
        self._provision = extra.get("provision", "false").lower() in ("1", "true", "yes")
        self._account = extra.get("account")
        self._sns_client = sns
        self._sqs_client = sqs
        self._topic_arn: str | None = None
        self._lock = threading.Lock()
        self._subscriptions: list[SnsSqsSubscription] = []
        query = "&".join(
            f"{k}={quote(str(v), safe=':/')}"
            for k, v in (("region", self._options.region), ("endpoint", self._options.endpoint))
            if v
        )
        self.url = f"sns+sqs://{self._topic}" + (f"?{query}" if query else "")

    @classmethod
    def from_url(cls, url: str) -> SnsSqsBroker:
        """Open ``sns+sqs://TOPIC?region=...`` (no I/O)."""
        topic, _, options = aws.parse_options(url)
        return cls(topic, options=options)

    @property
    def _sns(self) -> Any:
        if self._sns_client is None:
            self._sns_client = aws.make_client("sns", self._options)
        return self._sns_client

    @property
    def _sqs(self) -> Any:
        if self._sqs_client is None:
            self._sqs_client = aws.make_client("sqs", self._options)
        return self._sqs_client

    def _call(self, fn: Any, operation: str, **kwargs: Any) -> Any:
        return aws.call(fn, f"sns+sqs topic {self._topic!r} ({operation})", self._options.attempts, **kwargs)

    def _arn(self) -> str:
        with self._lock:
            if self._topic_arn is None:
                if self._provision:
                    response = self._call(
                        self._sns.create_topic,
                        "CreateTopic",
                        Name=self._topic,
                        Attributes={"FifoTopic": "true", "ContentBasedDeduplication": "false"},
                    )
                    self._topic_arn = str(response["TopicArn"])
                else:
                    account = self._account
                    if not account:
                        sts = aws.make_client("sts", self._options)
                        account = str(self._call(sts.get_caller_identity, "GetCallerIdentity")["Account"])
                    region = self._sns.meta.region_name
                    partition = "aws-cn" if region.startswith("cn-") else "aws"
                    self._topic_arn = f"arn:{partition}:sns:{region}:{account}:{self._topic}"
            return self._topic_arn

    def _queues(self, group: str, max_deliveries: int) -> tuple[str, str]:
        """The URLs of the group's queue and DLQ (created and subscribed when provisioning)."""
        queue, dead = queue_names(self._topic, group)
        if max_deliveries < 1:
            raise ValidationError("max_deliveries must be at least 1")
        if not self._provision:
            from botocore.exceptions import ClientError

            try:
                return (
                    str(self._call(self._sqs.get_queue_url, "GetQueueUrl", QueueName=queue)["QueueUrl"]),
                    str(self._call(self._sqs.get_queue_url, "GetQueueUrl", QueueName=dead)["QueueUrl"]),
                )
            except ConfigurationError as e:
                raise ConfigurationError(
                    f"consumer group {group!r}: queue {queue!r} or {dead!r} does not exist; add the group to "
                    "skyferry:aws.consumerGroups and run pulumi up (or use ?provision=true locally)"
                ) from e.__cause__
            except ClientError as e:  # pragma: no cover - unexpected codes
                raise ConfigurationError(f"consumer group {group!r}: {e}") from e
        fifo = {"FifoQueue": "true", "ContentBasedDeduplication": "false"}
        dead_url = str(self._call(self._sqs.create_queue, "CreateQueue", QueueName=dead, Attributes=fifo)["QueueUrl"])
        queue_url = str(self._call(self._sqs.create_queue, "CreateQueue", QueueName=queue, Attributes=fifo)["QueueUrl"])
        dead_arn = self._call(
            self._sqs.get_queue_attributes, "GetQueueAttributes", QueueUrl=dead_url, AttributeNames=["QueueArn"]
        )["Attributes"]["QueueArn"]
        queue_arn = self._call(
            self._sqs.get_queue_attributes, "GetQueueAttributes", QueueUrl=queue_url, AttributeNames=["QueueArn"]
        )["Attributes"]["QueueArn"]
        topic_arn = self._arn()
        policy = {
            "Version": "2012-10-17",
            "Statement": [
                {
                    "Effect": "Allow",
                    "Principal": {"Service": "sns.amazonaws.com"},
                    "Action": "sqs:SendMessage",
                    "Resource": queue_arn,
                    "Condition": {"ArnEquals": {"aws:SourceArn": topic_arn}},
                }
            ],
        }
        self._call(
            self._sqs.set_queue_attributes,
            "SetQueueAttributes",
            QueueUrl=queue_url,
            Attributes={
                "RedrivePolicy": json.dumps(
                    {"deadLetterTargetArn": dead_arn, "maxReceiveCount": redrive_receive_count(max_deliveries)}
                ),
                "Policy": json.dumps(policy),
            },
        )
        self._call(
            self._sns.subscribe,
            "Subscribe",
            TopicArn=topic_arn,
            Protocol="sqs",
            Endpoint=queue_arn,
            Attributes={"RawMessageDelivery": "true"},
            ReturnSubscriptionArn=True,
        )
        return queue_url, dead_url

    def publish(self, messages: Sequence[Message]) -> None:
        """``PublishBatch`` requests of up to 10 messages, ``inflight`` at once, in order per group
        (see the module docstring); failed entries retried."""
        if not messages:
            return
        topic_arn = self._arn()
        lanes = _lanes(self._entries(messages), self._inflight)
        if len(lanes) == 1:
            for batch in _batches(lanes[0]):
                self._publish_batch(topic_arn, batch)
            return
        pool: OrderedPool[None] = OrderedPool(len(lanes), name="skyferry-sns-publish")
        try:
            for n, lane in enumerate(lanes):
                for batch in _batches(lane):
                    pool.submit((str(n),), partial(self._publish_batch, topic_arn, batch))
            pool.drain()
        finally:
            pool.close()

    def publish_begin(self, messages: Sequence[Message]) -> Callable[[], None]:
        """Hand ``messages`` to the broker's pool of ``inflight`` requests and return at once.

        Each ``PublishBatch`` waits for the earlier ones holding one of its message groups,
        whichever call they came from, so each group keeps its order across calls.  After a
        failure the pool sends nothing more until every call begun so far has been waited
        for (its waiter raises :class:`~skyferry.core.inflight.NotRun` as a
        ``TransientError``): nothing of a group goes out ahead of a failed earlier batch.
        """
        if not messages:
            return nothing_to_wait_for
        topic_arn = self._arn()
        entries = self._entries(messages)
        with self._lock:
            if self._pipeline is None:
                self._pipeline = OrderedPool(self._inflight, name="skyferry-sns-pipeline")
            pool = self._pipeline
            if self._begun == 0:
                pool.restart()
            self._begun += 1
        waited = threading.Event()

        def done() -> None:
            if not waited.is_set():
                waited.set()
                with self._lock:
                    self._begun -= 1

        try:
            tasks = [
                pool.submit({e["MessageGroupId"] for e in batch}, partial(self._publish_batch, topic_arn, batch))
                for lane in _lanes(entries, self._inflight)
                for batch in _batches(lane)
            ]
        except BaseException:  # inflight=1 publishes as it submits: its failure is raised here
            done()
            raise

        def wait() -> None:
            try:
                pool.wait(tasks)
            except NotRun as e:
                raise TransientError(f"sns+sqs topic {self._topic!r}: not sent, an earlier publish failed") from e
            finally:
                done()

        return wait

    def _entries(self, messages: Sequence[Message]) -> list[dict[str, Any]]:
        entries = []
        for i, message in enumerate(messages):
            text, attributes = _encode(message)
            entries.append(
                {
                    "Id": str(i),
                    "Message": text,
                    "MessageGroupId": group_id(message.key),
                    "MessageDeduplicationId": dedup_id(message.id),
                    "MessageAttributes": attributes,
                }
            )
        return entries

    def _publish_batch(self, topic_arn: str, batch: list[dict[str, Any]]) -> None:
        """One ``PublishBatch`` request; failed entries resent (from the first failed one on, in order)."""
        pending = batch
        for attempt in range(1, self._options.attempts + 1):
            response = self._call(
                self._sns.publish_batch, "PublishBatch", TopicArn=topic_arn, PublishBatchRequestEntries=pending
            )
            failed = {f["Id"]: f for f in response.get("Failed", [])}
            if not failed:
                return
            senders = [f for f in failed.values() if f.get("SenderFault")]
            if senders:
                raise ValidationError(f"sns+sqs topic {self._topic!r} refused messages: {senders}")
            # keep order: resend from the first failed entry on
            first = min(i for i, e in enumerate(pending) if e["Id"] in failed)
            pending = pending[first:]
            time.sleep(aws.backoff(attempt))
        raise TransientError(f"sns+sqs topic {self._topic!r}: PublishBatch kept failing")

    def subscribe(self, group: str, handler: MessageHandler, *, max_deliveries: int = 5) -> SnsSqsSubscription:
        """Start a consumer thread on the group's queue (provisioned first when asked)."""
        subscription = SnsSqsSubscription(self, group, handler, max_deliveries)
        with self._lock:
            self._subscriptions.append(subscription)
        return subscription

    def dead_letters(self, group: str, limit: int = 100) -> list[Message]:
        """Receive from the group's DLQ, then make what was received visible again."""
        _, dead = queue_names(self._topic, group)
        try:
            url = str(self._call(self._sqs.get_queue_url, "GetQueueUrl", QueueName=dead)["QueueUrl"])
        except ConfigurationError as e:
            raise ConfigurationError(f"consumer group {group!r}: dead-letter queue {dead!r} does not exist") from e
        found: dict[str, tuple[Message, str]] = {}
        try:
            while len(found) < limit:
                response = self._call(
                    self._sqs.receive_message,
                    "ReceiveMessage",
                    QueueUrl=url,
                    MaxNumberOfMessages=min(10, limit - len(found)),
                    WaitTimeSeconds=0,
                    VisibilityTimeout=30,
                    AttributeNames=["All"],
                    MessageAttributeNames=["All"],
                )
                batch = response.get("Messages", [])
                fresh = [raw for raw in batch if raw["MessageId"] not in found]
                if not fresh:
                    break
                for raw in fresh:
                    found[raw["MessageId"]] = (_decode(raw), raw["ReceiptHandle"])
        finally:
            handles = [handle for _, handle in found.values()]
            for start in range(0, len(handles), 10):
                try:
                    self._sqs.change_message_visibility_batch(
                        QueueUrl=url,
                        Entries=[
                            {"Id": str(i), "ReceiptHandle": h, "VisibilityTimeout": 0}
                            for i, h in enumerate(handles[start : start + 10])
                        ],
                    )
                except Exception:
                    # the letters stay hidden for 30 s at most; reading them must not fail for it
                    log.warning("could not make dead letters of %r visible again", group, exc_info=True)
        return [message for message, _ in found.values()]

    def close(self) -> None:
        """Stop every subscription and the publishing pool."""
        with self._lock:
            subscriptions, self._subscriptions = self._subscriptions, []
            pipeline, self._pipeline = self._pipeline, None
        for subscription in subscriptions:
            subscription.close()
        if pipeline is not None:
            pipeline.close()
