"""The interactive serial console in a real browser: a member opens a running VM's console page,
types a command into the terminal (xterm.js) and sees what the guest's shell answers; the page
keeps the Content-Security-Policy (no inline styles, no inline scripts)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest
from playwright.sync_api import Browser, Page, expect

from compute.models import Image, Instance, OperationState
from compute.services.instances import instance_create, instance_delete
from security.audit import Actor
from tests.compute.conftest import serial_text, wait_marker, wait_operation
from tests.e2e.conftest import log_in, screenshot
from tests.factories import PASSWORD, add_member, make_tenant

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]
BOOT = 120_000  # ms


@pytest.fixture
def running_vm(host: Any, console_image: Image, flavors: Any) -> Iterator[tuple[str, Instance]]:
    tenant = make_tenant("typing")
    member = add_member(tenant)
    actor = Actor(member.username, "api", member.pk)
    op = wait_operation(
        instance_create(
            actor=actor,
            tenant=tenant,
            name="typed",
            flavor="t.virtio",
            image=console_image.name,
            network=None,
        )
    )
    assert op.state == OperationState.SUCCEEDED, op.error
    vm = Instance.objects.for_tenant(tenant).get(pk=op.instance_id)
    wait_marker(vm, "NUBIS-READY")
    yield member.username, vm
    assert wait_operation(instance_delete(actor=actor, instance=vm)).state == OperationState.SUCCEEDED


def type_into_the_terminal(page: Page, command: str) -> None:
    page.locator("#terminal").click()  # focus: xterm.js takes keys from its hidden textarea
    page.keyboard.press("Enter")
    expect(page.locator("#terminal .xterm-rows")).to_contain_text("#", timeout=30_000)  # a prompt
    page.keyboard.type(command)
    page.keyboard.press("Enter")


def answer_row(page: Page, text: str) -> Any:
    """The terminal's row that holds exactly ``text`` (what the guest printed, not what was typed)."""
    return page.locator("#terminal .xterm-rows > div").filter(
        has_text=re.compile(rf"^\s*{re.escape(text)}\s*$")
    )


def test_a_member_types_into_the_serial_console_and_sees_the_answer(
    browser: Browser, portal_url: str, running_vm: tuple[str, Instance]
) -> None:
    username, vm = running_vm
    page = log_in(browser, portal_url, username, PASSWORD)
    try:
        page.goto(f"/t/{vm.tenant.slug}/instances/{vm.uuid}/console/")
        expect(page.locator("#terminal-status")).to_have_text("connected", timeout=30_000)
        expect(page.locator("#terminal .xterm-rows")).to_be_visible()
        type_into_the_terminal(page, "echo $((6*7))")
        expect(answer_row(page, "42")).to_have_count(1, timeout=30_000)
        # The read-only log below still follows the port, and kept what the shell printed.
        expect(page.locator("#serial")).to_contain_text("NUBIS-READY", timeout=BOOT)
        wait_marker(vm, "\n42\n")  # read with universal newlines: the port printed "42\r\n"
        assert "echo $((6*7))" in serial_text(vm)
        screenshot(page, "serial-terminal")

        # Another page opening the console takes the port over: this one says so, and can reconnect.
        other = page.context.new_page()
        other.goto(f"/t/{vm.tenant.slug}/instances/{vm.uuid}/console/")
        expect(other.locator("#terminal-status")).to_have_text("connected", timeout=30_000)
        expect(page.locator("#terminal-status")).to_have_text("disconnected", timeout=30_000)
        other.close()
        page.click("#terminal-reconnect")
        expect(page.locator("#terminal-status")).to_have_text("connected", timeout=30_000)
        type_into_the_terminal(page, "echo $((7*8))")
        expect(answer_row(page, "56")).to_have_count(1, timeout=30_000)
    finally:
        page.context.close()
