"""The admission queue in the database: requests that found no room and asked to wait.

A queued instance holds its quota and no host. The scheduler keeps the queue and decides: which
request a pass tries next (scheduler.queueing: overdue first, then priority with aging, then the
tenant's dominant share), which one has waited too long (a :class:`GiveUp`), and where an admitted
one goes (scheduler.services.decide). Compute acts on those decisions (compute.services.admission):
the instance's state, the claim of its host, its create Operation, the events. Passes run every
NUBIS_QUEUE_SECONDS and soon after capacity is released.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import numpy as np
from django.conf import settings
from django.db import connection
from django.db.models import Sum
from django.utils import timezone

from compute.models import Instance, InstanceState
from scheduler.engine import HostTable
from scheduler.hosts import HOSTS
from scheduler.models import QueueEntry, QueueState
from scheduler.queueing import QueuePolicy, Waiting, admission_pass, dominant_shares, order
from scheduler.services import HELD_RAM, NoValidHost, engine, host_rows, never_fits, request_of

HISTORY = timedelta(hours=24)  # admissions the wait estimate learns from
# pg_advisory_xact_lock key: one admission pass at a time across all processes ("nubis-q").
PASS_LOCK = 0x6E756269_735F71


@dataclass(frozen=True)
class GiveUp:
    """Decision: the request has waited past NUBIS_QUEUE_GIVE_UP; its instance fails with ``reason``."""

    entry_id: int
    tenant_id: int
    instance_id: int
    reason: str


def policy() -> QueuePolicy:
    return QueuePolicy(
        aging_seconds=float(settings.NUBIS_QUEUE_AGING_SECONDS), max_wait=float(settings.NUBIS_QUEUE_MAX_WAIT)
    )


def admission_precheck(instance: Instance, wait: bool) -> frozenset[int]:
    """Before a new request is placed: the queue goes first. Returns the hosts it may not take.

    A request that may wait joins the queue behind the requests already waiting (it is admitted
    on the next pass if its turn has come): NoValidHost, unless no host could ever take it. One
    that may not wait is placed now, but not on a host an overdue request could use: that room is
    held for the overdue one (or, with a steady stream of new requests, it could starve). Both
    read the process's host table (scheduler.hosts.HOSTS), as placement does.
    """
    waiting = QueueEntry.objects.unscoped().filter(state=QueueState.WAITING)
    if wait:
        count = waiting.count()
        if count:
            never = never_fits(instance)
            if never:
                raise NoValidHost(f"no valid host: it can never be placed: {never}", never=True)
            raise NoValidHost(f"{count} request(s) were already waiting for room; it waits behind them")
        return frozenset()
    cutoff = timezone.now() - timedelta(seconds=settings.NUBIS_QUEUE_MAX_WAIT)
    overdue = [e.instance for e in waiting.filter(enqueued_at__lte=cutoff).select_related("instance__flavor")]
    if not overdue:
        return frozenset()
    pipeline = engine()
    with HOSTS.use() as table:
        held = np.zeros(len(table), dtype=np.bool_)
        for queued in overdue:
            held |= pipeline.eligible(table, request_of(queued))
        return frozenset(int(i) for i in table.ids[held])


# -- the queue's own records (compute changes the instances) ------------------------------------------
def queue_join(instance: Instance, reason: str) -> QueueEntry:
    """Put an instance that found no room in the queue (inside its create transaction)."""
    return QueueEntry.objects.create(
        tenant_id=instance.tenant_id,
        instance=instance,
        priority=instance.priority,
        vcpus=instance.vcpus,
        ram_mib=instance.current_ram_mib,
        disk_gib=instance.disk_gib,
        reason=reason[:2000],
    )


def queue_leave(instance: Instance, reason: str) -> None:
    """The instance no longer waits (its delete, or it gave up): its waiting entry is cancelled."""
    QueueEntry.objects.for_tenant(instance.tenant_id).filter(
        instance=instance, state=QueueState.WAITING
    ).update(state=QueueState.CANCELLED, finished_at=timezone.now(), reason=reason[:2000])


def queue_refused(entry: QueueEntry, reason: str) -> None:
    """A pass found no room for the entry: the refusal it shows until the next pass."""
    entry.reason = reason[:2000]
    entry.save(update_fields=["reason"])


def queue_admitted(entry: QueueEntry, now: datetime) -> None:
    entry.state, entry.finished_at, entry.reason = QueueState.ADMITTED, now, ""
    entry.save(update_fields=["state", "finished_at", "reason"])


def queue_dropped(entry: QueueEntry, now: datetime) -> None:
    """The entry's instance is not queued any more (deleted or admitted meanwhile)."""
    entry.state, entry.finished_at = QueueState.CANCELLED, now
    entry.save(update_fields=["state", "finished_at"])


def queue_given_up(decision: GiveUp) -> None:
    QueueEntry.objects.for_tenant(decision.tenant_id).filter(pk=decision.entry_id).update(
        state=QueueState.FAILED
    )


def queue_waiting() -> bool:
    """Whether any request waits (a release of capacity should then ask for a pass)."""
    return QueueEntry.objects.unscoped().filter(state=QueueState.WAITING).exists()


# -- a pass ------------------------------------------------------------------------------------------
def _waiting_of(entry: QueueEntry) -> Waiting:
    return Waiting(
        key=entry.pk,
        tenant_id=entry.tenant_id,
        priority=entry.priority,
        enqueued_at=entry.enqueued_at.timestamp(),
        demand=(float(entry.vcpus), float(entry.ram_mib), float(entry.disk_gib)),
    )


def _tenant_usage() -> dict[int, list[float]]:
    """What each tenant holds on hosts now (vCPUs, RAM, disk): the basis of its dominant share."""
    placed = Instance.objects.unscoped().exclude(state__in=(InstanceState.DELETED, InstanceState.ERROR))
    return {
        row["tenant_id"]: [float(row["v"] or 0), float(row["r"] or 0), float(row["d"] or 0)]
        for row in placed.exclude(host=None)
        .values("tenant_id")
        .annotate(v=Sum("vcpus"), r=Sum(HELD_RAM), d=Sum("disk_gib"))
    }


def _cloud_capacity(hosts: Any = None) -> list[float]:
    """Every resource of the cloud after overcommit (the denominator of the dominant shares)."""
    if hosts is None:
        with HOSTS.use() as table:
            return [float(v) for v in table.capacity.sum(axis=1)]
    return [float(v) for v in HostTable(host_rows(hosts)).capacity.sum(axis=1)]


@contextmanager
def _one_pass_at_a_time() -> Iterator[None]:
    """Serialise passes across processes: two at once would both try the head of the queue.

    A session lock, not a transaction's: each admission commits on its own, so a pass never holds
    one admission's host and server-group locks while it places the next.
    """
    if connection.vendor != "postgresql":  # SQLite serialises writers itself
        yield
        return
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_advisory_lock(%s)", [PASS_LOCK])
    try:
        yield
    finally:
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_unlock(%s)", [PASS_LOCK])


def _give_up_of(entry: QueueEntry, now: datetime) -> GiveUp:
    waited = int((now - entry.enqueued_at).total_seconds())
    reason = f"no host had room for {waited} s (the queue gives up after {settings.NUBIS_QUEUE_GIVE_UP} s)"
    if entry.reason:
        reason += f"; last: {entry.reason}"
    return GiveUp(entry.pk, entry.tenant_id, entry.instance_id, reason)


def queue_pass(
    now: datetime,
    admit: Callable[[QueueEntry], bool],
    give_up: Callable[[GiveUp], None],
    hosts: Any = None,
) -> list[QueueEntry]:
    """One pass over the queue, one pass at a time; returns the admitted entries in admission order.

    The scheduler decides the order and who gives up; the callers act. ``give_up`` is called with
    each request that has waited too long, first. Then ``admit`` is called with the next entry in
    the queue's order: it tries to place the entry's instance and says whether it got a host
    (room only shrinks during a pass, so one refused is not tried again). Each call is meant to be
    its own transaction. ``now`` is the clock the ordering uses (tests move it); ``hosts`` narrows
    the capacity the dominant shares are taken of, as placement's ``hosts`` narrows its choice.
    """
    with _one_pass_at_a_time():
        entries = {
            e.pk: e
            for e in QueueEntry.objects.unscoped()
            .filter(state=QueueState.WAITING)
            .select_related("instance")
            .order_by("enqueued_at", "pk")
        }
        limit = timedelta(seconds=settings.NUBIS_QUEUE_GIVE_UP)
        for entry in [e for e in entries.values() if now - e.enqueued_at > limit]:
            give_up(_give_up_of(entry, now))
            del entries[entry.pk]
        if not entries:
            return []
        admitted = admission_pass(
            [_waiting_of(e) for e in entries.values()],
            now.timestamp(),
            policy(),
            _tenant_usage(),
            _cloud_capacity(hosts),
            lambda w: admit(entries[w.key]),
        )
    return [entries[w.key] for w in admitted]


@dataclass(frozen=True)
class QueueStatus:
    position: int | None
    waiting: int  # requests in the queue in all
    waited_s: int
    estimated_wait_s: int | None  # None: no admissions yet to learn from
    effective_priority: float
    overdue: bool
    reason: str

    def as_dict(self) -> dict[str, Any]:
        return {
            "position": self.position,
            "waiting": self.waiting,
            "waited_s": self.waited_s,
            "estimated_wait_s": self.estimated_wait_s,
            "effective_priority": round(self.effective_priority, 2),
            "overdue": self.overdue,
            "reason": self.reason,
        }


def _admission_interval(now: datetime) -> float | None:
    """Mean seconds between the queue's recent admissions (None: fewer than two to go by)."""
    recent = [
        at
        for at in QueueEntry.objects.unscoped()
        .filter(state=QueueState.ADMITTED, finished_at__gte=now - HISTORY)
        .order_by("-finished_at")
        .values_list("finished_at", flat=True)[:50]
        if at is not None
    ]
    if len(recent) < 2:
        return None
    span = (recent[0] - recent[-1]).total_seconds()
    return max(span / (len(recent) - 1), 1.0)


def queue_statuses(entries: list[QueueEntry], now: datetime | None = None) -> dict[int, dict[str, Any]]:
    """Where each waiting request stands, by instance id: its place, its wait so far, the estimate.

    The estimate is its place times the mean interval between recent admissions (None until the
    queue has admitted twice). It reveals nothing of other tenants beyond how many wait ahead.
    The ranking and the history are read once for all the entries.
    """
    now = now or timezone.now()
    rules = policy()
    if not entries:
        return {}
    waiting = [
        _waiting_of(e) for e in QueueEntry.objects.unscoped().filter(state=QueueState.WAITING).order_by("pk")
    ]
    ranked = order(waiting, now.timestamp(), rules, dominant_shares(_tenant_usage(), _cloud_capacity()))
    places = {w.key: i for i, w in enumerate(ranked, start=1)}
    interval = _admission_interval(now)
    statuses = {}
    for entry in entries:
        mine = _waiting_of(entry)
        position = places.get(entry.pk) if entry.state == QueueState.WAITING else None
        statuses[entry.instance_id] = QueueStatus(
            position=position,
            waiting=len(waiting),
            waited_s=int(now.timestamp() - mine.enqueued_at),
            estimated_wait_s=int(position * interval) if interval and position else None,
            effective_priority=rules.effective_priority(mine, now.timestamp()),
            overdue=position is not None and rules.overdue(mine, now.timestamp()),
            reason=entry.reason,
        ).as_dict()
    return statuses


def queue_status(entry: QueueEntry, now: datetime | None = None) -> dict[str, Any]:
    return queue_statuses([entry], now)[entry.instance_id]


def queue_entries(hosts: Any = None) -> list[QueueEntry]:
    """Every waiting request in admission order (staff view)."""
    now = timezone.now()
    entries = {e.pk: e for e in QueueEntry.objects.unscoped().filter(state=QueueState.WAITING)}
    shares = dominant_shares(_tenant_usage(), _cloud_capacity(hosts))
    ranked = order([_waiting_of(e) for e in entries.values()], now.timestamp(), policy(), shares)
    return [entries[w.key] for w in ranked]
