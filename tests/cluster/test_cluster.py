"""The cluster on a real lab: tenant networks across hosts, live and cold migration, maintenance
evacuation, HA restart with fencing, and an agent killed during a move.

Three lab hosts (tests/cluster/conftest.py), real TCG guests and runc containers, the portal's
services called as the API calls them. The control side's periodic passes (evacuation, the HA
check) are run by the tests themselves, a pass a second, as the control worker's beat would.
"""

from __future__ import annotations

import ipaddress
import itertools
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import libvirt
import pytest
from django.conf import settings

from compute.models import (
    Host,
    HostState,
    Image,
    Instance,
    InstanceState,
    Network,
    Operation,
    OperationKind,
    OperationState,
)
from compute.services.evacuation import evacuate_all
from compute.services.ha import ha_check
from compute.services.hosts import host_maintenance_set
from compute.services.migration import instance_migrate
from compute.services.networks import network_create
from scheduler.hosts import host_rows
from security.audit import Actor
from tenants.models import QuotaClaim
from tests.cluster.conftest import LabControl, Placement
from tests.compute.test_tenant_networks import SHELL_PORT, Member, shell_image  # noqa: F401 (fixture)
from tests.compute_fixtures import serial_text, wait_for, wait_marker, wait_operation
from tests.factories import make_tenant

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]
STAFF = Actor("ops", "api", None)


def subnets(index: int) -> str:
    """The index-th /24 of the run's own pool, past those the other network tests take."""
    pool = ipaddress.IPv4Network(settings.NUBIS_NETWORK_POOL).subnets(new_prefix=24)
    return str(next(itertools.islice(pool, 60 + index, None)))


def running(instance: Instance, timeout: float = 180) -> Instance:
    last = Operation.objects.unscoped().filter(instance=instance).order_by("-created").first()
    assert last is not None, f"{instance.name} has no operation"
    op = wait_operation(last, timeout)
    instance.refresh_from_db()
    assert op.state == OperationState.SUCCEEDED, (op.kind, op.error, instance.fault)
    assert instance.state == InstanceState.RUNNING, instance.state
    return instance


def create_on(member: Member, placement: Placement, host: str, name: str, **kw: Any) -> Instance:
    placement.only(host)
    instance = member.create(name, network="lan", **kw)
    assert host_of(instance) == host, instance.fault
    return instance


def domains(lab: LabControl) -> dict[str, dict[str, str]]:
    """{host: {domain: state}} of every lab host that is up, read through its own libvirtd."""
    states = {libvirt.VIR_DOMAIN_RUNNING: "running", libvirt.VIR_DOMAIN_PAUSED: "paused"}
    found: dict[str, dict[str, str]] = {}
    for host in lab.hosts:
        if host.status()["state"] != "up":
            continue
        conn = libvirt.open(host.uri)
        try:
            found[host.name] = {
                d.name(): states.get(d.state()[0], "stopped")
                for d in conn.listAllDomains(0)
                if d.name().startswith(settings.NUBIS_DOMAIN_PREFIX)
            }
        finally:
            conn.close()
    return found


def where(lab: LabControl, instance: Instance) -> list[str]:
    """The lab hosts that have the instance's domain defined (running or not)."""
    return sorted(h for h, doms in domains(lab).items() if instance.domain_name in doms)


def used(host: Host) -> tuple[float, float, float]:
    row = host_rows(Host.objects.filter(pk=host.pk))[0]
    return (row.used_vcpus, row.used_ram_mib, row.used_disk_gib)


def claims(tenant: Any) -> list[tuple[int, ...]]:
    """The tenant's quota claims still held: (instances, vcpus, RAM, disk, containers) each."""
    return sorted(
        QuotaClaim.objects.for_tenant(tenant)
        .filter(released_at__isnull=True)
        .values_list("instances", "vcpus", "ram_mib", "disk_gib", "containers")
    )


def host_of(instance: Instance) -> str:
    assert instance.host is not None, f"{instance.name} is on no host"
    return instance.host.name


def vm_shell(member: Member, via: Instance, vm: Instance, script: str) -> str:
    """Run ``script`` inside the VM (its test shell), from a container of the same tenant."""
    _rc, out = member.exec(via, f'echo "{script}; exit" | nc -w 5 {vm.ip_address} {SHELL_PORT}', timeout=30)
    return out


def pump(passes: Callable[[], object], until: Callable[[], object], what: str, timeout: float) -> None:
    """Run the control side's periodic pass once a second until ``until`` holds."""
    deadline = time.monotonic() + timeout
    while True:
        passes()
        if until():
            return
        assert time.monotonic() < deadline, f"timed out after {timeout:.0f} s waiting for {what}"
        time.sleep(1)


@dataclass
class Cloud:
    """The lab, two tenants (blue, red), the test images and flavors, and placement's choice."""

    lab: LabControl
    placement: Placement
    blue: Member
    red: Member
    shell_image: Image

    @property
    def names(self) -> list[str]:
        return [h.name for h in self.lab.hosts]

    def lan(self, member: Member, index: int, **kw: Any) -> Network:
        """The member's network "lan" on the index-th of the run's spare subnets."""
        return network_create(actor=member.actor, tenant=member.tenant, name="lan", cidr=subnets(index), **kw)

    def vm(self, host: str, name: str, member: Member | None = None) -> Instance:
        """A VM of the test image with its shell, on the tenant's "lan", placed on ``host``."""
        return create_on(
            member or self.blue, self.placement, host, name, flavor="t.virtio", image=self.shell_image.name
        )

    def box(self, host: str, name: str, member: Member | None = None, **kw: Any) -> Instance:
        """A busybox container on the tenant's "lan", placed on ``host``."""
        kw.setdefault("flavor", "c.medium")
        return create_on(
            member or self.blue, self.placement, host, name, image="busybox", kind="container", **kw
        )


@pytest.fixture
def cloud(
    lab: LabControl,
    lab_hosts: dict[str, Host],
    placement: Placement,
    shell_image: Image,  # noqa: F811
    flavors: Any,
    rootfs_image: Image,
    cflavors: Any,
    settings: Any,
) -> Cloud:
    settings.NUBIS_SHARED_INSTANCE_STORE = True
    blue = Member(make_tenant("blue", instances=10, containers=10))
    red = Member(make_tenant("red", instances=10, containers=10))
    return Cloud(lab, placement, blue, red, shell_image)


def test_a_tenant_network_spans_hosts_and_stays_its_own(cloud: Cloud) -> None:
    lab, blue, red = cloud.lab, cloud.blue, cloud.red
    h1, h2, _h3 = cloud.names
    cloud.lan(blue, 0)
    cloud.lan(red, 1, nat_egress=True)  # red's hosts forward: isolation must hold anyway
    vm, box = cloud.vm(h1, "vm"), cloud.box(h2, "box")
    spies = [cloud.box(h, f"spy{i}", member=red) for i, h in enumerate((h1, h2))]
    vm, box = running(vm), running(box)
    spies = [running(s) for s in spies]
    # The VM got its address from its own host's DHCP (the network's dnsmasq there).
    assert f"ip={vm.ip_address} " in wait_marker(vm, "NUBIS-READY")

    # One segment across the two hosts: the container pings the VM, and the VM the container.
    rc, out = blue.exec(box, f"ping -c 3 -W 3 {vm.ip_address}")
    assert rc == 0, out
    assert "PONG" in vm_shell(blue, box, vm, f"ping -c 1 -W 2 {box.ip_address} >/dev/null && echo PONG")
    # Red's containers, one on each host, reach neither (red has NAT egress, so hosts forward).
    for spy in spies:
        for target in (vm, box):
            rc, out = red.exec(spy, f"ping -c 2 -W 1 {target.ip_address}")
            assert rc != 0, f"{spy.name} on {spy.host} reached {target.name}: {out}"
    # Red's two containers are one segment too, on their own tunnel.
    rc, out = red.exec(spies[0], f"ping -c 2 -W 2 {spies[1].ip_address}")
    assert rc == 0, out
    blue_net = Network.objects.for_tenant(blue.tenant).get(name="lan")
    for host in (lab.host(h1), lab.host(h2)):
        links = host.run("ip", "-d", "link", "show").stdout
        assert f"nvx{blue_net.bridge[3:]}" in links, f"no tunnel of {blue_net.name} on {host.name}"


def test_a_vm_moves_live_and_keeps_its_address_console_and_pings(cloud: Cloud) -> None:
    lab, placement, blue = cloud.lab, cloud.placement, cloud.blue
    h1, h2, h3 = cloud.names
    cloud.lan(blue, 2)
    vm, pinger = cloud.vm(h1, "mover"), cloud.box(h3, "pinger")
    vm, pinger = running(vm), running(pinger)
    wait_marker(vm, "NUBIS-READY")
    address = str(vm.ip_address)
    quota_before = claims(blue.tenant)
    hosts = {h.name: h for h in Host.objects.filter(name__in=[h1, h2])}
    before = {name: used(h) for name, h in hosts.items()}
    placement.only(h1, h2, h3)

    # Pings every 0.1 s from the third host, across the whole move.
    blue.exec(pinger, f"ping -i 0.1 -w 40 {address} > /tmp/ping.log 2>&1 &")
    time.sleep(2)
    op = instance_migrate(actor=STAFF, instance=vm, target=h2)
    assert op.params["live"] is True
    vm.refresh_from_db()
    assert vm.state == InstanceState.MIGRATING
    # While it moves, the target holds its capacity too.
    assert used(hosts[h2])[1] == before[h2][1] + vm.ram_mib
    op = wait_operation(op, 120)
    assert op.state == OperationState.SUCCEEDED, op.error
    vm.refresh_from_db()
    assert host_of(vm) == h2
    assert vm.state == InstanceState.RUNNING, vm.fault
    assert vm.migration_host is None
    assert str(vm.ip_address) == address
    assert where(lab, vm) == [h2]
    # The record of the move: its time, downtime and bytes, as the target's hypervisor measured them.
    assert op.result["total_ms"] > 0
    assert 0 < op.result["downtime_ms"] < 2000, op.result
    assert op.result["data_bytes"] > 1 << 20, op.result
    assert op.progress == 100

    time.sleep(3)
    _rc, log = blue.exec(pinger, "kill $(pidof ping); sleep 0.5; cat /tmp/ping.log")
    # Replies carry the request's sequence number: the gaps are the pings lost.
    seqs = sorted({int(n) for n in re.findall(r"seq=(\d+) ", log)})
    assert len(seqs) > 50, log
    lost = seqs[-1] - seqs[0] + 1 - len(seqs)
    assert lost <= 3, f"{lost} pings lost across the move:\n{log[-800:]}"

    # Same guest, no reboot: one boot on the serial log, which goes on from the new host.
    mark = f"MOVED-{vm.uuid.hex[:8]}"
    vm_shell(blue, pinger, vm, f"echo {mark} > /dev/ttyS0")
    wait_for(lambda: mark in serial_text(vm), "the moved VM to write to its serial console", 30)
    text = serial_text(vm)
    assert text.count("NUBIS-BOOT") == 1, text[-2000:]
    assert "boots=1" in text

    # Capacity: the source gave it back, the target holds it once; the quota did not move.
    assert used(hosts[h1]) == (
        before[h1][0] - vm.vcpus,
        before[h1][1] - vm.ram_mib,
        before[h1][2] - vm.disk_gib,
    )
    assert used(hosts[h2]) == (
        before[h2][0] + vm.vcpus,
        before[h2][1] + vm.ram_mib,
        before[h2][2] + vm.disk_gib,
    )
    assert claims(blue.tenant) == quota_before
    # The source has no port or bridge of it left (its last instance there left).
    net = Network.objects.for_tenant(blue.tenant).get(name="lan")
    assert net.bridge not in lab.host(h1).run("ip", "link", "show").stdout


def test_a_move_that_fails_leaves_the_vm_where_it_was(cloud: Cloud) -> None:
    lab, placement, blue = cloud.lab, cloud.placement, cloud.blue
    h1, h2, _h3 = cloud.names
    cloud.lan(blue, 3)
    vm, box = cloud.vm(h1, "stays"), cloud.box(h1, "box")
    vm, box = running(vm), running(box)
    wait_marker(vm, "NUBIS-READY")
    source = lab.host(h1)
    target = lab.host(h2)
    placement.only(h1, h2)
    h2_before = used(Host.objects.get(name=h2))
    # The move is held to 2 MiB/s, so it takes a while; once data flows, the target becomes
    # unreachable from the source (every packet dropped): the move stalls, runs into its timeout
    # and is aborted.
    block = [
        "iptables",
        "-I",
        "INPUT",
        "-s",
        source.address,
        "-p",
        "tcp",
        "--dport",
        "49152:49215",
        "-j",
        "DROP",
    ]
    op = instance_migrate(actor=STAFF, instance=vm, target=h2, timeout=15, bandwidth_mib=2)
    wait_for(lambda: Operation.objects.unscoped().get(pk=op.pk).progress >= 15, "data to flow", 60)
    target.run(*block)
    try:
        op = wait_operation(op, 90)
    finally:
        target.run("iptables", "-D", *block[2:])
    assert op.state == OperationState.FAILED
    assert "timed out" in op.error, op.error
    vm.refresh_from_db()
    assert vm.state == InstanceState.RUNNING
    assert host_of(vm) == h1
    assert vm.migration_host is None
    assert "timed out" in vm.fault
    assert domains(lab)[h1].get(vm.domain_name) == "running"
    assert vm.domain_name not in domains(lab)[h2]
    assert used(Host.objects.get(name=h2)) == h2_before
    # It still answers on its address.
    rc, out = blue.exec(box, f"ping -c 2 -W 2 {vm.ip_address}")
    assert rc == 0, out


def test_maintenance_empties_a_host(cloud: Cloud) -> None:
    lab, placement, blue = cloud.lab, cloud.placement, cloud.blue
    h1, h2, h3 = cloud.names
    cloud.lan(blue, 4)
    made = [cloud.vm(h1, "vm1"), cloud.vm(h1, "vm2")]
    made += [cloud.box(h1, "box1", flavor="c.small"), cloud.box(h1, "box2", flavor="c.small")]
    made = [running(i) for i in made]
    placement.only(h1, h2, h3)
    host = Host.objects.get(name=h1)
    host = host_maintenance_set(actor=STAFF, host=host, on=True)
    assert host.state == HostState.ENTERING_MAINTENANCE
    # No new placement while it empties.
    late = blue.create("late", flavor="c.small", image="busybox", kind="container", network="lan")
    assert host_of(late) != h1
    pump(
        evacuate_all,
        lambda: Host.objects.get(name=h1).state == HostState.MAINTENANCE,
        f"{h1} to empty",
        300,
    )
    assert not Instance.objects.unscoped().filter(host__name=h1).exclude(state=InstanceState.DELETED).exists()
    for instance in made:
        # (a container is off the host once stopped there; it starts on its new host right after)
        op = wait_operation(
            Operation.objects.unscoped().get(instance=instance, kind=OperationKind.MIGRATE), 120
        )
        assert op.state == OperationState.SUCCEEDED, op.error
        instance.refresh_from_db()
        assert instance.state == InstanceState.RUNNING, (instance.name, instance.state, instance.fault)
        assert host_of(instance) in (h2, h3)
        assert op.params["live"] is (instance.kind == "vm")
        assert op.params["reason"] == f"maintenance of {h1}"
    assert domains(lab)[h1] == {}
    assert lab.host(h1).run("runc", "list", "-q").stdout.split() == []
    # Still no placement there; leaving maintenance is one action.
    assert (
        host_of(blue.create("later", flavor="c.small", image="busybox", kind="container", network="lan"))
        != h1
    )
    assert host_maintenance_set(actor=STAFF, host=host, on=False).state == HostState.ENABLED


def test_a_dead_host_is_fenced_and_its_ha_instances_restart_elsewhere(cloud: Cloud, settings: Any) -> None:
    lab, placement, blue = cloud.lab, cloud.placement, cloud.blue
    h1, h2, h3 = cloud.names
    settings.NUBIS_HA_GRACE = 6
    cloud.lan(blue, 5)
    vm = cloud.vm(h3, "ha-vm")
    box = cloud.box(h3, "ha-box", flavor="c.small", ha=True)
    plain = cloud.box(h3, "plain", flavor="c.small")
    vm, box, plain = running(vm), running(box), running(plain)
    assert (vm.ha, box.ha, plain.ha) == (True, True, False)
    wait_marker(vm, "NUBIS-READY")
    placement.only(h1, h2, h3)
    dead = lab.host(h3)
    cluster = Host.objects.filter(name__in=[h1, h2, h3])

    dead.kill()
    killed = time.monotonic()
    pump(
        lambda: ha_check(hosts=cluster),
        lambda: all(
            Instance.objects.unscoped().get(pk=i.pk).state == InstanceState.RUNNING
            and host_of(Instance.objects.unscoped().get(pk=i.pk)) != h3
            for i in (vm, box)
        ),
        "the HA instances to run elsewhere",
        settings.NUBIS_HA_GRACE + 90,
    )
    took = time.monotonic() - killed
    assert took < settings.NUBIS_HA_GRACE + 60, took
    host = Host.objects.get(name=h3)
    assert host.fenced_at is not None
    assert host.state == HostState.DOWN
    for instance in (vm, box):
        instance.refresh_from_db()
        op = Operation.objects.unscoped().get(instance=instance, kind=OperationKind.HA_RESTART)
        assert op.state == OperationState.SUCCEEDED, op.error
        assert op.params["failed_host"] == h3
    # The VM booted again from its disk on the shared store: its boot count went on.
    assert "boots=2" in wait_marker(vm, "NUBIS-READY", count=2)
    plain.refresh_from_db()
    assert plain.state == InstanceState.STOPPED
    assert h3 in plain.fault
    assert host_of(plain) == h3

    # The dead host comes back: it runs none of the old copies, and rejoins.
    dead.start()
    wait_for(lambda: Host.objects.get(name=h3).fenced_at is None, f"{h3} to rejoin", 120)
    assert Host.objects.get(name=h3).state == HostState.ENABLED
    everywhere = domains(lab)
    assert [h for h, doms in everywhere.items() if vm.domain_name in doms] == [host_of(vm)]
    assert everywhere[host_of(vm)][vm.domain_name] == "running"
    assert box.domain_name not in dead.run("runc", "list", "-q").stdout
    assert "destroyed" in dead.agent_log()


def test_an_agent_killed_during_a_move_leaves_the_vm_on_one_host(cloud: Cloud) -> None:
    lab, placement, blue = cloud.lab, cloud.placement, cloud.blue
    h1, h2, _h3 = cloud.names
    cloud.lan(blue, 6)
    vm = running(cloud.vm(h1, "kill9"))
    wait_marker(vm, "NUBIS-READY")
    placement.only(h1, h2)
    source = lab.host(h1)
    # Held to 3 MiB/s, the move takes several seconds: the agent dies while data flows.
    op = instance_migrate(actor=STAFF, instance=vm, target=h2, bandwidth_mib=3, timeout=60)
    wait_for(lambda: Operation.objects.unscoped().get(pk=op.pk).progress >= 15, "data to flow", 60)
    source.agent_kill()
    assert not Operation.objects.unscoped().get(pk=op.pk).done, "the move ended before the agent died"
    source.agent_start()
    op = wait_operation(op, 120)
    # The agent that came back ran the operation again and found out where the VM is.
    assert op.attempts == 2, (op.attempts, op.state, op.error)
    vm.refresh_from_db()
    wait_for(
        lambda: Instance.objects.unscoped().get(pk=vm.pk).state == InstanceState.RUNNING,
        "the VM to settle",
        60,
    )
    vm.refresh_from_db()
    running_on = [h for h, doms in domains(lab).items() if doms.get(vm.domain_name) == "running"]
    assert running_on == [host_of(vm)], (running_on, host_of(vm), op.state, op.error)
    assert where(lab, vm) == [host_of(vm)]
    assert vm.migration_host is None
