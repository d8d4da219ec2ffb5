"""The driver interfaces every backend implements (in the spirit of Nova's virt driver).

``GuestDriver`` is what VMs and containers share; ``VmDriver`` adds what only a hypervisor does and
``ContainerDriver`` what only a container runtime does, so neither has the other's methods to refuse.
Drivers take plain specs (``GuestSpec``, an OCI config) and give plain facts (``HostFacts``,
``Counters``, ``LogChunk``): no model, no database, no Django.
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


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
    hypervisor_uuid: str = ""  # the daemon's own host UUID


@dataclass(frozen=True)
class Counters:
    """One reading of a guest's or the host's cumulative counters and gauges.

    ``taken`` is time.monotonic() at the reading: rates divide by monotonic time, immune to clock jumps.
    A VM whose guest reports memory statistics also carries the balloon's size at the reading, the
    wall-clock second of the guest's last report, and when the Sampler last saw the balloon move.
    """

    cpu_ns: int
    mem_bytes: int
    mem_peak_bytes: int | None
    pids: int | None
    blk_read_bytes: int
    blk_write_bytes: int
    net_rx_bytes: int
    net_tx_bytes: int
    taken: float
    balloon_kib: int | None = None
    guest_report_at: int | None = None
    balloon_moved_at: float | None = None


@dataclass(frozen=True)
class VolumeDisk:
    """A persistent volume as a VM sees it: its file, the disk it is in the guest (vdb...)."""

    path: str
    device: str
    format: str = "qcow2"


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
    # Attached persistent volumes (compute.services.volumes), virtio disks after the root disk.
    volumes: tuple[VolumeDisk, ...] = field(default=())
    # The format of the base disk the instance's overlay is made on, always given explicitly.
    base_format: str = "qcow2"
    # A cloud-init image's guest: its NoCloud seed (read-only CD-ROM) and a qemu-guest-agent channel.
    seed_path: str = ""
    guest_agent: bool = False


@dataclass(frozen=True)
class MigrationStats:
    """What a finished live migration took, as the destination's hypervisor measured it."""

    total_ms: int  # from the start of the job to the guest running on the destination
    downtime_ms: int  # the guest paused for the switch-over
    data_bytes: int  # sent over the wire (memory, and disks when they were copied)
    memory_bytes: int
    setup_ms: int = 0
    dirty_rate: int = 0  # pages per second the guest dirtied at the end
    iterations: int = 0  # memory passes
    vnc_port: int | None = None  # the guest's console on the destination (not a figure of the move)

    def as_dict(self) -> dict[str, int]:
        return {k: v for k, v in self.__dict__.items() if k != "vnc_port" and v is not None}


@dataclass(frozen=True)
class MigrationProgress:
    """One reading of a running migration: bytes to send in all, bytes left, time so far."""

    data_total: int
    data_remaining: int
    elapsed_ms: int

    @property
    def percent(self) -> int:
        if self.data_total <= 0:
            return 0
        return max(0, min(99, round(100 * (self.data_total - self.data_remaining) / self.data_total)))


@dataclass(frozen=True)
class LogChunk:
    """Bytes of a log on the host (a serial console, a container's output) and where they sit in it."""

    data: bytes
    start: int  # the offset of ``data`` in the log
    size: int  # the log's size when read: where the next read from the same place starts


def read_log(path: Path, offset: int | None, max_bytes: int) -> LogChunk:
    """From ``offset`` to the end of the log at ``path``, at most the last ``max_bytes`` of it.

    ``offset`` None reads the tail; an offset past the end (the log was replaced) reads from the
    start again. A log that does not exist (yet) is empty.
    """
    try:
        with path.open("rb") as handle:
            size = handle.seek(0, 2)
            begin = 0 if offset is None or offset > size else max(0, offset)
            start = max(begin, size - max(0, max_bytes))
            handle.seek(start)
            data = handle.read(size - start)
    except (FileNotFoundError, NotADirectoryError):
        return LogChunk(b"", 0, 0)
    except OSError as exc:
        raise DriverError(f"read {path.name}: {exc.strerror}") from None
    return LogChunk(data, start, start + len(data))


class GuestDriver(abc.ABC):
    """What every guest of one host does, VM or container: power, memory, listing, removal and its
    console, addressed by name. Every method is safe to call twice."""

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
    def set_cpu(self, name: str, pct: int) -> None:
        """Give the guest ``pct``% of one CPU, live and for its next start: a container's CFS quota
        (a hard cap), a VM's CPU shares (a weight in proportion to ``pct``, that counts only under
        contention)."""

    @abc.abstractmethod
    def cpu_pct(self, name: str) -> int | None:
        """The CPU the running guest holds now as ``set_cpu`` gives it, in % of one CPU (read from
        the host: the quota of its cgroup, the shares of its domain); None when it does not run or
        has no limit."""

    @abc.abstractmethod
    def power_state(self, name: str) -> str | None:
        """'running', 'stopped', 'paused', 'crashed', or None when no such guest exists."""

    @abc.abstractmethod
    def undefine(self, name: str) -> None: ...

    @abc.abstractmethod
    def remove_files(self, spec_dir: str) -> None: ...

    @abc.abstractmethod
    def list_guests(self, prefix: str) -> list[str]: ...

    @abc.abstractmethod
    def console_read(self, name: str, offset: int | None, max_bytes: int) -> LogChunk:
        """The guest's console output (a VM's serial log, a container's stdout) from ``offset``, as
        ``read_log``; empty when the guest has none (never made, or gone)."""


class VmDriver(GuestDriver):
    """Virtual machines of one host: what only a hypervisor does (disks, definitions, snapshots,
    consoles, the host's own facts) on top of the common guest abilities."""

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
    def vnc_port(self, name: str) -> int | None: ...

    def serial_device(self, name: str) -> str | None:
        """The host's path of the running guest's interactive serial port (a pty); None: none."""
        return None

    @abc.abstractmethod
    def ip_address(self, name: str) -> str | None: ...

    @abc.abstractmethod
    def memory_stats(self, name: str) -> dict[str, int]:
        """The balloon's statistics of a running guest, in KiB ('actual': its size); {} otherwise."""

    @abc.abstractmethod
    def guest_usage(self) -> dict[str, Counters]:
        """Usage counters of every active guest of the host, by name, read at once."""

    @abc.abstractmethod
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
        """Move the running guest live to the hypervisor at ``peer_uri`` (peer to peer): it runs
        there and is gone here when this returns. On failure or past ``timeout`` seconds the move
        is aborted and the guest keeps running here (DriverError). ``bandwidth_mib``: a cap in MiB/s
        (0: none)."""

    @abc.abstractmethod
    def migration_abort(self, name: str) -> bool:
        """Abort the guest's outgoing migration, if one runs here; True if there was one."""

    def remove_stale_probes(self, older_than: float = 300.0) -> list[str]:
        """Remove capability-probe guests left by an agent that died mid-probe (none by default)."""
        return []

    def volume_attach(self, name: str, disk: VolumeDisk) -> None:
        """Plug the volume into the guest: live (hot plug) when it runs, and into its definition."""
        raise DriverError("this hypervisor does not attach volumes")

    def volume_detach(self, name: str, disk: VolumeDisk, timeout: float) -> None:
        """Unplug the volume; a running guest must release it within ``timeout`` seconds, or
        DriverError and the volume stays attached."""
        raise DriverError("this hypervisor does not detach volumes")

    def create_seed(self, spec: GuestSpec, meta_data: str, user_data: str) -> None:
        """Write the guest's NoCloud seed (its config drive) at ``spec.seed_path``, replacing one
        that is there. Host-side file work, the same for every hypervisor driver."""
        from compute.drivers.seed import write_seed

        if not spec.seed_path:
            raise DriverError("config drive: the guest has no seed path")
        write_seed(Path(spec.seed_path), meta_data, user_data)

    def guest_addresses(self, name: str) -> list[str]:
        """The guest's IP addresses as its guest agent reports them (none without an agent)."""
        return []

    def guest_exec(self, name: str, argv: list[str], timeout: float = 30.0) -> tuple[int, str, str]:
        """Run ``argv`` inside the guest through its guest agent: (exit code, stdout, stderr)."""
        raise DriverError(f"{name}: this hypervisor driver has no guest agent")


class ContainerDriver(GuestDriver):
    """Containers of one host: what only a container runtime does (bundles, live cgroup limits,
    OOM counts, exec, output) on top of the common guest abilities."""

    @abc.abstractmethod
    def create(self, name: str, config: dict[str, Any]) -> None:
        """Write the container's bundle with ``config`` (an OCI config.json) and run it."""

    @abc.abstractmethod
    def save_config(self, name: str, config: dict[str, Any]) -> None:
        """Replace the bundle's config: what the container's next start runs with."""

    @abc.abstractmethod
    def update(self, name: str, **limits: Any) -> None:
        """Change the cgroup limits of a running container (the keys of ``OciDriver.update``)."""

    @abc.abstractmethod
    def memory_limit_mib(self, name: str) -> int | None:
        """The memory limit the kernel holds for the container; None without one."""

    @abc.abstractmethod
    def oom_kills(self, name: str) -> int | None:
        """Processes of the container the OOM killer killed; None once its cgroup is gone."""

    @abc.abstractmethod
    def pid(self, name: str) -> int | None:
        """The host pid of the container's init while it runs (to name its network namespace)."""

    @abc.abstractmethod
    def exec(self, name: str, argv: list[str], timeout: float) -> tuple[int, str, str]:
        """Run ``argv`` in the running container: (exit code, stdout, stderr)."""

    @abc.abstractmethod
    def logs(self, name: str, max_bytes: int) -> str:
        """The end of the container's stdout and stderr, oldest first (at most ``max_bytes``)."""

    @abc.abstractmethod
    def usage(self, name: str) -> Counters | None:
        """The container's usage counters from its cgroup (no network); None once it is gone."""

    @abc.abstractmethod
    def blkio_weight_supported(self) -> bool:
        """Whether the host's I/O scheduler offers a block I/O weight to set."""
