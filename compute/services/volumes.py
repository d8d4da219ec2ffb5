"""Persistent volumes: create, delete, grow, snapshot, attach to a VM and detach.

A volume is a qcow2 file under ``volumes/`` of the instance store, outside any instance's
directory, so it outlives the VMs it was attached to. Two kinds of work touch a host:

- A volume's own file work (make, remove, grow, snapshot) happens only while it is attached to
  nothing. It is a call of the agent RPC (compute.services.host_rpc, VOLUME_WORK) on a host whose
  store holds the file (any host with a shared store), and the caller waits for its answer: the
  request is recorded first (the volume in a transient state, its quota claimed, in one
  transaction), then the agent works on the file, then the outcome is recorded (the volume
  available, or the claim given back and the reason kept). These are not Operations because an
  Operation belongs to one instance, and the whole of the operations machinery (outbox, claims,
  reconciler, the operations API, the UI) reads its instance; a volume's file work has none, and
  takes milliseconds (seconds for a copy of an image).
- Attach and detach change a VM: they are Operations of the instance (ATTACH_VOLUME,
  DETACH_VOLUME), run by its host's agent (compute.services.volume_agent), so they queue behind
  and never race the VM's own operations.

Quota: a volume claims ``disk_gib`` (its size; a resize claims the difference), a volume snapshot
``snapshots``; the claims' holder is the volume (the snapshot).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from django.conf import settings
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from compute.models import (
    Host,
    HostState,
    Image,
    ImageKind,
    ImageState,
    Instance,
    InstanceKind,
    InstanceState,
    Operation,
    OperationKind,
    Volume,
    VolumeSnapshot,
    VolumeState,
)
from compute.services import host_rpc
from compute.services.lifecycle import (
    NAME_RULE,
    instance_lock_idle,
    name_is_valid,
    operation_enqueue,
    operation_record,
)
from core.errors import Conflict, ServiceError
from core.events import publish
from security.audit import Actor, audit_log
from tenants.models import QuotaClaim, Tenant
from tenants.services.quotas import quota_claim, quota_release

logger = logging.getLogger(__name__)

GIB = 1 << 30
MAX_GIB = 2048
QUICK = 60.0  # seconds the portal waits for a quick piece of file work
COPY = 900.0  # ... for a copy of an image or a snapshot
DEVICES = tuple(f"vd{c}" for c in "bcdefghijklmnopqrstuvwxyz")  # vda is the root disk
ATTACH_STATES = (InstanceState.RUNNING, InstanceState.STOPPED)


def volume_event(volume: Volume) -> None:
    """Tell the tenant's browsers about the volume's new state, after commit."""
    publish(
        volume.tenant_id,
        {
            "type": "volume.state",
            "volume": str(volume.uuid),
            "name": volume.name,
            "state": volume.state,
            "device": volume.device,
            "fault": volume.fault[:500],
        },
    )


def volumes_live(tenant: Tenant | int) -> Any:
    """The tenant's volumes that exist (not deleted)."""
    return Volume.objects.for_tenant(tenant).filter(deleted_at__isnull=True)


# -- where the file work runs -----------------------------------------------------------------


def _agents() -> list[Host]:
    """Real hosts whose agent is alive, enabled ones first."""
    hosts = [
        h
        for h in Host.objects.filter(simulated=False, fenced_at__isnull=True).exclude(state=HostState.DOWN)
        if h.heartbeat_fresh()
    ]
    return sorted(hosts, key=lambda h: (h.state != HostState.ENABLED, h.name))


def _home_for_new(source: Volume | None) -> Host:
    """The host whose store gets a new volume: its source's (without a shared store), else the
    first enabled host with a running agent."""
    if source is not None and not settings.NUBIS_SHARED_INSTANCE_STORE and source.host is not None:
        return source.host
    hosts = [h for h in _agents() if h.state == HostState.ENABLED]
    if not hosts:
        raise Conflict("host", "unavailable", "no enabled host with a running agent to make the volume on")
    return hosts[0]


def _worker(volume: Volume) -> str:
    """The host whose agent works on the volume's file: its own, or with a shared store any."""
    if settings.NUBIS_SHARED_INSTANCE_STORE:
        alive = _agents()
        if volume.host is not None and any(h.pk == volume.host_id for h in alive):
            return volume.host.name
        if alive:
            return alive[0].name
    if volume.host is None:
        raise Conflict("host", "unavailable", f"volume {volume.name} is on no host's store")
    return volume.host.name


def _work(volume: Volume, action: str, timeout: float = QUICK, **args: Any) -> dict[str, Any]:
    return host_rpc.call(
        _worker(volume), host_rpc.VOLUME_WORK, {"uuid": str(volume.uuid), "action": action, **args}, timeout
    )


def _lock(volume: Volume) -> Volume:
    locked = (
        Volume.objects.for_tenant(volume.tenant_id)
        .select_for_update(of=("self",))
        .select_related("host", "instance")
        .filter(pk=volume.pk, deleted_at__isnull=True)
        .first()
    )
    if locked is None:
        raise Conflict("volume", "state", f"volume {volume.name} was deleted")
    return locked


def _need(volume: Volume, action: str, *states: str) -> None:
    if volume.state in states:
        return
    if volume.state == VolumeState.IN_USE and volume.instance is not None:
        why = f"it is attached to {volume.instance.name} ({volume.device}); detach it first"
    else:
        why = f"it is {volume.state} (needs {' or '.join(states)})"
    raise Conflict("state", "state", f"cannot {action} volume {volume.name}: {why}")


def _set(volume: Volume, **fields: Any) -> None:
    for key, value in fields.items():
        setattr(volume, key, value)
    volume.save(update_fields=list(fields))
    volume_event(volume)


def _release_holder(tenant_id: int, model: str, pk: int, reason: str) -> None:
    for claim in QuotaClaim.objects.for_tenant(tenant_id).filter(
        holder_type__model=model, holder_id=str(pk), released_at__isnull=True
    ):
        quota_release(claim, reason)


def _run(volume: Volume, work: Callable[[], object], failed: Callable[[str], None]) -> None:
    """Run the file work; on an error record it (``failed``, in a transaction) and raise it again."""
    try:
        work()
    except Exception as exc:  # the agent's refusal (409), no answer (503), the broker gone
        with transaction.atomic():
            failed(exc.message if isinstance(exc, ServiceError) else f"{type(exc).__name__}: {exc}")
        raise


# -- create ---------------------------------------------------------------------------------------


def _check_name(tenant: Tenant, name: str) -> None:
    if not name_is_valid(name):
        raise ServiceError("name", "name", f"invalid volume name {name!r}: {NAME_RULE}")
    if volumes_live(tenant).filter(name=name).exists():
        raise Conflict("name", "unique", f"a volume named {name!r} exists already")


def _image_of(tenant: Tenant, ref: str | int) -> Image:
    rows = Image.objects.filter(Q(public=True) | Q(tenant=tenant))
    lookup: dict[str, Any] = {"pk": int(ref)} if str(ref).isdigit() else {"name": ref}
    found = rows.filter(**lookup).order_by("tenant_id").first()
    if found is None:
        raise ServiceError("image", "exists", f"unknown image {ref!r}")
    if found.kind == ImageKind.ROOTFS:
        raise ServiceError(
            "image", "kind", f"image {found.name!r} is a container's root filesystem, not a disk"
        )
    if found.state != ImageState.ACTIVE:
        raise Conflict("image", "state", f"image {found.name!r} is {found.state}")
    return found


def _snapshot_of(tenant: Tenant, ref: int | str) -> VolumeSnapshot:
    found = (
        VolumeSnapshot.objects.for_tenant(tenant)
        .select_related("volume")
        .filter(pk=int(ref) if str(ref).isdigit() else -1, volume__deleted_at__isnull=True)
        .first()
    )
    if found is None:
        raise ServiceError("snapshot", "exists", f"unknown volume snapshot {ref!r}")
    return found


def volume_create(
    *,
    actor: Actor,
    tenant: Tenant,
    name: str,
    size_gib: int | None = None,
    snapshot: int | str | None = None,
    image: int | str | None = None,
) -> Volume:
    """Make a volume: empty, a copy of one of the tenant's volume snapshots, or of an image (the
    image's format given to qemu-img, never probed); ``size_gib`` defaults to the source's size."""
    with transaction.atomic():
        volume, source_volume = _create_record(actor, tenant, name, size_gib, snapshot, image)
    copy = volume.source_image_id is not None or volume.source_snapshot_id is not None

    def failed(error: str) -> None:
        # Nothing half-made: the file went with the failure (the agent writes it whole or not at
        # all); the row stays, deleted, with the reason; the name and the quota are free again.
        locked = Volume.objects.for_tenant(tenant).select_for_update().get(pk=volume.pk)
        _set(
            locked, state=VolumeState.ERROR, fault=f"create failed: {error}"[:4000], deleted_at=timezone.now()
        )
        _release_holder(tenant.pk, "volume", volume.pk, "volume create failed")
        if source_volume is not None:
            _source_done(source_volume)
        audit_log(
            actor=actor, action="volume.create", target=locked, outcome="error", detail={"fault": error}
        )

    _run(volume, lambda: _work(volume, "make", COPY if copy else QUICK), failed)
    with transaction.atomic():
        locked = Volume.objects.for_tenant(tenant).select_for_update().get(pk=volume.pk)
        if locked.state == VolumeState.CREATING:
            _set(locked, state=VolumeState.AVAILABLE, fault="")
        if source_volume is not None:
            _source_done(source_volume)
        # One record per request, once its outcome is known (here, or the failure's).
        audit_log(
            actor=actor,
            action="volume.create",
            target=locked,
            detail={
                "size_gib": locked.size_gib,
                "image": locked.source_image.name if locked.source_image else "",
                "snapshot": locked.source_snapshot_id,
            },
        )
    return locked


def _create_record(
    actor: Actor,
    tenant: Tenant,
    name: str,
    size_gib: int | None,
    snapshot: int | str | None,
    image: int | str | None,
) -> tuple[Volume, Volume | None]:
    _check_name(tenant, name)
    if snapshot not in (None, "") and image not in (None, ""):
        raise ServiceError("snapshot", "source", "give a snapshot or an image to start from, not both")
    source_snap = _snapshot_of(tenant, snapshot) if snapshot is not None and snapshot != "" else None
    source_image = _image_of(tenant, image) if image is not None and image != "" else None
    least = 1
    if source_snap is not None:
        least = source_snap.size_gib
    elif source_image is not None:
        least = max(1, -(-int(source_image.virtual_size_bytes or 0) // GIB))
    size = least if size_gib is None else int(size_gib)
    if not 1 <= size <= MAX_GIB:
        raise ServiceError("size_gib", "range", f"size_gib must be from 1 to {MAX_GIB}")
    if size < least:
        raise ServiceError("size_gib", "range", f"size_gib must be at least the source's {least} GiB")
    source_volume = None
    if source_snap is not None:
        # Its file is read for the copy: it must not be open in a guest, nor change meanwhile.
        source_volume = _lock(source_snap.volume)
        _need(source_volume, "copy a snapshot of", VolumeState.AVAILABLE)
        _set(source_volume, state=VolumeState.SNAPSHOTTING)
    volume = Volume.objects.create(
        tenant=tenant,
        name=name,
        size_gib=size,
        state=VolumeState.CREATING,
        host=_home_for_new(source_volume),
        source_image=source_image,
        source_snapshot=source_snap,
        created_by_id=actor.user_id,
    )
    quota_claim(tenant, {"disk_gib": size}, f"volume {name}", holder=volume)
    volume_event(volume)
    return volume, source_volume


def _source_done(source: Volume) -> None:
    locked = Volume.objects.for_tenant(source.tenant_id).select_for_update().get(pk=source.pk)
    if locked.state == VolumeState.SNAPSHOTTING:
        _set(locked, state=VolumeState.AVAILABLE)


# -- delete, resize -------------------------------------------------------------------------------


def volume_delete(*, actor: Actor, volume: Volume) -> Volume:
    """Delete an available (or failed) volume: its file, its snapshots, its quota claims."""
    with transaction.atomic():
        locked = _lock(volume)
        _need(locked, "delete", VolumeState.AVAILABLE, VolumeState.ERROR)
        _set(locked, state=VolumeState.DELETING)

    def failed(error: str) -> None:
        _set(_lock(locked), state=VolumeState.ERROR, fault=f"delete failed: {error}"[:4000])
        audit_log(
            actor=actor, action="volume.delete", target=locked, outcome="error", detail={"fault": error}
        )

    _run(locked, lambda: _work(locked, "remove"), failed)
    with transaction.atomic():
        done = _lock(locked)
        for snap in VolumeSnapshot.objects.for_tenant(done.tenant_id).filter(volume=done):
            _snapshot_forget(snap, "volume deleted")
        _release_holder(done.tenant_id, "volume", done.pk, "volume deleted")
        _set(done, state=VolumeState.DELETED, deleted_at=timezone.now(), fault="")
        audit_log(actor=actor, action="volume.delete", target=done)
    return done


def volume_resize(*, actor: Actor, volume: Volume, size_gib: int) -> Volume:
    """Grow an available volume (offline; it never shrinks); claims the difference of disk_gib."""
    with transaction.atomic():
        locked = _lock(volume)
        _need(locked, "resize", VolumeState.AVAILABLE)
        if int(size_gib) > MAX_GIB:
            raise ServiceError("size_gib", "range", f"size_gib must be at most {MAX_GIB}")
        if int(size_gib) <= locked.size_gib:
            raise ServiceError(
                "size_gib", "grow", f"a volume only grows: {locked.name} is {locked.size_gib} GiB already"
            )
        claim = quota_claim(
            locked.tenant,
            {"disk_gib": int(size_gib) - locked.size_gib},
            f"volume {locked.name} grows",
            holder=locked,
        )
        _set(locked, state=VolumeState.RESIZING)
    detail: dict[str, Any] = {"from_gib": locked.size_gib, "size_gib": int(size_gib)}

    def failed(error: str) -> None:
        quota_release(claim, "volume resize failed")
        _set(_lock(locked), state=VolumeState.AVAILABLE, fault=f"resize failed: {error}"[:4000])
        audit_log(
            actor=actor,
            action="volume.resize",
            target=locked,
            outcome="error",
            detail={**detail, "fault": error},
        )

    _run(locked, lambda: _work(locked, "grow", size_gib=int(size_gib)), failed)
    with transaction.atomic():
        done = _lock(locked)
        _set(done, state=VolumeState.AVAILABLE, size_gib=int(size_gib), fault="")
        audit_log(actor=actor, action="volume.resize", target=done, detail=detail)
    return done


# -- snapshots ------------------------------------------------------------------------------------


def volume_snapshot_create(*, actor: Actor, volume: Volume, name: str) -> VolumeSnapshot:
    """An internal qcow2 snapshot of an available volume; counts against the snapshots quota."""
    with transaction.atomic():
        locked = _lock(volume)
        _need(locked, "snapshot", VolumeState.AVAILABLE)
        if not name_is_valid(name):
            raise ServiceError("name", "name", f"invalid snapshot name {name!r}: {NAME_RULE}")
        if VolumeSnapshot.objects.for_tenant(locked.tenant_id).filter(volume=locked, name=name).exists():
            raise Conflict("name", "unique", f"{locked.name} already has a snapshot named {name!r}")
        snapshot = VolumeSnapshot.objects.create(
            tenant=locked.tenant, volume=locked, name=name, size_gib=locked.size_gib
        )
        quota_claim(locked.tenant, {"snapshots": 1}, f"volume snapshot {locked.name}@{name}", holder=snapshot)
        _set(locked, state=VolumeState.SNAPSHOTTING)

    def failed(error: str) -> None:
        audit_log(
            actor=actor, action="volume.snapshot", target=snapshot, outcome="error", detail={"fault": error}
        )
        _snapshot_forget(snapshot, "volume snapshot failed")
        _set(_lock(locked), state=VolumeState.AVAILABLE, fault=f"snapshot failed: {error}"[:4000])

    _run(locked, lambda: _work(locked, "snapshot", snapshot=snapshot.pk), failed)
    with transaction.atomic():
        _set(_lock(locked), state=VolumeState.AVAILABLE, fault="")
        audit_log(actor=actor, action="volume.snapshot", target=snapshot, tenant=locked.tenant)
    return snapshot


def volume_snapshot_delete(*, actor: Actor, snapshot: VolumeSnapshot) -> None:
    """Remove the snapshot from its volume's file (the volume must be available) and its claim."""
    with transaction.atomic():
        locked = _lock(snapshot.volume)
        _need(locked, "delete a snapshot of", VolumeState.AVAILABLE)
        _set(locked, state=VolumeState.SNAPSHOTTING)

    def failed(error: str) -> None:
        _set(_lock(locked), state=VolumeState.AVAILABLE, fault=f"snapshot delete failed: {error}"[:4000])
        audit_log(
            actor=actor,
            action="volume.snapshot.delete",
            target=snapshot,
            outcome="error",
            detail={"fault": error},
        )

    _run(locked, lambda: _work(locked, "unsnapshot", snapshot=snapshot.pk), failed)
    with transaction.atomic():
        audit_log(actor=actor, action="volume.snapshot.delete", target=snapshot, tenant=locked.tenant)
        _snapshot_forget(snapshot, "deleted")
        _set(_lock(locked), state=VolumeState.AVAILABLE, fault="")


def _snapshot_forget(snapshot: VolumeSnapshot, reason: str) -> None:
    _release_holder(snapshot.tenant_id, "volumesnapshot", snapshot.pk, reason)
    # Volumes made from it keep their data; they only lose the link.
    snapshot.delete()


# -- attach, detach: Operations of the instance ---------------------------------------------------


def _instance_of(tenant_id: int, ref: Any) -> Instance:
    import uuid as uuidlib

    try:
        key = uuidlib.UUID(str(ref))
    except ValueError:
        raise ServiceError("instance", "exists", f"unknown instance {ref!r}") from None
    found = (
        Instance.objects.for_tenant(tenant_id)
        .select_related("host")
        .exclude(state=InstanceState.DELETED)
        .filter(uuid=key)
        .first()
    )
    if found is None:
        raise ServiceError("instance", "exists", f"unknown instance {ref!r}")
    return found


@transaction.atomic
def volume_attach(*, actor: Actor, volume: Volume, instance: Any) -> Operation:
    """Attach an available volume to a running VM (hot plug) or a stopped one (its definition),
    as its next free virtio disk; an Operation of the instance."""
    target = _instance_of(volume.tenant_id, instance)
    if target.kind == InstanceKind.CONTAINER:
        raise ServiceError("instance", "kind", f"{target.name} is a container: containers have no volumes")
    vm = instance_lock_idle(target)
    if vm.state not in ATTACH_STATES:
        raise Conflict("instance", "state", f"cannot attach a volume to {vm.name}: it is {vm.state}")
    locked = _lock(volume)
    _need(locked, "attach", VolumeState.AVAILABLE)
    if not settings.NUBIS_SHARED_INSTANCE_STORE and locked.host_id != vm.host_id:
        raise Conflict(
            "instance",
            "host",
            f"volume {locked.name} is on the store of host {locked.host}, {vm.name} runs on {vm.host} "
            "(the instance store is not shared)",
        )
    used = set(Volume.objects.for_tenant(vm.tenant_id).filter(instance=vm).values_list("device", flat=True))
    device = next((d for d in DEVICES if d not in used), None)
    if device is None:
        raise Conflict("instance", "devices", f"{vm.name} has no free disk for another volume")
    _set(locked, state=VolumeState.ATTACHING, instance=vm, device=device, fault="")
    operation = operation_record(
        vm,
        OperationKind.ATTACH_VOLUME,
        actor,
        params={"volume": locked.pk, "name": locked.name, "device": device},
    )
    audit_log(
        actor=actor, action="volume.attach", target=locked, detail={"instance": vm.name, "device": device}
    )
    operation_enqueue(operation)
    return operation


@transaction.atomic
def volume_detach(*, actor: Actor, volume: Volume) -> Operation:
    """Detach an attached volume (hot unplug: the guest must let go); an Operation of its instance."""
    attached = Volume.objects.for_tenant(volume.tenant_id).select_related("instance").get(pk=volume.pk)
    if attached.instance is None:
        raise Conflict("state", "state", f"volume {attached.name} is attached to nothing")
    vm = instance_lock_idle(attached.instance)  # the instance first, as attach does
    locked = _lock(attached)
    if locked.instance_id != vm.pk:
        raise Conflict("state", "state", f"volume {locked.name} moved meanwhile; try again")
    _need(locked, "detach", VolumeState.IN_USE)
    _set(locked, state=VolumeState.DETACHING)
    operation = operation_record(
        vm,
        OperationKind.DETACH_VOLUME,
        actor,
        params={"volume": locked.pk, "name": locked.name, "device": locked.device},
    )
    audit_log(actor=actor, action="volume.detach", target=locked, detail={"instance": vm.name})
    operation_enqueue(operation)
    return operation
