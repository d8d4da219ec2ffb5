"""Floating addresses and host port forwards: the host's NAT in a lab namespace (the driver alone),
then end to end through the API and a real agent with a runc container, reached from an "outside"
namespace (tests/compute/outside.py). Every address here is on namespaces and bridges these tests
make; nothing is sent anywhere else.
"""

from __future__ import annotations

import ipaddress
import itertools
import json
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict

import pytest
from django.conf import settings
from django.db import transaction
from rest_framework.test import APIClient

from compute.drivers.network import Floating, NatSpec, Rule
from compute.models import (
    FloatingIP,
    FloatingPool,
    Host,
    Image,
    Instance,
    Network,
    OperationState,
    PortForward,
)
from compute.services.floating_ips import floating_ip_allocate, floating_ip_associate
from compute.services.instances import instance_create, instance_delete
from compute.services.networks import group_create, network_create, rule_create
from compute.services.ports import chain_owner
from tenants.models import Quota, Role
from tests.compute.conftest import wait_for, wait_marker, wait_operation
from tests.compute.netlab import sh
from tests.compute.outside import Outside
from tests.compute.test_network_netfilter import OWNER, RUN, Lab
from tests.compute.test_network_netfilter import lab as lab
from tests.compute.test_tenant_networks import Member, running
from tests.compute.test_volumes import SHELL_PORT
from tests.compute.test_volumes import shell_image as shell_image
from tests.conftest import ROOT
from tests.factories import add_member, make_tenant

NAT_CALL = r"""
import json, sys
from compute.drivers import network as plumbing
name, args = sys.argv[1], json.loads(sys.argv[2])
if args and isinstance(args[0], dict):
    spec = dict(args[0])
    if spec.get("floating"):
        spec["floating"] = plumbing.Floating(**spec["floating"])
    spec["forwards"] = tuple(tuple(f) for f in spec.get("forwards", ()))
    args[0] = plumbing.NatSpec(**spec)
try:
    result = getattr(plumbing, name)(*args)
except plumbing.PlumbingError as exc:
    print(json.dumps({"error": str(exc)}))
else:
    print(json.dumps({"ok": True, "result": sorted(result) if isinstance(result, set) else result}))
"""


def nat_call(lab: Lab, function: str, *args: object) -> object:
    plain = [asdict(a) if isinstance(a, NatSpec) else a for a in args]
    code = f"import sys; sys.path.insert(0, {str(ROOT)!r})\n{NAT_CALL}"
    out = lab.run(sys.executable, "-I", "-S", "-c", code, function, json.dumps(plain)).stdout
    result = json.loads(out.strip().splitlines()[-1])
    assert result.get("ok"), result
    return result.get("result")


def dump(lab: Lab, table: str) -> str:
    return lab.run("iptables", "-w", "-t", table, "-S").stdout


@pytest.fixture
def outside(lab: Lab) -> Iterator[Outside]:
    world = Outside(f"l{RUN}", "198.18.250.0/24", host_netns=lab.netns).up()
    try:
        yield world
    finally:
        world.down()


ALLOW_22 = [Rule("tcp", 22, 22, "0.0.0.0/0")]
ALLOW_80 = [Rule("tcp", 80, 80, "0.0.0.0/0")]


def test_floating_address_nat_in_a_lab_host(lab: Lab, outside: Outside) -> None:
    """1:1 NAT on a host: the outside reaches the instance at its floating address only where its
    security group lets it, the instance's traffic out appears from the floating address, the
    rules are idempotent, and removing them leaves nothing."""
    spec = lab.spec(1, nat=False)
    lab.ok("network_ensure", spec)
    netns, port, _mac, ip = lab.instance(spec, 1, 5, ALLOW_22)
    lab.serve(netns, 22, 80)
    floating = "198.18.250.77"
    nat = NatSpec(
        port=port,
        private=ip,
        bridge=spec.bridge,
        owner=OWNER,
        floating=Floating(
            address=floating, interface=outside.bridge, cidr=str(outside.subnet), gateway=outside.address
        ),
    )
    # Without NAT: nothing answers at the floating address.
    assert not outside.connect(floating, 22, timeout=1)["ok"]
    nat_call(lab, "instance_nat_set", nat)
    before = (dump(lab, "nat"), dump(lab, "filter"))
    nat_call(lab, "instance_nat_set", nat)  # a second time changes nothing
    assert (dump(lab, "nat"), dump(lab, "filter")) == before

    assert outside.connect(floating, 22)["ok"]
    # The security group allows tcp/22 only: 80 is dropped in FORWARD after DNAT.
    assert not outside.connect(floating, 80, timeout=1)["ok"]
    # The host answered ARP for the floating address on the external bridge.
    assert floating in outside.neighbours()

    # The instance's own traffic to the outside leaves from its floating address (policy routed
    # to the external network's gateway, which is the outside here).
    listener = outside.listen(9000)
    sh(
        "ip",
        "netns",
        "exec",
        netns,
        "python3",
        "-c",
        f"import socket; s=socket.create_connection(({outside.address!r}, 9000), 3); print(s.recv(100))",
    )
    assert listener.stdout is not None
    assert listener.stdout.readline().strip() == floating
    listener.wait(timeout=10)
    rules = lab.run("ip", "-j", "rule", "show").stdout
    assert ip in rules

    # The group changes to tcp/80 only: now 80 gets in and 22 does not.
    lab.ok("port_rules_set", port, ip, ALLOW_80, OWNER)
    assert outside.connect(floating, 80)["ok"]
    assert not outside.connect(floating, 22, timeout=1)["ok"]

    # Port forwards: host address:30022 -> instance:80 (same security group).
    nat_call(
        lab,
        "instance_nat_set",
        NatSpec(**{**asdict(nat), "floating": nat.floating, "forwards": ((30022, 80), (30023, 22))}),
    )
    assert outside.connect(outside.host_address, 30022)["ok"]
    assert not outside.connect(outside.host_address, 30023, timeout=1)["ok"]
    assert nat_call(lab, "nat_chains_list", OWNER) == [port]

    nat_call(lab, "instance_nat_remove", port, OWNER)
    nat_call(lab, "instance_nat_remove", port, OWNER)  # idempotent
    assert not outside.connect(floating, 80, timeout=1)["ok"]
    assert not outside.connect(outside.host_address, 30022, timeout=1)["ok"]
    nat_dump, filter_dump = dump(lab, "nat"), dump(lab, "filter")
    assert f"-{OWNER}-" not in nat_dump.replace(f"NBR-{OWNER}", "")
    assert "NFF-" not in filter_dump
    assert f"{floating}/32" not in lab.run("ip", "-4", "addr", "show", "dev", outside.bridge).stdout
    assert ip not in lab.run("ip", "-j", "rule", "show").stdout


# -- end to end: API, agent, a runc container ---------------------------------------------------
def outside_subnet() -> str:
    """198.18.<40 + worker>.0/24: each run on this machine (NUBIS_NETWORK_POOL 10.<100+N>...) its own."""
    worker = int(str(settings.NUBIS_NETWORK_POOL).split(".")[1]) % 100
    return f"198.18.{40 + worker}.0/24"


@pytest.fixture
def world() -> Iterator[Outside]:
    outside = Outside(f"w{RUN}", outside_subnet()).up()
    try:
        yield outside
    finally:
        outside.down()


def make_pool(world: Outside, size: int = 2) -> FloatingPool:
    hosts = list(world.subnet.hosts())
    return FloatingPool.objects.create(
        name="ext",
        cidr=str(world.subnet),
        interface=world.bridge,
        range_start=str(hosts[99]),
        range_end=str(hosts[99 + size - 1]),
        gateway=world.address,
    )


def lan_of(member: Member, index: int) -> Network:
    cidr = next(
        itertools.islice(
            ipaddress.IPv4Network(settings.NUBIS_NETWORK_POOL).subnets(new_prefix=24), index, None
        )
    )
    return network_create(actor=member.actor, tenant=member.tenant, name="lan", cidr=str(cidr))


def chains(port: str) -> str:
    return sh("iptables", "-w", "-t", "nat", "-S").stdout + sh("iptables", "-w", "-S").stdout


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_floating_ip_makes_a_container_reachable_through_its_security_group(
    host: Host, rootfs_image: Image, cflavors: object, no_leftovers: None, world: Outside
) -> None:
    make_pool(world)
    a = Member(make_tenant("fip-a"))
    lan_of(a, 50)
    ssh = group_create(actor=a.actor, tenant=a.tenant, name="ssh")
    rule_create(actor=a.actor, group=ssh, protocol="tcp", cidr="0.0.0.0/0", port_min=22)
    box = running(
        a,
        a.create(
            "box",
            flavor="c.medium",
            image="busybox",
            kind="container",
            network="lan",
            security_groups=["ssh"],
        ),
    )
    for port in (22, 80):
        a.exec(box, f"nc -ll -p {port} -e echo hello-{port} >/dev/null 2>&1 &")
    base = f"/api/v1/tenants/{a.tenant.slug}"
    created = a.client.post(f"{base}/floating-ips/", {}, format="json")
    assert created.status_code == 201, created.content
    fip = created.json()
    address = fip["address"]
    assert ipaddress.IPv4Address(address) in world.subnet
    assert fip["instance"] is None
    assert not world.connect(address, 22, timeout=1)["ok"]

    answer = a.client.post(
        f"{base}/floating-ips/{fip['id']}/associate/", {"instance": str(box.uuid)}, format="json"
    )
    assert answer.status_code == 200, answer.content
    assert answer.json()["instance"] == str(box.uuid)
    assert answer.json()["private_address"] == str(box.ip_address)
    # The host's agent applies it (a networks_sync task): the outside reaches tcp/22 ...
    wait_for(
        lambda: "hello-22" in str(world.connect(address, 22, timeout=1).get("got")), "tcp/22 via floating", 30
    )
    # ... and not tcp/80, which its security group does not allow (dropped in FORWARD after DNAT).
    assert not world.connect(address, 80, timeout=1)["ok"]
    assert a.client.get(f"{base}/instances/{box.uuid}/").json()["floating_ips"] == [address]
    assert [i["floating_ips"] for i in a.client.get(f"{base}/instances/").json()["results"]] == [[address]]

    # The container's own traffic out appears from its floating address.
    listener = world.listen(9000)
    a.exec(box, f"nc -w 3 {world.address} 9000 </dev/null")
    assert listener.stdout is not None
    assert listener.stdout.readline().strip() == address
    listener.wait(timeout=10)

    # A group allowing 80 (and not 22) changes what gets in, at once.
    web = group_create(actor=a.actor, tenant=a.tenant, name="web")
    rule_create(actor=a.actor, group=web, protocol="tcp", cidr="0.0.0.0/0", port_min=80)
    assert (
        a.client.put(
            f"{base}/instances/{box.uuid}/security-groups/", {"security_groups": ["web"]}, format="json"
        ).status_code
        == 200
    )
    wait_for(
        lambda: "hello-80" in str(world.connect(address, 80, timeout=1).get("got")), "tcp/80 via floating", 30
    )
    assert not world.connect(address, 22, timeout=1)["ok"]

    # Disassociated: unreachable, and its rules and address are gone from the host.
    answer = a.client.post(f"{base}/floating-ips/{fip['id']}/disassociate/", {}, format="json")
    assert answer.status_code == 200
    assert answer.json()["instance"] is None
    wait_for(
        lambda: f"NFD-{chain_owner()}-{box.port_name}" not in chains(box.port_name), "NAT rules removed", 30
    )
    assert not world.connect(address, 80, timeout=1)["ok"]
    assert f"{address}/32" not in sh("ip", "-4", "addr", "show", "dev", world.bridge).stdout

    # A host port forward: the host's address on the external network, an allocated port, the same group.
    forward = a.client.post(f"{base}/instances/{box.uuid}/port-forwards/", {"port": 80}, format="json")
    assert forward.status_code == 201, forward.content
    host_port = forward.json()["host_port"]
    low, high = settings.NUBIS_PORT_FORWARD_RANGE
    assert low <= host_port <= high
    assert forward.json()["protocol"] == "tcp"
    wait_for(
        lambda: "hello-80" in str(world.connect(world.host_address, host_port, timeout=1).get("got")),
        "forward",
        30,
    )
    closed = a.client.post(f"{base}/instances/{box.uuid}/port-forwards/", {"port": 22}, format="json").json()
    time.sleep(1.5)
    assert not world.connect(world.host_address, closed["host_port"], timeout=1)["ok"]  # no group allows 22
    listed = a.client.get(f"{base}/instances/{box.uuid}/port-forwards/").json()
    assert sorted(f["port"] for f in listed) == [22, 80]

    # Associated again, then the instance is deleted: its rules go, the address stays the tenant's.
    a.client.post(f"{base}/floating-ips/{fip['id']}/associate/", {"instance": str(box.uuid)}, format="json")
    wait_for(lambda: "hello-80" in str(world.connect(address, 80, timeout=1).get("got")), "tcp/80 again", 30)
    op = wait_operation(instance_delete(actor=a.actor, instance=box))
    assert op.state == OperationState.SUCCEEDED, op.error
    assert f"-{chain_owner()}-{box.port_name}" not in chains(box.port_name)
    assert f"{address}/32" not in sh("ip", "-4", "addr", "show", "dev", world.bridge).stdout
    assert a.client.get(f"{base}/floating-ips/{fip['id']}/").json()["instance"] is None
    assert not PortForward.objects.for_tenant(a.tenant).exists()
    assert a.client.delete(f"{base}/floating-ips/{fip['id']}/").status_code == 204


@pytest.mark.django_db(transaction=True)
def test_floating_ips_quota_pool_and_tenancy(host: Host, rootfs_image: Image, cflavors: object) -> None:
    """Refusals name their field: no pool, an exhausted pool, the quota; another tenant neither sees
    an address nor associates one with an instance it does not own; viewers only read."""
    a, b = Member(make_tenant("fip-q-a")), Member(make_tenant("fip-q-b"))
    base_a, base_b = f"/api/v1/tenants/{a.tenant.slug}", f"/api/v1/tenants/{b.tenant.slug}"
    none = a.client.post(f"{base_a}/floating-ips/", {}, format="json")
    assert none.status_code == 409, none.content
    assert none.json()["errors"][0]["field"] == "pool", none.content
    FloatingPool.objects.create(
        name="ext",
        cidr="198.18.99.0/24",
        interface="nxtnone",
        range_start="198.18.99.10",
        range_end="198.18.99.12",
    )
    unknown = a.client.post(f"{base_a}/floating-ips/", {"pool": "nope"}, format="json")
    assert unknown.status_code == 400
    assert "unknown floating pool" in unknown.json()["errors"][0]["message"]
    Quota.objects.for_tenant(a.tenant).update(max_floating_ips=2)
    first = a.client.post(f"{base_a}/floating-ips/", {"pool": "ext"}, format="json")
    assert first.status_code == 201
    assert first.json()["address"] == "198.18.99.10"
    assert a.client.post(f"{base_a}/floating-ips/", {}, format="json").json()["address"] == "198.18.99.11"
    over = a.client.post(f"{base_a}/floating-ips/", {}, format="json")
    assert over.status_code == 409
    error = over.json()["errors"][0]
    assert (error["field"], error["rule"]) == ("floating_ips", "quota"), error
    # B takes the pool's last address; then it is exhausted.
    assert b.client.post(f"{base_b}/floating-ips/", {}, format="json").status_code == 201
    exhausted = b.client.post(f"{base_b}/floating-ips/", {}, format="json")
    assert exhausted.status_code == 409, exhausted.content
    assert exhausted.json()["errors"][0]["rule"] == "exhausted", exhausted.content

    fip_a = first.json()["id"]
    # B sees none of A's addresses, and cannot act on them.
    assert [f["address"] for f in b.client.get(f"{base_b}/floating-ips/").json()["results"]] == [
        "198.18.99.12"
    ]
    assert b.client.get(f"{base_b}/floating-ips/{fip_a}/").status_code == 404
    assert b.client.delete(f"{base_b}/floating-ips/{fip_a}/").status_code == 404
    # An instance of A on a network (never started: the test needs no host for it).
    lan_of(a, 60)
    box = a.create("box", flavor="c.medium", image="busybox", kind="container", network="lan")
    fip_b = b.client.get(f"{base_b}/floating-ips/").json()["results"][0]["id"]
    taken = b.client.post(
        f"{base_b}/floating-ips/{fip_b}/associate/", {"instance": str(box.uuid)}, format="json"
    )
    assert taken.status_code == 400, taken.content
    assert taken.json()["errors"][0]["field"] == "instance", taken.content
    assert FloatingIP.objects.for_tenant(b.tenant).get(pk=fip_b).instance is None
    # A viewer of A reads, and cannot allocate, associate or release.
    viewer = add_member(a.tenant, role=Role.VIEWER)
    client = APIClient()
    client.force_authenticate(viewer)
    assert client.get(f"{base_a}/floating-ips/").status_code == 200
    assert client.post(f"{base_a}/floating-ips/", {}, format="json").status_code == 403
    assert (
        client.post(
            f"{base_a}/floating-ips/{fip_a}/associate/", {"instance": str(box.uuid)}, format="json"
        ).status_code
        == 403
    )
    assert client.delete(f"{base_a}/floating-ips/{fip_a}/").status_code == 403
    # Released, the quota comes back.
    assert a.client.delete(f"{base_a}/floating-ips/{fip_a}/").status_code == 204
    assert a.client.post(f"{base_a}/floating-ips/", {}, format="json").status_code == 201
    # An instance without a tenant network has no private address to NAT to.
    plain = a.create("plain", flavor="c.medium", image="busybox", kind="container", network=None)
    fip_c = a.client.get(f"{base_a}/floating-ips/").json()["results"][0]["id"]
    refused = a.client.post(
        f"{base_a}/floating-ips/{fip_c}/associate/", {"instance": str(plain.uuid)}, format="json"
    )
    assert refused.status_code == 400, refused.content
    assert refused.json()["errors"][0]["rule"] == "network", refused.content
    bad = a.client.post(f"{base_a}/instances/{box.uuid}/port-forwards/", {"port": 70000}, format="json")
    assert bad.status_code == 400
    assert "port" in bad.content.decode()
    for instance in (box, plain):
        running(a, instance)  # its create ends first (an instance busy creating is not deleted)
        wait_operation(instance_delete(actor=a.actor, instance=instance))


def guest_shell(world: Outside, address: str, script: str, timeout: float = 5.0) -> dict[str, object]:
    """Run SCRIPT in the test guest's shell (nc -e /bin/sh on SHELL_PORT) from the outside."""
    return world.connect(address, SHELL_PORT, script + "\n", timeout=timeout)


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_floating_ip_reaches_a_vm_through_its_security_group(
    host: Host, shell_image: Image, flavors: object, no_leftovers: None, world: Outside
) -> None:
    """A real VM (the tiny image with a shell on a TCP port), its floating address associated before
    it boots: DHCP gives it its default route, the outside reaches its shell at the floating address
    while its security group allows the port and not once it does not, and its own traffic out
    leaves from the floating address."""
    make_pool(world)
    a = Member(make_tenant("fip-vm"))
    lan = lan_of(a, 52)
    shell = group_create(actor=a.actor, tenant=a.tenant, name="shell")
    rule_create(actor=a.actor, group=shell, protocol="tcp", cidr="0.0.0.0/0", port_min=SHELL_PORT)
    fip = floating_ip_allocate(actor=a.actor, tenant=a.tenant)
    address = str(fip.address)
    # One transaction: the create's task is sent on commit, so the address is the VM's before its
    # host sets its port up (the Debian module associates one with a running VM instead).
    with transaction.atomic():
        op = instance_create(
            actor=a.actor,
            tenant=a.tenant,
            name="vm",
            flavor="t.virtio",
            image=shell_image.name,
            network="lan",
            security_groups=["shell"],
        )
        vm = Instance.objects.for_tenant(a.tenant).get(pk=op.instance_id)
        floating_ip_associate(actor=a.actor, fip=fip, instance=vm)
    vm = running(a, vm)
    try:
        assert f"ip={vm.ip_address} " in wait_marker(vm, "NUBIS-READY")

        def routes() -> str | None:
            answer = guest_shell(world, address, "ip -4 route")
            return str(answer["got"]) if answer["ok"] else None

        found = wait_for(routes, "the guest's shell at its floating address", 60)
        assert f"default via {lan.gateway}" in str(found), found
        got = guest_shell(world, address, "echo answer-$((6 * 7))")
        assert got["ok"], got
        assert "answer-42" in str(got["got"])

        # Its own connection out leaves from the floating address.
        listener = world.listen(9000)
        guest_shell(world, address, f"echo hi | nc -w 3 {world.address} 9000")
        assert listener.stdout is not None
        assert listener.stdout.readline().strip() == address
        listener.wait(timeout=10)

        # A group that does not allow the shell's port: the outside no longer gets in.
        web = group_create(actor=a.actor, tenant=a.tenant, name="web")
        rule_create(actor=a.actor, group=web, protocol="tcp", cidr="0.0.0.0/0", port_min=80)
        base = f"/api/v1/tenants/{a.tenant.slug}"
        answer = a.client.put(
            f"{base}/instances/{vm.uuid}/security-groups/", {"security_groups": ["web"]}, format="json"
        )
        assert answer.status_code == 200, answer.content
        wait_for(
            lambda: not guest_shell(world, address, "echo in", timeout=1)["ok"], "the shell port closed", 30
        )
        time.sleep(1)
        assert not guest_shell(world, address, "echo in", timeout=2)["ok"]
        # Back to the shell group: in again (the group decides, nothing else changed).
        a.client.put(
            f"{base}/instances/{vm.uuid}/security-groups/", {"security_groups": ["shell"]}, format="json"
        )
        wait_for(lambda: guest_shell(world, address, "echo in", timeout=1)["ok"], "the shell port open", 30)
    finally:
        done = wait_operation(instance_delete(actor=a.actor, instance=vm))
    assert done.state == OperationState.SUCCEEDED, done.error
    assert f"-{chain_owner()}-{vm.port_name}" not in chains(vm.port_name)
    assert f"{address}/32" not in sh("ip", "-4", "addr", "show", "dev", world.bridge).stdout
    assert not world.connect(address, SHELL_PORT, timeout=1)["ok"]
