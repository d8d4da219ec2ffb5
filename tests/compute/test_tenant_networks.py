"""Tenant networks end to end: a real VM and real containers on per-tenant bridges, through the
portal's services and a real agent. Every address here is on bridges and namespaces these tests
(through the agent) create; no traffic leaves the machine.
"""

from __future__ import annotations

import contextlib
import ipaddress
import itertools
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from django.conf import settings
from rest_framework.test import APIClient

from compute.guest.builder import GuestImage
from compute.models import Host, Image, Instance, InstanceState, Network, Operation, OperationState
from compute.services.instances import instance_create, instance_delete
from compute.services.networks import group_create, network_create, network_delete, rule_create
from security.audit import Actor
from tenants.models import Role, Tenant
from tests.compute.conftest import container_traces, wait_marker, wait_operation
from tests.factories import add_member, make_tenant

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]

SHELL_PORT = 2323
ETH_P_ALL = 0x0003


@pytest.fixture
def shell_image(built_image: GuestImage, image: Image) -> Image:
    """The test guest with a shell on TCP 2323 (nubis.shell), so the VM itself can ping out."""
    return Image.objects.create(
        name="tiny-shell",
        kind=image.kind,
        os_name=image.os_name,
        kernel_path=image.kernel_path,
        initrd_path=image.initrd_path,
        disk_path=image.disk_path,
        cmdline=f"{image.cmdline} nubis.shell={SHELL_PORT}",
        sha256=image.sha256,
        size_bytes=image.size_bytes,
    )


class Member:
    def __init__(self, tenant: Tenant) -> None:
        self.tenant = tenant
        self.user = add_member(tenant, role=Role.MEMBER)
        self.actor = Actor(self.user.username, "api", self.user.pk)
        self.client = APIClient()
        self.client.force_authenticate(self.user)

    def create(self, name: str, **kw: object) -> Instance:
        op = instance_create(actor=self.actor, tenant=self.tenant, name=name, **kw)  # type: ignore[arg-type]
        return Instance.objects.for_tenant(self.tenant).get(pk=op.instance_id)

    def exec(self, instance: Instance, script: str, timeout: int = 20) -> tuple[int, str]:
        response = self.client.post(
            f"/api/v1/tenants/{self.tenant.slug}/instances/{instance.uuid}/exec/",
            {"argv": ["sh", "-c", script], "timeout": timeout},
            format="json",
        )
        assert response.status_code == 200, response.content
        body = response.json()
        return int(body["exit_code"]), body["stdout"] + body["stderr"]


def running(member: Member, instance: Instance) -> Instance:
    op = wait_operation(Operation.objects.for_tenant(member.tenant).get(instance=instance, kind="create"))
    instance.refresh_from_db()
    assert op.state == OperationState.SUCCEEDED, (op.error, instance.fault)
    assert instance.state == InstanceState.RUNNING
    return instance


@contextlib.contextmanager
def sniffer(*interfaces: str) -> Iterator[list[bytes]]:
    """Every frame seen on the interfaces while the block runs (AF_PACKET sockets in this process).

    A bridge's own device sees only what goes to or from the host; frames it forwards between its
    ports show up on the ports, so a whole segment is its bridge plus every port.
    """
    frames: list[bytes] = []
    stop = threading.Event()
    socks = []
    for interface in interfaces:
        sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
        sock.bind((interface, 0))
        sock.settimeout(0.2)
        socks.append(sock)

    def run(sock: socket.socket) -> None:
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                frames.append(sock.recv(65535))

    threads = [threading.Thread(target=run, args=(s,), daemon=True) for s in socks]
    for thread in threads:
        thread.start()
    try:
        yield frames
    finally:
        stop.set()
        for thread in threads:
            thread.join()
        for sock in socks:
            sock.close()


def ipv4_sources(frames: list[bytes]) -> set[str]:
    return {socket.inet_ntoa(f[26:30]) for f in frames if len(f) >= 34 and f[12:14] == b"\x08\x00"}


def bridge_ports(bridge: str) -> list[str]:
    path = Path(f"/sys/class/net/{bridge}/brif")
    return sorted(p.name for p in path.iterdir()) if path.exists() else []


def test_tenant_networks_connect_a_tenant_and_isolate_it(
    host: Host, shell_image: Image, flavors, rootfs_image: Image, cflavors, no_leftovers
) -> None:
    a, b = Member(make_tenant("net-a")), Member(make_tenant("net-b"))
    # Subnets from the run's own pool: another run on this machine has its own (scripts/test).
    lan_a, lan_b = list(
        itertools.islice(ipaddress.IPv4Network(settings.NUBIS_NETWORK_POOL).subnets(new_prefix=24), 40, 42)
    )
    net_a = network_create(actor=a.actor, tenant=a.tenant, name="lan", cidr=str(lan_a))
    # B's network has NAT egress, so the host forwards: isolation must hold anyway.
    net_b = network_create(actor=b.actor, tenant=b.tenant, name="lan", cidr=str(lan_b), nat_egress=True)
    vm = a.create("vm", flavor="t.virtio", image=shell_image.name, network="lan")
    box = a.create("box", flavor="c.medium", image="busybox", kind="container", network="lan")
    intruder = b.create("intruder", flavor="c.medium", image="busybox", kind="container", network="lan")
    vm, box, intruder = running(a, vm), running(a, box), running(b, intruder)
    assert (str(vm.ip_address), str(box.ip_address), str(intruder.ip_address)) == (
        str(lan_a[2]),
        str(lan_a[3]),
        str(lan_b[2]),
    )
    # The VM got its reserved address from the network's own DHCP server.
    assert f"ip={vm.ip_address} " in wait_marker(vm, "NUBIS-READY")
    assert sorted(bridge_ports(net_a.bridge)) == sorted([vm.port_name, box.port_name])

    # Inside tenant A: the container pings the VM, and the VM pings the container.
    rc, out = a.exec(box, f"ping -c 3 -W 3 {vm.ip_address}")
    assert rc == 0, out
    in_vm = f"ping -c 1 -W 2 {box.ip_address} >/dev/null && echo PONG; exit"
    rc, out = a.exec(box, f'echo "{in_vm}" | nc -w 5 {vm.ip_address} {SHELL_PORT}')
    assert "PONG" in out, out

    # Tenant B reaches none of it, with forwarding on, and A's bridge never sees B's packets.
    assert Path("/proc/sys/net/ipv4/ip_forward").read_text().strip() == "1"
    with sniffer(net_a.bridge, *bridge_ports(net_a.bridge)) as frames:
        for target in (vm.ip_address, box.ip_address, net_a.gateway):
            rc, out = b.exec(intruder, f"ping -c 1 -W 1 {target}")
            assert rc != 0, (target, out)
        rc, out = b.exec(intruder, f"echo hi | nc -w 2 {vm.ip_address} {SHELL_PORT}")
        assert rc != 0, out
        # The sniffer works: A's own traffic shows up.
        assert a.exec(box, f"ping -c 3 -W 3 {vm.ip_address}")[0] == 0
    assert str(box.ip_address) in ipv4_sources(frames)
    assert str(intruder.ip_address) not in ipv4_sources(frames)

    # No instance reaches the host's own services: not on its gateway, not on its other addresses.
    listener = socket.create_server(("0.0.0.0", 0))  # noqa: S104 - the point is to listen everywhere
    listener.settimeout(0.1)
    port = listener.getsockname()[1]
    try:
        for member, instance, gateway in ((a, box, net_a.gateway), (b, intruder, net_b.gateway)):
            for address in (gateway, "192.168.122.1"):
                for target_port in (port, 6379, 5432, 8000):
                    rc, out = member.exec(instance, f"echo x | nc -w 1 {address} {target_port}")
                    assert rc != 0, (instance.name, address, target_port, out)
        with pytest.raises(TimeoutError):
            listener.accept()
    finally:
        listener.close()

    # A security group opens tcp 8080 from A's subnet only: 8081 and ping stay closed.
    web = group_create(actor=a.actor, tenant=a.tenant, name="web")
    rule_create(actor=a.actor, group=web, protocol="tcp", cidr=net_a.cidr, port_min=8080)
    server = running(
        a,
        a.create(
            "server",
            flavor="c.medium",
            image="busybox",
            kind="container",
            network="lan",
            security_groups=["web"],
        ),
    )
    for listen_port in (8080, 8081):
        a.exec(server, f"nc -ll -p {listen_port} -e echo hello-{listen_port} >/dev/null 2>&1 &")
    time.sleep(0.3)
    rc, out = a.exec(box, f"nc -w 2 {server.ip_address} 8080 </dev/null")
    assert "hello-8080" in out, out
    rc, out = a.exec(box, f"nc -w 2 {server.ip_address} 8081 </dev/null")
    assert "hello-8081" not in out, out
    assert a.exec(box, f"ping -c 1 -W 1 {server.ip_address}")[0] != 0
    assert a.exec(server, f"ping -c 1 -W 2 {box.ip_address}")[0] == 0  # box has no groups: its own net

    # Deleting leaves no veth, namespace, bridge port or bundle; then the networks go, bridges too.
    for member, instance in ((a, vm), (a, box), (a, server), (b, intruder)):
        op = wait_operation(instance_delete(actor=member.actor, instance=instance))
        assert op.state == OperationState.SUCCEEDED, op.error
        instance.refresh_from_db()
        assert container_traces(instance) == []
    # Each network's last instance on the host took its bridge (and its dnsmasq) with it.
    for net in (net_a, net_b):
        assert not Path(f"/sys/class/net/{net.bridge}").exists(), f"{net.bridge} outlived its instances"
        assert not (Path(settings.NUBIS_NETWORK_STATE_DIR) / net.bridge).exists()
    network_delete(actor=a.actor, network=net_a)
    network_delete(actor=b.actor, network=net_b)
    assert Network.objects.for_tenant(a.tenant).get(pk=net_a.pk).deleted_at is not None


@pytest.mark.django_db(transaction=False)
def test_only_this_deployments_bridges_and_ports_count_as_its_own(settings) -> None:
    """Aliases of a deployment whose prefix starts with ours are never taken for orphans of ours."""
    from compute.models import domain_uuid
    from compute.services.ports import alias_owner

    settings.NUBIS_DOMAIN_PREFIX = "nubis-"
    some = uuid.uuid4()
    assert alias_owner(f"nubis:nubis-{some}") == str(some)
    assert alias_owner(f"nubis:nubis-t42-{some}") is None
    assert alias_owner(f"nubis:nubis-{some.hex}") is None
    assert domain_uuid(f"nubis-t42-{some}") is None
    assert domain_uuid(f"nubis-{str(some).upper()}") is None


def test_network_bad_input_names_the_field(host: Host) -> None:
    member = Member(make_tenant("net-c"))
    base = f"/api/v1/tenants/{member.tenant.slug}"
    cases = [
        ({"name": "x", "cidr": "10.1.0.0/33"}, "cidr", "invalid CIDR"),
        ({"name": "x", "cidr": "10.1.0.1/24"}, "cidr", "host bits set; did you mean 10.1.0.0/24?"),
        ({"name": "x", "cidr": "10.0.0.0/8"}, "cidr", "/16 to /29"),
        ({"name": "x", "cidr": "127.0.0.0/24"}, "cidr", "reserved"),
        ({"name": "x", "cidr": "192.168.122.0/24"}, "cidr", "reserved"),
        ({"name": "1x", "cidr": "10.1.0.0/24"}, "name", "invalid name"),
    ]
    for body, field, text in cases:
        response = member.client.post(f"{base}/networks/", body, format="json")
        assert response.status_code == 400, (body, response.content)
        errors = response.json()["errors"]
        assert errors[0]["field"] == field, (body, errors)
        assert text in errors[0]["message"], (body, errors)
    assert (
        member.client.post(
            f"{base}/networks/", {"name": "one", "cidr": "10.253.0.0/24"}, format="json"
        ).status_code
        == 201
    )
    overlap = member.client.post(
        f"{base}/networks/", {"name": "two", "cidr": "10.253.0.128/25"}, format="json"
    )
    assert overlap.status_code == 409
    error = overlap.json()["errors"][0]
    assert (error["field"], error["rule"]) == ("cidr", "overlap")
    assert "overlaps network 'one' (10.253.0.0/24)" in error["message"]
    # Another tenant cannot take an overlapping range either, and is not told whose it is.
    other = Member(make_tenant("net-d"))
    taken = other.client.post(
        f"/api/v1/tenants/{other.tenant.slug}/networks/",
        {"name": "mine", "cidr": "10.253.0.0/16"},
        format="json",
    )
    assert taken.status_code == 409
    assert "net-c" not in taken.content.decode()
    assert "'one'" not in taken.json()["errors"][0]["message"]

    group = member.client.post(f"{base}/security-groups/", {"name": "web"}, format="json").json()
    rules = f"{base}/security-groups/{group['id']}/rules/"
    rule_cases: list[tuple[dict[str, object], str, str]] = [
        ({"protocol": "tcp", "port_min": 80, "cidr": "10.0.0.0/40"}, "cidr", "invalid CIDR"),
        ({"protocol": "tcp", "port_min": 80, "cidr": "0.0.0.1/0"}, "cidr", "host bits set"),
        ({"protocol": "gre", "cidr": "0.0.0.0/0"}, "protocol", "one of tcp, udp, icmp, any"),
        ({"protocol": "tcp", "cidr": "0.0.0.0/0"}, "port_min", "needs port_min"),
        (
            {"protocol": "tcp", "port_min": 90, "port_max": 80, "cidr": "0.0.0.0/0"},
            "port_max",
            "below port_min",
        ),
        ({"protocol": "udp", "port_min": 70000, "cidr": "0.0.0.0/0"}, "port_min", "between 1 and 65535"),
        ({"protocol": "icmp", "port_min": 1, "cidr": "0.0.0.0/0"}, "port_min", "has no ports"),
    ]
    for rule_body, field, text in rule_cases:
        response = member.client.post(rules, rule_body, format="json")
        assert response.status_code == 400, (rule_body, response.content)
        error = response.json()["errors"][0]
        assert error["field"] == field, (rule_body, error)
        assert text in error["message"], (rule_body, error)
    created = member.client.post(
        rules, {"protocol": "tcp", "port_min": 80, "cidr": "0.0.0.0/0"}, format="json"
    )
    assert created.status_code == 201
    assert created.json()["port_max"] == 80
