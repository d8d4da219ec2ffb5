"""Dynamic memory allocation with real guests and containers: an idle VM's balloon shrinks toward
its minimum, a busy container's memory limit grows and comes back, all within their bounds.

(The planner and the adjuster against the database: tests/scheduler/test_allocation.py.)
"""

from __future__ import annotations

import json
import math
from datetime import datetime
from pathlib import Path

import pytest
from django.contrib.auth.models import User
from django.utils import timezone
from rest_framework.test import APIClient

from compute.models import (
    Allocation,
    CpuMode,
    Flavor,
    Host,
    Image,
    Instance,
    InstanceKind,
    InstanceState,
    Operation,
    OperationState,
    SampleResolution,
    UsageSample,
)
from compute.services.allocation import allocation_adjust_host
from compute.services.instances import instance_delete
from compute.services.memory import memory_apply
from compute.services.resize import instance_set_memory
from compute.tasks import local_driver
from scheduler.allocation import DEFAULT_POLICY, usage_window
from security.audit import Actor
from tenants.models import Role, Tenant
from tests.compute.conftest import instance_dir_of, libvirt_conn, wait_for, wait_marker, wait_operation
from tests.factories import add_member, make_tenant

MIB = 1 << 20
CGROUP = Path("/sys/fs/cgroup")


# -- real guests and containers ----------------------------------------------------------------
def _window_peak(instance: Instance, since: datetime | None = None) -> tuple[int, float]:
    """(samples, peak MiB) of the instance in the adjuster's window (or since ``since``)."""
    start = since or timezone.now() - usage_window()
    rows = list(
        UsageSample.objects.filter(
            instance=instance, resolution=SampleResolution.RAW, at__gte=start
        ).values_list("mem_bytes", flat=True)
    )
    return len(rows), max(rows, default=0) / MIB


def _wait_window_after(instance: Instance, moment: datetime) -> float:
    """Wait until the whole window was sampled after ``moment``; the peak of the window (MiB)."""
    window = usage_window().total_seconds()
    wait_for(
        lambda: (
            (timezone.now() - moment).total_seconds() > window + 0.5
            and _window_peak(instance)[0] >= DEFAULT_POLICY.min_samples
        ),
        "a window of samples after the change",
        timeout=window + 30,
    )
    return _window_peak(instance)[1]


@pytest.fixture
def member(transactional_db: None) -> tuple[Tenant, User, APIClient]:
    tenant = make_tenant("dyn")
    user = add_member(tenant, role=Role.MEMBER)
    client = APIClient()
    client.force_authenticate(user)
    return tenant, user, client


def _create(client: APIClient, tenant: Tenant, body: dict) -> Instance:
    response = client.post(f"/api/v1/tenants/{tenant.slug}/instances/", body, format="json")
    assert response.status_code == 202, response.content
    op = wait_operation(Operation.objects.for_tenant(tenant).get(uuid=response.json()["id"]))
    instance = Instance.objects.for_tenant(tenant).get(pk=op.instance_id)
    assert op.state == OperationState.SUCCEEDED, (op.error, instance.fault)
    return instance


def _delete(tenant: Tenant, user: User, instance: Instance) -> None:
    instance.refresh_from_db()
    if instance.state not in (InstanceState.DELETED, InstanceState.DELETING):
        actor = Actor(user.username, "api", user.pk)
        op = wait_operation(instance_delete(actor=actor, instance=instance))
        assert op.state == OperationState.SUCCEEDED, op.error


def _balloon_kib(instance: Instance) -> tuple[int, int]:
    """(balloon actual from virDomainMemoryStats, current memory from virDomainGetInfo), KiB."""
    conn = libvirt_conn()
    try:
        dom = conn.lookupByName(instance.domain_name)
        return int(dom.memoryStats()["actual"]), int(dom.info()[2])
    finally:
        conn.close()


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_idle_vm_balloon_shrinks_toward_its_minimum(
    host: Host, image: Image, member, settings, no_leftovers
) -> None:
    # As the agent runs here: 1 s samples; the adjuster's window is the last 5 s of them.
    settings.NUBIS_METRICS_SECONDS, settings.NUBIS_ALLOCATION_SECONDS = 1, 5
    tenant, user, client = member
    Flavor.objects.create(
        name="t.dyn", vcpus=1, ram_mib=256, min_ram_mib=96, disk_gib=1,
        cpu_mode=CpuMode.EMULATED, allocation=Allocation.DYNAMIC,
    )  # fmt: skip
    instance = _create(
        client, tenant, {"name": "idle-vm", "flavor": "t.dyn", "image": image.name, "network": None}
    )
    try:
        assert (instance.allocation, instance.current_ram_mib) == (Allocation.DYNAMIC, 96)
        wait_marker(instance, "NUBIS-READY")
        # Give it all of its maximum first, as a busy past would have.
        actor = Actor(user.username, "api", user.pk)
        op = wait_operation(instance_set_memory(actor=actor, instance=instance, memory_mib=256))
        assert op.state == OperationState.SUCCEEDED, op.error
        wait_for(lambda: _balloon_kib(instance)[0] == 256 * 1024, "the balloon at 256 MiB")
        peak = _wait_window_after(instance, timezone.now())
        assert 0 < peak < DEFAULT_POLICY.low_water * 256, f"the guest is not idle: {peak:.0f} MiB in use"

        moved = allocation_adjust_host(host)["ram"]
        old, new = moved[str(instance.uuid)]
        assert old == 256
        assert 96 <= new < 256
        instance.refresh_from_db()
        assert instance.current_ram_mib == new
        # The agent applied it: libvirt's balloon came down to the new grant, not below the minimum.
        wait_for(lambda: _balloon_kib(instance) == (new * 1024, new * 1024), f"the balloon at {new} MiB")
        assert _balloon_kib(instance)[0] >= 96 * 1024
        assert memory_apply(host, local_driver()) == {str(instance.uuid): "unchanged"}  # twice: no-op

        # Same idle guest at its new size: the next passes leave it there (inside the band).
        _wait_window_after(instance, timezone.now())
        assert str(instance.uuid) not in allocation_adjust_host(host).get("ram", {})
        instance.refresh_from_db()
        assert (instance.state, instance.current_ram_mib) == (InstanceState.RUNNING, new)
        assert "NUBIS-READY" in wait_marker(instance, "NUBIS-MEM")  # the guest saw MemTotal change
    finally:
        _delete(tenant, user, instance)


def _limit_mib(instance: Instance) -> int:
    """The container's memory limit in its cgroup v1 memory controller, as the kernel has it."""
    path = CGROUP / "memory" / "nubis" / instance.domain_name / "memory.limit_in_bytes"
    return int(path.read_text()) // MIB


def _exec(client: APIClient, tenant: Tenant, instance: Instance, script: str) -> None:
    response = client.post(
        f"/api/v1/tenants/{tenant.slug}/instances/{instance.uuid}/exec/",
        {"argv": ["sh", "-c", script], "timeout": 30},
        format="json",
    )
    assert response.status_code == 200, response.content
    assert response.json()["exit_code"] == 0, response.json()


def _grows(on: Host, instance: Instance, was: int) -> int:
    """The adjuster's pass over a container under pressure: its new limit, applied. (On a loaded
    machine a sample may land late and leave the window short for a pass, which then rightly moves
    no memory, or only CPU: its next pass moves it.)"""
    moved = wait_for(lambda: allocation_adjust_host(on).get("ram"), "the adjuster to grow it", timeout=20)
    assert isinstance(moved, dict)
    old, new = moved[str(instance.uuid)]
    assert old == was
    assert was < new <= instance.ram_mib
    wait_for(lambda: _limit_mib(instance) == new, f"the memory limit at {new} MiB", timeout=30)
    return int(new)


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_busy_container_limit_grows_and_comes_back(
    host: Host, rootfs_image: Image, member, settings, no_leftovers
) -> None:
    settings.NUBIS_METRICS_SECONDS, settings.NUBIS_ALLOCATION_SECONDS = 1, 4
    tenant, user, client = member
    Flavor.objects.create(
        name="c.dyn", vcpus=1, ram_mib=128, min_ram_mib=32, disk_gib=1, pids_max=64,
        allocation=Allocation.DYNAMIC,
    )  # fmt: skip
    body = {"flavor": "c.dyn", "image": rootfs_image.name, "kind": "container", "network": None}
    created: list[Instance] = []
    try:
        busy = _create(client, tenant, body | {"name": "busy-box"})
        created.append(busy)
        calm = _create(client, tenant, body | {"name": "calm-box"})
        created.append(calm)
        assert busy.kind == InstanceKind.CONTAINER
        assert busy.current_ram_mib == _limit_mib(busy) == calm.current_ram_mib == _limit_mib(calm) == 32
        high = DEFAULT_POLICY.high_water
        # Demand: files in its tmpfs /tmp, charged to its memory cgroup, to above the high-water mark.
        fill = math.ceil(high * 32) + 1
        _exec(client, tenant, busy, f"head -c {fill * MIB} /dev/zero > /tmp/a")
        peak = _wait_window_after(busy, timezone.now())
        assert peak > high * 32, f"only {peak:.1f} MiB measured after writing {fill} MiB"
        first = _grows(host, busy, 32)
        bundle = json.loads((instance_dir_of(busy) / "config.json").read_text())
        assert bundle["linux"]["resources"]["memory"]["limit"] == first * MIB  # kept for a restart

        # More demand: it grows again, still within its maximum; the idle one stays at its minimum.
        more = math.ceil(high * first) - fill + 2
        _exec(client, tenant, busy, f"head -c {more * MIB} /dev/zero > /tmp/b")
        peak = _wait_window_after(busy, timezone.now())
        assert peak > high * first, f"only {peak:.1f} MiB measured with {fill + more} MiB written"
        second = _grows(host, busy, first)
        assert _limit_mib(calm) == 32
        calm.refresh_from_db()
        assert calm.current_ram_mib == 32

        # A move that cannot happen (below what its tmpfs holds) fails alone: the other is applied,
        # and the failed one keeps running with the limit it had.
        Instance.objects.unscoped().filter(pk=busy.pk).update(current_ram_mib=8)
        Instance.objects.unscoped().filter(pk=calm.pk).update(current_ram_mib=40)
        applied = memory_apply(host, local_driver())
        assert applied[str(busy.uuid)].startswith("failed: "), applied
        assert applied[str(calm.uuid)] == "32 -> 40 MiB"
        assert (_limit_mib(busy), _limit_mib(calm)) == (second, 40)
        Instance.objects.unscoped().filter(pk=busy.pk).update(current_ram_mib=second)
        Instance.objects.unscoped().filter(pk=calm.pk).update(current_ram_mib=32)
        applied = memory_apply(host, local_driver())
        assert applied == {str(busy.uuid): "unchanged", str(calm.uuid): "40 -> 32 MiB"}
        busy.refresh_from_db()
        assert busy.state == InstanceState.RUNNING

        # Demand gone: the limit comes back down to its minimum, never below.
        _exec(client, tenant, busy, "rm -f /tmp/a /tmp/b")
        _wait_window_after(busy, timezone.now())
        # The adjuster reads the window again when it runs: on a loaded machine a sample may land
        # late and leave it short of min_samples for that pass, when it rightly moves nothing.
        # Its next passes must then move exactly this.
        # (Its CPU may move in the same passes: only its memory is looked at here.)
        moved = wait_for(
            lambda: allocation_adjust_host(host).get("ram"), "the adjuster to shrink the busy one", timeout=20
        )
        assert moved == {str(busy.uuid): [second, 32]}
        wait_for(lambda: _limit_mib(busy) == 32, "the memory limit back at 32 MiB", timeout=30)
        assert set(memory_apply(host, local_driver()).values()) == {"unchanged"}  # applying twice: no-op
        for instance in (busy, calm):
            instance.refresh_from_db()
            assert (instance.state, instance.current_ram_mib, instance.oom_kills) == (
                InstanceState.RUNNING,
                32,
                0,
            )
    finally:
        for instance in created:
            _delete(tenant, user, instance)
