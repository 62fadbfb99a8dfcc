"""Pulumi mocks that answer as the clouds do: ARNs, ARM ids, service-account emails, URLs.

:class:`providers.graph.GraphMocks` echoes inputs and adds ``arn:mock``; good enough to see
what a program declares, not to run what it declares.  Here every resource gets the
identifiers its provider would give it, built from its inputs and the stack's account,
region, project or subscription: ``arn:aws:sqs:eu-west-1:123456789012:skyferry-events-balances.fifo``,
``/subscriptions/…/resourceGroups/…/providers/Microsoft.ServiceBus/namespaces/…/topics/…``,
``skyferry-app@skyferry-example.iam.gserviceaccount.com``.  Names the provider generates
(Pulumi's auto-naming, a bucket prefix) get a suffix derived from the logical name, so a
run is reproducible.  The rehearsal then creates the resources on the emulators under
exactly these names, so a policy naming an ARN is checked against the resource it names.

Only what the programs and the rehearsal read is modelled; anything else keeps its inputs.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Callable, Mapping
from typing import Any

import pulumi

from providers.graph import _SECRET_SIG, _SIG_KEY

AWS_ACCOUNT = "123456789012"
"""The AWS account of the rehearsal (moto's default account, so moto's ARNs are the same)."""
AZURE_SUBSCRIPTION = str(uuid.UUID(hashlib.sha256(b"skyferry rehearsal subscription").hexdigest()[:32]))
AZURE_TENANT = str(uuid.UUID(hashlib.sha256(b"skyferry rehearsal tenant").hexdigest()[:32]))


def digest(*parts: str, length: int = 8) -> str:
    """A stable lower-case hex string derived from ``parts`` (what a random suffix would be)."""
    return hashlib.sha256("/".join(parts).encode()).hexdigest()[:length]


def guid(*parts: str) -> str:
    """A stable GUID derived from ``parts`` (principal ids, role assignment names)."""
    return str(uuid.UUID(digest(*parts, length=32)))


def autoname(logical: str) -> str:
    """Pulumi's auto-name: the logical name, a dash and 7 hex characters."""
    return f"{logical}-{digest(logical, length=7)}"


def secret_arn(region: str, name: str) -> str:
    """Secrets Manager's ARN of secret ``name``: the name, a dash and 6 characters.

    The same function names the secret in the mocks and on the rehearsal's moto server,
    so a policy that names the ARN names the secret moto holds.
    """
    return f"arn:aws:secretsmanager:{region}:{AWS_ACCOUNT}:secret:{name}-{digest('secret', name, length=6)}"


class RealisticMocks(pulumi.runtime.Mocks):
    """Mocks whose outputs are the identifiers each provider would return (see the module docstring)."""

    def __init__(self, config: Mapping[str, str]) -> None:
        self.config = dict(config)
        self.region = self.config.get("aws:region", "eu-west-1")
        self.gcp_project = self.config.get("gcp:project", "skyferry-example")
        self.gcp_region = self.config.get("gcp:region", "europe-west1")
        self.gcp_number = _gcp_number(self.config)
        self._states: dict[str, dict[str, Any]] = {}

    def new_resource(self, args: pulumi.runtime.MockResourceArgs) -> tuple[str | None, dict[Any, Any]]:
        """The id and output state of one resource: its inputs plus what its provider computes."""
        inputs = {k: _unsecret(v) for k, v in args.inputs.items()}
        provider = args.typ.split(":", 1)[0]
        builder: Callable[[str, str, dict[str, Any]], tuple[str, dict[str, Any]]] = {
            "aws": self._aws,
            "gcp": self._gcp,
            "azure-native": self._azure,
            "kubernetes": self._kubernetes,
        }.get(provider, _plain)
        id_, computed = builder(args.typ, args.name, inputs)
        state = {**args.inputs, **computed}
        if provider == "azure-native" and isinstance(inputs.get("identity"), dict):
            # azure-native takes identity.userAssignedIdentities as a list and returns a map.
            identities = inputs["identity"].get("userAssignedIdentities") or []
            state["identity"] = {**inputs["identity"], "userAssignedIdentities": {i: {} for i in identities}}
        return id_, state

    def call(self, args: pulumi.runtime.MockCallArgs) -> tuple[dict[Any, Any], list[tuple[str, str]] | None]:
        """Invokes: the caller's identity, region, project and subscription of this stack."""
        return (
            {
                "accountId": AWS_ACCOUNT,
                "arn": f"arn:aws:iam::{AWS_ACCOUNT}:user/deployer",
                "userId": "AIDA" + digest("deployer", length=17).upper(),
                "id": self.region,
                "name": self.region,
                "region": self.region,
                "project": self.gcp_project,
                "number": self.gcp_number,
                "subscriptionId": AZURE_SUBSCRIPTION,
                "tenantId": AZURE_TENANT,
                "objectId": guid("deployer"),
                "clientId": guid("deployer", "client"),
            },
            [],
        )

    # -- AWS -------------------------------------------------------------------------------

    def _aws(self, typ: str, logical: str, inputs: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        region, account = self.region, AWS_ACCOUNT
        kind = typ.split(":")[1]
        name = inputs.get("name") or autoname(logical)
        arn = f"arn:aws:{kind.split('/')[0]}:{region}:{account}:{name}"
        if typ == "aws:kms/key:Key":
            key_id = guid("kms", logical)
            return key_id, {"keyId": key_id, "arn": f"arn:aws:kms:{region}:{account}:key/{key_id}"}
        if typ == "aws:kms/alias:Alias":
            return name, {"arn": f"arn:aws:kms:{region}:{account}:{name}", "targetKeyArn": ""}
        if typ == "aws:iam/role:Role":
            return name, {
                "name": name,
                "arn": f"arn:aws:iam::{account}:role/{name}",
                "uniqueId": "AROA" + digest("role", name, length=17).upper(),
            }
        if typ == "aws:s3/bucket:Bucket":
            bucket = inputs.get("bucket") or (
                inputs["bucketPrefix"] + str(int(digest("bucket", logical, length=20), 16))[:26].rjust(26, "0")
                if inputs.get("bucketPrefix")
                else autoname(logical)
            )
            return bucket, {
                "bucket": bucket,
                "arn": f"arn:aws:s3:::{bucket}",
                "bucketDomainName": f"{bucket}.s3.amazonaws.com",
                "bucketRegionalDomainName": f"{bucket}.s3.{region}.amazonaws.com",
                "region": region,
            }
        if typ == "aws:dynamodb/table:Table":
            return name, {"name": name, "arn": f"arn:aws:dynamodb:{region}:{account}:table/{name}"}
        if typ == "aws:sns/topic:Topic":
            return arn, {"name": name, "arn": arn}
        if typ == "aws:sqs/queue:Queue":
            url = f"https://sqs.{region}.amazonaws.com/{account}/{name}"
            return url, {"name": name, "url": url, "arn": arn}
        if typ == "aws:secretsmanager/secret:Secret":
            secret = secret_arn(region, name)
            return secret, {"name": name, "arn": secret}
        if typ == "aws:secretsmanager/secretVersion:SecretVersion":
            version = guid("version", logical)
            return f"{inputs.get('secretId')}|{version}", {"versionId": version, "arn": inputs.get("secretId")}
        if typ == "aws:cloudwatch/logGroup:LogGroup":
            return name, {"name": name, "arn": f"arn:aws:logs:{region}:{account}:log-group:{name}"}
        if typ == "aws:ecr/repository:Repository":
            return name, {
                "name": name,
                "arn": f"arn:aws:ecr:{region}:{account}:repository/{name}",
                "repositoryUrl": f"{account}.dkr.ecr.{region}.amazonaws.com/{name}",
                "registryId": account,
            }
        if typ == "aws:lb/loadBalancer:LoadBalancer":
            lb = inputs.get("name") or autoname(logical)[:32]
            suffix = digest("lb", lb, length=16)
            internal = "internal-" if inputs.get("internal") else ""
            dns = f"{internal}{lb}-{int(digest('dns', lb, length=8), 16) % 10**10}.{region}.elb.amazonaws.com"
            lb_arn = f"arn:aws:elasticloadbalancing:{region}:{account}:loadbalancer/app/{lb}/{suffix}"
            return lb_arn, {"name": lb, "arn": lb_arn, "dnsName": dns, "arnSuffix": f"app/{lb}/{suffix}"}
        if typ == "aws:lb/targetGroup:TargetGroup":
            tg = inputs.get("name") or autoname(logical)[:32]
            tg_arn = f"arn:aws:elasticloadbalancing:{region}:{account}:targetgroup/{tg}/{digest('tg', tg, length=16)}"
            return tg_arn, {"name": tg, "arn": tg_arn}
        if typ == "aws:lb/listener:Listener":
            listener = f"{inputs.get('loadBalancerArn', '')}/{digest('listener', logical, length=16)}".replace(
                ":loadbalancer/", ":listener/"
            )
            return listener, {"arn": listener}
        if typ == "aws:ecs/cluster:Cluster":
            cluster = inputs.get("name") or autoname(logical)
            cluster_arn = f"arn:aws:ecs:{region}:{account}:cluster/{cluster}"
            return cluster_arn, {"name": cluster, "arn": cluster_arn}
        if typ == "aws:ecs/taskDefinition:TaskDefinition":
            family = inputs.get("family", logical)
            td_arn = f"arn:aws:ecs:{region}:{account}:task-definition/{family}:1"
            return td_arn, {"arn": td_arn, "revision": 1, "arnWithoutRevision": td_arn.rsplit(":", 1)[0]}
        if typ == "aws:ecs/service:Service":
            service = inputs.get("name") or autoname(logical)
            cluster_name = str(inputs.get("cluster", "")).rsplit("/", 1)[-1]
            return f"arn:aws:ecs:{region}:{account}:service/{cluster_name}/{service}", {"name": service}
        if typ.startswith("aws:ec2/"):
            prefix = {
                "vpc": "vpc",
                "subnet": "subnet",
                "securityGroup": "sg",
                "internetGateway": "igw",
                "routeTable": "rtb",
                "natGateway": "nat",
                "eip": "eipalloc",
                "vpcEndpoint": "vpce",
                "routeTableAssociation": "rtbassoc",
            }.get(kind.split("/")[1], "r")
            resource_id = f"{prefix}-{digest('ec2', logical, length=17)}"
            return resource_id, {"arn": f"arn:aws:ec2:{region}:{account}:{kind.split('/')[1].lower()}/{resource_id}"}
        return autoname(logical), {}

    # -- Google Cloud ------------------------------------------------------------------------

    def _gcp(self, typ: str, logical: str, inputs: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        project = inputs.get("project") or self.gcp_project
        location = inputs.get("location") or self.gcp_region
        number = self.gcp_number
        if typ == "gcp:serviceaccount/account:Account":
            email = f"{inputs['accountId']}@{project}.iam.gserviceaccount.com"
            name = f"projects/{project}/serviceAccounts/{email}"
            return name, {
                "email": email,
                "name": name,
                "member": f"serviceAccount:{email}",
                "uniqueId": str(int(digest("sa", email, length=15), 16))[:21],
            }
        if typ == "gcp:projects/serviceIdentity:ServiceIdentity":
            agent = {"firestore": "gcp-sa-firestore", "pubsub": "gcp-sa-pubsub"}[inputs["service"].split(".")[0]]
            email = f"service-{number}@{agent}.iam.gserviceaccount.com"
            return f"projects/{project}/services/{inputs['service']}", {
                "email": email,
                "member": f"serviceAccount:{email}",
            }
        if typ == "gcp:kms/keyRing:KeyRing":
            ring = f"projects/{project}/locations/{location}/keyRings/{inputs['name']}"
            return ring, {}
        if typ == "gcp:kms/cryptoKey:CryptoKey":
            return f"{inputs['keyRing']}/cryptoKeys/{inputs['name']}", {}
        if typ == "gcp:firestore/database:Database":
            return f"projects/{project}/databases/{inputs['name']}", {"uid": guid("firestore", inputs["name"])}
        if typ == "gcp:firestore/index:Index":
            index = f"CICAg{digest('index', logical, length=10)}"
            group = f"projects/{project}/databases/{inputs['database']}/collectionGroups/{inputs['collection']}"
            name = f"{group}/indexes/{index}"
            return name, {"name": name}
        if typ == "gcp:pubsub/topic:Topic":
            return f"projects/{project}/topics/{inputs['name']}", {}
        if typ == "gcp:pubsub/subscription:Subscription":
            return f"projects/{project}/subscriptions/{inputs['name']}", {}
        if typ == "gcp:storage/bucket:Bucket":
            bucket = inputs["name"]
            return bucket, {"url": f"gs://{bucket}", "selfLink": f"https://www.googleapis.com/storage/v1/b/{bucket}"}
        if typ == "gcp:secretmanager/secret:Secret":
            return f"projects/{project}/secrets/{inputs['secretId']}", {
                "name": f"projects/{number}/secrets/{inputs['secretId']}"
            }
        if typ == "gcp:secretmanager/secretVersion:SecretVersion":
            secret = str(inputs.get("secret", ""))
            name = f"{secret.replace(f'projects/{project}/', f'projects/{number}/')}/versions/1"
            return name, {"name": name, "version": "1"}
        if typ == "gcp:artifactregistry/repository:Repository":
            repo = inputs["repositoryId"]
            return f"projects/{project}/locations/{location}/repositories/{repo}", {"name": repo}
        if typ == "gcp:cloudrunv2/service:Service":
            service = inputs["name"]
            uri = f"https://{service}-{number}.{location}.run.app"
            return f"projects/{project}/locations/{location}/services/{service}", {"uri": uri, "urls": [uri]}
        if typ == "gcp:cloudrunv2/workerPool:WorkerPool":  # no URI: a worker pool receives no requests
            pool = f"projects/{project}/locations/{location}/workerPools/{inputs['name']}"
            return pool, {"uid": guid("worker-pool", pool)}
        if typ == "gcp:projects/service:Service":
            return f"{project}/{inputs['service']}", {}
        return f"projects/{project}/{typ.rsplit(':', 1)[-1].lower()}/{digest(logical)}", {
            "etag": digest("etag", logical)
        }

    # -- Azure -------------------------------------------------------------------------------

    def _azure(self, typ: str, logical: str, inputs: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        template = _ARM_PATHS.get(typ)
        if typ == "azure-native:resources:ResourceGroup":
            group = inputs.get("resourceGroupName") or f"{logical}{digest('rg', logical)}"
            return f"/subscriptions/{AZURE_SUBSCRIPTION}/resourceGroups/{group}", {"name": group}
        if template is None:
            return f"/subscriptions/{AZURE_SUBSCRIPTION}/providers/{typ}/{logical}", {"name": logical}
        own_key, path = template
        name = inputs.get(own_key) or (
            guid("assignment", logical)
            if own_key in {"roleAssignmentName", "roleAssignmentId"}
            else f"{logical}{digest('az', logical)}"
        )
        values = {**{k: str(v) for k, v in inputs.items() if isinstance(v, str)}, own_key: name}
        if path.startswith("{"):  # an extension resource under a scope (role assignment, lock, setting)
            resource_id = path.format(**values)
        else:
            group = values.get("resourceGroupName", "")
            resource_id = f"/subscriptions/{AZURE_SUBSCRIPTION}/resourceGroups/{group}/providers/" + path.format(
                **values
            )
        state: dict[str, Any] = {"name": name}
        location = inputs.get("location", "")
        if typ == "azure-native:managedidentity:UserAssignedIdentity":
            state.update(
                principalId=guid("principal", resource_id),
                clientId=guid("client", resource_id),
                tenantId=AZURE_TENANT,
            )
        elif typ == "azure-native:cosmosdb:DatabaseAccount":
            state["documentEndpoint"] = f"https://{name}.documents.azure.com:443/"
        elif typ == "azure-native:keyvault:Vault":
            state["properties"] = {**inputs.get("properties", {}), "vaultUri": f"https://{name}.vault.azure.net/"}
        elif typ == "azure-native:keyvault:Secret":
            state["secretUri"] = f"https://{inputs.get('vaultName', '')}.vault.azure.net/secrets/{name}"
        elif typ == "azure-native:app:ManagedEnvironment":
            state["defaultDomain"] = f"{digest('env', name, length=12)}.{location}.azurecontainerapps.io"
        elif typ == "azure-native:servicebus:Namespace":
            state["serviceBusEndpoint"] = f"https://{name}.servicebus.windows.net:443/"
        elif typ == "azure-native:storage:StorageAccount":
            state["primaryEndpoints"] = {"blob": f"https://{name}.blob.core.windows.net/"}
        elif typ == "azure-native:containerregistry:Registry":
            state["loginServer"] = f"{name.lower()}.azurecr.io"
        return resource_id, state

    # -- Kubernetes ------------------------------------------------------------------------------

    def _kubernetes(self, typ: str, logical: str, inputs: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        metadata = inputs.get("metadata") or {}
        name = metadata.get("name") or inputs.get("name") or logical
        namespace = metadata.get("namespace") or inputs.get("namespace") or ""
        resource_id = f"{namespace}/{name}" if namespace else name
        if typ == "kubernetes:core/v1:Secret" and "stringData" in inputs:
            return resource_id, {"metadata": {**metadata, "uid": guid("uid", resource_id)}}
        return resource_id, {"metadata": {**metadata, "uid": guid("uid", resource_id)}} if metadata else {}


def _unsecret(value: Any) -> Any:
    """``value`` without Pulumi's secret wrappers (the mocks see secrets as wrapped dicts)."""
    if isinstance(value, dict):
        if value.get(_SIG_KEY) == _SECRET_SIG:
            return _unsecret(value.get("value"))
        return {k: _unsecret(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_unsecret(v) for v in value]
    return value


def _plain(typ: str, logical: str, inputs: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    return guid(typ, logical), {}


def _gcp_number(config: Mapping[str, str]) -> str:
    import json

    raw = config.get("skyferry:gcp")
    section = json.loads(raw) if raw else {}
    number = section.get("projectNumber") if isinstance(section, dict) else None
    return str(number or "123456789012")


#: Where each azure-native resource lives under its resource group: (the input that names it, ARM path).
_ARM_PATHS: dict[str, tuple[str, str]] = {
    "azure-native:operationalinsights:Workspace": (
        "workspaceName",
        "Microsoft.OperationalInsights/workspaces/{workspaceName}",
    ),
    "azure-native:managedidentity:UserAssignedIdentity": (
        "resourceName",
        "Microsoft.ManagedIdentity/userAssignedIdentities/{resourceName}",
    ),
    "azure-native:network:VirtualNetwork": (
        "virtualNetworkName",
        "Microsoft.Network/virtualNetworks/{virtualNetworkName}",
    ),
    "azure-native:network:Subnet": (
        "subnetName",
        "Microsoft.Network/virtualNetworks/{virtualNetworkName}/subnets/{subnetName}",
    ),
    "azure-native:privatedns:PrivateZone": ("privateZoneName", "Microsoft.Network/privateDnsZones/{privateZoneName}"),
    "azure-native:privatedns:VirtualNetworkLink": (
        "virtualNetworkLinkName",
        "Microsoft.Network/privateDnsZones/{privateZoneName}/virtualNetworkLinks/{virtualNetworkLinkName}",
    ),
    "azure-native:network:PrivateEndpoint": (
        "privateEndpointName",
        "Microsoft.Network/privateEndpoints/{privateEndpointName}",
    ),
    "azure-native:network:PrivateDnsZoneGroup": (
        "privateDnsZoneGroupName",
        "Microsoft.Network/privateEndpoints/{privateEndpointName}/privateDnsZoneGroups/{privateDnsZoneGroupName}",
    ),
    "azure-native:keyvault:Vault": ("vaultName", "Microsoft.KeyVault/vaults/{vaultName}"),
    "azure-native:keyvault:Secret": ("secretName", "Microsoft.KeyVault/vaults/{vaultName}/secrets/{secretName}"),
    "azure-native:keyvault:Key": ("keyName", "Microsoft.KeyVault/vaults/{vaultName}/keys/{keyName}"),
    "azure-native:cosmosdb:DatabaseAccount": ("accountName", "Microsoft.DocumentDB/databaseAccounts/{accountName}"),
    "azure-native:cosmosdb:SqlResourceSqlDatabase": (
        "databaseName",
        "Microsoft.DocumentDB/databaseAccounts/{accountName}/sqlDatabases/{databaseName}",
    ),
    "azure-native:cosmosdb:SqlResourceSqlContainer": (
        "containerName",
        "Microsoft.DocumentDB/databaseAccounts/{accountName}/sqlDatabases/{databaseName}/containers/{containerName}",
    ),
    "azure-native:cosmosdb:SqlResourceSqlRoleAssignment": (
        "roleAssignmentId",
        "Microsoft.DocumentDB/databaseAccounts/{accountName}/sqlRoleAssignments/{roleAssignmentId}",
    ),
    "azure-native:servicebus:Namespace": ("namespaceName", "Microsoft.ServiceBus/namespaces/{namespaceName}"),
    "azure-native:servicebus:Topic": (
        "topicName",
        "Microsoft.ServiceBus/namespaces/{namespaceName}/topics/{topicName}",
    ),
    "azure-native:servicebus:Subscription": (
        "subscriptionName",
        "Microsoft.ServiceBus/namespaces/{namespaceName}/topics/{topicName}/subscriptions/{subscriptionName}",
    ),
    "azure-native:storage:StorageAccount": ("accountName", "Microsoft.Storage/storageAccounts/{accountName}"),
    "azure-native:storage:BlobServiceProperties": (
        "blobServicesName",
        "Microsoft.Storage/storageAccounts/{accountName}/blobServices/{blobServicesName}",
    ),
    "azure-native:storage:ManagementPolicy": (
        "managementPolicyName",
        "Microsoft.Storage/storageAccounts/{accountName}/managementPolicies/{managementPolicyName}",
    ),
    "azure-native:storage:BlobContainer": (
        "containerName",
        "Microsoft.Storage/storageAccounts/{accountName}/blobServices/default/containers/{containerName}",
    ),
    "azure-native:containerregistry:Registry": (
        "registryName",
        "Microsoft.ContainerRegistry/registries/{registryName}",
    ),
    "azure-native:app:ManagedEnvironment": ("environmentName", "Microsoft.App/managedEnvironments/{environmentName}"),
    "azure-native:app:ContainerApp": ("containerAppName", "Microsoft.App/containerApps/{containerAppName}"),
    "azure-native:monitor:DiagnosticSetting": (
        "name",
        "{resourceUri}/providers/Microsoft.Insights/diagnosticSettings/{name}",
    ),
    "azure-native:authorization:RoleAssignment": (
        "roleAssignmentName",
        "{scope}/providers/Microsoft.Authorization/roleAssignments/{roleAssignmentName}",
    ),
    "azure-native:authorization:ManagementLockByScope": (
        "lockName",
        "{scope}/providers/Microsoft.Authorization/locks/{lockName}",
    ),
}
