"""High availability: a host whose agent stopped heartbeating is declared dead, fenced, and its HA
instances restart on other hosts.

- **Declared dead** after NUBIS_HA_GRACE seconds without a heartbeat (the control worker's
  ``compute.ha_check``, every few seconds). Marking a host *down* (hosts_mark_down) only stops new
  placements; declaring it dead is the step that moves its guests, so it waits longer.
- **Fenced** at once: ``Host.fenced_at`` is set and from then on the host may run no guest. Its
  heartbeat alone does not bring it back: its agent first destroys every guest it still has
  (:func:`fence_cleanup`, run when it sees the mark) and only then rejoins (``host_unfence``). A
  production deployment fences the machine itself before restarting anything (IPMI power-off, a
  switched PDU, or a storage lease that the dead host's watchdog honours); this module is the part
  every deployment needs: the agent-side rule, and no restart before the fence is recorded. QEMU's
  lock on each disk image is the last line: a second QEMU cannot open a disk that a live one holds.
- **Restarted** in priority order (then oldest first), through the normal placement (every filter,
  capacity claimed under the host's lock) and with the quota the instance already holds: a VM
  from its disk on the shared instance store, a container from its image. A VM that was moving
  to a live host goes there: if it arrived before its host died it is adopted as it runs.
  An instance no host has room for is stopped with the reason, and tried again on the next pass.
- Instances not marked HA stay on the dead host, stopped, with a fault saying why.
- The instance's history (its operations and the audit log) shows the failure, the fence and the
  restart.
"""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from compute.drivers.base import ContainerDriver, DriverError, VmDriver
from compute.models import (
    Host,
    HostState,
    Instance,
    InstanceState,
    Operation,
    OperationKind,
    OperationState,
    domain_uuid,
)
from compute.services.lifecycle import (
    deadline,
    instance_event,
    operation_enqueue,
    operation_finish,
    operation_record,
)
from compute.services.placement import instance_place
from core.redis import redis_client
from scheduler.services import NoValidHost
from security.audit import Actor, audit_log

logger = logging.getLogger(__name__)

# An instance in one of these states was running (or about to) when its host died.
RESTARTABLE = (
    InstanceState.RUNNING,
    InstanceState.STARTING,
    InstanceState.REBOOTING,
    InstanceState.RESIZING,
    InstanceState.MIGRATING,
    InstanceState.BUILDING,
    InstanceState.SCHEDULED,
)
HA_ACTOR = "ha"


def _actor() -> Actor:
    return Actor.system(HA_ACTOR)


WATCH_KEY = "nubis:ha:watch"  # when the control side's unbroken watch began, and its last pass


def _watching_since(now: Any) -> float:
    """Since when the control side has watched the hosts without a break (a pass every
    NUBIS_HA_CHECK_SECONDS). A host is declared dead only if it was silent for the whole grace
    while watched: after an outage of the control side itself (its database, its Redis, its
    worker), every host looks silent, and none may be fenced for that."""
    client = redis_client()
    stamp = now.timestamp()
    raw: list[bytes | None] = client.hmget(WATCH_KEY, ["since", "last"])  # type: ignore[assignment]
    since, last = (float(v) if v is not None else None for v in raw)
    if since is None or last is None or stamp - last > 3 * settings.NUBIS_HA_CHECK_SECONDS:
        since = stamp
    client.hset(WATCH_KEY, mapping={"since": since, "last": stamp})
    client.expire(WATCH_KEY, 86400)
    return since


def ha_check(now: Any = None, hosts: Any = None) -> dict[str, list[str]]:
    """One pass: declare dead and fence the hosts silent past the grace, then restart what waits.

    Only hosts of a cluster (with an address on the hosts' network) are watched: a lone host has
    nowhere to restart anything. ``hosts`` narrows the pass to a queryset (tests, what-ifs).
    """
    now = now or timezone.now()
    grace = timedelta(seconds=settings.NUBIS_HA_GRACE)
    since = _watching_since(now)
    cluster = (hosts if hosts is not None else Host.objects.all()).filter(
        simulated=False, address__isnull=False
    )
    done: dict[str, list[str]] = {"fenced": [], "restarted": [], "waiting": []}
    cutoff = now - grace
    silent = (
        cluster.filter(fenced_at__isnull=True)
        .exclude(state=HostState.DISABLED)
        .filter(Q(heartbeat_at__lt=cutoff) | Q(heartbeat_at__isnull=True))
    )
    alive = cluster.filter(fenced_at__isnull=True, heartbeat_at__gte=cutoff).exists()
    if since <= cutoff.timestamp() and alive:
        # (Every host silent at once: the control side is the one cut off; it fences nobody.)
        for host in silent:
            if host_fence(host, now):
                done["fenced"].append(host.name)
    for host in cluster.filter(fenced_at__isnull=False):
        restarted, waiting = _restart_all(host)
        done["restarted"] += restarted
        done["waiting"] += waiting
    return done


@transaction.atomic
def host_fence(host: Host, now: Any = None) -> bool:
    """Declare the host dead and fence it; False if it beat meanwhile or is fenced already."""
    now = now or timezone.now()
    locked = Host.objects.select_for_update().get(pk=host.pk)
    cutoff = now - timedelta(seconds=settings.NUBIS_HA_GRACE)
    if locked.fenced_at is not None or (locked.heartbeat_at is not None and locked.heartbeat_at >= cutoff):
        return False
    Host.objects.filter(pk=locked.pk).update(fenced_at=now, state=HostState.DOWN)
    beat = locked.heartbeat_at.isoformat() if locked.heartbeat_at else None
    audit_log(
        actor=_actor(),
        action="host.fence",
        target=locked,
        outcome="error",
        detail={"last_heartbeat": beat, "grace_seconds": settings.NUBIS_HA_GRACE},
    )
    logger.warning("ha: host %s declared dead (last heartbeat %s) and fenced", locked.name, beat)
    # Operations its agent held are lost with it; the restarts below start afresh.
    for op in Operation.objects.unscoped().filter(
        instance__host=locked, state__in=[OperationState.PENDING, OperationState.RUNNING]
    ):
        operation_finish(op, OperationState.FAILED, f"host {locked.name} failed and was fenced")
    for instance in Instance.objects.unscoped().filter(host=locked, ha=False, state__in=RESTARTABLE):
        fault = (
            f"its host {locked.name} failed (no heartbeat since {beat}) and was fenced; it is not "
            "marked HA, so it stays there, stopped, until the host is back or it is moved"
        )
        _stopped(instance, fault)
    return True


def _stopped(instance: Instance, fault: str) -> None:
    now = timezone.now()
    Instance.objects.unscoped().filter(pk=instance.pk).update(
        state=InstanceState.STOPPED, migration_host=None, fault=fault[:4000], fault_at=now,
        state_deadline=None, vnc_port=None, updated=now,
    )  # fmt: skip
    instance.state, instance.fault, instance.migration_host = InstanceState.STOPPED, fault, None
    instance_event(instance, reason="host_failed")
    audit_log(
        actor=_actor(),
        action="instance.host_failed",
        target=instance,
        outcome="error",
        detail={"fault": fault},
    )


def _restart_all(host: Host) -> tuple[list[str], list[str]]:
    """Restart the fenced host's HA instances elsewhere, most important first."""
    restarted, waiting = [], []
    candidates = (
        Instance.objects.unscoped()
        .filter(host=host, ha=True, state__in=RESTARTABLE)
        .order_by("-priority", "created", "pk")
        .values_list("pk", flat=True)
    )
    for pk in candidates:
        instance = Instance.objects.unscoped().select_related("host", "migration_host").get(pk=pk)
        outcome = ha_restart(instance, host)
        if outcome == "restarted":
            restarted.append(instance.name)
        elif outcome == "waiting":
            waiting.append(instance.name)
    # Instances that found no room on an earlier pass wait stopped, with the reason: try again.
    for instance in Instance.objects.unscoped().filter(
        host=host, ha=True, state=InstanceState.STOPPED, fault__startswith=NO_ROOM
    ):
        if ha_restart(instance, host, retry=True) == "restarted":
            restarted.append(instance.name)
    return restarted, waiting


NO_ROOM = "HA restart waits:"


@transaction.atomic
def ha_restart(instance: Instance, failed: Host, retry: bool = False) -> str:
    """Place the instance on another host and ask that host's agent to restart it there:
    "restarted", "waiting" (no room; stopped with the reason) or "skipped"."""
    locked = Instance.objects.unscoped().select_for_update().filter(pk=instance.pk).first()
    allowed = (InstanceState.STOPPED,) if retry else RESTARTABLE
    if locked is None or locked.host_id != failed.pk or not locked.ha or locked.state not in allowed:
        return "skipped"
    others = Host.objects.filter(simulated=False, fenced_at__isnull=True).exclude(pk=failed.pk)
    incoming = locked.migration_host
    try:
        if incoming is not None and incoming.fenced_at is None and incoming.heartbeat_fresh():
            # It was moving there: that host holds its capacity already, and may run it already.
            locked.host, locked.migration_host = incoming, None
            locked.save(update_fields=["host", "migration_host", "updated"])
            target = incoming
        else:
            locked.migration_host = None
            target = instance_place(locked, hosts=others)
    except NoValidHost as exc:
        if not retry:
            _stopped(locked, f"{NO_ROOM} its host {failed.name} failed and no other host has room: {exc}")
        return "waiting"
    locked.state = InstanceState.STARTING
    locked.state_deadline = deadline()
    locked.save(update_fields=["state", "state_deadline", "migration_host", "updated"])
    params = {
        "failed_host": failed.name,
        "fenced_at": failed.fenced_at.isoformat() if failed.fenced_at else None,
        "target": target.name,
    }
    operation = operation_record(locked, OperationKind.HA_RESTART, _actor(), params=params)
    audit_log(actor=_actor(), action="instance.ha_restart", target=locked, detail=params)
    instance_event(locked, host=target.name, reason="ha_restart")
    operation_enqueue(operation)
    logger.warning("ha: %s restarts on %s (its host %s failed)", locked.name, target.name, failed.name)
    return "restarted"


# -- on the fenced host, when its agent comes back ------------------------------------------------
def fence_cleanup(host: Host, vms: VmDriver, containers: ContainerDriver) -> list[str]:
    """Destroy every guest this host still has before it rejoins: a guest of an instance that now
    runs elsewhere is also undefined here (its disk, on the shared store, is the other copy's).
    A guest of an instance still placed here (not HA: stopped) keeps its definition, powered off."""
    prefix = settings.NUBIS_DOMAIN_PREFIX
    placed_here = {
        str(u) for u in Instance.objects.unscoped().filter(host=host).values_list("uuid", flat=True)
    }
    destroyed = []
    try:
        for name in vms.list_guests(prefix):
            uid = domain_uuid(name)
            if uid is None:
                continue
            if uid in placed_here:
                vms.shutdown(name, 0)  # no grace: a fenced host runs nothing
            else:
                vms.undefine(name)
            destroyed.append(name)
        for name in containers.list_guests(prefix):
            if domain_uuid(name) is not None:
                containers.undefine(name)  # its bundle stays: a start runs it again
                destroyed.append(name)
    except DriverError as exc:
        logger.error("fence: cannot destroy the guests of %s: %s", host.name, exc)
        raise
    audit_log(
        actor=Actor.system(f"agent@{host.name}"),
        action="host.unfence",
        target=host,
        detail={"destroyed": destroyed},
    )
    return destroyed
