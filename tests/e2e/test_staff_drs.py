"""The staff DRS page in a real browser, live: a new instance held for staff (manual mode) appears
without a reload while the what-if form a staff member is filling in is left alone; they refuse it
from the page with a reason; a pass run elsewhere shows at once. No guest is made."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from django.utils import timezone
from playwright.sync_api import Browser, Page, expect

from compute.models import CpuMode, Flavor, Host, Image, ImageKind, Instance, InstanceState
from compute.services.drs import drs_pass_run
from compute.services.instances import instance_create
from scheduler.models import DrsPassKind, DrsPlacement, DrsSettings
from security.audit import Actor
from tenants.models import Role
from tests.e2e.conftest import log_in
from tests.factories import PASSWORD, add_member, make_tenant, make_user

ACTOR = Actor("e2e", "test", None)


@pytest.fixture
def staff_page(browser: Browser, portal_url: str, transactional_db: None) -> Iterator[Page]:
    user = make_user("sam", is_staff=True, is_superuser=True)
    add_member(make_tenant("drs-staff"), user, Role.MEMBER)  # where the login lands
    page = log_in(browser, portal_url, "sam", PASSWORD)
    try:
        yield page
    finally:
        page.context.close()


def test_the_drs_page_shows_held_instances_and_passes_live(staff_page: Page) -> None:
    page = staff_page
    tenant = make_tenant("drs-e2e")
    Image.objects.create(
        name="e2e-image", kind=ImageKind.KERNEL, os_name="t", disk_path="/x", sha256="0" * 64
    )
    Flavor.objects.create(name="e2e.one", vcpus=1, ram_mib=256, disk_gib=1, cpu_mode=CpuMode.EMULATED)
    host = Host.objects.create(
        name="e2e-drs-host",
        uri="test:///default",
        cpus=8,
        ram_mib=16384,
        disk_gib=100,
        heartbeat_at=timezone.now(),
    )
    DrsSettings.objects.update_or_create(pk=1, defaults={"automation": "manual"})

    page.goto("/staff/drs/")
    expect(page.locator("#live-status")).to_have_text("live")
    expect(page.locator("#placements-title .badge")).to_have_text("0")
    page.fill("input[name=add_count]", "3")  # a staff member fills in a what-if meanwhile

    op = instance_create(
        actor=ACTOR, tenant=tenant, name="waits", flavor="e2e.one", image="e2e-image", network=None
    )
    instance = Instance.objects.for_tenant(tenant).get(pk=op.instance_id)
    assert instance.state == InstanceState.AWAITING, instance.fault
    held = DrsPlacement.objects.get(instance=instance)
    row = page.locator(f'tr[data-placement="{held.pk}"]')
    expect(row).to_contain_text("waits")  # no reload
    expect(page.locator("#placements-title .badge")).to_have_text("1")
    expect(page.locator("input[name=add_count]")).to_have_value("3")  # that section was left alone

    row.locator("input[name=reason]").fill("not on this cluster")
    row.get_by_role("button", name="Refuse").click()
    expect(page.locator("#placements-title .badge")).to_have_text("0")
    instance.refresh_from_db()
    assert (instance.state, instance.fault) == (InstanceState.ERROR, "refused by staff: not on this cluster")

    expect(page.locator("#live-status")).to_have_text("live")
    done = drs_pass_run(kind=DrsPassKind.REQUESTED, actor=ACTOR, hosts=Host.objects.filter(pk=host.pk))
    assert done is not None
    expect(page.locator("#pass-title")).to_contain_text(str(done.pk))
