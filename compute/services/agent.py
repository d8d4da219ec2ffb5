"""What the compute agent does with an Operation: idempotent steps, recorded as they happen.

Celery may deliver a task twice and the agent may die between any two steps, so every step
checks before it acts (a disk that exists is not made again, a defined domain is not defined
again), and the last completed step is stored on the Operation for the reconciler.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import time
from pathlib import Path
from typing import Any

from django.conf import settings
from django.db import InterfaceError, OperationalError, close_old_connections, connection, transaction
from django.utils import timezone
from redis.exceptions import LockError

from compute.drivers.base import (
    ContainerDriver,
    DriverError,
    GuestDriver,
    GuestSpec,
    MigrationStats,
    VmDriver,
)
from compute.models import (
    Host,
    HostState,
    Instance,
    InstanceKind,
    InstanceState,
    Operation,
    OperationKind,
    OperationState,
    Snapshot,
)
from compute.services import host_rpc, ports
from compute.services.containers import container_config, container_driver, limits_of, prepared_rootfs
from compute.services.drs import drs_kick
from compute.services.evacuation import evacuate_kick
from compute.services.guests import disk_size_gib, guest_spec, instance_dir, seed_contents
from compute.services.images import ImageCorrupt, verify_image
from compute.services.instances import instance_deleted
from compute.services.lifecycle import (
    instance_event,
    instance_fail,
    operation_event,
    operation_finish,
    operation_send,
)
from compute.services.migration import migration_done, migration_undone
from compute.services.migration_agent import migration_settle
from compute.services.resize import resize_failed
from compute.services.snapshots import snapshot_forget
from compute.services.volume_agent import (
    volume_op_failed,
    volume_plug,
    volume_unplug,
    volumes_moved,
    volumes_release,
)
from core.errors import HostUnavailable
from core.redis import redis_client

logger = logging.getLogger(__name__)


def _claim(operation_id: int) -> Operation | None:
    """Lock the Operation and mark it running; None if it is already finished (a repeated delivery)."""
    with transaction.atomic():
        operation = (
            Operation.objects.unscoped()
            .select_for_update(of=("self",))
            .select_related(
                "instance", "instance__flavor", "instance__image", "instance__host", "instance__network"
            )
            .filter(pk=operation_id)
            .first()
        )
        if operation is None or operation.done:
            return None
        operation.state = OperationState.RUNNING
        operation.attempts += 1
        operation.started = operation.started or timezone.now()
        operation.claimed_by = agent_identity(operation.instance.host.name if operation.instance.host else "")
        operation.save(update_fields=["state", "attempts", "started", "claimed_by"])
        operation_event(operation)
        return operation


def agent_identity(host_name: str) -> str:
    """Who claims an operation: the host and this agent's process."""
    return f"agent@{host_name}/pid {os.getpid()}"[:120]


def _step(operation: Operation, step: str, progress: int) -> None:
    operation.step = step
    operation.progress = progress
    Operation.objects.unscoped().filter(pk=operation.pk).update(step=step, progress=progress)
    operation_event(operation)
    crash_point(step)


def crash_point(step: str) -> None:
    """Fault injection for the crash tests: die like kill -9 right after the named step."""
    if settings.NUBIS_FAULT_CRASH_AFTER and step == settings.NUBIS_FAULT_CRASH_AFTER:
        logger.warning("fault injection: SIGKILL after step %s", step)
        os.kill(os.getpid(), signal.SIGKILL)


def _set_state(instance: Instance, state: str, **fields: Any) -> None:
    instance.state = state
    instance.state_deadline = None
    for key, value in fields.items():
        setattr(instance, key, value)
    instance.save(update_fields=["state", "state_deadline", "updated", *fields])
    instance_event(instance)


def operation_lock_key(operation_uuid: object) -> str:
    # By uuid, not id: deployments (and test databases) sharing a Redis reuse ids, never uuids.
    return f"nubis:operation:{operation_uuid}"


def operation_lock(operation_uuid: object) -> Any:
    """A Redis lock that keeps two deliveries of one Operation from running at the same time."""
    return redis_client().lock(
        operation_lock_key(operation_uuid), timeout=settings.CELERY_TASK_TIME_LIMIT, blocking=False
    )


# The database connection broke (PostgreSQL restarting, a network cut): not the operation's fault.
DATABASE_GONE = (OperationalError, InterfaceError)


def execute(operation_id: int, driver: VmDriver) -> str:
    """Run one Operation to its end; returns its final state ("skipped" or "busy" for a repeat)."""
    found = Operation.objects.unscoped().filter(pk=operation_id).values_list("uuid", flat=True).first()
    if found is None:
        return "skipped"
    lock = operation_lock(found)
    if not lock.acquire():
        return "busy"  # another delivery is running it right now
    try:
        result = _execute_through_outages(operation_id, driver)
    finally:
        with contextlib.suppress(LockError):
            lock.release()
    if result == HANDED_OVER:
        # Sent only now that the lock is free: the other host's agent takes it at once, and one
        # sent while this delivery still held the lock would find it "busy" and be dropped.
        _hand_over(operation_id)
    return result


def _hand_over(operation_id: int) -> None:
    """Send the operation on to the agent of its instance's host (the target, once the source's
    part is recorded); if the broker refuses, the outbox sends it again."""
    operation = Operation.objects.unscoped().select_related("instance__host").get(pk=operation_id)
    if operation.instance.host is not None:
        operation_send(operation.pk, operation.instance.host.queue)


def _execute_through_outages(operation_id: int, driver: VmDriver) -> str:
    """Run the Operation; when the database connection breaks, wait for it with backoff (up to
    NUBIS_DB_RETRY_SECONDS) and run it again from its claim: every step is idempotent, and a step
    whose result was already recorded is recognized (_settled)."""
    waited, delay = 0.0, 0.5
    while True:
        try:
            return _execute(operation_id, driver)
        except DATABASE_GONE as exc:
            if waited >= settings.NUBIS_DB_RETRY_SECONDS:
                logger.error(
                    "operation %s: the database stayed unreachable for %.0f s: %s", operation_id, waited, exc
                )
                raise
            logger.warning(
                "operation %s: the database failed (%s); running it again in %.1f s", operation_id, exc, delay
            )
            close_old_connections()
            connection.close()
            time.sleep(delay)
            waited += delay
            delay = min(delay * 2, 5.0)


# What each kind of operation leaves its instance in once done: a second run (after an agent died
# or the database broke between the work and its record) finds the work recorded.
_DONE_STATES: dict[str, frozenset[str]] = {
    OperationKind.CREATE: frozenset({InstanceState.RUNNING}),
    OperationKind.START: frozenset({InstanceState.RUNNING}),
    OperationKind.STOP: frozenset({InstanceState.STOPPED}),
    OperationKind.REBOOT: frozenset({InstanceState.RUNNING}),
    OperationKind.RESIZE: frozenset({InstanceState.RUNNING, InstanceState.STOPPED}),
    OperationKind.DELETE: frozenset({InstanceState.DELETED}),
    OperationKind.HA_RESTART: frozenset({InstanceState.RUNNING}),
}


def _settled(operation: Operation, instance: Instance) -> str | None:
    """On a second run: the final state when the instance already shows this operation's outcome."""
    if operation.attempts < 2:
        return None
    if instance.state in _DONE_STATES.get(operation.kind, ()):
        operation_finish(operation, OperationState.SUCCEEDED)
        return OperationState.SUCCEEDED
    if instance.state == InstanceState.ERROR and operation.kind in _DONE_STATES:
        operation_finish(operation, OperationState.FAILED, instance.fault or "the instance is in error")
        return OperationState.FAILED
    return None


def _execute(operation_id: int, driver: VmDriver) -> str:
    operation = _claim(operation_id)
    if operation is None:
        return "skipped"
    crash_point("claim")
    instance = operation.instance
    settled = _settled(operation, instance)
    if settled is not None:
        return settled
    container = instance.kind == InstanceKind.CONTAINER
    guests: GuestDriver = container_driver() if container else driver
    try:
        handler = (_CONTAINER_HANDLERS if container else _HANDLERS)[operation.kind]
        if handler(operation, instance, guests) == HANDED_OVER:
            return HANDED_OVER  # its next part runs on another host's agent
    except DATABASE_GONE:
        raise  # run again once the database is back (_execute_through_outages)
    except Exception as exc:  # a driver's refusal, or anything unforeseen: the operation fails
        if isinstance(exc, (DriverError, ImageCorrupt)):
            logger.warning(
                "operation %s (%s of %s) failed: %s", operation.pk, operation.kind, instance.uuid, exc
            )
            error = str(exc)
        else:
            logger.exception("operation %s (%s of %s) failed", operation.pk, operation.kind, instance.uuid)
            error = f"internal error: {type(exc).__name__}: {exc}"
        with transaction.atomic():
            if operation.kind == OperationKind.CREATE:
                try:
                    _cleanup(instance, guests)
                except DriverError as more:  # the instance, in error, keeps them: its delete retries
                    error = f"{error}; removing what it made failed too: {more}"
                instance_fail(instance, error)
            elif operation.kind == OperationKind.DELETE:
                instance_fail(instance, f"delete failed: {error}")
            else:
                if operation.kind == OperationKind.SNAPSHOT:
                    failed = Snapshot.objects.for_tenant(instance.tenant_id).filter(
                        pk=operation.params["snapshot"]
                    )
                    for snapshot in failed:
                        snapshot_forget(snapshot, "snapshot failed")
                if operation.kind == OperationKind.RESIZE:
                    error = _resize_undo(operation, instance, guests, error)
                if operation.kind in VOLUME_KINDS and isinstance(guests, VmDriver):
                    # The VM itself is as it was: only the volume records the failure.
                    volume_op_failed(operation, instance, guests, error)
                    operation_finish(operation, OperationState.FAILED, error)
                    return OperationState.FAILED
                if operation.kind == OperationKind.MIGRATE and _move_unsettled(operation, instance):
                    # Where the guest runs is not known yet (a move its agent lost, still under
                    # way): the reconciler settles it once the move ends (reconcile._settle_move).
                    pass
                else:
                    if operation.kind == OperationKind.MIGRATE:  # its target's claim goes
                        Instance.objects.unscoped().filter(pk=instance.pk).update(migration_host=None)
                        instance.migration_host = None
                    _settle_after_failure(instance, guests, error)
            operation_finish(operation, OperationState.FAILED, error)
        return OperationState.FAILED
    operation_finish(operation, OperationState.SUCCEEDED)
    return OperationState.SUCCEEDED


def _move_unsettled(operation: Operation, instance: Instance) -> bool:
    """A failed live move left the instance moving, its target still held: nobody knows yet where
    it runs (a failed move that was settled went back to running, its target given back)."""
    return bool(operation.params.get("live")) and (
        Instance.objects.unscoped()
        .filter(pk=instance.pk, state=InstanceState.MIGRATING, migration_host__isnull=False)
        .exists()
    )


def _cleanup(instance: Instance, driver: GuestDriver) -> None:
    """Remove whatever a failed create left on the host: domain or container, port, disk, logs."""
    try:
        driver.undefine(instance.domain_name)
        ports.port_detach(instance)
    finally:
        driver.remove_files(str(instance_dir(instance)))


def _settle_after_failure(instance: Instance, driver: GuestDriver, error: str) -> None:
    """After a failed start/stop/reboot, set the state the hypervisor really shows, with the fault."""
    try:
        power = driver.power_state(instance.domain_name)
    except DriverError as exc:
        power, error = None, f"{error}; its power state is unknown: {exc}"
    state = {"running": InstanceState.RUNNING, "stopped": InstanceState.STOPPED}.get(
        power or "", InstanceState.ERROR
    )
    instance.fault = error[:4000]
    instance.fault_at = timezone.now()
    _set_state(instance, state, fault=instance.fault, fault_at=instance.fault_at)


def _create(operation: Operation, instance: Instance, driver: VmDriver) -> None:
    if instance.state not in (InstanceState.SCHEDULED, InstanceState.BUILDING):
        raise DriverError(f"create: the instance is {instance.state}, not scheduled")
    _set_state(instance, InstanceState.BUILDING)
    verify_image(instance.image)
    _step(operation, "image", 20)
    spec = guest_spec(instance)
    driver.create_disk(spec, instance.image.disk_path, disk_size_gib(instance))
    _write_seed(instance, spec, driver)
    _step(operation, "disk", 40)
    ports.port_attach(instance)
    _step(operation, "network", 50)
    driver.define(spec)
    _step(operation, "define", 60)
    driver.start(spec.name)
    _step(operation, "start", 90)
    _set_state(instance, InstanceState.RUNNING, vnc_port=driver.vnc_port(spec.name), fault="")


def _write_seed(instance: Instance, spec: GuestSpec, driver: VmDriver) -> None:
    """A cloud-init guest's config drive, in its directory beside its disk (made again wherever its
    definition is made again: it is the same for the instance's whole life)."""
    if spec.seed_path:
        driver.create_seed(spec, *seed_contents(instance))


def _start(operation: Operation, instance: Instance, driver: VmDriver) -> None:
    driver.start(instance.domain_name)
    _step(operation, "start", 90)
    _set_state(instance, InstanceState.RUNNING, vnc_port=driver.vnc_port(instance.domain_name))


def _stop(operation: Operation, instance: Instance, driver: GuestDriver) -> None:
    container = instance.kind == InstanceKind.CONTAINER
    timeout = settings.NUBIS_CONTAINER_STOP_TIMEOUT if container else settings.NUBIS_SHUTDOWN_TIMEOUT
    clean = driver.shutdown(instance.domain_name, timeout)
    if container:
        ports.port_detach(instance, forget=False)  # the next start makes a new namespace
    _step(operation, "shutdown" if clean else "forced-off", 90)
    # An address on a tenant network is the instance's own; one learnt from libvirt's DHCP is not.
    address = instance.ip_address if instance.network_id else None
    _set_state(instance, InstanceState.STOPPED, vnc_port=None, ip_address=address)


def _reboot(operation: Operation, instance: Instance, driver: VmDriver) -> None:
    driver.reboot(instance.domain_name)
    _step(operation, "reset", 90)
    _set_state(instance, InstanceState.RUNNING)


def _delete(operation: Operation, instance: Instance, driver: GuestDriver) -> None:
    driver.undefine(instance.domain_name)
    _step(operation, "undefine", 40)
    ports.port_detach(instance)
    _step(operation, "network", 60)
    driver.remove_files(str(instance_dir(instance)))
    _step(operation, "files", 90)
    with transaction.atomic():
        volumes_release(instance)  # detached with the domain; their files stay
        instance_deleted(instance)


def _resize(operation: Operation, instance: Instance, driver: VmDriver) -> None:
    if "memory_mib" in operation.params:
        mib = int(operation.params["memory_mib"])
        driver.set_memory(instance.domain_name, mib)
        _step(operation, "balloon", 90)
        _set_state(instance, InstanceState.RUNNING, current_ram_mib=mib)
        return
    driver.redefine(guest_spec(instance))
    _step(operation, "redefine", 90)
    _set_state(instance, InstanceState.STOPPED)


def _resize_undo(operation: Operation, instance: Instance, driver: GuestDriver, error: str) -> str:
    """Put a refused resize back: the old size in the database, and in a running container's cgroups.

    runc may have set some limits before the one the kernel refused. Returns the fault to record.
    """
    error = resize_failed(instance, operation, error)
    if isinstance(driver, ContainerDriver) and driver.power_state(instance.domain_name) == "running":
        try:
            driver.update(instance.domain_name, **limits_of(instance))
        except DriverError as exc:
            error = f"{error}; putting its old limits back failed too: {exc}"
    return error


def _snapshot(operation: Operation, instance: Instance, driver: VmDriver) -> None:
    driver.snapshot_create(instance.domain_name, operation.params["name"])
    _step(operation, "snapshot", 90)


def _revert(operation: Operation, instance: Instance, driver: VmDriver) -> None:
    power = driver.snapshot_revert(instance.domain_name, operation.params["name"])
    _step(operation, "revert", 90)
    state = InstanceState.RUNNING if power == "running" else InstanceState.STOPPED
    _set_state(instance, state, vnc_port=driver.vnc_port(instance.domain_name))


def _delete_snapshot(operation: Operation, instance: Instance, driver: VmDriver) -> None:
    driver.snapshot_delete(instance.domain_name, operation.params["name"])
    _step(operation, "delete", 90)
    snapshot = Snapshot.objects.for_tenant(instance.tenant_id).filter(pk=operation.params["snapshot"]).first()
    if snapshot is not None:
        with transaction.atomic():
            snapshot_forget(snapshot, "deleted")


def _container_create(operation: Operation, instance: Instance, driver: ContainerDriver) -> None:
    """Verified root filesystem, bundle and `runc run`, then its port on the tenant network."""
    if instance.state not in (InstanceState.SCHEDULED, InstanceState.BUILDING):
        raise DriverError(f"create: the instance is {instance.state}, not scheduled")
    _set_state(instance, InstanceState.BUILDING)
    rootfs = prepared_rootfs(instance)
    _step(operation, "image", 20)
    driver.create(instance.domain_name, container_config(instance, rootfs))
    _step(operation, "start", 60)
    if instance.network_id is not None:
        _container_port(instance, driver)
        _step(operation, "network", 90)
    _set_state(instance, InstanceState.RUNNING, fault="")


def _container_start(operation: Operation, instance: Instance, driver: ContainerDriver) -> None:
    driver.start(instance.domain_name)
    _container_port(instance, driver)
    _step(operation, "start", 90)
    _set_state(instance, InstanceState.RUNNING, vnc_port=None)


def _container_reboot(operation: Operation, instance: Instance, driver: ContainerDriver) -> None:
    driver.reboot(instance.domain_name)
    _container_port(instance, driver)
    _step(operation, "reset", 90)
    _set_state(instance, InstanceState.RUNNING)


def _container_port(instance: Instance, driver: ContainerDriver) -> None:
    """Plug a container that just started into its network (runc made it a fresh namespace)."""
    if instance.network_id is None:
        return
    pid = driver.pid(instance.domain_name)
    if pid is None:
        raise DriverError(f"{instance.name} stopped right after it started; see its logs")
    ports.port_attach(instance, pid)


def _container_resize(operation: Operation, instance: Instance, driver: ContainerDriver) -> None:
    """New limits, live, through `runc update` (the bundle keeps them for the next start)."""
    if "memory_mib" in operation.params:
        instance.current_ram_mib = int(operation.params["memory_mib"])
    limits = limits_of(instance)
    if driver.power_state(instance.domain_name) == "running":
        driver.update(instance.domain_name, **limits)
    _step(operation, "limits", 80)
    driver.save_config(instance.domain_name, container_config(instance, prepared_rootfs(instance)))
    _step(operation, "bundle", 90)
    power = driver.power_state(instance.domain_name)
    state = InstanceState.RUNNING if power == "running" else InstanceState.STOPPED
    _set_state(instance, state, current_ram_mib=instance.current_ram_mib)


def _no_snapshots(operation: Operation, instance: Instance, driver: ContainerDriver) -> None:
    raise DriverError("containers have no snapshots")


# -- moves between hosts (compute.services.migration) -------------------------------------------
HANDED_OVER = "handed over"  # a handler's answer: the operation goes on on another host's agent


def _target_of(operation: Operation) -> Host:
    target = Host.objects.filter(name=operation.params.get("target", "")).first()
    if target is None:
        raise DriverError(f"migrate: the target host {operation.params.get('target')!r} is gone")
    return target


def _migrate(operation: Operation, instance: Instance, driver: VmDriver) -> str | None:
    """Live migration, run by the source host's agent: the target gets the VM's port ready, then
    this host's hypervisor moves it there peer to peer; the source's port goes after. A stopped VM
    moves cold."""
    if not operation.params.get("live", True):
        return _cold_migrate(operation, instance, driver)
    target = _target_of(operation)
    source = instance.host
    if source is None or instance.state != InstanceState.MIGRATING:
        raise DriverError(f"migrate: the instance is {instance.state}, not migrating")
    if operation.attempts > 1:
        # This agent died during the move: find out where the guest runs, and say so.
        wait = float(operation.params.get("timeout") or settings.NUBIS_MIGRATION_TIMEOUT)
        where = migration_settle(instance, driver, target, wait=wait)
        if where == "target":
            _moved(operation, instance, driver, source, target, None)
            return None
        outcome = {
            "source": "did not finish: the VM stays there",
            "moving": "is still under way and could not be aborted: the reconciler will settle it",
        }.get(where, "left the VM on neither host")
        raise DriverError(f"the agent of {source.name} stopped during the move, which {outcome}")
    began = time.monotonic()
    try:
        host_rpc.call(target.name, host_rpc.ARRIVAL_PREPARE, {"uuid": str(instance.uuid)}, timeout=60)
        _step(operation, "target ready", 10)
        stats = driver.migrate(
            instance.domain_name,
            target.peer_uri,
            shared_store=settings.NUBIS_SHARED_INSTANCE_STORE,
            max_downtime_ms=settings.NUBIS_MIGRATION_DOWNTIME_MS,
            timeout=float(operation.params.get("timeout") or settings.NUBIS_MIGRATION_TIMEOUT),
            bandwidth_mib=int(operation.params.get("bandwidth_mib") or 0),
            on_progress=lambda progress: _progress(operation, 10 + progress.percent * 80 // 100),
        )
    except (DriverError, HostUnavailable, host_rpc.AgentError) as exc:
        error = exc.message if isinstance(exc, (HostUnavailable, host_rpc.AgentError)) else str(exc)
        _arrival_cancel(instance, target)
        migration_undone(instance, InstanceState.RUNNING)
        _next_move(source)
        raise DriverError(f"migration to {target.name} failed: {error}") from None
    _moved(operation, instance, driver, source, target, stats, time.monotonic() - began)
    return None


def _progress(operation: Operation, percent: int) -> None:
    """A running move's progress, recorded in steps of 5%."""
    if percent >= operation.progress + 5:
        operation.progress = percent
        Operation.objects.unscoped().filter(pk=operation.pk).update(progress=percent)
        operation_event(operation)


def _arrival_cancel(instance: Instance, target: Host) -> None:
    """Undo the target's preparation; it is not the move's fault if this fails (the target's
    reconciler removes what no instance needs)."""
    try:
        host_rpc.call(target.name, host_rpc.ARRIVAL_CANCEL, {"uuid": str(instance.uuid)}, timeout=30)
    except (HostUnavailable, host_rpc.AgentError) as exc:
        logger.warning("migrate %s: the target %s kept its preparation: %s", instance.uuid, target.name, exc)


def _moved(
    operation: Operation,
    instance: Instance,
    driver: VmDriver,
    source: Host,
    target: Host,
    stats: MigrationStats | None,
    seconds: float = 0.0,
) -> None:
    """The VM runs on the target: the database says so, the source's port goes, the figures stay."""
    _step(operation, "moved", 90)
    if stats is not None:
        migration_done(instance, target, InstanceState.RUNNING, vnc_port=stats.vnc_port, fault="")
        operation.result = {**stats.as_dict(), "agent_ms": round(seconds * 1000)}
        Operation.objects.unscoped().filter(pk=operation.pk).update(result=operation.result)
    try:
        ports.port_detach(instance, host=source)
    except DriverError as exc:  # the reconciler removes a port no instance on this host has
        logger.warning("migrate %s: the source's port stays for the reconciler: %s", instance.uuid, exc)
    ports.nat_follow(instance, target)  # its floating address and port forwards: the target's now
    if not settings.NUBIS_SHARED_INSTANCE_STORE:
        driver.remove_files(str(instance_dir(instance)))  # its disk was copied to the target
    volumes_moved(instance, target, remove_source_files=not settings.NUBIS_SHARED_INSTANCE_STORE)
    _next_move(source)


def _next_move(source: Host) -> None:
    """A move ended: the next one off a host entering maintenance, or the balancer's next, may start."""
    if Host.objects.filter(pk=source.pk, state=HostState.ENTERING_MAINTENANCE).exists():
        evacuate_kick()
    drs_kick()


def _cold_migrate(operation: Operation, instance: Instance, driver: GuestDriver) -> str | None:
    """Cold migration (a container, or a stopped VM): stopped and removed here, its files kept on
    the shared store, then made again on the target by the target's agent from the same image and
    settings, with the same address, and started there if it ran here."""
    if operation.params.get("phase") == "arrive":
        _arrive(operation, instance, driver)
        return None
    target = _target_of(operation)
    source = instance.host
    if source is None or instance.state != InstanceState.MIGRATING:
        raise DriverError(f"migrate: the instance is {instance.state}, not migrating")
    if "was_running" not in operation.params:
        operation.params["was_running"] = driver.power_state(instance.domain_name) == "running"
    timeout = (
        settings.NUBIS_CONTAINER_STOP_TIMEOUT
        if instance.kind == InstanceKind.CONTAINER
        else settings.NUBIS_SHUTDOWN_TIMEOUT
    )
    driver.shutdown(instance.domain_name, timeout)
    driver.undefine(instance.domain_name)  # a VM's disk and a container's bundle stay
    ports.port_detach(instance, host=source)
    if not settings.NUBIS_SHARED_INSTANCE_STORE:
        driver.remove_files(str(instance_dir(instance)))
    _step(operation, "left source", 40)
    with transaction.atomic():
        migration_done(instance, target, InstanceState.MIGRATING)
        operation.params["phase"] = "arrive"
        operation.state = OperationState.PENDING
        operation.save(update_fields=["params", "state"])
    _next_move(source)
    return HANDED_OVER  # execute() sends it to the target once this delivery lets go of it


def _arrive(operation: Operation, instance: Instance, driver: GuestDriver) -> None:
    """The target's part of a cold migration."""
    running = bool(operation.params.get("was_running"))
    if isinstance(driver, ContainerDriver):
        config = container_config(instance, prepared_rootfs(instance))
        if running:
            if driver.power_state(instance.domain_name) != "running":
                driver.create(instance.domain_name, config)
            _container_port(instance, driver)
        else:
            instance_dir(instance).mkdir(parents=True, exist_ok=True)
            driver.save_config(instance.domain_name, config)
            ports.port_attach(instance)
    elif isinstance(driver, VmDriver):
        ports.port_attach(instance)
        spec = guest_spec(instance)
        _write_seed(instance, spec, driver)
        driver.define(spec)
        if running:
            driver.start(instance.domain_name)
    _step(operation, "made on target", 90)
    state = InstanceState.RUNNING if running else InstanceState.STOPPED
    vnc = driver.vnc_port(instance.domain_name) if running and isinstance(driver, VmDriver) else None
    _set_state(instance, state, vnc_port=vnc, fault="")


def _ha_restart(operation: Operation, instance: Instance, driver: VmDriver) -> None:
    """Its host died (compute.services.ha): start the VM here from its disk on the shared store;
    one that had moved here before its host died runs already, and is adopted."""
    name = instance.domain_name
    if driver.power_state(name) != "running":
        spec = guest_spec(instance)
        if not Path(spec.disk_path).exists():
            raise DriverError(
                f"HA restart: its disk {spec.disk_path} is not on this host's instance store "
                "(a restart needs the store shared between the hosts)"
            )
        ports.port_attach(instance)
        _step(operation, "network", 40)
        _write_seed(instance, spec, driver)
        driver.define(spec)
        driver.start(name)
        _step(operation, "start", 90)
    _set_state(instance, InstanceState.RUNNING, vnc_port=driver.vnc_port(name), fault="")


def _container_ha_restart(operation: Operation, instance: Instance, driver: ContainerDriver) -> None:
    """Its host died: run the container here again from its image and settings."""
    if driver.power_state(instance.domain_name) != "running":
        rootfs = prepared_rootfs(instance)
        _step(operation, "image", 30)
        driver.create(instance.domain_name, container_config(instance, rootfs))
    _container_port(instance, driver)
    _step(operation, "start", 90)
    _set_state(instance, InstanceState.RUNNING, vnc_port=None, fault="")


VOLUME_KINDS = (OperationKind.ATTACH_VOLUME, OperationKind.DETACH_VOLUME)


def _attach_volume(operation: Operation, instance: Instance, driver: VmDriver) -> None:
    volume_plug(operation, instance, driver)
    _step(operation, "attach", 90)


def _detach_volume(operation: Operation, instance: Instance, driver: VmDriver) -> None:
    volume_unplug(operation, instance, driver)
    _step(operation, "detach", 90)


def _no_volumes(operation: Operation, instance: Instance, driver: ContainerDriver) -> None:
    raise DriverError("containers have no volumes")


_HANDLERS: dict[str, Any] = {
    OperationKind.CREATE: _create,
    OperationKind.START: _start,
    OperationKind.STOP: _stop,
    OperationKind.REBOOT: _reboot,
    OperationKind.DELETE: _delete,
    OperationKind.RESIZE: _resize,
    OperationKind.SNAPSHOT: _snapshot,
    OperationKind.REVERT: _revert,
    OperationKind.DELETE_SNAPSHOT: _delete_snapshot,
    OperationKind.MIGRATE: _migrate,
    OperationKind.HA_RESTART: _ha_restart,
    OperationKind.ATTACH_VOLUME: _attach_volume,
    OperationKind.DETACH_VOLUME: _detach_volume,
}


_CONTAINER_HANDLERS: dict[str, Any] = {
    OperationKind.CREATE: _container_create,
    OperationKind.START: _container_start,
    OperationKind.STOP: _stop,
    OperationKind.REBOOT: _container_reboot,
    OperationKind.DELETE: _delete,
    OperationKind.RESIZE: _container_resize,
    OperationKind.SNAPSHOT: _no_snapshots,
    OperationKind.REVERT: _no_snapshots,
    OperationKind.DELETE_SNAPSHOT: _no_snapshots,
    OperationKind.MIGRATE: _cold_migrate,
    OperationKind.HA_RESTART: _container_ha_restart,
    OperationKind.ATTACH_VOLUME: _no_volumes,
    OperationKind.DETACH_VOLUME: _no_volumes,
}


def resume_interrupted(host: Any) -> int:
    """At agent start: re-queue the host's operations that a dead agent left pending or running.

    Their steps are idempotent, so running them again finishes what was cut short.
    """
    ops = list(
        Operation.objects.unscoped()
        .filter(instance__host=host, state__in=[OperationState.PENDING, OperationState.RUNNING])
        .values_list("pk", "uuid")
    )
    for op_id, op_uuid in ops:
        # The agent that held these locks is gone (this one just started).
        redis_client().delete(operation_lock_key(op_uuid))
        operation_send(op_id, host.queue)
    return len(ops)
