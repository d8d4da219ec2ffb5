"""What a host's agent does for volumes (the requests and their records are
compute.services.volumes', which the web process loads).

- A volume's own file work (make, remove, grow, snapshot) is a quick call of the agent RPC on any
  host whose instance store holds the file (``volume_work``): the volume is attached to nothing
  then, so no guest has the file open. The call reads the volume's row, checks that its state asks
  for this work (a late or repeated request does nothing harmful), and works on the file only; the
  portal records the outcome.
- Attaching and detaching change a VM, so they are Operations of the instance, run by its host's
  agent like any other (``volume_plug`` / ``volume_unplug``, from compute.services.agent).
"""

from __future__ import annotations

import time
import uuid as uuidlib
from typing import Any

from django.conf import settings
from django.db import transaction

from compute.drivers import volume_files
from compute.drivers.base import DriverError, VmDriver
from compute.models import Host, Instance, Operation, OperationKind, Volume, VolumeSnapshot, VolumeState
from compute.services.guests import volume_disk, volume_path
from compute.services.volumes import volume_event

# The state a volume is in while each piece of file work is asked for.
_WORK_STATES = {
    "make": VolumeState.CREATING,
    "remove": VolumeState.DELETING,
    "grow": VolumeState.RESIZING,
    "snapshot": VolumeState.SNAPSHOTTING,
    "unsnapshot": VolumeState.SNAPSHOTTING,
}


def snapshot_tag(snapshot_id: int) -> str:
    """The internal snapshot's name in the qcow2 file (ours, never a user's text)."""
    return f"nubis-{int(snapshot_id)}"


def volume_work(args: dict[str, Any], deadline: float) -> dict[str, Any]:
    """Do one piece of a volume's file work on this host (see the module's docstring)."""
    action = str(args["action"])
    if action not in _WORK_STATES:
        raise ValueError(f"no such volume work: {action}")
    volume = (
        Volume.objects.unscoped()
        .select_related("source_image", "source_snapshot__volume")
        .filter(uuid=uuidlib.UUID(str(args["uuid"])))
        .first()
    )
    if volume is None:
        raise DriverError(f"no volume {args['uuid']} in the database")
    if volume.state != _WORK_STATES[action]:
        raise DriverError(f"volume {volume.name} is {volume.state}: no {action} asked for")
    path = str(volume_path(volume))
    if action == "make":
        volume_files.volume_make(path, volume.size_gib, _source(volume))
        if time.time() > deadline and _gave_up(volume):
            volume_files.volume_remove(path)  # its caller gave up and recorded the failure
            raise DriverError("the volume was made after its request had expired; removed")
    elif action == "remove":
        volume_files.volume_remove(path)
    elif action == "grow":
        size = int(args["size_gib"])
        if size < volume.size_gib:
            raise ValueError("size_gib: a volume only grows")
        volume_files.volume_grow(path, size)
    elif action == "snapshot":
        volume_files.snapshot_make(path, snapshot_tag(_snapshot_of(volume, args).pk))
    elif action == "unsnapshot":
        volume_files.snapshot_remove(path, snapshot_tag(int(args["snapshot"])))
    return {"size_bytes": volume_files.virtual_size(path) if action != "remove" else 0}


def _gave_up(volume: Volume) -> bool:
    return not Volume.objects.unscoped().filter(pk=volume.pk, state=VolumeState.CREATING).exists()


def _snapshot_of(volume: Volume, args: dict[str, Any]) -> VolumeSnapshot:
    snapshot = VolumeSnapshot.objects.unscoped().filter(pk=int(args["snapshot"]), volume=volume).first()
    if snapshot is None:
        raise DriverError(f"volume {volume.name} has no snapshot {args['snapshot']}")
    return snapshot


def _source(volume: Volume) -> volume_files.VolumeSource | None:
    if volume.source_snapshot is not None:
        origin = volume.source_snapshot.volume
        return volume_files.VolumeSource(
            str(volume_path(origin)), origin.format, snapshot_tag(volume.source_snapshot.pk)
        )
    if volume.source_image is not None:
        return volume_files.VolumeSource(volume.source_image.disk_path, volume.source_image.disk_format)
    return None


# -- attach and detach: Operations of the instance ------------------------------------------------


def _volume_of(operation: Operation) -> Volume:
    volume = Volume.objects.unscoped().filter(pk=int(operation.params["volume"])).first()
    if volume is None:
        raise DriverError(f"volume {operation.params.get('volume')} is gone")
    return volume


def volume_plug(operation: Operation, instance: Instance, driver: VmDriver) -> None:
    """Attach: hot plug into the running VM (and its definition), or into a stopped VM's definition."""
    volume = _volume_of(operation)
    if volume.state == VolumeState.IN_USE and volume.instance_id == instance.pk:
        return  # a repeated delivery: done already
    if volume.state != VolumeState.ATTACHING or volume.instance_id != instance.pk:
        raise DriverError(f"volume {volume.name} is {volume.state}, not attaching to {instance.name}")
    driver.volume_attach(instance.domain_name, volume_disk(volume))
    with transaction.atomic():
        Volume.objects.unscoped().filter(pk=volume.pk).update(state=VolumeState.IN_USE, fault="")
        volume.state, volume.fault = VolumeState.IN_USE, ""
        volume_event(volume)


def volume_unplug(operation: Operation, instance: Instance, driver: VmDriver) -> None:
    """Detach: the running guest must let go of the disk within NUBIS_VOLUME_DETACH_TIMEOUT."""
    volume = _volume_of(operation)
    if volume.state == VolumeState.AVAILABLE and volume.instance_id is None:
        return  # a repeated delivery: done already
    if volume.state != VolumeState.DETACHING or volume.instance_id != instance.pk:
        raise DriverError(f"volume {volume.name} is {volume.state}, not detaching from {instance.name}")
    timeout = float(settings.NUBIS_VOLUME_DETACH_TIMEOUT)
    driver.volume_detach(instance.domain_name, volume_disk(volume), timeout)
    with transaction.atomic():
        _free(volume, "")


def _free(volume: Volume, fault: str) -> None:
    volume.state, volume.instance, volume.device, volume.fault = VolumeState.AVAILABLE, None, "", fault
    volume.save(update_fields=["state", "instance", "device", "fault"])
    volume_event(volume)


def volume_op_failed(operation: Operation, instance: Instance, driver: VmDriver, error: str) -> None:
    """An attach or detach failed: a failed attach leaves the volume available (and the VM's
    definition without it), a failed detach leaves it in use; both with the reason."""
    volume = Volume.objects.unscoped().filter(pk=int(operation.params.get("volume", 0))).first()
    if volume is None:
        return
    if operation.kind == OperationKind.ATTACH_VOLUME and volume.state == VolumeState.ATTACHING:
        try:  # what half an attach left (its definition, say) goes, so no later start uses it
            driver.volume_detach(instance.domain_name, volume_disk(volume), 5.0)
        except DriverError as exc:
            error = f"{error}; removing it from the VM failed too: {exc}"
        _free(volume, f"attach to {instance.name} failed: {error}"[:4000])
    elif operation.kind == OperationKind.DETACH_VOLUME and volume.state == VolumeState.DETACHING:
        volume.state, volume.fault = VolumeState.IN_USE, f"detach failed: {error}"[:4000]
        volume.save(update_fields=["state", "fault"])
        volume_event(volume)


def volumes_release(instance: Instance) -> int:
    """The instance is deleted: its volumes are detached (their files stay) and become available."""
    released = 0
    for volume in Volume.objects.unscoped().filter(instance=instance, deleted_at__isnull=True):
        _free(volume, "")
        released += 1
    return released


def volumes_moved(instance: Instance, target: Host, *, remove_source_files: bool) -> None:
    """The VM moved live to ``target``: its volumes now live on that host's store (without a shared
    store they were copied along with its disk, and this host's copies go)."""
    for volume in Volume.objects.unscoped().filter(instance=instance, deleted_at__isnull=True):
        if remove_source_files:
            volume_files.volume_remove(str(volume_path(volume)))
        Volume.objects.unscoped().filter(pk=volume.pk).update(host=target)
