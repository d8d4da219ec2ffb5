"""The lab's "outside": a network namespace behind an external bridge of a host, the stand-in for
the internet that floating addresses and port forwards are reached from.

The bridge (the host's side of the external network, where a floating pool lives) is made in the
host's network namespace (the machine's own, or a lab namespace), with the host's own address on
it; the "outside" namespace hangs off it by a veth and has an address of the same subnet and no
other route, so nothing it sends can leave the subnet. Subnets come from 198.18.0.0/15 (RFC 2544,
benchmarking), refused when any route of the host already covers them.
"""

from __future__ import annotations

import ipaddress
import json
import subprocess
import sys

from tests.compute.netlab import sh

BENCH_RANGE = ipaddress.IPv4Network("198.18.0.0/15")

PROBE = r"""
import json, socket, sys
host, port, send = sys.argv[1], int(sys.argv[2]), sys.argv[3].encode()
s = socket.socket()
s.settimeout(float(sys.argv[4]))
out = {"ok": False, "got": ""}
try:
    s.connect((host, port))
    s.sendall(send)
    s.shutdown(socket.SHUT_WR)
    data = b""
    while True:
        chunk = s.recv(4096)
        if not chunk:
            break
        data += chunk
    out = {"ok": True, "got": data.decode(errors="replace")}
except OSError as exc:
    out["error"] = repr(exc)
finally:
    s.close()
print(json.dumps(out))
"""

LISTEN = r"""
import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", int(sys.argv[1])))
s.listen(4)
s.settimeout(float(sys.argv[2]))
print("ready", flush=True)
try:
    conn, peer = s.accept()
    print(peer[0], flush=True)
    conn.sendall(b"seen " + peer[0].encode() + b"\n")
    conn.close()
except OSError:
    print("none", flush=True)
"""


class Outside:
    """Bridge BRIDGE (address .1, the host's) in HOST_NETNS (None: the machine's own namespace),
    namespace NETNS behind it (address .2)."""

    def __init__(self, name: str, subnet: str, host_netns: str | None = None) -> None:
        self.subnet = ipaddress.IPv4Network(subnet)
        if not self.subnet.subnet_of(BENCH_RANGE):
            raise ValueError(f"{subnet} is not in {BENCH_RANGE}")
        self.host_netns = host_netns
        self.bridge = f"nxt{name}"[:15]
        self.netns = f"nout{name}"
        self.link = f"vxo{name}"[:15]
        hosts = list(self.subnet.hosts())
        self.host_address, self.address = str(hosts[0]), str(hosts[1])
        routes = json.loads(self._ip("-j", "-4", "route", "show", "table", "all").stdout or "[]")
        for route in routes:
            dst = str(route.get("dst", ""))
            if dst and dst != "default":
                try:
                    taken = ipaddress.IPv4Network(dst, strict=False)
                except ValueError:
                    continue
                if taken.overlaps(self.subnet):
                    raise RuntimeError(f"{self.subnet} overlaps the route {dst} already on the host")
        self._made = False

    def _ip(self, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        prefix = ["ip", "-n", self.host_netns] if self.host_netns else ["ip"]
        return sh(*prefix, *argv, check=check)

    def up(self) -> Outside:
        self._made = True
        self._ip("link", "add", self.bridge, "type", "bridge", "stp_state", "0", "forward_delay", "0")
        self._ip("addr", "add", f"{self.host_address}/{self.subnet.prefixlen}", "dev", self.bridge)
        self._ip("link", "set", self.bridge, "up")
        sh("ip", "netns", "add", self.netns)
        self._ip("link", "add", self.link, "type", "veth", "peer", "name", "eth0", "netns", self.netns)
        self._ip("link", "set", self.link, "master", self.bridge, "up")
        for argv in (
            ["addr", "add", f"{self.address}/{self.subnet.prefixlen}", "dev", "eth0"],
            ["link", "set", "eth0", "up"],
            ["link", "set", "lo", "up"],
        ):
            sh("ip", "-n", self.netns, *argv)
        return self

    def down(self) -> None:
        if not self._made:
            return
        sh("ip", "netns", "del", self.netns, check=False)
        self._ip("link", "del", self.link, check=False)
        self._ip("link", "del", self.bridge, check=False)

    def connect(self, address: str, port: int, send: str = "", timeout: float = 3.0) -> dict[str, object]:
        """A TCP connection from the outside to ADDRESS:PORT (which must be in the outside's own
        subnet): {"ok", "got": what the server sent, "error"}."""
        if ipaddress.IPv4Address(address) not in self.subnet:
            raise ValueError(f"{address} is not on the outside's subnet {self.subnet}: never sent")
        out = sh(
            "ip",
            "netns",
            "exec",
            self.netns,
            sys.executable,
            "-I",
            "-S",
            "-c",
            PROBE,
            address,
            str(port),
            send,
            str(timeout),
            timeout=timeout + 10,
        ).stdout
        result: dict[str, object] = json.loads(out.strip().splitlines()[-1])
        return result

    def listen(self, port: int, timeout: float = 10.0) -> subprocess.Popen[str]:
        """A one-connection TCP server in the outside; its stdout says the peer's address."""
        proc = subprocess.Popen(
            [
                "ip",
                "netns",
                "exec",
                self.netns,
                sys.executable,
                "-I",
                "-S",
                "-c",
                LISTEN,
                str(port),
                str(timeout),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "ready"
        return proc

    def neighbours(self) -> dict[str, str]:
        """The outside's ARP cache: {address: MAC}."""
        rows = json.loads(sh("ip", "-n", self.netns, "-j", "neigh", "show").stdout or "[]")
        return {str(r["dst"]): str(r.get("lladdr", "")) for r in rows}
