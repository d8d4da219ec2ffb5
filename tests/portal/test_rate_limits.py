"""API rate limits in real Redis: 429 problem+json with Retry-After over the limit, one budget per
token, per user and per client address, a moving window (never more than the rate in any span of
the window's length, across a fixed window's boundary too), RateLimit-* headers, and requests let
through while Redis is unreachable."""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from django.contrib.auth.models import User
from pytest_django import Settings as SettingsWrapper
from rest_framework.test import APIClient

from core.redis import redis_client
from portal import throttling
from portal.config import parse_rate
from tenants.models import Role, Tenant
from tests.factories import add_member, make_tenant, make_token

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def no_outage() -> Iterator[None]:
    """Each test starts with Redis believed up (an outage test leaves a back-off behind)."""
    throttling.outage.end()
    yield
    throttling.outage.end()


@pytest.fixture(autouse=True)
def clean_redis() -> Iterator[None]:
    """Budgets are keyed by user and token ids, which test databases reuse: start from none."""
    client = redis_client()

    def drop() -> None:
        for key in client.scan_iter(match="nubis:ratelimit:*", count=500):
            client.delete(key)

    drop()
    yield
    drop()


def limit(settings: SettingsWrapper, **rates: str) -> None:
    """Set low rates (a moving window has no boundary to wait for)."""
    for scope, rate in rates.items():
        setattr(settings, f"NUBIS_API_RATE_{scope.upper()}", rate)


def session_client(user: User) -> APIClient:
    client = APIClient()
    client.force_authenticate(user)
    return client


def token_client(tenant: Tenant, user: User) -> APIClient:
    raw = make_token(tenant, user, Role.MEMBER, "automation")
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {raw}")
    return client


def statuses(client: APIClient, path: str, count: int) -> list[int]:
    return [client.get(path).status_code for _ in range(count)]


def assert_limited(response: Any, detail_start: str) -> int:
    """Check the 429 problem; return its Retry-After."""
    assert response.status_code == 429
    assert response["Content-Type"] == "application/problem+json"
    retry_after = int(response["Retry-After"])
    problem = response.json()
    assert problem["status"] == 429
    assert problem["type"].endswith("/rate_limit")
    assert problem["title"] == "Too Many Requests"
    assert problem["detail"] == f"{detail_start}; retry in {retry_after} s"
    return retry_after


def test_over_the_limit_answers_429_with_retry_after(settings: SettingsWrapper) -> None:
    limit(settings, user="3/min")
    tenant = make_tenant("rl")
    client = session_client(add_member(tenant))
    path = f"/api/v1/tenants/{tenant.slug}/flavors/"
    assert statuses(client, path, 3) == [200, 200, 200]
    retry_after = assert_limited(client.get(path), "3 requests per minute per user")
    assert 0 < retry_after <= 60
    # Every API route spends the same budget; POSTs too.
    assert client.get("/api/v1/tenants/").status_code == 429
    assert client.post(f"/api/v1/tenants/{tenant.slug}/instances/", {}, format="json").status_code == 429


def test_a_token_and_its_user_have_separate_budgets(settings: SettingsWrapper) -> None:
    limit(settings, token="2/min", user="3/min")
    tenant = make_tenant("rl-token")
    user = add_member(tenant)
    by_token, by_session = token_client(tenant, user), session_client(user)
    path = f"/api/v1/tenants/{tenant.slug}/flavors/"
    assert statuses(by_token, path, 2) == [200, 200]
    assert_limited(by_token.get(path), "2 requests per minute per token")
    assert statuses(by_session, path, 3) == [200, 200, 200]
    assert_limited(by_session.get(path), "3 requests per minute per user")
    # Another token of the same user starts with a budget of its own.
    assert token_client(tenant, user).get(path).status_code == 200


def test_another_user_is_unaffected(settings: SettingsWrapper) -> None:
    limit(settings, user="2/min")
    tenant = make_tenant("rl-users")
    greedy, other = session_client(add_member(tenant)), session_client(add_member(tenant))
    path = f"/api/v1/tenants/{tenant.slug}/flavors/"
    assert statuses(greedy, path, 3) == [200, 200, 429]
    assert statuses(other, path, 2) == [200, 200]


def test_anonymous_requests_are_counted_per_client_address(settings: SettingsWrapper) -> None:
    limit(settings, anon="2/min")
    here, there = APIClient(REMOTE_ADDR="10.0.0.1"), APIClient(REMOTE_ADDR="10.0.0.2")
    assert statuses(here, "/api/v1/", 2) == [200, 200]
    assert_limited(here.get("/api/v1/"), "2 requests per minute per address")
    assert there.get("/api/v1/").status_code == 200


def test_the_budget_returns_after_the_window(settings: SettingsWrapper) -> None:
    limit(settings, user="2/2s")
    tenant = make_tenant("rl-window")
    client = session_client(add_member(tenant))
    path = f"/api/v1/tenants/{tenant.slug}/flavors/"
    assert statuses(client, path, 2) == [200, 200]
    retry_after = assert_limited(client.get(path), "2 requests per 2 seconds per user")
    assert 1 <= retry_after <= 2
    time.sleep(retry_after)
    assert statuses(client, path, 2) == [200, 200]
    assert client.get(path).status_code == 429


def test_budget_keys_expire_and_keep_to_their_prefix(settings: SettingsWrapper) -> None:
    limit(settings, user="5/min")
    tenant = make_tenant("rl-keys")
    session_client(add_member(tenant)).get(f"/api/v1/tenants/{tenant.slug}/flavors/")
    keys = list(redis_client().scan_iter(match="nubis:ratelimit:*"))
    assert len(keys) == 1
    ttl = int(redis_client().ttl(keys[0]))  # type: ignore[arg-type]
    assert 0 < ttl <= 61


def wait_until_phase(window: int, phase: float) -> None:
    """Sleep until ``time % window`` reaches ``phase`` (where a fixed window of that length is)."""
    time.sleep((phase - time.time() % window) % window)


def test_no_span_of_the_window_admits_more_than_the_rate(settings: SettingsWrapper) -> None:
    """A fixed window admitted the rate just before its end and the rate again just after: twice the
    rate within one window's length. The moving window refuses the second burst."""
    limit(settings, user="4/2s")
    tenant = make_tenant("rl-boundary")
    client = session_client(add_member(tenant))
    path = f"/api/v1/tenants/{tenant.slug}/flavors/"
    session_client(add_member(tenant)).get(path)  # warm up (another user: another budget)
    wait_until_phase(2, 1.0)  # a second before a 2 s fixed window ends
    started = time.monotonic()
    assert statuses(client, path, 4) == [200] * 4
    wait_until_phase(2, 0.05)  # the next fixed window has begun
    second_burst = statuses(client, path, 4)
    assert time.monotonic() - started < 2.0, "too slow to put both bursts in one window's length"
    assert second_burst == [429] * 4


def test_answers_carry_the_rate_limit_headers(settings: SettingsWrapper) -> None:
    limit(settings, user="3/min")
    tenant = make_tenant("rl-headers")
    client = session_client(add_member(tenant))
    path = f"/api/v1/tenants/{tenant.slug}/flavors/"
    answers = [client.get(path) for _ in range(3)]
    assert [a["RateLimit-Remaining"] for a in answers] == ["2", "1", "0"]
    for answer in answers:
        assert answer.status_code == 200
        assert answer["RateLimit-Limit"] == "3"
        assert answer["RateLimit-Policy"] == "3;w=60"
        assert 0 < int(answer["RateLimit-Reset"]) <= 60
    refused = client.get(path)
    retry_after = assert_limited(refused, "3 requests per minute per user")
    assert refused["RateLimit-Remaining"] == "0"
    assert refused["RateLimit-Reset"] == str(retry_after)
    # Writes and answers made outside the view (the problem handler) carry them too.
    limit(settings, user="5/min")
    post = client.post(f"/api/v1/tenants/{tenant.slug}/instances/", {}, format="json")
    assert post.status_code == 400
    assert post["RateLimit-Limit"] == "5"
    assert post["RateLimit-Remaining"] == "4"


def test_concurrent_requests_never_over_admit() -> None:
    with ThreadPoolExecutor(max_workers=16) as pool:
        results = list(pool.map(lambda _: throttling.spend("address", "race", "5/min")[0], range(64)))
    assert results.count(True) == 5


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then closed)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_requests_go_through_while_redis_is_unreachable(
    settings: SettingsWrapper, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The documented choice: an outage of the rate-limit store lets requests through, unlimited
    and without rate-limit headers, logs it once, and asks Redis again after a short back-off."""
    monkeypatch.setattr(throttling, "RETRY_AFTER_OUTAGE", 1.0)
    limit(settings, user="2/min")
    tenant = make_tenant("rl-outage")
    client = session_client(add_member(tenant))
    path = f"/api/v1/tenants/{tenant.slug}/flavors/"
    real_redis = settings.REDIS_URL
    settings.REDIS_URL = f"redis://127.0.0.1:{closed_port()}/0"  # connection refused, for real
    caplog.set_level(logging.WARNING, logger="portal.throttling")
    answers = [client.get(path) for _ in range(5)]
    assert [a.status_code for a in answers] == [200] * 5
    assert all("RateLimit-Limit" not in a for a in answers)
    warnings = [r.getMessage() for r in caplog.records if r.name == "portal.throttling"]
    assert len(warnings) == 1, warnings
    assert warnings[0].startswith("rate limits not enforced for 1 s: Redis failed:")
    # Redis is back: within the back-off requests still go through unasked; then limits apply.
    settings.REDIS_URL = real_redis
    assert statuses(client, path, 3) == [200, 200, 200]
    time.sleep(1.05)
    assert statuses(client, path, 3) == [200, 200, 429]


@pytest.mark.parametrize(
    ("text", "parsed"),
    [("600/min", (600, 60)), ("5/2s", (5, 2)), ("1/hour", (1, 3600)), ("100/10m", (100, 600))],
)
def test_rates_parse(text: str, parsed: tuple[int, int]) -> None:
    assert parse_rate(text) == parsed


@pytest.mark.parametrize("text", ["600", "0/min", "x/min", "5/fortnight", "5/0s", "/min"])
def test_malformed_rates_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match=r"rate|expected"):
        parse_rate(text)
