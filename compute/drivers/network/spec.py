"""What the network driver is given: a network's and a rule's specs, the checks every name and
address passes before any command runs, and the one error every failing command raises.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

BRIDGE_PREFIX = "nbr"  # every tenant bridge starts with it; the iptables rules match "nbr+"
IFNAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,14}")
_NETNS = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_MAC = re.compile(r"[0-9a-f]{2}(?::[0-9a-f]{2}){5}")
_OWNER = re.compile(r"[a-z0-9]{1,8}")


class PlumbingError(RuntimeError):
    """A host command failed; the message holds the command and its own stderr."""

    def __init__(
        self, message: str, *, cmd: Sequence[str] = (), returncode: int | None = None, stderr: str = ""
    ) -> None:
        super().__init__(message)
        self.cmd = list(cmd)
        self.returncode = returncode
        self.stderr = stderr


VNI_MAX = (1 << 24) - 1


@dataclass(frozen=True)
class Overlay:
    """A network's tunnel between hosts: its VXLAN id, this host's underlay address, the others'."""

    vni: int
    local: str
    peers: tuple[str, ...] = ()


@dataclass(frozen=True)
class NetSpec:
    """One tenant network: its bridge, IPv4 subnet and gateway, NAT egress, owner tag and state dir.

    ``state_dir`` holds dnsmasq's pid, leases and hosts files. dnsmasq drops root privileges for
    ``nobody``, so every directory above it must be searchable by others (mode o+x). ``owner`` is
    the deployment's id in the names of the network's iptables chains.
    """

    bridge: str
    cidr: str
    gateway: str
    nat: bool
    tag: str
    state_dir: Path
    owner: str
    # The gateway's MAC on every host (the bridge's own address); and, on a host of a cluster, the
    # tunnel to the network's other hosts (None: the network stays on this host).
    mac: str = ""
    overlay: Overlay | None = None


@dataclass(frozen=True)
class Rule:
    """One security-group rule: accept ``protocol`` to ports ``port_min``..``port_max`` from ``cidr``."""

    protocol: str
    port_min: int | None
    port_max: int | None
    cidr: str


def check_ifname(name: str, what: str = "interface") -> None:
    if not IFNAME.fullmatch(name):
        raise ValueError(f"invalid {what} name {name!r} (1-15 of [A-Za-z0-9_.-])")


def check_bridge(name: str) -> None:
    check_ifname(name, "bridge")
    if not name.startswith(BRIDGE_PREFIX) or name == BRIDGE_PREFIX:
        raise ValueError(f"bridge {name!r} does not start with {BRIDGE_PREFIX!r}")


def check_netns(name: str) -> None:
    if not _NETNS.fullmatch(name):
        raise ValueError(f"invalid netns name {name!r}")


def check_owner(owner: str) -> None:
    if not _OWNER.fullmatch(owner):
        raise ValueError(f"invalid chain owner {owner!r} (1-8 of [a-z0-9])")


def check_tag(tag: str) -> None:
    if not tag or len(tag) > 255 or not tag.isprintable():
        raise ValueError(f"invalid owner tag {tag!r} (1-255 printable characters)")


def normal_mac(mac: str) -> str:
    mac = mac.lower()
    if not _MAC.fullmatch(mac) or int(mac[:2], 16) & 1:
        raise ValueError(f"invalid unicast MAC address {mac!r}")
    return mac


@dataclass(frozen=True)
class Subnet:
    network: ipaddress.IPv4Network
    gateway: ipaddress.IPv4Address


def parse_spec(spec: NetSpec) -> Subnet:
    check_bridge(spec.bridge)
    check_tag(spec.tag)
    check_owner(spec.owner)
    network = ipaddress.IPv4Network(spec.cidr)  # strict: "10.20.0.0/24", not a host address
    if network.prefixlen > 30:
        raise ValueError(f"{spec.cidr}: a tenant network needs at least a /30")
    gateway = ipaddress.IPv4Address(spec.gateway)
    if gateway not in network or gateway in (network.network_address, network.broadcast_address):
        raise ValueError(f"gateway {gateway} is not a host address of {network}")
    check_state_dir(spec.state_dir)
    if spec.mac:
        normal_mac(spec.mac)
    if spec.overlay is not None:
        check_overlay(spec.overlay)
    return Subnet(network, gateway)


def check_overlay(overlay: Overlay) -> None:
    if not 1 <= overlay.vni <= VNI_MAX:
        raise ValueError(f"VXLAN id {overlay.vni} is not in 1..{VNI_MAX}")
    for address in (overlay.local, *overlay.peers):
        ipaddress.IPv4Address(address)


def check_state_dir(state_dir: Path) -> None:
    # network_remove deletes the whole directory: refuse anything that looks like a system path.
    path = Path(state_dir)
    if not path.is_absolute() or len(path.parts) < 3 or ".." in path.parts:
        raise ValueError(f"state_dir {state_dir} must be an absolute path at least two levels deep")
