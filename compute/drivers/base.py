"""The driver interface every hypervisor backend implements (in the spirit of Nova's virt driver)."""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from pathlib import Path


class DriverError(RuntimeError):
    """The host refused or failed an action; the message is the hypervisor's own."""


@dataclass(frozen=True)
class HostFacts:
    """What a host has and what its hypervisor can really do."""

    cpu_model: str
    cpus: int
    ram_mib: int
    disk_gib: int
    kvm_device: bool
    kvm_usable: bool
    kvm_probe_detail: str
    tcg_available: bool
    paging: str
    iommu: bool
    vmm: str


@dataclass(frozen=True)
class GuestSpec:
    """Everything a driver needs to build one guest."""

    name: str
    uuid: str
    vcpus: int
    ram_mib: int
    current_ram_mib: int
    cpu_mode: str
    io_model: str
    balloon: bool
    disk_path: str
    serial_log: str
    network: str
    vnc_password: str
    kernel: str = ""
    initrd: str = ""
    cmdline: str = ""
    pci_devices: tuple[str, ...] = field(default=())
    # On a tenant network: the bridge to join, the tap's name and the MAC (else ``network``).
    bridge: str = ""
    port: str = ""
    mac: str = ""


class VmDriver(abc.ABC):
    """Lifecycle of virtual machines on one host. Every method is safe to call twice."""

    @abc.abstractmethod
    def facts(
        self, probe_kvm: bool = True, probe_image: GuestSpec | None = None, scratch: Path | None = None
    ) -> HostFacts: ...

    @abc.abstractmethod
    def create_disk(self, spec: GuestSpec, base: str, size_gib: int) -> None: ...

    @abc.abstractmethod
    def define(self, spec: GuestSpec) -> None: ...

    @abc.abstractmethod
    def redefine(self, spec: GuestSpec) -> None: ...

    @abc.abstractmethod
    def snapshot_create(self, name: str, snapshot: str) -> None: ...

    @abc.abstractmethod
    def snapshot_revert(self, name: str, snapshot: str) -> str: ...

    @abc.abstractmethod
    def snapshot_delete(self, name: str, snapshot: str) -> None: ...

    @abc.abstractmethod
    def start(self, name: str) -> None: ...

    @abc.abstractmethod
    def shutdown(self, name: str, timeout: float) -> bool:
        """Ask the guest to power off; force it after ``timeout``. True if it stopped cleanly."""

    @abc.abstractmethod
    def reboot(self, name: str) -> None: ...

    @abc.abstractmethod
    def set_memory(self, name: str, mib: int) -> None: ...

    @abc.abstractmethod
    def power_state(self, name: str) -> str | None:
        """'running', 'stopped', 'paused', 'crashed', or None when no such domain exists."""

    @abc.abstractmethod
    def undefine(self, name: str) -> None: ...

    @abc.abstractmethod
    def remove_files(self, spec_dir: str) -> None: ...

    @abc.abstractmethod
    def list_guests(self, prefix: str) -> list[str]: ...

    @abc.abstractmethod
    def vnc_port(self, name: str) -> int | None: ...

    @abc.abstractmethod
    def ip_address(self, name: str) -> str | None: ...

    def remove_stale_probes(self, older_than: float = 300.0) -> list[str]:
        """Remove capability-probe guests left by an agent that died mid-probe (none by default)."""
        return []
