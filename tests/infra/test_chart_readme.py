"""The chart's README is generated from the comments of its values and kept up to date."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]


def generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("chart_readme", ROOT / "scripts" / "chart_readme.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def leaves(node: Any, prefix: str = "") -> list[str]:
    if isinstance(node, dict) and node:
        return [leaf for key, value in node.items() for leaf in leaves(value, f"{prefix}{key}.")]
    return [prefix.rstrip(".")]


def test_the_readme_is_what_the_values_comments_generate() -> None:
    readme = (ROOT / "charts" / "skyferry" / "README.md").read_text()
    assert readme == generator().render(), "charts/skyferry/README.md is stale: run scripts/chart_readme.py"


def test_every_value_is_documented_by_itself_or_a_parent() -> None:
    text = (ROOT / "charts" / "skyferry" / "values.yaml").read_text()
    keys = {key for key, _ in generator().documented(text)}
    undocumented = [
        leaf
        for leaf in leaves(yaml.safe_load(text))
        if not any(leaf == key or leaf.startswith(key + ".") for key in keys)
    ]
    assert undocumented == []


def test_a_comment_spans_lines_and_belongs_to_the_next_key_only() -> None:
    found = generator().documented(
        "a:\n  # -- first line\n  # goes on\n  b: 1\n  c: 2\n# -- top\nd:\n  e: 3\n\n# stray\nf: 4\n"
    )
    assert found == [("a.b", "first line goes on"), ("d", "top")]
