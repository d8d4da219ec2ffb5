"""Real tests of tenant networks across hosts (compute.drivers.network.overlay): two hosts made of
network namespaces joined by an underlay link, each running the network driver in its own stack.

They touch only what they create: namespaces ``novh<run><a|b>`` (the hosts) and ``novi<run><n>``
(instances), the underlay 10.249.x.0/24, tenant subnets 10.248.x.0/24 and state under
/run/nubis-ovltest-<run>. No traffic leaves those namespaces.
"""

from __future__ import annotations

import json
import random
import secrets
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from compute.drivers.network import GATEWAY_OUI, NetSpec, Overlay, overlay_link
from compute.drivers.network.spec import parse_spec
from tests.compute.netlab import UDHCPC_SCRIPT, in_ns, pings, sh

ROOT = Path(__file__).resolve().parents[2]
RUN = secrets.token_hex(2)
OWNER = f"o{RUN}"
TAG = f"nubis:o{RUN}:"
STATE = Path(f"/run/nubis-ovltest-{RUN}")

# The driver, run inside a host's namespace: argv[1] is a JSON list of [function, kwargs] calls.
DRIVE = r"""
import json, sys
from pathlib import Path
from compute.drivers import network as n
def spec(d):
    overlay = d.pop("overlay")
    overlay = n.Overlay(**overlay) if overlay else None
    return n.NetSpec(state_dir=Path(d.pop("state_dir")), overlay=overlay, **d)
out = []
for fn, kw in json.loads(sys.argv[1]):
    if "spec" in kw:
        kw["spec"] = spec(kw["spec"])
    if "overlay" in kw and kw["overlay"]:
        kw["overlay"] = n.Overlay(**kw["overlay"])
    result = getattr(n, fn)(**kw)
    out.append(result if isinstance(result, (list, dict, str, int, type(None))) else str(result))
print(json.dumps(out))
"""


@dataclass
class Host:
    name: str
    address: str
    state: Path

    def drive(self, *calls: tuple[str, dict[str, object]]) -> list[object]:
        proc = in_ns(self.name, sys.executable, "-c", DRIVE, json.dumps(calls), check=False)
        assert proc.returncode == 0, proc.stderr[-3000:]
        result: list[object] = json.loads(proc.stdout)
        return result


@dataclass
class Net:
    bridge: str
    cidr: str
    gateway: str
    mac: str
    vni: int
    nat: bool = False

    def spec(self, host: Host, peers: list[Host]) -> dict[str, object]:
        return {
            "bridge": self.bridge,
            "cidr": self.cidr,
            "gateway": self.gateway,
            "nat": self.nat,
            "tag": f"{TAG}{self.bridge}",
            "state_dir": str(host.state / self.bridge),
            "owner": OWNER,
            "mac": self.mac,
            "overlay": {"vni": self.vni, "local": host.address, "peers": [p.address for p in peers]},
        }


@dataclass
class Cluster:
    hosts: list[Host] = field(default_factory=list)
    instances: list[str] = field(default_factory=list)
    counter: int = 0

    def network(self, third: int, nat: bool = False) -> Net:
        self.counter += 1
        return Net(
            bridge=f"nbro{RUN}{self.counter}",
            cidr=f"10.248.{third}.0/24",
            gateway=f"10.248.{third}.1",
            mac=f"{GATEWAY_OUI}:{random.randrange(256):02x}:{RUN[:2]}:{self.counter:02x}",
            vni=random.randrange(1000, 1 << 24),
            nat=nat,
        )

    def ensure(self, net: Net, host: Host, peers: list[Host]) -> None:
        host.drive(("network_ensure", {"spec": net.spec(host, peers)}))

    def instance(self, net: Net, host: Host, last_octet: int) -> tuple[str, str, str]:
        """An instance namespace on ``host``'s bridge of ``net``: (netns, address, mac)."""
        self.counter += 1
        netns = f"novi{RUN}{self.counter}"
        third = net.cidr.split(".")[2]
        ip = f"10.248.{third}.{last_octet}"
        mac = f"52:54:01:{int(RUN[:2], 16):02x}:{self.counter:02x}:{last_octet:02x}"
        self.instances.append(netns)
        # Made here: one made by `ip netns add` inside `ip netns exec` (its own mount namespace)
        # would not be seen from here; an agent runs in its host's mount namespace throughout.
        sh("ip", "netns", "add", netns)
        host.drive(
            (
                "port_attach_netns",
                {
                    "netns": netns,
                    "bridge": net.bridge,
                    "host_if": f"vov{RUN}{self.counter}",
                    "mac": mac,
                    "address": f"{ip}/24",
                    "gateway": net.gateway if net.nat else None,
                    "tag": f"{TAG}{netns}",
                },
            )
        )
        return netns, ip, mac


@pytest.fixture
def cluster() -> Iterator[Cluster]:
    """Two hosts, each a network namespace with its own stack, on an underlay link between them."""
    third = random.randrange(10, 250)
    made = Cluster()
    names = [f"novh{RUN}a", f"novh{RUN}b"]
    try:
        for index, name in enumerate(names):
            sh("ip", "netns", "add", name)
            in_ns(name, "ip", "link", "set", "lo", "up")
            made.hosts.append(Host(name, f"10.249.{third}.{index + 1}", STATE / name))
        sh("ip", "link", "add", f"uov{RUN}a", "netns", names[0], "type", "veth", "peer", "name",
           f"uov{RUN}b", "netns", names[1])  # fmt: skip
        for host, link in zip(made.hosts, (f"uov{RUN}a", f"uov{RUN}b"), strict=True):
            in_ns(host.name, "ip", "addr", "add", f"{host.address}/24", "dev", link)
            in_ns(host.name, "ip", "link", "set", link, "up")
        yield made
    finally:
        for netns in made.instances:
            sh("ip", "netns", "del", netns, check=False)
        for host in made.hosts:
            # dnsmasq runs inside the host's namespace: it goes when its pid file says so.
            for pid_file in host.state.glob("*/dnsmasq.pid"):
                sh("kill", pid_file.read_text().strip(), check=False)
            sh("ip", "netns", "del", host.name, check=False)
        shutil.rmtree(STATE, ignore_errors=True)


def ebtables(host: Host, chain: str) -> list[str]:
    return in_ns(host.name, "ebtables", "-L", chain).stdout.splitlines()


def udhcpc_lease(netns: str, script: Path) -> str | None:
    """The "LEASE ..." line busybox's DHCP client printed on eth0, or None when no server answered."""
    options = ["-i", "eth0", "-f", "-q", "-n", "-t", "3", "-T", "1"]
    out = in_ns(netns, "busybox", "udhcpc", *options, "-s", str(script), check=False)
    lines = [line for line in out.stdout.splitlines() if line.startswith("LEASE ")]
    return lines[-1] if lines else None


def test_one_segment_across_hosts_with_a_distributed_gateway(cluster: Cluster, tmp_path: Path) -> None:
    a, b = cluster.hosts
    net = cluster.network(random.randrange(10, 250), nat=True)
    cluster.ensure(net, a, [b])
    cluster.ensure(net, b, [a])
    on_a, ip_a, _mac_a = cluster.instance(net, a, 10)
    on_b, ip_b, _mac_b = cluster.instance(net, b, 11)

    # One L2 segment: the instances reach each other through the tunnel, both ways.
    assert pings([(on_a, ip_b), (on_b, ip_a)]) == [True, True]
    link = overlay_link(net.bridge)
    for host, peer in ((a, b), (b, a)):
        assert host.drive(("flood_peers", {"bridge": net.bridge})) == [[peer.address]]
        details = json.loads(in_ns(host.name, "ip", "-j", "-d", "link", "show", link).stdout)[0]
        assert details["linkinfo"]["info_data"]["id"] == net.vni
        assert details["master"] == net.bridge
        # The gateway has the same MAC on every host: an instance that moves keeps its ARP cache.
        bridge = json.loads(in_ns(host.name, "ip", "-j", "link", "show", net.bridge).stdout)[0]
        assert bridge["address"] == net.mac

    # The gateway answers locally: the instance learnt the gateway's MAC through its own host.
    in_ns(on_b, "ping", "-c1", "-W1", net.gateway, check=False)
    neighbours = in_ns(on_b, "ip", "-j", "neigh", "show", net.gateway).stdout
    assert net.mac in neighbours

    # DHCP never crosses the tunnel: host a's dnsmasq holds a reservation for a third instance that
    # sits on host b, whose own dnsmasq does not: it gets no lease (a's answer is dropped).
    script = tmp_path / "udhcpc.sh"
    script.write_text(UDHCPC_SCRIPT)
    script.chmod(0o755)
    late, _ip, late_mac = cluster.instance(net, b, 12)
    in_ns(late, "ip", "addr", "flush", "dev", "eth0")
    third = net.cidr.split(".")[2]
    spec_a = net.spec(a, [b])
    a.drive(("dhcp_hosts_set", {"spec": spec_a, "hosts": [(late_mac, f"10.248.{third}.99", "late")]}))
    assert udhcpc_lease(late, script) is None
    # ... and once its own host holds the reservation, it gets it from there.
    spec_b = net.spec(b, [a])
    b.drive(("dhcp_hosts_set", {"spec": spec_b, "hosts": [(late_mac, f"10.248.{third}.12", "late")]}))
    lease = udhcpc_lease(late, script)
    assert lease is not None
    assert f"ip=10.248.{third}.12" in lease

    # Tenants never reach the hosts' own network, NAT egress or not.
    assert pings([(on_a, b.address), (on_b, a.address)]) == [False, False]
    rules = in_ns(a.name, "iptables", "-S", f"NBR-{OWNER}-{net.bridge}").stdout
    underlay = ".".join(a.address.split(".")[:3]) + ".0/24"
    assert f"-d {underlay} -i {net.bridge} -j DROP" in rules
    assert any("0a:6e:62:00:00:00/ff:ff:ff:00:00:00" in line for line in ebtables(a, "NUBIS-OVL"))
    assert "-j NUBIS-OVL" in ebtables(a, "FORWARD")[3:][0]


def test_networks_stay_apart_and_peers_follow_the_spec(cluster: Cluster) -> None:
    a, b = cluster.hosts
    blue, red = cluster.network(random.randrange(10, 125)), cluster.network(random.randrange(125, 250))
    for net in (blue, red):
        cluster.ensure(net, a, [b])
        cluster.ensure(net, b, [a])
    blue_a, blue_ip_a, _ = cluster.instance(blue, a, 10)
    blue_b, blue_ip_b, _ = cluster.instance(blue, b, 11)
    red_b, red_ip_b, _ = cluster.instance(red, b, 12)
    assert pings([(blue_a, blue_ip_b), (red_b, blue_ip_a), (blue_a, red_ip_b)]) == [True, False, False]

    # Host b leaves blue's tunnel peers of a: the spec is what the tunnel floods to.
    cluster.ensure(blue, a, [])
    assert a.drive(("flood_peers", {"bridge": blue.bridge})) == [[]]
    cluster.ensure(blue, a, [b])
    assert a.drive(("flood_peers", {"bridge": blue.bridge})) == [[b.address]]

    # Removing the network on a host takes its tunnel with it.
    spec = blue.spec(a, [b])
    a.drive(("network_remove", {"spec": spec}))
    links = in_ns(a.name, "ip", "-j", "link", "show").stdout
    assert overlay_link(blue.bridge) not in links
    assert blue.bridge not in links
    assert pings([(blue_b, blue_ip_a)]) == [False]


def test_underlay_address_must_be_the_hosts_own(cluster: Cluster) -> None:
    a, b = cluster.hosts
    net = cluster.network(random.randrange(10, 250))
    spec = net.spec(a, [b])
    spec["overlay"] = {"vni": net.vni, "local": "10.9.9.9", "peers": [b.address]}
    proc = subprocess.run(
        ["ip", "netns", "exec", a.name, sys.executable, "-c", DRIVE,
         json.dumps([("network_ensure", {"spec": spec})])],
        capture_output=True, text=True, cwd=ROOT, check=False, timeout=60,
    )  # fmt: skip
    assert proc.returncode != 0
    assert "no link of this host has the underlay address 10.9.9.9" in proc.stderr


def test_spec_checks_the_tunnel() -> None:
    def spec(overlay: Overlay) -> NetSpec:
        return NetSpec(
            "nbrx1", "10.248.1.0/24", "10.248.1.1", False, "t", Path("/run/x/y"), "o", overlay=overlay
        )

    for bad, why in (
        (Overlay(0, "10.0.0.1"), "VXLAN id 0"),
        (Overlay(1 << 24, "10.0.0.1"), "VXLAN id"),
        (Overlay(5, "10.0.0.1", ("nope",)), "nope"),
    ):
        with pytest.raises(ValueError, match=why):
            parse_spec(spec(bad))
    parse_spec(spec(Overlay(5, "10.0.0.1", ("10.0.0.2",))))
