"""The simulator: generated and recorded traces replayed through the engine and the queue policy.

Small clouds only (tens of hosts): the scale figures belong to bench/placement.py.
"""

from __future__ import annotations

import io
import json
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.utils import timezone

from compute.models import (
    Allocation,
    CpuMode,
    Flavor,
    Host,
    HostState,
    Image,
    ImageKind,
    Instance,
    InstanceState,
    ServerGroup,
)
from compute.services.hosts import simulated_hosts_register
from compute.services.placement import instance_place
from scheduler.engine import PACK, SPREAD, Engine, HostRow, HostTable
from scheduler.queueing import QueuePolicy
from scheduler.services import NoValidHost
from scheduler.simulate import (
    BEHIND_THE_QUEUE,
    HELD_FOR_OVERDUE,
    NEVER_FITS,
    PRIORITY_NAMES,
    Arrival,
    Departure,
    Event,
    Instances,
    Report,
    SimState,
    Simulator,
    Trace,
    TraceError,
    generate,
    record,
)
from tenants.models import PriorityClass, Tenant
from tests.factories import make_tenant


def test_generated_cloud_has_its_instances_as_records_within_capacity() -> None:
    trace = generate(hosts=300, instances_per_host=10, seed=5, arrivals=0)
    inst = trace.instances
    assert len(inst) == 3000
    assert len(set(inst.id.tolist())) == 3000
    assert Counter(inst.host.tolist()) == {h.id: 10 for h in trace.hosts}
    # Summed record by record here, independently of Trace.usage.
    held: dict[int, list[int]] = defaultdict(lambda: [0, 0, 0])
    for host, v, r, d in zip(inst.host, inst.vcpus, inst.ram_mib, inst.disk_gib, strict=True):
        held[int(host)][0] += int(v)
        held[int(host)][1] += int(r)
        held[int(host)][2] += int(d)
    table = HostTable(trace.rows())
    for h in trace.hosts:
        i = table.index[h.id]
        assert list(table.used[:, i]) == held[h.id]
        assert (table.used[:, i] <= table.capacity[:, i]).all(), h.name
    dedicated = {h.id: h.dedicated_to for h in trace.hosts if h.dedicated_to}
    assert dedicated  # the mixed cloud has some
    for host, tenant in zip(inst.host.tolist(), inst.tenant.tolist(), strict=True):
        assert dedicated.get(host, tenant) == tenant


def placed_now(state: SimState) -> dict[int, list[float]]:
    """Per host id, what the live instances hold, summed from scratch (not from the table)."""
    held: dict[int, list[float]] = defaultdict(lambda: [0.0, 0.0, 0.0])
    inst = state.trace.instances
    for j in np.flatnonzero(state.inst_live).tolist():
        for r, column in enumerate((inst.vcpus, inst.ram_mib, inst.disk_gib)):
            held[int(inst.host[j])][r] += float(column[j])
    for host_id, a in state.live.values():
        for r, amount in enumerate((a.vcpus, a.ram_mib, a.disk_gib)):
            held[host_id][r] += amount
    return held


@pytest.mark.parametrize("weighers", [SPREAD, PACK], ids=["spread", "pack"])
def test_replay_never_overfills_a_host_and_the_driver_follows(weighers: dict[str, float]) -> None:
    # Twenty small hosts, 800 requests living 600 s on average: the cloud runs full, refuses, queues.
    small = ((16, 65536, 1000),)
    trace = generate(hosts=20, seed=2, arrivals=800, lifetime=600.0, wait_share=0.5, shapes=small)
    seen = []

    def check(state: SimState, event: Event | None) -> None:
        used, capacity = state.table.used, state.table.capacity
        assert (used <= capacity + 1e-9).all(), f"over capacity at t={state.now}"
        assert (used >= -1e-9).all()
        seen.append(state)

    report = Simulator(observer=check).run(trace, engine=Engine(weighers=weighers))
    state = seen[-1]
    assert len(seen) >= len(trace.events)
    assert report.refused_by_filter["capacity"] > 0  # it did run into the capacity limit
    assert report.admitted_from_queue > 0
    assert report.placed == report.placed_at_once + report.admitted_from_queue > 0
    assert report.placed_at_once + report.refused + report.queued == len(trace.arrivals())
    held = placed_now(state)
    for h in trace.hosts:
        i = state.table.index[h.id]
        assert list(state.table.used[:, i]) == pytest.approx(held.get(h.id, [0.0, 0.0, 0.0]))
    # Each simulated host's driver runs exactly the instances the simulator has on it.
    assert state.drivers
    for row, driver in state.drivers.items():
        assert driver.running_memory_mib() == state.table.used[1, row]
        assert len(driver.list_guests("sim-")) == state.count[row]
    assert report.provisioned == report.placed
    assert report.planned_on_real_hosts == 0
    assert report.p99_ms >= report.p50_ms > 0
    assert report.decisions >= len(trace.arrivals())


def small_cloud(hosts: int, vcpus: int = 8, ram_mib: int = 8192) -> list[HostRow]:
    return [
        HostRow(id=i, name=f"h{i}", vcpus=vcpus, ram_mib=ram_mib, disk_gib=100, cpu_ratio=1.0)
        for i in range(1, hosts + 1)
    ]


def no_instances() -> Instances:
    return Instances.of(
        {c: [] for c in ("id", "host", "vcpus", "ram_mib", "disk_gib", "tenant", "priority", "group")}
    )


def test_server_groups_are_respected() -> None:
    events: list[Event] = [
        Arrival(t=float(i), id=i, vcpus=1, ram_mib=512, disk_gib=1, group="web") for i in range(1, 5)
    ]
    events += [Arrival(t=float(i), id=i, vcpus=1, ram_mib=512, disk_gib=1, group="db") for i in range(5, 8)]
    trace = Trace(small_cloud(3), no_instances(), events, groups={"web": "anti-affinity", "db": "affinity"})
    final: list[SimState] = []
    report = Simulator(observer=lambda s, e: final.append(s)).run(trace)
    live = final[-1].live
    assert len({live[i][0] for i in (1, 2, 3)}) == 3
    assert 4 not in live
    assert report.refused_by_filter == {"server_group": 1}  # the fourth web member: no host left
    assert len({live[i][0] for i in (5, 6, 7)}) == 1


def test_anti_affinity_holds_at_every_event_of_a_generated_run() -> None:
    trace = generate(hosts=30, seed=4, arrivals=600, group_share=0.5, lifetime=300.0)
    together = Counter[str]()

    def check(state: SimState, event: Event | None) -> None:
        hosts: dict[str, list[int]] = defaultdict(list)
        for host_id, a in state.live.values():
            if a.group:
                hosts[a.group].append(host_id)
        for group, on in hosts.items():
            policy = trace.groups[group]
            if policy == "anti-affinity":
                assert len(on) == len(set(on)), f"{group} shares a host at t={state.now}"
                together[group] = max(together[group], len(on))
            elif policy == "affinity":
                assert len(set(on)) == 1, f"{group} spread over {set(on)}"

    Simulator(observer=check).run(trace)
    assert max(together.values()) >= 3  # groups really had several members at once


def test_queue_admits_a_low_priority_request_within_max_wait_plus_the_time_room_takes() -> None:
    """One full 8-vCPU host; one instance leaves every 20 s; high-priority requests keep coming.

    The low-priority request must not starve: once overdue (max_wait), the next room is its.
    """
    gap = 20.0
    first = Instances.of(
        {
            "id": list(range(1, 9)), "host": [1] * 8, "vcpus": [1] * 8, "ram_mib": [512] * 8,
            "disk_gib": [1] * 8, "tenant": [1] * 8, "priority": [1] * 8, "group": [-1] * 8,
        }
    )  # fmt: skip
    events: list[Event] = [Departure(t=10.0 + gap * k, id=k + 1) for k in range(8)]
    events.append(Arrival(t=1.0, id=100, vcpus=1, ram_mib=512, disk_gib=1, tenant=2, priority=0, wait=True))
    events += [
        Arrival(t=2.0 + 5 * k, id=200 + k, vcpus=1, ram_mib=512, disk_gib=1, tenant=3, priority=2, wait=True)
        for k in range(32)
    ]
    events.sort(key=lambda e: e.t)
    trace = Trace(small_cloud(1), first, events)

    def admissions(policy: QueuePolicy) -> tuple[list[int], dict[int, float], object]:
        admitted: list[int] = []
        at: dict[int, float] = {}

        def watch(state: SimState, event: Event | None) -> None:
            for iid in state.live:
                if iid not in at:
                    admitted.append(iid)
                    at[iid] = state.now

        report = Simulator(tick=15.0, observer=watch).run(trace, policy=policy)
        return admitted, at, report

    policy = QueuePolicy(aging_seconds=1000.0, max_wait=60.0)
    order, at, report = admissions(policy)
    assert 100 in at
    assert at[100] - 1.0 <= policy.max_wait + gap
    # Priority first while it was not overdue: high requests that came after it went ahead.
    assert order.index(201) < order.index(100)
    assert report.waits["low"]["count"] == 1  # type: ignore[attr-defined]
    assert report.waits["low"]["max_s"] <= policy.max_wait + gap  # type: ignore[attr-defined]
    # Without the overdue rule in reach (max_wait beyond the run) the same stream starves it.
    order, at, report = admissions(QueuePolicy(aging_seconds=1000.0, max_wait=10_000.0))
    assert 100 not in at
    assert report.still_waiting >= 1  # type: ignore[attr-defined]


def one_host_holding(vcpus: int) -> Trace:
    """One 8-vCPU host (no KVM) already running instance 1 of ``vcpus`` vCPUs; no events yet."""
    first = Instances.of(
        {
            "id": [1], "host": [1], "vcpus": [vcpus], "ram_mib": [512], "disk_gib": [1], "tenant": [1],
            "priority": [1], "group": [-1],
        }
    )  # fmt: skip
    return Trace(small_cloud(1), first, [])


def replay(trace: Trace, events: list[Event], policy: QueuePolicy) -> tuple[dict[int, float], Report]:
    """Replay ``events`` on ``trace``; returns when each arrival was placed, and the report."""
    trace.events = sorted(events, key=lambda e: e.t)
    at: dict[int, float] = {}

    def watch(state: SimState, event: Event | None) -> None:
        for iid in state.live:
            at.setdefault(iid, state.now)

    return at, Simulator(observer=watch).run(trace, policy=policy)


def test_a_request_no_host_could_ever_take_is_refused_at_once_even_if_it_may_wait() -> None:
    trace = one_host_holding(8)  # full: anything that could fit must wait
    events: list[Event] = [
        Arrival(t=1.0, id=10, vcpus=16, ram_mib=512, disk_gib=1, wait=True),  # larger than the host
        Arrival(t=2.0, id=11, vcpus=4, ram_mib=512, disk_gib=1, wait=True),  # fits once room frees
        # While 11 waits (so before the queue is even looked at):
        Arrival(t=3.0, id=12, vcpus=1, ram_mib=16384, disk_gib=1, wait=True),  # more RAM than the host
        Arrival(t=4.0, id=13, vcpus=1, ram_mib=512, disk_gib=1, wait=True, kvm=True),  # no host has KVM
        Arrival(t=5.0, id=14, vcpus=9, ram_mib=512, disk_gib=1),  # may not wait, and never fits
        Departure(t=50.0, id=1),
    ]
    at, report = replay(trace, events, QueuePolicy())
    assert report.refused_by_filter == {NEVER_FITS: 4}
    assert (report.queued, report.queued_by_filter) == (1, {"capacity": 1})
    assert at == {11: 50.0}  # only 11 waited, and got the room
    assert report.still_waiting == 0


def test_a_request_that_may_wait_joins_those_already_waiting_and_goes_in_its_turn() -> None:
    trace = one_host_holding(6)  # 2 vCPUs free
    events: list[Event] = [
        Arrival(t=1.0, id=100, vcpus=4, ram_mib=512, disk_gib=1, wait=True),  # no room: waits
        # Room for these two, but 100 waits: they join the queue. 101 is admitted by the pass at once
        # (100 is not overdue yet, so it may be passed); 102 comes when 100 is overdue and waits for it.
        Arrival(t=2.0, id=101, vcpus=1, ram_mib=512, disk_gib=1, wait=True),
        Arrival(t=70.0, id=102, vcpus=1, ram_mib=512, disk_gib=1, wait=True),
        Departure(t=90.0, id=1),
    ]
    at, report = replay(trace, events, QueuePolicy(max_wait=60.0))
    assert at == {101: 2.0, 100: 90.0, 102: 90.0}
    assert (report.placed_at_once, report.admitted_from_queue) == (0, 3)
    assert report.queued_by_filter == {"capacity": 1, BEHIND_THE_QUEUE: 2}
    assert report.refused == 0


def test_a_request_that_may_not_wait_is_refused_while_an_overdue_one_waits() -> None:
    trace = one_host_holding(6)  # 2 vCPUs free
    events: list[Event] = [
        Arrival(t=1.0, id=100, vcpus=4, ram_mib=512, disk_gib=1, wait=True),  # no room: waits
        Arrival(t=30.0, id=103, vcpus=1, ram_mib=512, disk_gib=1),  # 100 not overdue: placed
        Arrival(t=70.0, id=102, vcpus=1, ram_mib=512, disk_gib=1),  # 100 overdue: refused, room or not
        Departure(t=90.0, id=1),
        Arrival(t=95.0, id=104, vcpus=1, ram_mib=512, disk_gib=1),  # nothing waits any more: placed
    ]
    at, report = replay(trace, events, QueuePolicy(max_wait=60.0))
    assert at == {103: 30.0, 100: 90.0, 104: 95.0}
    assert report.refused_by_filter == {HELD_FOR_OVERDUE: 1}
    assert (report.placed_at_once, report.admitted_from_queue, report.refused) == (2, 1, 1)


def test_only_the_hosts_an_overdue_request_could_use_are_held() -> None:
    """Host 1 is dedicated to tenant 7, whose request is overdue; host 2 is shared and has room."""
    hosts = small_cloud(2)
    hosts[0] = HostRow(id=1, name="h1", vcpus=8, ram_mib=8192, disk_gib=100, cpu_ratio=1.0, dedicated_to=7)
    first = Instances.of(
        {
            "id": [1, 2], "host": [1, 2], "vcpus": [6, 4], "ram_mib": [512, 512], "disk_gib": [1, 1],
            "tenant": [7, 3], "priority": [1, 1], "group": [-1, -1],
        }
    )  # fmt: skip
    events: list[Event] = [
        # Tenant 7 may use both hosts; 8 vCPUs fit on neither: it waits, and is overdue at t=61.
        Arrival(t=1.0, id=100, vcpus=8, ram_mib=512, disk_gib=1, tenant=7, wait=True),
        # Tenant 3 may use only h2, which has room; but 100 could use h2 too (it is shared), so at
        # t=70 h2 is held and 101 is refused.
        Arrival(t=70.0, id=101, vcpus=1, ram_mib=512, disk_gib=1, tenant=3),
    ]
    at, report = replay(Trace(hosts, first, []), events, QueuePolicy(max_wait=60.0))
    assert report.refused_by_filter == {HELD_FOR_OVERDUE: 1}
    # Now the overdue request needs KVM, which only h1 has: h2 is not held, 101 goes there.
    hosts[0] = HostRow(
        id=1, name="h1", vcpus=8, ram_mib=8192, disk_gib=100, cpu_ratio=1.0, dedicated_to=7, kvm=True
    )
    events[0] = Arrival(t=1.0, id=100, vcpus=8, ram_mib=512, disk_gib=1, tenant=7, wait=True, kvm=True)
    at, report = replay(Trace(hosts, first, []), events, QueuePolicy(max_wait=60.0))
    assert report.refused == 0
    assert at == {101: 70.0}  # (the instances of the trace were there before any event)


def test_trace_round_trip(tmp_path: Path) -> None:
    trace = generate(hosts=40, seed=9, arrivals=200, group_share=0.3)
    trace.real_hosts = frozenset({trace.hosts[0].id})
    path = tmp_path / "cloud.jsonl"
    trace.save(path)
    again = Trace.load(path)
    assert again.hosts == trace.hosts
    assert again.groups == trace.groups
    assert again.events == trace.events
    assert again.real_hosts == trace.real_hosts
    assert again.seed == 9
    for column in Instances.__dataclass_fields__:
        assert np.array_equal(getattr(again.instances, column), getattr(trace.instances, column)), column
    one, two = Simulator().run(trace), Simulator().run(again)
    assert (one.placed, one.refused, one.queued) == (two.placed, two.refused, two.queued)
    assert one.end.as_dict() == two.end.as_dict()
    assert one.planned_on_real_hosts == two.planned_on_real_hosts


HEADER = '{"type": "trace", "version": 1}'
HOST = '{"type": "host", "id": 1, "name": "h1", "vcpus": 8, "ram_mib": 8192, "disk_gib": 100}'
NO_VCPUS = '{"type": "host", "id": 1, "name": "h1", "ram_mib": 1, "disk_gib": 1}'
ON_HOST_2 = '{"type": "instance", "id": 1, "host": 2, "vcpus": 1, "ram_mib": 1, "disk_gib": 1}'
LIFETIME = '{"type": "arrive", "t": 1, "id": 5, "vcpus": 1, "ram_mib": 1, "disk_gib": 1, "lifetime": -3}'
MALFORMED = [
    ([HEADER, "{not json"], "line 2: not JSON"),
    ([HOST], "line 1: the first line must be the header"),
    ([HEADER, NO_VCPUS], "line 2, field 'vcpus': missing"),
    ([HEADER, HOST.replace('"vcpus": 8', '"vcpus": "two"')], "line 2, field 'vcpus': expected a whole"),
    ([HEADER, HOST.replace('"vcpus"', '"cpus"')], "line 2, field 'cpus': unknown field"),
    ([HEADER, HOST, ON_HOST_2], "line 3, field 'host': no host with id 2"),
    ([HEADER, HOST, LIFETIME], "line 3, field 'lifetime': expected null or seconds > 0, got -3"),
    ([HEADER, HOST, '{"type": "depart", "t": 1, "id": 77}'], "line 3, field 'id': no instance or arrival"),
    ([HEADER, '{"type": "group", "name": "g", "policy": "together"}'], "line 2, field 'policy'"),
    ([HEADER, '{"type": "vm"}'], "line 2, field 'type': unknown record type"),
]


@pytest.mark.parametrize(("lines", "message"), MALFORMED)
def test_malformed_trace_names_the_line_and_field(tmp_path: Path, lines: list[str], message: str) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(TraceError) as caught:
        Trace.load(path)
    assert message in str(caught.value)
    with pytest.raises(CommandError) as from_command:
        call_command("simulate", "--trace", str(path), stdout=io.StringIO())
    assert message in str(from_command.value)


def test_command_reports_a_missing_trace_file(tmp_path: Path) -> None:
    with pytest.raises(CommandError, match="not found"):
        call_command("simulate", "--trace", str(tmp_path / "nowhere.jsonl"), stdout=io.StringIO())


def test_command_generates_runs_and_saves(tmp_path: Path) -> None:
    out = io.StringIO()
    saved = tmp_path / "saved.jsonl"
    call_command(
        "simulate", "--generate", "20", "--arrivals", "60", "--json", "--save-trace", str(saved), stdout=out
    )
    report = json.loads(out.getvalue())
    assert (report["hosts"], report["instances_at_start"]) == (20, 200)
    assert report["placed_at_once"] + report["refused"] + report["queued"] == 60
    assert set(report["waits"]) == {*PRIORITY_NAMES, "all"}
    assert len(Trace.load(saved).arrivals()) == 60
    table = io.StringIO()
    call_command("simulate", "--trace", str(saved), "--pack", stdout=table)
    assert "lower bound" in table.getvalue()
    assert "decisions" in table.getvalue()


def test_priority_names_follow_the_priority_classes() -> None:
    assert [c.label.lower() for c in PriorityClass] == list(PRIORITY_NAMES)


# -- the database ----------------------------------------------------------------------------------
def make_host(name: str, simulated: bool = False, **extra: object) -> Host:
    values: dict[str, object] = {
        "name": name, "uri": "test:///default", "cpus": 4, "ram_mib": 8192, "disk_gib": 100,
        "simulated": simulated, "heartbeat_at": None if simulated else timezone.now(),
    }  # fmt: skip
    values.update(extra)
    return Host.objects.create(**values)


def make_instance(tenant: Tenant, name: str, host: Host | None, **extra: object) -> Instance:
    flavor, _ = Flavor.objects.get_or_create(
        name="sim-f", defaults={"vcpus": 2, "ram_mib": 1024, "disk_gib": 1, "cpu_mode": CpuMode.EMULATED}
    )
    image, _ = Image.objects.get_or_create(
        name="sim-image",
        defaults={"kind": ImageKind.KERNEL, "os_name": "t", "disk_path": "/x", "sha256": "0" * 64},
    )
    values: dict[str, object] = {
        "tenant": tenant, "name": name, "flavor": flavor, "image": image, "host": host, "vcpus": 2,
        "ram_mib": 1024, "current_ram_mib": 1024, "disk_gib": 1, "state": InstanceState.RUNNING,
    }  # fmt: skip
    values.update(extra)
    return Instance.objects.create(**values)


@pytest.mark.django_db
def test_record_takes_hosts_and_live_instances_from_the_database() -> None:
    tenant = make_tenant("sim-rec")
    real = make_host("rec-real")
    sim = make_host("rec-sim", simulated=True, cpus=64, ram_mib=262144)
    group = ServerGroup.objects.create(tenant=tenant, name="web", policy="anti-affinity")
    a = make_instance(tenant, "a", real, server_group=group)
    b = make_instance(tenant, "b", sim, allocation=Allocation.DYNAMIC, current_ram_mib=256)
    make_instance(tenant, "gone", real, state=InstanceState.DELETED)
    waiting = make_instance(tenant, "q", None, state=InstanceState.QUEUED, priority=PriorityClass.LOW)

    trace = record()
    assert {h.name for h in trace.hosts} == {"rec-real", "rec-sim"}
    assert trace.real_hosts == {real.pk}
    assert all(h.alive for h in trace.hosts)  # the simulated one has no agent, yet counts as alive
    assert sorted(trace.instances.id.tolist()) == sorted([a.pk, b.pk])
    by_id = dict(zip(trace.instances.id.tolist(), trace.instances.ram_mib.tolist(), strict=True))
    assert by_id == {a.pk: 1024, b.pk: 256}  # a dynamic instance holds what it was granted
    assert trace.groups == {f"sg-{group.pk}": "anti-affinity"}
    [arrival] = trace.arrivals()
    assert (arrival.id, arrival.wait, arrival.priority) == (waiting.pk, True, 0)

    out = io.StringIO()
    call_command("simulate", "--record", "--json", stdout=out)
    shown = json.loads(out.getvalue())
    assert (shown["hosts"], shown["simulated_hosts"], shown["instances_at_start"]) == (2, 1, 2)
    assert shown["placed"] == 1  # the queued instance, replayed as a waiting arrival

    final: list[SimState] = []
    report = Simulator(observer=lambda s, e: final.append(s)).run(trace)
    assert report.placed == 1
    assert all(final[-1].simulated[row] for row in final[-1].drivers)  # no simulator for a real host
    # A what-if over real hosts only plans: nothing is provisioned, no driver is made.
    only_real = record(Host.objects.filter(simulated=False))
    final.clear()
    report = Simulator(observer=lambda s, e: final.append(s)).run(only_real)
    assert (report.placed, report.provisioned, report.planned_on_real_hosts) == (1, 0, 1)
    assert final[-1].drivers == {}


@pytest.mark.django_db
def test_simulated_hosts_are_never_chosen_for_a_real_instance(tmp_path: Path) -> None:
    call_command("simulate", "--generate", "5", "--arrivals", "0", "--register-hosts", stdout=io.StringIO())
    make_host("sim-db", simulated=True, cpus=128, ram_mib=1_048_576)
    # Give the simulated hosts everything the filters ask for, so only their flag keeps them out.
    assert (
        Host.objects.filter(simulated=True).update(heartbeat_at=timezone.now(), state=HostState.ENABLED) == 6
    )
    real = make_host("small-real", cpus=2, ram_mib=2048)
    tenant = make_tenant("sim-place")
    assert instance_place(make_instance(tenant, "one", None, state=InstanceState.REQUESTED)) == real
    real.state = HostState.DISABLED
    real.save()
    with pytest.raises(NoValidHost):
        instance_place(make_instance(tenant, "two", None, state=InstanceState.REQUESTED))
    assert not Instance.objects.for_tenant(tenant).filter(host__simulated=True).exists()


@pytest.mark.django_db
def test_registering_simulated_hosts_keeps_existing_ones_and_refuses_a_real_hosts_name() -> None:
    trace = generate(hosts=3, instances_per_host=0, seed=3, arrivals=0)
    trace.real_hosts = frozenset({trace.hosts[0].id})  # recorded from a real host: never registered
    assert simulated_hosts_register(hosts=trace.simulated_hosts()) == 2
    assert simulated_hosts_register(hosts=trace.simulated_hosts()) == 0  # kept as they are
    registered = Host.objects.filter(simulated=True)
    assert sorted(registered.values_list("name", flat=True)) == [h.name for h in trace.hosts[1:]]
    assert {h.uri for h in registered} == {f"sim://{h.name}" for h in trace.hosts[1:]}
    make_host("sim-000009")
    clash = generate(hosts=9, instances_per_host=0, seed=3, arrivals=0)
    with pytest.raises(ValueError, match="real hosts already have these names: sim-000009"):
        simulated_hosts_register(hosts=clash.simulated_hosts())
    assert registered.count() == 2  # nothing of the refused batch was written


def test_the_simulator_runs_without_django() -> None:
    """bench/placement.py drives the engine and the simulator with no settings and no database."""
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[2]
    script = (
        "import os, sys\n"
        "os.environ.pop('DJANGO_SETTINGS_MODULE', None)\n"
        "from scheduler.simulate import Simulator, generate\n"
        "print(sorted(m for m in sys.modules if m.startswith(('django.db', 'compute.models'))))\n"
    )
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(root)}
    result = subprocess.run(
        [sys.executable, "-c", script],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "[]"
