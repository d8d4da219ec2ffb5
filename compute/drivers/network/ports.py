"""Instances' ports: a container's network namespace put on its bridge through a veth pair, named
namespaces, and a port's traffic counters.
"""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path
from typing import Any

from compute.drivers.network.shell import (
    addresses_set,
    ip_json,
    link_info,
    link_kind,
    locked,
    run_ip,
    sysctl_set,
)
from compute.drivers.network.spec import (
    PlumbingError,
    check_bridge,
    check_ifname,
    check_netns,
    check_tag,
    normal_mac,
)

NETNS_DIR = Path("/var/run/netns")


def _netns_usable(netns: str) -> bool:
    if not (NETNS_DIR / netns).exists():
        return False
    return run_ip("link", "show", "dev", "lo", netns=netns, check=False).returncode == 0


def _veth_paired(host: dict[str, Any] | None, peer: dict[str, Any] | None) -> bool:
    """HOST is a veth whose peer, in another namespace, is PEER."""
    return (
        host is not None
        and peer is not None
        and link_kind(host) == "veth"
        and link_kind(peer) == "veth"
        and "link_netnsid" in host
        and host.get("link_index") == peer.get("ifindex")
    )


@locked
def port_attach_netns(
    netns: str, bridge: str, host_if: str, mac: str, address: str, gateway: str | None, tag: str
) -> None:
    """Put an instance's network namespace NETNS on BRIDGE through a veth pair (HOST_IF <-> eth0).

    The namespace is made with ``ip netns add`` (so runc can join /var/run/netns/NETNS); eth0 gets
    MAC and ADDRESS ("10.20.0.5/24"), lo comes up, and a default route via GATEWAY if given.
    """
    check_netns(netns)
    check_bridge(bridge)
    check_ifname(host_if)
    check_tag(tag)
    mac = normal_mac(mac)
    interface = ipaddress.IPv4Interface(address)
    via = ipaddress.IPv4Address(gateway) if gateway is not None else None
    bridge_info = link_info(bridge)
    if bridge_info is None:
        run_ip("link", "show", "dev", bridge)  # raises with ip's own "does not exist"
    elif link_kind(bridge_info) != "bridge":
        raise PlumbingError(f"{bridge} is not a bridge ({link_kind(bridge_info)})")

    if not _netns_usable(netns):
        if (NETNS_DIR / netns).exists():  # left by a crash between creating the file and mounting it
            run_ip("netns", "del", netns, check=False)
        run_ip("netns", "add", netns)

    host, peer = link_info(host_if), link_info("eth0", netns=netns)
    if not _veth_paired(host, peer):
        if host is not None:
            if link_kind(host) != "veth":
                raise PlumbingError(f"{host_if} exists and is not a veth ({link_kind(host)})")
            run_ip("link", "del", "dev", host_if)
        if peer is not None:
            run_ip("link", "del", "dev", "eth0", netns=netns)
        # One command makes both ends, the peer already inside the namespace under its final name.
        veth = ["link", "add", "name", host_if, "type", "veth"]
        run_ip(*veth, "peer", "name", "eth0", "address", mac, "netns", netns)
        host, peer = link_info(host_if), link_info("eth0", netns=netns)
    if host is None or peer is None:
        raise PlumbingError(f"veth {host_if} <-> {netns}/eth0 vanished while being set up")

    if str(peer.get("address", "")).lower() != mac:
        run_ip("link", "set", "dev", "eth0", "address", mac, netns=netns)
    if host.get("ifalias") != tag:
        run_ip("link", "set", "dev", host_if, "alias", tag)
    sysctl_set(f"net/ipv6/conf/{host_if}/disable_ipv6", "1")
    if host.get("master") != bridge:
        run_ip("link", "set", "dev", host_if, "master", bridge)
    if "UP" not in host.get("flags", []):
        run_ip("link", "set", "dev", host_if, "up")

    run_ip("link", "set", "dev", "lo", "up", netns=netns)
    addresses_set("eth0", interface.with_prefixlen, netns=netns)
    run_ip("link", "set", "dev", "eth0", "up", netns=netns)
    routes = ip_json("-4", "route", "show", "default", netns=netns)
    if via is not None:
        if [r.get("gateway") for r in routes] != [str(via)]:
            run_ip("route", "replace", "default", "via", str(via), "dev", "eth0", netns=netns)
    elif routes:
        run_ip("route", "del", "default", netns=netns)


@locked
def port_detach_netns(netns: str, host_if: str) -> None:
    """Delete the veth pair of HOST_IF and the namespace NETNS. Idempotent."""
    check_netns(netns)
    check_ifname(host_if)
    host = link_info(host_if)
    if host is not None:
        if link_kind(host) != "veth":
            raise PlumbingError(f"{host_if} is not a veth ({link_kind(host)}); not deleting it")
        run_ip("link", "del", "dev", host_if)
    netns_remove(netns)


@locked
def netns_bind(netns: str, pid: int) -> None:
    """Name the network namespace of process PID /var/run/netns/NETNS (replacing a stale one).

    For a namespace someone else made: runc makes a container's inside the container's user
    namespace (one made beforehand with ``ip netns add`` belongs to the host's user namespace,
    and the container could not mount its /sys). Idempotent.
    """
    check_netns(netns)
    try:
        current = os.stat(f"/proc/{pid}/ns/net").st_ino
    except OSError as exc:
        raise PlumbingError(f"netns {netns}: no process {pid}: {exc.strerror}") from None
    target = NETNS_DIR / netns
    if target.exists():
        if target.stat().st_ino == current:
            return
        run_ip("netns", "del", netns, check=False)
    run_ip("netns", "attach", netns, str(pid))


def netns_list() -> list[str]:
    """The names of the host's named network namespaces (those of /var/run/netns), sorted."""
    return sorted(p.name for p in NETNS_DIR.iterdir()) if NETNS_DIR.exists() else []


@locked
def netns_remove(netns: str) -> None:
    """Drop the name /var/run/netns/NETNS (the namespace goes once nothing else holds it)."""
    check_netns(netns)
    if (NETNS_DIR / netns).exists():
        run_ip("netns", "del", netns)


def port_counters(ifname: str) -> tuple[int, int]:
    """(rx_bytes, tx_bytes) of a host-side interface: rx is what the instance sent, tx what it got."""
    check_ifname(ifname)
    base = Path("/sys/class/net") / ifname / "statistics"
    try:
        return int((base / "rx_bytes").read_text()), int((base / "tx_bytes").read_text())
    except OSError as exc:
        raise PlumbingError(f"no counters for {ifname}: {exc}") from exc
