"""Every command in the deployment docs is one the tests check.

The shell blocks of ``docs/{aws,azure,gcp,onprem,providers}.md`` are parsed command by command:

* ``pulumi config set`` keys are ``Pulumi.yaml``'s (or a provider's region/project key), a
  ``--path`` key names a field of the target's config model, ``--secret`` is used exactly for
  the secret keys; and the stack file with every ``config set`` of the doc applied passes
  Pulumi's own rules and ``load_stack_config``;
* ``pulumi stack init`` names a stack of ``stacks/``, and comes before anything that needs it;
  ``pulumi up --target`` names resources of that stack's graph, with every parent and
  dependency of each targeted too (what Pulumi requires); ``pulumi stack output`` names a
  standard output;
* ``skyferry`` commands parse with the CLI, in a pod too (``kubectl exec … -- skyferry …``);
  ``make image TARGET=…`` is a Makefile target and a target; ``uv sync`` is the command that
  keeps the database drivers (``test_plan``);
  ``curl`` requests name a route of the API with its method and send the bearer token;
* any other program is one of a short list (the clouds' CLIs, the container engines, …).
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from typing import Any

import pytest
import yaml
from pydantic.alias_generators import to_camel

from providers import plan as plan_mod
from providers.base import OUTPUT_NAMES, TARGETS, load_stack_config, platform_class
from providers.projectconfig import load_project
from providers.stackfile import STACKS_DIR, parse_config, stack_names
from tests.infra.tools import ROOT

TARGET_DOCS = {"aws": "aws.md", "azure": "azure.md", "gcp": "gcp.md", "kubernetes": "onprem.md"}
ALL_DOCS = (*TARGET_DOCS.values(), "providers.md")
PROVIDER_KEYS = {"aws:region", "gcp:project", "gcp:region", "azure-native:location"}
OTHER_PROGRAMS = {"aws", "az", "gcloud", "docker", "podman", "kubectl", "openssl", "jq", "export"}
#: What a shell variable or command substitution stands for, where a value is needed.
SAMPLES = {
    "ACCOUNT": "123456789012",
    "REGISTRY": "123456789012.dkr.ecr.eu-west-1.amazonaws.com",
    "CERT": "arn:aws:acm:eu-west-1:123456789012:certificate/3f1d2c4b-8a7e-4c2d-9b1a-6e5f4d3c2b1a",
    "ACR": "acrskyferry849030",
    "PROJECT": "my-ledger-project",
    "HOME": "/home/me",
}
SUBSTITUTIONS = {
    "skyferry:apiToken": "0123456789abcdef0123456789abcdef",
    "skyferry:databasePassword": "p@ss/w#rd%?0123456789",
    "skyferry:gcp.projectNumber": "123456789012",
}


@dataclass
class Command:
    """One simple command of a doc's shell block, with the command substitutions it contains."""

    doc: str
    line: str
    argv: list[str]


def shell_blocks(doc: str) -> list[str]:
    text = (ROOT / "docs" / doc).read_text()
    return re.findall(r"```(?:sh|bash|shell)\n(.*?)```", text, re.DOTALL)


def substitutions(line: str) -> tuple[str, list[str]]:
    """``line`` with each ``$(…)`` replaced by ``SUBSTITUTION``, and the commands they held."""
    outer, inner, i = "", [], 0
    while i < len(line):
        if line.startswith("$(", i):
            depth, j, quote = 1, i + 2, ""
            while depth:
                char = line[j]
                if quote:
                    quote = "" if char == quote else quote
                elif char in "'\"":
                    quote = char
                elif char == "(":
                    depth += 1
                elif char == ")":
                    depth -= 1
                j += 1
            inner.append(line[i + 2 : j - 1])
            outer += "SUBSTITUTION"
            i = j
        else:
            outer += line[i]
            i += 1
    return outer, inner


def simple_commands(text: str) -> Iterator[list[str]]:
    """The simple commands of a command line: split at pipes, ``&&`` and ``;`` outside quotes."""
    lexer = shlex.shlex(text, posix=True, punctuation_chars="|&;")
    lexer.whitespace_split = True
    lexer.commenters = "#"
    argv: list[str] = []
    for token in lexer:
        if token in ("|", "&&", ";", "||"):
            if argv:
                yield argv
            argv = []
        else:
            argv.append(token)
    if argv:
        yield argv


def commands(doc: str) -> Iterator[Command]:
    """Every simple command of the doc's shell blocks, ``$(…)`` substitutions included, in order."""
    for block in shell_blocks(doc):
        for raw in block.replace("\\\n", " ").splitlines():
            outer, inner = substitutions(raw)
            for text in [*inner, outer]:
                for argv in simple_commands(text):
                    while argv and re.fullmatch(r"[A-Z_]+=.*", argv[0]):  # VAR=value before a program
                        argv = argv[1:]
                    if argv:
                        yield Command(doc, raw, argv)


def expand(value: str, key: str) -> str:
    """A doc's value with its shell variables and substitutions replaced by samples."""
    if "SUBSTITUTION" in value:
        return SUBSTITUTIONS[key]
    return re.sub(r"\$\{?([A-Z_]+)\}?", lambda m: SAMPLES[m.group(1)], value)


@cache
def graph_urns(stack: str) -> dict[str, tuple[str | None, tuple[str, ...]]]:
    """The stack's resources: URN -> (parent URN, dependency URNs)."""
    graph = plan_mod.make_plan(stack).graph
    return {n.urn: (n.parent, tuple(n.dependencies)) for n in graph.nodes}


@cache
def cli() -> Any:
    """The ``skyferry`` command group as click sees it (typer vendors its own click)."""
    from typer.main import get_command

    from skyferry.cli import cli as typer_cli
    from skyferry.cli import mount_extensions

    mount_extensions(typer_cli)
    return get_command(typer_cli)


@cache
def api_openapi() -> dict[str, Any]:
    """The API's OpenAPI document (its routes, methods and request bodies)."""
    from skyferry.api.app import create_app
    from skyferry.settings import load_settings

    document: dict[str, Any] = create_app(load_settings(api_token="0" * 32), None).openapi()  # type: ignore[arg-type]
    return document


def model_fields(target: str) -> set[str]:
    return {to_camel(name) for name in platform_class(target).config_model.model_fields}


# --- the checks, by program -------------------------------------------------------------------


def check_config_set(argv: list[str], target: str, config: dict[str, Any]) -> None:
    project = load_project()
    flags = {a for a in argv[3:] if a.startswith("--")}
    rest = [a for a in argv[3:] if not a.startswith("--")]
    assert flags <= {"--secret", "--path"}, argv
    key, value = rest[0], rest[1] if len(rest) > 1 else None
    assert value is not None, f"{argv}: every config set gives its value (no prompt)"
    if "--path" in flags:
        top, _, field = key.partition(".")
        assert top == f"skyferry:{target}", f"{key}: a --path key of another target's section"
        assert field in model_fields(target), f"{key}: no such key in {target}'s config model"
        secret = "SecretStr" in str(platform_class(target).config_model.model_fields[_snake(target, field)].annotation)
        config.setdefault(top, {})
        if not isinstance(config[top], dict):
            config[top] = {}
        section = config[top]
        section[field] = expand(value, key) if not secret else {"secure": "v1:doc"}
    else:
        assert key in project.config or key in PROVIDER_KEYS, f"{key}: not a key of Pulumi.yaml nor a provider's"
        declared = project.config.get(key)
        secret = bool(declared and declared.secret)
        config[key] = {"secure": "v1:doc"} if secret else expand(value, key)
    assert ("--secret" in flags) == secret, f"{key}: --secret must be used exactly for secret keys"


def _snake(target: str, alias: str) -> str:
    return next(n for n in platform_class(target).config_model.model_fields if to_camel(n) == alias)


def check_pulumi(command: Command, target: str, state: dict[str, Any]) -> None:
    argv = command.argv
    verb = argv[1]
    if verb == "login":
        assert argv[2:] in ([], ["--local"]), argv
        state["login"] = True
        return
    assert state.get("login"), f"{command.line}: before pulumi login"
    if argv[1:3] == ["stack", "init"]:
        assert argv[3] in stack_names(), f"{argv[3]}: no such stack file in the stacks folder"
        state["stack"] = argv[3]
        state["config"] = yaml.safe_load((STACKS_DIR / f"Pulumi.{argv[3]}.yaml").read_text())["config"]
        return
    if argv[1:3] == ["stack", "rm"]:
        assert argv[3] == state.get("stack"), argv
        return
    assert state.get("stack") == target, f"{command.line}: needs `pulumi stack init {target}` first"
    if argv[1:3] == ["config", "set"]:
        check_config_set(argv, target, state["config"])
    elif argv[1:3] == ["config", "get"]:
        assert argv[3] in load_project().config, argv
    elif argv[1:3] == ["stack", "output"]:
        assert argv[3:4] == [] or argv[3] in OUTPUT_NAMES, argv
    elif verb == "up":
        targets = [argv[i + 1] for i, a in enumerate(argv) if a == "--target"]
        assert len(targets) == argv.count("--target"), argv
        urns = graph_urns(target)
        for urn in targets:
            assert urn in urns, f"{urn}: not a resource of the {target} stack"
            parent, dependencies = urns[urn]
            needed = {d for d in dependencies if d in urns} | ({parent} if parent in urns else set())
            assert needed <= set(targets), f"{urn}: Pulumi needs {sorted(needed - set(targets))} targeted too"
        state.setdefault("ups", 0)
        state["ups"] += 1
    else:
        assert verb in ("destroy", "preview", "refresh"), argv


def check_skyferry(argv: list[str]) -> None:
    name, *rest = argv[1:]
    command = cli().commands.get(name)
    assert command is not None, f"skyferry {name}: no such command"
    ctx = command.make_context(name, list(rest))  # an unknown option or a missing required one raises
    if name == "plan":
        assert ctx.params["stack"] in stack_names()
        assert ctx.params["format"] in plan_mod.FORMATS


def check_curl(argv: list[str]) -> None:
    method = argv[argv.index("-X") + 1] if "-X" in argv else ("POST" if "-d" in argv else "GET")
    [url] = [a for a in argv[1:] if a.startswith(("https://", "$API"))]
    assert url.startswith(("https://", "$API/")), f"{url}: requests go over TLS (api_url is https)"
    path = "/" + (url.removeprefix("$API/") if url.startswith("$API/") else url.split("/", 3)[3])
    document = api_openapi()
    matches = [
        operations[method.lower()]
        for pattern, operations in document["paths"].items()
        if method.lower() in operations and re.fullmatch(re.sub(r"\{[^}]+\}", "[^/]+", pattern), path)
    ]
    assert matches, f"{method} {path}: no such route"
    assert "Authorization: Bearer $TOKEN" in argv, f"{argv}: the API needs the bearer token"
    if "-d" in argv:
        import json

        body = json.loads(argv[argv.index("-d") + 1])
        ref = matches[0]["requestBody"]["content"]["application/json"]["schema"]["$ref"].rsplit("/", 1)[-1]
        schema = document["components"]["schemas"][ref]
        assert set(schema.get("required", [])) <= set(body) <= set(schema["properties"]), f"{body} vs {ref}"


# --- the tests ------------------------------------------------------------------------------------


@pytest.mark.parametrize("target", sorted(TARGET_DOCS))
def test_every_command_of_a_targets_doc_is_checked_and_its_stack_is_valid(target: str) -> None:
    doc = TARGET_DOCS[target]
    state: dict[str, Any] = {}
    seen: set[str] = set()
    for command in commands(doc):
        program = command.argv[0]
        seen.add(program)
        if program == "pulumi":
            check_pulumi(command, target, state)
        elif program == "skyferry" or command.argv[:2] == ["uv", "run"]:
            check_skyferry(command.argv[2:] if program == "uv" else command.argv)
        elif program == "uv":
            assert command.argv == ["uv", "sync", "--all-extras", "--group", "infra"], command.argv
        elif program == "make":
            assert command.argv[:2] == ["make", "image"], command.argv
            assert re.search(r"^image:", (ROOT / "Makefile").read_text(), re.MULTILINE)
            assert command.argv[2:] == [f"TARGET={target}"], command.argv
        elif program == "curl":
            check_curl(command.argv)
        elif program == "kubectl" and "--" in command.argv:  # `kubectl exec … -- skyferry …`: run in a pod
            in_pod = command.argv[command.argv.index("--") + 1 :]
            assert in_pod[0] == "skyferry", command.argv
            check_skyferry(in_pod)
        else:
            assert program in OTHER_PROGRAMS, f"{command.line}: {program} is neither run nor checked by the tests"
    for step in ("pulumi", "make", "curl", "uv"):
        assert step in seen, f"{doc} has no {step} step"
    assert state.get("ups", 0) >= 2, f"{doc}: no roll-out (a second pulumi up)"
    # the stack as the doc leaves it: Pulumi's rules, then the program's
    values, secret = parse_config(state["config"], target)
    config = load_stack_config(values, secret)
    assert config.common.target == target
    assert config.common.image.endswith("/skyferry:0.1.0"), config.common.image


@pytest.mark.parametrize("doc", ALL_DOCS)
def test_no_doc_selects_a_stack_it_did_not_create(doc: str) -> None:
    created: set[str] = set()
    for command in commands(doc):
        argv = command.argv
        if argv[:3] == ["pulumi", "stack", "init"]:
            created.add(argv[3])
        if argv[:3] == ["pulumi", "stack", "select"]:
            assert argv[3] in created, f"{doc}: `pulumi stack select {argv[3]}` before `pulumi stack init`"


def test_the_local_backend_and_every_target_are_documented() -> None:
    for target, doc in TARGET_DOCS.items():
        argvs = [c.argv for c in commands(doc)]
        assert ["pulumi", "login", "--local"] in argvs, doc
        assert ["pulumi", "stack", "init", target] in argvs, doc
        assert ["pulumi", "destroy"] in argvs, doc
        assert target in TARGETS
        assert "Cost drivers" in (ROOT / "docs" / doc).read_text(), doc
