"""Dynamic memory allocation: the planner's policy, and the adjuster against the database.

The real guests and containers whose memory follows their demand are in
tests/compute/test_dynamic_allocation.py, beside the compute agent they need.
"""

from __future__ import annotations

import math
import random
from datetime import timedelta

import pytest
from django.core.exceptions import ValidationError
from django.utils import timezone
from hypothesis import given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from compute.drivers.base import Counters
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
    SampleResolution,
    UsageSample,
)
from compute.services.allocation import allocation_adjust_all, allocation_adjust_host
from compute.services.metrics import settle_balloon
from core.queues import TaskSend
from scheduler.allocation import CPU_POLICY, DEFAULT_POLICY, Demand, Policy, plan
from security.models import AuditRecord
from tenants.models import Tenant
from tests.factories import make_tenant

MIB = 1 << 20
P = DEFAULT_POLICY


def demand(key: str, grant: int, usage: float, low: int = 64, high: int = 1024) -> Demand:
    return Demand(key=key, minimum=low, maximum=high, grant=grant, usage=usage)


def run_passes(free: int, demands: list[Demand], passes: int) -> list[dict[str, int]]:
    """Plan again and again with the same usage, carrying grants and free RAM from pass to pass."""
    history = []
    for _ in range(passes):
        moves = plan(free, demands)
        history.append(moves)
        free -= sum(new - d.grant for d in demands if (new := moves.get(d.key)) is not None)
        demands = [Demand(d.key, d.minimum, d.maximum, moves.get(d.key, d.grant), d.usage) for d in demands]
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
    grown = sum(new - by_key[k].grant for k, new in moves.items() if new > by_key[k].grant)
    shrunk = sum(by_key[k].grant - new for k, new in moves.items() if new < by_key[k].grant)
    assert grown <= max(free, 0) + shrunk  # never more than the host has free, with what shrank
    for key, new in moves.items():
        d = by_key[key]
        assert new != d.grant
        if new > d.grant:  # a growth never overshoots the max (out-of-bounds grants come back in)
            assert new <= d.maximum
        else:
            assert new >= d.minimum
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
    want = {d.key: math.ceil(d.usage / P.target) - 100 for d in demands}
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
    assert moved["ram"] == {
        str(idle.uuid): [114, 64],
        str(pressed.uuid): [100, want],
        str(less.uuid): [100, 100 + 50 - (want - 100)],
    }
    for instance in (static, pressed, less, idle, busy, unknown):
        instance.refresh_from_db()
        grant = instance.current_ram_mib
        assert moved["ram"].get(str(instance.uuid), [0, grant])[1] == grant
    held = sum(i.current_ram_mib for i in (pressed, less, idle, busy, unknown)) + static.ram_mib
    assert held == box.ram_mib  # filled to the brim, never beyond
    audited = AuditRecord.objects.filter(action="instance.memory.adjust").order_by("seq")
    assert {r.target_id: (r.detail["from_mib"], r.detail["to_mib"]) for r in audited} == {
        str(i.pk): tuple(moved["ram"][str(i.uuid)]) for i in (pressed, less, idle)
    }
    applies = [c for c in callbacks if isinstance(c, TaskSend) and c.name == "compute.memory_apply"]
    # The host's agent is asked once to apply them, on its own queue.
    assert [(c.queue, c.args) for c in applies] == [(box.queue, (box.name,))]

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
    [(_, (old, new))] = summary["a-live"]["ram"].items()
    assert old == 250 > new >= 64


# -- dynamic CPU: the same planner with the CPU policy -------------------------------------------
C = CPU_POLICY


def throttled(grant: int, need: float) -> float:
    """What a container held to ``grant``% of a CPU by its quota is measured using when it would use
    ``need``: never more than its quota (a sample reads a little under it)."""
    return min(need, grant * 0.99)


def test_cpu_busy_container_climbs_by_steps_to_its_ceiling_and_an_idle_one_drops_to_its_floor() -> None:
    grant, climbed = 10, [10]
    for _ in range(30):
        moves = plan(10_000, [Demand("busy", 10, 200, grant, throttled(grant, 1000.0))], C)
        if not moves:
            break
        assert moves["busy"] >= min(grant + C.step(grant), 200)  # at least a step a pass
        grant = moves["busy"]
        climbed.append(grant)
    assert climbed == [10, 15, 22, 32, 46, 66, 94, 133, 189, 200]  # about x1/target a pass, capped
    # At its ceiling and still busy: nothing moves.
    assert plan(10_000, [Demand("busy", 10, 200, 200, throttled(200, 1000.0))], C) == {}
    # Idle: straight down to its floor (never below), and it stays there.
    assert plan(10_000, [Demand("idle", 10, 200, 200, 0.4)], C) == {"idle": 10}
    assert plan(10_000, [Demand("idle", 10, 200, 10, 0.4)], C) == {}
    # Between the two: down to usage/target.
    assert plan(10_000, [Demand("some", 10, 200, 200, 35.0)], C) == {"some": 50}


def test_cpu_noisy_steady_usage_moves_the_grant_once_and_then_never() -> None:
    rng = random.Random(18)
    for need in (3.0, 30.0, 70.0, 150.0):
        grant, moved = 200, 0
        for _ in range(300):  # usage jitters by +-10% around a steady need, as samples do
            usage = throttled(grant, need * rng.uniform(0.9, 1.1))
            moves = plan(10_000, [Demand("steady", 10, 200, grant, usage)], C)
            if moves:
                grant, moved = moves["steady"], moved + 1
        assert moved <= 1, f"the grant flapped {moved} times for a steady {need}% (ends at {grant}%)"
        # Where it settled: usage/target of some sample, within its bounds.
        lowest, highest = (min(max(math.ceil(need * k / C.target), 10), 200) for k in (0.9, 1.1))
        assert lowest <= grant <= highest, (need, grant)


@hsettings(max_examples=300, deadline=None)
@given(
    spare=st.integers(min_value=0, max_value=300),
    rows=st.lists(
        st.tuples(
            st.integers(min_value=1, max_value=50),  # floor
            st.integers(min_value=0, max_value=350),  # ceiling - floor
            st.floats(min_value=0, max_value=1),  # where the grant sits between them
            st.floats(min_value=0, max_value=800, allow_nan=False),  # what it would use
        ),
        max_size=8,
    ),
)
def test_cpu_quotas_of_a_host_never_add_up_past_its_cpus(spare: int, rows: list) -> None:
    demands = [
        Demand(f"c{n}", low, low + span, low + round(span * at), need)
        for n, (low, span, at, need) in enumerate(rows)
    ]
    needs = {d.key: d.usage for d in demands}
    capacity = sum(d.grant for d in demands) + spare  # CPUs x ratio, with the quotas in it now
    for _ in range(12):  # passes, each measuring what the new quotas let through
        demands = [
            Demand(d.key, d.minimum, d.maximum, d.grant, throttled(d.grant, needs[d.key])) for d in demands
        ]
        free = capacity - sum(d.grant for d in demands)
        moves = plan(free, demands, C)
        for d in demands:
            new = moves.get(d.key, d.grant)
            assert d.minimum <= new <= d.maximum
        demands = [Demand(d.key, d.minimum, d.maximum, moves.get(d.key, d.grant), d.usage) for d in demands]
        assert sum(d.grant for d in demands) <= capacity


def test_flavor_minimum_cpu_must_fit_its_cpu() -> None:
    Flavor(name="ok", vcpus=2, ram_mib=128, min_ram_mib=64, disk_gib=1, min_cpu_pct=200).clean()
    with pytest.raises(ValidationError) as caught:
        Flavor(name="no", vcpus=2, ram_mib=128, disk_gib=1, cpu_limit_pct=50, min_cpu_pct=60).clean()
    assert "min_cpu_pct" in caught.value.message_dict


def _container(tenant: Tenant, on: Host, name: str, cpu: int | None, cap: int, **extra: object) -> Instance:
    flavor, _ = Flavor.objects.get_or_create(
        name=f"c-cpu-{cap}",
        defaults={
            "vcpus": 1, "ram_mib": 256, "min_ram_mib": 64, "disk_gib": 1, "cpu_limit_pct": cap,
            "allocation": Allocation.DYNAMIC,
        },
    )  # fmt: skip
    return _instance(
        tenant, on, name, 100, flavor=flavor, kind=InstanceKind.CONTAINER, current_cpu_pct=cpu, **extra
    )


def _cpu_samples(instance: Instance, *cpu: float) -> None:
    """Samples of ``cpu``% of one CPU, with 70 MiB in use (inside the memory band of a 100 MiB grant)."""
    now = timezone.now()
    UsageSample.objects.bulk_create(
        UsageSample(
            instance=instance,
            resolution=SampleResolution.RAW,
            at=now - timedelta(seconds=n + 1),
            cpu_pct=pct,
            mem_bytes=70 * MIB,
        )
        for n, pct in enumerate(cpu)
    )


@pytest.mark.django_db
def test_adjuster_keeps_container_quotas_within_the_host_cpus(django_capture_on_commit_callbacks) -> None:
    tenant = make_tenant("alloc-cpu")
    # 2 CPUs, no overcommit: 200% of one CPU for the VM's vCPU and the containers' quotas.
    box = Host.objects.create(
        name="cpu-h", uri="test:///default", cpus=2, cpu_ratio=1.0, ram_mib=4096, ram_ratio=1.0,
        disk_gib=100, heartbeat_at=timezone.now(),
    )  # fmt: skip
    vm = _instance(tenant, box, "vm", 100)  # 1 vCPU: holds 100% whatever its shares
    fixed = _container(tenant, box, "fixed", None, 30, allocation=Allocation.STATIC)  # its cap: 30%
    hog = _container(tenant, box, "hog", 30, 100)
    hog2 = _container(tenant, box, "hog2", 20, 100)
    idle = _container(tenant, box, "idle", 20, 100)
    _cpu_samples(vm, 3, 2)
    _cpu_samples(fixed, 30, 30)
    _cpu_samples(hog, 29.5, 29)  # held to its quota: it would use more
    _cpu_samples(hog2, 20, 19.8)
    _cpu_samples(idle, 0.5, 0.2)

    with django_capture_on_commit_callbacks():
        moved = allocation_adjust_host(box)
    # The host was full (100 + 30 + 30 + 20 + 20): the idle one gave back 10%, which went to the
    # most pressed container first (hog2 wanted 29), the rest to the next; the VM's shares came
    # down to its floor without making room (its vCPU still holds the host's CPU).
    assert moved == {
        "cpu": {
            str(vm.uuid): [100, 10],
            str(idle.uuid): [20, 10],
            str(hog2.uuid): [20, 29],
            str(hog.uuid): [30, 31],
        }
    }
    quotas = 0
    for instance in (vm, fixed, hog, hog2, idle):
        instance.refresh_from_db()
        if instance.kind == InstanceKind.CONTAINER:
            quotas += instance.cpu_grant_pct
    assert (fixed.current_cpu_pct, fixed.cpu_grant_pct) == (None, 30)  # static: all of its CPU
    assert vm.current_cpu_pct == 10
    assert quotas + vm.vcpus * 100 == 200  # filled to the host's CPUs, never beyond
    audited = AuditRecord.objects.filter(action="instance.cpu.adjust")
    assert {r.target_id: (r.detail["from_pct"], r.detail["to_pct"]) for r in audited} == {
        str(i.pk): tuple(moved["cpu"][str(i.uuid)]) for i in (vm, idle, hog2, hog)
    }
    assert not AuditRecord.objects.filter(action="instance.memory.adjust").exists()

    # Same demand again: hog still presses on its quota, but the host has no CPU left for it.
    _cpu_samples(vm, 3, 2)
    _cpu_samples(hog, 30.5, 30.6)
    _cpu_samples(hog2, 20, 19.8)
    _cpu_samples(idle, 0.5, 0.2)
    with django_capture_on_commit_callbacks():
        assert allocation_adjust_host(box) == {}
    # With more CPUs (an operator's new ratio: 3 CPUs' worth, the scheduler's whole vCPUs), it grows.
    Host.objects.filter(pk=box.pk).update(cpu_ratio=1.5)
    with django_capture_on_commit_callbacks():
        assert allocation_adjust_host(box) == {"cpu": {str(hog.uuid): [31, 44]}}
