"""The libvirt driver: QEMU/KVM or TCG guests on one host's libvirt daemon."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shutil
import subprocess
import threading
import time
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape

import libvirt

from compute.drivers.base import (
    Counters,
    DriverError,
    GuestSpec,
    HostFacts,
    LogChunk,
    MigrationProgress,
    MigrationStats,
    VmDriver,
    VolumeDisk,
    read_log,
)
from compute.drivers.domain_xml import domain_xml, volume_disk_xml


def _quiet(_ctx: Any, _err: Any) -> None:
    """libvirt prints every error to stderr by default; ours are raised as DriverError instead."""


libvirt.registerErrorHandler(_quiet, None)

_STATES = {
    libvirt.VIR_DOMAIN_RUNNING: "running",
    libvirt.VIR_DOMAIN_BLOCKED: "running",
    libvirt.VIR_DOMAIN_PAUSED: "paused",
    libvirt.VIR_DOMAIN_PMSUSPENDED: "paused",
    libvirt.VIR_DOMAIN_SHUTDOWN: "running",  # shutting down, still alive
    libvirt.VIR_DOMAIN_SHUTOFF: "stopped",
    libvirt.VIR_DOMAIN_CRASHED: "crashed",
}


PROBE_PREFIX = "nubis-kvm-probe-"

DOMAIN_STATS = (
    libvirt.VIR_DOMAIN_STATS_CPU_TOTAL
    | libvirt.VIR_DOMAIN_STATS_BALLOON
    | libvirt.VIR_DOMAIN_STATS_BLOCK
    | libvirt.VIR_DOMAIN_STATS_INTERFACE
)
# Active = running or paused (a paused guest still holds its memory). NOWAIT: a domain busy with a
# long job (migration, snapshot) gives what libvirt has without blocking the whole collection.
DOMAIN_FLAGS = libvirt.VIR_CONNECT_GET_ALL_DOMAINS_STATS_ACTIVE | getattr(
    libvirt, "VIR_CONNECT_GET_ALL_DOMAINS_STATS_NOWAIT", 0
)


def libvirt_message(exc: libvirt.libvirtError) -> str:
    return exc.get_error_message() or str(exc)


class LibvirtDriver(VmDriver):
    """One connection per process, reopened if the daemon went away.

    ``read_only``: a read-only connection, for readers (the metrics sampler) that never change a guest.
    """

    def __init__(self, uri: str, read_only: bool = False) -> None:
        self.uri = uri
        self.read_only = read_only
        self._conn: libvirt.virConnect | None = None
        self._lock = threading.Lock()

    # -- connection --------------------------------------------------------------------------
    def conn(self) -> libvirt.virConnect:
        with self._lock:
            if self._conn is None or not self._conn.isAlive():
                try:
                    self._conn = libvirt.openReadOnly(self.uri) if self.read_only else libvirt.open(self.uri)
                except libvirt.libvirtError as exc:
                    raise DriverError(f"cannot connect to {self.uri}: {libvirt_message(exc)}") from None
            return self._conn

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                with contextlib.suppress(libvirt.libvirtError):
                    self._conn.close()
                self._conn = None

    def _lookup(self, name: str) -> libvirt.virDomain | None:
        try:
            return self.conn().lookupByName(name)
        except libvirt.libvirtError as exc:
            if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                return None
            raise DriverError(libvirt_message(exc)) from None

    def _call(self, what: str, fn: Any, *args: Any) -> Any:
        try:
            return fn(*args)
        except libvirt.libvirtError as exc:
            raise DriverError(f"{what}: {libvirt_message(exc)}") from None

    # -- host --------------------------------------------------------------------------------
    def facts(
        self, probe_kvm: bool = True, probe_image: GuestSpec | None = None, scratch: Path | None = None
    ) -> HostFacts:
        conn = self.conn()
        model, _, cpus = conn.getInfo()[:3]
        # libvirt's node info can report one NUMA cell's memory; the kernel's page count is the whole.
        mem_mib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2**20
        cpu_model = _cpu_model_name() or model
        version = conn.getVersion()
        lib = conn.getLibVersion()
        vmm = f"{conn.getType()} {_ver(version)} / libvirt {_ver(lib)}"
        tcg = _domain_caps_ok(conn, "qemu")
        kvm_device = os.path.exists("/dev/kvm")
        kvm_usable, detail = False, "no /dev/kvm"
        if kvm_device and _domain_caps_ok(conn, "kvm"):
            detail = "KVM is offered but not probed"
            if probe_kvm and probe_image is not None and scratch is not None:
                kvm_usable, detail = self._probe_kvm(probe_image, scratch)
        elif kvm_device:
            detail = "/dev/kvm exists but libvirt offers no kvm domain type"
        disk = shutil.disk_usage(scratch or "/")
        return HostFacts(
            cpu_model=cpu_model,
            cpus=int(cpus),
            ram_mib=int(mem_mib),
            disk_gib=int(disk.total // 2**30),
            kvm_device=kvm_device,
            kvm_usable=kvm_usable,
            kvm_probe_detail=detail[:300],
            tcg_available=tcg,
            paging=_paging(kvm_usable),
            iommu=_iommu_groups(),
            vmm=vmm,
            hypervisor_uuid=_host_uuid(conn),
        )

    def _probe_kvm(self, base: GuestSpec, scratch: Path, timeout: float = 20.0) -> tuple[bool, str]:
        """Boot the probe guest under KVM; KVM counts as usable only if it reaches its ready marker."""
        # The start time is in the name, so a probe left by an agent killed mid-probe can be
        # recognised as stale and removed (see remove_stale_probes).
        name = f"{PROBE_PREFIX}{int(time.time())}-{uuid.uuid4().hex[:6]}"
        workdir = scratch / name
        workdir.mkdir(parents=True, exist_ok=True)
        spec = GuestSpec(
            name=name,
            uuid=str(uuid.uuid4()),
            vcpus=1,
            ram_mib=128,
            current_ram_mib=128,
            cpu_mode="hardware",
            io_model="virtio",
            balloon=False,
            disk_path=str(workdir / "disk.qcow2"),
            serial_log=str(workdir / "serial.log"),
            network="",
            vnc_password=uuid.uuid4().hex[:8],
            kernel=base.kernel,
            initrd=base.initrd,
            cmdline=base.cmdline,
        )
        try:
            self.create_disk(spec, base.disk_path, 1)
            dom = self._call("probe start", self.conn().createXML, domain_xml(spec), 0)
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                log = Path(spec.serial_log)
                if log.exists() and "NUBIS-READY" in log.read_text(errors="replace"):
                    return (
                        True,
                        f"probe guest booted under KVM in {timeout - (deadline - time.monotonic()):.1f} s",
                    )
                if not dom.isActive():
                    return False, "probe guest died under KVM"
                time.sleep(0.25)
            return False, f"probe guest did not boot under KVM within {timeout:.0f} s"
        except DriverError as exc:
            return False, f"probe failed: {exc}"
        finally:
            self.undefine(name)
            shutil.rmtree(workdir, ignore_errors=True)

    # -- guests ------------------------------------------------------------------------------
    def create_disk(self, spec: GuestSpec, base: str, size_gib: int) -> None:
        disk = Path(spec.disk_path)
        if disk.exists():
            return
        disk.parent.mkdir(parents=True, exist_ok=True)
        tmp = disk.with_suffix(".partial")
        # The base's format is given, never probed (a raw base read as qcow2 could name any file).
        fmt = spec.base_format or "qcow2"
        cmd = ["qemu-img", "create", "-q", "-f", "qcow2", "-F", fmt, "-b", base, str(tmp), f"{size_gib}G"]
        for attempt in range(3):
            proc = subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=120)
            if proc.returncode == 0:
                break
            # qemu-img sometimes trips over coarse CPU accounting here ("Unable to get accurate CPU usage").
            if "accurate CPU usage" not in proc.stderr or attempt == 2:
                tmp.unlink(missing_ok=True)
                raise DriverError(f"create disk: {proc.stderr.strip() or proc.returncode}")
        tmp.rename(disk)  # appears whole or not at all

    def define(self, spec: GuestSpec) -> None:
        if self._lookup(spec.name) is not None:
            return
        self._call("define", self.conn().defineXML, domain_xml(spec))

    def redefine(self, spec: GuestSpec) -> None:
        """Replace a stopped domain's definition (offline resize); the disk is kept."""
        dom = self._lookup(spec.name)
        if dom is not None and dom.isActive():
            raise DriverError("redefine: the domain is running; stop it first")
        self._call("redefine", self.conn().defineXML, domain_xml(spec))

    def snapshot_create(self, name: str, snapshot: str) -> None:
        """An internal qcow2 snapshot: disk, plus memory when the domain runs. Safe to repeat."""
        dom = self._lookup(name)
        if dom is None:
            raise DriverError(f"snapshot: no domain {name}")
        if snapshot in self._call("list snapshots", dom.snapshotListNames, 0):
            return
        xml = f"<domainsnapshot><name>{escape(snapshot)}</name></domainsnapshot>"
        self._call("snapshot", dom.snapshotCreateXML, xml, 0)

    def snapshot_revert(self, name: str, snapshot: str) -> str:
        """Go back to the snapshot; returns the power state it left the domain in."""
        dom = self._lookup(name)
        if dom is None:
            raise DriverError(f"revert: no domain {name}")
        snap = self._call("find snapshot", dom.snapshotLookupByName, snapshot, 0)
        self._call("revert", dom.revertToSnapshot, snap, 0)
        return self.power_state(name) or "stopped"

    def snapshot_delete(self, name: str, snapshot: str) -> None:
        dom = self._lookup(name)
        if dom is None:
            return
        if snapshot not in self._call("list snapshots", dom.snapshotListNames, 0):
            return
        snap = self._call("find snapshot", dom.snapshotLookupByName, snapshot, 0)
        self._call("delete snapshot", snap.delete, 0)

    def snapshot_names(self, name: str) -> list[str]:
        dom = self._lookup(name)
        return [] if dom is None else sorted(self._call("list snapshots", dom.snapshotListNames, 0))

    def start(self, name: str) -> None:
        dom = self._lookup(name)
        if dom is None:
            raise DriverError(f"start: no domain {name}")
        if not dom.isActive():
            self._call("start", dom.create)

    def shutdown(self, name: str, timeout: float) -> bool:
        dom = self._lookup(name)
        if dom is None or not dom.isActive():
            return True
        self._call("shutdown", dom.shutdownFlags, libvirt.VIR_DOMAIN_SHUTDOWN_ACPI_POWER_BTN)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if not dom.isActive():
                    return True
            except libvirt.libvirtError:
                return True
            time.sleep(0.2)
        self._destroy(dom)
        return False

    def _destroy(self, dom: libvirt.virDomain) -> None:
        try:
            if dom.isActive():
                dom.destroyFlags(libvirt.VIR_DOMAIN_DESTROY_GRACEFUL)
        except libvirt.libvirtError:
            try:
                if dom.isActive():
                    dom.destroy()
            except libvirt.libvirtError as exc:
                if exc.get_error_code() != libvirt.VIR_ERR_OPERATION_INVALID:
                    raise DriverError(f"destroy: {libvirt_message(exc)}") from None

    def reboot(self, name: str) -> None:
        dom = self._lookup(name)
        if dom is None:
            raise DriverError(f"reboot: no domain {name}")
        if not dom.isActive():
            self._call("start", dom.create)
            return
        # A hard reset: the tiny guests have no reboot agent, and a reset is what "reboot" promises.
        self._call("reboot", dom.reset, 0)

    def set_memory(self, name: str, mib: int) -> None:
        dom = self._lookup(name)
        if dom is None:
            raise DriverError(f"set memory: no domain {name}")
        flags = libvirt.VIR_DOMAIN_AFFECT_CONFIG | (libvirt.VIR_DOMAIN_AFFECT_LIVE if dom.isActive() else 0)
        self._call("set memory", dom.setMemoryFlags, mib * 1024, flags)

    def set_cpu(self, name: str, pct: int) -> None:
        """The domain's CPU shares in proportion to ``pct`` (``cpu_shares_of``), live and in its
        definition (so a restart keeps them)."""
        dom = self._lookup(name)
        if dom is None:
            raise DriverError(f"set cpu: no domain {name}")
        params = {libvirt.VIR_DOMAIN_SCHEDULER_CPU_SHARES: cpu_shares_of(pct)}
        # One call per side: the Python binding reads the parameters' types with the same flags,
        # and libvirt refuses that read for LIVE | CONFIG ("mutually exclusive").
        if dom.isActive():
            self._call(
                "set cpu shares", dom.setSchedulerParametersFlags, params, libvirt.VIR_DOMAIN_AFFECT_LIVE
            )
        self._call(
            "set cpu shares", dom.setSchedulerParametersFlags, params, libvirt.VIR_DOMAIN_AFFECT_CONFIG
        )

    def cpu_pct(self, name: str) -> int | None:
        """The running domain's CPU shares as % of one CPU (the inverse of ``cpu_shares_of``)."""
        dom = self._lookup(name)
        if dom is None or not dom.isActive():
            return None
        params = self._call("cpu shares", dom.schedulerParametersFlags, libvirt.VIR_DOMAIN_AFFECT_LIVE)
        shares = params.get(libvirt.VIR_DOMAIN_SCHEDULER_CPU_SHARES)
        return None if shares is None else round(int(shares) * 100 / _shares_per_cpu())

    def memory_stats(self, name: str) -> dict[str, int]:
        dom = self._lookup(name)
        if dom is None or not dom.isActive():
            return {}
        return {str(k): int(v) for k, v in self._call("memory stats", dom.memoryStats).items()}

    def guest_usage(self) -> dict[str, Counters]:
        """Counters of every active domain, by name, from one bulk stats call."""
        records = self._call("domain stats", self.conn().getAllDomainStats, DOMAIN_STATS, DOMAIN_FLAGS)
        taken = time.monotonic()
        return {dom.name(): domain_counters(stats, taken) for dom, stats in records}

    def power_state(self, name: str) -> str | None:
        dom = self._lookup(name)
        if dom is None:
            return None
        try:
            state = dom.state()[0]
        except libvirt.libvirtError as exc:
            if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                return None  # gone between the lookup and now (it moved away, say)
            raise DriverError(f"state: {libvirt_message(exc)}") from None
        return _STATES.get(state, "unknown")

    def undefine(self, name: str) -> None:
        dom = self._lookup(name)
        if dom is None:
            return
        self._destroy(dom)
        flags = (
            libvirt.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA
            | libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE
            | libvirt.VIR_DOMAIN_UNDEFINE_NVRAM
        )
        try:
            dom.undefineFlags(flags)
        except libvirt.libvirtError as exc:
            if exc.get_error_code() != libvirt.VIR_ERR_NO_DOMAIN:
                raise DriverError(f"undefine: {libvirt_message(exc)}") from None

    def remove_files(self, spec_dir: str) -> None:
        shutil.rmtree(spec_dir, ignore_errors=True)

    # -- volumes -------------------------------------------------------------------------------
    @staticmethod
    def _disk_source(dom: libvirt.virDomain, device: str, flags: int) -> str | None:
        """The file behind the guest's disk ``device`` (live or, with INACTIVE_XML, its definition)."""
        # The XML comes from our own libvirt daemon, not from a user.
        root = ET.fromstring(dom.XMLDesc(flags))  # noqa: S314
        for disk in root.findall("./devices/disk"):
            target = disk.find("target")
            if target is not None and target.get("dev") == device:
                source = disk.find("source")
                return (source.get("file") if source is not None else None) or ""
        return None

    def volume_attach(self, name: str, disk: VolumeDisk) -> None:
        """Hot plug into a running guest (LIVE) and into its definition (CONFIG); a stopped one's
        definition only. Safe to repeat: a disk already there with this file is left alone."""
        dom = self._lookup(name)
        if dom is None:
            raise DriverError(f"attach volume: no domain {name}")
        xml = volume_disk_xml(disk)
        places = (
            (libvirt.VIR_DOMAIN_AFFECT_CONFIG, libvirt.VIR_DOMAIN_XML_INACTIVE),
            (libvirt.VIR_DOMAIN_AFFECT_LIVE, 0),
        )
        for flag, where in places:
            if flag == libvirt.VIR_DOMAIN_AFFECT_LIVE and not dom.isActive():
                continue
            present = self._disk_source(dom, disk.device, where)
            if present == disk.path:
                continue
            if present is not None:
                raise DriverError(f"attach volume: {name} already has a disk {disk.device} ({present})")
            self._call("attach volume", dom.attachDeviceFlags, xml, flag)

    def volume_detach(self, name: str, disk: VolumeDisk, timeout: float) -> None:
        """Hot unplug: ask the running guest to release the disk and wait up to ``timeout`` seconds
        for it to let go (its definition keeps the disk until then); then drop it from the
        definition. Safe to repeat: a disk already gone is not asked for again."""
        dom = self._lookup(name)
        if dom is None:
            return
        xml = volume_disk_xml(disk)
        if dom.isActive() and self._disk_source(dom, disk.device, 0) is not None:
            self._call("detach volume", dom.detachDeviceFlags, xml, libvirt.VIR_DOMAIN_AFFECT_LIVE)
            deadline = time.monotonic() + timeout
            while self._disk_source(dom, disk.device, 0) is not None:
                if time.monotonic() > deadline:
                    raise DriverError(
                        f"the guest did not release {disk.device} within {timeout:g} s "
                        "(it may still be using it: unmount it in the guest, or stop the VM)"
                    )
                time.sleep(0.25)
        if self._disk_source(dom, disk.device, libvirt.VIR_DOMAIN_XML_INACTIVE) is not None:
            self._call("detach volume", dom.detachDeviceFlags, xml, libvirt.VIR_DOMAIN_AFFECT_CONFIG)

    def list_guests(self, prefix: str) -> list[str]:
        domains = self._call("list", self.conn().listAllDomains, 0)
        return sorted(d.name() for d in domains if d.name().startswith(prefix))

    def vnc_port(self, name: str) -> int | None:
        dom = self._lookup(name)
        if dom is None or not dom.isActive():
            return None
        # The XML comes from our own libvirt daemon, not from a user.
        graphics = ET.fromstring(dom.XMLDesc(0)).find("./devices/graphics[@type='vnc']")  # noqa: S314
        port = graphics.get("port") if graphics is not None else None
        return int(port) if port and port.isdigit() and int(port) > 0 else None

    def ip_address(self, name: str) -> str | None:
        """The guest's IPv4 address from the network's DHCP lease (None until it has one)."""
        dom = self._lookup(name)
        if dom is None or not dom.isActive():
            return None
        try:
            interfaces = dom.interfaceAddresses(libvirt.VIR_DOMAIN_INTERFACE_ADDRESSES_SRC_LEASE, 0)
        except libvirt.libvirtError:
            return None
        for iface in interfaces.values():
            for addr in iface.get("addrs") or []:
                if addr.get("type") == libvirt.VIR_IP_ADDR_TYPE_IPV4:
                    return str(addr["addr"])
        # No lease known: a guest with qemu-guest-agent says its own address.
        return next((a for a in self.guest_addresses(name) if ":" not in a), None)

    def guest_addresses(self, name: str) -> list[str]:
        """The guest's addresses (IPv4 first, loopback left out) as qemu-guest-agent reports them."""
        dom = self._lookup(name)
        if dom is None or not dom.isActive():
            return []
        try:
            interfaces = dom.interfaceAddresses(libvirt.VIR_DOMAIN_INTERFACE_ADDRESSES_SRC_AGENT, 0)
        except libvirt.libvirtError:
            return []  # no agent channel, or the agent is not running (yet)
        found: list[tuple[int, str]] = []
        for iface_name, iface in interfaces.items():
            if iface_name == "lo":
                continue
            for addr in iface.get("addrs") or []:
                v4 = addr.get("type") == libvirt.VIR_IP_ADDR_TYPE_IPV4
                found.append((0 if v4 else 1, str(addr["addr"])))
        return [address for _, address in sorted(found, key=lambda item: item[0])]

    def guest_exec(self, name: str, argv: list[str], timeout: float = 30.0) -> tuple[int, str, str]:
        """Run ``argv`` in the guest through qemu-guest-agent (guest-exec, then guest-exec-status
        until it exits): (exit code, stdout, stderr). DriverError without an agent or past ``timeout``."""
        import libvirt_qemu  # type: ignore[import-untyped]  # QEMU-specific bindings: only needed here

        dom = self._lookup(name)
        if dom is None or not dom.isActive():
            raise DriverError(f"guest exec: {name} is not running")
        if not argv:
            raise DriverError("guest exec: no command")

        def agent(command: dict[str, Any]) -> Any:
            try:
                reply = libvirt_qemu.qemuAgentCommand(dom, json.dumps(command), 10, 0)
            except libvirt.libvirtError as exc:
                raise DriverError(f"guest exec: {libvirt_message(exc)}") from None
            return json.loads(reply)["return"]

        started = agent(
            {
                "execute": "guest-exec",
                "arguments": {"path": argv[0], "arg": argv[1:], "capture-output": True},
            }
        )
        pid = started["pid"]
        deadline = time.monotonic() + timeout
        while True:
            status = agent({"execute": "guest-exec-status", "arguments": {"pid": pid}})
            if status.get("exited"):
                break
            if time.monotonic() > deadline:
                raise DriverError(f"guest exec: {argv[0]} did not finish within {timeout:g} s")
            time.sleep(0.2)
        out = base64.b64decode(status.get("out-data", "")).decode(errors="replace")
        err = base64.b64decode(status.get("err-data", "")).decode(errors="replace")
        code = int(status.get("exitcode", -int(status.get("signal", 1))))
        return code, out, err

    def console_read(self, name: str, offset: int | None, max_bytes: int) -> LogChunk:
        """The serial console log that the domain's definition names (running or stopped)."""
        dom = self._lookup(name)
        if dom is None:
            return LogChunk(b"", 0, 0)
        # The XML comes from our own libvirt daemon, not from a user.
        xml = self._call(f"console of {name}", dom.XMLDesc, 0)
        serial = ET.fromstring(xml).find("./devices/serial")  # noqa: S314
        path = None
        if serial is not None:  # a pty's log, or (domains defined before the pty) a file
            found = serial.find("./log") if serial.get("type") == "pty" else serial.find("./source")
            path = found.get("file" if serial.get("type") == "pty" else "path") if found is not None else None
        return read_log(Path(path), offset, max_bytes) if path else LogChunk(b"", 0, 0)

    def serial_device(self, name: str) -> str | None:
        """The pty of the running domain's serial port (libvirt allocated it on this host)."""
        dom = self._lookup(name)
        if dom is None or not dom.isActive():
            return None
        # The XML comes from our own libvirt daemon, not from a user.
        source = ET.fromstring(dom.XMLDesc(0)).find("./devices/serial[@type='pty']/source")  # noqa: S314
        path = source.get("path") if source is not None else None
        return path if path and path.startswith("/dev/pts/") else None

    # -- live migration ----------------------------------------------------------------------
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
        """Peer to peer: this host's daemon connects to ``peer_uri`` itself and drives the move.

        - The disks stay where they are when the instance store is shared (libvirt cannot tell a
          store shared by a bind mount or some network file systems, hence UNSAFE: the operator
          declared it shared); otherwise they are copied along (NON_SHARED_DISK).
        - Auto-converge slows a guest that dirties memory faster than it can be sent; the pause
          for the switch-over is held to ``max_downtime_ms``.
        - Past ``timeout`` seconds the job is aborted: the guest keeps running here.
        The figures come from the destination's record of the finished job (its source forgets the
        domain, and KEEP_COMPLETED leaves the record there for a second read).
        """
        dom = self._lookup(name)
        if dom is None or not dom.isActive():
            raise DriverError(f"migrate: {name} is not running here")
        flags = (
            libvirt.VIR_MIGRATE_LIVE
            | libvirt.VIR_MIGRATE_PEER2PEER
            | libvirt.VIR_MIGRATE_PERSIST_DEST
            | libvirt.VIR_MIGRATE_UNDEFINE_SOURCE
            | libvirt.VIR_MIGRATE_AUTO_CONVERGE
            | libvirt.VIR_MIGRATE_ABORT_ON_ERROR
        )
        flags |= libvirt.VIR_MIGRATE_UNSAFE if shared_store else libvirt.VIR_MIGRATE_NON_SHARED_DISK
        self._call("migrate: set the downtime limit", dom.migrateSetMaxDowntime, max_downtime_ms, 0)
        failure: list[libvirt.libvirtError] = []

        def move() -> None:
            try:
                params = {libvirt.VIR_MIGRATE_PARAM_BANDWIDTH: bandwidth_mib} if bandwidth_mib else {}
                dom.migrateToURI3(peer_uri, params, flags)
            except libvirt.libvirtError as exc:
                failure.append(exc)

        mover = threading.Thread(target=move, name=f"migrate-{name}", daemon=True)
        started = time.monotonic()
        mover.start()
        aborted = False
        while mover.is_alive():
            mover.join(0.2)
            if not mover.is_alive():
                break
            if time.monotonic() - started > timeout and not aborted:
                aborted = True
                with contextlib.suppress(libvirt.libvirtError):  # the job may just have ended
                    dom.abortJob()
                continue
            if on_progress is not None:
                progress = _migration_progress(dom)
                if progress is not None:
                    on_progress(progress)
        if failure:
            if aborted:
                raise DriverError(
                    f"migrate: timed out after {timeout:g} s and was aborted; the guest stays here"
                )
            raise DriverError(f"migrate: {libvirt_message(failure[0])}")
        # (aborted without a failure: the move finished before the abort took)
        return _completed_stats(peer_uri, name)

    def migration_abort(self, name: str) -> bool:
        """Abort the domain's running job here (an outgoing migration whose client is gone)."""
        dom = self._lookup(name)
        if dom is None:
            return False
        try:
            if dom.jobInfo()[0] == libvirt.VIR_DOMAIN_JOB_NONE:
                return False
            dom.abortJob()
        except libvirt.libvirtError:
            return False  # it ended meanwhile
        return True

    def remove_stale_probes(self, older_than: float = 300.0) -> list[str]:
        """Destroy KVM probe guests left behind by an agent that died while probing."""
        removed = []
        for name in self.list_guests(PROBE_PREFIX):
            started = name.removeprefix(PROBE_PREFIX).split("-", 1)[0]
            if started.isdigit() and time.time() - int(started) > older_than:
                self.undefine(name)
                removed.append(name)
        return removed

    def watch_lifecycle(self, on_event: Callable[[str], None], stop: threading.Event) -> None:
        """Call ``on_event(domain name)`` for every lifecycle event of the daemon until ``stop`` is set.

        Blocks: it runs libvirt's event loop on a read-only connection of its own. ``events_enable``
        must have been called before, in this process.
        """

        def on_lifecycle(_conn: object, dom: libvirt.virDomain, _event: int, _detail: int, _: object) -> None:
            on_event(dom.name())

        try:
            conn = libvirt.openReadOnly(self.uri)
        except libvirt.libvirtError as exc:
            raise DriverError(f"cannot connect to {self.uri}: {libvirt_message(exc)}") from None
        conn.domainEventRegisterAny(None, libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE, on_lifecycle, None)
        conn.setKeepAlive(5, 3)
        while not stop.is_set():
            libvirt.virEventRunDefaultImpl()

    def ensure_network(self, name: str) -> None:
        """Make sure the libvirt network exists and is active (defining libvirt's default if missing)."""
        conn = self.conn()
        try:
            net = conn.networkLookupByName(name)
        except libvirt.libvirtError:
            if name != "default":
                raise DriverError(f"network {name} does not exist on {self.uri}") from None
            net = self._call("define network", conn.networkDefineXML, _DEFAULT_NETWORK)
        if not net.isActive():
            self._call(f"start network {name}", net.create)


_DEFAULT_NETWORK = """<network>
  <name>default</name>
  <forward mode='nat'/>
  <bridge name='virbr0' stp='on' delay='0'/>
  <ip address='192.168.122.1' netmask='255.255.255.0'>
    <dhcp><range start='192.168.122.2' end='192.168.122.254'/></dhcp>
  </ip>
</network>"""


def _migration_progress(dom: libvirt.virDomain) -> MigrationProgress | None:
    try:
        stats = dom.jobStats(0)
    except libvirt.libvirtError:
        return None
    if stats.get("type", libvirt.VIR_DOMAIN_JOB_NONE) == libvirt.VIR_DOMAIN_JOB_NONE:
        return None
    return MigrationProgress(
        data_total=int(stats.get("data_total", 0)),
        data_remaining=int(stats.get("data_remaining", 0)),
        elapsed_ms=int(stats.get("time_elapsed", 0)),
    )


def _completed_stats(peer_uri: str, name: str) -> MigrationStats:
    """The finished job as the destination recorded it (zeros when it cannot be read)."""
    flags = libvirt.VIR_DOMAIN_JOB_STATS_COMPLETED | libvirt.VIR_DOMAIN_JOB_STATS_KEEP_COMPLETED
    stats: dict[str, Any] = {}
    vnc_port = None
    try:
        peer = LibvirtDriver(peer_uri)
        dom = peer._lookup(name)
        if dom is not None:
            stats = dom.jobStats(flags)
            vnc_port = peer.vnc_port(name)
        peer.close()
    except (libvirt.libvirtError, DriverError):
        pass
    return MigrationStats(
        vnc_port=vnc_port,
        total_ms=int(stats.get("time_elapsed", 0)),
        downtime_ms=int(stats.get("downtime", 0)),
        data_bytes=int(stats.get("data_processed", 0)),
        memory_bytes=int(stats.get("memory_processed", 0)),
        setup_ms=int(stats.get("setup_time", 0)),
        dirty_rate=int(stats.get("memory_dirty_rate", 0)),
        iterations=int(stats.get("memory_iteration", 0)),
    )


def _host_uuid(conn: libvirt.virConnect) -> str:
    """The libvirt daemon's host UUID (each host of a cluster has its own), "" if unknown."""
    try:
        # The XML comes from our own libvirt daemon, not from a user.
        found = ET.fromstring(conn.getCapabilities()).find("./host/uuid")  # noqa: S314
    except libvirt.libvirtError:
        return ""
    return found.text.strip() if found is not None and found.text else ""


def events_enable() -> None:
    """Register libvirt's default event loop; before any connection that listens for events is opened."""
    libvirt.virEventRegisterDefaultImpl()


def daemon_version(uri: str) -> str:
    """The daemon at ``uri`` as 'libvirt 10.0.0 QEMU', read over a read-only connection of its own."""
    try:
        conn = libvirt.openReadOnly(uri)
    except libvirt.libvirtError as exc:
        raise DriverError(f"cannot connect to {uri}: {libvirt_message(exc)}") from None
    try:
        return f"libvirt {_ver(conn.getLibVersion())} {conn.getType()}"
    finally:
        conn.close()


def domain_counters(stats: dict[str, Any], taken: float) -> Counters:
    """Counters of one domain from its record of ``getAllDomainStats``."""
    blk_read = blk_write = net_rx = net_tx = 0
    for key, value in stats.items():
        parts = key.split(".")
        # block.<i>.rd.bytes, net.<i>.rx.bytes; libvirt already reports the network from the
        # guest's side (it swaps a tap's counters), so rx is what the guest received.
        if len(parts) != 4 or parts[3] != "bytes":
            continue
        kind, metric = parts[0], parts[2]
        if kind == "block" and metric == "rd":
            blk_read += int(value)
        elif kind == "block" and metric == "wr":
            blk_write += int(value)
        elif kind == "net" and metric == "rx":
            net_rx += int(value)
        elif kind == "net" and metric == "tx":
            net_tx += int(value)
    # Memory is what the guest needs of the memory it was given: balloon.current (the balloon's actual
    # size) minus balloon.usable (the guest's MemAvailable: free pages plus caches it can drop). The
    # dynamic-allocation adjuster compares this with the grant, so it must be in the grant's units:
    # it includes the memory the guest kernel reserves outside MemTotal (about 50 MiB of a 256 MiB
    # busybox guest), which the balloon can never take either. QEMU's resident set (balloon.rss) is
    # no demand signal: measured under TCG, an idle 256 MiB guest using 34 MiB had an RSS of 248 MiB,
    # still 210 MiB after ballooning down to 100, so every VM would look full and grow to its maximum.
    # The guest reports its statistics only with the balloon driver loaded and a stats period set
    # (domain_xml sets 2 s); until then, or without a driver, the host's cost (RSS) is the fallback.
    # Right after a balloon move the guest's last report is older than the move: see
    # compute.services.metrics.settle_balloon.
    current = stats.get("balloon.current")
    reported = stats.get("balloon.usable", stats.get("balloon.unused"))
    balloon_kib = guest_free_kib = None
    if current is not None and reported is not None:
        balloon_kib, guest_free_kib = int(current), int(reported)
    if balloon_kib is not None and guest_free_kib is not None:
        mem = max(balloon_kib - guest_free_kib, 0) * 1024
    elif "balloon.rss" in stats:
        mem = int(stats["balloon.rss"]) * 1024
    else:
        mem = int(current or 0) * 1024
    return Counters(
        cpu_ns=int(stats.get("cpu.time", 0)),
        mem_bytes=mem,
        mem_peak_bytes=None,
        pids=None,
        blk_read_bytes=blk_read,
        blk_write_bytes=blk_write,
        net_rx_bytes=net_rx,
        net_tx_bytes=net_tx,
        taken=taken,
        balloon_kib=balloon_kib,
        guest_report_at=None if balloon_kib is None else int(stats.get("balloon.last-update", 0)),
    )


def _shares_per_cpu() -> int:
    """The CPU weight of one CPU's worth: cgroup v1's default cpu.shares (1024, what runc gives a
    container per vCPU), or cgroup v2's default cpu.weight (100), which libvirt's cpu_shares sets
    there. The host's agent talks to its own daemon, so the host's hierarchy is the daemon's."""
    return 100 if Path("/sys/fs/cgroup/cgroup.controllers").exists() else 1024


def cpu_shares_of(pct: int) -> int:
    """A VM's CPU grant (% of one CPU) as libvirt's cpu_shares: in proportion, within the range the
    host's cgroups take (v1: 2 to 262144, v2: 1 to 10000)."""
    per_cpu = _shares_per_cpu()
    low, high = (1, 10_000) if per_cpu == 100 else (2, 262_144)
    return min(max(round(pct * per_cpu / 100), low), high)


def _ver(value: int) -> str:
    return f"{value // 1_000_000}.{(value // 1000) % 1000}.{value % 1000}"


def _cpu_model_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


def _domain_caps_ok(conn: libvirt.virConnect, virttype: str) -> bool:
    try:
        conn.getDomainCapabilities(None, "x86_64", None, virttype, 0)
    except libvirt.libvirtError:
        return False
    return True


def _read(path: str) -> str:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return ""


def _paging(kvm_usable: bool) -> str:
    """Nested paging (EPT/NPT) from the kvm module parameters; shadow paging when KVM runs without it."""
    if not kvm_usable:
        return "none"
    if _read("/sys/module/kvm_intel/parameters/ept") in ("Y", "1"):
        return "ept"
    if _read("/sys/module/kvm_amd/parameters/npt") in ("Y", "1"):
        return "npt"
    return "shadow"


def _iommu_groups() -> bool:
    groups = Path("/sys/kernel/iommu_groups")
    return groups.is_dir() and any(groups.iterdir())
