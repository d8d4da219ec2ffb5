"""Idempotency-Key on API POSTs, against real Redis and PostgreSQL: concurrent duplicates create one
instance, retries replay the first answer, a reused key for another request is refused, keys are
per principal, and server errors are not kept. Without Redis (down, or flushed: a private
redis-server of the test's own) the instance create is de-duplicated by the database, and other
keyed POSTs are refused while Redis is down."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.db import connection
from django.test import override_settings
from django.utils import timezone
from pytest_django import Settings as SettingsWrapper
from rest_framework.test import APIClient

from compute.api.views import instances as instance_views
from compute.models import CpuMode, Flavor, Host, Image, ImageKind, Instance, Operation, ServerGroup
from compute.services import instances as instance_services
from core.redis import redis_client
from tenants.models import Role, Tenant
from tenants.services.quotas import quota_drift
from tests.factories import add_member, make_tenant, make_token
from tests.outages import PrivateRedis, private_redis


def key_header(key: str) -> dict[str, str]:
    return {"Idempotency-Key": key}


@pytest.fixture(autouse=True)
def clean_redis() -> Iterator[None]:
    """Test databases reuse user ids from run to run: drop stored answers before and after."""
    client = redis_client()

    def drop() -> None:
        for key in client.scan_iter(match="nubis:idem:*", count=500):
            client.delete(key)

    drop()
    yield
    drop()


@pytest.fixture
def world(transactional_db: None) -> Iterator[dict[str, Any]]:
    """A tenant with a member, a host with room, and an image and flavor to create from."""
    host = Host.objects.create(
        name=f"idem-{uuid.uuid4().hex[:8]}",
        uri="test:///default",
        cpus=16,
        ram_mib=65536,
        disk_gib=500,
        heartbeat_at=timezone.now(),
    )
    Image.objects.create(name="i-image", kind=ImageKind.KERNEL, os_name="t", disk_path="/x", sha256="0" * 64)
    Flavor.objects.create(name="i.one", vcpus=1, ram_mib=256, disk_gib=1, cpu_mode=CpuMode.EMULATED)
    tenant = make_tenant("idem")
    member = add_member(tenant, role=Role.MEMBER)
    yield {"tenant": tenant, "member": member, "host": host}
    # instance_create enqueued run_operation on the host's queue; no agent consumes it here.
    redis_client().delete(host.queue)


def body(name: str = "web", **extra: Any) -> dict[str, Any]:
    return {"name": name, "flavor": "i.one", "image": "i-image", "network": None, **extra}


def url(tenant: Tenant) -> str:
    return f"/api/v1/tenants/{tenant.slug}/instances/"


def client_for(user: User, **kwargs: Any) -> APIClient:
    """A client signed in as ``user`` with a real session, as a browser or a script with a cookie."""
    client = APIClient(**kwargs)
    client.force_login(user)
    return client


def instances(tenant: Tenant) -> int:
    return Instance.objects.for_tenant(tenant).count()


def test_ten_concurrent_posts_with_one_key_create_one_instance(world: dict[str, Any]) -> None:
    tenant, member = world["tenant"], world["member"]
    key = f"create-{uuid.uuid4()}"
    barrier = threading.Barrier(10)
    answers: list[tuple[int, bytes, str | None]] = []
    failures: list[BaseException] = []
    lock = threading.Lock()

    def post() -> None:
        try:
            client = client_for(member)
            barrier.wait(timeout=10)
            response = client.post(url(tenant), body(), format="json", headers=key_header(key))
            with lock:
                answers.append((response.status_code, response.content, response.get("Idempotent-Replayed")))
        except BaseException as exc:
            with lock:
                failures.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=post) for _ in range(10)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not failures, failures
    assert len(answers) == 10
    assert instances(tenant) == 1
    assert Operation.objects.for_tenant(tenant).count() == 1
    assert {status for status, _, _ in answers} == {202}
    assert len({content for _, content, _ in answers}) == 1, "every duplicate gets the first answer"
    assert sorted(str(replayed) for _, _, replayed in answers) == ["None"] + ["true"] * 9


def test_a_retry_after_completion_replays_the_first_answer(world: dict[str, Any]) -> None:
    tenant, client = world["tenant"], client_for(world["member"])
    first = client.post(url(tenant), body(), format="json", headers=key_header("retry-1"))
    assert first.status_code == 202
    assert "Idempotent-Replayed" not in first
    again = client.post(url(tenant), body(), format="json", headers=key_header("retry-1"))
    assert again.status_code == 202
    assert again["Idempotent-Replayed"] == "true"
    assert again.content == first.content
    assert again["Content-Type"] == first["Content-Type"]
    assert instances(tenant) == 1
    other = client.post(url(tenant), body("web2"), format="json", headers=key_header("retry-2"))
    assert other.status_code == 202
    assert instances(tenant) == 2


def test_the_same_key_with_another_body_is_refused(world: dict[str, Any]) -> None:
    tenant, client = world["tenant"], client_for(world["member"])
    assert client.post(url(tenant), body(), format="json", headers=key_header("k")).status_code == 202
    reused = client.post(url(tenant), body("other"), format="json", headers=key_header("k"))
    assert reused.status_code == 422
    assert reused["Content-Type"] == "application/problem+json"
    problem = reused.json()
    assert problem["status"] == 422
    assert problem["type"].endswith("/reused")
    assert problem["errors"][0]["field"] == "Idempotency-Key"
    assert "different request" in problem["detail"]
    assert instances(tenant) == 1


def test_keys_belong_to_their_principal(world: dict[str, Any]) -> None:
    tenant, member = world["tenant"], world["member"]
    other_tenant = make_tenant("idem-other")
    stranger = add_member(other_tenant, role=Role.MEMBER)
    mine = client_for(member).post(url(tenant), body(), format="json", headers=key_header("shared"))
    assert mine.status_code == 202
    # The same key from another user is theirs: it runs (not a 422 for another path, not a replay).
    theirs = client_for(stranger).post(url(other_tenant), body(), format="json", headers=key_header("shared"))
    assert theirs.status_code == 202
    assert "Idempotent-Replayed" not in theirs
    assert instances(other_tenant) == 1
    # An API token is a principal of its own, even for the same user: another body under the same
    # key is no 422 there. (The instance service, for its part, dedupes keys per tenant: it answers
    # with the member's operation, so no second instance appears.)
    raw = make_token(tenant, member, Role.MEMBER, "ci")
    by_token = APIClient()
    by_token.credentials(HTTP_AUTHORIZATION=f"Bearer {raw}")
    token_answer = by_token.post(url(tenant), body("by-token"), format="json", headers=key_header("shared"))
    assert token_answer.status_code == 202, token_answer.content
    assert token_answer["Idempotent-Replayed"] == "true", "the database's answer: the member's operation"
    assert token_answer.json()["id"] == mine.json()["id"]
    replay = by_token.post(url(tenant), body("by-token"), format="json", headers=key_header("shared"))
    assert replay["Idempotent-Replayed"] == "true"
    assert replay.content == token_answer.content
    assert client_for(member).post(url(tenant), body(), format="json", headers=key_header("shared"))[
        "Idempotent-Replayed"
    ]
    assert instances(tenant) == 1


def test_a_server_error_is_not_kept_and_a_client_error_is(
    world: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    tenant, member = world["tenant"], world["member"]
    client = client_for(member, raise_request_exception=False)
    real = instance_views.instance_service.instance_create

    def broken(**kwargs: Any) -> Operation:
        raise RuntimeError("the database went away")

    monkeypatch.setattr(instance_views.instance_service, "instance_create", broken)
    failed = client.post(url(tenant), body(), format="json", headers=key_header("flaky"))
    assert failed.status_code == 500
    monkeypatch.setattr(instance_views.instance_service, "instance_create", real)
    retried = client.post(url(tenant), body(), format="json", headers=key_header("flaky"))
    assert retried.status_code == 202
    assert "Idempotent-Replayed" not in retried
    assert client.post(url(tenant), body(), format="json", headers=key_header("flaky"))["Idempotent-Replayed"]
    assert instances(tenant) == 1
    # A refusal is an answer: the retry gets it again, even though the flavor exists by then.
    refused = client.post(url(tenant), body("x", flavor="later"), format="json", headers=key_header("bad"))
    assert refused.status_code == 400
    Flavor.objects.create(name="later", vcpus=1, ram_mib=256, disk_gib=1, cpu_mode=CpuMode.EMULATED)
    again = client.post(url(tenant), body("x", flavor="later"), format="json", headers=key_header("bad"))
    assert again.status_code == 400
    assert again["Idempotent-Replayed"] == "true"
    assert again.content == refused.content
    assert instances(tenant) == 1


def test_a_duplicate_waiting_too_long_gets_409(
    world: dict[str, Any], monkeypatch: pytest.MonkeyPatch, settings: SettingsWrapper
) -> None:
    tenant, member = world["tenant"], world["member"]
    settings.NUBIS_IDEMPOTENCY_WAIT = 0.3
    real = instance_views.instance_service.instance_create
    started = threading.Event()

    def slow(**kwargs: Any) -> Operation:
        started.set()
        time.sleep(1.5)
        return real(**kwargs)

    monkeypatch.setattr(instance_views.instance_service, "instance_create", slow)
    first: list[Any] = []

    def post_first() -> None:
        try:
            first.append(
                client_for(member).post(url(tenant), body(), format="json", headers=key_header("slow"))
            )
        finally:
            connection.close()

    thread = threading.Thread(target=post_first)
    thread.start()
    assert started.wait(10)
    waited = client_for(member).post(url(tenant), body(), format="json", headers=key_header("slow"))
    thread.join(30)
    assert waited.status_code == 409
    assert int(waited["Retry-After"]) >= 1
    assert waited.json()["errors"][0] == {
        "field": "Idempotency-Key",
        "rule": "in_progress",
        "message": waited.json()["detail"],
    }
    assert first[0].status_code == 202
    assert instances(tenant) == 1


@pytest.mark.parametrize("key", ["", "x" * 256, "caf\u00e9", "tab\there"])
def test_a_malformed_key_is_refused(world: dict[str, Any], key: str) -> None:
    tenant = world["tenant"]
    refused = client_for(world["member"]).post(url(tenant), body(), format="json", headers=key_header(key))
    assert refused.status_code == 400
    assert refused.json()["errors"][0]["field"] == "Idempotency-Key"
    assert instances(tenant) == 0


def test_anonymous_requests_are_not_replayed(world: dict[str, Any]) -> None:
    tenant = world["tenant"]
    client = APIClient()
    for _ in range(2):
        refused = client.post(url(tenant), body(), format="json", headers=key_header("anon"))
        assert refused.status_code in (401, 403)
        assert "Idempotent-Replayed" not in refused


def test_only_api_posts_are_concerned(world: dict[str, Any]) -> None:
    listed = client_for(world["member"]).get(url(world["tenant"]), headers=key_header("x" * 300))
    assert listed.status_code == 200


# -- without Redis: the database de-duplicates the instance create ----------------------------------
@pytest.fixture
def private_store() -> Iterator[PrivateRedis]:
    """The idempotency store on a redis-server of the test's own (the session's is never flushed
    nor stopped): the middleware's client is rebuilt for it, and for the session's afterwards."""
    with private_redis() as server, override_settings(REDIS_URL=server.url()):
        redis_client.cache_clear()
        try:
            yield server
        finally:
            redis_client.cache_clear()


@pytest.fixture
def redis_down(private_store: PrivateRedis) -> PrivateRedis:
    private_store.stop()
    return private_store


def operation_id(response: Any) -> str:
    assert response.status_code == 202, response.content
    return str(response.json()["id"])


def test_with_redis_down_a_keyed_create_runs_and_its_retry_gets_the_same_operation(
    world: dict[str, Any], redis_down: PrivateRedis
) -> None:
    tenant, client = world["tenant"], client_for(world["member"])
    first = client.post(url(tenant), body(), format="json", headers=key_header("down-1"))
    assert "Idempotent-Replayed" not in first
    retry = client.post(url(tenant), body(), format="json", headers=key_header("down-1"))
    assert operation_id(retry) == operation_id(first)
    assert retry["Idempotent-Replayed"] == "true"
    assert retry["Content-Type"] == "application/json"
    assert instances(tenant) == 1
    assert Operation.objects.for_tenant(tenant).count() == 1
    # Another key is another create.
    other = client.post(url(tenant), body("web2"), format="json", headers=key_header("down-2"))
    assert operation_id(other) != operation_id(first)
    assert instances(tenant) == 2
    assert quota_drift(tenant) == []


def test_with_redis_down_a_keyed_post_to_a_route_without_database_dedup_gets_503(
    world: dict[str, Any], redis_down: PrivateRedis
) -> None:
    tenant, client = world["tenant"], client_for(world["member"])
    groups = f"/api/v1/tenants/{tenant.slug}/server-groups/"
    refused = client.post(
        groups, {"name": "g", "policy": "anti-affinity"}, format="json", headers=key_header("g")
    )
    assert refused.status_code == 503
    assert refused["Content-Type"] == "application/problem+json"
    assert int(refused["Retry-After"]) >= 1
    problem = refused.json()
    assert problem["errors"][0]["field"] == "Idempotency-Key"
    assert problem["errors"][0]["rule"] == "unavailable"
    assert "Idempotency-Key" in problem["detail"]
    assert not ServerGroup.objects.for_tenant(tenant).exists()
    # Without a key it runs: only the promise of the key cannot be kept.
    made = client.post(groups, {"name": "g", "policy": "anti-affinity"}, format="json")
    assert made.status_code == 201, made.content


def test_after_redis_lost_its_data_a_retried_create_returns_the_first_operation(
    world: dict[str, Any], private_store: PrivateRedis
) -> None:
    tenant, client = world["tenant"], client_for(world["member"])
    first = client.post(url(tenant), body(), format="json", headers=key_header("flushed"))
    assert "Idempotent-Replayed" not in first
    private_store.flush()  # the stored answer is gone
    retry = client.post(url(tenant), body(), format="json", headers=key_header("flushed"))
    assert retry["Idempotent-Replayed"] == "true"
    assert operation_id(retry) == operation_id(first)
    # Its answer is stored again: the next retry is replayed by Redis, the same operation.
    again = client.post(url(tenant), body(), format="json", headers=key_header("flushed"))
    assert again["Idempotent-Replayed"] == "true"
    assert again.content == retry.content
    assert instances(tenant) == 1
    # Another POST runs again after the flush, and its own rule answers: the name is taken.
    groups = f"/api/v1/tenants/{tenant.slug}/server-groups/"
    group = {"name": "g", "policy": "anti-affinity"}
    assert client.post(groups, group, format="json", headers=key_header("group")).status_code == 201
    private_store.flush()
    taken = client.post(groups, group, format="json", headers=key_header("group"))
    assert taken.status_code == 409
    assert "Idempotent-Replayed" not in taken
    assert ServerGroup.objects.for_tenant(tenant).count() == 1


def test_with_redis_down_a_concurrent_twin_gets_the_first_operation_not_a_500(
    world: dict[str, Any], redis_down: PrivateRedis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The twin arrives while the first create's transaction is open (held in placement for a
    second): it waits for it, then answers its operation; without that it made its own instance
    (or hit the name's or the key's unique constraint: a 409 or a 500, its work undone)."""
    tenant, member = world["tenant"], world["member"]
    inside = threading.Event()
    real_place = instance_services._place

    def slow_place(instance: Instance, wait: bool) -> None:
        if not inside.is_set():
            inside.set()
            time.sleep(1.0)
        real_place(instance, wait)

    monkeypatch.setattr(instance_services, "_place", slow_place)
    answers: dict[str, Any] = {}

    def post(who: str) -> None:
        try:
            client = client_for(member, raise_request_exception=False)
            answers[who] = client.post(url(tenant), body(), format="json", headers=key_header("twins"))
        finally:
            connection.close()

    first = threading.Thread(target=post, args=("first",))
    first.start()
    assert inside.wait(10)
    post("twin")
    first.join(30)
    assert answers["first"].status_code == 202, answers["first"].content
    assert answers["twin"].status_code == 202, answers["twin"].content
    assert operation_id(answers["twin"]) == operation_id(answers["first"])
    assert "Idempotent-Replayed" not in answers["first"]
    assert answers["twin"]["Idempotent-Replayed"] == "true"
    assert instances(tenant) == 1
    assert quota_drift(tenant) == []


def test_with_redis_down_five_concurrent_creates_with_one_key_make_one_instance(
    world: dict[str, Any], redis_down: PrivateRedis
) -> None:
    tenant, member = world["tenant"], world["member"]
    barrier = threading.Barrier(5)
    answers: list[Any] = []
    lock = threading.Lock()

    def post() -> None:
        try:
            client = client_for(member, raise_request_exception=False)
            barrier.wait(timeout=10)
            response = client.post(url(tenant), body(), format="json", headers=key_header("five"))
            with lock:
                answers.append(response)
        finally:
            connection.close()

    threads = [threading.Thread(target=post) for _ in range(5)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert [a.status_code for a in answers] == [202] * 5, [a.content for a in answers]
    assert len({operation_id(a) for a in answers}) == 1
    assert sorted(str(a.get("Idempotent-Replayed")) for a in answers) == ["None"] + ["true"] * 4
    assert instances(tenant) == 1
    assert Operation.objects.for_tenant(tenant).count() == 1
    assert quota_drift(tenant) == []
