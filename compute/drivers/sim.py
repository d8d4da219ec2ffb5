"""The simulator driver: an in-memory stand-in for a hypervisor, for scale tests and what-if runs only.

House rule (ARCHITECTURE §2, issue 6): a simulated driver serves one job, scale tests and what-if
planning with thousands of hosts. It is named as a simulator, it never stands in for a test of
real provisioning, and it acts only for a host registered as simulated (``Host.simulated``).
Constructing it for any other host raises ``NotSimulated``; ``driver_for_host`` hands it out for
simulated hosts only and gives real hosts their real driver.

Nothing here touches the machine: no libvirt, no files, no processes. A "domain" is a record
(its spec, power state, memory target, CPU grant and snapshots) kept in a dict of the driver object.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Protocol

from compute.drivers.base import (
    Counters,
    DriverError,
    GuestSpec,
    HostFacts,
    LogChunk,
    MigrationProgress,
    MigrationStats,
    VmDriver,
)


class NotSimulated(DriverError):
    """The simulator was asked to act for a host that is not registered as simulated."""


class HostLike(Protocol):
    """What the simulator needs of a host: a ``Host`` row, or a ``SimHost`` of a trace."""

    @property
    def name(self) -> str: ...

    @property
    def simulated(self) -> bool: ...


@dataclass(frozen=True)
class SimHost:
    """A simulated host outside the database (a host record of a simulation trace)."""

    name: str
    simulated: bool = True
    cpus: int = 0
    ram_mib: int = 0
    disk_gib: int = 0
    kvm: bool = False
    iommu: bool = False


@dataclass
class SimDomain:
    """One simulated guest: what was defined, and the state the real hypervisor would report."""

    spec: GuestSpec
    state: str = "stopped"
    memory_mib: int = 0
    cpu_pct: int | None = None  # the CPU grant set_cpu gave it (% of one CPU); None: never set
    boots: int = 0
    snapshots: dict[str, tuple[str, int]] = field(default_factory=dict)  # name -> (state, memory)


class SimulatorDriver(VmDriver):
    """An in-memory hypervisor for one simulated host. Every method is safe to call twice."""

    def __init__(self, host: HostLike) -> None:
        # Checked here, once, so that no code path can get a simulator object for a real host.
        if not getattr(host, "simulated", False):
            raise NotSimulated(
                f"host {host.name!r} is not registered as simulated: the simulator driver never acts "
                "for a real host (use its real driver)"
            )
        self.host_name = host.name
        self._cpus = int(getattr(host, "cpus", 0) or 0)
        self._ram_mib = int(getattr(host, "ram_mib", 0) or 0)
        self._disk_gib = int(getattr(host, "disk_gib", 0) or 0)
        self._kvm = bool(getattr(host, "kvm", getattr(host, "kvm_usable", False)))
        self._iommu = bool(getattr(host, "iommu", False))
        self.domains: dict[str, SimDomain] = {}
        self.disks: dict[str, int] = {}  # path -> GiB; no file is ever written

    # -- host ------------------------------------------------------------------------------------
    def facts(
        self, probe_kvm: bool = True, probe_image: GuestSpec | None = None, scratch: Path | None = None
    ) -> HostFacts:
        return HostFacts(
            cpu_model="simulated CPU",
            cpus=self._cpus,
            ram_mib=self._ram_mib,
            disk_gib=self._disk_gib,
            kvm_device=self._kvm,
            kvm_usable=self._kvm,
            kvm_probe_detail="simulator: KVM is declared by the trace, never probed",
            tcg_available=True,
            paging="ept" if self._kvm else "none",
            iommu=self._iommu,
            vmm="simulator (no hypervisor)",
        )

    # -- guests ----------------------------------------------------------------------------------
    def _domain(self, what: str, name: str) -> SimDomain:
        domain = self.domains.get(name)
        if domain is None:
            raise DriverError(f"{what}: no domain {name} on simulated host {self.host_name}")
        return domain

    def create_disk(self, spec: GuestSpec, base: str, size_gib: int) -> None:
        self.disks.setdefault(spec.disk_path, size_gib)

    def define(self, spec: GuestSpec) -> None:
        if spec.name in self.domains:
            return
        self.domains[spec.name] = SimDomain(spec=spec, memory_mib=spec.current_ram_mib)

    def redefine(self, spec: GuestSpec) -> None:
        """Replace a stopped domain's definition; a running one is refused, as libvirt's driver does."""
        domain = self.domains.get(spec.name)
        if domain is None:
            self.define(spec)
            return
        if domain.state == "running":
            raise DriverError("redefine: the domain is running; stop it first")
        domain.spec = spec
        domain.memory_mib = spec.current_ram_mib

    def snapshot_create(self, name: str, snapshot: str) -> None:
        domain = self._domain("snapshot", name)
        domain.snapshots.setdefault(snapshot, (domain.state, domain.memory_mib))

    def snapshot_revert(self, name: str, snapshot: str) -> str:
        domain = self._domain("revert", name)
        if snapshot not in domain.snapshots:
            raise DriverError(f"revert: no snapshot {snapshot} of {name}")
        domain.state, domain.memory_mib = domain.snapshots[snapshot]
        return domain.state

    def snapshot_delete(self, name: str, snapshot: str) -> None:
        domain = self.domains.get(name)
        if domain is not None:
            domain.snapshots.pop(snapshot, None)

    def start(self, name: str) -> None:
        domain = self._domain("start", name)
        if domain.state != "running":
            domain.state = "running"
            domain.boots += 1

    def shutdown(self, name: str, timeout: float) -> bool:
        domain = self.domains.get(name)
        if domain is not None:
            domain.state = "stopped"
        return True

    def reboot(self, name: str) -> None:
        domain = self._domain("reboot", name)
        domain.state = "running"
        domain.boots += 1

    def set_memory(self, name: str, mib: int) -> None:
        domain = self._domain("set memory", name)
        # The real drivers cannot go above the defined maximum or below a bootable floor either.
        if mib < 1 or mib > domain.spec.ram_mib:
            raise DriverError(f"set memory: {mib} MiB is outside 1..{domain.spec.ram_mib} MiB for {name}")
        domain.memory_mib = mib
        domain.spec = replace(domain.spec, current_ram_mib=mib)

    def set_cpu(self, name: str, pct: int) -> None:
        domain = self._domain("set cpu", name)
        if pct < 1:
            raise DriverError(f"set cpu: {pct}% of a CPU is below 1% for {name}")
        domain.cpu_pct = pct  # recorded only: a simulated guest burns no CPU to share

    def cpu_pct(self, name: str) -> int | None:
        domain = self.domains.get(name)
        if domain is None or domain.state != "running":
            return None
        return domain.cpu_pct

    def power_state(self, name: str) -> str | None:
        domain = self.domains.get(name)
        return None if domain is None else domain.state

    def undefine(self, name: str) -> None:
        self.domains.pop(name, None)

    def remove_files(self, spec_dir: str) -> None:
        # Only the simulator's own bookkeeping: a simulated host has no files to remove.
        prefix = spec_dir.rstrip("/") + "/"
        for path in [p for p in self.disks if p.startswith(prefix) or p == spec_dir]:
            del self.disks[path]

    def list_guests(self, prefix: str) -> list[str]:
        return sorted(n for n in self.domains if n.startswith(prefix))

    def vnc_port(self, name: str) -> int | None:
        return None  # a simulated guest has no console

    def ip_address(self, name: str) -> str | None:
        return None

    def memory_stats(self, name: str) -> dict[str, int]:
        domain = self.domains.get(name)
        if domain is None or domain.state != "running":
            return {}
        return {"actual": domain.memory_mib * 1024}  # the balloon sits at the target at once

    def guest_usage(self) -> dict[str, Counters]:
        return {}  # a simulated guest burns no CPU and reads no disk: there is nothing to sample

    def console_read(self, name: str, offset: int | None, max_bytes: int) -> LogChunk:
        return LogChunk(b"", 0, 0)  # a simulated guest writes no console log

    # -- what a simulation reads back ------------------------------------------------------------
    def migrate(
        self,
        name: str,
        peer_uri: str,
        *,
        shared_store: bool,
        max_downtime_ms: int,
        timeout: float,
        bandwidth_mib: int = 0,
        on_progress: Callable[[MigrationProgress], None] | None = None,
    ) -> MigrationStats:
        raise NotSimulated(f"the simulator moves no guest ({name} to {peer_uri})")

    def migration_abort(self, name: str) -> bool:
        return False  # the simulator moves nothing

    def running_memory_mib(self) -> int:
        """Memory held by the running domains (what a real host's hypervisor would report)."""
        return sum(d.memory_mib for d in self.domains.values() if d.state == "running")


# One simulator per simulated host and process: the domains live in the driver object, so the
# next operation on the same host must find the same one.
_SIMULATORS: dict[str, SimulatorDriver] = {}


def driver_for_host(host: HostLike) -> VmDriver:
    """The driver of ``host``: the simulator for a simulated host, the real one for any other.

    A real host always gets the libvirt driver on its URI, never the simulator, whatever else
    is asked; the simulator object of a simulated host is kept for the process.
    """
    if getattr(host, "simulated", False) is True:
        driver = _SIMULATORS.get(host.name)
        if driver is None:
            driver = _SIMULATORS[host.name] = SimulatorDriver(host)
        return driver
    from django.conf import settings

    from compute.drivers.libvirt import LibvirtDriver

    return LibvirtDriver(getattr(host, "uri", "") or settings.LIBVIRT_URI)
