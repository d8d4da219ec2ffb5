"""Instance lifecycle requests: validate, claim, record an Operation, hand it to the host's agent.

Each request is one transaction: the state change, the quota claim, the placement and the
Operation row commit together, and the agent's task is enqueued only after the commit. The steps
the services share (events, Operation rows, failing, the idle lock) are in
compute.services.lifecycle.
"""

from __future__ import annotations

import dataclasses
import hashlib
import secrets
from dataclasses import dataclass
from typing import Any

from django.db import IntegrityError, connection, transaction
from django.db.models import BooleanField, Value
from django.utils import timezone

from compute.models import (
    VM_MIN_RAM_MIB,
    Allocation,
    Flavor,
    Host,
    Image,
    ImageKind,
    Instance,
    InstanceKind,
    InstanceState,
    Network,
    Operation,
    OperationKind,
    OperationState,
    SecurityGroup,
    ServerGroup,
    Snapshot,
)
from compute.selectors import flavors_for, images_for, networks_for
from compute.services.admission import admission_cancel, admission_enqueue
from compute.services.drs_placement import instance_place_or_hold, placement_withdraw
from compute.services.floating_ips import instance_unreachable
from compute.services.keypairs import keypairs_resolve, ssh_keys_of, user_data_check
from compute.services.keys import instance_key_destroy
from compute.services.lifecycle import (
    NAME_RULE,
    admission_kick,
    deadline,
    instance_event,
    instance_fail,
    instance_lock_idle,
    name_is_valid,
    operation_enqueue,
    operation_finish,
    operation_record,
    release_claims,
)
from compute.services.networks import attach_to_network, default_network
from compute.services.snapshots import snapshot_forget
from core.errors import Conflict, ServiceError
from scheduler.admission import admission_precheck
from scheduler.services import NoValidHost
from security.audit import Actor, audit_log
from tenants.models import PriorityClass, Tenant
from tenants.services.quotas import quota_claim

IDEMPOTENCY_KEY_MAX = 100  # Operation.idempotency_key's length
_REPLAYED = "idempotent_replay"  # set (an annotation) on the Operation _replayed found
# instance_create's network when the caller names none: the tenant's own default network.
DEFAULT_NETWORK = "\x00default"


# -- create ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Build:
    """What a create request is made of, its references resolved and checked."""

    kind: str
    flavor: Flavor
    image: Image
    allocation: str
    network: Network | None
    security_groups: list[SecurityGroup]
    server_group: ServerGroup | None
    ha: bool
    # What the guest is given (its NoCloud seed): copies of the key pairs, and the user-data.
    ssh_keys: tuple[dict[str, str], ...] = ()
    user_data: str = ""

    @property
    def container(self) -> bool:
        return self.kind == InstanceKind.CONTAINER

    @property
    def granted_mib(self) -> int:
        """The RAM its host holds: all of it, or (dynamic) the minimum, the adjuster granting more
        as demand grows."""
        if self.allocation == Allocation.DYNAMIC and self.flavor.min_ram_mib is not None:
            return self.flavor.min_ram_mib
        return self.flavor.ram_mib


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
    ha: bool | None = None,
    key_pairs: list[str | int] | None = None,
    user_data: str = "",
) -> Operation:
    """Request a new VM or container; returns its create Operation (enqueued on the chosen host).

    ``key_pairs`` (the tenant's, by name or id) are copied into the instance as they are now, and
    ``user_data`` (cloud-init, text) is kept for its seed: a VM needs an image that reads them
    (Image.cloud_init); a container takes them as they are.

    When no host has room and ``wait`` is set, the instance waits in the admission queue (state
    queued, its quota held) instead of failing; a request no host could ever take fails at once.
    ``ha``: restart it on another host when its host dies (None: the flavor's choice, else on for
    VMs and off for containers).

    With an ``idempotency_key``, the tenant's creates are de-duplicated in the database: a create
    with a key the tenant already used makes nothing and returns that create's Operation as it
    stands now (``create_replayed()`` tells it apart). Creates of a tenant with the same key run one
    after the other (see _replayed), so a concurrent twin gets the first one's Operation too: never
    a second instance, nor a unique-constraint error that would undo its work. This holds without
    Redis: the API's Redis-side replay (portal.idempotency) is a fast path in front of it.
    """
    idempotency_key = _idempotency_digest(idempotency_key)
    replayed = _replayed(tenant, idempotency_key)
    if replayed is not None:
        return replayed
    _check_request(name, kind, priority)
    build = _resolve(
        actor, tenant, kind, flavor, image, allocation, network, security_groups, server_group, ha
    )
    build = _guest_inputs(tenant, build, key_pairs, user_data)
    _check_name_free(tenant, name)
    instance = _instance_new(actor, tenant, name, priority, build)
    _quota_claim(instance, build)
    _network_attach(instance, build)
    operation = operation_record(instance, OperationKind.CREATE, actor, idempotency_key=idempotency_key)
    try:
        host = _place(instance, wait)
    except NoValidHost as exc:
        if wait and not exc.never:
            _queue(actor, instance, str(exc))
        else:
            _refuse(actor, instance, operation, str(exc))
        return operation
    _schedule(actor, instance, operation, build, held=host is None)
    return operation


def _idempotency_digest(key: str | None) -> str | None:
    """Keys may be longer than the column (the API takes up to 255 characters): keep a digest."""
    if key and len(key) > IDEMPOTENCY_KEY_MAX:
        return "sha256:" + hashlib.sha256(key.encode()).hexdigest()
    return key


def _replayed(tenant: Tenant, key: str | None) -> Operation | None:
    """The Operation an earlier request with the same idempotency key made (a retry gets it back).

    First it waits for any other create of the tenant with the same key to commit or roll back: a
    transaction-scoped advisory lock on (tenant, key), taken before this transaction holds any
    other lock, so it cannot deadlock. Read committed, the query below then sees the winner's
    Operation. (Not the quota row that quota_claim locks: taken this early, it would come before
    the tenant row that default_network locks, the reverse of another create's order.) SQLite
    serialises writers itself.
    """
    if not key:
        return None
    if connection.vendor == "postgresql":
        digest = hashlib.sha256(f"nubis-create:{tenant.pk}:{key}".encode()).digest()
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT pg_advisory_xact_lock(%s)", [int.from_bytes(digest[:8], "big", signed=True)]
            )
    return (
        Operation.objects.for_tenant(tenant)
        .filter(idempotency_key=key)
        .annotate(**{_REPLAYED: Value(True, output_field=BooleanField())})
        .first()
    )


def create_replayed(operation: Operation) -> bool:
    """Whether instance_create returned the Operation of an earlier create with the same key."""
    return bool(getattr(operation, _REPLAYED, False))


def _check_request(name: str, kind: str, priority: int) -> None:
    if not name_is_valid(name):
        raise ServiceError("name", "name", f"invalid name {name!r}: {NAME_RULE}")
    if kind not in InstanceKind.values:
        raise ServiceError("kind", "choice", f"kind must be one of {', '.join(InstanceKind.values)}")
    if priority not in PriorityClass.values:
        raise ServiceError("priority", "choice", f"unknown priority {priority!r}")


def _resolve(
    actor: Actor,
    tenant: Tenant,
    kind: str,
    flavor: str | int,
    image: str | int,
    allocation: str | None,
    network: str | int | None,
    security_groups: list[str | int] | None,
    server_group: str | int | None,
    ha: bool | None = None,
) -> _Build:
    """The references by name or id, each checked as soon as it is known (in this order)."""
    flavor_obj = _by_name_or_id(flavors_for(tenant), flavor, "flavor")
    image_obj = _by_name_or_id(images_for(tenant), image, "image")
    _check_image(kind, image_obj)
    _check_flavor(kind, flavor_obj)
    allocation = _allocation_of(flavor_obj, allocation)
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
    if ha is None:
        ha = flavor_obj.ha if flavor_obj.ha is not None else kind == InstanceKind.VM
    return _Build(kind, flavor_obj, image_obj, allocation, network_obj, groups, group_obj, bool(ha))


def _guest_inputs(
    tenant: Tenant, build: _Build, key_pairs: list[str | int] | None, user_data: str | None
) -> _Build:
    """The request's key pairs (copied) and user-data, checked against what its image reads."""
    keys = keypairs_resolve(tenant, key_pairs)
    text = user_data_check(user_data)
    if not build.container and not build.image.cloud_init:
        field = "key_pairs" if keys else "user_data" if text else None
        if field is not None:
            raise ServiceError(
                field,
                "image",
                f"image {build.image.name!r} does not read SSH keys or user-data (it has no cloud-init); "
                "choose a cloud image, or leave key_pairs and user_data out",
            )
    return dataclasses.replace(build, ssh_keys=tuple(ssh_keys_of(keys)), user_data=text)


def _check_image(kind: str, image: Image) -> None:
    """A VM boots a disk image; a container runs a root filesystem."""
    container = kind == InstanceKind.CONTAINER
    if not container and image.kind == ImageKind.ROOTFS:
        raise ServiceError(
            "image", "kind", f"image {image.name!r} is a container root filesystem; it cannot boot a VM"
        )
    if container and image.kind != ImageKind.ROOTFS:
        raise ServiceError(
            "image", "kind", f"image {image.name!r} is a VM image; a container needs a root filesystem"
        )


def _check_flavor(kind: str, flavor: Flavor) -> None:
    if kind != InstanceKind.CONTAINER and flavor.ram_mib < VM_MIN_RAM_MIB:
        raise ServiceError(
            "flavor",
            "min_ram",
            f"flavor {flavor.name} has {flavor.ram_mib} MiB; a VM needs {VM_MIN_RAM_MIB}",
        )


def _allocation_of(flavor: Flavor, allocation: str | None) -> str:
    """The request's allocation, else the flavor's; dynamic needs a flavor with a minimum below its RAM."""
    allocation = allocation or flavor.allocation
    if allocation not in Allocation.values:
        raise ServiceError(
            "allocation", "choice", f"allocation must be one of {', '.join(Allocation.values)}"
        )
    minimum = flavor.min_ram_mib
    if allocation == Allocation.DYNAMIC and (minimum is None or not minimum < flavor.ram_mib):
        raise ServiceError(
            "allocation",
            "range",
            f"dynamic allocation needs a flavor with a minimum RAM below its RAM; {flavor.name} has none",
        )
    return allocation


def _check_name_free(tenant: Tenant, name: str) -> None:
    if Instance.objects.for_tenant(tenant).filter(name=name, deleted_at__isnull=True).exists():
        raise Conflict("name", "unique", f"an instance named {name!r} already exists in {tenant.slug}")


def _instance_new(actor: Actor, tenant: Tenant, name: str, priority: int, build: _Build) -> Instance:
    """The instance's row (a concurrent create of the same name loses here: a Conflict)."""
    try:
        with transaction.atomic():
            return Instance.objects.create(
                tenant=tenant,
                name=name,
                kind=build.kind,
                flavor=build.flavor,
                image=build.image,
                priority=priority,
                vcpus=build.flavor.vcpus,
                ram_mib=build.flavor.ram_mib,
                current_ram_mib=build.granted_mib,
                allocation=build.allocation,
                server_group=build.server_group,
                ha=build.ha,
                disk_gib=0 if build.container else build.flavor.disk_gib,
                ssh_keys=list(build.ssh_keys),
                user_data=build.user_data,
                vnc_password=secrets.token_hex(4),
                created_by_id=actor.user_id,
                state_deadline=deadline(),
            )
    except IntegrityError:
        raise Conflict(
            "name", "unique", f"an instance named {name!r} already exists in {tenant.slug}"
        ) from None


def _quota_claim(instance: Instance, build: _Build) -> None:
    """The tenant's quota for the instance: a container has no disk (its root is a shared read-only
    tree, its /tmp is charged to its memory)."""
    amounts = {
        "containers" if build.container else "instances": 1,
        "vcpus": build.flavor.vcpus,
        "ram_mib": build.flavor.ram_mib,
    }
    if not build.container:
        amounts["disk_gib"] = build.flavor.disk_gib
    quota_claim(
        instance.tenant, amounts, f"{build.kind} {instance.name}", holder=instance, priority=instance.priority
    )


def _network_attach(instance: Instance, build: _Build) -> None:
    """Its port on the network (MAC and address), and its security groups."""
    attach_to_network(instance, build.network)
    if build.security_groups:
        instance.groups_set(build.security_groups)


def _place(instance: Instance, wait: bool) -> Host | None:
    """The queue goes first (scheduler.admission.admission_precheck), then a host is claimed (None:
    DRS manual mode, staff place it)."""
    return instance_place_or_hold(instance, held=admission_precheck(instance, wait))


def _queue(actor: Actor, instance: Instance, reason: str) -> None:
    """No room now and it may wait: it joins the admission queue, its quota held."""
    admission_enqueue(instance, reason)
    audit_log(actor=actor, action="instance.queued", target=instance, detail={"reason": reason})


def _refuse(actor: Actor, instance: Instance, operation: Operation, fault: str) -> None:
    """No host for it (now, and it may not wait; or ever): it fails, and so does its create."""
    instance_fail(instance, fault)
    operation_finish(operation, OperationState.FAILED, fault)
    audit_log(
        actor=actor, action="instance.create", target=instance, outcome="error", detail={"fault": fault}
    )


def _schedule(actor: Actor, instance: Instance, operation: Operation, build: _Build, held: bool) -> None:
    """Placed: scheduled, audited, and its create handed to its host's agent after commit. ``held``:
    it waits for staff to place it instead (compute.services.drs_placement), its create pending."""
    if not held:
        instance.state = InstanceState.SCHEDULED
        instance.save(update_fields=["state", "updated"])
    audit_log(
        actor=actor,
        action="instance.create",
        target=instance,
        detail={
            "kind": build.kind,
            "flavor": build.flavor.name,
            "image": build.image.name,
            "network": build.network.name if build.network else "",
            "host": instance.host.name if instance.host else "",
            # The key pairs' names only; the user-data is its owner's, never in the audit log.
            "key_pairs": [key["name"] for key in build.ssh_keys],
            **({"held": "for staff to place it (DRS manual mode)"} if held else {}),
        },
    )
    if held:
        return
    instance_event(instance)
    operation_enqueue(operation)


def _by_name_or_id(queryset: Any, ref: str | int, field: str) -> Any:
    lookup: dict[str, Any] = {"pk": int(ref)} if isinstance(ref, int) or str(ref).isdigit() else {"name": ref}
    obj = queryset.filter(**lookup).first()
    if obj is None:
        raise ServiceError(field, "exists", f"unknown {field} {ref!r}")
    return obj


# state an action needs -> the transient state it moves to
_TRANSITIONS: dict[str, tuple[tuple[str, ...], str]] = {
    OperationKind.START: ((InstanceState.STOPPED,), InstanceState.STARTING),
    OperationKind.STOP: ((InstanceState.RUNNING,), InstanceState.STOPPING),
    OperationKind.REBOOT: ((InstanceState.RUNNING,), InstanceState.REBOOTING),
}


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
    if instance.state in (InstanceState.QUEUED, InstanceState.AWAITING):
        return _delete_waiting(actor, instance)
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


def _delete_waiting(actor: Actor, instance: Instance) -> Operation:
    """A queued instance, or one waiting for staff to place it, has nothing on any host: it leaves
    the queue (or its placement is withdrawn), its create fails, done."""
    locked = Instance.objects.for_tenant(instance.tenant_id).select_for_update().get(pk=instance.pk)
    if locked.state == InstanceState.QUEUED:
        admission_cancel(locked, "deleted while waiting in the admission queue")
    elif locked.state == InstanceState.AWAITING:
        placement_withdraw(locked, "deleted while waiting for staff to place it")
    else:  # admitted or placed meanwhile: delete it the usual way
        return instance_delete(actor=actor, instance=locked)
    operation = operation_record(locked, OperationKind.DELETE, actor, params={"from_state": locked.state})
    audit_log(actor=actor, action="instance.delete", target=locked)
    instance_deleted(locked)
    operation_finish(operation, OperationState.SUCCEEDED)
    return operation


def instance_deleted(instance: Instance) -> None:
    """The instance is gone (from its host, or it never had one): its snapshots, its data key and
    its claims too."""
    for snapshot in Snapshot.objects.for_tenant(instance.tenant_id).filter(instance=instance):
        snapshot_forget(snapshot, "instance deleted")
    instance.state = InstanceState.DELETED
    instance.deleted_at = timezone.now()
    instance.state_deadline = None
    instance.save(update_fields=["state", "deleted_at", "state_deadline", "updated"])
    instance_unreachable(instance)  # its floating address stays the tenant's, its forwards go
    instance_key_destroy(instance)  # crypto-erase: no copy of its disks opens again
    release_claims(instance, "deleted")
    instance_event(instance)
    if instance.host_id is not None:
        admission_kick()  # its room is free: requests waiting for room may fit now
