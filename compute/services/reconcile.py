"""The reconciler: bring the database and the hypervisor of one host back into agreement.

- Power state: a running or stopped instance follows what libvirt reports (a guest that powered
  itself off is stopped; a domain that vanished puts the instance in error).
- Stuck transient states: past its deadline, an instance is completed if the host shows the
  work done, and otherwise moved to error with a fault (its create leftovers removed).
- Orphans: a domain or instance directory with no live instance row is reported, then removed
  once it has stayed orphaned for the grace period.
- Volume files (``volumes/`` of the instance store) whose volume is deleted or was never recorded,
  and half-made ones of a volume no longer being created, are orphans the same way: a crash
  between a volume's file work and its record leaves them.
- Unpacked container root filesystems that no container uses are removed after
  NUBIS_ROOTFS_GRACE (compute.services.containers.rootfs_collect).
"""

from __future__ import annotations

import logging
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from compute.drivers.base import ContainerDriver, DriverError, GuestDriver, VmDriver
from compute.drivers.host import store_entries
from compute.drivers.libvirt import PROBE_PREFIX
from compute.drivers.network import PlumbingError
from compute.models import (
    TRANSIENT_STATES,
    Host,
    Instance,
    InstanceKind,
    InstanceState,
    Operation,
    OperationKind,
    OperationState,
    Volume,
    VolumeState,
    domain_uuid,
)
from compute.services.lifecycle import instance_event, instance_fail, operation_finish
from compute.services.migration_agent import migration_settle
from compute.services.ports import host_networks_sync, port_detach
from core.redis import redis_client
from security.audit import Actor, audit_log

logger = logging.getLogger(__name__)


@dataclass
class Report:
    synced: list[str] = field(default_factory=list)
    completed: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    orphans_seen: list[str] = field(default_factory=list)
    orphans_removed: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, list[str]]:
        return dict(self.__dict__)


def sync_power(instance: Instance, driver: GuestDriver, report: Report | None = None) -> None:
    """Make a running/stopped instance follow the hypervisor (used by events and the reconciler)."""
    with transaction.atomic():
        locked = Instance.objects.unscoped().select_for_update().filter(pk=instance.pk).first()
        if locked is None or locked.state not in (InstanceState.RUNNING, InstanceState.STOPPED):
            return
        if locked.host_id != instance.host_id:
            return  # it moved to another host since the caller read it: that host's to follow
        power = driver.power_state(locked.domain_name)
        if power is None:
            instance_fail(locked, "the domain vanished from the host")
            if report is not None:
                report.failed.append(locked.name)
            return
        target = {"running": InstanceState.RUNNING, "stopped": InstanceState.STOPPED}.get(power)
        if target is None or target == locked.state:
            return
        locked.state = target
        locked.save(update_fields=["state", "updated"])
        instance_event(locked, reason="hypervisor")
        if report is not None:
            report.synced.append(f"{locked.name}:{target}")


def container_check(instance: Instance, driver: ContainerDriver, report: Report | None = None) -> None:
    """Record OOM kills of a container (the kernel counts them in its memory cgroup), then follow
    its power state: a container whose init died, OOM-killed or not, is stopped."""
    kills = driver.oom_kills(instance.domain_name)
    if kills is not None and kills > instance.oom_kills:
        new = kills - instance.oom_kills
        fault = (
            f"out of memory: the kernel's OOM killer killed {new} process(es) at the container's "
            f"{instance.current_ram_mib} MiB limit ({kills} in all)"
        )
        now = timezone.now()
        with transaction.atomic():  # the count, the fault and the audit record are seen together
            Instance.objects.unscoped().filter(pk=instance.pk).update(
                oom_kills=kills, fault=fault, fault_at=now, updated=now
            )
            instance.oom_kills, instance.fault, instance.fault_at = kills, fault, now
            instance_event(instance, reason="oom", oom_kills=kills)
            audit_log(
                actor=Actor.system(f"agent@{instance.host.name if instance.host else '?'}"),
                action="instance.oom",
                outcome="error",
                target=instance,
                detail={"oom_kills": kills, "limit_mib": instance.current_ram_mib},
            )
    sync_power(instance, driver, report)


def _learn_address(instance: Instance, driver: VmDriver) -> None:
    """Record the address the guest got by DHCP, once it has one."""
    address = driver.ip_address(instance.domain_name)
    if address is not None:
        Instance.objects.unscoped().filter(pk=instance.pk, ip_address__isnull=True).update(ip_address=address)
        instance.ip_address = address
        instance_event(instance, ip_address=address)


def _settle_stuck(instance: Instance, driver: GuestDriver, report: Report) -> None:
    """An instance past its transient-state deadline: finish it if the host shows it done, else fail it."""
    op = (
        Operation.objects.for_tenant(instance.tenant_id)
        .filter(instance=instance, state__in=[OperationState.PENDING, OperationState.RUNNING])
        .order_by("-created")
        .first()
    )
    power = driver.power_state(instance.domain_name)
    done_when: dict[str, bool] = {
        InstanceState.BUILDING: power == "running",
        InstanceState.SCHEDULED: power == "running",
        InstanceState.STARTING: power == "running",
        InstanceState.REBOOTING: power == "running",
        InstanceState.STOPPING: power == "stopped",
        InstanceState.DELETING: power is None,
    }
    done = done_when.get(instance.state, False)
    with transaction.atomic():
        if done:
            if instance.state == InstanceState.DELETING:
                from compute.services.instances import instance_deleted

                instance_deleted(instance)
            else:
                instance.state = InstanceState.RUNNING if power == "running" else InstanceState.STOPPED
                instance.state_deadline = None
                instance.save(update_fields=["state", "state_deadline", "updated"])
                instance_event(instance, reason="reconciler")
            if op is not None:
                operation_finish(op, OperationState.SUCCEEDED)
            report.completed.append(instance.name)
            return
        fault = f"stuck in {instance.state} past its deadline; the reconciler gave up on it"
        if op is not None and op.kind == OperationKind.CREATE:
            try:
                driver.undefine(instance.domain_name)
                port_detach(instance)
            finally:
                driver.remove_files(str(Path(settings.NUBIS_INSTANCE_DIR) / str(instance.uuid)))
        instance_fail(instance, fault)
        if op is not None:
            operation_finish(op, OperationState.FAILED, fault)
        report.failed.append(instance.name)


def _settle_move(instance: Instance, driver: GuestDriver, report: Report, now: Any) -> None:
    """A VM moving with no operation left to finish the move (its agent died and the claim watch
    gave up on it), or past its deadline: find where it runs and make the database say so."""
    op = (
        Operation.objects.for_tenant(instance.tenant_id)
        .filter(instance=instance, state__in=[OperationState.PENDING, OperationState.RUNNING])
        .first()
    )
    stuck = instance.state_deadline is not None and instance.state_deadline < now
    target = instance.migration_host
    if (op is not None and not stuck) or target is None or not isinstance(driver, VmDriver):
        return
    where = migration_settle(instance, driver, target, wait=0)
    if where == "moving":
        return  # a switch-over under way: the next pass sees how it ended
    if op is not None:
        if where == "target":
            operation_finish(op, OperationState.SUCCEEDED)
        else:
            operation_finish(
                op, OperationState.FAILED, f"the move outlived its deadline; the VM is on the {where}"
            )
    if where == "nowhere":
        instance_fail(instance, "the VM was moving when its agent stopped, and runs on neither host now")
        report.failed.append(instance.name)
    else:
        report.completed.append(f"{instance.name}:on {where}")


def _orphan_key(host: Host, kind: str, name: str) -> str:
    return f"nubis:orphan:{host.name}:{kind}:{name}"


def _orphan(host: Host, kind: str, name: str, report: Report) -> bool:
    """Record when an orphan was first seen; True once it has outlived the grace period."""
    client = redis_client()
    key = _orphan_key(host, kind, name)
    now = time.time()
    first: bytes | None = client.get(key)  # type: ignore[assignment]
    if first is None:
        client.set(key, now, ex=7 * 86400)
        report.orphans_seen.append(f"{kind}:{name}")
        audit_log(
            actor=Actor.system(f"reconciler@{host.name}"),
            action="host.orphan",
            outcome="error",
            target_type=kind,
            target_id=name,
            target_repr=f"{kind} {name} on {host.name}",
            detail={"grace_seconds": settings.NUBIS_ORPHAN_GRACE},
        )
        return settings.NUBIS_ORPHAN_GRACE == 0
    return now - float(first) >= settings.NUBIS_ORPHAN_GRACE


def _volume_files_collect(host: Host, report: Report) -> list[str]:
    """Remove volume files no volume owns once they outlive the orphan grace (module docstring).
    The store may be shared by every host: each agent's pass may take them, removal is idempotent."""
    directory = Path(settings.NUBIS_INSTANCE_DIR) / "volumes"
    try:
        names = sorted(entry.name for entry in directory.iterdir() if entry.is_file())
    except FileNotFoundError:
        return []
    if not names:
        return []
    volumes = Volume.objects.unscoped().exclude(state=VolumeState.DELETED)
    owned = {str(u) for u in volumes.values_list("uuid", flat=True)}
    making = {str(u) for u in volumes.filter(state=VolumeState.CREATING).values_list("uuid", flat=True)}
    removed: list[str] = []
    for name in names:
        stem, _, suffix = name.partition(".")
        try:
            if str(uuid.UUID(stem)) != stem:
                continue
        except ValueError:
            continue  # not a volume's file
        if stem in (making if suffix == "partial" else owned):
            continue
        if _orphan(host, "volume", name, report):
            (directory / name).unlink(missing_ok=True)
            redis_client().delete(_orphan_key(host, "volume", name))
            removed.append(name)
    return removed


def reconcile_host(host: Host, driver: VmDriver, containers: ContainerDriver | None = None) -> Report:
    """One reconciler pass over this host: its VMs through ``driver``, its containers through runc."""
    from compute.services.containers import container_driver, rootfs_collect

    containers = containers or container_driver()
    report = Report()
    now = timezone.now()
    instances = list(
        Instance.objects.unscoped()
        .filter(host=host)
        .exclude(state=InstanceState.DELETED)
        .select_related("flavor")
    )
    for instance in instances:
        own: GuestDriver = containers if instance.kind == InstanceKind.CONTAINER else driver
        try:
            if instance.state in (InstanceState.RUNNING, InstanceState.STOPPED):
                if instance.kind == InstanceKind.CONTAINER:
                    container_check(instance, containers, report)  # OOM kills, then power
                else:
                    sync_power(instance, driver, report)
                    # A container's address is Nubis's own, given with its port; a VM's is learnt.
                    if instance.state == InstanceState.RUNNING and instance.ip_address is None:
                        _learn_address(instance, driver)
            elif instance.state == InstanceState.MIGRATING:
                _settle_move(instance, own, report, now)
            elif (
                instance.state in TRANSIENT_STATES
                and instance.state_deadline
                and instance.state_deadline < now
            ):
                _settle_stuck(instance, own, report)
        except DriverError as exc:
            logger.warning("reconcile %s: %s", instance.uuid, exc)

    # A domain is an orphan only if no live instance anywhere claims it: agents of several hosts
    # may share one libvirt daemon (the lab, the tests), and each must leave the others' guests be.
    live = {
        str(u)
        for u in Instance.objects.unscoped()
        .exclude(state=InstanceState.DELETED)
        .values_list("uuid", flat=True)
    }
    prefix = settings.NUBIS_DOMAIN_PREFIX
    guests: tuple[tuple[str, GuestDriver], ...] = (("domain", driver), ("container", containers))
    for kind, own in guests:
        for name in own.list_guests(prefix):
            uid = domain_uuid(name)
            if uid is None or uid in live:
                continue
            if _orphan(host, kind, name, report):
                own.undefine(name)
                redis_client().delete(_orphan_key(host, kind, name))
                report.orphans_removed.append(f"{kind}:{name}")
    report.orphans_removed += [f"probe:{name}" for name in driver.remove_stale_probes()]
    root = Path(settings.NUBIS_INSTANCE_DIR)
    store = store_entries(str(root))
    for entry in store:
        if entry.name.startswith(PROBE_PREFIX) and entry.age_s > 300:
            driver.remove_files(str(root / entry.name))
            report.orphans_removed.append(f"probe-disk:{entry.name}")
    # Listed once, after the domain pass: a directory whose domain still exists waits for it.
    remaining = set(driver.list_guests(prefix)) | set(containers.list_guests(prefix))
    for entry in store:
        uid = domain_uuid(prefix + entry.name)
        if uid is None or uid in live or not entry.is_dir:
            continue
        if f"{prefix}{uid}" in remaining:
            continue
        if _orphan(host, "disk", entry.name, report):
            driver.remove_files(str(root / entry.name))
            redis_client().delete(_orphan_key(host, "disk", entry.name))
            report.orphans_removed.append(f"disk:{entry.name}")
    report.orphans_removed += [f"volume:{name}" for name in _volume_files_collect(host, report)]
    try:
        report.orphans_removed += [f"rootfs:{name}" for name in rootfs_collect(host.name)]
    except OSError as exc:
        logger.warning("reconcile %s: unpacked root filesystems: %s", host.name, exc)
    try:
        networks = host_networks_sync(host)
        report.orphans_removed += [f"bridge:{b}" for b in networks["removed_bridges"]]
        report.orphans_removed += [f"port:{p}" for p in networks["removed_ports"]]
        report.orphans_removed += [f"rules:{r}" for r in networks["removed_rules"]]
    except PlumbingError as exc:
        logger.warning("reconcile %s: networks: %s", host.name, exc)
    if any(report.as_dict().values()):
        logger.info("reconcile %s: %s", host.name, report.as_dict())
    return report
