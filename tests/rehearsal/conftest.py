"""Fixtures of the deployment rehearsal: one module-scoped rehearsal per target.

Each fixture deploys the example stack's graph (:func:`tests.rehearsal.stack.deploy`),
provisions the emulators from it, starts the workloads and yields the
:class:`~tests.rehearsal.harness.Rehearsal`; everything it started is stopped by PID at
the end of the module.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("pulumi", reason="the infra dependency group is not installed (uv sync --all-groups)")

from tests.rehearsal import aws as aws_target
from tests.rehearsal.harness import Rehearsal, rehearsed
from tests.rehearsal.stack import deploy
from tests.rehearsal.workloads import Workload, launcher

KEEP_VARIABLE = "SKYFERRY_REHEARSAL_KEEP"


@contextlib.contextmanager
def rehearsal_directory(target: str) -> Iterator[Path]:
    """The rehearsal's own directory (logs, seam configs, volumes), removed afterwards.

    Not pytest's ``tmp_path``: concurrent pytest sessions of the same user prune each
    other's older numbered directories, and the workloads write here for minutes.  Set
    ``SKYFERRY_REHEARSAL_KEEP=1`` to keep it (its path is printed).
    """
    path = Path(tempfile.mkdtemp(prefix=f"skyferry-rehearsal-{target}-"))
    try:
        yield path
    finally:
        if os.environ.get(KEEP_VARIABLE):
            print(f"rehearsal {target}: kept {path}")
        else:
            shutil.rmtree(path, ignore_errors=True)


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in name)


@pytest.fixture(scope="module")
def aws() -> Iterator[Rehearsal]:
    """The aws stack on moto with IAM enforced, its ECS tasks running as processes."""
    pytest.importorskip("moto", reason="moto[server] is not installed (uv sync --all-groups)")
    with contextlib.ExitStack() as stack:
        deployment = deploy("aws")
        workdir = stack.enter_context(rehearsal_directory("aws"))
        moto = aws_target.IamMoto(workdir)
        moto.start()
        stack.callback(moto.stop)
        provisioned = aws_target.provision(moto, deployment)
        moto.enforce()
        workloads = aws_target.task_workloads(deployment, moto, provisioned)
        credentials = stack.enter_context(aws_target.credentials_endpoint(provisioned.roles))

        def rehearsal_env(workload: Workload) -> tuple[dict[str, str], dict[str, str]]:
            role = aws_target.role_name(workload.identity)
            return (
                {"AWS_ENDPOINT_URL": moto.endpoint, "AWS_CONTAINER_CREDENTIALS_FULL_URI": credentials.url(role)},
                {
                    "AWS_ENDPOINT_URL": "the stack's URLs name a region only (implicit endpoints): "
                    "the SDK's own override points every service at moto",
                    "AWS_CONTAINER_CREDENTIALS_FULL_URI": "ECS serves the task role's session at 169.254.170.2 "
                    "(AWS_CONTAINER_CREDENTIALS_RELATIVE_URI); the same document is served on loopback",
                },
            )

        rehearsal = Rehearsal(
            deployment=deployment,
            workdir=workdir,
            launcher=launcher(workdir, "aws"),
            workloads=workloads,
            rehearsal_env=rehearsal_env,
            token=deployment.secret_values["skyferry:apiToken"],
            api="ecs:skyferry-api/api",
            calls_log=moto.decisions,
            extra={"moto": moto, "provisioned": provisioned},
        )
        yield stack.enter_context(rehearsed(rehearsal))


@pytest.fixture(scope="module")
def gcp() -> Iterator[Rehearsal]:
    """The gcp stack on Google's emulators, its Cloud Run service and worker pool running."""
    from tests.rehearsal import gcp as gcp_target
    from tests.services import gcloud_emulators, gcs

    firestore = gcloud_emulators.host("firestore")
    pubsub = gcloud_emulators.host("pubsub")
    storage = gcs.endpoint()
    with contextlib.ExitStack() as stack:
        deployment = deploy("gcp")
        workdir = stack.enter_context(rehearsal_directory("gcp"))
        made = gcp_target.provision(deployment, pubsub, storage)
        stack.callback(gcp_target.remove, made, deployment, pubsub, firestore, storage)
        calls = workdir / "calls.jsonl"

        def rehearsal_env(workload: Workload) -> tuple[dict[str, str], dict[str, str]]:
            seam = workdir / f"seam-{_slug(workload.name)}.json"
            gcp_target.seam_config(seam, calls, workload, storage)
            implicit = "the stack's URLs name a project only (implicit endpoint): the SDK's own emulator variable"
            return (
                {
                    "FIRESTORE_EMULATOR_HOST": firestore,
                    "PUBSUB_EMULATOR_HOST": pubsub,
                    "STORAGE_EMULATOR_HOST": storage,
                    "SKYFERRY_REHEARSAL_SEAM": str(seam),
                },
                {
                    "FIRESTORE_EMULATOR_HOST": implicit,
                    "PUBSUB_EMULATOR_HOST": implicit,
                    "STORAGE_EMULATOR_HOST": implicit,
                    "SKYFERRY_REHEARSAL_SEAM": "records every SDK call and its service account for the identity checks",
                },
            )

        rehearsal = Rehearsal(
            deployment=deployment,
            workdir=workdir,
            launcher=launcher(workdir, "gcp"),
            workloads=gcp_target.run_workloads(deployment),
            rehearsal_env=rehearsal_env,
            token=deployment.secret_values["skyferry:apiToken"],
            api="run:skyferry-api",
            calls_log=calls,
        )
        yield stack.enter_context(rehearsed(rehearsal))


@pytest.fixture(scope="module")
def azure() -> Iterator[Rehearsal]:
    """The azure stack on the Cosmos DB emulator, Azurite and the Service Bus fake, its Container Apps running."""
    from tests.rehearsal import azure as azure_target
    from tests.services import cosmos

    cosmos_endpoint = cosmos.endpoint()
    with contextlib.ExitStack() as stack:
        deployment = deploy("azure")
        workdir = stack.enter_context(rehearsal_directory("azure"))
        accounts = [n.outputs["name"] for n in deployment.nodes("azure-native:storage:StorageAccount")]
        azurite = azure_target.Azurite(workdir, accounts)
        stack.callback(azurite.stop)
        made = azure_target.provision(deployment, cosmos_endpoint, cosmos.EMULATOR_KEY, azurite)
        stack.callback(azure_target.remove, made, cosmos_endpoint, cosmos.EMULATOR_KEY)
        calls = workdir / "calls.jsonl"

        def rehearsal_env(workload: Workload) -> tuple[dict[str, str], dict[str, str]]:
            seam = workdir / f"seam-{_slug(workload.name)}.json"
            azure_target.seam_config(seam, calls, workload, deployment, cosmos_endpoint, cosmos.EMULATOR_KEY, azurite)
            return (
                {"SKYFERRY_REHEARSAL_SEAM": str(seam)},
                {
                    "SKYFERRY_REHEARSAL_SEAM": "the Cosmos DB and Blob endpoints are implicit in the account names and "
                    "no emulator takes Entra ID tokens: the seam points the SDK clients at the emulators with their "
                    "keys, gives Service Bus's SDK the in-memory fake, and records every call with AZURE_CLIENT_ID's "
                    "identity"
                },
            )

        rehearsal = Rehearsal(
            deployment=deployment,
            workdir=workdir,
            launcher=launcher(workdir, "azure"),
            workloads=azure_target.app_workloads(deployment),
            rehearsal_env=rehearsal_env,
            token=deployment.secret_values["skyferry:apiToken"],
            api="app:skyferry-api/api",
            calls_log=calls,
            extra={
                "hosts": {cosmos_endpoint.split("/")[2]: "cosmos", f"127.0.0.1:{azurite.port}": "blob"},
                "azurite": azurite,
            },
        )
        yield stack.enter_context(rehearsed(rehearsal))


@pytest.fixture(scope="module")
def kubernetes() -> Iterator[Rehearsal]:
    """The kubernetes stack: the chart's pods and its in-chart PostgreSQL and NATS, running as processes."""
    import json

    from tests.rehearsal import kubernetes as k8s_target

    with contextlib.ExitStack() as stack:
        deployment = deploy("kubernetes")
        workdir = stack.enter_context(rehearsal_directory("kubernetes"))
        manifests = k8s_target.render(deployment, workdir)
        release = deployment.one("kubernetes:helm.sh/v3:Release")
        services = k8s_target.start_in_chart_services(manifests, k8s_target.secret_data(deployment, manifests), workdir)
        for service in services.values():
            stack.callback(service.stop)
        names = k8s_target.dns_names(release.inputs["namespace"], services)
        calls = workdir / "calls.jsonl"
        postgres = [s for s in services.values() if s.port == 5432]

        def rehearsal_env(workload: Workload) -> tuple[dict[str, str], dict[str, str]]:
            seam = workdir / f"seam-{_slug(workload.name)}.json"
            config = {"log": str(calls), "workload": workload.name, "identity": workload.identity, "dns": names}
            seam.write_text(json.dumps(config))
            env = {"SKYFERRY_REHEARSAL_SEAM": str(seam)}
            reasons = {
                "SKYFERRY_REHEARSAL_SEAM": "the cluster's DNS: the in-chart Services' names resolve to their addresses"
            }
            if postgres:
                env["PGHOSTADDR"] = postgres[0].address
                reasons["PGHOSTADDR"] = "the cluster's DNS for libpq (it resolves names itself): PostgreSQL's address"
            return env, reasons

        rehearsal = Rehearsal(
            deployment=deployment,
            workdir=workdir,
            launcher=launcher(workdir, "kubernetes"),
            workloads=k8s_target.pod_workloads(deployment, manifests),
            rehearsal_env=rehearsal_env,
            token=deployment.secret_values["skyferry:apiToken"],
            api="k8s:skyferry-api/api",
            calls_log=calls,
            extra={"manifests": manifests, "services": services},
        )
        yield stack.enter_context(rehearsed(rehearsal))
