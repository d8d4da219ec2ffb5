"""The OpenAPI schema is complete and valid: it generates without a warning, validates against the
OpenAPI specification, holds every API route, and types every request and response."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from django.core.management import call_command
from django.urls import URLPattern, URLResolver, get_resolver

pytestmark = pytest.mark.django_db


def _schema(tmp_path: Path) -> dict[str, Any]:
    out = tmp_path / "schema.yaml"
    # --fail-on-warn turns any warning or error of the generator into a failure.
    call_command("spectacular", "--validate", "--fail-on-warn", "--file", str(out))
    loaded: dict[str, Any] = yaml.safe_load(out.read_text())
    return loaded


def _api_routes() -> set[str]:
    """Every URL pattern under /api/v1/, in the schema's {name} form."""
    routes: set[str] = set()

    def walk(patterns: list[Any], prefix: str) -> None:
        for entry in patterns:
            if isinstance(entry, URLResolver):
                walk(entry.url_patterns, prefix + str(entry.pattern))
            elif isinstance(entry, URLPattern):
                routes.add(prefix + str(entry.pattern))

    walk(get_resolver().url_patterns, "/")
    return {re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", r) for r in routes if r.startswith("/api/v1/")}


def test_the_schema_generates_without_warnings_and_validates(tmp_path: Path) -> None:
    schema = _schema(tmp_path)
    assert schema["openapi"].startswith("3.")


def test_every_api_route_is_in_the_schema_with_typed_answers(tmp_path: Path) -> None:
    schema = _schema(tmp_path)
    documented = {re.sub(r"\{pk\}", "{id}", p) for p in schema["paths"]}
    routes = {re.sub(r"\{pk\}", "{id}", r) for r in _api_routes()}
    assert routes - documented == set(), "routes missing from the schema"
    for path, methods in schema["paths"].items():
        for method, operation in methods.items():
            if method not in {"get", "post", "put", "patch", "delete"}:
                continue
            ok = {code: r for code, r in operation["responses"].items() if code.startswith("2")}
            assert ok, f"{method.upper()} {path} documents no success"
            for code, response in ok.items():
                if code == "204":
                    continue
                assert response.get("content"), f"{method.upper()} {path} {code}: no typed body"
            if method in {"post", "put", "patch"} and "requestBody" in operation:
                assert operation["requestBody"]["content"], f"{method.upper()} {path}: untyped body"
            # Every operation documents its problem answers (portal.schema).
            assert {"400", "401", "403", "404", "429"} <= set(operation["responses"]), (method, path)
