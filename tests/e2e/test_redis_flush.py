"""Acceptance "Redis flush": Redis loses its data (FLUSHALL) while a browser page is open.

A portal and a compute agent of the test's own run on a private redis-server (the session's is
never flushed): the page notices the loss by itself and catches up, then shows a container created
after the flush running, without a reload; a create retried with the same Idempotency-Key after
another flush answers the first operation (the database's de-duplication: the answer Redis kept
is gone) and makes no second instance; the quota counts what exists.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, Page, expect

from compute.models import Flavor, Host, HostState, Image, Instance, InstanceState, Operation
from tenants.models import Role, Tenant
from tenants.services.quotas import quota_drift
from tests.compute_fixtures import start_agent, wait_for, wait_operation
from tests.conftest import stop_process, subprocess_env
from tests.e2e.conftest import log_in, screenshot, serving_portal
from tests.factories import PASSWORD, add_member, make_tenant, make_token, make_user
from tests.outages import PrivateRedis, private_redis

pytestmark = pytest.mark.slow

RUNNING = 120_000  # ms: a container starts in a second, but the machine is shared
STATUS_LOG = """
() => {
  window.__statuses = [];
  const status = document.getElementById("live-status");
  new MutationObserver(() => window.__statuses.push(status.textContent))
    .observe(status, {childList: true, characterData: true, subtree: true});
}
"""


class Api:
    """The portal's REST API with a tenant token, as a script would call it."""

    def __init__(self, base: str, slug: str, token: str) -> None:
        self.base = f"{base}/api/v1/tenants/{slug}"
        self.token = token

    def call(
        self, method: str, path: str, body: dict[str, Any] | None = None, key: str | None = None
    ) -> tuple[int, dict[str, str], Any]:
        headers = {"Authorization": f"Bearer {self.token}", "Accept": "application/json"}
        data = None
        if body is not None:
            headers["Content-Type"] = "application/json"
            data = json.dumps(body).encode()
        if key is not None:
            headers["Idempotency-Key"] = key
        request = urllib.request.Request(f"{self.base}{path}", data=data, headers=headers, method=method)  # noqa: S310
        try:
            with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310 - loopback
                return response.status, dict(response.headers), json.loads(response.read() or b"null")
        except urllib.error.HTTPError as exc:
            return exc.code, dict(exc.headers), exc.read().decode(errors="replace")


@pytest.fixture
def redis_server() -> Iterator[PrivateRedis]:
    with private_redis() as server:
        yield server


@pytest.fixture
def own_agent(redis_server: PrivateRedis, host: Host, tmp_path: Path) -> Iterator[Host]:
    """A compute agent of the test's own, on the private Redis (its queue, its events), for a new
    host; the session's host is disabled meanwhile, so placement picks this one."""
    name = f"flush-{uuid.uuid4().hex[:6]}"
    log = tmp_path / "agent.log"
    Host.objects.filter(pk=host.pk).update(state=HostState.DISABLED)
    process = start_agent(name, log, REDIS_URL=redis_server.url())
    try:
        wait_for(lambda: "ready." in log.read_text(errors="replace"), "the test's agent to start", timeout=60)
        wait_for(lambda: Host.objects.filter(name=name).exists(), "the test's agent to register")
        yield Host.objects.get(name=name)
    finally:
        stop_process(process, 30)
        Host.objects.filter(pk=host.pk).update(state=HostState.ENABLED)


@pytest.fixture
def flush_portal(redis_server: PrivateRedis, tmp_path: Path) -> Iterator[str]:
    """`manage.py serve` on the private Redis, its live check every second."""
    env = subprocess_env(REDIS_URL=redis_server.url(), NUBIS_LIVE_CHECK_SECONDS="1")
    with serving_portal(tmp_path / "web.log", env) as url:
        yield url


def wait_resync(page: Page, count: int) -> None:
    """The page said "catching up…" then "live" ``count`` times since the status log started: it
    handled the server's "resync" (no reconnection: the socket stayed open)."""
    page.wait_for_function(
        "n => window.__statuses.join('|').split('catching up…|live').length - 1 >= n",
        arg=count,
        timeout=30_000,
    )


def test_a_flushall_with_a_page_open_resyncs_it_and_a_retried_create_makes_no_second_instance(
    browser: Browser,
    flush_portal: str,
    redis_server: PrivateRedis,
    own_agent: Host,
    rootfs_image: Image,
    cflavors: dict[str, Flavor],
    no_leftovers: None,
) -> None:
    tenant: Tenant = make_tenant("flush")
    user = make_user("fran")
    add_member(tenant, user, Role.MEMBER)
    raw = make_token(tenant, user, Role.MEMBER, "script")
    api = Api(flush_portal, tenant.slug, raw)
    create: dict[str, Any] = {
        "name": "after-flush",
        "kind": "container",
        "flavor": "c.small",
        "image": rootfs_image.name,
        "network": None,
    }
    key = f"flush-{uuid.uuid4()}"
    page = log_in(browser, flush_portal, user.username, PASSWORD)
    try:
        page.goto(f"/t/{tenant.slug}/instances/")
        expect(page.locator("#live-status")).to_have_text("live")
        page.evaluate(STATUS_LOG)
        page.evaluate("window.__notReloaded = true")

        # Redis loses everything: the groups the page's socket was in among it. The page says so
        # and catches up by itself, before anything is created: what it shows next comes by events.
        redis_server.flush()
        wait_resync(page, 1)
        expect(page.locator("#live-status")).to_have_text("live")

        status, headers, first = api.call("POST", "/instances/", create, key=key)
        assert status == 202, first
        assert "Idempotent-Replayed" not in headers
        row = page.locator(f'tr[data-instance="{first["instance_id"]}"] [data-live="state"]')
        expect(row).to_have_text("running", timeout=RUNNING)
        assert page.evaluate("window.__notReloaded === true"), "the list page was reloaded"
        screenshot(page, "redis-flush-list")
        assert wait_operation(Operation.objects.for_tenant(tenant).get(uuid=first["id"])).state == "succeeded"

        # Again: the retry's stored answer is gone with the rest; the database answers it.
        redis_server.flush()
        status, headers, again = api.call("POST", "/instances/", create, key=key)
        assert status == 202, again
        assert headers.get("Idempotent-Replayed") == "true"
        assert again["id"] == first["id"]
        assert again["state"] == "succeeded", "the operation as it stands now"
        assert Instance.objects.for_tenant(tenant).count() == 1
        assert Operation.objects.for_tenant(tenant).count() == 1
        assert quota_drift(tenant) == []
        wait_resync(page, 2)
        statuses = page.evaluate("window.__statuses")
        assert "reconnecting…" not in statuses, f"the socket was closed: {statuses}"
        expect(page.locator("#instances tbody tr[data-instance]")).to_have_count(1)
        assert page.evaluate("window.__notReloaded === true")
    finally:
        page.context.close()
        for instance in Instance.objects.for_tenant(tenant).exclude(state=InstanceState.DELETED):
            status, _headers, op = api.call("DELETE", f"/instances/{instance.uuid}/")
            assert status == 202, op
            wait_operation(Operation.objects.for_tenant(tenant).get(uuid=op["id"]))
    assert quota_drift(tenant) == []
