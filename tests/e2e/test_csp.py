"""The Content-Security-Policy in a real browser: every kind of page works under it with no
violation (the login and lockout pages, the dashboard, the instance pages and console, staff
pages, the Django admin and the Swagger UI), and the violation watch of conftest really fires."""

from __future__ import annotations

import re

import pytest
from django.contrib.auth.models import User
from playwright.sync_api import Browser, Page, expect

from compute.models import Flavor, Host, Image, Instance
from compute.services.instances import instance_create
from portal.csp import HEADER
from security.audit import Actor
from tenants.models import Role
from tests.e2e.conftest import CSP_VIOLATIONS, log_in
from tests.factories import PASSWORD, add_member, make_tenant


def visit(page: Page, path: str) -> None:
    """Open a page, check that it carries the policy, and that nothing broke it so far."""
    response = page.goto(path)
    assert response is not None
    assert response.status == 200, path
    assert "script-src 'self'" in (response.header_value(HEADER) or ""), path
    page.wait_for_load_state("load")


def assert_clean(page: Page, path: str) -> None:
    seen = page.evaluate("window.__cspViolations")
    assert seen == [], f"{path}: {seen}"
    assert not CSP_VIOLATIONS, f"{path}: {CSP_VIOLATIONS}"


@pytest.mark.slow
def test_every_kind_of_page_works_under_the_policy_with_no_violation(
    browser: Browser, portal_url: str, transactional_db: None
) -> None:
    tenant = make_tenant("csp")
    root = User.objects.create_superuser("root-csp", password=PASSWORD)
    add_member(tenant, root, Role.OWNER)
    Image.objects.create(name="csp-image", kind="kernel", os_name="Test", disk_path="/x", sha256="0" * 64)
    Flavor.objects.create(name="csp.one", vcpus=1, ram_mib=256, disk_gib=1)
    Host.objects.create(name="csp-host", uri="test:///", cpus=4, ram_mib=8192, disk_gib=100)
    operation = instance_create(
        actor=Actor("root-csp", "test", None), tenant=tenant, name="csp-vm", flavor="csp.one",
        image="csp-image", network=None, wait=True,
    )  # fmt: skip
    instance = Instance.objects.for_tenant(tenant).get(pk=operation.instance_id)
    base = f"/t/{tenant.slug}/"

    login = browser.new_context(base_url=portal_url).new_page()
    try:
        visit(login, "/login/")
        expect(login.locator("#id_username")).to_be_focused()
        assert_clean(login, "/login/")
    finally:
        login.context.close()

    page = log_in(browser, portal_url, root.username, PASSWORD)
    try:
        # The tenant pages: their scripts run (the live socket connects, so connect-src allows it).
        for path in (base, f"{base}instances/", f"{base}instances/{instance.uuid}/"):
            visit(page, path)
            expect(page.locator("#live-status")).to_have_text("live")
            assert_clean(page, path)
        # The create form's quota preview draws its bars (a style set from a script is allowed).
        visit(page, f"{base}instances/new/")
        page.select_option("#id_flavor", "csp.one")
        expect(page.locator("#quota-preview tr[data-resource=vcpus] .bar > span")).to_have_attribute(
            "style", re.compile(r"width: \d+%")
        )
        assert_clean(page, "instances/new/")
        # The console: noVNC's modules load, and the page asks the API for a screen.
        path = f"{base}instances/{instance.uuid}/console/"
        visit(page, path)
        expect(page.locator("#vnc-status")).not_to_have_text("connecting…")
        assert_clean(page, path)
        for path in (f"{base}networks/", f"{base}quota/", f"{base}settings/", f"{base}audit/"):
            visit(page, path)
            assert_clean(page, path)

        # Staff pages: the gauges get their widths from bars.js.
        visit(page, "/staff/hosts/")
        gauge = page.locator(".gauge[data-gauge=vCPU] .bar > span").first
        expect(gauge).to_have_attribute("style", re.compile(r"width: \d+%"))
        visit(page, "/staff/queue/")
        assert_clean(page, "/staff/")

        # The Django admin, with pages whose widgets are built by the admin's scripts.
        visit(page, "/admin/")
        assert_clean(page, "/admin/")
        visit(page, f"/admin/auth/user/{root.pk}/change/")
        expect(page.locator(".selector-available").first).to_be_visible()  # SelectFilter2.js ran
        assert_clean(page, "admin user change")
        visit(page, "/admin/tenants/quota/")
        expect(page.locator("meter").first).to_be_visible()
        visit(page, "/admin/django_celery_beat/periodictask/add/")
        expect(page.locator(".field-crontab_translation")).to_be_hidden()  # periodic_task.js ran
        visit(page, "/admin/axes/accessattempt/")
        visit(page, "/admin/compute/instance/")
        assert_clean(page, "admin pages")

        # Swagger UI: its start-up script is a file; the schema is fetched and drawn.
        visit(page, "/api/docs/")
        expect(page.locator(".swagger-ui .info .title")).to_contain_text("Nubis API", timeout=30_000)
        expect(page.locator(".opblock").first).to_be_visible()
        assert_clean(page, "/api/docs/")
        # The browsable API.
        visit(page, "/api/v1/tenants/")
        assert_clean(page, "/api/v1/tenants/")
    finally:
        page.context.close()

    # Last (it locks this address): the lockout page after too many failures.
    locked = browser.new_context(base_url=portal_url).new_page()
    try:
        locked.goto("/login/")
        for _ in range(20):
            locked.fill("#id_username", "nobody-csp")
            locked.fill("#id_password", "wrong")
            locked.click("button[type=submit]")
            locked.wait_for_load_state("load")
            if locked.locator("#lockout").count():
                break
            locked.goto("/login/")
        expect(locked.locator("#lockout h1")).to_have_text("Login locked")
        expect(locked.locator("[data-lock=account]")).to_contain_text("nobody-csp")
        assert_clean(locked, "lockout page")
    finally:
        locked.context.close()


def test_the_watch_catches_a_violation(browser: Browser, portal_url: str, transactional_db: None) -> None:
    """Without this, a watch that never fires would let every other browser test pass."""
    page = browser.new_context(base_url=portal_url).new_page()
    try:
        page.goto("/login/")
        page.evaluate(
            """() => { const s = document.createElement("script");
                       s.textContent = "window.__ran = true"; document.body.append(s); }"""
        )
        page.wait_for_function("window.__cspViolations.length > 0")
        assert page.evaluate("window.__ran === undefined"), "the inline script ran"
        page.evaluate("document.body.setAttribute('style', 'color: red')")
        page.wait_for_function("window.__cspViolations.length > 1")
        expect(page.locator("body")).not_to_have_css("color", "rgb(255, 0, 0)")
        page.wait_for_timeout(200)  # let the exposed binding's calls arrive
        seen = list(CSP_VIOLATIONS)
        assert any("script-src" in v for v in seen), seen
        assert any("style-src" in v for v in seen), seen
    finally:
        page.context.close()
        CSP_VIOLATIONS.clear()  # seen on purpose: not a failure of this test
