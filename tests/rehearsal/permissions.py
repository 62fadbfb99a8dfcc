"""What each recorded call needs, and what each role grants: the identity checks of GCP and Azure.

No emulator of Google Cloud or Azure enforces IAM, so the rehearsal records every call at
the SDK seam (``tests/rehearsal/seam/rehearsal_seam.py``) and checks it here against the
roles the graph grants to the workload's identity, on the resource the call touches.

The tables are written from the clouds' official references, by their public names:

* Google Cloud, "IAM roles and permissions" reference, pages *Firestore roles*,
  *Pub/Sub roles*, *Cloud Storage roles* and *Secret Manager roles* (the predefined roles);
  Firestore's *Security for server client libraries* ("Required permissions for API
  methods"); Pub/Sub's *Access control with IAM* (permissions per method); Cloud Storage's
  *IAM permissions for JSON methods*.
* Azure, "Azure built-in roles" (the Actions and DataActions of *Storage Blob Data
  Contributor*, *Azure Service Bus Data Sender*, *Azure Service Bus Data Receiver*,
  *AcrPull*, *Key Vault Secrets User*); Azure Cosmos DB for NoSQL *data plane role-based access
  control* (the built-in *Cosmos DB Built-in Data Contributor* and its data actions);
  Azure Storage *Authorize with Microsoft Entra ID* ("Permissions for calling data
  operations").

Only the permissions that matter to skyferry's calls are listed for a role (a role grants
more); a call whose permission is not in the role's row is refused, which errs on the
side of a failing rehearsal.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, unquote

# -- Google Cloud ---------------------------------------------------------------------------------

GCP_ROLES: dict[str, frozenset[str]] = {
    # Firestore roles: Cloud Datastore User
    "roles/datastore.user": frozenset(
        {
            "appengine.applications.get",
            "datastore.databases.get",
            "datastore.databases.getMetadata",
            "datastore.entities.allocateIds",
            "datastore.entities.create",
            "datastore.entities.delete",
            "datastore.entities.get",
            "datastore.entities.list",
            "datastore.entities.update",
            "datastore.indexes.list",
            "datastore.namespaces.get",
            "datastore.namespaces.list",
            "datastore.statistics.get",
            "datastore.statistics.list",
            "resourcemanager.projects.get",
            "resourcemanager.projects.list",
        }
    ),
    # Pub/Sub roles: Pub/Sub Publisher, Pub/Sub Subscriber, Pub/Sub Viewer
    "roles/pubsub.publisher": frozenset({"pubsub.topics.publish"}),
    "roles/pubsub.subscriber": frozenset(
        {"pubsub.snapshots.seek", "pubsub.subscriptions.consume", "pubsub.topics.attachSubscription"}
    ),
    "roles/pubsub.viewer": frozenset(
        {
            "pubsub.schemas.get",
            "pubsub.schemas.list",
            "pubsub.snapshots.get",
            "pubsub.snapshots.list",
            "pubsub.subscriptions.get",
            "pubsub.subscriptions.list",
            "pubsub.topics.get",
            "pubsub.topics.list",
            "resourcemanager.projects.get",
        }
    ),
    # Cloud Storage roles: Storage Object User, Storage Legacy Bucket Reader
    "roles/storage.objectUser": frozenset(
        {
            "storage.multipartUploads.abort",
            "storage.multipartUploads.create",
            "storage.multipartUploads.list",
            "storage.multipartUploads.listParts",
            "storage.objects.create",
            "storage.objects.delete",
            "storage.objects.get",
            "storage.objects.list",
            "storage.objects.restore",
            "storage.objects.update",
            "resourcemanager.projects.get",
            "resourcemanager.projects.list",
        }
    ),
    "roles/storage.legacyBucketReader": frozenset({"storage.buckets.get", "storage.objects.list"}),
    # Secret Manager roles: Secret Manager Secret Accessor
    "roles/secretmanager.secretAccessor": frozenset({"secretmanager.versions.access"}),
}

#: Firestore (``google.firestore.v1.Firestore``) method -> permissions (Firestore's "Required
#: permissions for API methods"); ``Commit`` and ``BatchWrite`` depend on each write.
FIRESTORE_METHODS: dict[str, tuple[str, ...]] = {
    "BatchGetDocuments": ("datastore.entities.get",),
    "BeginTransaction": ("datastore.databases.get",),
    "Rollback": ("datastore.databases.get",),
    "GetDocument": ("datastore.entities.get",),
    "ListDocuments": ("datastore.entities.get", "datastore.entities.list"),
    "ListCollectionIds": ("datastore.entities.list",),
    "RunQuery": ("datastore.entities.get", "datastore.entities.list"),
    "RunAggregationQuery": ("datastore.entities.get", "datastore.entities.list"),
    "PartitionQuery": ("datastore.entities.get", "datastore.entities.list"),
    "CreateDocument": ("datastore.entities.create",),
    "UpdateDocument": ("datastore.entities.update",),
    "DeleteDocument": ("datastore.entities.delete",),
    "Listen": ("datastore.entities.get", "datastore.entities.list"),
}

#: Pub/Sub method -> (permission, the request field naming the resource it is checked on).
PUBSUB_METHODS: dict[str, tuple[tuple[str, str], ...]] = {
    "Publish": (("pubsub.topics.publish", "topic"),),
    "GetTopic": (("pubsub.topics.get", "topic"),),
    "CreateTopic": (("pubsub.topics.create", "project"),),
    "GetSubscription": (("pubsub.subscriptions.get", "subscription"),),
    "CreateSubscription": (("pubsub.subscriptions.create", "project"), ("pubsub.topics.attachSubscription", "topic")),
    "Pull": (("pubsub.subscriptions.consume", "subscription"),),
    "StreamingPull": (("pubsub.subscriptions.consume", "subscription"),),
    "Acknowledge": (("pubsub.subscriptions.consume", "subscription"),),
    "ModifyAckDeadline": (("pubsub.subscriptions.consume", "subscription"),),
}


@dataclass(frozen=True)
class Need:
    """One permission a call needs, on one resource (full resource name)."""

    permission: str
    resource: str
    call: str


def firestore_needs(method: str, request: dict[str, Any]) -> list[Need]:
    """What one Firestore RPC needs, on its database (``projects/P/databases/D``)."""
    name = method.rsplit("/", 1)[-1]
    path = request.get("database") or request.get("parent") or request.get("name") or ""
    if not path and request.get("documents"):
        path = request["documents"][0]
    database = "/".join(str(path).split("/")[:4])
    if name in {"Commit", "BatchWrite", "Write"}:
        needs = []
        for write in request.get("writes", []):
            if write["kind"] == "delete":
                needs.append("datastore.entities.delete")
            elif write.get("exists") is False:
                needs.append("datastore.entities.create")
            elif write.get("exists") is True:
                needs.append("datastore.entities.update")
            else:  # no precondition: it may create or update
                needs += ["datastore.entities.create", "datastore.entities.update"]
        return [Need(p, database, name) for p in sorted(set(needs) or {"datastore.databases.get"})]
    permissions = FIRESTORE_METHODS.get(name, (f"(unknown Firestore method {name})",))
    return [Need(p, database, name) for p in permissions]


def pubsub_needs(method: str, request: dict[str, Any]) -> list[Need]:
    """What one Pub/Sub RPC needs, on its topic, subscription or project."""
    name = method.rsplit("/", 1)[-1]
    found = []
    for permission, field in PUBSUB_METHODS.get(name, ((f"(unknown Pub/Sub method {name})", "name"),)):
        resource = str(request.get(field) or request.get("name") or "")
        if field == "project":
            resource = "/".join(str(request.get("name", "")).split("/")[:2])
        found.append(Need(permission, resource, name))
    return found


def storage_needs(method: str, path: str, query: str) -> list[Need]:
    """What one Cloud Storage JSON API request needs, on its bucket (``projects/_/buckets/B``)."""
    parts = [unquote(p) for p in path.split("/") if p]
    if "b" not in parts:
        return [Need(f"(unknown Cloud Storage request {method} {path})", "", "http")]
    bucket = parts[parts.index("b") + 1]
    resource = f"projects/_/buckets/{bucket}"
    objects = parts[parts.index("b") + 2 :]
    params = parse_qs(query)
    if not objects:
        call = "buckets.get"
        return [Need("storage.buckets.get", resource, call)]
    if len(objects) == 1:  # .../b/B/o: list, or an upload
        if method == "GET":
            return [Need("storage.objects.list", resource, "objects.list")]
        if "upload" in parts or method == "POST":
            # objects.insert; replacing an existing object also needs delete (not knowable here: both)
            needs = [Need("storage.objects.create", resource, "objects.insert")]
            if params.get("ifGenerationMatch", [""])[0] != "0":
                needs.append(Need("storage.objects.delete", resource, "objects.insert (overwrite)"))
            return needs
    if method in {"GET", "HEAD"}:
        return [Need("storage.objects.get", resource, "objects.get")]
    if method == "DELETE":
        return [Need("storage.objects.delete", resource, "objects.delete")]
    if method in {"PUT", "POST"}:  # resumable upload chunks, compose, rewrite
        return [Need("storage.objects.create", resource, "objects.insert")]
    return [Need(f"(unknown Cloud Storage request {method} {path})", resource, "http")]


@dataclass(frozen=True)
class GcpGrant:
    """A role bound to a member on a resource, with an optional condition (``resource.name == "…"``)."""

    member: str
    role: str
    resource: str
    condition: str = ""

    def covers(self, need: Need) -> bool:
        """Whether this binding grants ``need`` (the resource, its condition, the role's permissions)."""
        if need.permission not in GCP_ROLES.get(self.role, frozenset()):
            return False
        if not (need.resource == self.resource or need.resource.startswith(self.resource + "/")):
            return False
        if self.condition:
            expected = self.condition.split("==", 1)[1].strip().strip('"')
            return need.resource == expected
        return True


# -- Azure ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AzureRole:
    """A built-in role's Actions and DataActions (wildcards as Azure writes them)."""

    actions: tuple[str, ...] = ()
    data_actions: tuple[str, ...] = ()

    def allows(self, operation: str, data: bool) -> bool:
        """Whether ``operation`` is among the role's (data) actions."""
        patterns = self.data_actions if data else self.actions
        return any(fnmatch.fnmatchcase(operation.lower(), p.lower()) for p in patterns)


#: Azure built-in roles, by role definition id (the ids ``providers/azure`` assigns).
AZURE_ROLES: dict[str, tuple[str, AzureRole]] = {
    "ba92f5b4-2d11-453d-a403-e96b0029c9fe": (
        "Storage Blob Data Contributor",
        AzureRole(
            actions=(
                "Microsoft.Storage/storageAccounts/blobServices/containers/delete",
                "Microsoft.Storage/storageAccounts/blobServices/containers/read",
                "Microsoft.Storage/storageAccounts/blobServices/containers/write",
                "Microsoft.Storage/storageAccounts/blobServices/generateUserDelegationKey/action",
            ),
            data_actions=(
                "Microsoft.Storage/storageAccounts/blobServices/containers/blobs/delete",
                "Microsoft.Storage/storageAccounts/blobServices/containers/blobs/read",
                "Microsoft.Storage/storageAccounts/blobServices/containers/blobs/write",
                "Microsoft.Storage/storageAccounts/blobServices/containers/blobs/move/action",
                "Microsoft.Storage/storageAccounts/blobServices/containers/blobs/add/action",
            ),
        ),
    ),
    "69a216fc-b8fb-44d8-bc22-1f3c2cd27a39": (
        "Azure Service Bus Data Sender",
        AzureRole(
            actions=(
                "Microsoft.ServiceBus/*/queues/read",
                "Microsoft.ServiceBus/*/topics/read",
                "Microsoft.ServiceBus/*/topics/subscriptions/read",
            ),
            data_actions=("Microsoft.ServiceBus/*/send/action",),
        ),
    ),
    "4f6d3b9b-027b-4f4c-9142-0e5a2a2247e0": (
        "Azure Service Bus Data Receiver",
        AzureRole(
            actions=(
                "Microsoft.ServiceBus/*/queues/read",
                "Microsoft.ServiceBus/*/topics/read",
                "Microsoft.ServiceBus/*/topics/subscriptions/read",
            ),
            data_actions=("Microsoft.ServiceBus/*/receive/action",),
        ),
    ),
    "7f951dda-4ed3-4680-a7ca-43fe172d538d": (
        "AcrPull",
        AzureRole(actions=("Microsoft.ContainerRegistry/registries/pull/read",)),
    ),
    "4633458b-17de-408a-b874-0445c86b69e6": (
        "Key Vault Secrets User",
        AzureRole(
            data_actions=(
                "Microsoft.KeyVault/vaults/secrets/getSecret/action",
                "Microsoft.KeyVault/vaults/secrets/readMetadata/action",
            )
        ),
    ),
    # Azure Cosmos DB data plane: Cosmos DB Built-in Data Contributor (a SQL role definition).
    "00000000-0000-0000-0000-000000000002": (
        "Cosmos DB Built-in Data Contributor",
        AzureRole(
            data_actions=(
                "Microsoft.DocumentDB/databaseAccounts/readMetadata",
                "Microsoft.DocumentDB/databaseAccounts/sqlDatabases/containers/*",
                "Microsoft.DocumentDB/databaseAccounts/sqlDatabases/containers/items/*",
            )
        ),
    ),
    "00000000-0000-0000-0000-000000000001": (
        "Cosmos DB Built-in Data Reader",
        AzureRole(
            data_actions=(
                "Microsoft.DocumentDB/databaseAccounts/readMetadata",
                "Microsoft.DocumentDB/databaseAccounts/sqlDatabases/containers/executeQuery",
                "Microsoft.DocumentDB/databaseAccounts/sqlDatabases/containers/readChangeFeed",
                "Microsoft.DocumentDB/databaseAccounts/sqlDatabases/containers/items/read",
            )
        ),
    ),
}

COSMOS = "Microsoft.DocumentDB/databaseAccounts"
_COSMOS_ITEM_OPERATIONS = {
    "Create": "create",
    "Upsert": "upsert",
    "Replace": "replace",
    "Delete": "delete",
    "Read": "read",
    "Patch": "replace",
}


@dataclass(frozen=True)
class AzureNeed:
    """One operation a call needs: data-plane or not, on a scope (ARM id, or ARM id + Cosmos path)."""

    operation: str
    data: bool
    scope: str
    call: str


def cosmos_needs(account_id: str, entry: dict[str, Any]) -> list[AzureNeed]:
    """What one Cosmos DB REST request needs (``account_id``: the account's ARM id)."""
    method, path, headers = entry["method"], entry["path"], entry.get("headers", {})
    parts = [p for p in path.split("/") if p]
    call = f"{method} {path}"
    if len(parts) < 4 or parts[0] != "dbs" or parts[2] != "colls":
        if method == "GET":  # the account, a database, the list of databases: metadata
            scope = f"{account_id}/dbs/{parts[1]}" if len(parts) >= 2 and parts[0] == "dbs" else account_id
            return [AzureNeed(f"{COSMOS}/readMetadata", True, scope, call)]
        return [AzureNeed(f"{COSMOS}/sqlDatabases/write (a management operation)", False, account_id, call)]
    scope = f"{account_id}/dbs/{parts[1]}/colls/{parts[3]}"
    container = f"{COSMOS}/sqlDatabases/containers"
    if len(parts) == 4 or parts[4] in {"pkranges", "sprocs", "udfs", "triggers"}:
        if method == "GET":
            return [AzureNeed(f"{COSMOS}/readMetadata", True, scope, call)]
        return [AzureNeed(f"{container}/write (a management operation)", False, scope, call)]
    if len(parts) == 5:  # .../docs
        if headers.get("x-ms-documentdb-isquery", "").lower() == "true":
            return [AzureNeed(f"{container}/executeQuery", True, scope, call)]
        if headers.get("x-ms-cosmos-is-batch-request", "").lower() == "true":
            operations = {_COSMOS_ITEM_OPERATIONS.get(op, str(op).lower()) for op in entry.get("batch") or []}
            return [AzureNeed(f"{container}/items/{op}", True, scope, call) for op in sorted(operations)]
        if method == "GET":
            kind = "readChangeFeed" if headers.get("a-im") else "items/read"
            return [AzureNeed(f"{container}/{kind}", True, scope, call)]
        upsert = headers.get("x-ms-documentdb-is-upsert", "").lower() == "true"
        return [AzureNeed(f"{container}/items/{'upsert' if upsert else 'create'}", True, scope, call)]
    operation = {"GET": "read", "PUT": "replace", "PATCH": "replace", "DELETE": "delete"}.get(method, method.lower())
    return [AzureNeed(f"{container}/items/{operation}", True, scope, call)]


def blob_needs(container_id: str, entry: dict[str, Any]) -> list[AzureNeed]:
    """What one Blob service REST request needs (``container_id``: the container's ARM id)."""
    method, query = entry["method"], parse_qs(entry.get("query", ""))
    parts = [p for p in entry["path"].split("/") if p]
    blobs = "Microsoft.Storage/storageAccounts/blobServices/containers/blobs"
    call = f"{method} {entry['path']}?{entry.get('query', '')}"
    is_container = query.get("restype") == ["container"]
    if is_container and query.get("comp") == ["list"]:
        return [AzureNeed(f"{blobs}/read", True, container_id, call)]
    if is_container:
        action = {"GET": "read", "HEAD": "read", "PUT": "write", "DELETE": "delete"}.get(method, "write")
        return [
            AzureNeed(f"Microsoft.Storage/storageAccounts/blobServices/containers/{action}", False, container_id, call)
        ]
    blob_scope = container_id + "/blobs/" + "/".join(parts[2:])
    if method in {"GET", "HEAD"}:
        return [AzureNeed(f"{blobs}/read", True, blob_scope, call)]
    if method == "DELETE":
        return [AzureNeed(f"{blobs}/delete", True, blob_scope, call)]
    return [AzureNeed(f"{blobs}/write", True, blob_scope, call)]


def servicebus_needs(namespace_id: str, entry: dict[str, Any]) -> list[AzureNeed]:
    """What one recorded Service Bus call needs (``namespace_id``: the namespace's ARM id)."""
    topic = f"{namespace_id}/topics/{entry['topic']}"
    operation = entry["operation"]
    if operation == "send":
        return [AzureNeed("Microsoft.ServiceBus/namespaces/messages/send/action", True, topic, "send")]
    subscription = f"{topic}/subscriptions/{entry.get('subscription', '')}"
    if operation == "receive":
        return [AzureNeed("Microsoft.ServiceBus/namespaces/messages/receive/action", True, subscription, "receive")]
    if operation == "get-subscription":
        return [AzureNeed("Microsoft.ServiceBus/namespaces/topics/subscriptions/read", False, subscription, operation)]
    return [AzureNeed("Microsoft.ServiceBus/namespaces/topics/subscriptions/write", False, subscription, operation)]


@dataclass(frozen=True)
class AzureGrant:
    """A role assignment: a principal, a built-in role definition id, a scope."""

    principal: str
    role_id: str
    scope: str

    def covers(self, need: AzureNeed) -> bool:
        """Whether the assignment's role allows ``need`` at or above its scope."""
        role = AZURE_ROLES.get(self.role_id)
        if role is None:
            return False
        scope, wanted = self.scope.lower().rstrip("/"), need.scope.lower()
        within = wanted == scope or wanted.startswith(scope + "/")
        if need.operation.endswith("/readMetadata") and scope.startswith(wanted + "/"):
            # The SDK reads the account's (or database's) metadata when it starts; Cosmos DB
            # lets a principal with a data role on a database or container read it.
            within = True
        return within and role[1].allows(need.operation, need.data)
