"""Tenant networks on a host whose netfilter someone else set: bridge netfilter off (item 11), and
Docker's FORWARD policy DROP with its chains ahead of ours (issue 13, item 8).

Each test builds a whole host in a network namespace of its own (the "lab"): its own iptables, its
own ``net.bridge.*`` and ``ip_forward`` sysctls (per namespace on this kernel), bridges and dnsmasq,
with instance namespaces and an "outside" namespace behind veths. The plumbing runs inside it
through ``nsenter --net``, so nothing here changes the machine's own netfilter, which other test runs
share. No traffic leaves the lab; deleting its namespace takes its rules and links with it.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path

import pytest

from compute.drivers.network import NetSpec, Rule
from tests.compute.netlab import UDHCPC_SCRIPT, pings, sh
from tests.conftest import ROOT

RUN = secrets.token_hex(3)
OWNER = f"l{RUN}"

CALL = r"""
import json, sys
from pathlib import Path
from compute.drivers import network as plumbing
name, args = sys.argv[1], json.loads(sys.argv[2])
for i, arg in enumerate(args):
    if isinstance(arg, dict) and "state_dir" in arg:
        args[i] = plumbing.NetSpec(**{**arg, "state_dir": Path(arg["state_dir"])})
    elif isinstance(arg, list) and arg and isinstance(arg[0], dict):
        args[i] = [plumbing.Rule(**rule) for rule in arg]
try:
    getattr(plumbing, name)(*args)
except plumbing.PlumbingError as exc:
    print(json.dumps({"error": str(exc)}))
else:
    print(json.dumps({"ok": True}))
"""

PROBE = r"""
import json, socket, sys
out = {}
for target in sys.argv[1:]:
    host, port = target.rsplit(":", 1)
    s = socket.socket()
    s.settimeout(1.0)
    try:
        s.connect((host, int(port)))
        out[target] = "open"
    except socket.timeout:
        out[target] = "timeout"
    except OSError as exc:
        out[target] = f"error {exc.errno}"
    finally:
        s.close()
print(json.dumps(out))
"""

SERVE = r"""
import select, socket, sys
socks = []
for port in sys.argv[1:]:
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", int(port)))
    s.listen(8)
    socks.append(s)
print("ready", flush=True)
while True:
    for s in select.select(socks, [], [])[0]:
        s.accept()[0].close()
"""


class Lab:
    """A host in a namespace: run commands and plumbing calls in it; remove it all at the end."""

    def __init__(self, root: Path) -> None:
        self.netns = f"nlab{RUN}"
        self.root = root
        self.others: list[str] = []  # instance and outside namespaces
        self.specs: list[NetSpec] = []
        self.procs: list[subprocess.Popen[str]] = []
        sh("ip", "netns", "add", self.netns)
        self.sysctl("net/ipv4/ip_forward", "1")  # a new namespace starts with forwarding off
        self.run("ip", "link", "set", "lo", "up")

    def run(self, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """ARGV with the lab's network (and the machine's file system, so /var/run/netns is shared)."""
        return sh("nsenter", f"--net=/var/run/netns/{self.netns}", *argv, check=check)

    def sysctl(self, key: str, value: str | None = None) -> str:
        if value is not None:
            self.run("sh", "-c", f"echo {value} > /proc/sys/{key}")
        return self.run("cat", f"/proc/sys/{key}").stdout.strip()

    def call(self, function: str, *args: object, prefix: tuple[str, ...] = ()) -> dict[str, object]:
        """compute.drivers.network.FUNCTION(*ARGS) run inside the lab; {"ok"} or {"error": message}."""
        plain = [asdict(a) if isinstance(a, NetSpec) else a for a in args]
        plain = [
            [asdict(r) for r in a] if a and isinstance(a, list) and isinstance(a[0], Rule) else a
            for a in plain
        ]
        code = f"import sys; sys.path.insert(0, {str(ROOT)!r})\n{CALL}"
        argv = [*prefix, sys.executable, "-I", "-S", "-c", code]
        out = self.run(*argv, function, json.dumps(plain, default=str)).stdout
        result: dict[str, object] = json.loads(out.strip().splitlines()[-1])
        return result

    def ok(self, function: str, *args: object) -> None:
        result = self.call(function, *args)
        assert result == {"ok": True}, result

    def spec(self, n: int, nat: bool) -> NetSpec:
        spec = NetSpec(
            bridge=f"nbrl{RUN}{n}",
            cidr=f"10.{200 + n}.77.0/24",
            gateway=f"10.{200 + n}.77.1",
            nat=nat,
            tag=f"nubis:lab{RUN}:{n}",
            state_dir=self.root / f"nbrl{RUN}{n}",
            owner=OWNER,
        )
        self.specs.append(spec)
        return spec

    def instance(self, spec: NetSpec, n: int, host: int, rules: list[Rule]) -> tuple[str, str, str, str]:
        """An instance namespace on SPEC's bridge with its rules: (netns, port, mac, ip)."""
        netns, port, mac = f"nli{RUN}{n}", f"vli{RUN}{n}", f"02:4c:{RUN[0:2]}:{RUN[2:4]}:{RUN[4:6]}:{n:02x}"
        ip = f"{spec.cidr.rsplit('.', 1)[0]}.{host}"
        self.others.append(netns)
        tag = f"{spec.tag}:{n}"
        self.ok("port_attach_netns", netns, spec.bridge, port, mac, f"{ip}/24", spec.gateway, tag)
        self.ok("port_rules_set", port, ip, rules, OWNER)
        return netns, port, mac, ip

    def outside(self) -> tuple[str, str]:
        """A namespace behind a plain veth of the lab (the world beyond NAT): (netns, its ip)."""
        netns, link = f"nlo{RUN}", f"vlo{RUN}"
        self.others.append(netns)
        sh("ip", "netns", "add", netns)
        self.run("ip", "link", "add", link, "type", "veth", "peer", "name", "eth0", "netns", netns)
        self.run("ip", "addr", "add", "10.250.99.1/24", "dev", link)
        self.run("ip", "link", "set", link, "up")
        for argv in (["addr", "add", "10.250.99.2/24", "dev", "eth0"], ["link", "set", "eth0", "up"]):
            sh("ip", "-n", netns, *argv)
        return netns, "10.250.99.2"

    def serve(self, netns: str, *ports: int) -> None:
        proc = subprocess.Popen(
            ["ip", "netns", "exec", netns, sys.executable, "-I", "-S", "-c", SERVE, *map(str, ports)],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        self.procs.append(proc)
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "ready"

    def cleanup(self) -> None:
        for proc in self.procs:
            proc.kill()
            proc.wait()
        for spec in self.specs:  # stops its dnsmasq, which lives in the lab
            self.call("network_remove", spec)
        for netns in [*self.others, self.netns]:
            sh("ip", "netns", "del", netns, check=False)


@pytest.fixture
def lab() -> Iterator[Lab]:
    if os.geteuid() != 0:
        pytest.fail("the lab needs root")
    root = Path(f"/run/nubis-netlab-{RUN}")
    root.mkdir(mode=0o755, exist_ok=True)
    root.chmod(0o755)
    lab = Lab(root)
    try:
        yield lab
    finally:
        lab.cleanup()
        shutil.rmtree(root, ignore_errors=True)
    names = sh("ip", "netns", "list").stdout
    assert RUN not in names, names


def tcp_probe(netns: str, *targets: str) -> dict[str, str]:
    out = sh("ip", "netns", "exec", netns, sys.executable, "-I", "-S", "-c", PROBE, *targets).stdout
    result: dict[str, str] = json.loads(out)
    return result


# --- item 11: bridge netfilter ----------------------------------------------------------------------


BRNF = "net/bridge/bridge-nf-call-iptables"


def test_bridge_netfilter_turned_off_is_turned_on_again(lab: Lab) -> None:
    lab.sysctl(BRNF, "0")
    lab.sysctl("net/bridge/bridge-nf-call-ip6tables", "0")
    lab.ok("firewall_base_ensure")  # what the agent does at start and on every reconciler pass
    assert lab.sysctl(BRNF) == "1"
    assert lab.sysctl("net/bridge/bridge-nf-call-ip6tables") == "1"

    # With it on, a security group really filters bridged traffic between two neighbours.
    net = lab.spec(1, nat=False)
    lab.ok("network_ensure", net)
    server = lab.instance(net, 1, 11, [Rule("tcp", 8080, None, net.cidr)])
    client = lab.instance(net, 2, 12, [Rule("any", None, None, net.cidr)])
    lab.serve(server[0], 8080, 8081)
    assert tcp_probe(client[0], f"{server[3]}:8080", f"{server[3]}:8081") == {
        f"{server[3]}:8080": "open",
        f"{server[3]}:8081": "timeout",
    }
    # Turned off behind our back, the same rules would be skipped (fail open): the next port
    # change (or reconciler pass) turns it on again before writing anything.
    lab.sysctl(BRNF, "0")
    assert tcp_probe(client[0], f"{server[3]}:8081") == {f"{server[3]}:8081": "open"}, "the point"
    lab.ok("port_rules_set", server[1], server[3], [Rule("tcp", 8080, None, net.cidr)], OWNER)
    assert lab.sysctl(BRNF) == "1"
    assert tcp_probe(client[0], f"{server[3]}:8081") == {f"{server[3]}:8081": "timeout"}


def test_tenant_networks_are_refused_when_bridge_netfilter_cannot_be_turned_on(lab: Lab) -> None:
    lab.sysctl(BRNF, "0")
    # /proc/sys/net/bridge read-only for the call (a container without the right, a locked-down host).
    mount = "mount -o bind,ro /proc/sys/net/bridge /proc/sys/net/bridge"
    readonly = ("unshare", "-m", "sh", "-c", f'{mount} && exec "$@"', "-")
    for function, args in (("firewall_base_ensure", ()), ("network_ensure", (lab.spec(1, nat=False),))):
        result = lab.call(function, *args, prefix=readonly)
        message = str(result.get("error", ""))
        assert "bridge netfilter is off and cannot be turned on" in message, result
        assert "fail open; refusing to run tenant networks" in message, result
    assert lab.sysctl(BRNF) == "0"
    assert "NUBIS-FWD" not in lab.run("iptables", "-w", "-S").stdout  # nothing was set up
    assert lab.run("ip", "link", "show", f"nbrl{RUN}1", check=False).returncode != 0

    # A kernel without br_netfilter, where modprobe cannot load it: the files are missing.
    mount = "mount -t tmpfs -o ro none /proc/sys/net/bridge"
    hidden = ("unshare", "-m", "sh", "-c", f'{mount} && exec "$@"', "-")
    result = lab.call("firewall_base_ensure", prefix=hidden)
    assert "bridge netfilter is unavailable" in str(result.get("error", "")), result
    assert "modprobe br_netfilter" in str(result.get("error", "")), result
    lab.sysctl(BRNF, "1")


# --- item 8: Docker's FORWARD policy DROP and its chains ahead of ours -------------------------------


def docker_like(lab: Lab) -> None:
    """What dockerd does to a host's filter table at start: FORWARD's policy DROP, and its chains
    (DOCKER-USER, then DOCKER-FORWARD for its own bridges) jumped to first."""
    lab.run("iptables", "-w", "-P", "FORWARD", "DROP")
    for chain in ("DOCKER-USER", "DOCKER-FORWARD"):
        lab.run("iptables", "-w", "-N", chain, check=False)
    lab.run("iptables", "-w", "-F", "DOCKER-USER")
    lab.run("iptables", "-w", "-A", "DOCKER-USER", "-j", "RETURN")
    lab.run("iptables", "-w", "-A", "DOCKER-FORWARD", "-o", "docker0", "-j", "ACCEPT")
    lab.run("iptables", "-w", "-I", "FORWARD", "1", "-j", "DOCKER-FORWARD")
    lab.run("iptables", "-w", "-I", "FORWARD", "1", "-j", "DOCKER-USER")


@pytest.mark.slow
@pytest.mark.parametrize("docker", ["stopped", "running"])
def test_tenant_network_works_with_and_without_docker(lab: Lab, docker: str, tmp_path: Path) -> None:
    net = lab.spec(1, nat=True)
    lab.ok("network_ensure", net)
    web = lab.instance(net, 1, 11, [Rule("tcp", 8080, None, net.cidr), Rule("icmp", None, None, net.cidr)])
    client = lab.instance(net, 2, 12, [])  # a group with no rules: nothing may come in
    fresh = lab.instance(net, 3, 13, [Rule("any", None, None, net.cidr)])
    if docker == "running":
        docker_like(lab)  # Docker started after Nubis: its jumps come first, the policy is DROP
        forward = lab.run("iptables", "-w", "-S", "FORWARD").stdout.splitlines()
        assert forward[:2] == ["-P FORWARD DROP", "-A FORWARD -j DOCKER-USER"], forward
    else:
        assert lab.run("iptables", "-w", "-S", "FORWARD").stdout.splitlines()[0] == "-P FORWARD ACCEPT"
    outside, outside_ip = lab.outside()
    sh("ip", "-n", outside, "route", "add", net.cidr, "via", "10.250.99.1")  # it knows the way in
    lab.serve(web[0], 8080, 8081)
    lab.serve(outside, 9000)

    # DHCP: a reservation served by the network's dnsmasq.
    lab.ok("dhcp_hosts_set", net, [[fresh[2], fresh[3], "fresh"]])
    time.sleep(0.2)
    sh("ip", "-n", fresh[0], "addr", "flush", "dev", "eth0")
    script = tmp_path / "udhcpc.sh"
    script.write_text(UDHCPC_SCRIPT)
    script.chmod(0o755)
    udhcpc = ["busybox", "udhcpc", "-i", "eth0", "-f", "-q", "-n", "-t", "3", "-T", "1", "-s", str(script)]
    out = sh("ip", "netns", "exec", fresh[0], *udhcpc).stdout
    assert f"LEASE ip={fresh[3]} router={net.gateway}" in out, out
    sh("ip", "-n", fresh[0], "addr", "replace", f"{fresh[3]}/24", "dev", "eth0")

    # Same network: what the groups allow goes through, what they do not is dropped.
    assert tcp_probe(client[0], f"{web[3]}:8080", f"{web[3]}:8081") == {
        f"{web[3]}:8080": "open",
        f"{web[3]}:8081": "timeout",
    }
    assert pings([(client[0], web[3]), (web[0], client[3]), (fresh[0], web[3])]) == [True, False, True]

    # NAT egress to the outside, and nothing back in that the instance did not open.
    assert tcp_probe(web[0], f"{outside_ip}:9000") == {f"{outside_ip}:9000": "open"}
    assert pings([(web[0], outside_ip)]) == [True]
    assert pings([(outside, web[3])]) == [False]

    # The reconciler's next pass puts Nubis's jump first again, and nothing changes.
    lab.ok("firewall_base_ensure")
    assert lab.run("iptables", "-w", "-S", "FORWARD").stdout.splitlines()[1] == "-A FORWARD -j NUBIS-FWD"
    assert tcp_probe(client[0], f"{web[3]}:8080") == {f"{web[3]}:8080": "open"}
