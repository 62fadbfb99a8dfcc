"""The GCP rehearsal: the graph's Firestore database, Pub/Sub topics and subscriptions and bucket
on Google's emulators, its Cloud Run services and worker pools run as Cloud Run runs them, every
call checked.

* :func:`provision` creates, from the graph's inputs, every Pub/Sub topic (retention) and
  subscription (ordering, ack deadline, retention, dead-letter policy, retry policy, no
  expiry) on the Pub/Sub emulator, and the archive bucket on the storage emulator.  The
  Firestore emulator needs no database or index to be created; the graph's composite
  indexes and field exemptions are checked against every query instead
  (:func:`index_problem`), because the emulator answers queries a real database refuses.
* Cloud Run's part (:func:`run_workloads`): each container of a service, worker pool or
  job with its args and env, ``secretKeyRef`` resolved to the graph's secret version (and
  the service account must hold ``secretmanager.versions.access`` on it); a service's
  ``PORT`` set to its container port (8080 when none is declared) and its startup probe
  (Cloud Run's default: TCP on ``PORT``); a worker pool's declared probes on the port
  they name (it receives no requests and gets no ``PORT``); the liveness probes.
* The endpoints are implicit (the URLs name a project only): the Google SDKs' own
  ``FIRESTORE_EMULATOR_HOST``, ``PUBSUB_EMULATOR_HOST`` and ``STORAGE_EMULATOR_HOST`` point
  them at the emulators; the seam records every call with the service account the service
  runs as, and :func:`identity_problems` checks each against the roles the graph grants.
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from tests.rehearsal.permissions import GcpGrant, Need, firestore_needs, pubsub_needs, storage_needs
from tests.rehearsal.stack import Deployment
from tests.rehearsal.workloads import Probe, Workload, port_variables, probe_of

CLOUD_RUN_DEFAULT_PORT = 8080


def seconds(duration: str) -> int:
    """``"604800s"`` -> 604800."""
    return int(float(duration.rstrip("s")))


def _pubsub_clients(host: str) -> tuple[Any, Any]:
    import grpc
    from google.cloud import pubsub_v1
    from google.pubsub_v1.services.publisher.transports import PublisherGrpcTransport
    from google.pubsub_v1.services.subscriber.transports import SubscriberGrpcTransport

    publisher = pubsub_v1.PublisherClient(
        transport=PublisherGrpcTransport(channel=grpc.insecure_channel(host)), client_options={"api_endpoint": host}
    )
    subscriber = pubsub_v1.SubscriberClient(
        transport=SubscriberGrpcTransport(channel=grpc.insecure_channel(host)), client_options={"api_endpoint": host}
    )
    return publisher, subscriber


def subscription_request(node: Any) -> dict[str, Any]:
    """``CreateSubscription`` fields from the inputs of a Pulumi ``gcp.pubsub.Subscription``."""
    inputs = node.inputs
    request: dict[str, Any] = {"name": node.outputs["id"], "topic": inputs["topic"]}
    if "ackDeadlineSeconds" in inputs:
        request["ack_deadline_seconds"] = inputs["ackDeadlineSeconds"]
    if "messageRetentionDuration" in inputs:
        request["message_retention_duration"] = {"seconds": seconds(inputs["messageRetentionDuration"])}
    if inputs.get("enableMessageOrdering"):
        request["enable_message_ordering"] = True
    if inputs.get("deadLetterPolicy"):
        policy = inputs["deadLetterPolicy"]
        request["dead_letter_policy"] = {
            "dead_letter_topic": policy["deadLetterTopic"],
            "max_delivery_attempts": policy.get("maxDeliveryAttempts", 5),
        }
    if inputs.get("retryPolicy"):
        retry = inputs["retryPolicy"]
        request["retry_policy"] = {
            "minimum_backoff": {"seconds": seconds(retry.get("minimumBackoff", "10s"))},
            "maximum_backoff": {"seconds": seconds(retry.get("maximumBackoff", "600s"))},
        }
    if inputs.get("labels"):
        request["labels"] = inputs["labels"]
    return request


def provision(deployment: Deployment, pubsub_host: str, storage_endpoint: str) -> dict[str, Any]:
    """Create the graph's topics, subscriptions and bucket on the emulators; what was made."""
    from tests.services import gcs

    publisher, subscriber = _pubsub_clients(pubsub_host)
    made: dict[str, Any] = {"topics": [], "subscriptions": [], "buckets": []}
    for node in deployment.nodes("gcp:pubsub/topic:Topic"):
        request: dict[str, Any] = {"name": node.outputs["id"], "labels": node.inputs.get("labels", {})}
        if "messageRetentionDuration" in node.inputs:
            request["message_retention_duration"] = {"seconds": seconds(node.inputs["messageRetentionDuration"])}
        publisher.create_topic(request=request)
        made["topics"].append(node.outputs["id"])
    for node in deployment.nodes("gcp:pubsub/subscription:Subscription"):
        subscriber.create_subscription(request=subscription_request(node))
        made["subscriptions"].append(node.outputs["id"])
    client = gcs.client(storage_endpoint)
    for node in deployment.nodes("gcp:storage/bucket:Bucket"):
        bucket = client.bucket(node.inputs["name"])
        bucket.versioning_enabled = bool((node.inputs.get("versioning") or {}).get("enabled"))
        client.create_bucket(bucket, location=node.inputs.get("location"))
        made["buckets"].append(node.inputs["name"])
    publisher.transport.close()
    subscriber.close()
    return made


def remove(
    made: dict[str, Any], deployment: Deployment, pubsub_host: str, firestore_host: str, storage_endpoint: str
) -> None:
    """Delete what :func:`provision` made and the documents the workloads wrote (emulators are shared)."""
    import httpx

    from tests.services import gcs

    publisher, subscriber = _pubsub_clients(pubsub_host)
    for name in made.get("subscriptions", []):
        with contextlib.suppress(Exception):
            subscriber.delete_subscription(request={"subscription": name})
    for name in made.get("topics", []):
        with contextlib.suppress(Exception):
            publisher.delete_topic(request={"topic": name})
    publisher.transport.close()
    subscriber.close()
    client = gcs.client(storage_endpoint)
    for name in made.get("buckets", []):
        with contextlib.suppress(Exception):
            for blob in client.list_blobs(name, versions=True):
                blob.delete()
            client.bucket(name).delete()
    for database in deployment.nodes("gcp:firestore/database:Database"):
        with contextlib.suppress(httpx.HTTPError):
            httpx.delete(f"http://{firestore_host}/emulator/v1/{database.outputs['id']}/documents", timeout=30)


#: Cloud Run's resources that run containers: their template (where the containers are) and kind.
RUN_RESOURCES: dict[str, str] = {
    "gcp:cloudrunv2/service:Service": "service",
    "gcp:cloudrunv2/workerPool:WorkerPool": "worker pool",
    "gcp:cloudrunv2/job:Job": "job",
}


def run_workloads(deployment: Deployment) -> dict[str, Workload]:
    """Every container of every Cloud Run service, worker pool and job, as Cloud Run would start it.

    A service's container gets ``PORT`` (its container port, 8080 when none is declared) and
    Cloud Run's default TCP startup probe on it unless it declares one.  A worker pool
    receives no requests: no port, no ``PORT``, no default probe; the probes it declares
    name their port.  Each instance's filesystem is its own, in memory: a ``/tmp`` of its own.
    """
    versions = {
        str(n.inputs["secret"]).rsplit("/", 1)[-1]: n.inputs["secretData"]
        for n in deployment.nodes("gcp:secretmanager/secretVersion:SecretVersion")
    }
    workloads: dict[str, Workload] = {}
    for typ, kind in RUN_RESOURCES.items():
        for node in deployment.nodes(typ):
            resource = node.inputs["name"]
            template = node.inputs["template"]["template"] if kind == "job" else node.inputs["template"]
            for index, container in enumerate(template["containers"]):
                env, secret_env = _env(container, versions)
                port = (
                    int((container.get("ports") or {}).get("containerPort", CLOUD_RUN_DEFAULT_PORT))
                    if kind == "service"
                    else None
                )
                probes = _probes(container, port) if kind != "job" else []
                name = f"run:{resource}" + (f"/{index}" if index else "")
                workloads[name] = Workload(
                    name=name,
                    platform=f"Cloud Run {kind} {resource}",
                    kind="job" if kind == "job" else "service",
                    entrypoint=tuple(container["commands"]) if container.get("commands") else None,
                    args=tuple(container.get("args") or ()),
                    env=env,
                    secret_env=secret_env,
                    ports=(port,) if port is not None else (),
                    probes=probes,
                    volumes={"/tmp": f"run:{resource}:{index}:tmp"},
                    identity=template.get("serviceAccount", ""),
                    platform_env=_platform_env(kind, resource, port),
                    port_variables={
                        **port_variables(env, [port] if port is not None else [], probes),
                        **({"PORT": port} if port is not None else {}),
                    },
                )
    return workloads


def _env(container: dict[str, Any], versions: dict[str, str]) -> tuple[dict[str, str], dict[str, str]]:
    """A container's environment (``secretKeyRef`` resolved to the graph's version) and its secret references."""
    env: dict[str, str] = {}
    secret_env: dict[str, str] = {}
    for variable in container.get("envs", []):
        if "value" in variable:
            env[variable["name"]] = str(variable["value"])
            continue
        reference = variable["valueSource"]["secretKeyRef"]
        secret_env[variable["name"]] = f"secret {reference['secret']} version {reference.get('version', 'latest')}"
        if reference["secret"] in versions:  # Cloud Run refuses the revision otherwise
            env[variable["name"]] = versions[reference["secret"]]
    return env, secret_env


def _platform_env(kind: str, resource: str, port: int | None) -> dict[str, str]:
    """What Cloud Run sets in the container (its runtime contract); a worker pool gets no ``PORT``."""
    if kind == "service":
        return {
            "PORT": str(port),
            "K_SERVICE": resource,
            "K_REVISION": f"{resource}-00001-rhs",
            "K_CONFIGURATION": resource,
        }
    if kind == "job":
        return {"CLOUD_RUN_JOB": resource}
    return {}


def _probes(container: dict[str, Any], port: int | None) -> list[Probe]:
    probes = []
    for purpose in ("startup", "liveness"):
        spec = container.get(f"{purpose}Probe")
        if spec is None:
            if purpose == "startup" and port is not None:  # a service's default startup probe
                probes.append(
                    Probe("tcp", "startup", port=port, source="Cloud Run's default startup probe (TCP on PORT)")
                )
            continue
        probe = probe_of(purpose, spec, f"{purpose}Probe", default_port=port)
        if probe is not None:
            probes.append(probe)
    return probes


# -- identity -----------------------------------------------------------------------------------


def grants(deployment: Deployment) -> list[GcpGrant]:
    """Every IAM binding the graph declares, on its full resource name."""
    found: list[GcpGrant] = []
    for node in deployment.nodes("gcp:projects/iAMMember:IAMMember"):
        condition = (node.inputs.get("condition") or {}).get("expression", "")
        found.append(
            GcpGrant(node.inputs["member"], node.inputs["role"], f"projects/{node.inputs['project']}", condition)
        )
    for node in deployment.nodes("gcp:pubsub/topicIAMMember:TopicIAMMember"):
        found.append(
            GcpGrant(
                node.inputs["member"],
                node.inputs["role"],
                f"projects/{node.inputs['project']}/topics/{node.inputs['topic']}",
            )
        )
    for node in deployment.nodes("gcp:pubsub/subscriptionIAMMember:SubscriptionIAMMember"):
        resource = f"projects/{node.inputs['project']}/subscriptions/{node.inputs['subscription']}"
        found.append(GcpGrant(node.inputs["member"], node.inputs["role"], resource))
    for node in deployment.nodes("gcp:storage/bucketIAMMember:BucketIAMMember"):
        found.append(
            GcpGrant(node.inputs["member"], node.inputs["role"], f"projects/_/buckets/{node.inputs['bucket']}")
        )
    for node in deployment.nodes("gcp:secretmanager/secretIamMember:SecretIamMember"):
        resource = f"projects/{node.inputs['project']}/secrets/{node.inputs['secretId']}"
        found.append(GcpGrant(node.inputs["member"], node.inputs["role"], resource))
    return found


def needs_of(call: dict[str, Any]) -> list[Need]:
    """The permissions one recorded call needs."""
    if call["kind"] == "grpc":
        method = call["method"]
        if method.startswith("/google.firestore.v1.Firestore/"):
            return firestore_needs(method, call["request"])
        if method.startswith("/google.pubsub.v1."):
            return pubsub_needs(method, call["request"])
        return [Need(f"(unknown gRPC method {method})", "", method)]
    if call["kind"] == "http":
        return storage_needs(call["method"], call["path"], call.get("query", ""))
    return []


def identity_problems(
    calls: Iterable[dict[str, Any]], granted: list[GcpGrant]
) -> tuple[list[tuple[dict[str, Any], Need]], list[str]]:
    """Check every call against the grants of its caller: ``(checked (call, need) pairs, problems)``."""
    checked: list[tuple[dict[str, Any], Need]] = []
    problems: list[str] = []
    for call in calls:
        member = f"serviceAccount:{call['identity']}"
        for need in needs_of(call):
            checked.append((call, need))
            if not any(g.member == member and g.covers(need) for g in granted):
                problems.append(
                    f"{call['workload']} as {member}: {need.call} needs {need.permission} on {need.resource!r}: "
                    "no role of the graph grants it"
                )
    return checked, problems


# -- Firestore queries against the graph's indexes ---------------------------------------------------

_EQUALITY = {"EQUAL", "IN", "ARRAY_CONTAINS", "ARRAY_CONTAINS_ANY"}
_RANGE = {"LESS_THAN", "LESS_THAN_OR_EQUAL", "GREATER_THAN", "GREATER_THAN_OR_EQUAL", "NOT_EQUAL", "NOT_IN"}


def _filters(where: dict[str, Any]) -> list[tuple[str, str]]:
    if "field_filter" in where:
        return [(where["field_filter"]["field"]["field_path"], where["field_filter"]["op"])]
    if "unary_filter" in where:
        return [(where["unary_filter"]["field"]["field_path"], "EQUAL")]
    if "composite_filter" in where:
        return [f for sub in where["composite_filter"].get("filters", []) for f in _filters(sub)]
    return []


def index_problem(query: dict[str, Any], indexes: list[dict[str, Any]], exempt: set[tuple[str, str]]) -> str | None:
    """Why Firestore would refuse ``query`` (a structured query) with only the graph's indexes, or None.

    Automatic single-field indexes serve a query on one field, equality filters on several
    (index merging) and ordering by document name; anything else needs a composite index
    whose fields are the equality fields, then the order.  A field exempt from indexing
    serves no query at all.
    """
    source = (query.get("from") or query.get("from_"))[0]
    collection = source["collection_id"]
    scope = "COLLECTION_GROUP" if source.get("all_descendants") else "COLLECTION"
    filters = _filters(query.get("where") or {})
    equality = {f for f, op in filters if op in _EQUALITY}
    ranges = {f for f, op in filters if op in _RANGE} - {"__name__"}
    orders = [(o["field"]["field_path"], o.get("direction", "ASCENDING")) for o in query.get("order_by", [])]
    used = equality | ranges | {f for f, _ in orders}
    blocked = sorted(f for f in used if (collection, f) in exempt)
    if blocked:
        return f"{collection}: the query uses {blocked}, exempt from indexing by the graph"
    if ranges and not orders:
        orders = [(sorted(ranges)[0], "ASCENDING")]
    ordered = [(f, d) for f, d in orders if f != "__name__"]
    single = (not ordered and len(ranges) <= 1 and not (ranges and equality)) or (
        not equality and len(ordered) == 1 and ranges <= {ordered[0][0]}
    )
    if single:
        return None
    prefix = equality - {f for f, _ in ordered}
    for index in indexes:
        if index["collection"] != collection or index.get("queryScope", "COLLECTION") != scope:
            continue
        fields = [
            (f["fieldPath"], f.get("order", "ASCENDING")) for f in index["fields"] if f["fieldPath"] != "__name__"
        ]
        head, tail = fields[: len(prefix)], fields[len(prefix) :]
        if {f for f, _ in head} == prefix and tail == ordered:
            return None
    return (
        f"{collection}: equality on {sorted(equality)}, range on {sorted(ranges)}, order {ordered}: "
        "no composite index in the graph serves it"
    )


def query_problems(calls: Iterable[dict[str, Any]], deployment: Deployment) -> tuple[int, list[str]]:
    """Check every recorded Firestore query against the graph's indexes: ``(queries, problems)``."""
    indexes = [n.inputs for n in deployment.nodes("gcp:firestore/index:Index")]
    exempt = {
        (n.inputs["collection"], n.inputs["field"])
        for n in deployment.nodes("gcp:firestore/field:Field")
        if n.inputs.get("indexConfig") == {}
    }
    count, problems = 0, []
    seen: set[str] = set()
    for call in calls:
        if call["kind"] != "grpc" or not call["method"].endswith("/RunQuery"):
            continue
        query = call["request"].get("structured_query")
        if query is None:
            continue
        count += 1
        problem = index_problem(query, indexes, exempt)
        if problem and problem not in seen:
            seen.add(problem)
            problems.append(f"{call['workload']}: {problem}\n  {json.dumps(query)[:400]}")
    return count, problems


def seam_config(path: Path, log: Path, workload: Workload, storage_endpoint: str) -> None:
    """Write the seam's config for one Cloud Run workload."""
    host = re.sub(r"^https?://", "", storage_endpoint)
    path.write_text(
        json.dumps(
            {
                "log": str(log),
                "workload": workload.name,
                "identity": workload.identity,
                "grpc": True,
                "http_hosts": [host],
            }
        )
    )
