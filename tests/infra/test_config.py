"""Bad stack config stops the program before any resource is declared, naming the key."""

from __future__ import annotations

import json

import pytest

from providers.base import OUTPUT_NAMES, TARGETS, StackConfigError, current_stack_config, deploy, load_stack_config
from providers.graph import GraphMocks, GraphMonitor, run_program
from providers.stackfile import read_stack

GOOD = {
    "skyferry:target": "kubernetes",
    "skyferry:image": "ghcr.io/skyferry/skyferry:0.1.0",
    "skyferry:databasePassword": "pw-from-secret",
    "skyferry:apiToken": "token-from-secret",
    "skyferry:kubernetes": json.dumps({"natsPassword": "nats-from-secret-0123"}),
}
GOOD_SECRETS = {"skyferry:databasePassword", "skyferry:apiToken", "skyferry:kubernetes"}


def declared_before_error(values: dict[str, str], secret_keys: set[str]) -> tuple[StackConfigError, list[str]]:
    """Run the stack program with ``values``; return the error and what was declared before it."""
    monitor = GraphMonitor(GraphMocks())
    with pytest.raises(StackConfigError) as info:
        run_program(lambda: deploy(current_stack_config()), values, secret_keys, monitor=monitor)
    return info.value, [n.type for n in monitor.nodes]


@pytest.mark.parametrize(
    ("change", "key", "fragment"),
    [
        ({"skyferry:target": "openstack"}, "skyferry:target", "unknown target 'openstack'"),
        ({"skyferry:target": None}, "skyferry:target", "required"),
        ({"skyferry:image": None}, "skyferry:image", "required"),
        ({"skyferry:image": "Bad Image!"}, "skyferry:image", "pattern"),
        ({"skyferry:apiReplicas": "two"}, "skyferry:apiReplicas", "valid integer"),
        ({"skyferry:apiReplicas": "0"}, "skyferry:apiReplicas", "greater than or equal to 1"),
        ({"skyferry:memoryMib": "999999"}, "skyferry:memoryMib", "less than or equal to 16384"),
        ({"skyferry:store": "mongodb"}, "skyferry:store", "'native'"),
        ({"skyferry:replicas": "3"}, "skyferry:replicas", "unknown key"),
        ({"skyferry:aws": json.dumps({"region": "eu-west-1"})}, "skyferry:aws", "target is 'kubernetes'"),
        (
            {"skyferry:kubernetes": json.dumps({"postgresStorageGib": 0})},
            "skyferry:kubernetes.postgresStorageGib",
            "greater than or equal to 1",
        ),
        ({"skyferry:kubernetes": json.dumps({"namespce": "x"})}, "skyferry:kubernetes.namespce", "unknown key"),
        ({"skyferry:kubernetes": "[1, 2]"}, "skyferry:kubernetes", "expected an object"),
        (
            {"skyferry:kubernetes": json.dumps({"postgres": "external"})},
            "skyferry:kubernetes.externalStoreUrl",
            "required",
        ),
        ({"skyferry:apiToken": None}, "skyferry:apiToken", "required"),
    ],
)
def test_bad_input_names_the_key_and_declares_nothing(change: dict[str, str | None], key: str, fragment: str) -> None:
    merged = {**GOOD, **change}
    values = {k: v for k, v in merged.items() if v is not None}
    error, declared = declared_before_error(values, GOOD_SECRETS)
    assert error.key == key
    assert fragment in str(error)
    assert str(error).startswith(key)
    assert declared == []


@pytest.mark.parametrize("target", ["aws", "azure", "gcp", "kubernetes"])
def test_every_target_refuses_store_postgres_and_declares_nothing(target: str) -> None:
    """No target declares a managed PostgreSQL: asking for one is refused, not ignored.

    The clouds would otherwise declare DynamoDB, Cosmos DB or Firestore instead; kubernetes'
    native store is PostgreSQL already.
    """
    values, secret_keys = read_stack(target)
    values = {**values, "skyferry:store": "postgres", "skyferry:databasePassword": "pw-from-secret"}
    error, declared = declared_before_error(values, set(secret_keys) | {"skyferry:databasePassword"})
    assert error.key == "skyferry:store"
    assert "'native'" in str(error)
    assert declared == []


def test_plain_text_secret_is_rejected() -> None:
    error, declared = declared_before_error(GOOD, {"skyferry:apiToken"})
    assert error.key == "skyferry:databasePassword"
    assert "must be a secret" in str(error)
    assert declared == []


def test_plain_text_secret_inside_the_target_section_is_rejected() -> None:
    section = json.dumps(
        {
            "postgres": "external",
            "externalStoreUrl": "postgresql://u:pw@db:5432/x",
            "natsPassword": "nats-0123456789abcdef",
        }
    )
    values = {**GOOD, "skyferry:kubernetes": section}
    error, declared = declared_before_error(values, GOOD_SECRETS - {"skyferry:kubernetes"})
    assert error.key == "skyferry:kubernetes.externalStoreUrl"
    assert "must be a secret" in str(error)
    assert declared == []
    # the same value given as a secret is accepted
    config = load_stack_config(values, GOOD_SECRETS)
    assert config.common.target == "kubernetes"


def test_every_problem_is_listed_with_its_key() -> None:
    values = {**GOOD, "skyferry:apiReplicas": "0", "skyferry:workerReplicas": "99"}
    with pytest.raises(StackConfigError) as info:
        load_stack_config(values, GOOD_SECRETS)
    assert info.value.key == "skyferry:apiReplicas"
    assert "skyferry:workerReplicas" in str(info.value)


def test_good_config_is_parsed_with_types_and_defaults() -> None:
    config = load_stack_config({**GOOD, "skyferry:apiReplicas": "3"}, GOOD_SECRETS)
    assert config.common.api_replicas == 3
    assert config.common.worker_replicas == 1
    assert config.common.database_password is not None
    assert config.common.database_password.get_secret_value() == "pw-from-secret"
    assert "pw-from-secret" not in repr(config)


def test_registry_and_output_names_are_the_contract() -> None:
    assert set(TARGETS) == {"kubernetes", "aws", "azure", "gcp"}
    for target, path in TARGETS.items():
        assert path.startswith(f"providers.{target}.platform:")
    assert OUTPUT_NAMES == ("target", "api_url", "store_url", "broker_url", "archive_url", "image")
