"""Consoles of a VM on a lab host, in a real browser: the portal runs on this machine's own
network stack, the VM on another host (its network namespace, its libvirtd, its QEMU listening for
VNC on that host's 127.0.0.1 only). The serial console and the VNC screen reach the browser through
the host's agent, and the VM moves live to another host with the console page open. The serial
terminal takes typing on both hosts (the test image runs a shell on its serial port)."""

from __future__ import annotations

import re
from typing import Any

import pytest
from playwright.sync_api import Browser, Page, expect

from compute.models import Host, Image, Instance, OperationState
from compute.services.instances import instance_create
from compute.services.migration import instance_migrate
from security.audit import Actor
from tests.cluster.conftest import LabControl, Placement
from tests.compute_fixtures import wait_marker, wait_operation
from tests.e2e.conftest import browser, log_in, no_csp_violations, portal_url, screenshot  # noqa: F401
from tests.factories import PASSWORD, add_member, make_tenant

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]
BOOT = 120_000  # ms


def typed_and_answered(page: Page, command: str, answer: str) -> None:
    """Type ``command`` into the serial terminal; the guest's shell prints ``answer`` on a row."""
    expect(page.locator("#terminal-status")).to_have_text("connected", timeout=30_000)
    page.locator("#terminal").click()
    page.keyboard.press("Enter")
    expect(page.locator("#terminal .xterm-rows")).to_contain_text("#", timeout=30_000)
    page.keyboard.type(command)
    page.keyboard.press("Enter")
    row = page.locator("#terminal .xterm-rows > div").filter(has_text=re.compile(rf"^\s*{answer}\s*$"))
    expect(row).to_have_count(1, timeout=30_000)


def test_serial_and_vnc_of_a_vm_on_another_host_work_in_the_browser(
    lab: LabControl,
    lab_hosts: dict[str, Host],
    placement: Placement,
    browser: Browser,  # noqa: F811
    portal_url: str,  # noqa: F811
    console_image: Image,
    flavors: Any,
    settings: Any,
) -> None:
    settings.NUBIS_SHARED_INSTANCE_STORE = True
    h1, h2, _h3 = (h.name for h in lab.hosts)
    tenant = make_tenant("consoles")
    user = add_member(tenant)
    placement.only(h1)
    actor = Actor(user.username, "api", user.pk)
    op = instance_create(
        actor=actor, tenant=tenant, name="far", flavor="t.virtio", image=console_image.name, network=None
    )
    vm = Instance.objects.for_tenant(tenant).get(pk=op.instance_id)
    assert vm.host is not None
    assert vm.host.name == h1
    assert wait_operation(op).state == OperationState.SUCCEEDED
    wait_marker(vm, "NUBIS-READY")
    # QEMU's VNC server listens on the lab host's own loopback, not on this machine's.
    listening = lab.host(h1).run("ss", "-Hltn").stdout
    assert "127.0.0.1:59" in listening

    page = log_in(browser, portal_url, user.username, PASSWORD)
    try:
        page.goto(f"/t/{tenant.slug}/instances/{vm.uuid}/console/")
        expect(page.locator("#serial")).to_contain_text("NUBIS-READY", timeout=BOOT)
        expect(page.locator("#vnc-status")).to_have_text("connected", timeout=30_000)
        typed_and_answered(page, "echo $((6*7))", "42")
        screenshot(page, "console-on-lab-host")

        # It moves live to another host: the page follows it there, the same boot's log.
        placement.only(h1, h2)
        moved = wait_operation(instance_migrate(actor=Actor("ops", "api", None), instance=vm, target=h2), 120)
        assert moved.state == OperationState.SUCCEEDED, moved.error
        page.reload()
        expect(page.locator("#serial")).to_contain_text("NUBIS-READY", timeout=30_000)
        expect(page.locator("#vnc-status")).to_have_text("connected", timeout=30_000)
        typed_and_answered(page, "echo $((6*8))", "48")
        vm.refresh_from_db()
        assert vm.host is not None
        assert vm.host.name == h2
    finally:
        page.context.close()
