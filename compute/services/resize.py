"""Resizing VMs: memory online through the balloon, vCPUs and RAM offline with new claims."""

from __future__ import annotations

from django.db import transaction

from compute.models import (
    CONTAINER_MIN_RAM_MIB,
    VM_MIN_RAM_MIB,
    Host,
    Instance,
    InstanceKind,
    InstanceState,
    Operation,
    OperationKind,
)
from compute.services.lifecycle import (
    admission_kick,
    deadline,
    instance_event,
    instance_lock_idle,
    operation_enqueue,
    operation_record,
    release_claims,
)
from core.errors import Conflict, ServiceError
from scheduler.services import host_table_of
from security.audit import Actor, audit_log
from tenants.services.quotas import quota_claim


@transaction.atomic
def instance_set_memory(*, actor: Actor, instance: Instance, memory_mib: int) -> Operation:
    """Move a running instance's memory between the flavor's minimum and its size, online.

    A VM's goes through the balloon; a container's is its memory cgroup limit (`runc update`).
    """
    locked = instance_lock_idle(instance)
    flavor = locked.flavor
    container = locked.kind == InstanceKind.CONTAINER
    if not container and not flavor.balloon:
        raise ServiceError("memory_mib", "balloon", f"flavor {flavor.name} has no memory balloon")
    if locked.state != InstanceState.RUNNING:
        raise Conflict(
            "state", "state", f"memory changes online only while running; the instance is {locked.state}"
        )
    if container and memory_mib < CONTAINER_MIN_RAM_MIB:
        raise ServiceError(
            "memory_mib",
            "min_value",
            f"memory_mib {memory_mib} is below the container runtime's minimum "
            f"of {CONTAINER_MIN_RAM_MIB} MiB",
        )
    if container:
        low = max(flavor.min_ram_mib or CONTAINER_MIN_RAM_MIB, CONTAINER_MIN_RAM_MIB)
    else:
        low = flavor.min_ram_mib or locked.ram_mib
    if not low <= memory_mib <= locked.ram_mib:
        raise ServiceError(
            "memory_mib",
            "range",
            f"memory must be between {low} and {locked.ram_mib} MiB for flavor {flavor.name}",
        )
    locked.state = InstanceState.RESIZING
    locked.state_deadline = deadline()
    locked.save(update_fields=["state", "state_deadline", "updated"])
    operation = operation_record(
        locked, OperationKind.RESIZE, actor, params={"memory_mib": memory_mib, "back_to": "running"}
    )
    audit_log(actor=actor, action="instance.memory", target=locked, detail={"memory_mib": memory_mib})
    instance_event(locked)
    operation_enqueue(operation)
    return operation


@transaction.atomic
def instance_resize(*, actor: Actor, instance: Instance, vcpus: int, ram_mib: int) -> Operation:
    """Change vCPUs and RAM; quota and host capacity are claimed for the new size.

    A VM must be stopped; a container changes live (its cgroup limits), running or stopped.
    """
    locked = instance_lock_idle(instance)
    container = locked.kind == InstanceKind.CONTAINER
    allowed = (InstanceState.STOPPED, InstanceState.RUNNING) if container else (InstanceState.STOPPED,)
    if locked.state not in allowed:
        raise Conflict("state", "state", f"stop the instance before resizing it; it is {locked.state}")
    if vcpus < 1:
        raise ServiceError("vcpus", "min_value", "vcpus must be at least 1")
    if container and ram_mib < CONTAINER_MIN_RAM_MIB:
        raise ServiceError(
            "ram_mib",
            "min_value",
            f"ram_mib {ram_mib} is below the container runtime's minimum of {CONTAINER_MIN_RAM_MIB} MiB",
        )
    floor = max(VM_MIN_RAM_MIB, locked.flavor.min_ram_mib or 0)
    if not container and ram_mib < floor:
        raise ServiceError("ram_mib", "min_value", f"ram_mib must be at least {floor}")
    back_to = locked.state
    host = Host.objects.select_for_update().get(pk=locked.host_id) if locked.host_id is not None else None
    if host is not None:
        # The instance's own reservation comes back; the growth must fit in what the host has free.
        free_vcpus, free_ram = host_table_of(host).free()[:2, 0]
        if vcpus - locked.vcpus > free_vcpus or ram_mib - locked.ram_mib > free_ram:
            raise Conflict(
                "ram_mib", "capacity", f"host {host.name} has no room for {vcpus} vCPUs / {ram_mib} MiB"
            )
    release_claims(locked, "resized")
    quota_claim(
        locked.tenant,
        _amounts(locked, vcpus, ram_mib),
        f"instance {locked.name} resized",
        holder=locked,
        priority=locked.priority,
    )
    old = {"vcpus": locked.vcpus, "ram_mib": locked.ram_mib, "current_ram_mib": locked.current_ram_mib}
    locked.vcpus, locked.ram_mib, locked.current_ram_mib = vcpus, ram_mib, ram_mib
    locked.state = InstanceState.RESIZING
    locked.state_deadline = deadline()
    locked.save(update_fields=["vcpus", "ram_mib", "current_ram_mib", "state", "state_deadline", "updated"])
    operation = operation_record(
        locked, OperationKind.RESIZE, actor, params={"from": old, "back_to": back_to}
    )
    audit_log(
        actor=actor,
        action="instance.resize",
        target=locked,
        detail={"from": old, "vcpus": vcpus, "ram_mib": ram_mib},
    )
    instance_event(locked)
    operation_enqueue(operation)
    return operation


def _amounts(instance: Instance, vcpus: int, ram_mib: int) -> dict[str, int]:
    """The quota an instance of this size holds."""
    container = instance.kind == InstanceKind.CONTAINER
    return {"containers" if container else "instances": 1, "vcpus": vcpus, "ram_mib": ram_mib} | (
        {} if container else {"disk_gib": instance.disk_gib}
    )


def resize_failed(instance: Instance, operation: Operation, error: str) -> str:
    """The host refused a resize: the database says again what the guest has; returns the fault.

    Runs in the agent, inside the transaction that records the failure. A refused resize leaves
    the guest as it was (libvirt keeps the definition it had when it refuses a new one; the agent
    puts a container's old limits back), so the instance gets back its old vCPUs and RAM, the
    quota claim for them (even over a limit lowered meanwhile: the guest holds them) and with them
    its hold on the host, which is read from these fields. ``instance`` is updated in place.
    """
    params = operation.params
    locked = Instance.objects.for_tenant(instance.tenant_id).select_for_update().get(pk=instance.pk)
    if "memory_mib" in params:
        # An online memory change records nothing before it succeeds: keep what the database has.
        instance.current_ram_mib = locked.current_ram_mib
        return f"memory change to {params['memory_mib']} MiB failed: {error}"
    old = params.get("from") or {}
    if not old:
        return f"resize failed: {error}"
    vcpus, ram_mib = int(old["vcpus"]), int(old["ram_mib"])
    current = int(old.get("current_ram_mib", ram_mib))
    refused = {"vcpus": locked.vcpus, "ram_mib": locked.ram_mib}
    frees_room = vcpus < locked.vcpus or ram_mib < locked.ram_mib
    release_claims(locked, "resize failed")
    quota_claim(
        locked.tenant,
        _amounts(locked, vcpus, ram_mib),
        f"instance {locked.name} kept its size: resize failed",
        holder=locked,
        enforce=False,
    )
    locked.vcpus, locked.ram_mib, locked.current_ram_mib = vcpus, ram_mib, current
    locked.save(update_fields=["vcpus", "ram_mib", "current_ram_mib", "updated"])
    instance.vcpus, instance.ram_mib, instance.current_ram_mib = vcpus, ram_mib, current
    fault = (
        f"resize to {refused['vcpus']} vCPUs / {refused['ram_mib']} MiB failed; "
        f"it keeps {vcpus} vCPUs / {ram_mib} MiB: {error}"
    )
    audit_log(
        actor=Actor.system(f"agent@{locked.host.name if locked.host else '?'}"),
        action="instance.resize",
        target=locked,
        outcome="error",
        detail={"refused": refused, "kept": {"vcpus": vcpus, "ram_mib": ram_mib}, "error": error[:500]},
    )
    if frees_room:
        # The host got back the room the bigger size had taken: requests waiting for it may fit.
        admission_kick()
    return fault
