"""docs/api.md, the human guide, names every operation of docs/openapi.yaml."""

from __future__ import annotations

import re

import yaml

from harness.paths import DOCS

METHODS = ("get", "put", "post", "delete", "patch", "head", "options")


def operations() -> list[tuple[str, str]]:
    """(METHOD, path) of every operation in openapi.yaml."""
    spec = yaml.safe_load((DOCS / "openapi.yaml").read_text())
    return [(m.upper(), path) for path, ops in spec["paths"].items() for m in ops if m in METHODS]


def test_every_operation_is_in_the_guide() -> None:
    """Each operation appears in docs/api.md as `METHOD /path` (path spelled as in the spec)."""
    guide = (DOCS / "api.md").read_text()
    ops = operations()
    assert len(ops) >= 20
    missing = [f"{m} {p}" for m, p in ops if f"`{m} {p}`" not in guide]
    assert not missing, f"docs/api.md does not mention: {missing}"


def test_guide_names_no_operation_the_spec_lacks() -> None:
    """Every `METHOD /path` named in docs/api.md is an operation of openapi.yaml."""
    guide = (DOCS / "api.md").read_text()
    named = set(re.findall(r"`(GET|PUT|POST|DELETE|PATCH) (/[^`\s]*)`", guide))
    extra = sorted(f"{m} {p}" for m, p in named - set(operations()))
    assert not extra, f"docs/api.md names operations openapi.yaml lacks: {extra}"
