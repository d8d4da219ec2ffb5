"""A floating address follows its VM across a live move between lab hosts.

The external network is the lab bridge itself (every lab host's eth0 is on it): the pool's
interface is ``eth0`` and its subnet one of 198.18.0.0/15 that nothing on this machine routes. The
"outside" is a network namespace of the test's own on that bridge, the pool's gateway. Nothing is
sent anywhere else.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import Any

import pytest
from django.conf import settings
from django.db import transaction

from compute.models import FloatingPool, Instance, OperationState
from compute.services.floating_ips import floating_ip_allocate, floating_ip_associate, floating_ip_release
from compute.services.instances import instance_delete
from compute.services.migration import instance_migrate
from compute.services.networks import group_create, rule_create
from tests.cluster.conftest import LabHost
from tests.cluster.test_cluster import STAFF, Cloud, create_on, host_of, running
from tests.cluster.test_cluster import cloud as cloud
from tests.compute.netlab import sh
from tests.compute.outside import Outside
from tests.compute.test_floating_ips import guest_shell
from tests.compute.test_tenant_networks import SHELL_PORT
from tests.compute.test_tenant_networks import shell_image as shell_image
from tests.compute_fixtures import wait_for, wait_marker, wait_operation

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]


class LabOutside(Outside):
    """The outside namespace on an existing bridge (the lab's), with no bridge of its own."""

    def __init__(self, name: str, subnet: str, bridge: str) -> None:
        super().__init__(name, subnet)
        self.bridge = bridge

    def up(self) -> LabOutside:
        self._made = True
        sh("ip", "netns", "add", self.netns)
        sh("ip", "link", "add", self.link, "type", "veth", "peer", "name", "eth0", "netns", self.netns)
        sh("ip", "link", "set", self.link, "master", self.bridge, "up")
        for argv in (
            ["addr", "add", f"{self.address}/{self.subnet.prefixlen}", "dev", "eth0"],
            ["link", "set", "eth0", "up"],
            ["link", "set", "lo", "up"],
        ):
            sh("ip", "-n", self.netns, *argv)
        # The outside stands for the external router: without arping on the hosts (no gratuitous
        # ARP after a move), it learns the address's new host when its ARP entry ages, fast here.
        sh(
            "ip",
            "netns",
            "exec",
            self.netns,
            "sysctl",
            "-q",
            "-w",
            "net.ipv4.neigh.eth0.base_reachable_time_ms=1000",
            "net.ipv4.neigh.eth0.delay_first_probe_time=1",
        )
        return self

    def down(self) -> None:
        if not self._made:
            return
        sh("ip", "netns", "del", self.netns, check=False)
        sh("ip", "link", "del", self.link, check=False)


@pytest.fixture
def outside(cloud: Cloud) -> Iterator[LabOutside]:
    worker = int(str(settings.NUBIS_NETWORK_POOL).split(".")[1]) % 100
    world = LabOutside(f"c{cloud.lab.prefix}", f"198.18.{60 + worker}.0/24", cloud.lab.bridge).up()
    try:
        yield world
    finally:
        world.down()


def nat_left(host: LabHost, vm: Instance, address: str) -> list[str]:
    """What of the VM's NAT the host still has: rules naming it, the /32, the routing rule."""
    left = []
    rules = host.run("iptables", "-w", "-t", "nat", "-S").stdout + host.run("iptables", "-w", "-S").stdout
    left += [line for line in rules.splitlines() if vm.port_name in line or address in line]
    if f"{address}/32" in host.run("ip", "-4", "addr", "show", "dev", "eth0").stdout:
        left.append(f"{address}/32 on eth0")
    left += [
        line for line in host.run("ip", "rule", "show").stdout.splitlines() if str(vm.ip_address) in line
    ]
    return left


def test_a_floating_address_follows_its_vm_across_a_live_move(
    cloud: Cloud,
    outside: LabOutside,
) -> None:
    lab, blue, placement = cloud.lab, cloud.blue, cloud.placement
    h1, h2, h3 = cloud.names
    addresses = [str(a) for a in itertools.islice(outside.subnet.hosts(), 12)]
    FloatingPool.objects.create(
        name="lab-ext",
        cidr=str(outside.subnet),
        interface="eth0",
        range_start=addresses[9],
        range_end=addresses[11],
        gateway=outside.address,
    )
    lan = cloud.lan(blue, 7)
    shell = group_create(actor=blue.actor, tenant=blue.tenant, name="shell")
    rule_create(actor=blue.actor, group=shell, protocol="tcp", cidr="0.0.0.0/0", port_min=SHELL_PORT)
    fip = floating_ip_allocate(actor=blue.actor, tenant=blue.tenant, pool="lab-ext")
    address = str(fip.address)
    # Associated in the create's transaction: the address is the VM's from its first port set-up.
    with transaction.atomic():
        vm = create_on(
            blue,
            placement,
            h1,
            "floater",
            flavor="t.virtio",
            image=cloud.shell_image.name,
            security_groups=["shell"],
        )
        floating_ip_associate(actor=blue.actor, fip=fip, instance=vm)
    vm = running(vm)
    try:
        assert f"ip={vm.ip_address} " in wait_marker(vm, "NUBIS-READY")

        def shell_answers(mark: str) -> Any:
            got = guest_shell(outside, address, f"echo {mark}-$((6 * 7)); ip -4 route", timeout=2)
            return got if got["ok"] and f"{mark}-42" in str(got["got"]) else None

        before = wait_for(lambda: shell_answers("before"), "the VM's shell at its floating address", 90)
        assert f"default via {lan.gateway}" in str(before["got"])  # type: ignore[index]
        assert f"{address}/32" in lab.host(h1).run("ip", "-4", "addr", "show", "dev", "eth0").stdout

        placement.only(h1, h2, h3)
        op = wait_operation(instance_migrate(actor=STAFF, instance=vm, target=h2), 180)
        assert op.state == OperationState.SUCCEEDED, op.error
        assert op.params["live"] is True
        vm.refresh_from_db()
        assert host_of(vm) == h2

        # The outside reaches it on its new host, at the same address.
        wait_for(lambda: shell_answers("after"), "the moved VM's shell at its floating address", 90)
        assert f"{address}/32" in lab.host(h2).run("ip", "-4", "addr", "show", "dev", "eth0").stdout
        # The source keeps nothing of its NAT: no rules, no /32, no routing rule.
        wait_for(lambda: not nat_left(lab.host(h1), vm, address), f"{h1} to drop the moved VM's NAT", 30)
        assert nat_left(lab.host(h3), vm, address) == []
    finally:
        done = wait_operation(instance_delete(actor=blue.actor, instance=vm), 120)
    assert done.state == OperationState.SUCCEEDED, done.error
    wait_for(lambda: not nat_left(lab.host(h2), vm, address), f"{h2} to drop the deleted VM's NAT", 30)
    fip.refresh_from_db()
    assert fip.instance is None
    floating_ip_release(actor=blue.actor, fip=fip)
