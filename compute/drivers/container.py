"""runc containers behind the ContainerDriver interface: the guest abilities they share with VMs
(start, stop, reboot, power state, undefine, listing, console), so the agent's steps and the
reconciler treat both alike, and what only containers do (limits, OOM counts, exec, logs, usage).

A container's bundle lives in the instance directory (``<instance dir>/<uuid>``): config.json and
the stdout/stderr logs. Its root filesystem is a read-only tree shared by the containers of one
image and one uid range; its network namespace is named like the container.
"""

from __future__ import annotations

import json
import shutil
import uuid as uuidlib
from pathlib import Path
from typing import Any

from compute.containers.oci_spec import CPU_PERIOD
from compute.drivers.base import ContainerDriver, Counters, DriverError, LogChunk, read_log
from compute.drivers.oci import CGROUP_ROOT, OciDriver


class RuncDriver(ContainerDriver):
    """runc containers of one host, addressed by name (``<prefix><uuid>``)."""

    def __init__(self, instance_dir: Path, prefix: str, oci: OciDriver | None = None) -> None:
        self.instance_dir = Path(instance_dir)
        self.prefix = prefix
        self.oci = oci or OciDriver()

    def bundle_dir(self, name: str) -> Path:
        try:
            uid = uuidlib.UUID(name.removeprefix(self.prefix))
        except ValueError:
            raise DriverError(f"{name}: not a container of this cloud") from None
        return self.instance_dir / str(uid)

    # -- what containers do ---------------------------------------------------------------------
    def create(self, name: str, config: dict[str, Any]) -> None:
        self.oci.create(name, self.bundle_dir(name), None, config)

    def save_config(self, name: str, config: dict[str, Any]) -> None:
        (self.bundle_dir(name) / "config.json").write_text(json.dumps(config, indent=2) + "\n")

    def start(self, name: str) -> None:
        self.oci.start(name, self.bundle_dir(name))

    def shutdown(self, name: str, timeout: float) -> bool:
        return self.oci.stop(name, timeout)

    def reboot(self, name: str) -> None:
        self.oci.stop(name, 10.0)
        self.start(name)

    def update(self, name: str, **limits: Any) -> None:
        self.oci.update(name, **limits)

    def set_memory(self, name: str, mib: int) -> None:
        self.oci.update(name, memory_bytes=mib << 20)

    def set_cpu(self, name: str, pct: int) -> None:
        """The container's CFS quota: ``pct``% of one CPU per period, a hard cap (the bundle, which
        the next start runs with, is the caller's: ``save_config``)."""
        self.oci.update(name, cpu_quota=pct * CPU_PERIOD // 100, cpu_period=CPU_PERIOD)

    def cpu_pct(self, name: str) -> int | None:
        """The CFS quota the kernel holds for the container, in % of one CPU; None without one."""
        if self.oci.state(name) != "running":
            return None
        limit = self.oci.cpu_quota(name)
        return None if limit is None else round(limit[0] * 100 / limit[1])

    def memory_limit_mib(self, name: str) -> int | None:
        """The memory limit the kernel holds for the container (cgroup v1, or v2's memory.max)."""
        directory = self.oci.cgroup_dir(name, "memory")
        for filename in ("memory.limit_in_bytes", "memory.max"):
            try:
                text = (directory / filename).read_text().strip()
            except FileNotFoundError:
                continue
            return None if text == "max" else int(text) >> 20
        return None

    def power_state(self, name: str) -> str | None:
        """'running'; 'stopped' while the bundle exists but nothing runs; None when it is gone."""
        state = self.oci.state(name)
        if state in ("running", "created", "paused"):
            return "running" if state == "running" else state
        bundle = self.bundle_dir(name)
        return "stopped" if state == "stopped" or (bundle / "config.json").exists() else None

    def undefine(self, name: str) -> None:
        """Stop and forget the container; the bundle directory stays for remove_files."""
        self.oci.delete(name, bundle_dir=None)

    def remove_files(self, spec_dir: str) -> None:
        shutil.rmtree(spec_dir, ignore_errors=True)

    def list_guests(self, prefix: str) -> list[str]:
        return self.oci.list_containers(prefix)

    def oom_kills(self, name: str) -> int | None:
        return self.oci.oom_kills(name)

    def pid(self, name: str) -> int | None:
        return self.oci.pid(name)

    def usage(self, name: str) -> Counters | None:
        return self.oci.usage(name)

    def blkio_weight_supported(self) -> bool:
        """runc fails when asked for a weight the host's I/O scheduler does not offer (no BFQ here)."""
        return any(
            (CGROUP_ROOT / p).exists() for p in ("blkio/blkio.weight", "blkio/blkio.bfq.weight", "io.weight")
        )

    def exec(self, name: str, argv: list[str], timeout: float) -> tuple[int, str, str]:
        if self.oci.state(name) != "running":
            raise DriverError(f"{name} is not running")
        return self.oci.exec(name, argv, timeout)

    def logs(self, name: str, max_bytes: int) -> str:
        """The end of the container's stdout and stderr, oldest first (at most ``max_bytes``)."""
        bundle = self.bundle_dir(name)
        parts: list[str] = []
        for filename in ("stdout.log", "stderr.log"):
            try:
                parts.append(read_log(bundle / filename, None, max_bytes).data.decode(errors="replace"))
            except DriverError:  # unreadable: the other log still says something
                continue
        return "".join(parts)[-max_bytes:]

    def console_read(self, name: str, offset: int | None, max_bytes: int) -> LogChunk:
        """A container's console is its stdout (its stderr stays for ``logs``)."""
        return read_log(self.bundle_dir(name) / "stdout.log", offset, max_bytes)
