"""Agent side of dynamic allocation: bring each instance's live memory and CPU to the grants the
database holds.

The adjuster (scheduler/allocation.py) decides and saves ``current_ram_mib`` and
``current_cpu_pct``; this applies them on the host. Memory: a VM's balloon target through libvirt,
a container's memory limit through ``runc update``. CPU (``Instance.cpu_grant_pct``): a VM's CPU
shares through libvirt (live and in its definition), a container's CFS quota through ``runc
update``. A container's bundle is rewritten too, so a restart keeps both. Safe to run twice: what
is already live is left alone.
"""

from __future__ import annotations

import logging

from django.db import transaction

from compute.drivers.base import DriverError, GuestDriver, VmDriver
from compute.models import (
    Allocation,
    Host,
    Instance,
    InstanceKind,
    InstanceState,
    Operation,
    OperationState,
)
from compute.services.containers import container_config, container_driver, prepared_rootfs

log = logging.getLogger(__name__)

MEMORY = "memory"
CPU = "cpu"
UNITS = {MEMORY: " MiB", CPU: "%"}


def _live_mib(instance: Instance, vm_driver: VmDriver) -> int | None:
    """The memory the instance has now, in MiB; None when it does not run."""
    name = instance.domain_name
    if instance.kind == InstanceKind.VM:
        if vm_driver.power_state(name) != "running":
            return None
        actual = vm_driver.memory_stats(name).get("actual")  # the balloon's size, KiB
        return None if actual is None else actual // 1024
    containers = container_driver()
    if containers.power_state(name) != "running":
        return None
    return containers.memory_limit_mib(name)


def _live_cpu(instance: Instance, driver: GuestDriver) -> tuple[bool, int | None]:
    """(whether it runs, the CPU it holds now in % of one CPU, None without a limit)."""
    name = instance.domain_name
    if driver.power_state(name) != "running":
        return False, None
    return True, driver.cpu_pct(name)


def _apply_one(pk: int, vm_driver: VmDriver, resource: str = MEMORY) -> str:
    """Apply one instance's ``resource`` grant under its row lock; what happened, in a word or two."""
    with transaction.atomic():
        instance = (
            Instance.objects.unscoped()
            .select_for_update(of=("self",))
            .select_related("flavor", "image")
            .filter(pk=pk)
            .first()
        )
        if instance is None or instance.state != InstanceState.RUNNING:
            return "not running"
        if instance.allocation != Allocation.DYNAMIC:
            return "static"
        busy = Operation.objects.for_tenant(instance.tenant_id).filter(
            instance=instance, state__in=[OperationState.PENDING, OperationState.RUNNING]
        )
        if busy.exists():
            return "busy"  # a resize or a stop is under way: it sets the memory itself
        container = instance.kind == InstanceKind.CONTAINER
        driver: GuestDriver = container_driver() if container else vm_driver
        if resource == MEMORY:
            live = _live_mib(instance, vm_driver)
            grant = instance.current_ram_mib
            if live is None:
                return "not running"
        else:
            running, live = _live_cpu(instance, driver)
            grant = instance.cpu_grant_pct
            if not running:
                return "not running"
        if live == grant:
            return "unchanged"
        if resource == MEMORY:
            driver.set_memory(instance.domain_name, grant)
        else:
            driver.set_cpu(instance.domain_name, grant)
        if container:
            # The bundle holds the limits of the next start (as a resize leaves them).
            config = container_config(instance, prepared_rootfs(instance))
            container_driver().save_config(instance.domain_name, config)
        unit = UNITS[resource]
        log.info("%s %s %s: %s -> %d%s", resource, instance.kind, instance.uuid, live, grant, unit)
        return f"{'none' if live is None else live} -> {grant}{unit}"


def memory_apply(host: Host, vm_driver: VmDriver) -> dict[str, str]:
    """Apply the memory grants of ``host``'s running dynamic instances; {instance uuid: what
    happened}.

    A failed move is logged and reported, and the others go on: the instance stays as it is (a
    balloon that did not move is no reason to put it in error), and the next pass tries again.
    """
    return _apply_all(host, vm_driver, MEMORY)


def cpu_apply(host: Host, vm_driver: VmDriver) -> dict[str, str]:
    """Apply the CPU grants of ``host``'s running dynamic instances (containers' quotas, VMs'
    shares); {instance uuid: what happened}, failures as in :func:`memory_apply`."""
    return _apply_all(host, vm_driver, CPU)


def _apply_all(host: Host, vm_driver: VmDriver, resource: str) -> dict[str, str]:
    rows = (
        Instance.objects.unscoped()
        .filter(host=host, state=InstanceState.RUNNING, allocation=Allocation.DYNAMIC)
        .order_by("pk")
    )
    results: dict[str, str] = {}
    for pk, uuid in rows.values_list("pk", "uuid"):
        try:
            results[str(uuid)] = _apply_one(pk, vm_driver, resource)
        except (DriverError, OSError, ValueError) as exc:
            log.warning("%s %s: could not apply the grant: %s", resource, uuid, exc)
            results[str(uuid)] = f"failed: {exc}"
    return results
