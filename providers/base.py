"""The target contract: one config model in, the same standard outputs out, on every target.

How a target plugs in (see ``docs/providers.md``)
-------------------------------------------------
A target is a package ``providers/<target>/`` with the same file names in every folder:

``config.py``
    ``class <Target>Config(TargetConfig)``: the target's own settings.  They are read from
    the one structured config key ``skyferry:<target>`` (e.g. ``skyferry:aws``, an object in
    the stack file), validated with pydantic *before any resource is declared*.  Field names
    are snake_case in Python and camelCase in the stack file (``certificate_arn`` ⇄
    ``certificateArn``).  Unknown keys are rejected.

``platform.py``
    ``class <Target>Platform(Platform[<Target>Config])``: a ``pulumi.ComponentResource`` with
    the class attributes ``target = "<target>"`` and ``config_model = <Target>Config``, and one
    method ``build(self) -> StandardOutputs`` that calls the role steps below, which declare
    every child with ``parent=self`` (:meth:`Platform.child_opts`), and returns the standard
    outputs.  The target's section
    is ``self.section`` (typed ``<Target>Config``), the common settings ``self.common``.  The base class calls
    ``build`` and ``register_outputs``; the type token is ``skyferry:<target>:Platform``.

``network.py``, ``identity.py``, ``store.py``, ``broker.py``, ``archive.py``, ``compute.py``
    One module per role, with the same steps on every target, each taking the platform
    first (``platform: Platform[<Target>Config]``) and returning a result of the same name
    (``Store`` …): ``declare_network``; ``declare_identity`` and ``grant_access`` (the grants
    on the data, after it exists); ``declare_store``; ``declare_broker``; ``declare_archive``;
    ``declare_compute``.  ``build`` calls them in that order (the grants before compute), so
    two targets' modules of one role compare like with like.  A role with nothing to declare
    on a target still has its module (its step returns the URL, or names what the target
    uses instead).

``__init__.py``
    A docstring only (no imports with side effects): what the target creates.

Then add one line to :data:`TARGETS` below.  The stack program (``stacks/__main__.py``)
calls :func:`load_stack_config` and :func:`deploy`; ``skyferry plan`` runs the same under
Pulumi mocks.

Config keys (namespace ``skyferry``)
------------------------------------
Common keys are the fields of :class:`CommonConfig` in camelCase (``skyferry:apiReplicas``);
the target section is ``skyferry:<target>``.  A field typed :class:`pydantic.SecretStr` must
come from a *secret* config value (``pulumi config set --secret``); a plain-text value is
rejected naming the key.  Every error is a :class:`StackConfigError` naming the full key
(``skyferry:aws.certificateArn``) and what was expected.

Standard outputs
----------------
:data:`OUTPUT_NAMES`, the same names and units on every target (see :class:`StandardOutputs`).
"""

from __future__ import annotations

import importlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any, ClassVar, Generic, Literal, NoReturn, TypeVar

import pulumi
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError
from pydantic.alias_generators import to_camel

from skyferry.core.errors import ConfigurationError

NAMESPACE = "skyferry"

#: target name -> ``"module:Class"`` of its Platform (imported only when chosen).
TARGETS: dict[str, str] = {
    "kubernetes": "providers.kubernetes.platform:KubernetesPlatform",
    "aws": "providers.aws.platform:AwsPlatform",
    "azure": "providers.azure.platform:AzurePlatform",
    "gcp": "providers.gcp.platform:GcpPlatform",
}

TargetName = Literal["kubernetes", "aws", "azure", "gcp"]


class StackConfigError(ConfigurationError):
    """A stack config value is missing, unknown, of the wrong type, out of range, or not secret.

    ``key`` is the full config key (``skyferry:apiReplicas``, ``skyferry:aws.region``).
    """

    def __init__(self, key: str, problem: str) -> None:
        self.key = key
        self.problem = problem
        super().__init__(f"{key}: {problem}")


class ConfigModel(BaseModel):
    """Base of every config model: camelCase keys in the stack file, unknown keys rejected, frozen."""

    model_config = ConfigDict(
        extra="forbid",
        alias_generator=to_camel,
        populate_by_name=True,
        frozen=True,
        str_strip_whitespace=True,
    )


class TargetConfig(ConfigModel):
    """Base of a target's own config section (``skyferry:<target>``); subclass it in ``config.py``."""


class CommonConfig(ConfigModel):
    """Settings every target understands.  Sizes are per container; units are in the names."""

    target: TargetName = Field(description="which target deploys the app: kubernetes, aws, azure or gcp")
    name: str = Field(
        default="skyferry",
        pattern=r"^[a-z][a-z0-9-]{1,18}[a-z0-9]$",
        description="prefix of every resource name (3-20 chars: lower-case letters, digits, dashes)",
    )
    image: str = Field(
        pattern=r"^[a-z0-9][a-z0-9._/:-]*(@sha256:[a-f0-9]{64})?$",
        max_length=255,
        description="the app image, same for serve, worker and migrate (registry/repo:tag or @sha256:digest)",
    )
    api_replicas: int = Field(default=2, ge=1, le=50, description="API processes (minimum when autoscaled)")
    api_max_replicas: int = Field(default=6, ge=1, le=100, description="API autoscaling maximum")
    worker_replicas: int = Field(default=1, ge=1, le=20, description="relay + projection processes")
    cpu_millicores: int = Field(default=500, ge=250, le=4000, description="CPU per container, millicores")
    memory_mib: int = Field(default=1024, ge=512, le=16384, description="memory per container, MiB")
    store: Literal["native"] = Field(
        default="native",
        description="event + view store: the target's own database (PostgreSQL on kubernetes, DynamoDB, "
        "Cosmos DB, Firestore)",
    )
    broker: Literal["native"] = Field(default="native", description="the target's native broker")
    archive_retention_days: int = Field(default=365, ge=1, le=3650, description="days exports are kept")
    broker_retention_days: int = Field(
        default=7,
        ge=1,
        le=7,
        description="days the broker keeps an event nobody consumed (7 at most: Pub/Sub's limit); the store keeps all",
    )
    deletion_protection: bool = Field(default=True, description="protect the event store from deletion")
    database_password: SecretStr | None = Field(
        default=None, description="PostgreSQL password (secret; required by the in-chart PostgreSQL of kubernetes)"
    )
    api_token: SecretStr = Field(
        min_length=16,
        description="bearer token of the API (secret, at least 16 characters: SKYFERRY_API_TOKEN, required by serve)",
    )
    labels: dict[str, str] = Field(default_factory=dict, description="extra labels/tags on every resource")


ConfigT = TypeVar("ConfigT", bound=TargetConfig)
"""A target's config model (``AwsConfig`` …): what :class:`StackConfig` and :class:`Platform` are generic over."""


@dataclass(frozen=True)
class StackConfig(Generic[ConfigT]):
    """The validated config of one stack: the common settings and the chosen target's section.

    ``StackConfig[AwsConfig]`` is an aws stack's; :func:`load_stack_config` returns a
    ``StackConfig[TargetConfig]`` whose section was validated by the target's ``config_model``.
    """

    common: CommonConfig
    target: ConfigT


@dataclass
class StandardOutputs:
    """What every target exports, with the same names and units.

    - ``target``: the target name (``aws`` …).
    - ``api_url``: base URL of the HTTP API (``https://…`` or ``http://`` in-cluster), no trailing slash.
    - ``store_url``: the app's store URL (a scheme of ``skyferry.adapters.registry``); a secret output
      if it holds a credential.
    - ``broker_url``: the app's broker URL (a scheme of ``skyferry.adapters.registry``).
    - ``archive_url``: where exports go (``s3://``, ``az://``, ``gs://`` or a ``file://`` path).
    - ``image``: the image reference the workloads run.
    """

    target: pulumi.Input[str]
    api_url: pulumi.Input[str]
    store_url: pulumi.Input[str]
    broker_url: pulumi.Input[str]
    archive_url: pulumi.Input[str]
    image: pulumi.Input[str]

    def as_dict(self) -> dict[str, pulumi.Input[str]]:
        """The outputs by name, in :data:`OUTPUT_NAMES` order."""
        return {f.name: getattr(self, f.name) for f in fields(self)}


#: The output names every stack exports (tests assert every target has exactly these).
OUTPUT_NAMES: tuple[str, ...] = tuple(f.name for f in fields(StandardOutputs))


class Platform(pulumi.ComponentResource, Generic[ConfigT]):
    """Base of every target's ComponentResource (type token ``skyferry:<target>:Platform``).

    Generic over the target's config model: ``class AwsPlatform(Platform[AwsConfig])`` sets
    ``target`` and ``config_model = AwsConfig`` and implements :meth:`build`, where
    ``self.section`` is the target's section, typed ``AwsConfig``, and ``self.common`` the
    common settings.  The section is reached that one way (no ``isinstance``, no cast).
    """

    target: ClassVar[str]
    config_model: ClassVar[type[TargetConfig]]

    def __init__(self, name: str, config: StackConfig[ConfigT], opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__(f"{NAMESPACE}:{self.target}:Platform", name, None, opts)
        self.config = config
        self.common: CommonConfig = config.common
        self.section: ConfigT = config.target
        self.outputs = self.build()
        self.register_outputs(dict(self.outputs.as_dict()))

    @classmethod
    def validate(cls, config: StackConfig[ConfigT]) -> None:
        """Cross-checks between the common settings and the target section (override as needed).

        Called by :func:`load_stack_config` before anything is declared; raise
        :class:`StackConfigError` naming the key.
        """

    def build(self) -> StandardOutputs:
        """Declare every child resource (``parent=self``) and return the standard outputs."""
        raise NotImplementedError

    def child_opts(self, **kwargs: Any) -> pulumi.ResourceOptions:
        """``ResourceOptions`` with ``parent=self`` (plus any option given)."""
        return pulumi.ResourceOptions(parent=self, **kwargs)

    def tags(self, **extra: str) -> dict[str, str]:
        """Labels/tags for every resource: app, stack name, target, plus the config's ``labels``."""
        return {
            "app": "skyferry",
            "skyferry-name": self.common.name,
            "skyferry-target": self.target,
            **self.common.labels,
            **extra,
        }


def platform_class(target: str) -> type[Platform[Any]]:
    """The Platform class of ``target`` from :data:`TARGETS`; unknown or not installed → StackConfigError."""
    path = TARGETS.get(target)
    if path is None:
        raise StackConfigError(
            f"{NAMESPACE}:target", f"unknown target {target!r}; expected one of {', '.join(TARGETS)}"
        )
    module_name, _, class_name = path.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if e.name and (module_name == e.name or module_name.startswith(e.name + ".")):
            raise StackConfigError(
                f"{NAMESPACE}:target", f"target {target!r} is not implemented yet (no module {module_name})"
            ) from e
        raise
    cls: type[Platform[Any]] = getattr(module, class_name)
    return cls


def _key_of(loc: tuple[int | str, ...], section: str | None) -> str:
    """The full config key for a pydantic error location."""
    path = [str(p) for p in loc]
    if section is not None:
        return f"{NAMESPACE}:{section}" + "".join(f".{p}" for p in path)
    if not path:
        return f"{NAMESPACE}:"
    return f"{NAMESPACE}:{path[0]}" + "".join(f".{p}" for p in path[1:])


def _raise_first(e: ValidationError, section: str | None, model: type[BaseModel]) -> NoReturn:
    """Turn a pydantic error into a StackConfigError naming the key (every problem listed).

    The value given is quoted, except a secret's.
    """
    problems: list[tuple[str, str]] = []
    secret = {to_camel(name) for name in _secret_fields(model)} | set(_secret_fields(model))
    for err in e.errors():
        key = _key_of(tuple(err["loc"]), section)
        if err["type"] == "missing":
            problems.append((key, "required key is missing"))
        elif err["type"] == "extra_forbidden":
            problems.append((key, "unknown key"))
        elif err["loc"] and err["loc"][0] in secret:
            problems.append((key, err["msg"].replace("items", "characters")))
        else:
            problems.append((key, f"{err['msg']} (got {err.get('input')!r})"))
    first_key, first_problem = problems[0]
    more = "".join(f"; {key}: {problem}" for key, problem in problems[1:])
    raise StackConfigError(first_key, first_problem + more) from e


def _secret_fields(model: type[BaseModel]) -> list[str]:
    """Names of the fields typed SecretStr (or SecretStr | None)."""
    return [name for name, f in model.model_fields.items() if "SecretStr" in str(f.annotation)]


def _parse(raw: str) -> Any:
    """A config value as given (Pulumi passes strings; objects and numbers as JSON)."""
    try:
        return json.loads(raw)
    except ValueError:
        return raw


_INTEGER = re.compile(r"[+-]?[0-9]+")


def _common_value(name: str, raw: str) -> Any:
    """A common key's text read by Pulumi's rules for its type (``providers.projectconfig``).

    An integer is what ``strconv.Atoi`` parses (``5``, ``+5``; not ``5.0``), a boolean is
    exactly ``true`` or ``false``, objects are JSON, anything else stays text, so what Pulumi
    refuses is refused here too (pydantic would take ``yes`` for a boolean).
    """
    field = CommonConfig.model_fields.get(name)
    annotation = field.annotation if field is not None else None
    if annotation is int:
        return int(raw) if _INTEGER.fullmatch(raw) else raw
    if annotation is bool:
        return {"true": True, "false": False}.get(raw, raw)
    if annotation is str or "SecretStr" in str(annotation) or "Literal" in str(annotation):
        return raw
    return _parse(raw)


def load_stack_config(
    values: Mapping[str, str], secret_keys: set[str] | frozenset[str] = frozenset()
) -> StackConfig[TargetConfig]:
    """Validate a stack's config (``{"skyferry:target": "aws", ...}``, strings as Pulumi gives them).

    ``values`` are what Pulumi hands the program: the stack's values plus ``Pulumi.yaml``'s
    defaults (an empty ``{}`` section for every target, an empty ``databasePassword``).  An
    empty section of another target is therefore accepted, a non-empty one refused; an empty
    optional secret counts as unset.  Keys of other namespaces (``aws:region``,
    ``kubernetes:context``) are left to their providers.  Raises :class:`StackConfigError`
    naming the key on the first bad input; nothing is declared before this returns.
    """
    ours = {k.split(":", 1)[1]: v for k, v in values.items() if k.startswith(f"{NAMESPACE}:")}
    target = ours.get("target")
    if target is None:
        raise StackConfigError(f"{NAMESPACE}:target", f"required key is missing; expected one of {', '.join(TARGETS)}")
    if target not in TARGETS:
        raise StackConfigError(
            f"{NAMESPACE}:target", f"unknown target {target!r}; expected one of {', '.join(TARGETS)}"
        )
    for other in TARGETS:
        if other != target and other in ours and _parse(ours.pop(other)) != {}:
            raise StackConfigError(f"{NAMESPACE}:{other}", f"section for target {other!r}, but target is {target!r}")
    section_raw = ours.pop(target, None)
    common_values = {k: _common_value(_field_name(CommonConfig, k), v) for k, v in ours.items()}
    for name in _secret_fields(CommonConfig):
        alias = to_camel(name)
        if common_values.get(alias) == "":
            del common_values[alias]  # Pulumi.yaml's default: not set
        elif alias in common_values and f"{NAMESPACE}:{alias}" not in secret_keys:
            raise StackConfigError(
                f"{NAMESPACE}:{alias}", "must be a secret (pulumi config set --secret), not plain text"
            )
    try:
        common = CommonConfig.model_validate(common_values, strict=True)
    except ValidationError as e:
        _raise_first(e, None, CommonConfig)
    platform = platform_class(target)
    model = platform.config_model
    section: Any = {} if section_raw is None else _parse(section_raw)
    if not isinstance(section, dict):
        raise StackConfigError(f"{NAMESPACE}:{target}", f"expected an object, got {section_raw!r}")
    if _secret_fields(model) and section_raw is not None and f"{NAMESPACE}:{target}" not in secret_keys:
        secret_given = [to_camel(n) for n in _secret_fields(model) if to_camel(n) in section or n in section]
        if secret_given:
            raise StackConfigError(
                f"{NAMESPACE}:{target}.{secret_given[0]}",
                "must be a secret (pulumi config set --secret --path), not plain text",
            )
    try:
        target_config = model.model_validate(section)
    except ValidationError as e:
        _raise_first(e, target, model)
    config = StackConfig(common=common, target=target_config)
    platform.validate(config)
    return config


def _field_name(model: type[BaseModel], alias: str) -> str:
    """The field name of a camelCase key (the key itself when the model has no such field)."""
    return next((name for name in model.model_fields if to_camel(name) == alias), alias)


def current_stack_config() -> StackConfig[TargetConfig]:
    """The running Pulumi program's config, validated (see :func:`load_stack_config`)."""
    from pulumi.runtime import config as runtime_config

    values = {k: str(v) for k, v in runtime_config.CONFIG.get().items()}
    for key, value in runtime_config.get_config_env().items():
        values.setdefault(key, str(value))
    secret = set(runtime_config._SECRET_KEYS.get()) | set(runtime_config.get_config_secret_keys_env())
    return load_stack_config(values, secret)


def deploy(config: StackConfig[TargetConfig], name: str | None = None) -> Platform[Any]:
    """Declare the chosen target's Platform and export the standard outputs (the stack program)."""
    cls = platform_class(config.common.target)
    platform = cls(name or config.common.name, config)
    for key, value in platform.outputs.as_dict().items():
        pulumi.export(key, value)
    return platform
