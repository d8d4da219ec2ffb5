"""What a guest is made of on its host: its directory on the instance store and the spec its
driver builds it from (shared by the operations, migrations and HA restarts)."""

from __future__ import annotations

from pathlib import Path

from django.conf import settings

from compute.drivers.base import GuestSpec
from compute.models import Image, Instance


def instance_dir(instance: Instance) -> Path:
    return Path(settings.NUBIS_INSTANCE_DIR) / str(instance.uuid)


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
        serial_log="",
        network="",
        vnc_password="",
        kernel=image.kernel_path,
        initrd=image.initrd_path,
        cmdline=image.cmdline,
    )


__all__ = ["guest_spec", "guest_spec_for_probe", "instance_dir"]
