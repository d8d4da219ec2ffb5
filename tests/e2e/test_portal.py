"""The portal in a real browser: a member creates a container and a VM from the form and watches
them run without reloading, stops one, reads the VM's serial console; quota errors inline; tenant
isolation over the websocket; small screens. Real agent, real guests (TCG) and containers."""

from __future__ import annotations

import re
from typing import Any

import pytest
from playwright.sync_api import Browser, Page, WebSocket, expect

from compute.models import Flavor, Host, Image, Instance, InstanceState, OperationState
from compute.services.instances import instance_create, instance_delete
from security.audit import Actor
from tenants.models import Role, Tenant
from tests.compute.conftest import wait_operation
from tests.e2e.conftest import log_in, screenshot
from tests.factories import PASSWORD, add_member, make_tenant, make_user

BOOT = 120_000  # ms: a TCG guest boots in ~6 s alone, longer on a busy 2-CPU machine


@pytest.fixture
def tenant_a(transactional_db: None) -> tuple[Tenant, str]:
    tenant = make_tenant("browser-a")
    user = make_user("alice")
    add_member(tenant, user, Role.MEMBER)
    return tenant, user.username


def _cleanup(tenant: Tenant) -> None:
    """Delete what the test made, through the services, and wait for the agent to finish."""
    actor = Actor("e2e-cleanup", "test", None)
    for instance in Instance.objects.for_tenant(tenant).exclude(state=InstanceState.DELETED):
        if instance.state in (InstanceState.DELETING,):
            continue
        wait_operation(instance_delete(actor=actor, instance=instance))


def _create_through_the_form(page: Page, slug: str, name: str, kind: str, flavor: str, image: str) -> str:
    page.goto(f"/t/{slug}/instances/new/")
    page.fill("#id_name", name)
    page.check(f"input[name=kind][value={kind}]")
    page.select_option("#id_flavor", flavor)
    page.select_option("#id_image", image)
    page.select_option("#id_network", "__none__")
    expect(page.locator("#flavor-summary")).to_contain_text("vCPU")
    page.click("#create-form button[type=submit]")
    page.wait_for_url(re.compile(rf"/t/{slug}/instances/[0-9a-f-]{{36}}/$"))
    return page.url.rstrip("/").rsplit("/", 1)[1]


def _state(page: Page, uuid: str) -> Any:
    return page.locator(f'tr[data-instance="{uuid}"] [data-live="state"]')


@pytest.mark.slow
def test_member_creates_a_container_and_a_vm_and_watches_them_run_live(
    browser: Browser,
    portal_url: str,
    tenant_a: tuple[Tenant, str],
    host: Host,
    image: Image,
    rootfs_image: Image,
    flavors: dict[str, Flavor],
    cflavors: dict[str, Flavor],
    no_leftovers: None,
) -> None:
    tenant, username = tenant_a
    page = log_in(browser, portal_url, username, PASSWORD)
    try:
        screenshot(page, "dashboard-empty")
        page.goto(f"/t/{tenant.slug}/instances/")
        expect(page.locator("#live-status")).to_have_text("live")
        page.evaluate("window.__notReloaded = true")
        # The forms are filled in a second tab; the list stays open in the first.
        form = page.context.new_page()
        box = _create_through_the_form(
            form, tenant.slug, "web-box", "container", "c.small", rootfs_image.name
        )
        vm = _create_through_the_form(form, tenant.slug, "web-vm", "vm", "t.virtio", image.name)
        expect(_state(page, box)).to_have_text("running", timeout=BOOT)
        expect(_state(page, vm)).to_have_text("running", timeout=BOOT)
        assert page.evaluate("window.__notReloaded === true"), "the list page was reloaded"
        screenshot(page, "instances-list")

        # Stop the container from its page; the page follows it to stopped by itself.
        form.goto(f"/t/{tenant.slug}/instances/{box}/")
        form.click("button[data-action=stop]")
        form.wait_for_url(re.compile(rf"/instances/{box}/$"))
        form.evaluate("window.__notReloaded = true")
        expect(form.locator('.page-head [data-live="state"]')).to_have_text("stopped", timeout=60_000)
        assert form.evaluate("window.__notReloaded === true")
        expect(_state(page, box)).to_have_text("stopped")  # the list saw it too
        expect(form.locator("#operations tbody tr").first).to_contain_text("succeeded")

        # The VM's page: its serial console's ready marker, live operations, placement.
        form.goto(f"/t/{tenant.slug}/instances/{vm}/")
        expect(form.locator("#serial")).to_contain_text("NUBIS-READY", timeout=BOOT)
        expect(form.locator("#placement-title")).to_be_visible()
        screenshot(form, "instance-detail")
        form.goto(f"/t/{tenant.slug}/instances/{vm}/console/")
        expect(form.locator("#serial")).to_contain_text("NUBIS-READY", timeout=BOOT)
        expect(form.locator("#vnc-status")).to_have_text("connected", timeout=30_000)  # noVNC's screen
        screenshot(form, "console")
        form.goto(f"/t/{tenant.slug}/")
        expect(form.locator(".stats")).to_contain_text("running")
        screenshot(form, "dashboard")
        for uuid in (box, vm):
            assert Instance.objects.for_tenant(tenant).get(uuid=uuid).host_id == host.pk
    finally:
        page.context.close()
        _cleanup(tenant)


def test_a_create_over_the_quota_shows_an_inline_error_and_creates_nothing(
    browser: Browser, portal_url: str, transactional_db: None
) -> None:
    tenant = make_tenant("browser-quota", vcpus=1)
    user = make_user("quentin")
    add_member(tenant, user, Role.MEMBER)
    Image.objects.create(name="q-image", kind="kernel", os_name="Test", disk_path="/x", sha256="0" * 64)
    Flavor.objects.create(name="q.two", vcpus=2, ram_mib=256, disk_gib=1)
    page = log_in(browser, portal_url, user.username, PASSWORD)
    try:
        page.goto(f"/t/{tenant.slug}/instances/new/")
        page.fill("#id_name", "too-big")
        page.select_option("#id_flavor", "q.two")
        # The preview already says so; the server decides.
        expect(page.locator("#quota-warning")).to_contain_text("vcpus (limit 1, would be 2)")
        page.click("#create-form button[type=submit]")
        error = page.locator("#id_flavor-error")
        expect(error).to_contain_text("quota exceeded for vcpus: limit 1, in use 0, requested 2")
        expect(page.locator("#id_flavor")).to_have_attribute("aria-invalid", "true")
        assert not Instance.objects.for_tenant(tenant).exists()
    finally:
        page.context.close()


@pytest.mark.slow
def test_another_tenant_never_sees_the_instances_nor_their_events(
    browser: Browser,
    portal_url: str,
    tenant_a: tuple[Tenant, str],
    host: Host,
    rootfs_image: Image,
    cflavors: dict[str, Flavor],
    no_leftovers: None,
) -> None:
    tenant, username = tenant_a
    frames: list[str] = []
    other = make_tenant("browser-b")
    bob = make_user("bob")
    add_member(other, bob, Role.MEMBER)
    alice_page = log_in(browser, portal_url, username, PASSWORD)
    bob_page = log_in(browser, portal_url, bob.username, PASSWORD)

    def listen(ws: WebSocket) -> None:
        ws.on("framereceived", lambda payload: frames.append(str(payload)))

    bob_page.on("websocket", listen)
    try:
        bob_page.goto(f"/t/{other.slug}/instances/")
        expect(bob_page.locator("#live-status")).to_have_text("live")
        alice_page.goto(f"/t/{tenant.slug}/instances/")
        expect(alice_page.locator("#live-status")).to_have_text("live")
        box = _create_through_the_form(
            alice_page.context.new_page(),
            tenant.slug,
            "secret-box",
            "container",
            "c.small",
            rootfs_image.name,
        )
        expect(_state(alice_page, box)).to_have_text("running", timeout=BOOT)
        bob_page.wait_for_timeout(1000)  # any event of A's would have reached B by now
        assert frames, "bob's page received nothing at all: the socket did not work"
        assert not [f for f in frames if box in f or "secret-box" in f], frames
        bob_page.reload()
        assert "secret-box" not in bob_page.content()
        for path in (f"/t/{tenant.slug}/instances/{box}/", f"/t/{tenant.slug}/instances/"):
            response = bob_page.goto(path)
            assert response is not None
            assert response.status == 404, path
    finally:
        alice_page.context.close()
        bob_page.context.close()
        _cleanup(tenant)


def test_list_detail_and_form_fit_a_375_pixel_screen(
    browser: Browser, portal_url: str, tenant_a: tuple[Tenant, str]
) -> None:
    tenant, username = tenant_a
    Image.objects.create(name="s-image", kind="kernel", os_name="Test", disk_path="/x", sha256="0" * 64)
    Flavor.objects.create(name="s.one", vcpus=1, ram_mib=256, disk_gib=1)
    Host.objects.create(name="s-host", uri="test:///", cpus=4, ram_mib=8192, disk_gib=100)
    actor = Actor(username, "test", None)
    operation = instance_create(
        actor=actor, tenant=tenant, name="a-rather-long-instance-name-for-a-phone", flavor="s.one",
        image="s-image", network=None, wait=True,
    )  # fmt: skip
    assert operation.state in (OperationState.PENDING, OperationState.FAILED)
    instance = Instance.objects.for_tenant(tenant).get(pk=operation.instance_id)
    page = log_in(browser, portal_url, username, PASSWORD, viewport={"width": 375, "height": 800})
    try:
        for name, path in (
            ("dashboard", f"/t/{tenant.slug}/"),
            ("instances-list", f"/t/{tenant.slug}/instances/"),
            ("instance-detail", f"/t/{tenant.slug}/instances/{instance.uuid}/"),
            ("instance-new", f"/t/{tenant.slug}/instances/new/"),
        ):
            page.goto(path)
            width = page.evaluate("document.documentElement.scrollWidth")
            assert width <= 375, f"{path} scrolls sideways: {width} px wide"
            screenshot(page, f"{name}-375px")
    finally:
        page.context.close()
