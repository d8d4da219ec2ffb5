"""Tenant bridges and the links of the root namespace: a network brought up or removed as a whole
(firewall, bridge, dnsmasq), the tagged links a deployment owns, and the host's own routes.
"""

from __future__ import annotations

import ipaddress
import shutil
from pathlib import Path

from compute.drivers.network.dhcp import dnsmasq_ensure, dnsmasq_processes, state_dir_prepare, stop_processes
from compute.drivers.network.netfilter import base_ensure, network_firewall_ensure, network_firewall_remove
from compute.drivers.network.overlay import overlay_ensure, overlay_remove, tunnel_filter_ensure
from compute.drivers.network.shell import (
    addresses_set,
    ip_json,
    link_addresses,
    link_info,
    link_kind,
    locked,
    run_ip,
    sysctl_set,
)
from compute.drivers.network.spec import (
    NetSpec,
    PlumbingError,
    Subnet,
    check_bridge,
    check_ifname,
    check_owner,
    check_state_dir,
    check_tag,
    parse_spec,
)


def ipv4_addresses(name: str) -> list[str]:
    """The IPv4 addresses of a link of the root namespace as ``address/prefixlen``."""
    check_ifname(name)
    return link_addresses(name)


MAX_ROUTES = 2048  # a compute host has a few dozen; a full routing table is cut here


def host_routes() -> list[dict[str, str]]:
    """The IPv4 subnets this host routes or has an address in, whoever made them: [{cidr, dev}].

    Every routing table counts (a VPN's policy routes too), and every address's subnet; not the
    default route, loopback, broadcast or multicast. A tenant subnet that overlaps one of these
    would be shadowed by, or shadow, someone else's network on this host.
    """
    found: dict[tuple[str, str], None] = {}

    def add(cidr: str, dev: str) -> None:
        try:
            network = ipaddress.IPv4Network(cidr, strict=False)
        except ValueError:
            return
        if network.prefixlen and not (network.is_loopback or network.is_multicast):
            found.setdefault((str(network), dev), None)

    for route in ip_json("-4", "route", "show", "table", "all"):
        dst = str(route.get("dst", ""))
        if dst and dst != "default" and route.get("type", "unicast") not in ("broadcast", "multicast"):
            add(dst, str(route.get("dev", "")))
    for link in ip_json("-4", "addr", "show"):
        for addr in link.get("addr_info", []):
            if addr.get("family") == "inet":
                add(f"{addr['local']}/{addr['prefixlen']}", str(link.get("ifname", "")))
    return [{"cidr": cidr, "dev": dev} for cidr, dev in sorted(found)][:MAX_ROUTES]


def _bridge_ensure(spec: NetSpec, net: Subnet) -> None:
    """Bridge up, STP off, with the owner tag as alias and the gateway as its only address."""
    bridge = spec.bridge
    info = link_info(bridge)
    if info is None:
        run_ip("link", "add", "name", bridge, "type", "bridge", "stp_state", "0", "forward_delay", "0")
        info = link_info(bridge)
        if info is None:
            raise PlumbingError(f"bridge {bridge} vanished right after being created")
    elif link_kind(info) != "bridge":
        raise PlumbingError(f"{bridge} exists and is not a bridge ({link_kind(info)})")
    else:
        data = info.get("linkinfo", {}).get("info_data", {})
        if data.get("stp_state") != 0 or data.get("forward_delay") != 0:
            run_ip("link", "set", "dev", bridge, "type", "bridge", "stp_state", "0", "forward_delay", "0")
    # IPv4 only: no link-local IPv6 address for tenants to reach the host on; and answer ARP only
    # for the bridge's own address, so instances cannot map out the host's other addresses.
    sysctl_set(f"net/ipv6/conf/{bridge}/disable_ipv6", "1")
    sysctl_set(f"net/ipv4/conf/{bridge}/arp_ignore", "1")
    if info.get("ifalias") != spec.tag:
        run_ip("link", "set", "dev", bridge, "alias", spec.tag)
    if spec.mac and info.get("address") != spec.mac:
        # The distributed gateway's MAC, the same on every host of the network (overlay).
        run_ip("link", "set", "dev", bridge, "address", spec.mac)
    addresses_set(bridge, f"{net.gateway}/{net.network.prefixlen}")
    if "UP" not in info.get("flags", []):
        run_ip("link", "set", "dev", bridge, "up")


@locked
def network_ensure(spec: NetSpec) -> None:
    """Bring a tenant network to SPEC: firewall first, then the bridge, its tunnel to the network's
    other hosts (or none), then its dnsmasq."""
    net = parse_spec(spec)
    base_ensure()
    network_firewall_ensure(spec, net)
    _bridge_ensure(spec, net)
    if spec.overlay is not None:
        tunnel_filter_ensure()
        overlay_ensure(spec.bridge, spec.overlay, spec.tag)
    else:
        overlay_remove(spec.bridge)
    state_dir_prepare(spec)
    dnsmasq_ensure(spec, net)


@locked
def network_remove(spec: NetSpec) -> None:
    """Stop the network's dnsmasq, delete its bridge, firewall rules and state dir. Idempotent."""
    bridge_remove(spec.bridge, spec.state_dir, spec.owner)


@locked
def bridge_remove(bridge: str, state_dir: Path, owner: str) -> None:
    """network_remove for a bridge whose network is known only by name (an orphan, say)."""
    check_bridge(bridge)
    check_state_dir(state_dir)
    check_owner(owner)
    stop_processes(list(dnsmasq_processes(bridge, state_dir)))
    overlay_remove(bridge)  # deleting a bridge would leave its ports
    info = link_info(bridge)
    if info is not None:
        if link_kind(info) != "bridge":
            raise PlumbingError(f"{bridge} exists and is not a bridge ({link_kind(info)})")
        # The bridge goes before its rules: nothing is ever forwarded without them.
        run_ip("link", "del", "dev", bridge)
    network_firewall_remove(bridge, owner)
    if Path(state_dir).exists():
        shutil.rmtree(state_dir)


def _tagged_links(tag_prefix: str, bridges: bool) -> dict[str, str]:
    found: dict[str, str] = {}
    for link in ip_json("-d", "link", "show"):
        alias = link.get("ifalias")
        if not isinstance(alias, str) or not alias.startswith(tag_prefix):
            continue
        kind = link_kind(link)
        if kind == "vxlan":
            continue  # a network's tunnel: it goes with its bridge (network_remove)
        if (kind == "bridge") == bridges:
            found[str(link["ifname"])] = alias
    return found


def bridge_exists(name: str) -> bool:
    """Whether the host has a network link of that name (a quick check, no ``ip`` call)."""
    return Path(f"/sys/class/net/{name}").exists()


def bridges_list(tag_prefix: str) -> dict[str, str]:
    """{bridge: alias} of the bridges whose alias (owner tag) starts with TAG_PREFIX."""
    return _tagged_links(tag_prefix, bridges=True)


def ports_list(tag_prefix: str) -> dict[str, str]:
    """{interface: alias} of the ports (veth host ends, tagged taps) owned by TAG_PREFIX: not the
    bridges, nor the networks' tunnels."""
    return _tagged_links(tag_prefix, bridges=False)


@locked
def link_alias_set(ifname: str, tag: str) -> None:
    """Tag a link someone else created (e.g. libvirt's tap) so that ports_list finds it."""
    check_ifname(ifname)
    check_tag(tag)
    info = link_info(ifname)
    if info is None:
        run_ip("link", "show", "dev", ifname)  # raises with ip's own "does not exist"
    elif info.get("ifalias") != tag:
        run_ip("link", "set", "dev", ifname, "alias", tag)
