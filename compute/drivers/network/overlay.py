"""Tenant networks across hosts: one VXLAN per network between the hosts' bridges.

A network whose spec carries an :class:`~compute.drivers.network.spec.Overlay` gets a VXLAN link
``nvx<12 hex>`` (its bridge's name with ``nvx`` for ``nbr``) on its bridge: the network's VNI, from
this host's address on the hosts' own network (the underlay), UDP port 4789. Broadcast and unknown
unicast go to every peer host of the network (one all-zero forwarding entry per peer: head-end
replication, no multicast needed on the underlay); the link learns where each remote MAC lives
from the frames it receives, and a VM that moved announces itself (QEMU sends RARPs after a
migration), so its new host is learnt at once.

The gateway is distributed: every host's bridge of the network holds the gateway address with the
same MAC (``GATEWAY_OUI`` + the network's own bytes), so an instance's ARP cache stays right when
it moves, and each host answers its own instances' DHCP and routes their NAT egress itself. So that
hosts do not answer each other's instances, ebtables (chain ``NUBIS-OVL``) keeps off the tunnel:
every frame from a gateway MAC and every DHCP packet. Tenants never reach the underlay itself: the
network's iptables chain drops what a tenant bridge routes to the hosts' network (netfilter).
"""

from __future__ import annotations

import ipaddress
import json

from compute.drivers.network.shell import link_info, link_kind, run, run_ip
from compute.drivers.network.spec import BRIDGE_PREFIX, Overlay, PlumbingError

OVERLAY_PREFIX = "nvx"
VXLAN_PORT = 4789
VXLAN_OVERHEAD = 50  # outer Ethernet 14 + IPv4 20 + UDP 8 + VXLAN 8
ZERO_MAC = "00:00:00:00:00:00"
GATEWAY_OUI = "0a:6e:62"  # locally administered, unicast: every distributed gateway's MAC starts so
EBTABLES = "ebtables"
CHAIN_OVL = "NUBIS-OVL"
BRIDGE = "bridge"


def overlay_link(bridge: str) -> str:
    """The VXLAN link of a tenant bridge."""
    return OVERLAY_PREFIX + bridge.removeprefix(BRIDGE_PREFIX)


def _ovl_rules() -> list[str]:
    """NUBIS-OVL, as `ebtables -L` prints it (compared before anything is written)."""
    gateways = f"{GATEWAY_OUI}:00:00:00/ff:ff:ff:00:00:00"
    tunnels = f"{OVERLAY_PREFIX}+"
    return [
        f"-p IPv4 -o {tunnels} --ip-proto udp --ip-dport 67:68 -j DROP",
        f"-p IPv4 -i {tunnels} --ip-proto udp --ip-dport 67:68 -j DROP",
        f"-s {gateways} -o {tunnels} -j DROP",
        f"-s {gateways} -i {tunnels} -j DROP",
    ]


def _ebtables(*args: str, check: bool = True) -> str:
    return run([EBTABLES, *args], check=check).stdout


def _listed(chain: str) -> list[str] | None:
    """The rules of an ebtables chain as printed, or None when it does not exist."""
    proc = run([EBTABLES, "-L", chain], check=False)
    if proc.returncode != 0:
        return None
    return [line.strip() for line in proc.stdout.splitlines()[3:] if line.strip()]


def tunnel_filter_ensure() -> None:
    """The NUBIS-OVL chain and its jumps from INPUT, FORWARD and OUTPUT (first in each)."""
    rules = _ovl_rules()
    listed = _listed(CHAIN_OVL)
    if listed is None:
        _ebtables("-N", CHAIN_OVL, "-P", "RETURN")
        listed = []
    if listed != rules:
        _ebtables("-F", CHAIN_OVL)
        for rule in rules:
            _ebtables("-A", CHAIN_OVL, *rule.split())
    for builtin in ("INPUT", "FORWARD", "OUTPUT"):
        if f"-j {CHAIN_OVL}" not in (_listed(builtin) or []):
            _ebtables("-I", builtin, "1", "-j", CHAIN_OVL)


def _underlay_mtu(local: str) -> int:
    """The MTU of the link that holds this host's underlay address."""
    out = run_ip("-j", "-4", "addr", "show").stdout
    for link in json.loads(out or "[]"):
        for addr in link.get("addr_info", []):
            if addr.get("local") == local:
                return int(link.get("mtu", 1500))
    raise PlumbingError(f"no link of this host has the underlay address {local}")


def underlay_network(local: str) -> str:
    """The hosts' network: the subnet of the address ``local`` on this host's link."""
    out = run_ip("-j", "-4", "addr", "show").stdout
    for link in json.loads(out or "[]"):
        for addr in link.get("addr_info", []):
            if addr.get("local") == local:
                return str(ipaddress.IPv4Network(f"{local}/{addr['prefixlen']}", strict=False))
    raise PlumbingError(f"no link of this host has the underlay address {local}")


def overlay_mtu(local: str) -> int:
    """What the tunnel carries: 1500 when the underlay has room for the VXLAN header, else less."""
    return min(1500, _underlay_mtu(local) - VXLAN_OVERHEAD)


def _flood_peers(link: str) -> set[str]:
    out = run([BRIDGE, "-j", "fdb", "show", "dev", link]).stdout
    return {
        str(entry["dst"])
        for entry in json.loads(out or "[]")
        if entry.get("mac") == ZERO_MAC and entry.get("dst")
    }


def overlay_ensure(bridge: str, overlay: Overlay, tag: str) -> None:
    """The bridge's VXLAN link with this VNI and local address, on the bridge, flooding to PEERS.

    A link of that name with another VNI or address is made again. Caller holds the host lock.
    """
    link = overlay_link(bridge)
    info = link_info(link)
    if info is not None:
        data = info.get("linkinfo", {}).get("info_data", {})
        if link_kind(info) != "vxlan":
            raise PlumbingError(f"{link} exists and is not a VXLAN link ({link_kind(info)})")
        if data.get("id") != overlay.vni or data.get("local") != overlay.local:
            run_ip("link", "del", "dev", link)
            info = None
    if info is None:
        run_ip(
            "link", "add", link, "type", "vxlan", "id", str(overlay.vni), "local", overlay.local,
            "dstport", str(VXLAN_PORT), "ttl", "64",
        )  # fmt: skip
        info = link_info(link)
        if info is None:
            raise PlumbingError(f"VXLAN link {link} vanished right after being created")
    mtu = overlay_mtu(overlay.local)
    if info.get("mtu") != mtu:
        run_ip("link", "set", "dev", link, "mtu", str(mtu))
    if info.get("master") != bridge:
        run_ip("link", "set", "dev", link, "master", bridge)
    if info.get("ifalias") != tag:
        run_ip("link", "set", "dev", link, "alias", tag)
    if "UP" not in info.get("flags", []):
        run_ip("link", "set", "dev", link, "up")
    wanted = set(overlay.peers) - {overlay.local}
    have = _flood_peers(link)
    for peer in sorted(wanted - have):
        run([BRIDGE, "fdb", "append", ZERO_MAC, "dev", link, "dst", peer])
    for peer in sorted(have - wanted):
        run([BRIDGE, "fdb", "del", ZERO_MAC, "dev", link, "dst", peer])


def overlay_remove(bridge: str) -> None:
    """Delete the bridge's VXLAN link, if any. Caller holds the host lock."""
    link = overlay_link(bridge)
    info = link_info(link)
    if info is None:
        return
    if link_kind(info) != "vxlan":
        raise PlumbingError(f"{link} exists and is not a VXLAN link ({link_kind(info)})")
    run_ip("link", "del", "dev", link)


def flood_peers(bridge: str) -> list[str]:
    """The peer hosts the network's tunnel floods to (empty without a tunnel)."""
    link = overlay_link(bridge)
    return sorted(_flood_peers(link)) if link_info(link) is not None else []
