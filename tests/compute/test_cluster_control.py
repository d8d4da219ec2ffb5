"""The control side of the cluster, on the database alone: a move's claim on its target, the
refusals of a move (each naming its field), maintenance's evacuation passes, and the HA check's
fencing and restarts. Hosts here are rows with no agent; the lab tests (tests/cluster) do it all on
real hosts."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from django.contrib.auth.models import Permission
from django.utils import timezone
from rest_framework.test import APIClient

from compute.models import (
    Host,
    HostState,
    Instance,
    InstanceKind,
    InstanceState,
    Operation,
    OperationKind,
    OperationState,
    Snapshot,
)
from compute.services import ha
from compute.services.evacuation import evacuate
from compute.services.hosts import host_heartbeat, host_is_fenced, host_maintenance_set, host_unfence
from compute.services.migration import instance_migrate, migration_done, migration_undone
from core.errors import Conflict, ServiceError
from core.redis import redis_client
from scheduler.hosts import host_rows
from security.audit import Actor
from security.models import AuditRecord
from tenants.models import Role, Tenant
from tests.factories import add_member, make_tenant, make_user
from tests.scheduler.test_placement import make_host, make_instance

pytestmark = pytest.mark.django_db
STAFF = Actor("ops", "api", None)


def cluster_host(name: str, n: int, **extra: Any) -> Host:
    address = f"10.99.0.{n}"
    return make_host(name, address=address, peer_uri=f"qemu+tcp://{address}/system", **extra)


def running_on(host: Host, tenant: Tenant, name: str, **fields: Any) -> Instance:
    instance = make_instance(tenant, name)
    for key, value in {"host": host, "state": InstanceState.RUNNING, **fields}.items():
        setattr(instance, key, value)
    instance.save()
    return instance


def used(host: Host) -> tuple[float, float]:
    row = host_rows(Host.objects.filter(pk=host.pk))[0]
    return row.used_vcpus, row.used_ram_mib


def test_a_move_holds_both_hosts_until_it_ends_then_only_one() -> None:
    tenant = make_tenant("mv")
    h1, h2 = cluster_host("h1", 1), cluster_host("h2", 2)
    vm = running_on(h1, tenant, "vm")
    op = instance_migrate(actor=STAFF, instance=vm, timeout=30, bandwidth_mib=50)
    vm.refresh_from_db()
    assert (vm.state, vm.host, vm.migration_host) == (InstanceState.MIGRATING, h1, h2)
    assert op.kind == OperationKind.MIGRATE
    assert op.params == {
        "source": "h1",
        "target": "h2",
        "live": True,
        "from_state": "running",
        "reason": "requested",
        "timeout": 30,
        "bandwidth_mib": 50,
    }
    assert used(h1) == used(h2) == (1.0, 512.0)
    # Another move, or any other operation, waits for this one.
    with pytest.raises(Conflict, match="busy with a migrate"):
        instance_migrate(actor=STAFF, instance=vm)

    migration_done(vm, h2, InstanceState.RUNNING)
    vm.refresh_from_db()
    assert (vm.state, vm.host, vm.migration_host) == (InstanceState.RUNNING, h2, None)
    assert used(h1) == (0.0, 0.0)
    assert used(h2) == (1.0, 512.0)
    audit = AuditRecord.objects.get(action="instance.migrate")
    assert audit.detail["target"] == "h2"


def test_a_move_that_does_not_happen_gives_the_target_back() -> None:
    tenant = make_tenant("mv2")
    h1, h2 = cluster_host("h1", 1), cluster_host("h2", 2)
    vm = running_on(h1, tenant, "vm")
    instance_migrate(actor=STAFF, instance=vm, target="h2")
    migration_undone(vm, InstanceState.RUNNING, "the target refused it")
    vm.refresh_from_db()
    assert (vm.state, vm.host, vm.migration_host, vm.fault) == (
        InstanceState.RUNNING,
        h1,
        None,
        "the target refused it",
    )
    assert used(h2) == (0.0, 0.0)


def test_a_move_is_refused_with_its_reason(settings: Any) -> None:
    tenant = make_tenant("mv3")
    h1 = cluster_host("h1", 1)
    small = cluster_host("small", 2, ram_mib=256)
    lone = make_host("lone")
    vm = running_on(h1, tenant, "vm")
    cases: list[tuple[dict[str, Any], str, str]] = [
        ({"target": "nowhere"}, "host", "unknown host 'nowhere'"),
        ({"target": "h1"}, "host", "already runs on h1"),
        ({"target": "small"}, "host", "no host can take vm"),
        ({"target": "lone"}, "host", "no host can take vm"),  # a lone host takes no live move
        ({"timeout": 0}, "timeout", "from 1 to 3600"),
        ({"bandwidth_mib": 0}, "bandwidth_mib", "from 1 to 100000"),
    ]
    for kwargs, field, message in cases:
        with pytest.raises(ServiceError, match=message) as caught:
            instance_migrate(actor=STAFF, instance=vm, **kwargs)
        assert caught.value.field == field, kwargs
    stranded = running_on(lone, tenant, "stranded")
    with pytest.raises(Conflict, match="lone host") as caught:
        instance_migrate(actor=STAFF, instance=stranded)
    assert caught.value.rule == "lone"
    stopped = running_on(h1, tenant, "stopped", state=InstanceState.STOPPED)
    settings.NUBIS_SHARED_INSTANCE_STORE = False
    with pytest.raises(Conflict, match="shared instance store"):
        instance_migrate(actor=STAFF, instance=stopped)
    settings.NUBIS_SHARED_INSTANCE_STORE = True
    op = instance_migrate(actor=STAFF, instance=stopped, target="lone")  # cold: any host
    assert op.params["live"] is False
    snapped = running_on(h1, tenant, "snapped")
    Snapshot.objects.create(tenant=tenant, instance=snapped, name="before")
    with pytest.raises(Conflict, match="1 snapshot") as caught:
        instance_migrate(actor=STAFF, instance=snapped)
    assert caught.value.rule == "snapshots"
    building = running_on(h1, tenant, "building", state=InstanceState.BUILDING)
    with pytest.raises(Conflict, match="cannot migrate an instance that is building"):
        instance_migrate(actor=STAFF, instance=building)
    assert small.state == HostState.ENABLED  # (nothing was claimed on it)
    assert used(small) == (0.0, 0.0)


def test_only_staff_who_may_change_hosts_move_instances_through_the_api() -> None:
    tenant = make_tenant("api-mv")
    h1 = cluster_host("h1", 1)
    cluster_host("h2", 2)
    vm = running_on(h1, tenant, "vm")
    url = f"/api/v1/tenants/{tenant.slug}/instances/{vm.uuid}/migrate/"
    client = APIClient()
    owner = add_member(tenant, role=Role.OWNER)
    client.force_authenticate(owner)
    assert client.post(url, {}, format="json").status_code == 403
    client.force_authenticate(make_user("stranger"))
    assert client.post(url, {}, format="json").status_code == 404
    staff = make_user("ops", is_staff=True)
    client.force_authenticate(staff)
    assert client.post(url, {}, format="json").status_code == 403  # no change_host
    staff.user_permissions.set(Permission.objects.filter(codename="change_host"))
    staff = type(staff).objects.get(pk=staff.pk)
    client.force_authenticate(staff)
    response = client.post(url, {"host": "nowhere"}, format="json")
    assert response.status_code == 400, response.content
    assert "host" in response.content.decode()
    response = client.post(url, {"timeout": 0}, format="json")
    assert response.status_code == 400
    assert "timeout" in response.content.decode()
    response = client.post(url, {"host": "h2", "timeout": 20}, format="json")
    assert response.status_code == 202, response.content
    assert response.json()["params"]["target"] == "h2"
    shown = client.get(f"/api/v1/tenants/{tenant.slug}/instances/{vm.uuid}/")
    assert shown.status_code == 404  # staff are not the tenant's members
    client.force_authenticate(owner)
    shown = client.get(f"/api/v1/tenants/{tenant.slug}/instances/{vm.uuid}/").json()
    assert (shown["state"], shown["host"], shown["migrating_to"]) == ("migrating", "h1", "h2")


def test_maintenance_moves_a_few_at_a_time_lists_what_cannot_move_and_can_be_forced(settings: Any) -> None:
    settings.NUBIS_EVACUATE_PARALLEL = 2
    settings.NUBIS_SHARED_INSTANCE_STORE = True
    tenant = make_tenant("ev", instances=10)
    h1 = cluster_host("h1", 1)
    cluster_host("h2", 2)
    vms = [running_on(h1, tenant, f"vm{i}") for i in range(3)]
    broken = running_on(h1, tenant, "broken", state=InstanceState.ERROR)
    host = host_maintenance_set(actor=STAFF, host=h1, on=True)
    assert host.state == HostState.ENTERING_MAINTENANCE
    status = evacuate(host)
    assert len(status["started"]) == 2
    assert status["moving"] == 2
    assert status["blocked"] == [
        {
            "instance": str(broken.uuid),
            "name": "broken",
            "reason": "in error: delete it, or force maintenance",
        }
    ]
    host.refresh_from_db()
    assert host.evacuation["remaining"] == 4
    # A second pass starts nothing more while two are moving.
    assert evacuate(host)["started"] == []
    for vm in vms[:2]:
        vm.refresh_from_db()
        if vm.state == InstanceState.MIGRATING:
            Operation.objects.unscoped().filter(instance=vm).update(state=OperationState.SUCCEEDED)
            migration_done(vm, Host.objects.get(name="h2"), InstanceState.RUNNING)
    assert len(evacuate(host)["started"]) == 1
    # The broken one keeps it entering maintenance, until the operator forces it.
    host.refresh_from_db()
    assert host.state == HostState.ENTERING_MAINTENANCE
    host = host_maintenance_set(actor=STAFF, host=host, on=True, force=True)
    assert host.state == HostState.MAINTENANCE
    assert host.evacuation == {}
    assert host_maintenance_set(actor=STAFF, host=host, on=False).state == HostState.ENABLED
    # An empty host goes straight to maintenance.
    empty = cluster_host("empty", 3)
    assert host_maintenance_set(actor=STAFF, host=empty, on=True).state == HostState.MAINTENANCE


def _watch(seconds_ago: float) -> None:
    """As if the HA check had watched without a break for ``seconds_ago`` seconds."""
    now = timezone.now().timestamp()
    redis_client().hset(ha.WATCH_KEY, mapping={"since": now - seconds_ago, "last": now})


@pytest.fixture
def ha_hosts(settings: Any) -> tuple[Host, Host, Host]:
    settings.NUBIS_HA_GRACE = 30
    redis_client().delete(ha.WATCH_KEY)
    old = timezone.now() - timedelta(seconds=60)
    return cluster_host("h1", 1, heartbeat_at=old), cluster_host("h2", 2), cluster_host("h3", 3)


def test_a_silent_host_is_fenced_and_its_instances_restart_elsewhere(
    ha_hosts: tuple[Host, Host, Host],
) -> None:
    h1, h2, h3 = ha_hosts
    tenant = make_tenant("ha", instances=10)
    low = running_on(h1, tenant, "low", ha=True, priority=10)
    high = running_on(h1, tenant, "high", ha=True, priority=30)
    plain = running_on(h1, tenant, "plain", ha=False)
    lost_op = Operation.objects.create(tenant=tenant, instance=plain, kind=OperationKind.REBOOT)
    lone = make_host("lone", heartbeat_at=timezone.now() - timedelta(hours=1))

    # The check has not watched for a whole grace period yet (it just started): nobody is fenced.
    assert ha.ha_check()["fenced"] == []
    _watch(40)
    done = ha.ha_check()
    assert done["fenced"] == ["h1"]
    assert done["restarted"] == ["high", "low"]  # most important first
    h1.refresh_from_db()
    assert h1.state == HostState.DOWN
    assert h1.fenced_at is not None
    assert host_is_fenced("h1")
    lone.refresh_from_db()
    assert lone.fenced_at is None  # a lone host has nowhere to restart anything
    for instance in (low, high):
        instance.refresh_from_db()
        assert instance.state == InstanceState.STARTING
        assert instance.host in (h2, h3)
        op = Operation.objects.unscoped().get(instance=instance, kind=OperationKind.HA_RESTART)
        assert op.params["failed_host"] == "h1"
        assert op.state == OperationState.PENDING
    plain.refresh_from_db()
    assert plain.state == InstanceState.STOPPED
    assert "h1 failed" in plain.fault
    assert plain.host == h1
    lost_op.refresh_from_db()
    assert lost_op.state == OperationState.FAILED
    assert {r.action for r in AuditRecord.objects.all()} >= {
        "host.fence",
        "instance.ha_restart",
        "instance.host_failed",
    }
    # Its heartbeat alone does not bring it back: its agent rejoins once it has cleaned up.
    assert host_heartbeat("h1")
    h1.refresh_from_db()
    assert h1.state == HostState.DOWN
    assert host_unfence("h1")
    h1.refresh_from_db()
    assert (h1.state, h1.fenced_at) == (HostState.ENABLED, None)


def test_no_host_is_fenced_when_the_control_side_itself_was_cut_off(
    ha_hosts: tuple[Host, Host, Host],
) -> None:
    _h1, h2, h3 = ha_hosts
    # Every host silent at once (the database, or the control side's network, was out): nobody is
    # declared dead for it.
    Host.objects.filter(pk__in=[h2.pk, h3.pk]).update(heartbeat_at=timezone.now() - timedelta(seconds=60))
    _watch(40)
    assert ha.ha_check()["fenced"] == []
    # A gap in the watch (no pass for a while): the grace starts again from now.
    Host.objects.filter(pk__in=[h2.pk, h3.pk]).update(heartbeat_at=timezone.now())
    now = timezone.now().timestamp()
    redis_client().hset(ha.WATCH_KEY, mapping={"since": now - 120, "last": now - 60})
    assert ha.ha_check()["fenced"] == []
    assert Host.objects.filter(fenced_at__isnull=False).count() == 0


def test_an_ha_instance_no_host_has_room_for_waits_stopped_and_is_tried_again(
    ha_hosts: tuple[Host, Host, Host],
) -> None:
    h1, h2, h3 = ha_hosts
    Host.objects.filter(pk__in=[h2.pk, h3.pk]).update(ram_mib=256)
    tenant = make_tenant("ha2")
    big = running_on(h1, tenant, "big", ha=True)
    _watch(40)
    assert ha.ha_check()["waiting"] == ["big"]
    big.refresh_from_db()
    assert big.state == InstanceState.STOPPED
    assert big.fault.startswith(ha.NO_ROOM)
    Host.objects.filter(pk=h2.pk).update(ram_mib=8192)
    assert ha.ha_check()["restarted"] == ["big"]
    big.refresh_from_db()
    assert (big.state, big.host) == (InstanceState.STARTING, h2)


def test_a_vm_that_was_moving_to_a_live_host_is_restarted_there(ha_hosts: tuple[Host, Host, Host]) -> None:
    h1, h2, _h3 = ha_hosts
    tenant = make_tenant("ha3")
    vm = running_on(h1, tenant, "vm", ha=True, kind=InstanceKind.VM)
    Instance.objects.unscoped().filter(pk=vm.pk).update(state=InstanceState.MIGRATING, migration_host=h2)
    _watch(40)
    assert ha.ha_check()["restarted"] == ["vm"]
    vm.refresh_from_db()
    assert (vm.host, vm.migration_host, vm.state) == (h2, None, InstanceState.STARTING)
    assert used(h2) == (1.0, 512.0)
