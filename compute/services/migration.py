"""Moving instances between hosts: the request, the claim on the target, and the record of the end.

- A VM moves live (compute.services.agent ``_migrate``, run by its source host's agent): libvirt
  peer to peer, the disk staying on the shared instance store. A container moves cold: stopped on
  its host, started on the target from the same image and settings, with the same address.
- The target is chosen by placement, with every filter (capacity, server groups, aggregates, the
  host's state) unless the caller names one, which must pass the same filters. The target's
  capacity is claimed before the move, under its row lock, as a placement claims: the instance
  holds both hosts (``Instance.migration_host``) until the move ends, and then only the one it runs
  on. Its quota never changes: it is the same instance.
- What the hosts do for a move (the target's preparation, finding where a guest runs after an
  agent died mid-move) is in compute.services.migration_agent: the web process, which requests
  moves, never loads a driver.
"""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from compute.models import (
    Host,
    HostState,
    Instance,
    InstanceKind,
    InstanceState,
    Operation,
    OperationKind,
    Snapshot,
    VolumeSnapshot,
)
from compute.services.lifecycle import (
    instance_event,
    instance_lock_idle,
    operation_enqueue,
    operation_record,
)
from compute.services.placement import placement_claim
from core.errors import Conflict, ServiceError
from scheduler.services import NoValidHost, decide
from security.audit import Actor, audit_log

logger = logging.getLogger(__name__)

MOVABLE = (InstanceState.RUNNING, InstanceState.STOPPED)


def is_live(instance: Instance) -> bool:
    """A running VM moves live; a container, or a stopped VM, moves cold (stopped, then made again
    and started on the target if it ran)."""
    return instance.kind == InstanceKind.VM and instance.state == InstanceState.RUNNING


def _target_of(instance: Instance, source: Host, target: Host | str | int | None) -> Any:
    """The hosts the placement may choose from: the named one, or every other host."""
    others = Host.objects.filter(simulated=False).exclude(pk=source.pk)
    if target is None or target == "":
        return others
    if isinstance(target, Host):
        lookup: dict[str, Any] = {"pk": target.pk}
    else:
        lookup = {"pk": int(target)} if str(target).isdigit() else {"name": str(target)}
    named = Host.objects.filter(simulated=False, **lookup).first()
    if named is None:
        raise ServiceError("host", "exists", f"unknown host {target!r}")
    if named.pk == source.pk:
        raise ServiceError("host", "same", f"the instance already runs on {named.name}")
    return Host.objects.filter(pk=named.pk)


def _check_movable(instance: Instance, source: Host | None) -> Host:
    if instance.state not in MOVABLE:
        raise Conflict(
            "state",
            "state",
            f"cannot migrate an instance that is {instance.state} (needs {', '.join(MOVABLE)})",
        )
    if source is None:
        raise Conflict("state", "host", "the instance is on no host")
    if (
        instance.kind == InstanceKind.VM
        and not is_live(instance)
        and not settings.NUBIS_SHARED_INSTANCE_STORE
    ):
        raise Conflict(
            "state",
            "store",
            "a stopped VM moves only over a shared instance store (NUBIS_SHARED_INSTANCE_STORE); "
            "start it to move it live, its disk copied along",
        )
    snapshots = Snapshot.objects.for_tenant(instance.tenant_id).filter(instance=instance).count()
    if instance.kind == InstanceKind.VM and snapshots:
        raise Conflict(
            "state",
            "snapshots",
            f"the VM has {snapshots} snapshot(s): libvirt moves no domain with internal snapshots; "
            "delete them first",
        )
    if (
        not settings.NUBIS_SHARED_INSTANCE_STORE
        and VolumeSnapshot.objects.for_tenant(instance.tenant_id)
        .filter(volume__instance=instance, volume__deleted_at__isnull=True)
        .exists()
    ):
        raise Conflict(
            "state",
            "volumes",
            "a volume of the VM has snapshots, which a move without a shared instance store does not "
            "copy (only the volume's current data); delete them or detach the volume first",
        )
    if is_live(instance) and not source.peer_uri:
        raise Conflict(
            "host",
            "lone",
            f"host {source.name} has no address on the hosts' network (NUBIS_HOST_ADDRESS): it is a "
            "lone host and takes part in no migration",
        )
    return source


def migration_deadline(timeout: int) -> Any:
    """When a move counts as stuck: its timeout, plus the time to stop and start on either side."""
    return timezone.now() + timedelta(seconds=timeout + settings.NUBIS_SHUTDOWN_TIMEOUT + 120)


@transaction.atomic
def instance_migrate(
    *,
    actor: Actor,
    instance: Instance,
    target: Host | str | int | None = None,
    reason: str = "",
    timeout: int | None = None,
    bandwidth_mib: int | None = None,
    drs: dict[str, Any] | None = None,
) -> Operation:
    """Move the instance to another host: live for a VM, cold for a container.

    ``target``: a host (object, id or name) that must pass placement's filters, or None for
    placement to choose. The target's capacity is claimed now; the Operation goes to the agent of
    the instance's host. ``reason`` is kept on the Operation ("maintenance of h1", "requested").
    ``timeout``: seconds a live move may take before it is aborted (default NUBIS_MIGRATION_TIMEOUT);
    ``bandwidth_mib``: a cap on what it sends, in MiB/s (default: none). ``drs``: the balancer's
    recommendation that asked for the move (its pass, id and explanation), kept in the params.
    """
    if timeout is not None and not 1 <= int(timeout) <= 3600:
        raise ServiceError("timeout", "range", "timeout must be from 1 to 3600 seconds")
    if bandwidth_mib is not None and not 1 <= int(bandwidth_mib) <= 100_000:
        raise ServiceError("bandwidth_mib", "range", "bandwidth_mib must be from 1 to 100000 MiB/s")
    locked = instance_lock_idle(instance)
    source = _check_movable(locked, locked.host)
    candidates = _target_of(locked, source, target)
    live = is_live(locked)
    if live:
        candidates = candidates.exclude(peer_uri="")
    try:
        claimed = placement_claim(locked, decide(locked, candidates), into="migration_host")
    except NoValidHost as exc:
        raise Conflict("host", "no_valid_host", f"no host can take {locked.name}: {exc}") from None
    previous = locked.state
    timeout = int(timeout or settings.NUBIS_MIGRATION_TIMEOUT)
    locked.state = InstanceState.MIGRATING
    locked.state_deadline = migration_deadline(timeout)
    locked.save(update_fields=["state", "state_deadline", "updated"])
    params: dict[str, Any] = {
        "source": source.name,
        "target": claimed.name,
        "live": live,
        "from_state": previous,
        "reason": reason or "requested",
        "timeout": timeout,
        "bandwidth_mib": int(bandwidth_mib or 0),
    }
    if drs is not None:
        params["drs"] = drs
    operation = operation_record(locked, OperationKind.MIGRATE, actor, params=params)
    audit_log(
        actor=actor,
        action="instance.migrate",
        target=locked,
        detail={k: v for k, v in params.items() if k != "drs"}
        | ({"drs_recommendation": drs.get("recommendation")} if drs else {}),
    )
    instance_event(locked, host=source.name, migration_host=claimed.name)
    operation_enqueue(operation)
    return operation


def migration_done(instance: Instance, target: Host, state: str, **fields: Any) -> None:
    """The instance runs on ``target`` now: it holds that host alone (the source is released)."""
    with transaction.atomic():
        Instance.objects.unscoped().filter(pk=instance.pk).update(
            host=target,
            migration_host=None,
            state=state,
            state_deadline=None,
            updated=timezone.now(),
            **fields,
        )
        instance.host, instance.migration_host, instance.state = target, None, state
        instance.state_deadline = None
        for key, value in fields.items():
            setattr(instance, key, value)
        instance_event(instance, host=target.name, migration_host=None)


def migration_undone(instance: Instance, state: str, fault: str = "") -> None:
    """The move did not happen: the target's claim goes, the instance stays where it was."""
    with transaction.atomic():
        fields: dict[str, Any] = {"fault": fault[:4000], "fault_at": timezone.now()} if fault else {}
        Instance.objects.unscoped().filter(pk=instance.pk).update(
            migration_host=None, state=state, state_deadline=None, updated=timezone.now(), **fields
        )
        instance.migration_host, instance.state, instance.state_deadline = None, state, None
        for key, value in fields.items():
            setattr(instance, key, value)
        instance_event(instance, migration_host=None)


def evacuable_state(host: Host) -> bool:
    return host.state in (HostState.ENTERING_MAINTENANCE, HostState.MAINTENANCE)
