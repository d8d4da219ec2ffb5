"""Dynamic memory allocation: the planner's policy, the adjuster against the database, and real
guests and containers whose memory follows their demand.

The real-guest tests use fixtures of tests/compute/conftest.py, imported by name: their parameters
"redefine" those imports, which is how pytest finds them.
"""

# ruff: noqa: F811

from __future__ import annotations

import json
import math
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from django.contrib.auth.models import User
from django.utils import timezone
from hypothesis import given
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from rest_framework.test import APIClient

from compute.metrics import Counters, settle_balloon
from compute.models import (
    Allocation,
    CpuMode,
    Flavor,
    Host,
    Image,
    ImageKind,
    Instance,
    InstanceKind,
    InstanceState,
    Operation,
    OperationKind,
    OperationState,
    SampleResolution,
    UsageSample,
)
from compute.services.instances import instance_delete
from compute.services.memory import memory_apply
from compute.services.resize import instance_set_memory
from compute.tasks import local_driver
from scheduler.allocation import (
    DEFAULT_POLICY,
    Demand,
    Policy,
    allocation_adjust_all,
    allocation_adjust_host,
    plan,
)
from security.audit import Actor
from security.models import AuditRecord
from tenants.models import Role, Tenant

# Fixtures of tests/compute/conftest.py (module-level there), imported to be found here.
from tests.compute.conftest import (  # noqa: F401
    agent,
    built_image,
    host,
    image,
    instance_dir_of,
    libvirt_conn,
    no_leftovers,
    rootfs_image,
    wait_for,
    wait_marker,
    wait_operation,
)
from tests.factories import add_member, make_tenant

MIB = 1 << 20
P = DEFAULT_POLICY
CGROUP = Path("/sys/fs/cgroup")


def demand(key: str, grant: int, usage: float, low: int = 64, high: int = 1024) -> Demand:
    return Demand(key=key, min_mib=low, max_mib=high, grant_mib=grant, usage_mib=usage)


def run_passes(free: int, demands: list[Demand], passes: int) -> list[dict[str, int]]:
    """Plan again and again with the same usage, carrying grants and free RAM from pass to pass."""
    history = []
    for _ in range(passes):
        moves = plan(free, demands)
        history.append(moves)
        free -= sum(new - d.grant_mib for d in demands if (new := moves.get(d.key)) is not None)
        demands = [
            Demand(d.key, d.min_mib, d.max_mib, moves.get(d.key, d.grant_mib), d.usage_mib) for d in demands
        ]
    return history


# -- the planner -------------------------------------------------------------------------------
def test_no_change_inside_the_band() -> None:
    grant = 200
    inside = [P.low_water * grant + 0.5, P.target * grant, P.high_water * grant - 0.5]
    assert plan(10_000, [demand(f"i{n}", grant, usage) for n, usage in enumerate(inside)]) == {}


def test_grows_above_high_water_and_shrinks_below_low_water_to_the_target() -> None:
    grant = 200
    busy_usage, idle_usage = P.high_water * grant + 10, P.low_water * grant - 30
    moves = plan(10_000, [demand("busy", grant, busy_usage), demand("idle", grant, idle_usage)])
    assert moves["busy"] == math.ceil(busy_usage / P.target) > grant
    assert moves["idle"] == math.ceil(idle_usage / P.target) < grant
    for key, usage in (("busy", busy_usage), ("idle", idle_usage)):
        assert P.low_water < usage / moves[key] < P.high_water  # landed inside the band


def test_same_usage_again_changes_nothing() -> None:
    demands = [
        demand("busy", 100, 97.0),
        demand("idle", 900, 40.0),
        demand("tiny", 8, 7.9, low=8, high=64),
        demand("edge", 300, 149.0),
    ]
    history = run_passes(10_000, demands, passes=6)
    assert history[0]  # the first pass moves them
    assert all(moves == {} for moves in history[1:]), history


@hsettings(max_examples=300, deadline=None)
@given(
    free=st.integers(min_value=-500, max_value=2000),
    rows=st.lists(
        st.tuples(
            st.integers(min_value=8, max_value=256),  # min
            st.integers(min_value=0, max_value=768),  # max - min
            st.integers(min_value=0, max_value=1024),  # grant (may be out of bounds)
            st.floats(min_value=0, max_value=2048, allow_nan=False),  # usage
        ),
        max_size=8,
    ),
)
def test_bounds_and_host_capacity_hold_and_nothing_flaps(free: int, rows: list) -> None:
    demands = [
        Demand(f"i{n}", low, low + span, grant, usage) for n, (low, span, grant, usage) in enumerate(rows)
    ]
    moves = plan(free, demands)
    by_key = {d.key: d for d in demands}
    grown = sum(new - by_key[k].grant_mib for k, new in moves.items() if new > by_key[k].grant_mib)
    shrunk = sum(by_key[k].grant_mib - new for k, new in moves.items() if new < by_key[k].grant_mib)
    assert grown <= max(free, 0) + shrunk  # never more than the host has free, with what shrank
    for key, new in moves.items():
        d = by_key[key]
        assert new != d.grant_mib
        if new > d.grant_mib:  # a growth never overshoots the max (out-of-bounds grants come back in)
            assert new <= d.max_mib
        else:
            assert new >= d.min_mib
    # With the room they need, a second and third pass over the same usage move nothing.
    history = run_passes(1_000_000, demands, passes=3)
    assert history[1] == history[2] == {}, history


def test_bounds_clamp_the_grant() -> None:
    moves = plan(10_000, [demand("hog", 200, 5000.0, high=512), demand("idle", 400, 0.0, low=96)])
    assert moves == {"hog": 512, "idle": 96}
    # At the bounds already: nothing to do whatever the usage.
    assert plan(10_000, [demand("hog", 512, 5000.0, high=512), demand("idle", 96, 0.0, low=96)]) == {}


def test_host_room_goes_to_the_most_pressed_first() -> None:
    demands = [demand("calm", 100, 86.0), demand("pressed", 100, 99.0), demand("mid", 100, 92.0)]
    want = {d.key: math.ceil(d.usage_mib / P.target) - 100 for d in demands}
    room = want["pressed"] + want["mid"] // 2
    moves = plan(room, demands)
    assert moves["pressed"] == 100 + want["pressed"]  # all it wants
    assert moves["mid"] == 100 + room - want["pressed"]  # what was left
    assert "calm" not in moves  # nothing left for the least pressed
    assert plan(0, demands) == {}  # a full host grows nobody
    assert plan(-50, demands) == {}


def test_what_shrinks_makes_room_in_the_same_pass() -> None:
    demands = [demand("idle", 400, 20.0, low=100), demand("busy", 100, 99.0)]
    moves = plan(0, demands)
    assert moves["idle"] == 100
    assert moves["busy"] == math.ceil(99.0 / P.target)  # grown into what the idle one gave back


def test_minimum_step() -> None:
    # A shrink smaller than a step is not worth making: the floor is 6 MiB below the grant.
    assert P.step(100) > 6
    assert plan(10_000, [demand("near-floor", 100, 10.0, low=94)]) == {}
    assert plan(10_000, [demand("far-from-floor", 100, 10.0, low=64)]) == {"far-from-floor": 64}
    # A growth under pressure smaller than a step is rounded up to one (capped at the max).
    small = demand("small", 16, 15.0, low=8, high=128)
    assert math.ceil(15.0 / P.target) - 16 < P.step(16)
    assert plan(10_000, [small]) == {"small": 16 + P.step(16)}
    assert plan(10_000, [demand("capped", 16, 15.0, low=8, high=20)]) == {"capped": 20}


def test_a_grant_below_its_minimum_is_served_first() -> None:
    moves = plan(50, [demand("pressed", 100, 99.0), demand("starved", 40, 10.0, low=80)])
    assert moves == {"starved": 80, "pressed": 110}


def test_policy_must_keep_its_band_in_order() -> None:
    with pytest.raises(ValueError, match="low_water < target < high_water"):
        plan(0, [], Policy(low_water=0.8, target=0.7, high_water=0.9))


def test_vm_memory_figure_waits_for_a_guest_report_newer_than_a_balloon_move() -> None:
    def reading(balloon_mib: int, free_mib: int, report_at: int) -> Counters:
        return Counters(
            cpu_ns=0, mem_bytes=(balloon_mib - free_mib) * MIB, mem_peak_bytes=None, pids=None,
            blk_read_bytes=0, blk_write_bytes=0, net_rx_bytes=0, net_tx_bytes=0, taken=0.0,
            balloon_kib=balloon_mib * 1024, guest_report_at=report_at,
        )  # fmt: skip

    steady = settle_balloon(None, reading(96, 11, 100), now=101.5)
    assert steady.mem_bytes == 85 * MIB
    # The balloon went to 256 MiB; the guest's last report (second 100) is from before: held.
    moved = settle_balloon(steady, reading(256, 11, 100), now=102.5)
    assert (moved.mem_bytes, moved.balloon_moved_at) == (85 * MIB, 102.5)
    still = settle_balloon(moved, reading(256, 11, 102), now=103.5)
    assert still.mem_bytes == 85 * MIB
    # A report after the move: the figure is live again, and stays so.
    fresh = settle_balloon(still, reading(256, 170, 104), now=104.5)
    assert (fresh.mem_bytes, fresh.balloon_moved_at) == (86 * MIB, None)
    assert settle_balloon(fresh, reading(256, 150, 106), now=106.5).mem_bytes == 106 * MIB


# -- the adjuster against the database ---------------------------------------------------------
def _instance(tenant: Tenant, on: Host, name: str, grant: int, **extra: object) -> Instance:
    flavor, _ = Flavor.objects.get_or_create(
        name="dyn-64-256",
        defaults={
            "vcpus": 1,
            "ram_mib": 256,
            "min_ram_mib": 64,
            "disk_gib": 1,
            "allocation": Allocation.DYNAMIC,
            "cpu_mode": CpuMode.EMULATED,
        },
    )
    image_row, _ = Image.objects.get_or_create(
        name="alloc-image",
        defaults={"kind": ImageKind.KERNEL, "os_name": "t", "disk_path": "/x", "sha256": "0" * 64},
    )
    values: dict[str, object] = {
        "tenant": tenant,
        "name": name,
        "flavor": flavor,
        "image": image_row,
        "host": on,
        "ram_mib": 256,
        "current_ram_mib": grant,
        "allocation": Allocation.DYNAMIC,
        "state": InstanceState.RUNNING,
    }
    values.update(extra)
    return Instance.objects.create(**values)


def _samples(instance: Instance, *mib: float) -> None:
    now = timezone.now()
    UsageSample.objects.bulk_create(
        UsageSample(
            instance=instance,
            resolution=SampleResolution.RAW,
            at=now - timedelta(seconds=n + 1),
            cpu_pct=0.0,
            mem_bytes=int(m * MIB),
        )
        for n, m in enumerate(mib)
    )


@pytest.mark.django_db
def test_adjuster_saves_grants_within_the_host_and_skips_what_it_must(
    django_capture_on_commit_callbacks,
) -> None:
    tenant = make_tenant("alloc")
    box = Host.objects.create(
        name="alloc-h", uri="test:///default", cpus=8, ram_mib=1114, ram_ratio=1.0,
        disk_gib=100, heartbeat_at=timezone.now(),
    )  # fmt: skip
    static = _instance(tenant, box, "static", 600, allocation=Allocation.STATIC, ram_mib=600)
    pressed = _instance(tenant, box, "pressed", 100)
    less = _instance(tenant, box, "less", 100)
    idle = _instance(tenant, box, "idle", 114)
    busy = _instance(tenant, box, "busy", 100)
    unknown = _instance(tenant, box, "unknown", 100)
    _samples(static, 5, 5)
    _samples(pressed, 80, 95)
    _samples(less, 90, 85)
    _samples(idle, 20, 10)
    _samples(busy, 99, 99)
    _samples(unknown, 99)  # one sample is not enough to act on
    Operation.objects.create(tenant=tenant, instance=busy, kind=OperationKind.RESIZE)
    old = UsageSample.objects.create(
        instance=unknown, at=timezone.now() - timedelta(hours=1), cpu_pct=0.0, mem_bytes=99 * MIB
    )
    assert old.resolution == SampleResolution.RAW  # too old to count

    with django_capture_on_commit_callbacks() as callbacks:
        moved = allocation_adjust_host(box)
    # The host was full: the idle one gave back 50 MiB, the most pressed got all it wanted and the
    # next one the rest.
    want = math.ceil(95 / DEFAULT_POLICY.target)
    assert moved == {
        str(idle.uuid): [114, 64],
        str(pressed.uuid): [100, want],
        str(less.uuid): [100, 100 + 50 - (want - 100)],
    }
    for instance in (static, pressed, less, idle, busy, unknown):
        instance.refresh_from_db()
        assert moved.get(str(instance.uuid), [0, instance.current_ram_mib])[1] == instance.current_ram_mib
    held = sum(i.current_ram_mib for i in (pressed, less, idle, busy, unknown)) + static.ram_mib
    assert held == box.ram_mib  # filled to the brim, never beyond
    audited = AuditRecord.objects.filter(action="instance.memory.adjust").order_by("seq")
    assert {r.target_id: (r.detail["from_mib"], r.detail["to_mib"]) for r in audited} == {
        str(i.pk): tuple(moved[str(i.uuid)]) for i in (pressed, less, idle)
    }
    applies = [c for c in callbacks if "allocation_adjust_host" in c.__qualname__]
    assert len(applies) == 1  # the host's agent is asked once to apply them

    # A full host: another pass with the same usage moves nothing (no flapping, no room).
    _samples(pressed, 95, 95)
    _samples(less, 90, 90)
    _samples(idle, 10, 10)
    with django_capture_on_commit_callbacks():
        assert allocation_adjust_host(box) == {}


@pytest.mark.django_db
def test_adjust_all_visits_only_enabled_live_real_hosts(django_capture_on_commit_callbacks) -> None:
    tenant = make_tenant("alloc-all")
    now = timezone.now()
    hosts: dict[str, dict[str, object]] = {
        "live": {},
        "sim": {"simulated": True},
        "off": {"state": "disabled"},
        "stale": {"heartbeat_at": now - timedelta(hours=1)},
    }
    for key, extra in hosts.items():
        values = {"name": f"a-{key}", "uri": "test:///", "ram_mib": 4096, "heartbeat_at": now} | extra
        _samples(_instance(tenant, Host.objects.create(**values), f"i-{key}", 250), 10, 10)
    with django_capture_on_commit_callbacks():
        summary = allocation_adjust_all()
    assert set(summary) == {"a-live"}
    [(_, (old, new))] = summary["a-live"].items()
    assert old == 250 > new >= 64


# -- real guests and containers ----------------------------------------------------------------
def _window_peak(instance: Instance, since: datetime | None = None) -> tuple[int, float]:
    """(samples, peak MiB) of the instance in the adjuster's window (or since ``since``)."""
    from scheduler.allocation import usage_window

    start = since or timezone.now() - usage_window()
    rows = list(
        UsageSample.objects.filter(
            instance=instance, resolution=SampleResolution.RAW, at__gte=start
        ).values_list("mem_bytes", flat=True)
    )
    return len(rows), max(rows, default=0) / MIB


def _wait_window_after(instance: Instance, moment: datetime) -> float:
    """Wait until the whole window was sampled after ``moment``; the peak of the window (MiB)."""
    from scheduler.allocation import usage_window

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

        moved = allocation_adjust_host(host)
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
        assert str(instance.uuid) not in allocation_adjust_host(host)
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
    """One pass of the adjuster over a container under pressure: its new limit, applied."""
    moved = allocation_adjust_host(on)
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
        moved = allocation_adjust_host(host)
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
