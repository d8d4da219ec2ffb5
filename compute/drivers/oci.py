"""The OCI driver: containers made of namespaces and cgroups, run by runc on one host."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from compute.containers.oci_spec import cgroups_path
from compute.drivers.base import Counters, DriverError

RUNC = "/usr/bin/runc"
RUNC_ROOT = Path("/run/runc")  # runc's default state directory when run as root
CGROUP_ROOT = Path("/sys/fs/cgroup")
STOP_TIMEOUT = 10.0  # seconds to wait for a killed container to stop


def _wait(proc: subprocess.Popen[bytes], timeout: float) -> int | None:
    """Wait for ``proc`` to exit; None if it had to be killed after ``timeout`` seconds.

    A blocking wait, with a timer to kill: subprocess's own timed wait polls with sleeps that
    double up to 50 ms, so it notices a 30 ms `runc run` only about 64 ms after it started.
    """
    expired = threading.Event()

    def kill() -> None:
        expired.set()
        proc.kill()

    timer = threading.Timer(timeout, kill)
    timer.start()
    try:
        rc = proc.wait()
    finally:
        timer.cancel()
    return None if expired.is_set() else rc


def _cgroup_dir(controller: str, config: dict[str, Any]) -> Path:
    """Where runc puts the container's cgroup for one v1 controller, or in the v2 hierarchy."""
    inner = config["linux"]["cgroupsPath"]
    if (CGROUP_ROOT / "cgroup.controllers").exists():  # pure v2
        return CGROUP_ROOT / inner.lstrip("/")
    if inner.startswith("/"):
        return CGROUP_ROOT / controller / inner.lstrip("/")
    # A relative path nests under the caller's own cgroup of that controller.
    own = "/"
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        if controller in controllers.split(","):
            own = path
    return CGROUP_ROOT / controller / own.lstrip("/") / inner


class OciDriver:
    """Containers of one host through runc. Every method is safe to call twice."""

    def __init__(self, runc_root: Path | None = None, runc: str = RUNC, cgroup_parent: str = "nubis") -> None:
        self.runc = runc
        self.runc_root = runc_root
        # Where oci_config put this host's containers (setting NUBIS_CGROUP_PARENT): read when a
        # container's config.json is not at hand.
        self.cgroup_parent = cgroup_parent
        self._bundles: dict[str, Path] = {}
        self._configs: dict[str, dict[str, Any]] = {}

    # -- plumbing -----------------------------------------------------------------------------
    def _cmd(self, *args: str) -> list[str]:
        root = ["--root", str(self.runc_root)] if self.runc_root else []
        return [self.runc, *root, *args]

    def _call(self, what: str, args: list[str], timeout: float) -> tuple[int | None, str, str]:
        """Run one runc command: (exit code, or None when killed after ``timeout``; stdout; stderr).

        Files, not pipes: nothing the container inherits (background children of an exec, say)
        can keep us waiting (LAB.md section 5).
        """
        with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
            try:
                proc = subprocess.Popen(self._cmd(*args), stdin=subprocess.DEVNULL, stdout=out, stderr=err)
            except OSError as exc:
                raise DriverError(f"{what}: {exc.strerror}") from None
            rc = _wait(proc, timeout)
            out.seek(0)
            err.seek(0)
            return rc, out.read().decode(errors="replace"), err.read().decode(errors="replace")

    def _run(self, what: str, *args: str, timeout: float = 30.0) -> str:
        """Run one runc command to its end; its own stderr becomes the DriverError message."""
        rc, stdout, stderr = self._call(what, list(args), timeout)
        if rc is None:
            raise DriverError(f"{what}: runc {args[0]} timed out after {timeout:g} s")
        if rc != 0:
            raise DriverError(f"{what}: {stderr.strip() or stdout.strip() or f'exit {rc}'}")
        return stdout

    def _config(self, name: str) -> dict[str, Any] | None:
        if name in self._configs:
            return self._configs[name]
        bundle = self._bundle(name)
        if bundle is None or not (bundle / "config.json").exists():
            return None
        config: dict[str, Any] = json.loads((bundle / "config.json").read_text())
        return config

    def _bundle(self, name: str) -> Path | None:
        if name in self._bundles:
            return self._bundles[name]
        info = self.inspect(name)
        return Path(info["bundle"]) if info else None

    # -- lifecycle ----------------------------------------------------------------------------
    def create(self, name: str, bundle_dir: Path, rootfs: Path | None, config: dict[str, Any]) -> None:
        """Write the bundle and start the container detached.

        With ``rootfs``, that tree is copied into the bundle (and given to the mapped root); with
        None, config's root.path already names a prepared tree, shared read-only.
        """
        # runc's own state file says whether it exists (cheaper than a `runc state` process).
        if ((self.runc_root or RUNC_ROOT) / name / "state.json").exists():
            return
        bundle_dir.mkdir(mode=0o755, parents=True, exist_ok=True)
        if rootfs is not None:
            target = bundle_dir / config["root"]["path"]
            if not target.exists():
                shutil.copytree(rootfs, target, symlinks=True)
            mappings = config["linux"].get("uidMappings")
            if mappings:
                # Root in the container is uid_base on the host; it must own its files (LAB.md section 5).
                gid = config["linux"]["gidMappings"][0]["hostID"]
                _chown_tree(target, mappings[0]["hostID"], gid)
        (bundle_dir / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        self._bundles[name] = bundle_dir
        self._configs[name] = config
        self._run_detached(name, bundle_dir)

    def _run_detached(self, name: str, bundle_dir: Path) -> None:
        # runc run -d keeps the stdio it is given for the container's life: files, never pipes.
        with (bundle_dir / "stdout.log").open("ab") as out, (bundle_dir / "stderr.log").open("ab") as err:
            proc = subprocess.Popen(
                self._cmd("run", "-d", "--bundle", str(bundle_dir), name),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
            )
            rc = _wait(proc, 30.0)
        if rc is None:
            raise DriverError(f"create {name}: runc run timed out")
        if rc != 0:
            tail = (bundle_dir / "stderr.log").read_text(errors="replace").strip().splitlines()[-3:]
            raise DriverError(f"create {name}: {' '.join(tail) or f'runc exit {rc}'}")

    def start(self, name: str, bundle_dir: Path) -> None:
        """Run a stopped container again from its bundle (runc cannot restart a stopped one)."""
        state = self.state(name)
        if state == "running":
            return
        if state is not None:
            self._run(f"delete {name}", "delete", "--force", name)
        if not (bundle_dir / "config.json").exists():
            raise DriverError(f"start {name}: its bundle is gone")
        self._bundles[name] = bundle_dir
        self._run_detached(name, bundle_dir)

    def stop(self, name: str, timeout: float) -> bool:
        """SIGTERM, then SIGKILL after ``timeout``; then release the container (the bundle stays).

        True if it stopped on SIGTERM.
        """
        clean = True
        if self.state(name) not in (None, "stopped"):
            self.kill(name, "TERM")
            if not self._wait_stopped(name, timeout):
                clean = False
                self.kill(name, "KILL")
                self._wait_stopped(name, STOP_TIMEOUT)
        if self.state(name) is not None:
            self._run(f"delete {name}", "delete", "--force", name)
        return clean

    def _wait_stopped(self, name: str, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        # Waiting here is quicker than delete --force's own 100 ms polling (LAB.md section 5).
        while self.state(name) not in (None, "stopped"):
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.01)
        return True

    def list_containers(self, prefix: str = "") -> list[str]:
        """Names of the containers runc knows (in this root), starting with ``prefix``."""
        listing = json.loads(self._run("list", "list", "--format", "json") or "null") or []
        return sorted(str(c["id"]) for c in listing if str(c["id"]).startswith(prefix))

    def inspect(self, name: str) -> dict[str, Any] | None:
        """`runc state` as a dict, or None when no such container exists."""
        try:
            info: dict[str, Any] = json.loads(self._run(f"state {name}", "state", name))
        except DriverError as exc:
            if "does not exist" in str(exc):
                return None
            raise
        return info

    def state(self, name: str) -> str | None:
        """'created', 'running', 'paused', 'stopped', or None when no such container exists."""
        info = self.inspect(name)
        return str(info["status"]) if info else None

    def pid(self, name: str) -> int | None:
        """Host pid of the container's init, while it runs."""
        info = self.inspect(name)
        return int(info["pid"]) if info and info.get("pid") and info["status"] != "stopped" else None

    def exec(self, name: str, argv: list[str], timeout: float = 30.0) -> tuple[int, str, str]:
        """Run ``argv`` in the running container; (exit code, stdout, stderr). Killed after ``timeout``."""
        rc, stdout, stderr = self._call(f"exec in {name}", ["exec", name, *argv], timeout)
        if rc is None:
            raise DriverError(f"exec in {name}: {argv[0]} still running after {timeout:g} s")
        return rc, stdout, stderr

    def update(
        self,
        name: str,
        memory_bytes: int | None = None,
        swap_bytes: int | None = None,
        cpu_quota: int | None = None,
        cpu_period: int | None = None,
        cpu_shares: int | None = None,
        pids_max: int | None = None,
        blkio_weight: int | None = None,
    ) -> None:
        """Change limits of a running container; swap_bytes is on top of memory, as in oci_config."""
        args: list[str] = []
        if memory_bytes is not None:
            args += ["--memory", str(memory_bytes)]
            # Without --memory-swap the memsw limit stays where it was (LAB.md section 5).
            args += ["--memory-swap", str(memory_bytes + (swap_bytes or 0))]
        for flag, value in (
            ("--cpu-quota", cpu_quota),
            ("--cpu-period", cpu_period),
            ("--cpu-share", cpu_shares),
            ("--pids-limit", pids_max),
            ("--blkio-weight", blkio_weight),
        ):
            if value is not None:
                args += [flag, str(value)]
        if args:
            self._run(f"update {name}", "update", *args, name)

    def kill(self, name: str, signal: str = "TERM") -> None:
        """Send ``signal`` to the container's init; nothing if the container is gone or stopped."""
        if self.state(name) in (None, "stopped"):
            return
        try:
            self._run(f"kill {name}", "kill", name, signal)
        except DriverError:
            # It may have stopped between the two calls; only a live container is an error.
            if self.state(name) not in (None, "stopped"):
                raise

    def delete(self, name: str, bundle_dir: Path | None = None) -> None:
        """Kill, wait until stopped, `runc delete --force`, remove the bundle. Safe to call twice."""
        bundle = bundle_dir or self._bundle(name)
        if self.state(name) is not None:
            self.kill(name, "KILL")
            self._wait_stopped(name, STOP_TIMEOUT)
            try:
                self._run(f"delete {name}", "delete", "--force", name)
            except DriverError:
                if self.state(name) is not None:
                    raise
        if bundle is not None and bundle.exists():
            shutil.rmtree(bundle)
        self._bundles.pop(name, None)
        self._configs.pop(name, None)

    # -- cgroups ------------------------------------------------------------------------------
    def cgroup_dir(self, name: str, controller: str) -> Path:
        """The container's cgroup directory for ``controller`` (v1) or its v2 directory."""
        config = self._config(name)
        if config is None:
            raise DriverError(f"{name}: no such container")
        return _cgroup_dir(controller, config)

    def cpu_quota(self, name: str) -> tuple[int, int] | None:
        """The container's CFS (quota, period) in microseconds as the kernel holds them; None when
        it has no quota (or no cgroup any more)."""
        directory = self.cgroup_dir(name, "cpu")
        try:
            if (directory / "cpu.max").exists():  # v2: "quota period", or "max period"
                quota, period = (directory / "cpu.max").read_text().split()
            else:
                quota = (directory / "cpu.cfs_quota_us").read_text().strip()
                period = (directory / "cpu.cfs_period_us").read_text().strip()
        except (FileNotFoundError, ValueError):
            return None
        if quota in ("max", "-1"):
            return None
        return int(quota), int(period)

    def oom_killed(self, name: str) -> bool:
        """True once the kernel's OOM killer has killed a process of this container's cgroup."""
        count = self.oom_kills(name)
        if count is None:
            raise DriverError(f"{name}: no memory cgroup")
        return count > 0

    def oom_kills(self, name: str) -> int | None:
        """Processes of the container the OOM killer killed (None once its cgroup is gone).

        ``memory.oom_control`` counts them until the cgroup is deleted; ``memory.failcnt`` does
        not move here, so it is not used (LAB.md section 5).
        """
        config = self._config(name) or {"linux": {"cgroupsPath": cgroups_path(self.cgroup_parent, name)}}
        directory = _cgroup_dir("memory", config)
        for filename in ("memory.oom_control", "memory.events"):  # v1, v2
            try:
                text = (directory / filename).read_text()
            except OSError:
                continue
            counters = dict(line.split() for line in text.splitlines() if line.strip())
            return int(counters.get("oom_kill", "0"))
        return None

    def usage(self, name: str) -> Counters | None:
        """Counters of container ``name`` from its cgroup (v1 or v2); None if the cgroup is gone.

        Memory is the working set: usage minus inactive file cache, which the kernel drops first under
        pressure (what `docker stats` shows). tmpfs pages are shmem, on the anon lists, so they count.
        The peak is the kernel's high-water mark of the whole charge (cache included) since the start.
        The network is not the cgroup's: its counters stay 0 here (the port's are the network driver's).
        """
        # The path oci_config gives every container: no `runc state` per reading.
        config = {"linux": {"cgroupsPath": cgroups_path(self.cgroup_parent, name)}}
        try:
            if (CGROUP_ROOT / "cgroup.controllers").exists():  # pure v2: one directory for everything
                directory = _cgroup_dir("", config)
                taken = time.monotonic()
                cpu_ns = _keyed(directory / "cpu.stat")["usage_usec"] * 1000
                stat = _keyed(directory / "memory.stat")
                mem = _read_int(directory / "memory.current") - stat.get("inactive_file", 0)
                peak = _optional_int(directory / "memory.peak")  # kernel 5.19+
                pids = _optional_int(directory / "pids.current")
                blk_read, blk_write = _io_v2(directory)
            else:
                memory = _cgroup_dir("memory", config)
                taken = time.monotonic()
                cpu_ns = _read_int(_cgroup_dir("cpuacct", config) / "cpuacct.usage")
                stat = _keyed(memory / "memory.stat")
                # total_*: hierarchical, though runc's container cgroup has no children anyway.
                mem = _read_int(memory / "memory.usage_in_bytes") - stat.get("total_inactive_file", 0)
                peak = _optional_int(memory / "memory.max_usage_in_bytes")
                pids = _optional_int(_cgroup_dir("pids", config) / "pids.current")
                blk_read, blk_write = _blkio_v1(_cgroup_dir("blkio", config))
        except (FileNotFoundError, KeyError):
            # The cgroup went away (container stopped or deleted), possibly between two of the reads.
            return None
        return Counters(
            cpu_ns=cpu_ns,
            mem_bytes=max(mem, 0),
            mem_peak_bytes=peak,
            pids=pids,
            blk_read_bytes=blk_read,
            blk_write_bytes=blk_write,
            net_rx_bytes=0,
            net_tx_bytes=0,
            taken=taken,
        )


# -- cgroup files ----------------------------------------------------------------------------------
def _read_int(path: Path) -> int:
    return int(path.read_text().split()[0])


def _optional_int(path: Path) -> int | None:
    try:
        return _read_int(path)
    except (FileNotFoundError, ValueError, IndexError):
        return None


def _keyed(path: Path) -> dict[str, int]:
    """A flat 'key value' file (memory.stat, cpu.stat) as a dict."""
    out: dict[str, int] = {}
    for line in path.read_text().splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].lstrip("-").isdigit():
            out[parts[0]] = int(parts[1])
    return out


def _blkio_v1(directory: Path) -> tuple[int, int]:
    """Read and written bytes from blkio.throttle.io_service_bytes ('MAJ:MIN Read N' lines).

    The throttle file is there whatever the I/O scheduler (the weight files are BFQ's only). On v1,
    buffered writes are written back outside the cgroup, so mostly reads and direct writes show.
    """
    read = written = 0
    try:
        text = (directory / "blkio.throttle.io_service_bytes").read_text()
    except FileNotFoundError:
        return 0, 0
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[1] == "Read":
            read += int(parts[2])
        elif len(parts) == 3 and parts[1] == "Write":
            written += int(parts[2])
    return read, written


def _io_v2(directory: Path) -> tuple[int, int]:
    """Read and written bytes from io.stat ('MAJ:MIN rbytes=N wbytes=N ...' lines)."""
    read = written = 0
    try:
        text = (directory / "io.stat").read_text()
    except FileNotFoundError:
        return 0, 0
    for line in text.splitlines():
        for item in line.split()[1:]:
            key, _, value = item.partition("=")
            if key == "rbytes":
                read += int(value)
            elif key == "wbytes":
                written += int(value)
    return read, written


def _chown_tree(root: Path, uid: int, gid: int) -> None:
    """chown -R -h: links themselves, never what they point to."""
    os.lchown(root, uid, gid)
    for dirpath, dirnames, filenames in os.walk(root):
        for entry in (*dirnames, *filenames):
            os.lchown(os.path.join(dirpath, entry), uid, gid)
