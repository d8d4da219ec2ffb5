"""Hostile request bodies on every API route that takes one: a 4xx problem+json naming the reason.

The routes are found by walking the URL resolver (every DRF view under /api/v1/ with a POST, PUT,
PATCH or DELETE handler), so a route added later is covered without a word here. Each is called
by a persona the isolation table says may use it (tests/isolation/routes.py, which must cover every
route), on that table's real objects: without the body checks the request would reach the view.
No answer may be a 500, an HTML page or empty, and nothing may be logged with a traceback.

A NUL in a query string is refused the same way, on every route of the isolation table.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
from django.conf import settings
from django.urls import URLPattern, URLResolver, get_resolver
from rest_framework.test import APIClient

from portal.body_limits import MAX_JSON_DEPTH, json_too_deep
from security.models import AuditRecord
from tests.isolation.routes import Case, all_http_cases
from tests.isolation.world import PERSONAS, World, build_world

pytestmark = pytest.mark.django_db

WRITE_METHODS = ("post", "put", "patch", "delete")


def write_routes() -> list[tuple[str, str, str]]:
    """(URL name, METHOD, pattern) of every API view method that can take a JSON body."""
    found: list[tuple[str, str, str]] = []

    def walk(patterns: list[Any], prefix: str) -> None:
        for entry in patterns:
            if isinstance(entry, URLResolver):
                walk(entry.url_patterns, prefix + str(entry.pattern))
            elif isinstance(entry, URLPattern):
                route = prefix + str(entry.pattern)
                view = getattr(entry.callback, "cls", None)
                if not route.startswith("api/") or view is None:
                    continue
                # A view that streams its own body (an image upload: octet-stream, bounded by the
                # tenant's quota) is not a JSON route; tests/compute/test_image_upload.py covers it.
                streamed = {m.lower() for m in getattr(view, "streamed_body_methods", ())}
                for method in WRITE_METHODS:
                    if hasattr(view, method) and method not in streamed:
                        found.append((str(entry.name), method.upper(), route))

    walk(get_resolver().url_patterns, "")
    return found


@dataclass(frozen=True)
class Target:
    name: str
    method: str
    path: str
    persona: str


def _allowed_persona(case: Case) -> str | None:
    """A persona the table lets past authentication, permission and tenant scoping."""
    codes = {p: c for p, c in case.expect.items() if isinstance(c, int)}
    for persona in PERSONAS:
        if 200 <= codes.get(persona, 0) < 300:
            return persona
    return next((p for p in PERSONAS if codes.get(p, 0) not in (0, 401, 403, 404)), None)


def targets(world: World) -> list[Target]:
    cases = all_http_cases()
    out: list[Target] = []
    for name, method, route in write_routes():
        case = next((c for c in cases.get(name, []) if c.method == method), None)
        assert case is not None, f"{method} {route} ({name}) has no case in tests/isolation/routes.py"
        persona = _allowed_persona(case)
        assert persona is not None, f"{method} {route}: no persona may use it"
        out.append(Target(name, method, case.path(world), persona))
    return out


@dataclass(frozen=True)
class Hostile:
    body: Callable[[], bytes]
    content_type: str | None
    status: int
    field: str
    rule: str


def _nested(levels: int, opening: str, closing: str) -> bytes:
    return (opening * levels + closing * levels).encode()


def _too_large() -> bytes:
    # Valid JSON one byte over the limit: only its size is wrong.
    limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
    return b'{"name": "' + b"x" * (limit - 11) + b'"}'


MALFORMED_MULTIPART = b"--x\r\nbad"  # no part opens with the boundary
HOSTILE = {
    # About 1,000 levels in under 2 KB: the stock JSON decoder's RecursionError.
    "deep-arrays": Hostile(lambda: _nested(1000, "[", "]"), "application/json", 400, "body", "max_depth"),
    "deep-objects": Hostile(
        lambda: _nested(1000, '{"a":', "}").replace(b'{"a":}', b'{"a":1}'),
        "application/json",
        400,
        "body",
        "max_depth",
    ),
    "too-large": Hostile(_too_large, "application/json", 413, "body", "max_size"),
    "malformed-multipart": Hostile(
        lambda: MALFORMED_MULTIPART,
        "multipart/form-data; boundary=xyz",
        415,
        "Content-Type",
        "unsupported_media_type",
    ),
    "form": Hostile(
        lambda: b"name=vm-1",
        "application/x-www-form-urlencoded",
        415,
        "Content-Type",
        "unsupported_media_type",
    ),
    "text": Hostile(lambda: b"hello", "text/plain", 415, "Content-Type", "unsupported_media_type"),
    "no-content-type": Hostile(lambda: b'{"name": "x"}', None, 415, "Content-Type", "unsupported_media_type"),
    "json-not-utf8": Hostile(
        lambda: b"{}", "application/json; charset=rot13", 415, "Content-Type", "unsupported_media_type"
    ),
    "malformed-json": Hostile(lambda: b'{"name": ', "application/json", 400, "body", "parse_error"),
    "invalid-utf8": Hostile(lambda: b'{"name": "\xff"}', "application/json", 400, "body", "parse_error"),
    "nan": Hostile(lambda: b'{"limits": NaN}', "application/json", 400, "body", "parse_error"),
}


def send(client: APIClient, target: Target, body: bytes, content_type: str | None) -> Any:
    # Django's test client takes bytes as they are (the stubs say str).
    if content_type is None:  # no Content-Type header at all
        return client.generic(target.method, target.path, body, None, CONTENT_TYPE="")  # type: ignore[arg-type]
    return client.generic(target.method, target.path, body, content_type)  # type: ignore[arg-type]


def problem_of(response: Any, where: str) -> dict[str, Any]:
    assert response["Content-Type"] == "application/problem+json", f"{where}: {response['Content-Type']}"
    problem: dict[str, Any] = json.loads(response.content)
    assert problem["status"] == response.status_code, where
    assert problem["detail"], where
    return problem


@pytest.mark.parametrize("kind", list(HOSTILE))
def test_hostile_bodies_get_a_problem_naming_the_reason_on_every_route(
    kind: str, caplog: pytest.LogCaptureFixture
) -> None:
    hostile = HOSTILE[kind]
    world = build_world()
    clients: dict[str, APIClient] = {}
    body = hostile.body()
    failures: list[str] = []
    caplog.set_level(logging.INFO)
    routes = targets(world)
    assert len(routes) >= 20, routes  # the walk found the API's writes
    for target in routes:
        client = clients.get(target.persona)
        if client is None:
            client = clients[target.persona] = APIClient(REMOTE_ADDR="127.0.0.1")
            client.force_login(world.users[target.persona])
        where = f"{kind}: {target.method} {target.path} as {target.persona}"
        try:
            response = send(client, target, body, hostile.content_type)
        except Exception as exc:  # the test client re-raises what the view raised: a 500
            failures.append(f"{where} -> raised {exc!r}"[:300])
            continue
        if response.status_code != hostile.status:
            failures.append(f"{where} -> {response.status_code} {response.content[:200]!r}")
            continue
        problem = problem_of(response, where)
        assert problem["errors"] == [
            {"field": hostile.field, "rule": hostile.rule, "message": problem["detail"]}
        ], where
    assert not failures, "\n".join(failures)
    tracebacks = [r.getMessage() for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]
    assert not tracebacks, tracebacks


def test_the_limits_are_named(settings: Any) -> None:
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 4096
    client = APIClient()
    response = client.post("/api/v1/tenants/", b"[" + b"0," * 3000 + b"0]", content_type="application/json")
    assert response.status_code == 413
    assert problem_of(response, "413")["detail"] == (
        "the request body is larger than the limit of 4096 bytes (4 KiB)"
    )
    deep = client.post(
        "/api/v1/tenants/", _nested(MAX_JSON_DEPTH + 1, "[", "]"), content_type="application/json"
    )
    assert problem_of(deep, "deep")["detail"] == (
        f"the JSON body nests arrays and objects deeper than {MAX_JSON_DEPTH} levels"
    )
    form = client.post("/api/v1/tenants/", b"a=b", content_type="application/x-www-form-urlencoded")
    assert form["Accept-Post"] == "application/json"
    patch = client.patch("/api/v1/tenants/x/", b"a=b", content_type="text/plain")
    assert patch.status_code == 415
    assert patch["Accept-Patch"] == "application/json"


def test_bodies_within_the_limits_still_reach_the_view(settings: Any) -> None:
    """At the size limit and the depth limit, a body passes: the view answers (here 401, anonymous)."""
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 4096
    client = APIClient()
    at_limit = b'{"name": "' + b"x" * (4096 - 12) + b'"}'
    assert len(at_limit) == 4096
    deepest = _nested(MAX_JSON_DEPTH, "[", "]")
    for body in (at_limit, deepest, b""):
        response = client.post("/api/v1/tenants/", body, content_type="application/json")
        assert response.status_code == 401, (len(body), response.content[:200])
    # JSON with a charset parameter of UTF-8 is JSON.
    utf8 = client.post("/api/v1/tenants/", b"{}", content_type="application/json; charset=UTF-8")
    assert utf8.status_code == 401
    # An empty body of any type is no body: an action with nothing to say still runs.
    empty = client.post("/api/v1/tenants/", b"", content_type="text/plain")
    assert empty.status_code == 401


def test_a_refused_write_still_leaves_its_one_audit_record() -> None:
    before = AuditRecord.objects.count()
    response = APIClient().post("/api/v1/tenants/", b"x=1", content_type="application/x-www-form-urlencoded")
    assert response.status_code == 415
    assert AuditRecord.objects.count() == before + 1
    record = AuditRecord.objects.latest("pk")
    assert record.outcome == "invalid"


@pytest.mark.parametrize(
    ("text", "deep"),
    [
        (b"[]", False),
        (b'{"a": [1, {"b": [2]}]}', False),
        (b'"' + b"[" * 100 + b'"', False),  # brackets inside a string are text
        (b'["\\"' + b"[" * 100 + b'"]', False),  # after an escaped quote, still inside the string
        (b'["\\\\", ' + b"[" * (MAX_JSON_DEPTH + 1) + b"]", True),  # an escaped backslash ends it
        (b"[" * MAX_JSON_DEPTH + b"]" * MAX_JSON_DEPTH, False),
        (b"[" * (MAX_JSON_DEPTH + 1) + b"]" * (MAX_JSON_DEPTH + 1), True),
        (b"[" + b"[]," * 10_000 + b"[]]", False),  # many brackets, shallow
        (b'{"a":' * (MAX_JSON_DEPTH + 1), True),  # unterminated: counted all the same
    ],
)
def test_json_depth_is_counted_outside_strings(text: bytes, deep: bool) -> None:
    assert json_too_deep(text) is deep


def test_the_depth_count_is_cheap_on_a_large_shallow_body() -> None:
    body = b"[" + b'[1, "a]b"],' * 230_000 + b"[]]"  # about 2.5 MB, every byte a bracket's neighbour
    started = time.perf_counter()
    assert not json_too_deep(body)
    assert time.perf_counter() - started < 2.0


def test_drf_takes_the_body_the_check_decoded_without_decoding_it_again() -> None:
    """The checked body is decoded once: DRF's parser gets the middleware's value, not the stream's."""
    from django.test import RequestFactory
    from rest_framework.request import Request

    from portal.body_limits import refusal
    from portal.parsers import CheckedJSONParser

    http_request = RequestFactory().post("/api/v1/x/", b'{"name": "vm-1"}', content_type="application/json")
    assert refusal(http_request) is None

    class Unreadable:
        def read(self, *args: Any) -> bytes:
            raise AssertionError("the body was decoded a second time")

    parsed = CheckedJSONParser().parse(Unreadable(), "application/json", {"request": Request(http_request)})  # type: ignore[arg-type]
    assert parsed == {"name": "vm-1"}


# --- NUL in a query string -------------------------------------------------------------------------
# PostgreSQL text cannot hold NUL: portal.query_strings refuses it at the entry, on every route.
NUL_MESSAGE = "must not contain NUL characters"
NUL_QUERIES = {
    "in a value nobody reads": ("probe=a%00b", "probe"),
    "after a good parameter": ("page_size=2&q=%00", "q"),
    "in a parameter's name": ("a%00b=1", "a\\x00b"),
}


def _with_query(path: str, query: str) -> str:
    return f"{path}{'&' if '?' in path else '?'}{query}"


def _client(world: World, clients: dict[str, APIClient], persona: str) -> APIClient:
    if persona not in clients:
        clients[persona] = APIClient(REMOTE_ADDR="127.0.0.1")
        if persona != "anon":
            clients[persona].force_login(world.users[persona])
    return clients[persona]


def _call(client: APIClient, case: Case, world: World, path: str) -> Any:
    """The case's request, its body as the isolation table sends it (a body the view would take)."""
    data = case.data(world) if case.data else {}
    method = getattr(client, case.method.lower())
    if case.method == "GET":
        return method(path)
    return method(path, data, format="json") if case.json else method(path, data)


def test_a_nul_in_the_query_string_is_refused_naming_the_parameter_on_every_route(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Every route of the isolation table (lists, details, actions, other API endpoints, pages and
    the admin), called as a persona allowed to use it: a NUL anywhere in the query string is a 400
    naming the parameter (problem+json under /api/, a plain 400 elsewhere); a write still leaves one
    audit record, and nothing runs."""
    world = build_world()
    clients: dict[str, APIClient] = {}
    caplog.set_level(logging.INFO)
    failures: list[str] = []
    seen: set[str] = set()
    for name, cases in all_http_cases().items():
        for case in cases:
            base = case.path(world)
            api = base.startswith("/api/")
            persona = _allowed_persona(case) or "anon"
            client = _client(world, clients, persona)
            queries = NUL_QUERIES.items() if api else list(NUL_QUERIES.items())[:1]
            for label, (query, field) in queries:
                path = _with_query(base, query)
                where = f"{label}: {case.method} {path} as {persona}"
                before = AuditRecord.objects.count()
                try:
                    response = _call(client, case, world, path)
                except Exception as exc:  # the test client re-raises what the view raised: a 500
                    failures.append(f"{where} -> raised {exc!r}"[:300])
                    continue
                if response.status_code != 400:
                    failures.append(f"{where} -> {response.status_code} {response.content[:200]!r}")
                    continue
                if api:
                    problem = problem_of(response, where)
                    assert problem["errors"] == [{"field": field, "rule": "invalid", "message": NUL_MESSAGE}]
                    assert problem["detail"] == f"{field}: {NUL_MESSAGE}", where
                else:
                    assert response["Content-Type"].startswith("text/plain"), where
                    assert f"{field!r} {NUL_MESSAGE}" in response.content.decode(), where
                if case.mutating:
                    written = list(AuditRecord.objects.order_by("seq")[before:])
                    assert [r.outcome for r in written] == ["invalid"], where
                seen.add(name)
    assert not failures, "\n".join(failures)
    # Among them: a list, a detail, an action, an endpoint that is neither, a page, an admin view.
    for name in ("api-instances", "api-instance", "api-instance-stop", "api-quota", "api-root"):
        assert name in seen, name
    assert {"ui-instances", "tenant-member-add", "admin:index", "login"} <= seen
    tracebacks = [r.getMessage() for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]
    assert not tracebacks, tracebacks


def test_a_query_string_without_nul_passes() -> None:
    """Percent-escapes other than %00, and an empty value, reach the view (here: 401, anonymous)."""
    client = APIClient()
    for query in ("name=a%20b", "name=%E2%82%AC", "name=", "name=%2500"):
        response = client.get(f"/api/v1/tenants/?{query}")
        assert response.status_code == 401, (query, response.content[:200])
