"""What a guest is made of on its host: its directory on the instance store and the spec its
driver builds it from (shared by the operations, migrations and HA restarts)."""

from __future__ import annotations

import json
from pathlib import Path

from django.conf import settings

from compute.drivers.base import GuestSpec, VolumeDisk
from compute.drivers.seed import SEED_NAME
from compute.models import Image, Instance, Volume, VolumeState

GIB = 2**30


def instance_dir(instance: Instance) -> Path:
    return Path(settings.NUBIS_INSTANCE_DIR) / str(instance.uuid)


def disk_size_gib(instance: Instance) -> int:
    """The instance's disk: its flavor's size, and never smaller than its image's virtual size."""
    image_gib = -(-int(instance.image.virtual_size_bytes or 0) // GIB)
    return max(instance.disk_gib, image_gib)


def seed_contents(instance: Instance) -> tuple[str, str]:
    """The NoCloud seed of a cloud-init guest: (meta-data, user-data).

    meta-data (JSON, which is YAML) names the instance (instance-id = its UUID, so cloud-init runs
    its once-per-instance modules once in the instance's life, whatever its host), its hostname,
    its tenant, and the SSH public keys (cloud-init gives them to the image's default user, whatever
    the user-data says). user-data is the owner's own when given, else a #cloud-config that sets the
    hostname, the guest's /etc/hosts and the keys.
    """
    keys = [str(key["public_key"]).strip() for key in instance.ssh_keys or [] if key.get("public_key")]
    meta = {
        "instance-id": str(instance.uuid),
        "local-hostname": instance.name,
        "instance-name": instance.name,
        "tenant": instance.tenant.slug,
        "public-keys": keys,
    }
    if instance.user_data:
        user_data = instance.user_data
    else:
        config: dict[str, object] = {
            "hostname": instance.name,
            "manage_etc_hosts": True,
        }
        if keys:
            config["ssh_authorized_keys"] = keys
        user_data = "#cloud-config\n" + json.dumps(config, indent=2) + "\n"
    return json.dumps(meta, indent=2) + "\n", user_data


def volume_path(volume: Volume) -> Path:
    """A volume's file: on the instance store (shared in a cluster), outside any instance's
    directory, so it outlives the instances it was attached to."""
    return Path(settings.NUBIS_INSTANCE_DIR) / "volumes" / f"{volume.uuid}.{volume.format}"


def volume_disk(volume: Volume) -> VolumeDisk:
    return VolumeDisk(path=str(volume_path(volume)), device=volume.device, format=volume.format)


# An attached volume is part of its VM's definition in these states (attaching: not yet).
ATTACHED_STATES = (VolumeState.IN_USE, VolumeState.DETACHING)


def attached_volumes(instance: Instance) -> tuple[VolumeDisk, ...]:
    if instance.pk is None:
        return ()  # not saved yet (a benchmark's raw twin, a what-if): nothing can be attached
    rows = Volume.objects.for_tenant(instance.tenant_id).filter(
        instance=instance, state__in=ATTACHED_STATES, deleted_at__isnull=True
    )
    return tuple(volume_disk(v) for v in rows.order_by("device"))


def guest_spec(instance: Instance) -> GuestSpec:
    image: Image = instance.image
    flavor = instance.flavor
    workdir = instance_dir(instance)
    return GuestSpec(
        name=instance.domain_name,
        uuid=str(instance.uuid),
        vcpus=instance.vcpus,
        ram_mib=instance.ram_mib,
        current_ram_mib=instance.current_ram_mib,
        cpu_mode=flavor.cpu_mode,
        io_model=flavor.io_model,
        balloon=flavor.balloon,
        disk_path=str(workdir / "disk.qcow2"),
        serial_log=str(workdir / "serial.log"),
        network=settings.NUBIS_LIBVIRT_NETWORK,
        vnc_password=instance.vnc_password,
        kernel=image.kernel_path,
        initrd=image.initrd_path,
        cmdline=image.cmdline,
        pci_devices=(flavor.pci_passthrough,) if flavor.pci_passthrough else (),
        bridge=instance.network.bridge if instance.network else "",
        port=instance.port_name if instance.network else "",
        mac=instance.mac_address,
        base_format=image.disk_format or "qcow2",
        seed_path=str(workdir / SEED_NAME) if image.cloud_init else "",
        guest_agent=image.cloud_init,
        volumes=attached_volumes(instance),
    )


def guest_spec_for_probe(image: Image) -> GuestSpec:
    """A minimal spec carrying the image's files, for the KVM probe boot."""
    return GuestSpec(
        name="probe",
        uuid="",
        vcpus=1,
        ram_mib=128,
        current_ram_mib=128,
        cpu_mode="hardware",
        io_model="virtio",
        balloon=False,
        disk_path=image.disk_path,
        base_format=image.disk_format or "qcow2",
        serial_log="",
        network="",
        vnc_password="",
        kernel=image.kernel_path,
        initrd=image.initrd_path,
        cmdline=image.cmdline,
    )


__all__ = [
    "attached_volumes",
    "disk_size_gib",
    "guest_spec",
    "guest_spec_for_probe",
    "instance_dir",
    "seed_contents",
    "volume_disk",
    "volume_path",
]
