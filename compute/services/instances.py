"""Instance lifecycle requests: validate, claim, record an Operation, hand it to the host's agent.

Each request is one transaction: the state change, the quota claim, the placement and the
Operation row commit together, and the agent's task is enqueued only after the commit.
"""

from __future__ import annotations

import hashlib
import secrets
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import Q
from django.utils import timezone

from compute.models import (
    VM_MIN_RAM_MIB,
    Allocation,
    Flavor,
    Image,
    ImageKind,
    Instance,
    InstanceKind,
    InstanceState,
    Operation,
    OperationKind,
    OperationState,
    SecurityGroup,
    ServerGroup,
    Snapshot,
)
from core.errors import Conflict, ServiceError
from core.events import publish
from scheduler.services import NoValidHost, place
from security.audit import Actor, audit_log
from tenants.models import PriorityClass, QuotaClaim, Tenant
from tenants.services.quotas import quota_claim, quota_release

IDEMPOTENCY_KEY_MAX = 100  # Operation.idempotency_key's length
NAME_RULE = "1-63 letters, digits or hyphens, starting with a letter"
# instance_create's network when the caller names none: the tenant's own default network.
DEFAULT_NETWORK = "\x00default"


def name_is_valid(name: str) -> bool:
    return (
        0 < len(name) <= 63
        and name[0].isalpha()
        and all(c.isalnum() or c == "-" for c in name)
        and name.isascii()
    )


def flavors_for(tenant: Tenant) -> Any:
    return Flavor.objects.filter(Q(public=True) | Q(tenant=tenant))


def images_for(tenant: Tenant) -> Any:
    return Image.objects.filter(Q(public=True) | Q(tenant=tenant))


def instance_event(instance: Instance, **extra: Any) -> None:
    """Tell the tenant's browsers about the instance's new state, after commit."""
    publish(
        instance.tenant_id,
        {
            "type": "instance.state",
            "instance": str(instance.uuid),
            "name": instance.name,
            "state": instance.state,
            "fault": instance.fault,
            **extra,
        },
    )


def operation_event(operation: Operation, instance_uuid: str | None = None) -> None:
    """Tell the tenant's browsers how an Operation stands (its state, step and progress), after commit."""
    publish(
        operation.tenant_id,
        {
            "type": "operation",
            "operation": str(operation.uuid),
            "instance": instance_uuid or str(operation.instance.uuid),
            "kind": operation.kind,
            "state": operation.state,
            "step": operation.step,
            "progress": operation.progress,
            "error": operation.error[:500],
        },
    )


def deadline() -> datetime:
    return timezone.now() + timedelta(seconds=settings.NUBIS_TRANSIENT_DEADLINE)


def operation_enqueue(operation: Operation) -> None:
    from compute.tasks import run_operation

    queue = operation.instance.host.queue if operation.instance.host else None
    if queue is None:
        return
    op_id = operation.pk
    transaction.on_commit(lambda: run_operation.apply_async(args=(op_id,), queue=queue))


def operation_record(
    instance: Instance,
    kind: str,
    actor: Actor,
    params: dict[str, Any] | None = None,
    idempotency_key: str | None = None,
) -> Operation:
    operation = Operation.objects.create(
        tenant=instance.tenant,
        instance=instance,
        kind=kind,
        params=params or {},
        requested_by_id=actor.user_id,
        idempotency_key=idempotency_key,
    )
    operation_event(operation, str(instance.uuid))
    return operation


def release_claims(instance: Instance, reason: str) -> int:
    """Give back every quota claim the instance holds."""
    released = 0
    for claim in QuotaClaim.objects.for_tenant(instance.tenant_id).filter(
        holder_type__model="instance", holder_id=str(instance.pk), released_at__isnull=True
    ):
        released += int(quota_release(claim, reason))
    return released


def instance_fail(instance: Instance, fault: str) -> None:
    """Put the instance in error with its fault recorded, and give its quota back."""
    instance.state = InstanceState.ERROR
    instance.fault = fault[:4000]
    instance.fault_at = timezone.now()
    instance.state_deadline = None
    instance.save(update_fields=["state", "fault", "fault_at", "state_deadline", "updated"])
    release_claims(instance, f"error: {fault[:150]}")
    instance_event(instance)
    if instance.host_id is not None:
        _capacity_released()


@transaction.atomic
def instance_create(
    *,
    actor: Actor,
    tenant: Tenant,
    name: str,
    flavor: str | int,
    image: str | int,
    kind: str = InstanceKind.VM,
    priority: int = PriorityClass.NORMAL,
    idempotency_key: str | None = None,
    network: str | int | None = DEFAULT_NETWORK,
    security_groups: list[str | int] | None = None,
    allocation: str | None = None,
    server_group: str | int | None = None,
    wait: bool = False,
) -> Operation:
    """Request a new VM or container; returns its create Operation (enqueued on the chosen host).

    When no host has room and ``wait`` is set, the instance waits in the admission queue (state
    queued, its quota held) instead of failing; a request no host could ever take fails at once.
    """
    from compute.services.networks import attach_to_network, default_network, networks_for

    if idempotency_key and len(idempotency_key) > IDEMPOTENCY_KEY_MAX:
        # Keys may be longer than the column (the API takes up to 255 characters): keep a digest.
        idempotency_key = "sha256:" + hashlib.sha256(idempotency_key.encode()).hexdigest()
    if idempotency_key:
        existing = Operation.objects.for_tenant(tenant).filter(idempotency_key=idempotency_key).first()
        if existing is not None:
            return existing
    if not name_is_valid(name):
        raise ServiceError("name", "name", f"invalid name {name!r}: {NAME_RULE}")
    if kind not in InstanceKind.values:
        raise ServiceError("kind", "choice", f"kind must be one of {', '.join(InstanceKind.values)}")
    container = kind == InstanceKind.CONTAINER
    if priority not in PriorityClass.values:
        raise ServiceError("priority", "choice", f"unknown priority {priority!r}")
    flavor_obj = _by_name_or_id(flavors_for(tenant), flavor, "flavor")
    image_obj = _by_name_or_id(images_for(tenant), image, "image")
    if not container and image_obj.kind == ImageKind.ROOTFS:
        raise ServiceError(
            "image", "kind", f"image {image_obj.name!r} is a container root filesystem; it cannot boot a VM"
        )
    if container and image_obj.kind != ImageKind.ROOTFS:
        raise ServiceError(
            "image", "kind", f"image {image_obj.name!r} is a VM image; a container needs a root filesystem"
        )
    if not container and flavor_obj.ram_mib < VM_MIN_RAM_MIB:
        raise ServiceError(
            "flavor",
            "min_ram",
            f"flavor {flavor_obj.name} has {flavor_obj.ram_mib} MiB; a VM needs {VM_MIN_RAM_MIB}",
        )
    allocation = allocation or flavor_obj.allocation
    if allocation not in Allocation.values:
        raise ServiceError(
            "allocation", "choice", f"allocation must be one of {', '.join(Allocation.values)}"
        )
    if allocation == Allocation.DYNAMIC and not (flavor_obj.min_ram_mib or 0) < flavor_obj.ram_mib:
        raise ServiceError(
            "allocation",
            "range",
            f"dynamic allocation needs a flavor with a minimum RAM below its RAM; {flavor_obj.name} has none",
        )
    # Dynamic: the host holds the minimum, and the adjuster grants more as demand grows.
    granted = flavor_obj.min_ram_mib if allocation == Allocation.DYNAMIC else flavor_obj.ram_mib
    if network == DEFAULT_NETWORK:
        network_obj = default_network(tenant, actor)
    elif network is None or network == "":
        network_obj = None  # a VM on the host's NAT network, a container with loopback only
    else:
        network_obj = _by_name_or_id(networks_for(tenant), network, "network")
    groups = [
        _by_name_or_id(SecurityGroup.objects.for_tenant(tenant), ref, "security_groups")
        for ref in security_groups or []
    ]
    group_obj = (
        _by_name_or_id(ServerGroup.objects.for_tenant(tenant), server_group, "server_group")
        if server_group is not None and server_group != ""
        else None
    )
    if groups and network_obj is None:
        raise ServiceError("security_groups", "network", "security groups apply to ports on a tenant network")
    if Instance.objects.for_tenant(tenant).filter(name=name, deleted_at__isnull=True).exists():
        raise Conflict("name", "unique", f"an instance named {name!r} already exists in {tenant.slug}")
    try:
        with transaction.atomic():
            instance = Instance.objects.create(
                tenant=tenant,
                name=name,
                kind=kind,
                flavor=flavor_obj,
                image=image_obj,
                priority=priority,
                vcpus=flavor_obj.vcpus,
                ram_mib=flavor_obj.ram_mib,
                current_ram_mib=granted,
                allocation=allocation,
                server_group=group_obj,
                disk_gib=0 if container else flavor_obj.disk_gib,
                vnc_password=secrets.token_hex(4),
                created_by_id=actor.user_id,
                state_deadline=deadline(),
            )
    except IntegrityError:
        raise Conflict(
            "name", "unique", f"an instance named {name!r} already exists in {tenant.slug}"
        ) from None
    # A container has no disk: its root is a shared read-only tree, /tmp is charged to its memory.
    amounts = {
        "containers" if container else "instances": 1,
        "vcpus": flavor_obj.vcpus,
        "ram_mib": flavor_obj.ram_mib,
    }
    if not container:
        amounts["disk_gib"] = flavor_obj.disk_gib
    quota_claim(tenant, amounts, f"{kind} {name}", holder=instance, priority=priority)
    attach_to_network(instance, network_obj)
    if groups:
        instance.groups_set(groups)
    operation = operation_record(instance, OperationKind.CREATE, actor, idempotency_key=idempotency_key)
    from scheduler.admission import admission_enqueue, admission_kick, admission_precheck

    try:
        place(instance, held=admission_precheck(instance, wait))
    except NoValidHost as exc:
        if wait and not exc.never:
            admission_enqueue(instance, str(exc))
            admission_kick()
            audit_log(actor=actor, action="instance.queued", target=instance, detail={"reason": str(exc)})
            return operation
        instance_fail(instance, str(exc))
        operation_finish(operation, OperationState.FAILED, str(exc))
        audit_log(
            actor=actor,
            action="instance.create",
            target=instance,
            outcome="error",
            detail={"fault": str(exc)},
        )
        return operation
    instance.state = InstanceState.SCHEDULED
    instance.save(update_fields=["state", "updated"])
    audit_log(
        actor=actor,
        action="instance.create",
        target=instance,
        detail={
            "kind": kind,
            "flavor": flavor_obj.name,
            "image": image_obj.name,
            "network": network_obj.name if network_obj else "",
            "host": instance.host.name if instance.host else "",
        },
    )
    instance_event(instance)
    operation_enqueue(operation)
    return operation


def _by_name_or_id(queryset: Any, ref: str | int, field: str) -> Any:
    lookup: dict[str, Any] = {"pk": int(ref)} if isinstance(ref, int) or str(ref).isdigit() else {"name": ref}
    obj = queryset.filter(**lookup).first()
    if obj is None:
        raise ServiceError(field, "exists", f"unknown {field} {ref!r}")
    return obj


def operation_finish(operation: Operation, state: str, error: str = "") -> None:
    """Record how an Operation ended."""
    operation.state = state
    operation.error = error[:4000]
    operation.progress = 100 if state == OperationState.SUCCEEDED else operation.progress
    operation.finished = timezone.now()
    operation.save(update_fields=["state", "error", "progress", "finished"])
    operation_event(operation)


# state an action needs -> the transient state it moves to
_TRANSITIONS: dict[str, tuple[tuple[str, ...], str]] = {
    OperationKind.START: ((InstanceState.STOPPED,), InstanceState.STARTING),
    OperationKind.STOP: ((InstanceState.RUNNING,), InstanceState.STOPPING),
    OperationKind.REBOOT: ((InstanceState.RUNNING,), InstanceState.REBOOTING),
}


def instance_lock_idle(instance: Instance) -> Instance:
    """Lock the instance row; refuse if another operation on it has not finished yet."""
    locked = Instance.objects.for_tenant(instance.tenant_id).select_for_update().get(pk=instance.pk)
    busy = (
        Operation.objects.for_tenant(instance.tenant_id)
        .filter(instance=locked, state__in=[OperationState.PENDING, OperationState.RUNNING])
        .first()
    )
    if busy is not None:
        raise Conflict("state", "busy", f"the instance is busy with a {busy.kind} operation ({busy.uuid})")
    return locked


@transaction.atomic
def instance_action(*, actor: Actor, instance: Instance, kind: str) -> Operation:
    """Start, stop or reboot: check the state, move to the transient state, enqueue the Operation."""
    allowed, transient = _TRANSITIONS[kind]
    locked = instance_lock_idle(instance)
    if locked.state not in allowed:
        raise Conflict(
            "state", "state", f"cannot {kind} an instance that is {locked.state} (needs {', '.join(allowed)})"
        )
    locked.state = transient
    locked.state_deadline = deadline()
    locked.save(update_fields=["state", "state_deadline", "updated"])
    operation = operation_record(locked, kind, actor)
    audit_log(actor=actor, action=f"instance.{kind}", target=locked)
    instance_event(locked)
    operation_enqueue(operation)
    return operation


@transaction.atomic
def instance_delete(*, actor: Actor, instance: Instance) -> Operation:
    """Delete an instance: its domain, disk and snapshots on the host, then its claims."""
    if instance.state == InstanceState.QUEUED:
        return _delete_queued(actor, instance)
    locked = instance_lock_idle(instance)
    if locked.state in (InstanceState.DELETING, InstanceState.DELETED):
        raise Conflict("state", "state", f"the instance is already {locked.state}")
    previous = locked.state
    locked.state = InstanceState.DELETING
    locked.state_deadline = deadline()
    locked.save(update_fields=["state", "state_deadline", "updated"])
    operation = operation_record(locked, OperationKind.DELETE, actor, params={"from_state": previous})
    audit_log(actor=actor, action="instance.delete", target=locked)
    instance_event(locked)
    if locked.host is None:
        # Never placed: nothing exists on any host.
        instance_deleted(locked)
        operation_finish(operation, OperationState.SUCCEEDED)
    else:
        operation_enqueue(operation)
    return operation


def _delete_queued(actor: Actor, instance: Instance) -> Operation:
    """A queued instance has nothing on any host: leave the queue, fail its create, done."""
    from scheduler.admission import admission_cancel

    locked = Instance.objects.for_tenant(instance.tenant_id).select_for_update().get(pk=instance.pk)
    if locked.state != InstanceState.QUEUED:  # admitted meanwhile: delete it the usual way
        return instance_delete(actor=actor, instance=locked)
    admission_cancel(locked, "deleted while waiting in the admission queue")
    operation = operation_record(locked, OperationKind.DELETE, actor, params={"from_state": locked.state})
    audit_log(actor=actor, action="instance.delete", target=locked)
    instance_deleted(locked)
    operation_finish(operation, OperationState.SUCCEEDED)
    return operation


def instance_deleted(instance: Instance) -> None:
    from compute.services.snapshots import snapshot_forget

    for snapshot in Snapshot.objects.for_tenant(instance.tenant_id).filter(instance=instance):
        snapshot_forget(snapshot, "instance deleted")
    instance.state = InstanceState.DELETED
    instance.deleted_at = timezone.now()
    instance.state_deadline = None
    instance.save(update_fields=["state", "deleted_at", "state_deadline", "updated"])
    release_claims(instance, "deleted")
    instance_event(instance)
    if instance.host_id is not None:
        _capacity_released()


def _capacity_released() -> None:
    from scheduler.admission import admission_kick

    admission_kick()
