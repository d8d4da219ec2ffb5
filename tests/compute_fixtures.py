"""Real compute fixtures: the guest image built from Debian packages, and a real compute agent.

Guests run under QEMU's software emulation (TCG) here: /dev/kvm exists on these machines but the
KVM probe guest does not boot under it, so flavors use the ``emulated`` CPU mode.
"""

from __future__ import annotations

import contextlib
import io
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import libvirt
import pytest
from django.conf import settings
from django.db.models import ProtectedError
from pytest_django import DjangoDbBlocker

from compute.containers.rootfs import build_busybox_rootfs
from compute.drivers.oci import OciDriver
from compute.guest.builder import GuestImage, build_guest_image
from compute.models import CpuMode, Flavor, Host, Image, Instance, IoModel, Operation, domain_uuid
from compute.services.images import image_register
from tests.conftest import ROOT, stop_process, subprocess_env

DEADLINE = 120.0  # seconds; a TCG boot takes about 5 s, several at once on 2 cores take longer
ROOTFS_GRACE = "3"  # seconds an agent of the tests keeps an unpacked tree no container uses


def remove_network_leftovers() -> list[str]:
    """This run's bridges, namespaces and iptables chains (every run has its own prefix, and its
    database is gone at the end): left up, a bridge keeps its subnet's route and shadows the next
    run's network, and the chains of ports whose interface vanished would stay forever."""
    from compute.drivers import network as plumbing
    from compute.services.ports import alias_owner, chain_owner, tag_prefix

    owner = chain_owner()
    removed = []
    for bridge, alias in plumbing.bridges_list(tag_prefix()).items():
        if alias_owner(alias) is not None:  # not a deployment whose prefix merely starts with ours
            plumbing.bridge_remove(bridge, Path(settings.NUBIS_NETWORK_STATE_DIR) / bridge, owner)
            removed.append(bridge)
    for bridge in sorted(plumbing.network_chains_list(owner)):
        plumbing.bridge_remove(bridge, Path(settings.NUBIS_NETWORK_STATE_DIR) / bridge, owner)
        removed.append(f"NBR-{owner}-{bridge}")
    for port in sorted(plumbing.nat_chains_list(owner)):  # they jump to the ports' chains
        plumbing.instance_nat_remove(port, owner)
        removed.append(f"NFD/NFS/NFF-{owner}-{port}")
    for port in sorted(plumbing.port_chains_list(owner)):
        plumbing.port_rules_remove(port, owner)
        removed.append(f"NSA/NSG-{owner}-{port}")
    for name in plumbing.netns_list():
        if domain_uuid(name) is not None:  # ours, not a longer prefix's that starts with ours
            plumbing.netns_remove(name)
            removed.append(name)
    return removed


@pytest.fixture(scope="session", autouse=True)
def _networks_cleaned_at_the_end() -> Iterator[None]:
    yield
    remove_network_leftovers()


@pytest.fixture(scope="module")
def workdir() -> Iterator[Path]:
    """A private directory under /tmp, 0755 so a container's mapped root can traverse it."""
    path = Path(tempfile.mkdtemp(prefix="nubis-oci-", dir="/tmp"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def rootfs(workdir: Path) -> Path:
    """A busybox root filesystem for driver-level containers (no image registry)."""
    return build_busybox_rootfs(workdir / "rootfs")


@pytest.fixture(scope="module")
def driver(workdir: Path) -> OciDriver:
    # A runc state root of our own, so `runc list` shows only this module's containers.
    return OciDriver(runc_root=workdir / "runc-state")


@pytest.fixture(scope="session")
def built_image() -> GuestImage:
    """The tiny guest, built once and cached in NUBIS_IMAGE_DIR across runs."""
    return build_guest_image(Path(settings.NUBIS_IMAGE_DIR), log=lambda _: None)


@pytest.fixture
def image(built_image: GuestImage, transactional_db: None) -> Image:
    return image_register(built_image)


@pytest.fixture
def console_image(image: Image) -> Image:
    """The test guest with a shell on its serial port (kernel argument nubis.console=1)."""
    return Image.objects.create(
        name="tiny-console",
        kind=image.kind,
        os_name=image.os_name,
        kernel_path=image.kernel_path,
        initrd_path=image.initrd_path,
        disk_path=image.disk_path,
        cmdline=f"{image.cmdline} nubis.console=1",
        sha256=image.sha256,
        size_bytes=image.size_bytes,
    )


@pytest.fixture
def flavors(transactional_db: None) -> dict[str, Flavor]:
    common = {"vcpus": 1, "ram_mib": 192, "disk_gib": 1, "cpu_mode": CpuMode.EMULATED}
    return {
        "virtio": Flavor.objects.create(name="t.virtio", io_model=IoModel.VIRTIO, min_ram_mib=96, **common),
        "emulated": Flavor.objects.create(name="t.emulated", io_model=IoModel.EMULATED, **common),
    }


@pytest.fixture
def rootfs_image(transactional_db: None) -> Image:
    """The busybox container image (built once, cached in NUBIS_IMAGE_DIR) in the registry."""
    from django.core.management import call_command

    call_command("build_container_image", stdout=io.StringIO())
    return Image.objects.get(name="busybox")


@pytest.fixture
def cflavors(transactional_db: None) -> dict[str, Flavor]:
    """Container flavors: 64 MiB with 64 processes at 20% of a CPU, and a roomier one."""
    return {
        "small": Flavor.objects.create(
            name="c.small", vcpus=1, ram_mib=64, disk_gib=1, cpu_limit_pct=20, pids_max=64
        ),
        "medium": Flavor.objects.create(name="c.medium", vcpus=1, ram_mib=128, disk_gib=1, pids_max=128),
    }


class Agent:
    """A real `manage.py compute_agent` process for a host of its own."""

    def __init__(self, name: str, process: subprocess.Popen[bytes], log: Path) -> None:
        self.name = name
        self.process = process
        self.log = log

    def text(self) -> str:
        return self.log.read_text(errors="replace")


def agent_env_defaults() -> dict[str, str]:
    """The environment of the tests' compute agents (the session's, and the lab hosts')."""
    return {
        "NUBIS_HOST_HEARTBEAT_SECONDS": "1",
        "NUBIS_INSTANCE_DIR": str(settings.NUBIS_INSTANCE_DIR),
        "NUBIS_IMAGE_DIR": str(settings.NUBIS_IMAGE_DIR),
        "NUBIS_ROOTFS_DIR": str(settings.NUBIS_ROOTFS_DIR),
        # Unused unpacked trees go within seconds: every container test then races the collector.
        "NUBIS_ROOTFS_GRACE": ROOTFS_GRACE,
        "NUBIS_SHUTDOWN_TIMEOUT": "20",
        "NUBIS_RECONCILE_SECONDS": "2",
        "NUBIS_METRICS_SECONDS": "1",
    }


def start_agent(name: str, log: Path, **extra_env: str) -> subprocess.Popen[bytes]:
    """``extra_env`` adds to the environment below or overrides it (another host's own directories)."""
    env = subprocess_env(**{**agent_env_defaults(), **extra_env})
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "manage.py", "compute_agent", "--name", name, "--kvm-probe", "never"],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def forget_host(name: str, django_db_blocker: DjangoDbBlocker) -> None:
    """Delete a stopped agent's host row: it registers again after each flush, so the row outlives
    the last test that used it, heartbeat fresh, and a later test could be placed on a dead host."""
    with django_db_blocker.unblock(), contextlib.suppress(ProtectedError):
        Host.objects.filter(name=name).delete()  # a row something still points at stays, as it would


@pytest.fixture(scope="session")
def agent(
    django_db_setup: None, django_db_blocker: DjangoDbBlocker, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Agent]:
    name = f"test-{uuid.uuid4().hex[:6]}"
    log = tmp_path_factory.mktemp("agent") / "agent.log"
    with django_db_blocker.unblock():
        process = start_agent(name, log)
    agent = Agent(name, process, log)
    try:
        deadline = time.monotonic() + 60
        while "ready." not in agent.text():
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"compute agent did not start:\n{agent.text()[-3000:]}")
            time.sleep(0.2)
        yield agent
    finally:
        stop_process(process, 30)
        forget_host(name, django_db_blocker)


@pytest.fixture
def host(agent: Agent, transactional_db: None) -> Host:
    """The agent's host row (the agent registers it again within a second after a flush)."""
    deadline = time.monotonic() + 15
    while (found := Host.objects.filter(name=agent.name).first()) is None:
        assert time.monotonic() < deadline, f"agent {agent.name} did not register:\n{agent.text()[-2000:]}"
        time.sleep(0.2)
    return found


def wait_for(predicate: Callable[[], object], what: str, timeout: float = DEADLINE) -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.25)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def wait_operation(op: Operation, timeout: float = DEADLINE) -> Operation:
    wait_for(
        lambda: Operation.objects.unscoped().get(pk=op.pk).done, f"operation {op.kind} to finish", timeout
    )
    return Operation.objects.unscoped().get(pk=op.pk)


def instance_dir_of(instance: Instance) -> Path:
    return Path(settings.NUBIS_INSTANCE_DIR) / str(instance.uuid)


def serial_log(instance: Instance) -> Path:
    return instance_dir_of(instance) / "serial.log"


def serial_text(instance: Instance) -> str:
    path = serial_log(instance)
    return path.read_text(errors="replace") if path.exists() else ""


def wait_marker(instance: Instance, marker: str, count: int = 1, timeout: float = DEADLINE) -> str:
    wait_for(
        lambda: serial_text(instance).count(marker) >= count, f"{marker} #{count} on {instance.name}", timeout
    )
    return serial_text(instance)


def libvirt_conn() -> libvirt.virConnect:
    return libvirt.open(settings.LIBVIRT_URI)


def domains() -> set[str]:
    conn = libvirt_conn()
    try:
        prefix = settings.NUBIS_DOMAIN_PREFIX
        return {d.name() for d in conn.listAllDomains(0) if d.name().startswith(prefix)}
    finally:
        conn.close()


def _ours(names: set[str]) -> set[str]:
    """Only what belongs to this test database's instances: other runs may share the libvirt daemon."""
    uuids = {str(u) for u in Instance.objects.unscoped().values_list("uuid", flat=True)}
    return {n for n in names if n.removeprefix(settings.NUBIS_DOMAIN_PREFIX) in uuids}


def containers() -> set[str]:
    """runc containers of this deployment (any test run's)."""
    out = subprocess.run(["runc", "list", "-q"], capture_output=True, text=True, check=True).stdout
    return {n for n in out.split() if n.startswith(settings.NUBIS_DOMAIN_PREFIX)}


def container_traces(instance: Instance) -> list[str]:
    """What a container leaves on the host while it exists: runc state, cgroups, netns, veth, bundle."""
    name = instance.domain_name
    found = []
    if name in containers():
        found.append(f"runc container {name}")
    for controller in ("memory", "cpu", "pids", "cpuacct", "blkio"):
        path = Path("/sys/fs/cgroup") / controller / "nubis" / name
        if path.exists():
            found.append(f"cgroup {path}")
    if (Path("/var/run/netns") / name).exists():
        found.append(f"netns {name}")
    if Path(f"/sys/class/net/{instance.port_name}").exists():
        found.append(f"interface {instance.port_name}")
    if instance_dir_of(instance).exists():
        found.append(f"bundle {instance_dir_of(instance)}")
    return found


@pytest.fixture
def no_leftovers() -> Iterator[None]:
    """Fail the test if its instances leave a domain, a container or a directory behind; clean up."""
    yield
    leftover_containers = _ours(containers())
    for name in leftover_containers:
        subprocess.run(["runc", "delete", "--force", name], capture_output=True, check=False)
    netns = _ours(
        {p.name for p in Path("/var/run/netns").iterdir()} if Path("/var/run/netns").exists() else set()
    )
    for name in netns:
        subprocess.run(["ip", "netns", "del", name], capture_output=True, check=False)
    assert not leftover_containers, f"left behind containers: {sorted(leftover_containers)}"
    assert not netns, f"left behind network namespaces: {sorted(netns)}"
    extra = _ours(domains())
    root = Path(settings.NUBIS_INSTANCE_DIR)
    uuids = {str(u) for u in Instance.objects.unscoped().values_list("uuid", flat=True)}
    extra_dirs = {p for p in root.iterdir() if p.name in uuids} if root.exists() else set()
    conn = libvirt_conn()
    try:
        for name in extra:
            dom = conn.lookupByName(name)
            if dom.isActive():
                dom.destroy()
            dom.undefineFlags(libvirt.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA)
    finally:
        conn.close()
    for path in extra_dirs:
        subprocess.run(["rm", "-rf", str(path)], check=False)
    assert not extra, f"left behind domains: {sorted(extra)}"
    assert not extra_dirs, f"left behind instance directories: {sorted(map(str, extra_dirs))}"
