"""The operations outbox: an Operation committed in the database is the promise, and a message on
its host's queue only the delivery, retried until an agent claims it.

The control worker runs one round every NUBIS_DISPATCH_SECONDS (``dispatcher_loop``, started by
compute.tasks when a worker consumes the control queue):

- **Dispatch.** A pending operation on a live host whose ``dispatch_after`` has passed is sent
  again: its first send failed (the broker was down), or no agent claimed it within
  NUBIS_DISPATCH_GRACE seconds (the message was lost with Redis's data, or it waits behind longer
  work), the wait doubling with every send up to a minute. Claiming is idempotent (the agent's
  lock and its claim), so a message sent twice runs the operation once.
- **Lost claims.** A running operation belongs to the agent that claimed it. When that host's
  agent has not heartbeated for NUBIS_CLAIM_LEASE_SECONDS, as this process saw it (its own
  database outages restart the count, so a PostgreSQL restart never passes for a lost host), the
  claim is lost: the operation fails with a fault that names the host, and an instance caught in
  a transient state goes to error, which gives its quota back. An agent that restarts on the same
  host takes its operations over at start instead (compute.services.agent.resume_interrupted).
  A pending operation of a host that stays down past its instance's deadline fails the same way.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime

from django.conf import settings
from django.db import close_old_connections, connection, transaction
from django.utils import timezone

from compute.models import (
    TRANSIENT_STATES,
    Host,
    HostState,
    Instance,
    InstanceState,
    Operation,
    OperationKind,
    OperationState,
    Snapshot,
)
from compute.services.lifecycle import instance_event, instance_fail, operation_finish, operation_send
from compute.services.snapshots import snapshot_forget

logger = logging.getLogger(__name__)

BATCH = 200  # operations sent per round at most (the next round takes the rest)


def operations_dispatch(now: datetime | None = None) -> list[int]:
    """Send again the pending operations that are due; returns the ids sent. Stops at the first
    refusal: the broker is down, and the next round tries again."""
    now = now or timezone.now()
    due = (
        Operation.objects.unscoped()
        .filter(
            state=OperationState.PENDING,
            dispatch_after__lte=now,
            instance__host__isnull=False,
            instance__host__simulated=False,
        )
        .exclude(instance__host__state=HostState.DOWN)  # its agent re-sends them when it starts
        .select_related("instance__host")
        .order_by("dispatch_after", "pk")[:BATCH]
    )
    sent = []
    for op in due:
        host = op.instance.host
        if host is None:
            continue
        if not operation_send(op.pk, host.queue, op.dispatches):
            break
        sent.append(op.pk)
    if sent:
        logger.info("outbox: sent %d operation(s) again: %s", len(sent), sent[:20])
    return sent


@dataclass
class ClaimWatch:
    """What one control process saw of each host's heartbeat: the value, and since when (its own
    monotonic clock) it has seen that value unchanged while it could read the database."""

    seen: dict[int, tuple[datetime | None, float]] = field(default_factory=dict)

    def observe(self, hosts: list[tuple[int, datetime | None]], now: float) -> None:
        for pk, beat in hosts:
            known = self.seen.get(pk)
            if known is None or known[0] != beat:
                self.seen[pk] = (beat, now)

    def silent_for(self, pk: int, now: float) -> float:
        known = self.seen.get(pk)
        return 0.0 if known is None else now - known[1]

    def forget_outage(self, now: float) -> None:
        """This process could not read the database: nobody's silence during it counts."""
        self.seen = {pk: (beat, now) for pk, (beat, _since) in self.seen.items()}


def claims_check(watch: ClaimWatch, now: float | None = None) -> list[str]:
    """Fail the operations of hosts whose agent fell silent for the lease; returns their uuids."""
    now = time.monotonic() if now is None else now
    hosts = list(Host.objects.filter(simulated=False).values_list("pk", "heartbeat_at"))
    watch.observe(hosts, now)
    lease = settings.NUBIS_CLAIM_LEASE_SECONDS
    silent = {pk: watch.silent_for(pk, now) for pk, _beat in hosts}
    lost = {pk: seconds for pk, seconds in silent.items() if seconds >= lease}
    if not lost:
        return []
    failed = []
    wall = timezone.now()
    unfinished = (
        Operation.objects.unscoped()
        .filter(instance__host__in=list(lost), state__in=[OperationState.PENDING, OperationState.RUNNING])
        .select_related("instance__host")
    )
    for op in unfinished:
        instance = op.instance
        if op.state == OperationState.PENDING and not (
            instance.state_deadline is not None and instance.state_deadline < wall
        ):
            continue  # never claimed: it runs when the host's agent comes back, until its deadline
        if _fail_lost(op.pk, lost[instance.host_id or 0]):
            failed.append(str(op.uuid))
    return failed


def _fail_lost(op_id: int, silent: float) -> bool:
    """Fail one operation of a lost host, if it is still unfinished (re-read under its row lock)."""
    with transaction.atomic():
        op = (
            Operation.objects.unscoped()
            .select_for_update(of=("self",))
            .select_related("instance", "instance__host")
            .filter(pk=op_id, state__in=[OperationState.PENDING, OperationState.RUNNING])
            .first()
        )
        host = op.instance.host if op is not None else None
        if op is None or host is None:
            return False
        beat = host.heartbeat_at.strftime("%Y-%m-%d %H:%M:%S UTC") if host.heartbeat_at else "never"
        if op.state == OperationState.RUNNING:
            who = op.claimed_by or f"agent@{host.name}"
            fault = (
                f"host {host.name} lost: its agent ({who}) stopped heartbeating (last at {beat}; "
                f"silent for {silent:.0f} s) while this {op.kind} was at step '{op.step or 'claimed'}'; "
                f"what the host did after that is unknown until its agent returns"
            )
        else:
            fault = (
                f"host {host.name} lost: its agent stopped heartbeating (last at {beat}) and this "
                f"{op.kind} was never started before its deadline"
            )
        instance = op.instance
        if op.kind == OperationKind.SNAPSHOT:
            for snapshot in Snapshot.objects.for_tenant(instance.tenant_id).filter(
                pk=op.params.get("snapshot")
            ):
                snapshot_forget(snapshot, "snapshot lost with its host")
        if instance.state == InstanceState.MIGRATING and op.params.get("phase") == "arrive":
            # A cold move whose target never started it: it runs nowhere, and waits stopped on
            # the target (its quota kept) to be started once that host is back, or moved.
            Instance.objects.unscoped().filter(pk=instance.pk).update(
                state=InstanceState.STOPPED, fault=fault[:4000], fault_at=timezone.now(), state_deadline=None
            )
            instance.state, instance.fault = InstanceState.STOPPED, fault[:4000]
            instance_event(instance)
        elif instance.state == InstanceState.MIGRATING:
            # A live move: the VM runs on one of the two hosts, whole; the source's agent when it
            # returns (compute.services.migration_agent.migration_settle), or HA if it never does,
            # finds out which.
            pass
        elif instance.state in TRANSIENT_STATES:
            instance_fail(instance, fault)
        operation_finish(op, OperationState.FAILED, fault)
    logger.warning("outbox: operation %s failed: %s", op.uuid, fault)
    return True


def dispatcher_loop(stop: threading.Event, every: float | None = None) -> None:
    """The control worker's thread: dispatch, then check claims, every NUBIS_DISPATCH_SECONDS."""
    every = float(every or settings.NUBIS_DISPATCH_SECONDS)
    watch = ClaimWatch()
    logger.info(
        "outbox: dispatcher running every %.0f s (claim lease %d s)",
        every,
        settings.NUBIS_CLAIM_LEASE_SECONDS,
    )
    while not stop.wait(every):
        try:
            close_old_connections()
            operations_dispatch()
            claims_check(watch)
        except Exception:  # the database or the broker failed: the next round tries again
            logger.exception("outbox round failed")
            watch.forget_outage(time.monotonic())
            connection.close()
