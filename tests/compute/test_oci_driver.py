"""The OCI driver against real runc containers: isolation, limits, live updates and clean deletion.

No database: these tests talk to runc and the cgroup filesystem only. They need root and runc.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from compute.containers.oci_spec import CAPABILITIES, SECCOMP_ALLOW, oci_config
from compute.containers.rootfs import RootfsError, pack, verify
from compute.drivers.base import DriverError
from compute.drivers.oci import RUNC, OciDriver

# Real runc as root, installed by scripts/bootstrap-host: a machine without it fails here, it does not skip.
assert Path(RUNC).exists(), f"{RUNC} is missing: run scripts/bootstrap-host"

MIB = 1 << 20
CAP_SYS_ADMIN = 21
CONTROLLERS = ("memory", "cpu", "cpuacct", "pids")


Start = Callable[..., str]


@pytest.fixture
def start(driver: OciDriver, rootfs: Path, workdir: Path) -> Iterator[Start]:
    """Start a container from oci_config(**overrides); every one is deleted afterwards, even on failure."""
    names: list[str] = []

    def _start(args: list[str] | None = None, **overrides: Any) -> str:
        name = f"t-{uuid.uuid4().hex[:10]}"
        names.append(name)
        params: dict[str, Any] = {
            "name": name,
            "hostname": name,
            "args": args or ["sleep", "1000"],
            "memory_bytes": 64 * MIB,
            "cpu_quota": 50_000,
            "cpu_period": 100_000,
            "pids_max": 64,
            "user_namespace": False,
        }
        params.update(overrides)
        driver.create(name, workdir / name, rootfs, oci_config(**params))
        return name

    yield _start
    for name in names:
        driver.delete(name, workdir / name)


def read_int(path: Path) -> int:
    return int(path.read_text().split()[0])


# -- rootfs and spec (no container) ------------------------------------------------------------
def test_pack_and_verify(rootfs: Path, workdir: Path) -> None:
    tarball = workdir / "images" / "busybox.tar.gz"
    manifest = pack(rootfs, tarball)
    assert json.loads((tarball.parent / "manifest.json").read_text()) == manifest
    assert manifest["size_bytes"] == tarball.stat().st_size
    verify(tarball, manifest)
    verify(tarball, tarball.parent / "manifest.json")
    with pytest.raises(RootfsError, match="sha256"):
        verify(tarball, {**manifest, "sha256": "0" * 64})
    with tarball.open("ab") as fh:
        fh.write(b"x")
    with pytest.raises(RootfsError, match="size"):
        verify(tarball, manifest)


def test_rootfs_has_applets(rootfs: Path) -> None:
    assert (rootfs / "bin" / "sh").is_symlink()
    assert os.readlink(rootfs / "bin" / "sh") == "busybox"
    for name in ("proc", "sys", "dev", "tmp", "etc"):
        assert (rootfs / name).is_dir()
    assert "root:x:0:0" in (rootfs / "etc" / "passwd").read_text()


def test_spec_shape() -> None:
    cfg = oci_config(
        name="c1",
        hostname="h1",
        args=["true"],
        memory_bytes=64 * MIB,
        swap_bytes=0,
        cpu_quota=20_000,
        cpu_period=100_000,
        cpu_shares=512,
        pids_max=20,
        blkio_weight=None,
        user_namespace=True,
    )
    kinds = {ns["type"] for ns in cfg["linux"]["namespaces"]}
    assert kinds == {"pid", "mount", "uts", "ipc", "network", "cgroup", "user"}
    assert cfg["linux"]["uidMappings"] == [{"containerID": 0, "hostID": 100_000, "size": 65536}]
    assert cfg["linux"]["cgroupsPath"] == "/nubis/c1"
    assert all("CAP_SYS_ADMIN" not in caps for caps in cfg["process"]["capabilities"].values())
    assert "CAP_SYS_ADMIN" not in CAPABILITIES
    assert cfg["linux"]["seccomp"]["defaultAction"] == "SCMP_ACT_ERRNO"
    for forbidden in ("mount", "umount2", "unshare", "setns", "pivot_root", "ptrace", "bpf", "keyctl"):
        assert forbidden not in SECCOMP_ALLOW
    assert {"fstatfs", "statfs", "execve"} <= set(SECCOMP_ALLOW)
    assert cfg["root"]["readonly"] is True
    assert cfg["process"]["noNewPrivileges"] is True
    res = cfg["linux"]["resources"]
    assert res["memory"] == {"limit": 64 * MIB, "swap": 64 * MIB}
    assert res["cpu"] == {"quota": 20_000, "period": 100_000, "shares": 512}
    assert res["pids"] == {"limit": 20}
    assert "blockIO" not in res
    assert not oci_config(
        name="c2",
        hostname="c2",
        args=["true"],
        memory_bytes=MIB,
        cpu_quota=1,
        pids_max=1,
        user_namespace=False,
    )["linux"].get("uidMappings")


# -- inside a real container ------------------------------------------------------------------
@pytest.mark.parametrize("userns", [True, False], ids=["userns", "no-userns"])
def test_isolation_inside(driver: OciDriver, start: Start, userns: bool) -> None:
    name = start(user_namespace=userns)
    assert driver.state(name) == "running"

    rc, out, _ = driver.exec(name, ["cat", "/proc/1/cmdline"])
    assert rc == 0
    assert out.split("\0")[:2] == ["sleep", "1000"]
    # Only the container's own processes are visible: sleep (pid 1) and ps itself.
    rc, out, _ = driver.exec(name, ["ps", "-o", "pid,comm"])
    assert rc == 0
    assert [line.split()[1] for line in out.splitlines()[1:]] == ["sleep", "ps"]

    assert driver.exec(name, ["hostname"])[1].strip() == name

    status = dict(
        line.split(":\t", 1) for line in driver.exec(name, ["cat", "/proc/self/status"])[1].splitlines()
    )
    assert status["Seccomp"].strip() == "2"
    assert not int(status["CapEff"], 16) & (1 << CAP_SYS_ADMIN)

    rc, _, err = driver.exec(name, ["mount", "-t", "tmpfs", "x", "/mnt"])
    assert rc != 0
    assert "permission denied" in err.lower()  # busybox's wording for EPERM
    rc, _, err = driver.exec(name, ["unshare", "-m", "true"])
    assert rc != 0
    assert "Operation not permitted" in err

    # Read-only root, writable /tmp.
    assert driver.exec(name, ["touch", "/x"])[0] != 0
    assert driver.exec(name, ["sh", "-c", "echo ok > /tmp/x && cat /tmp/x"])[1] == "ok\n"
    if userns:
        uid_map = driver.exec(name, ["cat", "/proc/self/uid_map"])[1].split()
        assert uid_map == ["0", "100000", "65536"]


@pytest.mark.slow
def test_oom_kill(driver: OciDriver, start: Start) -> None:
    name = start(memory_bytes=64 * MIB, swap_bytes=0)
    assert not driver.oom_killed(name)
    # tmpfs pages are charged to the writer's memory cgroup and, with no swap allowed, cannot be
    # reclaimed: 200 MiB into /tmp must end in the OOM killer.
    rc, _, _ = driver.exec(name, ["dd", "if=/dev/zero", "of=/tmp/fill", "bs=1M", "count=200"], timeout=30)
    assert rc == 137  # dd died of SIGKILL, the OOM killer's signal
    assert driver.oom_killed(name)
    usage_max = read_int(driver.cgroup_dir(name, "memory") / "memory.max_usage_in_bytes")
    assert usage_max <= 64 * MIB


@pytest.mark.slow
def test_pids_max_stops_fork_loop(driver: OciDriver, start: Start) -> None:
    name = start(pids_max=20)
    pids_dir = driver.cgroup_dir(name, "pids")
    assert read_int(pids_dir / "pids.max") == 20
    t0 = time.monotonic()
    # The shell exits when a fork is refused (ash raises "can't fork") or after 50; the sleeps stay.
    driver.exec(
        name,
        ["sh", "-c", "for i in $(seq 50); do sleep 30 </dev/null >/dev/null 2>&1 & done"],
        timeout=10,
    )
    time.sleep(1.0)
    # The host stays responsive: a fresh process starts and ends at once.
    t1 = time.monotonic()
    subprocess.run(["true"], check=True, timeout=5)
    assert time.monotonic() - t1 < 1.0
    comms = []
    for pid in (pids_dir / "cgroup.procs").read_text().split():
        try:
            comms.append(Path(f"/proc/{pid}/comm").read_text().strip())
        except FileNotFoundError:
            continue
    sleeps = comms.count("sleep") - 1  # pid 1 is `sleep 1000`
    assert 0 < sleeps < 50
    assert read_int(pids_dir / "pids.current") <= 20
    assert len(comms) <= 20
    assert int((pids_dir / "pids.events").read_text().split()[1]) > 0  # "max N": forks refused
    assert time.monotonic() - t0 < 15


@pytest.mark.slow
def test_cpu_quota_caps_usage(driver: OciDriver, start: Start) -> None:
    name = start(args=["sh", "-c", "while :; do :; done"], cpu_quota=20_000, cpu_period=100_000)
    cpu_dir = driver.cgroup_dir(name, "cpu")
    assert read_int(cpu_dir / "cpu.cfs_quota_us") == 20_000
    usage = driver.cgroup_dir(name, "cpuacct") / "cpuacct.usage"
    time.sleep(0.5)
    before, t0 = read_int(usage), time.monotonic()
    time.sleep(5)
    after, t1 = read_int(usage), time.monotonic()
    share = (after - before) / 1e9 / (t1 - t0)
    assert share <= 0.25
    assert share >= 0.10  # it really burned; the cap, not idleness, kept it low


def test_update_memory_live(driver: OciDriver, start: Start) -> None:
    name = start(memory_bytes=64 * MIB)
    mem = driver.cgroup_dir(name, "memory")
    assert read_int(mem / "memory.limit_in_bytes") == 64 * MIB
    driver.update(name, memory_bytes=128 * MIB)
    assert read_int(mem / "memory.limit_in_bytes") == 128 * MIB
    assert read_int(mem / "memory.memsw.limit_in_bytes") == 128 * MIB
    driver.update(name, memory_bytes=32 * MIB, pids_max=10)
    assert read_int(mem / "memory.limit_in_bytes") == 32 * MIB
    assert read_int(driver.cgroup_dir(name, "pids") / "pids.max") == 10
    assert driver.state(name) == "running"


def test_delete_leaves_nothing(driver: OciDriver, start: Start, workdir: Path) -> None:
    name = start(user_namespace=True)
    dirs = [driver.cgroup_dir(name, c) for c in CONTROLLERS]
    assert all(d.is_dir() for d in dirs)
    bundle = workdir / name
    assert bundle.is_dir()

    driver.delete(name)
    assert driver.state(name) is None
    assert not any(d.exists() for d in dirs)
    assert not bundle.exists()
    listed = subprocess.run(
        [RUNC, "--root", str(driver.runc_root), "list", "-q"], capture_output=True, text=True, check=True
    ).stdout.split()
    assert name not in listed
    driver.delete(name)  # twice is fine
    driver.delete(name, bundle)


def test_errors_carry_runc_message(driver: OciDriver) -> None:
    assert driver.state("nubis-no-such") is None
    with pytest.raises(DriverError, match="does not exist"):
        driver.update("nubis-no-such", memory_bytes=64 * MIB)


def test_exec_is_killed_after_its_timeout(driver: OciDriver, start: Start) -> None:
    """A command that outlives its timeout is killed and named; the caller is not held past it."""
    name = start()
    began = time.monotonic()
    with pytest.raises(DriverError, match=r"exec in .*: sleep still running after 0.5 s"):
        driver.exec(name, ["sleep", "30"], timeout=0.5)
    assert time.monotonic() - began < 5
    rc, out, _ = driver.exec(name, ["echo", "still here"])
    assert (rc, out.strip()) == (0, "still here")
