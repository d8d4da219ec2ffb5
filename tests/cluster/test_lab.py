"""The lab: several real compute hosts on one machine, each with its own namespaces, libvirtd and
agent. Guests and containers land on lab hosts through the ordinary services, and a host killed
hard takes its guests and containers with it."""

from __future__ import annotations

import json
import subprocess
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import libvirt
import pytest
from django.contrib.auth.models import User
from pytest_django import DjangoDbBlocker

from compute.lab import procs
from compute.models import (
    Flavor,
    Host,
    HostState,
    Image,
    Instance,
    InstanceKind,
    InstanceState,
    OperationState,
)
from compute.services.instances import instance_create, instance_delete
from security.audit import Actor
from tenants.models import Role, Tenant
from tests.cluster.conftest import LabControl, LabHost, Placement, lab_env, new_lab, wait_registered
from tests.compute_fixtures import instance_dir_of, wait_for, wait_marker, wait_operation
from tests.factories import add_member, make_tenant

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]
CGROUP = Path("/sys/fs/cgroup")


@pytest.fixture
def owner() -> tuple[Tenant, User, Actor]:
    tenant = make_tenant("lab", instances=6, containers=6)
    user = add_member(tenant, role=Role.MEMBER)
    return tenant, user, Actor(user.username, "api", user.pk)


def host_uuid(uri: str) -> str:
    conn = libvirt.open(uri)
    try:
        found = ET.fromstring(conn.getCapabilities()).findtext("host/uuid")  # noqa: S314 (libvirt's own XML)
        assert found
        return found
    finally:
        conn.close()


def domains_on(host: LabHost) -> set[str]:
    conn = libvirt.open(host.uri)
    try:
        return {d.name() for d in conn.listAllDomains(0)}
    finally:
        conn.close()


def qemu_of(host: LabHost, domain: str) -> list[int]:
    """The QEMU processes of ``domain`` in the host's PID namespace."""
    namespace = host.status()["pidns"]
    return [
        pid
        for pid in procs.tree_members(namespace)
        if any(arg.startswith(f"guest={domain}") for arg in procs.cmdline(pid))
    ]


def container_pids(host: LabHost, domain: str) -> list[int]:
    """The processes in the container's pids cgroup (under the host's own cgroup parent)."""
    path = CGROUP / "pids" / "nubis" / host.name / domain / "cgroup.procs"
    try:
        return [int(p) for p in path.read_text().split()]
    except OSError:
        return []


def test_lab_hosts_are_distinct_hosts_that_reach_each_other(
    lab: LabControl, lab_hosts: dict[str, Host]
) -> None:
    uuids = {h.name: host_uuid(h.uri) for h in lab.hosts}
    assert len(set(uuids.values())) == len(lab.hosts), uuids
    for host in lab.hosts:
        row = lab_hosts[host.name]
        assert row.address == host.address
        assert row.hypervisor_uuid == uuids[host.name]
        assert row.peer_uri == f"qemu+tcp://{host.address}/system" == host.peer_uri
        assert row.state == HostState.ENABLED
        assert host.run("hostname").stdout.strip() == host.name
        # Its own network stack: eth0 on the lab bridge, no interface of the machine's.
        links = host.run("ip", "-br", "link").stdout
        assert "eth0@" in links
        assert lab.bridge not in links
    # Each host reaches the others' libvirtd over the lab bridge by name (the path of migrations):
    # the host UUID it reads there is the other host's.
    first, second = lab.hosts[0], lab.hosts[1]
    out = first.run("virsh", "-c", f"qemu+tcp://{second.name}/system", "capabilities").stdout
    assert f"<uuid>{uuids[second.name]}</uuid>" in out
    # Its /run is its own: the machine's network namespaces (the other hosts') are not in it.
    assert first.run("findmnt", "-n", "-o", "FSTYPE", "/run").stdout.strip() == "tmpfs"
    assert second.name not in first.run("ls", "/run/netns").stdout.split()


def test_guests_run_on_lab_hosts_and_die_with_a_killed_host(
    lab: LabControl,
    lab_hosts: dict[str, Host],
    placement: Placement,
    owner: tuple[Tenant, User, Actor],
    image: Image,
    flavors: dict[str, Flavor],
    rootfs_image: Image,
    cflavors: dict[str, Flavor],
) -> None:
    tenant, _, actor = owner
    vm_host, ct_host = lab.hosts[0], lab.hosts[1]

    placement.only(vm_host.name)
    # No tenant network: the VM is on its host's NAT network, the containers have loopback only.
    # (Tenant networks across hosts are the overlay's tests.)
    vm_op = instance_create(
        actor=actor, tenant=tenant, name="vm-1", flavor="t.virtio", image=image.name, network=None
    )
    vm = Instance.objects.for_tenant(tenant).get(pk=vm_op.instance_id)
    assert vm.host is not None
    assert vm.host.name == vm_host.name
    placement.only(ct_host.name)
    ct_op = instance_create(
        actor=actor,
        tenant=tenant,
        name="ct-1",
        kind=InstanceKind.CONTAINER,
        flavor="c.small",
        image=rootfs_image.name,
        network=None,
    )
    ct = Instance.objects.for_tenant(tenant).get(pk=ct_op.instance_id)
    assert ct.host is not None
    assert ct.host.name == ct_host.name
    placement.restore()

    assert wait_operation(vm_op).state == OperationState.SUCCEEDED, wait_operation(vm_op).error
    assert wait_operation(ct_op).state == OperationState.SUCCEEDED, wait_operation(ct_op).error
    wait_marker(vm, "NUBIS-READY")
    # The guest is the lab host's: in its libvirtd and its PID namespace, not the machine's.
    assert vm.domain_name in domains_on(vm_host)
    assert vm.domain_name not in domains_on(ct_host)
    guests = qemu_of(vm_host, vm.domain_name)
    assert len(guests) == 1, guests
    # The container runs under the host's own runc state and cgroup parent, in its PID namespace.
    assert ct.domain_name in ct_host.run("runc", "list", "-q").stdout.split()
    assert ct.domain_name not in vm_host.run("runc", "list", "-q").stdout.split()
    inside = wait_for(lambda: container_pids(ct_host, ct.domain_name), "the container's processes")
    assert isinstance(inside, list)
    assert all(procs.in_tree(pid, ct_host.status()["pidns"]) for pid in inside)

    spaces = {h.name: h.status()["pidns"] for h in (vm_host, ct_host)}
    bystander = lab.hosts[2].status()
    killed_at = time.monotonic()
    vm_host.kill()
    ct_host.kill()
    print(f"lab kill of two hosts: {time.monotonic() - killed_at:.1f} s")  # noqa: T201
    # Nothing is left in their PID namespaces, nested ones (the container's) included.
    for name, namespace in spaces.items():
        assert procs.tree_members(namespace) == [], name
    assert not any(procs.alive(pid) for pid in guests + inside)
    assert container_pids(ct_host, ct.domain_name) == []
    assert not [p for p in procs.all_pids() if f"guest={vm.domain_name}" in " ".join(procs.cmdline(p))]
    with pytest.raises(libvirt.libvirtError):
        libvirt.open(vm_host.uri)
    assert {h["name"]: h["state"] for h in lab.status()["hosts"]}[vm_host.name] == "down"
    # The third host did not notice.
    after = lab.hosts[2].status()
    assert (after["init_pid"], after["agent_pid"], after["libvirtd"]) == (
        bystander["init_pid"],
        bystander["agent_pid"],
        True,
    )

    # Booted again: same name and address, and its agent registers it and finds its guests gone.
    started = time.monotonic()
    vm_host.start()
    ct_host.start()
    print(f"lab start of two hosts: {time.monotonic() - started:.1f} s")  # noqa: T201
    assert host_uuid(vm_host.uri) != host_uuid(ct_host.uri)
    back = wait_registered([vm_host.name, ct_host.name])
    assert back[vm_host.name].address == vm_host.address
    wait_for(
        lambda: all(
            i.state != InstanceState.RUNNING
            for i in Instance.objects.for_tenant(tenant).filter(pk__in=[vm.pk, ct.pk])
        ),
        "the revived agents to find their guests gone",
        timeout=60,
    )
    for instance in (vm, ct):
        instance.refresh_from_db()
        done = wait_operation(instance_delete(actor=actor, instance=instance))
        assert done.state == OperationState.SUCCEEDED, done.error
        assert not instance_dir_of(instance).exists()
    assert vm.domain_name not in domains_on(vm_host)


def test_an_agent_killed_alone_leaves_its_containers_running(
    lab: LabControl,
    lab_hosts: dict[str, Host],
    placement: Placement,
    owner: tuple[Tenant, User, Actor],
    rootfs_image: Image,
    cflavors: dict[str, Flavor],
) -> None:
    tenant, _, actor = owner
    host = lab.hosts[2]
    placement.only(host.name)
    op = instance_create(
        actor=actor,
        tenant=tenant,
        name="ct-2",
        kind=InstanceKind.CONTAINER,
        flavor="c.small",
        image=rootfs_image.name,
        network=None,
    )
    placement.restore()
    assert wait_operation(op).state == OperationState.SUCCEEDED, wait_operation(op).error
    ct = Instance.objects.for_tenant(tenant).get(pk=op.instance_id)
    running = wait_for(lambda: container_pids(host, ct.domain_name), "the container's processes")
    assert isinstance(running, list)
    agent = host.status()["agent_pid"]

    host.agent_kill()
    assert not procs.alive(agent)
    assert host.status()["libvirtd"]
    assert all(procs.alive(pid) for pid in running)  # the guests outlive their agent

    log_before = host.agent_log().count("ready.")
    host.agent_start()
    assert host.agent_log().count("ready.") == log_before + 1
    assert host.status()["agent_pid"] not in (None, agent)
    time.sleep(3)  # a reconciler round or more of the new agent
    ct.refresh_from_db()
    assert ct.state == InstanceState.RUNNING
    assert all(procs.alive(pid) for pid in running)
    done = wait_operation(instance_delete(actor=actor, instance=ct))
    assert done.state == OperationState.SUCCEEDED, done.error
    assert container_pids(host, ct.domain_name) == []


def test_lab_up_is_idempotent_and_down_leaves_nothing(
    django_db_blocker: DjangoDbBlocker, tmp_path: Path, transactional_db: None
) -> None:
    small = new_lab(tmp_path / "lab", lab_env(django_db_blocker))
    try:
        small.up(1)
        (host,) = small.hosts
        first = host.status()
        again = small.up(1)  # already up: nothing started, nothing changed
        assert "already up" in again
        assert "agent already running" in again
        assert host.status()["init_pid"] == first["init_pid"]
        assert host.status()["agent_pid"] == first["agent_pid"]
        namespace = first["pidns"]
        assert procs.tree_members(namespace)
        relay = small.status()["relay_pid"]
        # The command's own view agrees.
        printed = json.loads(small.command("status", "--json"))
        assert printed["hosts"][0]["init_pid"] == first["init_pid"]
        assert printed["relay_pid"] == relay
    finally:
        out = small.command("down")
    assert "down: done" in out
    assert procs.tree_members(namespace) == []
    assert not procs.alive(relay)
    assert not Path("/run/netns", host.name).exists()
    mounts = Path("/proc/self/mountinfo").read_text()
    assert f"/run/netns/{host.name} " not in mounts
    assert str(small.directory) not in mounts
    links = subprocess.run(["ip", "-br", "link"], capture_output=True, text=True, check=True).stdout
    assert small.bridge not in links
    assert f"v{host.name}" not in links
    assert (
        small.bridge
        not in subprocess.run(["iptables", "-S", "FORWARD"], capture_output=True, text=True).stdout
    )
    assert not list(CGROUP.glob(f"*/nubis/{host.name}"))
    leftovers = [p for p in procs.all_pids() if str(small.directory) in " ".join(procs.cmdline(p))]
    assert leftovers == []
    assert "none in" in small.command("down")  # again: nothing to do
