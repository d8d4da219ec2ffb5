"""Real tests of the network driver (compute.drivers.network): bridges, namespaces, iptables and
dnsmasq on this host.

They need root, and touch only what they create: bridges ``nbrt<run><n>``, namespaces ``nnt<run><n>``,
veths ``vnt<run><n>``, subnets 10.250.x.0/24, and state under /run/nubis-nettest-<run>. Fixtures remove
all of it even when a test fails; a module finalizer checks that nothing with the run id is left.
No traffic leaves the machine: the "outside" of the NAT test is a namespace behind a veth.
"""

from __future__ import annotations

import collections
import json
import os
import random
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

from compute.drivers.network import (
    BRIDGE_PREFIX,
    NetSpec,
    PlumbingError,
    Rule,
    bridges_list,
    dhcp_hosts_set,
    firewall_base_remove,
    network_ensure,
    network_remove,
    port_attach_netns,
    port_counters,
    port_detach_netns,
    port_rules_remove,
    port_rules_set,
    ports_list,
)
from tests.compute.netlab import UDHCPC_SCRIPT, in_ns, pings, sh

RUN = secrets.token_hex(3)
TAG = f"nubis:t{RUN}:"
OWNER = f"t{RUN}"  # the chain owner id of this run's rules
# Third octets of 10.250.x.0/24, indexed by Lab's counter, shuffled so two runs rarely share one.
OCTETS = random.sample(range(10, 250), 240)

PROBE = r"""
import concurrent.futures, json, socket, sys
def probe(target):
    host, port = target.rsplit(":", 1)
    s = socket.socket()
    s.settimeout(float(sys.argv[1]))
    try:
        s.connect((host, int(port)))
        return "open"
    except socket.timeout:
        return "timeout"
    except ConnectionRefusedError:
        return "refused"
    except OSError as exc:
        return f"error {exc.errno}"
    finally:
        s.close()
targets = sys.argv[2:]
with concurrent.futures.ThreadPoolExecutor(len(targets)) as pool:
    print(json.dumps(dict(zip(targets, pool.map(probe, targets)))))
"""

SERVE = r"""
import select, socket, sys
socks = []
for port in sys.argv[1:]:
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", int(port)))
    s.listen(16)
    socks.append(s)
print("ready", flush=True)
while True:
    for s in select.select(socks, [], [])[0]:
        conn, peer = s.accept()
        print(s.getsockname()[1], peer[0], flush=True)
        conn.close()
"""


def tcp_probe(netns: str, targets: list[str], timeout: float = 1.0) -> dict[str, str]:
    """Connect from NETNS to each "ip:port" at once: open, timeout (dropped), refused or error N."""
    out = in_ns(netns, sys.executable, "-I", "-S", "-c", PROBE, str(timeout), *targets).stdout
    result: dict[str, str] = json.loads(out)
    return result


def iptables_lines() -> list[str]:
    return [
        f"{family}/{table}: {line}"
        for family, table in (("iptables", "filter"), ("iptables", "nat"), ("ip6tables", "filter"))
        for line in sh(family, "-w", "-t", table, "-S").stdout.splitlines()
    ]


def dnsmasq_pids(spec: NetSpec) -> list[int]:
    """Live (non-zombie) dnsmasq processes started for SPEC."""
    marker = f"--pid-file={spec.state_dir / 'dnsmasq.pid'}".encode()
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
            state = (entry / "stat").read_text().rpartition(")")[2].split()[0]
        except (OSError, IndexError):
            continue
        if marker in argv and state not in ("Z", "X"):
            pids.append(int(entry.name))
    return pids


def sniffer(ifname: str) -> socket.socket:
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0003))  # ETH_P_ALL
    sock.bind((ifname, 0))
    sock.setblocking(False)
    return sock


def sniffed_ipv4(sock: socket.socket) -> list[tuple[str, str]]:
    """(source, destination) of every IPv4 frame queued on a sniffer socket."""
    found: list[tuple[str, str]] = []
    while True:
        try:
            frame = sock.recv(65535)
        except BlockingIOError:
            return found
        if frame[12:14] == b"\x08\x00":
            found.append((socket.inet_ntoa(frame[26:30]), socket.inet_ntoa(frame[30:34])))


@dataclass(frozen=True)
class Instance:
    netns: str
    host_if: str
    mac: str
    ip: str
    net: NetSpec


class Lab:
    """Makes networks, instances, servers and "outside" links, and removes them all at the end."""

    counter = 0  # shared by all tests of the run, so names and subnets never repeat

    def __init__(self, state_root: Path) -> None:
        self.state_root = state_root
        self.networks: dict[str, NetSpec] = {}
        self.instances: list[Instance] = []
        self.rule_ports: set[str] = set()
        self.outside: list[tuple[str, str]] = []
        self.procs: list[subprocess.Popen[str]] = []

    def _next(self) -> int:
        Lab.counter += 1
        return Lab.counter

    def spec(self, nat: bool = False) -> NetSpec:
        n = self._next()
        octet = OCTETS[n]
        bridge = f"nbrt{RUN}{n:02x}"
        spec = NetSpec(
            bridge=bridge,
            cidr=f"10.250.{octet}.0/24",
            gateway=f"10.250.{octet}.1",
            nat=nat,
            tag=f"{TAG}{bridge}",
            state_dir=self.state_root / bridge,
            owner=OWNER,
        )
        self.networks[bridge] = spec
        return spec

    def network(self, nat: bool = False) -> NetSpec:
        spec = self.spec(nat)
        network_ensure(spec)
        return spec

    def instance(self, net: NetSpec, host: int, gateway: bool = False) -> Instance:
        n = self._next()
        prefix = net.cidr.rsplit(".", 1)[0]
        inst = Instance(
            netns=f"nnt{RUN}{n:02x}",
            host_if=f"vnt{RUN}{n:02x}",
            mac=f"02:4e:{RUN[0:2]}:{RUN[2:4]}:{RUN[4:6]}:{n:02x}",
            ip=f"{prefix}.{host}",
            net=net,
        )
        self.instances.append(inst)
        port_attach_netns(
            inst.netns,
            net.bridge,
            inst.host_if,
            inst.mac,
            f"{inst.ip}/24",
            net.gateway if gateway else None,
            f"{TAG}{inst.host_if}",
        )
        return inst

    def rules(self, inst: Instance, rules: list[Rule]) -> None:
        self.rule_ports.add(inst.host_if)
        port_rules_set(inst.host_if, inst.ip, rules, OWNER)

    def outside_host(self) -> tuple[str, str, str]:
        """A namespace behind a plain veth in the root namespace: (netns, root-side ip, its ip)."""
        n = self._next()
        netns, link = f"nnt{RUN}{n:02x}", f"vnt{RUN}{n:02x}"
        prefix = f"10.250.{OCTETS[n]}"
        self.outside.append((netns, link))
        sh("ip", "netns", "add", netns)
        sh("ip", "link", "add", link, "type", "veth", "peer", "name", "eth0", "netns", netns)
        sh("ip", "addr", "add", f"{prefix}.1/24", "dev", link)
        sh("ip", "link", "set", link, "up")
        sh("ip", "-n", netns, "addr", "add", f"{prefix}.2/24", "dev", "eth0")
        sh("ip", "-n", netns, "link", "set", "eth0", "up")
        sh("ip", "-n", netns, "link", "set", "lo", "up")
        return netns, f"{prefix}.1", f"{prefix}.2"

    def serve(self, netns: str, *ports: int) -> subprocess.Popen[str]:
        """TCP listeners in NETNS that print "port peer-ip" for every connection."""
        proc = subprocess.Popen(
            ["ip", "netns", "exec", netns, sys.executable, "-I", "-S", "-c", SERVE, *map(str, ports)],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        self.procs.append(proc)
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "ready"
        return proc

    def cleanup(self) -> None:
        errors: list[Exception] = []

        def attempt(function: Callable[..., object], *args: object) -> None:
            try:
                function(*args)
            except Exception as exc:  # keep going: everything else must still be removed
                errors.append(exc)

        for proc in self.procs:
            if proc.returncode is None:  # server_peers may have stopped it already
                proc.kill()
                proc.wait()
        for port in sorted(self.rule_ports):
            attempt(port_rules_remove, port, OWNER)
        for inst in self.instances:
            attempt(port_detach_netns, inst.netns, inst.host_if)
        for spec in self.networks.values():
            attempt(network_remove, spec)
        for netns, link in self.outside:
            sh("ip", "link", "del", link, check=False)
            sh("ip", "netns", "del", netns, check=False)
        if errors:
            raise errors[0]


def server_peers(proc: subprocess.Popen[str]) -> list[str]:
    """Stop a SERVE process and return its "port peer" lines."""
    proc.kill()
    out, _ = proc.communicate()
    return [line for line in out.splitlines() if line]


@pytest.fixture(scope="module")
def state_root() -> Iterator[Path]:
    """World-searchable state root (dnsmasq reads its hosts file as nobody); checks for leaks at the end."""
    if os.geteuid() != 0:
        pytest.fail("the network plumbing tests need root")
    had_base = sh("iptables", "-w", "-S", "NUBIS-FWD", check=False).returncode == 0
    root = Path(f"/run/nubis-nettest-{RUN}")
    root.mkdir(mode=0o755)
    root.chmod(0o755)
    yield root
    shutil.rmtree(root, ignore_errors=True)
    if not had_base:
        try:
            firewall_base_remove()
        except PlumbingError as exc:
            if RUN in str(exc):
                raise
    leaks = [line for line in iptables_lines() if RUN in line]
    leaks += [line for line in sh("ip", "-o", "link").stdout.splitlines() if RUN in line]
    leaks += [line for line in sh("ip", "netns", "list").stdout.splitlines() if RUN in line]
    assert not leaks, leaks


@pytest.fixture
def lab(state_root: Path) -> Iterator[Lab]:
    lab = Lab(state_root)
    try:
        yield lab
    finally:
        lab.cleanup()


def udhcpc(inst: Instance, script: Path) -> str:
    """Run busybox's DHCP client on the instance's eth0 and return its "LEASE ..." line."""
    assert Path("/bin/busybox").exists(), "busybox (udhcpc) is needed for the DHCP test"
    # On eth0, in the foreground, quit once leased or after 3 tries of 1 s; the script prints the lease.
    options = ["-i", "eth0", "-f", "-q", "-n", "-t", "3", "-T", "1"]
    out = in_ns(inst.netns, "busybox", "udhcpc", *options, "-s", str(script))
    lines = [line for line in out.stdout.splitlines() if line.startswith("LEASE ")]
    assert lines, out.stdout + out.stderr
    return lines[-1]


@pytest.fixture(scope="module")
def udhcpc_script(state_root: Path) -> Path:
    script = state_root / "udhcpc.sh"
    script.write_text(UDHCPC_SCRIPT)
    script.chmod(0o755)
    return script


def test_neighbours_talk_and_dhcp_serves_reservations(lab: Lab, udhcpc_script: Path) -> None:
    isolated, routed = lab.network(nat=False), lab.network(nat=True)
    a1, a2 = lab.instance(isolated, 11), lab.instance(isolated, 12)
    assert pings([(a1.netns, a2.ip), (a2.netns, a1.ip)]) == [True, True]

    # DHCP clients: their eth0 starts without an address.
    c1, c2 = lab.instance(isolated, 13), lab.instance(routed, 14)
    for inst in (c1, c2):
        sh("ip", "-n", inst.netns, "addr", "flush", "dev", "eth0")
    script = udhcpc_script
    iso_prefix, routed_prefix = isolated.cidr.rsplit(".", 1)[0], routed.cidr.rsplit(".", 1)[0]
    dhcp_hosts_set(isolated, [(c1.mac, f"{iso_prefix}.50", "c1"), (a1.mac, a1.ip, "Web_1 (a1)")])
    dhcp_hosts_set(routed, [(c2.mac.upper(), f"{routed_prefix}.60", "c2")])
    time.sleep(0.2)  # dnsmasq rereads the file when it handles the SIGHUP
    # The gateway as router, with NAT or without (then the host's firewall keeps the traffic in).
    assert udhcpc(c1, script) == f"LEASE ip={iso_prefix}.50 router={isolated.gateway}"
    assert udhcpc(c2, script) == f"LEASE ip={routed_prefix}.60 router={routed.gateway}"
    assert "c1" in (isolated.state_dir / "leases").read_text()
    assert f"{a1.mac},{a1.ip},web-1-a1\n" in (isolated.state_dir / "hosts").read_text()

    # A changed reservation reaches the running dnsmasq through SIGHUP alone.
    pid = dnsmasq_pids(isolated)
    dhcp_hosts_set(isolated, [(c1.mac, f"{iso_prefix}.51", "c1")])
    time.sleep(0.2)
    assert udhcpc(c1, script) == f"LEASE ip={iso_prefix}.51 router={isolated.gateway}"
    assert dnsmasq_pids(isolated) == pid
    assert (isolated.state_dir / "hosts").read_text() == f"{c1.mac},{iso_prefix}.51,c1\n"

    with pytest.raises(ValueError, match="not a free host address"):
        dhcp_hosts_set(isolated, [(c1.mac, isolated.gateway, "c1")])


def test_other_tenant_cannot_reach_network_even_routed(lab: Lab) -> None:
    assert Path("/proc/sys/net/ipv4/ip_forward").read_text().strip() == "1", "the point is forwarding on"
    net_a, net_b = lab.network(nat=True), lab.network(nat=True)
    a1, a2 = lab.instance(net_a, 11, gateway=True), lab.instance(net_a, 12, gateway=True)
    b1 = lab.instance(net_b, 11, gateway=True)
    _, _, outside_ip = lab.outside_host()
    server = lab.serve(a1.netns, 22)

    sniffers = {name: sniffer(name) for name in (net_a.bridge, a1.host_if, a2.host_if, b1.host_if)}
    try:
        results = pings(
            [
                (b1.netns, a1.ip),
                (b1.netns, a2.ip),
                (b1.netns, net_a.gateway),
                (a1.netns, b1.ip),  # both directions: the older network's rules must not decide alone
                (a1.netns, net_b.gateway),
                (b1.netns, outside_ip),  # control: B's traffic is routed (NAT) when it may leave
                (a1.netns, a2.ip),  # control: A's own neighbours still talk
            ]
        )
        probes = tcp_probe(b1.netns, [f"{a1.ip}:22", f"{net_a.gateway}:22"])
        sh("ping", "-n", "-c1", "-W1", a1.ip)  # control: the sniffer on A's bridge sees routed frames
        time.sleep(0.1)
        frames = {name: sniffed_ipv4(sock) for name, sock in sniffers.items()}
    finally:
        for sock in sniffers.values():
            sock.close()
    assert results == [False, False, False, False, False, True, True]
    assert probes == {f"{a1.ip}:22": "timeout", f"{net_a.gateway}:22": "timeout"}
    assert server_peers(server) == []
    assert (net_a.gateway, a1.ip) in frames[net_a.bridge]
    for name, seen in frames.items():
        other = a1.ip if name == b1.host_if else b1.ip
        assert not [f for f in seen if f[0] == other], f"the other tenant's packets reached {name}: {seen}"


def host_addresses() -> list[str]:
    """The root namespace's IPv4 addresses outside loopback and this machine's 10.250/16 tests."""
    found = []
    for link in json.loads(sh("ip", "-j", "-4", "addr").stdout):
        for addr in link.get("addr_info", []):
            ip = addr["local"]
            if not ip.startswith(("127.", "10.250.")):
                found.append(ip)
    return found


def test_instances_cannot_reach_host_services(lab: Lab) -> None:
    net_a, net_b = lab.network(nat=True), lab.network(nat=False)
    a1 = lab.instance(net_a, 11, gateway=True)
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("0.0.0.0", 0))  # noqa: S104 - the point: a service on every host address
    listener.listen(16)
    listener.setblocking(False)
    port = listener.getsockname()[1]
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):  # control: it does listen
            pass
        time.sleep(0.05)
        listener.accept()[0].close()

        targets = [net_a.gateway, net_b.gateway, *host_addresses()]
        assert len(targets) >= 3, targets  # the host's own eth0 / virbr0 addresses are among them
        probes = tcp_probe(a1.netns, [f"{ip}:{port}" for ip in targets])
        assert probes == {f"{ip}:{port}": "timeout" for ip in targets}
        assert pings([(a1.netns, ip) for ip in targets]) == [False] * len(targets)
        with pytest.raises(BlockingIOError):
            listener.accept()
    finally:
        listener.close()


def test_security_group_allows_only_its_rules(lab: Lab) -> None:
    net = lab.network()
    server, client = lab.instance(net, 11), lab.instance(net, 12)
    listeners = lab.serve(server.netns, 8080, 8081)
    lab.rules(
        server,
        [Rule("tcp", 8080, 8080, net.cidr), Rule("tcp", 8081, None, "10.250.254.0/24")],
    )
    assert tcp_probe(client.netns, [f"{server.ip}:8080", f"{server.ip}:8081"]) == {
        f"{server.ip}:8080": "open",
        f"{server.ip}:8081": "timeout",
    }
    # No icmp rule: the server cannot be pinged, but what it opens itself is answered (stateful).
    assert pings([(client.netns, server.ip), (server.netns, client.ip)]) == [False, True]

    lab.rules(server, [Rule("tcp", 8080, 8080, net.cidr), Rule("icmp", None, None, net.cidr)])
    assert pings([(client.netns, server.ip)]) == [True]
    lab.rules(server, [Rule("tcp", 8000, 8100, "0.0.0.0/0")])
    assert tcp_probe(client.netns, [f"{server.ip}:8081"]) == {f"{server.ip}:8081": "open"}
    assert pings([(client.netns, server.ip)]) == [False]
    nsg = f"NSG-{OWNER}-{server.host_if}"
    assert sh("iptables", "-w", "-S", nsg).stdout.splitlines()[1:] == [
        f"-A {nsg} -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
        f"-A {nsg} -p tcp -m tcp --dport 8000:8100 -j ACCEPT",
        f"-A {nsg} -j DROP",
    ]
    assert [line.split()[0] for line in server_peers(listeners)] == ["8080", "8081"]

    with pytest.raises(ValueError, match="ports only apply"):
        port_rules_set(server.host_if, server.ip, [Rule("icmp", 1, 2, net.cidr)], OWNER)


def test_spoofed_source_address_is_dropped(lab: Lab) -> None:
    net = lab.network()
    target, spoofer = lab.instance(net, 11), lab.instance(net, 12)
    lab.rules(spoofer, [Rule("any", None, None, "0.0.0.0/0")])
    assert pings([(spoofer.netns, target.ip)]) == [True]

    fake = f"{net.cidr.rsplit('.', 1)[0]}.99/24"
    sh("ip", "-n", spoofer.netns, "addr", "flush", "dev", "eth0")
    sh("ip", "-n", spoofer.netns, "addr", "add", fake, "dev", "eth0")
    assert pings([(spoofer.netns, target.ip)]) == [False]

    # port_attach_netns puts the real address back, and with it the traffic.
    port_attach_netns(spoofer.netns, net.bridge, spoofer.host_if, spoofer.mac, f"{spoofer.ip}/24", None, TAG)
    assert pings([(spoofer.netns, target.ip)]) == [True]


def test_nat_egress_only_for_nat_networks(lab: Lab) -> None:
    net = lab.network(nat=False)
    inst = lab.instance(net, 11, gateway=True)
    outside_ns, outside_gw, outside_ip = lab.outside_host()
    # The outside knows the way back, so only the firewall stands between the two.
    sh("ip", "-n", outside_ns, "route", "add", net.cidr, "via", outside_gw)
    server = lab.serve(outside_ns, 9000)
    inst_server = lab.serve(inst.netns, 9001)
    chain = f"NBR-{OWNER}-{net.bridge}"
    masquerade = f"-A NUBIS-POST -s {net.cidr} ! -d {net.cidr} -m comment --comment {chain} -j MASQUERADE"

    def post() -> list[str]:
        return sh("iptables", "-w", "-t", "nat", "-S", "NUBIS-POST").stdout.splitlines()

    assert not [line for line in post() if net.cidr in line]
    assert tcp_probe(inst.netns, [f"{outside_ip}:9000"]) == {f"{outside_ip}:9000": "timeout"}
    assert pings([(inst.netns, outside_ip)]) == [False]
    # The gateway is offered as router all the same: the firewall, not the guest's routes, keeps it in.
    dhcp = dnsmasq_pids(net)
    assert f"option:router,{net.gateway}" in Path(f"/proc/{dhcp[0]}/cmdline").read_text()

    network_ensure(replace(net, nat=True))
    assert [line for line in post() if net.cidr in line] == [masquerade]
    assert tcp_probe(inst.netns, [f"{outside_ip}:9000"]) == {f"{outside_ip}:9000": "open"}
    assert pings([(inst.netns, outside_ip)]) == [True]
    # Inbound connections from outside stay closed even with NAT.
    assert tcp_probe(outside_ns, [f"{inst.ip}:9001"]) == {f"{inst.ip}:9001": "timeout"}
    assert dnsmasq_pids(net) == dhcp  # a NAT toggle changes nothing of DHCP

    network_ensure(net)  # NAT off again
    assert not [line for line in post() if net.cidr in line]
    assert tcp_probe(inst.netns, [f"{outside_ip}:9000"]) == {f"{outside_ip}:9000": "timeout"}
    assert server_peers(server) == [f"9000 {outside_gw}"]  # one connection, masqueraded
    assert server_peers(inst_server) == []


def test_ipv6_is_dropped_on_tenant_bridges(lab: Lab) -> None:
    net = lab.network()
    a1, a2 = lab.instance(net, 11), lab.instance(net, 12)
    assert Path(f"/proc/sys/net/ipv6/conf/{net.bridge}/disable_ipv6").read_text().strip() == "1"
    deadline = time.monotonic() + 5
    while True:  # wait for a2's link-local address to finish duplicate address detection
        addrs = json.loads(sh("ip", "-n", a2.netns, "-j", "-6", "addr", "show", "dev", "eth0").stdout)
        infos = [a for a in addrs[0]["addr_info"] if a.get("scope") == "link"]
        if (infos and not infos[0].get("tentative")) or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    link_local = infos[0]["local"]
    assert pings([(a1.netns, a2.ip)]) == [True]
    assert pings([(a1.netns, f"{link_local}%eth0")]) == [False]


def ifindex(name: str) -> int:
    return int(Path(f"/sys/class/net/{name}/ifindex").read_text())


def test_idempotent_and_removal_leaves_nothing(lab: Lab, udhcpc_script: Path) -> None:
    net = lab.network(nat=True)
    inst = lab.instance(net, 11, gateway=True)
    rules = [Rule("tcp", 22, None, "0.0.0.0/0"), Rule("udp", 5000, 5010, net.cidr)]
    lab.rules(inst, rules)
    ours = (net.bridge, inst.host_if, net.cidr)

    def snapshot() -> list[str]:
        """Our rules and the shared base rules (but not those of networks a concurrent run made)."""
        return sorted(
            line
            for line in iptables_lines()
            if any(name in line for name in ours) or ("NUBIS" in line and not re.search(r"nbrt|vnt", line))
        )

    before, pid, veth = snapshot(), dnsmasq_pids(net), ifindex(inst.host_if)
    network_ensure(net)
    port_attach_netns(inst.netns, net.bridge, inst.host_if, inst.mac, f"{inst.ip}/24", net.gateway, "t")
    port_attach_netns(inst.netns, net.bridge, inst.host_if, inst.mac, f"{inst.ip}/24", net.gateway, f"{TAG}p")
    port_rules_set(inst.host_if, inst.ip, rules, OWNER)
    after = snapshot()
    assert after == before
    duplicates = [line for line, count in collections.Counter(after).items() if count > 1 and "-A " in line]
    assert not duplicates
    assert len(pid) == 1
    assert dnsmasq_pids(net) == pid
    assert bridges_list(TAG) == {net.bridge: net.tag}
    assert ports_list(TAG) == {inst.host_if: f"{TAG}p"}
    assert ifindex(inst.host_if) == veth  # the same veth, not a new one
    rx, tx = port_counters(inst.host_if)
    sh("ping", "-n", "-c1", "-W1", inst.ip)  # the host may open connections; the replies come back
    rx2, tx2 = port_counters(inst.host_if)
    assert rx2 > rx
    assert tx2 > tx

    # A bridge deleted behind our back: re-created, the port re-attached, DHCP served again.
    dhcp_hosts_set(net, [(inst.mac, inst.ip, "inst")])
    sh("ip", "link", "del", net.bridge)
    network_ensure(net)
    port_attach_netns(inst.netns, net.bridge, inst.host_if, inst.mac, f"{inst.ip}/24", net.gateway, f"{TAG}p")
    assert json.loads(sh("ip", "-j", "link", "show", inst.host_if).stdout)[0]["master"] == net.bridge
    assert udhcpc(inst, udhcpc_script) == f"LEASE ip={inst.ip} router={net.gateway}"
    assert snapshot() == before
    pid = dnsmasq_pids(net)

    # Crash recovery: a dead dnsmasq, a lost jump and a vanished veth are all repaired.
    os.kill(pid[0], signal.SIGKILL)
    sh("iptables", "-w", "-D", "NUBIS-NETS", "-i", net.bridge, "-j", f"NBR-{OWNER}-{net.bridge}")
    sh("ip", "link", "del", inst.host_if)
    network_ensure(net)
    port_attach_netns(inst.netns, net.bridge, inst.host_if, inst.mac, f"{inst.ip}/24", net.gateway, f"{TAG}p")
    assert snapshot() == before
    assert len(dnsmasq_pids(net)) == 1
    assert dnsmasq_pids(net) != pid
    assert (
        sh("ip", "-n", inst.netns, "-br", "addr", "show", "dev", "eth0").stdout.split()[2] == f"{inst.ip}/24"
    )

    for _ in range(2):
        port_rules_remove(inst.host_if, OWNER)
        port_detach_netns(inst.netns, inst.host_if)
        network_remove(net)
    names = (net.bridge, inst.host_if, net.cidr)
    assert not [line for line in iptables_lines() if any(name in line for name in names)]
    assert sh("ip", "link", "show", net.bridge, check=False).returncode != 0
    assert sh("ip", "link", "show", inst.host_if, check=False).returncode != 0
    assert not Path(f"/var/run/netns/{inst.netns}").exists()
    assert not net.state_dir.exists()
    assert dnsmasq_pids(net) == []
    assert bridges_list(TAG) == {}


def test_errors_carry_the_command_stderr(lab: Lab, tmp_path: Path) -> None:
    missing = f"nbrt{RUN}zz"
    with pytest.raises(PlumbingError, match="does not exist") as caught:
        port_attach_netns(
            f"nnt{RUN}zz", missing, f"vnt{RUN}zz", "02:00:00:00:00:01", "10.250.1.2/24", None, "t"
        )
    assert missing in caught.value.stderr
    assert not Path(f"/var/run/netns/nnt{RUN}zz").exists()

    with pytest.raises(ValueError, match=BRIDGE_PREFIX):
        network_ensure(replace(lab.spec(), bridge=f"xbr{RUN}"))
    # pytest's tmp_path sits below a 0700 directory, which dnsmasq (as nobody) could not read.
    spec = replace(lab.spec(), state_dir=tmp_path / "state")
    lab.networks[spec.bridge] = spec
    with pytest.raises(PlumbingError, match="not searchable"):
        network_ensure(spec)
    with pytest.raises(PlumbingError, match="no counters"):
        port_counters(f"vnt{RUN}zz")
