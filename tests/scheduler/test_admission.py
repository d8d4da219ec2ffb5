"""The admission queue: waiting instead of failing, the order of admission (priority, aging,
fair share, overdue first), the bounded wait under a stream of higher-priority requests, demand
mode, the position and estimate a tenant sees, and the requests that must never wait."""

from __future__ import annotations

from datetime import timedelta

from django.test import override_settings
from django.utils import timezone
from rest_framework.test import APIClient

from compute.models import (
    Allocation,
    Flavor,
    Host,
    Instance,
    InstanceState,
    Operation,
    OperationState,
    UsageSample,
)
from compute.services.admission import admission_run
from compute.services.instances import instance_delete, instance_deleted
from scheduler.admission import queue_status
from scheduler.models import PlacementDecision, QueueEntry, QueueState
from scheduler.queueing import QueuePolicy, Waiting, admission_pass, order
from tenants.models import PriorityClass, QuotaClaim, Role
from tests.factories import add_member, make_tenant
from tests.scheduler.conftest import ACTOR, create
from tests.scheduler.test_placement import make_host


def free_one(instance: Instance) -> None:
    """What the host's agent does at the end of a delete: the instance's room is free again."""
    instance.refresh_from_db()
    instance_deleted(instance)


# -- the pure policy -------------------------------------------------------------------------------
def w(key: int, priority: int, at: float, tenant: int = 1) -> Waiting:
    return Waiting(key=key, tenant_id=tenant, priority=priority, enqueued_at=at, demand=(1.0, 1.0, 0.0))


def test_order_is_priority_then_fair_share_then_age_and_overdue_goes_first() -> None:
    rules = QueuePolicy(aging_seconds=100, max_wait=1000)
    queue = [w(1, 0, 0.0), w(2, 2, 50.0), w(3, 2, 40.0, tenant=2), w(4, 1, 45.0)]
    # At t=50: low (level 0), normal (1), two highs: tenant 2 holds less than tenant 1.
    assert [x.key for x in order(queue, 50.0, rules, {1: 0.5, 2: 0.1})] == [3, 2, 4, 1]
    # With equal shares, the older of the two highs goes first.
    assert [x.key for x in order(queue, 50.0, rules, {})][:2] == [3, 2]
    # Aging: at t=310 the low one has gained 3 levels (the top, where all now are) and is the oldest.
    assert order(queue, 310.0, rules, {})[0].key == 1
    assert [x.key for x in order(queue, 250.0, rules, {})][-1] == 1  # level 2: not yet
    # Overdue beats any priority and any share.
    assert order(queue, 1000.0, rules, {1: 0.9, 2: 0.0})[0].key == 1


def test_an_overdue_request_that_does_not_fit_holds_back_everything_behind_it() -> None:
    rules = QueuePolicy(aging_seconds=100, max_wait=500)
    big, small = w(1, 0, 0.0), w(2, 3, 600.0)
    room = {"free": 1}

    def fits(x: Waiting) -> bool:
        need = 2 if x.key == 1 else 1
        if need <= room["free"]:
            room["free"] -= need
            return True
        return False

    # Before the big one is overdue, the small one may use the room the big one cannot.
    assert admission_pass([big, small], 400.0, rules, {}, [10, 10, 10], fits) == [small]
    room["free"] = 1
    # Overdue: the one free slot is kept for it, not given to the critical one behind.
    assert admission_pass([big, small], 700.0, rules, {}, [10, 10, 10], fits) == []
    room["free"] = 2
    assert admission_pass([big, small], 700.0, rules, {}, [10, 10, 10], fits) == [big]


def test_fair_share_follows_admissions_within_a_pass() -> None:
    """Two tenants at the same level take turns: each admission raises its tenant's share."""
    rules = QueuePolicy(aging_seconds=1000, max_wait=10000)
    queue = [w(k, 1, float(k), tenant=1) for k in range(1, 4)] + [
        w(k, 1, float(k), tenant=2) for k in (4, 5, 6)
    ]
    admitted = admission_pass(queue, 10.0, rules, {}, [6, 6, 6], lambda x: True)
    assert [x.tenant_id for x in admitted] == [1, 2, 1, 2, 1, 2]


# -- through the database --------------------------------------------------------------------------
def test_a_request_that_may_wait_is_queued_then_admitted_when_room_frees(catalog: dict[str, object]) -> None:
    tenant = make_tenant("waits")
    host = make_host("q-solo", cpus=2, cpu_ratio=1.0)
    first, second = create(tenant, "first"), create(tenant, "second")
    assert {first.host_id, second.host_id} == {host.pk}
    refused = create(tenant, "no-wait")
    assert refused.state == InstanceState.ERROR
    assert "filter 'capacity'" in refused.fault
    queued = create(tenant, "patient", wait=True)
    assert (queued.state, queued.host_id) == (InstanceState.QUEUED, None)
    entry = QueueEntry.objects.for_tenant(tenant).get(instance=queued)
    assert entry.state == QueueState.WAITING
    assert "filter 'capacity'" in entry.reason
    # It keeps its quota while it waits.
    assert QuotaClaim.objects.for_tenant(tenant).filter(holder_id=str(queued.pk), released_at=None).exists()
    create_op = Operation.objects.for_tenant(tenant).get(instance=queued)
    assert create_op.state == OperationState.PENDING
    assert admission_run() == []  # still full
    free_one(first)
    assert admission_run() == ["patient"]
    queued.refresh_from_db()
    entry.refresh_from_db()
    assert (queued.state, queued.host_id) == (InstanceState.SCHEDULED, host.pk)
    assert entry.state == QueueState.ADMITTED
    assert entry.finished_at is not None
    assert Operation.objects.for_tenant(tenant).get(pk=create_op.pk).state == OperationState.PENDING


def test_a_request_larger_than_any_host_fails_at_once_instead_of_waiting(catalog: dict[str, object]) -> None:
    tenant = make_tenant("huge")
    make_host("q-small", cpus=2, cpu_ratio=1.0, ram_mib=4096)
    Flavor.objects.create(name="q.huge", vcpus=1, ram_mib=8192, disk_gib=1)
    giant = create(tenant, "giant", flavor="q.huge", wait=True)
    assert giant.state == InstanceState.ERROR
    assert giant.fault == (
        "no valid host: filter 'capacity' removed the last 1 candidate(s) (4096 MiB RAM short on q-small); "
        "it can never be placed: larger than any host: it needs 8192 MiB RAM (the largest host has 4096)"
    )
    assert not QueueEntry.objects.for_tenant(tenant).exists()
    # Also when others already wait (it would otherwise join them and never leave).
    create(tenant, "a", wait=True), create(tenant, "b", wait=True), create(tenant, "c", wait=True)
    assert QueueEntry.objects.for_tenant(tenant).count() == 1
    again = create(tenant, "giant2", flavor="q.huge", wait=True)
    assert again.state == InstanceState.ERROR
    assert again.fault == (
        "no valid host: it can never be placed: larger than any host: it needs 8192 MiB RAM "
        "(the largest host has 4096)"
    )


def test_deleting_a_queued_instance_leaves_the_queue_and_gives_its_quota_back(
    catalog: dict[str, object],
) -> None:
    tenant = make_tenant("cancel")
    make_host("q-one", cpus=1, cpu_ratio=1.0)
    create(tenant, "running")
    queued = create(tenant, "queued", wait=True)
    instance_delete(actor=ACTOR, instance=queued)
    queued.refresh_from_db()
    assert queued.state == InstanceState.DELETED
    assert QueueEntry.objects.for_tenant(tenant).get(instance=queued).state == QueueState.CANCELLED
    assert (
        not QuotaClaim.objects.for_tenant(tenant).filter(holder_id=str(queued.pk), released_at=None).exists()
    )
    create_op = Operation.objects.for_tenant(tenant).filter(instance=queued, kind="create").get()
    assert create_op.state == OperationState.FAILED
    assert "deleted while waiting" in create_op.error
    assert admission_run() == []


@override_settings(NUBIS_QUEUE_AGING_SECONDS=60, NUBIS_QUEUE_MAX_WAIT=300)
def test_a_low_priority_request_is_admitted_within_the_bound_under_a_stream_of_high_ones(
    catalog: dict[str, object],
) -> None:
    """A steady stream of high-priority requests from a tenant with a small share; one low request
    from a tenant with a large one. Aging lifts the low request to the top level, where fair share
    still puts it behind; the overdue rule admits it at the first room after max_wait."""
    stream = make_tenant("stream", priority=PriorityClass.HIGH, instances=100, vcpus=100, ram_mib=65536)
    big = make_tenant("big-user", vcpus=100)
    solo = make_host("q-solo", cpus=4, cpu_ratio=1.0, ram_mib=65536)
    full = make_host("q-full", cpus=16, cpu_ratio=1.0, ram_mib=65536)
    ours = Host.objects.filter(pk__in=[solo.pk, full.pk])
    Flavor.objects.create(name="q.sixteen", vcpus=16, ram_mib=256, disk_gib=1)
    assert create(big, "hog", flavor="q.sixteen").host_id == full.pk  # big-user's share: 16/20
    running = [create(stream, f"h{n}", PriorityClass.HIGH) for n in range(4)]
    assert all(r.host_id == solo.pk for r in running)
    base = timezone.now()
    low = create(big, "low", PriorityClass.LOW, wait=True)
    QueueEntry.objects.for_tenant(big).filter(instance=low).update(enqueued_at=base)
    period, admitted_at, order_seen = 30, None, []
    for step in range(1, 21):
        t = step * period
        for k in range(2):  # the stream arrives faster than room frees up: the queue never drains
            arrival = create(stream, f"s{step}-{k}", PriorityClass.HIGH, wait=True)
            assert arrival.state == InstanceState.QUEUED
            QueueEntry.objects.for_tenant(stream).filter(instance=arrival).update(
                enqueued_at=base + timedelta(seconds=t)
            )
        free_one(running.pop(0))
        admitted = admission_run(now=base + timedelta(seconds=t), hosts=ours)
        assert len(admitted) == 1
        order_seen.append(admitted[0])
        running.extend(Instance.objects.for_tenant(stream).filter(name__in=admitted))
        if "low" in admitted:
            admitted_at = t
            break
    assert admitted_at is not None, f"starved: admitted {order_seen}"
    # Fair share kept it behind the stream until it was overdue; the overdue rule bounds its wait.
    assert 300 <= admitted_at <= 300 + period, order_seen
    assert len(order_seen) > 1
    assert all(name.startswith("s") for name in order_seen[:-1])


def test_demand_mode_admits_by_measured_use_where_reserved_mode_waits(catalog: dict[str, object]) -> None:
    tenant = make_tenant("demand")
    host = make_host("q-idle", cpus=2, cpu_ratio=1.0, ram_mib=1024)
    idle = [create(tenant, f"idle{n}") for n in range(2)]  # 2 vCPUs, 512 MiB reserved: no vCPU left
    now = timezone.now()
    for instance in idle:
        UsageSample.objects.create(instance=instance, at=now, cpu_pct=3.0, mem_bytes=40 << 20)
    waiting = create(tenant, "newcomer", wait=True)
    assert waiting.state == InstanceState.QUEUED
    assert admission_run() == []
    with override_settings(NUBIS_ADMISSION_MODE="demand"):
        assert admission_run() == ["newcomer"]
    waiting.refresh_from_db()
    assert waiting.host_id == host.pk
    # A busy instance counts what it uses: with both at 100% of their vCPU, nothing more fits.
    for instance in idle:
        UsageSample.objects.create(instance=instance, at=now, cpu_pct=100.0, mem_bytes=200 << 20)
    UsageSample.objects.create(instance=waiting, at=now, cpu_pct=90.0, mem_bytes=100 << 20)
    with override_settings(NUBIS_ADMISSION_MODE="demand"):
        assert create(tenant, "one-more").state == InstanceState.ERROR


def test_the_tenant_sees_its_place_and_the_estimated_wait(catalog: dict[str, object]) -> None:
    tenant, other = make_tenant("sees"), make_tenant("other-q", priority=PriorityClass.HIGH)
    make_host("q-two", cpus=2, cpu_ratio=1.0)
    first = [create(other, f"o{n}") for n in range(2)]
    ahead = create(other, "ahead", PriorityClass.HIGH, wait=True)
    mine = create(tenant, "mine", wait=True)
    client = APIClient()
    client.force_authenticate(add_member(tenant, role=Role.VIEWER))
    shown = client.get(f"/api/v1/tenants/{tenant.slug}/instances/{mine.uuid}/").json()
    assert shown["state"] == "queued"
    assert (shown["queue"]["position"], shown["queue"]["waiting"]) == (2, 2)
    assert shown["queue"]["estimated_wait_s"] is None  # nothing admitted yet to learn from
    listed = client.get(f"/api/v1/tenants/{tenant.slug}/queue/").json()["results"]
    assert [i["name"] for i in listed] == ["mine"]  # only its own
    assert listed[0]["queue"]["position"] == 2
    # Two admissions 60 s apart: the estimate is place x interval.
    now = timezone.now()
    free_one(first[0])
    assert admission_run() == ["ahead"]
    QueueEntry.objects.for_tenant(other).filter(instance=ahead).update(
        finished_at=now - timedelta(seconds=60)
    )
    free_one(first[1])
    assert admission_run() == ["mine"]
    later = create(tenant, "later", wait=True)
    entry = QueueEntry.objects.for_tenant(tenant).get(instance=later)
    status = queue_status(entry, now=timezone.now())
    assert status["position"] == 1
    assert 55 <= status["estimated_wait_s"] <= 65


def test_queue_entries_are_given_up_after_the_limit(catalog: dict[str, object]) -> None:
    tenant = make_tenant("gives-up")
    make_host("q-none", cpus=1, cpu_ratio=1.0)
    create(tenant, "holder")
    queued = create(tenant, "forever", wait=True)
    with override_settings(NUBIS_QUEUE_GIVE_UP=3600):
        assert admission_run(now=timezone.now() + timedelta(hours=2)) == []
    queued.refresh_from_db()
    assert queued.state == InstanceState.ERROR
    assert "no host had room for" in queued.fault
    assert "filter 'capacity'" in queued.fault
    assert QueueEntry.objects.for_tenant(tenant).get(instance=queued).state == QueueState.FAILED


def test_no_wait_requests_cannot_take_the_room_held_for_an_overdue_one(catalog: dict[str, object]) -> None:
    """Only the hosts the overdue request could use are held: elsewhere new requests go on."""
    from scheduler.models import Aggregate

    tenant, other = make_tenant("held"), make_tenant("elsewhere")
    make_host("q-held", cpus=1, cpu_ratio=1.0)
    private = make_host("q-private", cpus=4, cpu_ratio=1.0)
    Aggregate.objects.create(name="elsewhere-only", tenant=other).hosts.add(private)
    holder = create(tenant, "holder")
    queued = create(tenant, "overdue", wait=True)
    QueueEntry.objects.for_tenant(tenant).filter(instance=queued).update(
        enqueued_at=timezone.now() - timedelta(hours=1)
    )
    free_one(holder)
    sneaky = create(tenant, "sneaky")
    assert sneaky.state == InstanceState.ERROR
    record = PlacementDecision.objects.for_tenant(tenant).get(instance=sneaky).record
    assert record["filters"][0] == {
        "name": "held",
        "in": 2,
        "out": 1,
        "removed": [["q-held", "its room is held for a request that has waited too long"]],
    }
    assert "filter 'aggregate' removed the last 1 candidate(s)" in sneaky.fault  # q-private is not its
    # The overdue request can never use the other tenant's dedicated host: that one is not held.
    assert create(other, "unaffected").host_id == private.pk
    assert admission_run() == ["overdue"]


def test_dynamic_instances_reserve_their_minimum(catalog: dict[str, object]) -> None:
    tenant = make_tenant("dyn")
    make_host("q-ram", cpus=8, ram_mib=1024)
    Flavor.objects.create(
        name="q.dyn", vcpus=1, ram_mib=1024, min_ram_mib=256, disk_gib=1, allocation=Allocation.DYNAMIC
    )
    placed = [create(tenant, f"d{n}", flavor="q.dyn") for n in range(4)]  # 4 x 256 MiB of 1024
    assert all(p.state == InstanceState.SCHEDULED and p.current_ram_mib == 256 for p in placed)
    assert create(tenant, "d4", flavor="q.dyn").state == InstanceState.ERROR
    static = create(tenant, "s", flavor="q.dyn", allocation=Allocation.STATIC)
    assert static.state == InstanceState.ERROR  # static holds the full 1024 MiB
