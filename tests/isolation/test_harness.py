"""Walk every route for every persona: status, 404 across tenants, no leaks, one audit record per write.

The route table lives in routes.py (the websockets are walked in test_websockets.py). A route that
is added to the URLconf, the websocket router or the admin without an entry there makes
test_every_route_is_covered fail.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from django.contrib import admin
from django.db import transaction
from django.http import HttpResponse
from django.test import Client
from django.urls import URLPattern, URLResolver, get_resolver, get_urlconf
from rest_framework.test import APIClient

from portal.routing import websocket_urlpatterns
from security.models import AuditRecord
from tests.isolation.cases import Case
from tests.isolation.routes import ADMIN_MODELS, WEBSOCKETS, all_http_cases
from tests.isolation.world import A_PERSONAS, B_MARKERS, PERSONAS, World, build_world

CASES = all_http_cases()


def http_route_keys() -> set[str]:
    """The name of every URL pattern (namespaced), or its full pattern when it has no name."""
    keys: set[str] = set()

    def walk(patterns: list[Any], prefix: str, namespaces: list[str]) -> None:
        for entry in patterns:
            if isinstance(entry, URLResolver):
                spaces = [*namespaces, entry.namespace] if entry.namespace else namespaces
                walk(entry.url_patterns, prefix + str(entry.pattern), spaces)
            elif isinstance(entry, URLPattern):
                keys.add(":".join([*namespaces, entry.name]) if entry.name else prefix + str(entry.pattern))

    walk(get_resolver(get_urlconf()).url_patterns, "", [])
    return keys


def test_every_route_is_covered() -> None:
    routes = http_route_keys()
    missing = sorted(routes - set(CASES))
    stale = sorted(set(CASES) - routes)
    assert not missing, f"routes without a persona table in tests/isolation/routes.py: {missing}"
    assert not stale, f"persona tables for routes that no longer exist: {stale}"
    ws_missing = sorted({str(p.name) for p in websocket_urlpatterns} - set(WEBSOCKETS))
    assert not ws_missing, f"websocket routes without a persona table: {ws_missing}"
    registered = {m._meta.label_lower for m in admin.site._registry}
    assert registered == set(ADMIN_MODELS), (
        f"admin models without rules: {sorted(registered - set(ADMIN_MODELS))}"
    )


def test_the_coverage_check_notices_an_uncovered_route() -> None:
    """The harness fails when a route is added without a persona table (checked on a patched copy)."""
    from django.urls import clear_url_caches, path, set_urlconf

    from portal import urls as root

    class Patched:
        urlpatterns = [*root.urlpatterns, path("new-feature/", lambda r: HttpResponse(), name="new-feature")]

    set_urlconf(Patched)  # type: ignore[arg-type]
    try:
        clear_url_caches()
        with pytest.raises(AssertionError, match="new-feature"):
            test_every_route_is_covered()
    finally:
        set_urlconf(None)
        clear_url_caches()


def client_for(world: World, persona: str) -> Client:
    client = APIClient(REMOTE_ADDR="127.0.0.1")
    if persona != "anon":
        client.force_login(world.users[persona])
    return client


def send(client: Client, case: Case, world: World, path: str) -> Any:
    data = case.data(world) if case.data else {}
    method = getattr(client, case.method.lower())
    if case.method == "GET":
        return method(path)
    if case.json:
        return method(path, data, format="json")
    return method(path, data)


def _ids(cases: dict[str, list[Case]], mutating: bool) -> list[tuple[str, int, Case]]:
    return [(key, i, c) for key, cs in cases.items() for i, c in enumerate(cs) if c.mutating == mutating]


def elsewhere(case: Case, world: World) -> list[str]:
    """Paths to tenant B's object: under B's URL, and guessed under A's own URL."""
    return [build(world) for build in (case.b_path, case.idor_path) if build is not None]


READS = _ids(CASES, mutating=False)
WRITES = _ids(CASES, mutating=True)


@pytest.fixture(scope="module")
def shared_world(django_db_setup: None, django_db_blocker: Any) -> Iterator[World]:
    """One world for every read and write case: built once, in a transaction left open while the
    cases run. Each case's own transaction is then a savepoint in it, rolled back after the case,
    so every case starts from the same world; the world itself is rolled back at the end. (A
    world per case cost a tenth of a second each, over a thousand cases.)"""
    with django_db_blocker.unblock():
        outer = transaction.atomic()
        outer.__enter__()
        try:
            yield build_world()
        finally:
            transaction.set_rollback(True)
            outer.__exit__(None, None, None)


@pytest.fixture
def world(shared_world: World, db: None) -> World:
    """The shared world, its host's agent alive (its heartbeat would go stale within the module)."""
    from django.utils import timezone

    from compute.models import Host

    Host.objects.filter(name="harness-host").update(heartbeat_at=timezone.now())
    return shared_world


@pytest.mark.django_db
@pytest.mark.parametrize(("key", "index", "case"), READS, ids=[f"{k}#{i}" for k, i, _ in READS])
def test_reads(key: str, index: int, case: Case, world: World) -> None:
    for persona in PERSONAS:
        path = case.path(world)
        response = send(client_for(world, persona), case, world, path)
        assert response.status_code == case.expect[persona], f"{persona} GET {path}"
        if case.lists and persona in A_PERSONAS and response.status_code == 200:
            body = response.content.decode()
            leaked = [m for m in B_MARKERS if m in body]
            assert not leaked, f"{persona} sees tenant B's {leaked} at {path}"
        if persona in A_PERSONAS:
            for other in elsewhere(case, world):
                response = send(client_for(world, persona), case, world, other)
                assert response.status_code == 404, f"{persona} GET {other}"


@pytest.mark.django_db
@pytest.mark.parametrize("persona", PERSONAS)
@pytest.mark.parametrize(("key", "index", "case"), WRITES, ids=[f"{k}#{i}" for k, i, _ in WRITES])
def test_writes(key: str, index: int, case: Case, persona: str, world: World) -> None:
    client = client_for(world, persona)
    path = case.path(world)
    before = AuditRecord.objects.count()
    response = send(client, case, world, path)
    assert response.status_code == case.expect[persona], (
        f"{persona} {case.method} {path}: {response.content[:300]!r}"
    )
    written = list(AuditRecord.objects.order_by("seq")[before:])
    assert len(written) == 1, f"{persona} {case.method} {path} left {len(written)} audit records: {written}"
    record = written[0]
    location = response.get("Location", "")
    if response.status_code >= 400 or "next=" in location:
        assert record.outcome in {"denied", "invalid", "error"}, (
            f"{persona}: {record.outcome} for {response.status_code}"
        )
    elif case.action is not None:
        assert (record.action, record.outcome) == (case.action, "success"), f"{persona} {case.method} {path}"
    if persona in A_PERSONAS:
        for other in elsewhere(case, world):
            before = AuditRecord.objects.count()
            assert send(client, case, world, other).status_code == 404, f"{persona} {case.method} {other}"
            assert AuditRecord.objects.count() == before + 1
