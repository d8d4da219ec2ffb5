"""Staff pages (hosts: capacity, load, maintenance; the admission queue) and the admin beside them."""

from __future__ import annotations

import re

import pytest
from django.contrib.auth.models import Permission, User
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext

from compute.models import (
    CpuMode,
    Flavor,
    Host,
    HostState,
    Image,
    ImageKind,
    Instance,
    InstanceState,
    Paging,
)
from compute.services.evacuation import evacuate
from compute.services.hosts import host_maintenance_set
from compute.services.instances import instance_delete
from core.errors import Conflict
from scheduler.admission import queue_entries
from scheduler.engine import HostTable
from scheduler.hosts import host_rows
from scheduler.models import Aggregate
from security.audit import Actor
from security.models import AuditRecord
from tenants.models import PriorityClass, Quota, Role
from tenants.selectors import quota_report
from tenants.services.quotas import quota_claim
from tenants.services.tokens import token_create
from tests.factories import add_member, make_tenant, make_user
from tests.scheduler.conftest import create
from tests.scheduler.test_placement import make_host

pytestmark = pytest.mark.django_db


@pytest.fixture
def catalog() -> None:
    """The flavor and image tests.scheduler.conftest.create asks for."""
    Image.objects.create(name="q-image", kind=ImageKind.KERNEL, os_name="t", disk_path="/x", sha256="0" * 64)
    Flavor.objects.create(name="q.one", vcpus=1, ram_mib=256, disk_gib=1, cpu_mode=CpuMode.EMULATED)


@pytest.fixture
def staff(client: Client) -> User:
    """A staff member who may change hosts (the maintenance toggle needs compute.change_host)."""
    user = make_user("operator", is_staff=True)
    user.user_permissions.set(
        Permission.objects.filter(codename__in=["view_host", "change_host", "view_quota", "view_flavor"])
    )
    client.force_login(user)
    return user


def place(host: Host, name: str, vcpus: int, ram_mib: int, disk_gib: int, state: str = "running") -> Instance:
    """An instance row holding room on ``host`` (what a claim leaves behind)."""
    tenant = make_tenant()
    flavor, _ = Flavor.objects.get_or_create(
        name="s.any", defaults={"vcpus": 1, "ram_mib": 64, "disk_gib": 1}
    )
    image, _ = Image.objects.get_or_create(
        name="s-image",
        defaults={"kind": ImageKind.KERNEL, "os_name": "t", "disk_path": "/x", "sha256": "0" * 64},
    )
    return Instance.objects.create(
        tenant=tenant,
        name=name,
        flavor=flavor,
        image=image,
        host=host,
        state=state,
        vcpus=vcpus,
        ram_mib=ram_mib,
        current_ram_mib=ram_mib,
        disk_gib=disk_gib,
    )


def card(html: str, name: str) -> str:
    """The part of the hosts page about one host."""
    match = re.search(rf'<li id="host-\d+" data-host="{re.escape(name)}">(.*?)</li>', html, re.S)
    assert match, f"no card for {name}"
    return match.group(1)


def gauge(html: str, label: str) -> dict[str, str]:
    match = re.search(rf'<div class="gauge" data-gauge="{label}"([^>]*)>', html)
    assert match, f"no {label} gauge"
    return dict(re.findall(r'data-([a-z]+)="([^"]*)"', match.group(1)))


# -- access ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("path", ["/staff/hosts/", "/staff/queue/"])
def test_anonymous_users_are_sent_to_the_login_page(client: Client, path: str) -> None:
    response = client.get(path)
    assert response.status_code == 302
    assert response["Location"] == f"/login/?next={path}"


@pytest.mark.parametrize("path", ["/staff/hosts/", "/staff/queue/"])
def test_signed_in_users_who_are_not_staff_get_403(client: Client, path: str) -> None:
    tenant = make_tenant("not-staff")
    client.force_login(add_member(tenant, make_user("owner"), Role.OWNER))
    assert client.get(path).status_code == 403


def test_the_maintenance_toggle_is_refused_to_non_staff_and_to_staff_who_may_not_change_hosts(
    client: Client,
) -> None:
    host = make_host("s-guarded")
    url = f"/staff/hosts/{host.pk}/maintenance/"
    response = client.post(url, {"on": "1"})
    assert response.status_code == 302
    assert "/login/?next=" in response["Location"]
    client.force_login(make_user("plain"))
    assert client.post(url, {"on": "1"}).status_code == 403
    viewer = make_user("viewing-staff", is_staff=True)
    viewer.user_permissions.set(Permission.objects.filter(codename="view_host"))
    client.force_login(viewer)
    assert client.post(url, {"on": "1"}).status_code == 403
    page = client.get("/staff/hosts/").content.decode()
    assert "Start maintenance" not in page  # no button they could not use
    host.refresh_from_db()
    assert host.state == HostState.ENABLED
    assert not AuditRecord.objects.filter(action="host.maintenance").exists()


# -- hosts -----------------------------------------------------------------------------------------
def test_staff_see_every_host_with_reserved_use_against_capacity_after_overcommit(
    client: Client, staff: User
) -> None:
    kvm = make_host(
        "s-kvm",
        cpus=4,
        ram_mib=8192,
        cpu_ratio=2.0,
        ram_ratio=1.5,
        kvm_device=True,
        kvm_usable=True,
        paging=Paging.EPT,
        iommu=True,
        tcg_available=True,
        vmm="QEMU 8.2.2",
    )
    tcg = make_host(
        "s-tcg",
        cpus=2,
        ram_mib=4096,
        cpu_ratio=1.0,
        kvm_device=True,
        kvm_usable=False,
        kvm_probe_detail="probe guest did not reach /init in 30 s",
        paging=Paging.SHADOW,
        tcg_available=True,
        state=HostState.MAINTENANCE,
    )
    make_host("s-sim", cpus=8, simulated=True, vmm="simulator", heartbeat_at=None)
    place(kvm, "big", vcpus=7, ram_mib=6144, disk_gib=40)
    place(kvm, "small", vcpus=1, ram_mib=512, disk_gib=10, state=InstanceState.STOPPED)
    place(kvm, "gone", vcpus=4, ram_mib=4096, disk_gib=10, state=InstanceState.DELETED)  # holds nothing
    place(tcg, "one", vcpus=1, ram_mib=1024, disk_gib=5)

    response = client.get("/staff/hosts/")
    assert response.status_code == 200
    html = response.content.decode()
    # The figures are the scheduler's: capacity after overcommit, and what instances reserved.
    table = HostTable(host_rows(Host.objects.all()))
    for name in ("s-kvm", "s-tcg", "s-sim"):
        i = table.names.index(name)
        part = card(html, name)
        for row, label in enumerate(("vCPU", "RAM", "Disk")):
            shown = gauge(part, label)
            assert float(shown["used"]) == table.used[row, i], (name, label)
            assert float(shown["capacity"]) == table.capacity[row, i], (name, label)

    kvm_card = card(html, "s-kvm")
    assert gauge(kvm_card, "vCPU") == {"used": "8", "capacity": "8", "pct": "100"}
    assert gauge(kvm_card, "RAM") == {"used": "6656", "capacity": "12288", "pct": "54"}
    assert gauge(kvm_card, "Disk") == {"used": "50", "capacity": "100", "pct": "50"}
    assert '<div class="bar err" role="meter"' in kvm_card  # vCPUs full
    assert 'data-width="100"' in kvm_card
    assert 'data-width="54"' in kvm_card
    assert 'aria-valuetext="6656 of 12288 MiB (54%)"' in kvm_card
    assert 'data-state="enabled"' in kvm_card
    assert "EPT (Intel nested paging)" in kvm_card
    assert 'data-kvm="usable"' in kvm_card
    assert "QEMU 8.2.2" in kvm_card
    assert 'data-instances="2"' in kvm_card
    assert "(1 running)" in kvm_card
    assert "CPU \u00d72.0, RAM \u00d71.5, disk \u00d71.0" in kvm_card
    assert "Start maintenance" in kvm_card

    tcg_card = card(html, "s-tcg")
    assert 'data-kvm="unusable"' in tcg_card
    assert "probe guest did not reach /init in 30 s" in tcg_card  # why KVM is not usable
    assert "Shadow page tables" in tcg_card
    assert 'data-state="maintenance"' in tcg_card
    assert "End maintenance" in tcg_card
    assert gauge(tcg_card, "vCPU")["pct"] == "50"

    sim_card = card(html, "s-sim")
    assert "data-simulated" in sim_card
    assert "data-simulated" not in kvm_card
    assert "Heartbeat: never" in sim_card
    assert "stale" in sim_card
    # Real hosts first, then simulated ones.
    assert html.index('data-host="s-tcg"') < html.index('data-host="s-sim"')


def test_the_hosts_page_reads_a_fixed_number_of_queries_however_many_hosts(
    client: Client, staff: User
) -> None:
    def queries() -> int:
        with CaptureQueriesContext(connection) as ctx:
            assert client.get("/staff/hosts/").status_code == 200
        return len(ctx.captured_queries)

    for n in range(2):
        place(make_host(f"s-few-{n}"), f"few-{n}", 1, 128, 1)
    few = queries()
    for n in range(6):
        place(make_host(f"s-many-{n}"), f"many-{n}", 1, 128, 1)
    assert queries() == few


def test_staff_put_a_host_into_maintenance_and_back_and_each_change_is_audited(
    client: Client, staff: User
) -> None:
    host = make_host("s-maint")
    url = f"/staff/hosts/{host.pk}/maintenance/"
    response = client.post(url, {"on": "1"})
    assert (response.status_code, response["Location"]) == (302, "/staff/hosts/")
    host.refresh_from_db()
    assert host.state == HostState.MAINTENANCE
    record = AuditRecord.objects.get(action="host.maintenance")
    assert (record.outcome, record.actor_name, record.target_type, record.target_id) == (
        "success",
        "operator",
        "compute.host",
        str(host.pk),
    )
    assert record.detail == {
        "on": True,
        "force": False,
        "from": "enabled",
        "to": "maintenance",
        "changed": True,
    }
    # Placement skips it now.
    assert not HostTable(host_rows(Host.objects.filter(pk=host.pk))).enabled[0]
    assert "Host s-maint is now maintenance." in client.get("/staff/hosts/").content.decode()

    assert client.post(url, {"on": "0"}).status_code == 302
    host.refresh_from_db()
    assert host.state == HostState.ENABLED
    assert AuditRecord.objects.filter(action="host.maintenance").count() == 2


def test_an_occupied_host_empties_first_and_the_page_shows_how_it_stands(client: Client, staff: User) -> None:
    host = make_host("s-busy")
    broken = place(host, "broken", 1, 128, 1, state="error")
    url = f"/staff/hosts/{host.pk}/maintenance/"
    assert client.post(url, {"on": "1"}).status_code == 302
    host.refresh_from_db()
    assert host.state == HostState.ENTERING_MAINTENANCE
    evacuate(host)
    html = client.get("/staff/hosts/").content.decode()
    assert 'data-state="entering_maintenance"' in html
    assert 'data-evacuation data-remaining="1" data-moving="0"' in html
    assert f'data-blocked="{broken.uuid}"><strong>broken</strong>: in error' in html
    assert "Force maintenance" in html
    assert client.post(url, {"on": "1", "force": "1"}).status_code == 302
    host.refresh_from_db()
    assert host.state == HostState.MAINTENANCE
    record = AuditRecord.objects.filter(action="host.maintenance").order_by("-seq").first()
    assert record is not None
    assert record.detail["force"] is True


def test_a_down_host_is_refused_and_the_answer_names_its_state(client: Client, staff: User) -> None:
    host = make_host("s-down", state=HostState.DOWN)
    response = client.post(f"/staff/hosts/{host.pk}/maintenance/", {"on": "1"})
    assert response.status_code == 409
    html = response.content.decode()
    assert 'role="alert" data-field="state"' in html
    assert "heartbeat" in html
    host.refresh_from_db()
    assert host.state == HostState.DOWN
    # One record, written by the middleware for the refused request; none by the service.
    record = AuditRecord.objects.order_by("-seq").first()
    assert record is not None
    assert (record.action, record.outcome) == (
        "http.staff-host-maintenance",
        "invalid",
    )
    with pytest.raises(Conflict) as refused:
        host_maintenance_set(actor=Actor.system("test"), host=host, on=False)
    assert refused.value.field == "state"


def test_a_bad_toggle_value_is_refused(client: Client, staff: User) -> None:
    host = make_host("s-bad")
    response = client.post(f"/staff/hosts/{host.pk}/maintenance/", {"on": "yes"})
    assert response.status_code == 400
    assert 'data-field="on"' in response.content.decode()
    assert client.post("/staff/hosts/999999/maintenance/", {"on": "1"}).status_code == 404


def test_ending_maintenance_on_a_disabled_host_is_refused_but_starting_it_works() -> None:
    host = make_host("s-disabled", state=HostState.DISABLED)
    with pytest.raises(Conflict) as refused:
        host_maintenance_set(actor=Actor.system("test"), host=host, on=False)
    assert refused.value.field == "state"
    assert host_maintenance_set(actor=Actor.system("test"), host=host, on=True).state == HostState.MAINTENANCE


# -- the queue -------------------------------------------------------------------------------------
def test_the_queue_page_lists_waiting_requests_in_admission_order(
    client: Client, staff: User, catalog: None
) -> None:
    tenant = make_tenant("queued", priority=PriorityClass.HIGH, instances=20, vcpus=20)
    other = make_tenant("queued-too", instances=20, vcpus=20)
    make_host("q-full", cpus=1, cpu_ratio=1.0)
    create(tenant, "holder")  # takes the only vCPU
    create(tenant, "low", priority=PriorityClass.LOW, wait=True)
    create(other, "normal", wait=True)
    create(tenant, "high", priority=PriorityClass.HIGH, wait=True)
    cancelled = create(other, "impatient", wait=True)
    instance_delete(actor=Actor.system("test"), instance=cancelled)

    expected = [e.instance.name for e in queue_entries()]
    assert expected == ["high", "normal", "low"]
    response = client.get("/staff/queue/")
    assert response.status_code == 200
    html = response.content.decode()
    waiting, recent = html.split('id="recent-title"')
    rows = re.findall(r'<tr data-instance="([^"]+)" data-position="(\d+)">', waiting)
    assert rows == [(name, str(i)) for i, name in enumerate(expected, start=1)]
    high = waiting[waiting.index('data-instance="high"') :]
    assert "<code>queued</code>" in high
    assert "High" in high
    assert "filter &#x27;capacity&#x27;" in high
    assert "unknown" in high  # no admissions yet to estimate from
    assert re.search(r'<tr data-instance="impatient" data-state="cancelled">', recent)


def test_the_queue_page_with_nothing_waiting(client: Client, staff: User) -> None:
    html = client.get("/staff/queue/").content.decode()
    assert "Nothing is waiting" in html
    assert "No request has left the queue yet" in html


# -- admin -----------------------------------------------------------------------------------------
def test_admin_quota_pages_show_usage_against_each_limit(client: Client, staff: User) -> None:
    tenant = make_tenant("quota-shown", vcpus=10, ram_mib=4096)
    quota_claim(tenant, {"instances": 1, "vcpus": 3, "ram_mib": 1024}, "test")
    report = quota_report(tenant)["resources"]
    assert (report["vcpus"]["used"], report["vcpus"]["limit"]) == (3, 10)
    listing = client.get("/admin/tenants/quota/")
    assert listing.status_code == 200
    html = listing.content.decode()
    assert "<small>3 / 10</small>" in html
    assert "<small>1024 / 4096</small>" in html
    quota = Quota.objects.for_tenant(tenant).get()
    form = client.get(f"/admin/tenants/quota/{quota.pk}/change/").content.decode()
    assert "Current usage" in form
    for name, r in report.items():
        assert f"<tr><th>{name}</th><td>" in form
        assert f"<small>{r['used']} / {r['limit']}</small>" in form


@pytest.mark.parametrize(
    "path",
    [
        "/admin/compute/host/",
        "/admin/compute/flavor/",
        "/admin/compute/image/",
        "/admin/tenants/quota/",
        "/admin/tenants/tenant/",
        "/admin/tenants/apitoken/",
        "/admin/scheduler/aggregate/",
    ],
)
def test_admin_lists_read_a_fixed_number_of_queries(client: Client, path: str) -> None:
    client.force_login(User.objects.create_superuser("root", password="pw-for-tests-only-9d1f"))

    def rows(start: int, n: int) -> None:
        for i in range(start, start + n):
            tenant = make_tenant(f"n1-{i}")
            host = make_host(f"n1-host-{i}")
            Aggregate.objects.create(name=f"n1-agg-{i}", tenant=tenant).hosts.add(host)
            token_create(
                actor=Actor.system("test"),
                tenant=tenant,
                creator_id=add_member(tenant).pk,
                creator_role=Role.MEMBER,
                name=f"n1-token-{i}",
                role=Role.VIEWER,
            )
            Flavor.objects.create(
                name=f"n1.f{i}", vcpus=1, ram_mib=64, disk_gib=1, public=False, tenant=tenant
            )
            Image.objects.create(
                name=f"n1-i{i}",
                kind=ImageKind.KERNEL,
                os_name="t",
                disk_path="/x",
                sha256="0" * 64,
                public=False,
                tenant=tenant,
            )

    def queries() -> int:
        with CaptureQueriesContext(connection) as ctx:
            assert client.get(path).status_code == 200
        return len(ctx.captured_queries)

    rows(0, 2)
    few = queries()
    rows(2, 5)
    assert queries() == few


def test_admin_hosts_show_ratios_link_the_staff_page_and_switch_maintenance_through_the_service(
    client: Client,
) -> None:
    client.force_login(User.objects.create_superuser("root", password="pw-for-tests-only-9d1f"))
    host = make_host("a-host", cpu_ratio=3.0)
    down = make_host("a-down", state=HostState.DOWN)
    html = client.get("/admin/compute/host/").content.decode()
    assert "CPU overcommit" in html
    assert f'href="/staff/hosts/#host-{host.pk}"' in html
    assert (
        f'href="/staff/hosts/#host-{host.pk}"'
        in client.get(f"/admin/compute/host/{host.pk}/change/").content.decode()
    )
    response = client.post(
        "/admin/compute/host/",
        {"action": "maintenance_start", "_selected_action": [host.pk, down.pk]},
        follow=True,
    )
    assert response.status_code == 200
    host.refresh_from_db()
    down.refresh_from_db()
    assert (host.state, down.state) == (HostState.MAINTENANCE, HostState.DOWN)
    assert "a-down is down" in response.content.decode()
    assert AuditRecord.objects.filter(action="host.maintenance", target_id=str(host.pk)).count() == 1


@pytest.mark.django_db(transaction=True)  # the scheduler closes connections left in a transaction
def test_the_beat_schedule_shows_in_the_periodic_tasks_admin_once_beat_has_run(client: Client) -> None:
    from django.conf import settings
    from django_celery_beat.models import PeriodicTask
    from django_celery_beat.schedulers import DatabaseScheduler

    from portal.celery import app

    DatabaseScheduler(app=app)  # what `celery beat` does when it starts: it writes the schedule
    names = set(PeriodicTask.objects.values_list("name", flat=True))
    assert set(settings.CELERY_BEAT_SCHEDULE) <= names
    client.force_login(User.objects.create_superuser("root", password="pw-for-tests-only-9d1f"))
    html = client.get("/admin/django_celery_beat/periodictask/").content.decode()
    for name in settings.CELERY_BEAT_SCHEDULE:
        assert f">{name}</a>" in html, name
