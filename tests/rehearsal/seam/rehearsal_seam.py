"""The rehearsal's seam inside a workload process: record every cloud call, reach the emulators.

Installed by ``sitecustomize`` when ``SKYFERRY_REHEARSAL_SEAM`` names a JSON config (the
rehearsal writes one per workload).  It hooks modules *after* they are imported (a
``sys.meta_path`` finder wraps their loader), so a process that never imports an SDK pays
nothing.  Each hook appends JSON lines to the config's ``log``: ``workload``, ``pid``,
``identity`` and what was called.  What is hooked, by config section:

``grpc``
    ``grpc.insecure_channel`` (what the Google SDKs open on ``*_EMULATOR_HOST``) returns a
    channel with a recording interceptor: every RPC's full method name and a summary of its
    request (Firestore: database, documents, writes with their preconditions, structured
    queries; Pub/Sub: topic, subscription, message count).
``http_hosts``
    ``google.auth.transport.requests.AuthorizedSession.request`` (the Cloud Storage client's
    transport): method, path and query of every request to those hosts, and the status.
``azure``
    ``azure.core``'s ``RequestsTransport.send`` (every Azure SDK's HTTP): method, path,
    query, the Cosmos DB headers that name the operation, a batch's operation types, the
    status and ``x-ms-item-count``.  ``CosmosClient`` and ``ContainerClient`` built for an
    account of the config are pointed at its emulator with the emulator's key (the cloud
    endpoint is implicit in the account name, and no emulator accepts Entra ID tokens);
    the identity recorded is the one ``DefaultAzureCredential`` would use
    (``AZURE_CLIENT_ID``).  ``azure.servicebus.ServiceBusClient`` and
    ``ServiceBusAdministrationClient`` become the in-memory fake of
    ``tests/services/servicebus_fake.py`` holding the topics and subscriptions of the
    config (the graph's), and record each sender, receiver and management call.
``dns``
    ``socket.getaddrinfo`` answers the config's names (in-cluster Service names) with the
    config's addresses, as the cluster's DNS would.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.abc
import json
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

_config: dict[str, Any] = {}
_lock = threading.Lock()


def record(kind: str, **fields: Any) -> None:
    """Append one call to the log."""
    identity = _config.get("identity") or os.environ.get("AZURE_CLIENT_ID", "")
    line = {"t": time.time(), "workload": _config.get("workload"), "pid": os.getpid(), "identity": identity}
    line.update(kind=kind, **fields)
    with _lock, open(_config["log"], "a") as f:
        f.write(json.dumps(line, default=str) + "\n")


class _AfterImport(importlib.abc.MetaPathFinder):
    """Runs a hook right after a watched module has executed (a post-import hook)."""

    def __init__(self, hooks: dict[str, Callable[[Any], None]]) -> None:
        self.hooks = hooks

    def find_spec(self, name: str, path: Any, target: Any = None) -> Any:
        hook = self.hooks.get(name)
        if hook is None:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(name, path, target)
            if spec is not None:
                break
        else:
            return None
        loader = spec.loader
        original = loader.exec_module
        del self.hooks[name]

        def exec_module(module: Any) -> None:
            original(module)
            hook(module)

        loader.exec_module = exec_module
        return spec


# -- Google: gRPC and the storage client's HTTP ------------------------------------------------


def _message(request: Any) -> dict[str, Any]:
    from google.protobuf import json_format

    raw = type(request).pb(request) if hasattr(type(request), "pb") else request
    try:
        result: dict[str, Any] = json_format.MessageToDict(raw, preserving_proto_field_name=True)
    except Exception:  # not a protobuf message
        return {}
    return result


def _summary(method: str, request: Any) -> dict[str, Any]:
    """What the checks need of a request (documents' data and messages' payloads left out)."""
    body = _message(request)
    summary: dict[str, Any] = {}
    for key in ("database", "parent", "name", "topic", "subscription", "transaction"):
        if key in body:
            summary[key] = body[key]
    if "documents" in body:
        summary["documents"] = body["documents"]
    if "writes" in body:
        summary["writes"] = [
            {
                "kind": "delete" if "delete" in w else "update" if "update" in w else "transform",
                "document": w.get("delete")
                or (w.get("update") or {}).get("name")
                or (w.get("transform") or {}).get("document"),
                "exists": (w.get("current_document") or {}).get("exists"),
            }
            for w in body["writes"]
        ]
    if "structured_query" in body:
        summary["structured_query"] = body["structured_query"]
    if "messages" in body:
        summary["messages"] = len(body["messages"])
    if "ack_ids" in body:
        summary["ack_ids"] = len(body["ack_ids"])
    return summary


def _grpc_hook(grpc: Any) -> None:
    class Recorder(
        grpc.UnaryUnaryClientInterceptor,
        grpc.UnaryStreamClientInterceptor,
        grpc.StreamUnaryClientInterceptor,
        grpc.StreamStreamClientInterceptor,
    ):
        def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
            record("grpc", method=details.method, request=_summary(details.method, request))
            return continuation(details, request)

        intercept_unary_stream = intercept_unary_unary

        def _tap(self, method: str, requests: Iterator[Any]) -> Iterator[Any]:
            first: dict[str, Any] = {}
            for request in requests:
                summary = _summary(method, request)
                first = first or summary
                record("grpc", method=method, request={**first, **summary}, streamed=True)
                yield request

        def intercept_stream_unary(self, continuation: Any, details: Any, requests: Any) -> Any:
            return continuation(details, self._tap(details.method, requests))

        intercept_stream_stream = intercept_stream_unary

    original = grpc.insecure_channel

    def insecure_channel(target: str, *args: Any, **kwargs: Any) -> Any:
        return grpc.intercept_channel(original(target, *args, **kwargs), Recorder())

    grpc.insecure_channel = insecure_channel


def _google_http_hook(module: Any) -> None:
    hosts = set(_config.get("http_hosts") or [])
    original = module.AuthorizedSession.request

    def request(self: Any, method: str, url: str, *args: Any, **kwargs: Any) -> Any:
        response = original(self, method, url, *args, **kwargs)
        parts = urlsplit(url)
        if parts.netloc in hosts:
            record("http", method=method.upper(), path=parts.path, query=parts.query, status=response.status_code)
        return response

    module.AuthorizedSession.request = request


# -- Azure -------------------------------------------------------------------------------------

_COSMOS_HEADERS = (
    "x-ms-documentdb-isquery",
    "x-ms-cosmos-is-batch-request",
    "x-ms-documentdb-is-upsert",
    "a-im",
    "x-ms-documentdb-query-iscontinuationexpected",
)


def _azure_transport_hook(module: Any) -> None:
    original = module.RequestsTransport.send

    def send(self: Any, request: Any, **kwargs: Any) -> Any:
        response = original(self, request, **kwargs)
        parts = urlsplit(request.url)
        headers = {k.lower(): v for k, v in request.headers.items()}
        entry: dict[str, Any] = {
            "method": request.method,
            "host": parts.netloc,
            "path": parts.path,
            "query": parts.query,
            "headers": {h: headers[h] for h in _COSMOS_HEADERS if h in headers},
            "status": response.status_code,
            "item_count": response.headers.get("x-ms-item-count"),
        }
        body = getattr(request, "body", None) or getattr(request, "data", None)
        if headers.get("x-ms-cosmos-is-batch-request", "").lower() == "true" and body:
            try:
                entry["batch"] = [op.get("operationType") for op in json.loads(body)]
            except (TypeError, ValueError):
                entry["batch"] = ["unreadable"]
        if headers.get("x-ms-documentdb-isquery", "").lower() == "true" and body:
            with contextlib.suppress(TypeError, ValueError, AttributeError):
                entry["sql"] = json.loads(body).get("query")
        record("azure-http", **entry)
        return response

    module.RequestsTransport.send = send


def _cosmos_hook(module: Any) -> None:
    accounts = _config["azure"].get("cosmos", {})
    original = module.CosmosClient.__init__

    def init(self: Any, url: str, credential: Any, *args: Any, **kwargs: Any) -> None:
        account = (urlsplit(url).hostname or "").split(".")[0]
        emulator = accounts.get(account)
        if emulator is not None:
            record("redirect", service="cosmos", account=account, credential=type(credential).__name__)
            url, credential = emulator["endpoint"], emulator["key"]
            kwargs["connection_verify"] = False
        original(self, url, credential, *args, **kwargs)

    module.CosmosClient.__init__ = init


def _blob_hook(module: Any) -> None:
    accounts = _config["azure"].get("blob", {})
    original = module.ContainerClient.__init__

    def init(self: Any, account_url: str, container_name: str, credential: Any = None, **kwargs: Any) -> None:
        account = (urlsplit(account_url).hostname or "").split(".")[0]
        emulator = accounts.get(account)
        if emulator is not None:
            record("redirect", service="blob", account=account, credential=type(credential).__name__)
            account_url = emulator["endpoint"]
            credential = {"account_name": account, "account_key": emulator["key"]}
        original(self, account_url, container_name, credential=credential, **kwargs)

    module.ContainerClient.__init__ = init


_namespaces: dict[str, Any] = {}


def _fake() -> Any:
    """``tests/services/servicebus_fake.py``, imported as a module of its own (``install`` puts its
    folder on the path): the image holds no pytest, which the ``tests.services`` package imports,
    and the fake itself needs only the Service Bus SDK."""
    return importlib.import_module("servicebus_fake")


def _namespace(host: str) -> Any:
    """The fake namespace of ``host`` with the config's topics and subscriptions (built once)."""
    name = host.split(".")[0]
    with _lock:
        if name not in _namespaces:
            fake = _fake()
            spec = _config["azure"]["servicebus"].get(name)
            if spec is None:
                raise RuntimeError(f"the rehearsal has no Service Bus namespace {name!r}")
            namespace = fake.FakeNamespace()
            admin = fake.FakeAdministrationClient(namespace)
            for topic, settings in spec["topics"].items():
                namespace.create_topic(topic, float(settings["duplicate_window"]))
                for subscription, options in settings["subscriptions"].items():
                    admin.create_subscription(
                        topic,
                        subscription,
                        requires_session=bool(options["requires_session"]),
                        max_delivery_count=int(options["max_delivery_count"]),
                    )
            _namespaces[name] = namespace
        return _namespaces[name]


def _servicebus_hook(module: Any) -> None:
    class RecordingClient:
        """``ServiceBusClient`` on the fake namespace, recording each entity it opens."""

        def __init__(self, fully_qualified_namespace: str, credential: Any, **kwargs: Any) -> None:
            self.namespace = fully_qualified_namespace.split(".")[0]
            self._client = _fake().FakeServiceBusClient(_namespace(fully_qualified_namespace))

        def get_topic_sender(self, topic_name: str, **kwargs: Any) -> Any:
            record("servicebus", namespace=self.namespace, operation="send", topic=topic_name)
            return self._client.get_topic_sender(topic_name)

        def get_subscription_receiver(self, topic_name: str, subscription_name: str, **kwargs: Any) -> Any:
            entry = {"namespace": self.namespace, "operation": "receive", "topic": topic_name}
            entry.update(subscription=subscription_name, dead_letter=kwargs.get("sub_queue") is not None)
            try:
                receiver = self._client.get_subscription_receiver(topic_name, subscription_name, **kwargs)
            except Exception as e:
                record("servicebus", **entry, error=repr(e))
                raise
            record("servicebus", **entry)
            return receiver

        def close(self) -> None:
            self._client.close()

    module.ServiceBusClient = RecordingClient


def _servicebus_admin_hook(module: Any) -> None:
    class RecordingAdmin:
        """``ServiceBusAdministrationClient`` on the fake namespace, recording each call."""

        def __init__(self, fully_qualified_namespace: str, credential: Any, **kwargs: Any) -> None:
            self.namespace = fully_qualified_namespace.split(".")[0]
            self._admin = _fake().FakeAdministrationClient(_namespace(fully_qualified_namespace))

        def get_subscription(self, topic_name: str, subscription_name: str, **kwargs: Any) -> Any:
            record(
                "servicebus",
                namespace=self.namespace,
                operation="get-subscription",
                topic=topic_name,
                subscription=subscription_name,
            )
            return self._admin.get_subscription(topic_name, subscription_name)

        def create_subscription(self, topic_name: str, subscription_name: str, **kwargs: Any) -> Any:
            record(
                "servicebus",
                namespace=self.namespace,
                operation="create-subscription",
                topic=topic_name,
                subscription=subscription_name,
            )
            return self._admin.create_subscription(topic_name, subscription_name, **kwargs)

    module.ServiceBusAdministrationClient = RecordingAdmin


# -- cluster DNS -------------------------------------------------------------------------------


def _dns(names: dict[str, str]) -> None:
    import socket

    original = socket.getaddrinfo

    def getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
        if isinstance(host, bytes):
            host = host.decode()
        return original(names.get(host, host), *args, **kwargs)

    socket.getaddrinfo = getaddrinfo


def install(path: str) -> None:
    """Read the config at ``path`` and install its hooks (see the module docstring)."""
    with open(path) as f:
        _config.update(json.load(f))
    hooks: dict[str, Callable[[Any], None]] = {}
    if _config.get("grpc"):
        hooks["grpc"] = _grpc_hook
    if _config.get("http_hosts"):
        hooks["google.auth.transport.requests"] = _google_http_hook
    if _config.get("azure"):
        sys.path.append(str(Path(_config["azure"]["repo"]) / "tests" / "services"))  # the Service Bus fake
        hooks["azure.core.pipeline.transport._requests_basic"] = _azure_transport_hook
        hooks["azure.cosmos.cosmos_client"] = _cosmos_hook
        hooks["azure.storage.blob._container_client"] = _blob_hook
        hooks["azure.servicebus"] = _servicebus_hook
        hooks["azure.servicebus.management"] = _servicebus_admin_hook
    if _config.get("dns"):
        _dns(_config["dns"])
    sys.meta_path.insert(0, _AfterImport(hooks))
    record("start", argv=sys.argv)
