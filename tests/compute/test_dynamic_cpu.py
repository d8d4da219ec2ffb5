"""Dynamic CPU allocation with real containers and guests: a busy container's CFS quota grows pass by
pass up to its flavor's CPU and an idle one's comes down to its floor, as the kernel's cgroup shows;
a busy VM's CPU shares rise above an idle one's, as libvirt shows them live.

(The planner and the adjuster against the database: tests/scheduler/test_allocation.py.)
"""

from __future__ import annotations

import json
import time
from datetime import datetime
from itertools import pairwise
from pathlib import Path

import libvirt
import pytest
from django.conf import settings as django_settings
from django.contrib.auth.models import User
from django.utils import timezone
from rest_framework.test import APIClient

from compute.drivers.base import DriverError, GuestSpec
from compute.drivers.sim import SimHost, SimulatorDriver
from compute.models import (
    Allocation,
    CpuMode,
    Flavor,
    Host,
    Image,
    Instance,
    InstanceState,
    OperationState,
    SampleResolution,
    UsageSample,
)
from compute.services.allocation import allocation_adjust_host
from compute.services.instances import instance_action
from compute.services.memory import cpu_apply
from compute.tasks import local_driver
from scheduler.allocation import CPU_POLICY, usage_window
from security.audit import Actor
from security.models import AuditRecord
from tenants.models import Tenant
from tests.compute.conftest import instance_dir_of, libvirt_conn, wait_for, wait_marker, wait_operation
from tests.compute.test_dynamic_allocation import _create, _delete, _exec, member

__all__ = ["member"]  # the fixture, shared with the memory tests

CGROUP = Path("/sys/fs/cgroup")
V2 = (CGROUP / "cgroup.controllers").exists()
CEILING = 40  # the busy container's flavor's CPU cap, in % of one CPU


def _window_cpu(instance: Instance) -> tuple[int, float]:
    """(samples, peak % of one CPU) of the instance in the adjuster's window."""
    rows = list(
        UsageSample.objects.filter(
            instance=instance, resolution=SampleResolution.RAW, at__gte=timezone.now() - usage_window()
        ).values_list("cpu_pct", flat=True)
    )
    return len(rows), max(rows, default=0.0)


def _wait_window_after(moment: datetime, *instances: Instance) -> None:
    """Wait until the adjuster's whole window was sampled after ``moment``, for every instance."""
    window = usage_window().total_seconds()
    wait_for(
        lambda: (
            (timezone.now() - moment).total_seconds() > window + 0.5
            and all(_window_cpu(i)[0] >= CPU_POLICY.min_samples for i in instances)
        ),
        "a window of samples after the change",
        timeout=window + 30,
    )


def _quota_pct(instance: Instance) -> int | None:
    """The container's CFS quota as the kernel holds it, in % of one CPU (None: no quota)."""
    directory = CGROUP / ("" if V2 else "cpu") / django_settings.NUBIS_CGROUP_PARENT / instance.domain_name
    if V2:
        quota, period = (directory / "cpu.max").read_text().split()
    else:
        quota = (directory / "cpu.cfs_quota_us").read_text().strip()
        period = (directory / "cpu.cfs_period_us").read_text().strip()
    return None if quota in ("max", "-1") else int(quota) * 100 // int(period)


def _last_adjust(instance: Instance) -> dict[str, float]:
    """The detail of the instance's latest CPU adjustment in the audit trail (from, to, usage)."""
    records = AuditRecord.objects.filter(action="instance.cpu.adjust", target_id=str(instance.pk))
    last = records.order_by("seq").last()
    assert last is not None
    return dict(last.detail)


def _cpu_moves(on: Host) -> dict[str, list[int]]:
    """One adjuster pass; the CPU grants it moved."""
    return allocation_adjust_host(on).get("cpu", {})


def _moves_until(on: Host, *instances: Instance, timeout: float = 20) -> dict[str, list[int]]:
    """Adjuster passes until each of ``instances`` had its CPU grant moved; all the CPU moves seen.

    On a loaded machine a sample may land late and leave an instance short of min_samples for a
    pass, which then rightly leaves it alone: the next pass moves it.
    """
    wanted = {str(i.uuid) for i in instances}
    seen: dict[str, list[int]] = {}

    def moved_all() -> bool:
        seen.update(_cpu_moves(on))
        return wanted <= set(seen)

    wait_for(moved_all, f"the adjuster to move {sorted(i.name for i in instances)}", timeout=timeout)
    return seen


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_busy_container_quota_climbs_to_its_ceiling_and_idle_ones_come_down(
    host: Host, rootfs_image: Image, member: tuple[Tenant, User, APIClient], settings, no_leftovers
) -> None:
    # As the agent runs here: 1 s samples; the adjuster's window is the last 3 s of them.
    settings.NUBIS_METRICS_SECONDS, settings.NUBIS_ALLOCATION_SECONDS = 1, 3
    tenant, user, client = member
    # No min_cpu_pct: the floor is the default 10% per vCPU. The ceiling is the flavor's cap, 40%: low
    # enough for a busy container to reach on a loaded 2-core machine (it must use 85% of its quota).
    Flavor.objects.create(
        name="c.cpu", vcpus=1, ram_mib=64, min_ram_mib=32, disk_gib=1, pids_max=64, cpu_limit_pct=CEILING,
        allocation=Allocation.DYNAMIC,
    )  # fmt: skip
    body = {"flavor": "c.cpu", "image": rootfs_image.name, "kind": "container", "network": None}
    created: list[Instance] = []
    try:
        busy = _create(client, tenant, body | {"name": "busy-cpu"})
        created.append(busy)
        calm = _create(client, tenant, body | {"name": "calm-cpu"})
        created.append(calm)
        # A new dynamic container starts with all of its CPU.
        assert (busy.current_cpu_pct, busy.cpu_bounds_pct) == (None, (10, CEILING))
        assert _quota_pct(busy) == _quota_pct(calm) == CEILING
        api = client.get(f"/api/v1/tenants/{tenant.slug}/instances/{busy.uuid}/").json()
        assert api["current_cpu_pct"] == CEILING

        # Both idle: one pass brings both down to their floor, and the agent sets the quotas.
        _wait_window_after(timezone.now(), busy, calm)
        moved = _moves_until(host, busy, calm)
        assert moved == {str(busy.uuid): [CEILING, 10], str(calm.uuid): [CEILING, 10]}
        wait_for(lambda: _quota_pct(busy) == _quota_pct(calm) == 10, "the quotas at 10%", timeout=30)
        audited = AuditRecord.objects.filter(action="instance.cpu.adjust", target_id=str(busy.pk))
        assert [(r.detail["from_pct"], r.detail["to_pct"]) for r in audited] == [(CEILING, 10)]
        api = client.get(f"/api/v1/tenants/{tenant.slug}/instances/{busy.uuid}/").json()
        assert api["current_cpu_pct"] == 10
        assert set(cpu_apply(host, local_driver()).values()) == {"unchanged"}  # applying twice: no-op

        # Demand: a busy loop. Held to its quota, it reads about all of its grant, above the
        # high-water mark, so a pass grows it by a step at least, until the flavor's 40%. (Should
        # the machine's other work starve it below half its quota for a window, the adjuster rightly
        # takes back what it did not use: every move is checked against the usage it was made on.)
        _exec(client, tenant, busy, "setsid sh -c 'while :; do :; done' </dev/null >/dev/null 2>&1 &")
        grants = [10]
        since = timezone.now()
        deadline = time.monotonic() + 240
        while grants[-1] < CEILING:
            assert time.monotonic() < deadline, f"the quota went {grants}, never up to {CEILING}%"
            _wait_window_after(since, busy)
            peak = _window_cpu(busy)[1]  # the kernel holds it to its quota (a period's slack aside)
            assert peak <= grants[-1] * 1.1 + 2, f"{peak:.1f}% used with a quota of {grants[-1]}%"
            moved = _cpu_moves(host)
            assert str(calm.uuid) not in moved  # still idle: left at its floor
            if str(busy.uuid) not in moved:  # a late sample left the window short: next pass
                continue
            old, new = moved[str(busy.uuid)]
            record = _last_adjust(busy)
            assert (old, record["from_pct"], record["to_pct"]) == (grants[-1], old, new)
            usage = record["usage_pct"]
            # (The record's usage is rounded to 0.1%.)
            if new > old:  # pressing on its quota: at least a step more, never past its ceiling
                assert usage >= CPU_POLICY.high_water * old - 0.05
                assert min(old + CPU_POLICY.step(old), CEILING) <= new <= CEILING
            else:  # starved for a while: down to what it used, never below its floor
                assert usage <= CPU_POLICY.low_water * old + 0.05
                assert max(10, usage / CPU_POLICY.target - 1) <= new <= max(10, usage / CPU_POLICY.target + 1)
            grants.append(new)
            wait_for(lambda: _quota_pct(busy) == grants[-1], f"the quota at {new}%", timeout=30)
            since = timezone.now()
        rises = sum(b > a for a, b in pairwise(grants))
        assert rises >= 3, grants  # it climbed in steps (about x1.43 a pass), not in one leap
        assert _quota_pct(calm) == 10
        # The kernel holds it to its grant: at its ceiling it still gets no more than 40% of a CPU.
        _wait_window_after(timezone.now(), busy)
        assert _window_cpu(busy)[1] <= CEILING * 1.1 + 2
        busy.refresh_from_db()
        assert busy.current_cpu_pct == CEILING
        bundle = json.loads((instance_dir_of(busy) / "config.json").read_text())
        assert bundle["linux"]["resources"]["cpu"]["quota"] == CEILING * 1000  # kept for a restart

        # The calm one restarted comes back with its grant (10%), not its flavor's 40%.
        actor = Actor(user.username, "api", user.pk)
        op = wait_operation(instance_action(actor=actor, instance=calm, kind="reboot"), timeout=60)
        assert op.state == OperationState.SUCCEEDED, op.error
        assert _quota_pct(calm) == 10

        # The busy one restarted: its loop is gone, and its quota comes back down to its floor.
        op = wait_operation(instance_action(actor=actor, instance=busy, kind="reboot"), timeout=60)
        assert op.state == OperationState.SUCCEEDED, op.error
        assert _quota_pct(busy) == CEILING  # restarted with its grant
        _wait_window_after(timezone.now(), busy, calm)
        assert _moves_until(host, busy) == {str(busy.uuid): [CEILING, 10]}
        wait_for(lambda: _quota_pct(busy) == 10, "the quota back at 10%", timeout=30)
        for instance in (busy, calm):
            instance.refresh_from_db()
            assert (instance.state, instance.current_cpu_pct) == (InstanceState.RUNNING, 10)
    finally:
        for instance in created:
            _delete(tenant, user, instance)


def _shares(instance: Instance, flags: int = libvirt.VIR_DOMAIN_AFFECT_LIVE) -> int:
    """The domain's cpu_shares as libvirt reads them (live, or its definition's)."""
    conn = libvirt_conn()
    try:
        params = conn.lookupByName(instance.domain_name).schedulerParametersFlags(flags)
        return int(params["cpu_shares"])
    finally:
        conn.close()


def _expected_shares(pct: int) -> int:
    """cgroup v1 gives one CPU 1024 shares (as runc gives a container per vCPU); v2 a weight of 100."""
    return pct if V2 else round(pct * 1024 / 100)


def _console_send(instance: Instance, text: str) -> None:
    """Type ``text`` on the guest's serial console (a shell: the test image's nubis.console=1)."""
    conn = libvirt_conn()
    try:
        stream = conn.newStream(0)
        conn.lookupByName(instance.domain_name).openConsole(None, stream, libvirt.VIR_DOMAIN_CONSOLE_FORCE)
        stream.send(text.encode())
        time.sleep(2)  # let the pty take it before the stream goes
        stream.abort()
    finally:
        conn.close()


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_busy_vm_gets_more_cpu_shares_than_an_idle_one(
    host: Host, console_image: Image, member: tuple[Tenant, User, APIClient], settings, no_leftovers
) -> None:
    settings.NUBIS_METRICS_SECONDS, settings.NUBIS_ALLOCATION_SECONDS = 1, 3
    tenant, user, client = member
    Flavor.objects.create(
        name="t.cpu", vcpus=1, ram_mib=128, min_ram_mib=96, disk_gib=1, min_cpu_pct=20,
        cpu_mode=CpuMode.EMULATED, allocation=Allocation.DYNAMIC,
    )  # fmt: skip
    body = {"flavor": "t.cpu", "image": console_image.name, "network": None}
    created: list[Instance] = []
    try:
        busy = _create(client, tenant, body | {"name": "busy-vm"})
        created.append(busy)
        calm = _create(client, tenant, body | {"name": "calm-vm"})
        created.append(calm)
        for vm in (busy, calm):
            wait_marker(vm, "NUBIS-READY")
        assert busy.cpu_bounds_pct == (20, 100)
        # Idle guests (once a whole window reads under target x floor: a TCG guest that has just
        # booted, on a loaded machine, may take a while): one pass takes both down to their floor;
        # libvirt shows the shares live and in the definitions (a restart keeps them).
        _wait_window_after(timezone.now(), busy, calm)
        quiet = CPU_POLICY.target * 20
        wait_for(lambda: all(_window_cpu(vm)[1] < quiet for vm in (busy, calm)), "idle guests", timeout=90)
        moved = _moves_until(host, busy, calm)
        assert moved == {str(busy.uuid): [100, 20], str(calm.uuid): [100, 20]}
        low = _expected_shares(20)
        wait_for(lambda: _shares(busy) == _shares(calm) == low, f"the shares at {low}", timeout=30)
        assert _shares(busy, libvirt.VIR_DOMAIN_AFFECT_CONFIG) == low
        assert set(cpu_apply(host, local_driver()).values()) == {"unchanged"}  # applying twice: no-op

        # One guest busy (a loop typed on its console): its grant grows toward its vCPU (all of it
        # when it gets a whole CPU of the host, usage/target when the machine's other work leaves it
        # less), its shares with it; the idle one keeps its low weight.
        _console_send(busy, "\r\nwhile :; do :; done &\r\n")
        pressing = CPU_POLICY.high_water * 20 + 5  # well above the high-water mark of its grant
        wait_for(lambda: _window_cpu(busy)[1] > pressing, "the busy guest to burn CPU", timeout=90)
        _wait_window_after(timezone.now(), busy, calm)
        old, new = _moves_until(host, busy)[str(busy.uuid)]
        usage = _last_adjust(busy)["usage_pct"]  # what the adjuster saw: a CPU, or what was left of one
        assert usage >= CPU_POLICY.high_water * 20 - 0.05  # (rounded to 0.1%)
        assert old == 20 < min(100, usage / CPU_POLICY.target - 1) <= new <= 100
        for vm in (busy, calm):
            vm.refresh_from_db()
            assert vm.state == InstanceState.RUNNING
        assert busy.current_cpu_pct == new
        # The idle one stays lower (at its floor, unless the loaded machine's noise lifted it a step).
        assert calm.cpu_grant_pct < new
        high, low = _expected_shares(new), _expected_shares(calm.cpu_grant_pct)
        wait_for(lambda: (_shares(busy), _shares(calm)) == (high, low), f"the shares at {high}, {low}", 30)
        assert _shares(busy, libvirt.VIR_DOMAIN_AFFECT_CONFIG) == high
        # Under contention the busy guest gets the larger part of a CPU.
        page = client.get(f"/api/v1/tenants/{tenant.slug}/instances/{busy.uuid}/").json()
        assert page["current_cpu_pct"] == new
    finally:
        for instance in created:
            _delete(tenant, user, instance)


def test_simulator_records_a_cpu_grant() -> None:
    driver = SimulatorDriver(SimHost("sim-cpu", cpus=4, ram_mib=1024))
    spec = GuestSpec(
        name="sim-c", uuid="00000000-0000-0000-0000-000000000001", vcpus=2, ram_mib=256,
        current_ram_mib=256, cpu_mode="emulated", io_model="virtio", balloon=True, disk_path="/sim/d",
        serial_log="/sim/s", network="", vnc_password="x",
    )  # fmt: skip
    driver.define(spec)
    assert driver.cpu_pct("sim-c") is None  # not running
    driver.start("sim-c")
    assert driver.cpu_pct("sim-c") is None  # never set
    driver.set_cpu("sim-c", 30)
    assert driver.cpu_pct("sim-c") == 30
    with pytest.raises(DriverError, match="below 1%"):
        driver.set_cpu("sim-c", 0)
    with pytest.raises(DriverError, match="no domain"):
        driver.set_cpu("sim-gone", 30)
