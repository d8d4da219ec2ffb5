"""Build libvirt domain XML from a GuestSpec: device models, CPU mode, balloon, serial, VNC."""

from __future__ import annotations

import xml.etree.ElementTree as ET

from compute.drivers.base import GuestSpec, VolumeDisk
from compute.models import CpuMode, IoModel


def _sub(parent: ET.Element, tag: str, text: str | None = None, **attrs: str) -> ET.Element:
    element = ET.SubElement(parent, tag, attrs)
    if text is not None:
        element.text = text
    return element


def _pci_address(parent: ET.Element, address: str) -> None:
    domain, bus, rest = address.split(":")
    slot, function = rest.split(".")
    _sub(parent, "address", domain=f"0x{domain}", bus=f"0x{bus}", slot=f"0x{slot}", function=f"0x{function}")


def volume_disk_element(volume: VolumeDisk) -> ET.Element:
    """A volume's disk: virtio whatever the root disk's bus (virtio hot-plugs), its format always
    given (never probed)."""
    disk = ET.Element("disk", type="file", device="disk")
    _sub(disk, "driver", name="qemu", type=volume.format, cache="writeback")
    _sub(disk, "source", file=volume.path)
    _sub(disk, "target", dev=volume.device, bus="virtio")
    return disk


def volume_disk_xml(volume: VolumeDisk) -> str:
    return ET.tostring(volume_disk_element(volume), encoding="unicode")


def domain_xml(spec: GuestSpec) -> str:
    """The domain definition for one guest.

    - ``hardware`` CPU mode runs under KVM with the host CPU passed through; ``emulated`` runs
      under QEMU's TCG with a fixed qemu64 model (which also keeps live migration possible).
    - ``virtio`` I/O gives paravirtual disk and NIC; ``emulated`` gives a SATA disk and an e1000.
    """
    hardware = spec.cpu_mode == CpuMode.HARDWARE
    virtio = spec.io_model == IoModel.VIRTIO
    root = ET.Element("domain", type="kvm" if hardware else "qemu")
    _sub(root, "name", spec.name)
    _sub(root, "uuid", spec.uuid)
    _sub(root, "memory", str(spec.ram_mib), unit="MiB")
    _sub(root, "currentMemory", str(spec.current_ram_mib), unit="MiB")
    _sub(root, "vcpu", str(spec.vcpus), placement="static")
    os_el = _sub(root, "os")
    _sub(os_el, "type", "hvm", arch="x86_64", machine="pc")
    if spec.kernel:
        _sub(os_el, "kernel", spec.kernel)
        if spec.initrd:
            _sub(os_el, "initrd", spec.initrd)
        _sub(os_el, "cmdline", f"{spec.cmdline} nubis.name={spec.name}".strip())
    else:
        _sub(os_el, "boot", dev="hd")
    features = _sub(root, "features")
    _sub(features, "acpi")
    _sub(features, "apic")
    if hardware:
        _sub(root, "cpu", mode="host-passthrough", check="none")
    else:
        cpu = _sub(root, "cpu", mode="custom", match="exact")
        _sub(cpu, "model", "qemu64", fallback="forbid")
    _sub(root, "on_poweroff", "destroy")
    _sub(root, "on_reboot", "restart")
    _sub(root, "on_crash", "destroy")

    devices = _sub(root, "devices")
    disk = _sub(devices, "disk", type="file", device="disk")
    _sub(disk, "driver", name="qemu", type="qcow2", cache="none" if hardware else "writeback")
    _sub(disk, "source", file=spec.disk_path)
    _sub(disk, "target", dev="vda" if virtio else "sda", bus="virtio" if virtio else "sata")
    if spec.seed_path:
        # The NoCloud seed (config drive): a read-only CD-ROM on the IDE bus every 'pc' machine has.
        # Read-only, so a copy-storage migration does not copy it: the target writes its own.
        seed = _sub(devices, "disk", type="file", device="cdrom")
        _sub(seed, "driver", name="qemu", type="raw")
        _sub(seed, "source", file=spec.seed_path)
        _sub(seed, "target", dev="hdc", bus="ide")
        _sub(seed, "readonly")
    if spec.guest_agent:
        # qemu-guest-agent's virtio-serial port (libvirt picks the socket on the host).
        channel = _sub(devices, "channel", type="unix")
        _sub(channel, "target", type="virtio", name="org.qemu.guest_agent.0")
    for volume in spec.volumes:  # persistent volumes (compute.services.volumes)
        devices.append(volume_disk_element(volume))
    if spec.bridge:
        # A tenant network: the tap gets the port's name, so its firewall rules find it.
        iface = _sub(devices, "interface", type="bridge")
        _sub(iface, "source", bridge=spec.bridge)
        _sub(iface, "target", dev=spec.port)
        _sub(iface, "mac", address=spec.mac)
        _sub(iface, "model", type="virtio" if virtio else "e1000")
    elif spec.network:
        iface = _sub(devices, "interface", type="network")
        _sub(iface, "source", network=spec.network)
        _sub(iface, "model", type="virtio" if virtio else "e1000")
    # A pty the host's agent can open for an interactive console (compute.serial_relay), whose
    # output is also appended to the log (the serial tail, tests' markers): libvirt allocates the
    # pty on whichever host runs the guest, so it survives a move or an HA restart.
    serial = _sub(devices, "serial", type="pty")
    _sub(serial, "log", file=spec.serial_log, append="on")
    _sub(serial, "target", port="0")
    _sub(devices, "graphics", type="vnc", listen="127.0.0.1", autoport="yes", passwd=spec.vnc_password)
    _sub(devices, "video").append(ET.Element("model", type="vga"))
    if spec.balloon:
        balloon = _sub(devices, "memballoon", model="virtio")
        _sub(balloon, "stats", period="2")
    else:
        _sub(devices, "memballoon", model="none")
    for address in spec.pci_devices:
        hostdev = _sub(devices, "hostdev", mode="subsystem", type="pci", managed="yes")
        _pci_address(_sub(hostdev, "source"), address)
        _sub(hostdev, "driver", name="vfio")
    return ET.tostring(root, encoding="unicode")
