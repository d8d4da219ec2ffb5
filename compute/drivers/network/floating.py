"""Reachable addresses: an instance's floating address (1:1 NAT) and its host port forwards.

The layout (``iptables -S`` names; PORT is the instance's port, OWNER the deployment's id):

nat table
  PREROUTING   1: ``-j NUBIS-FPRE``; NUBIS-FPRE: ``-j NFD-OWNER-PORT`` per instance with NAT
  NUBIS-POST   1: ``-j NUBIS-FPOST`` (ahead of the networks' MASQUERADE); NUBIS-FPOST: ``-j NFS-OWNER-PORT``
  NFD-OWNER-PORT  ``-d FLOATING/32 -j DNAT --to-destination PRIVATE`` and, per host port forward,
                  ``! -i nbr+ -p tcp -m addrtype --dst-type LOCAL -m tcp --dport HOST_PORT -j DNAT
                  --to-destination PRIVATE:PORT``
  NFS-OWNER-PORT  ``-s PRIVATE/32 -o EXTERNAL -j SNAT --to-source FLOATING``
filter table
  NUBIS-NETS   1: ``-j NUBIS-FIP`` (after NUBIS-FWD's drop between tenant bridges, before the
               networks' chains)
  NUBIS-FIP    ``-j NFF-OWNER-PORT`` per instance with NAT
  NFF-OWNER-PORT  the hosts' own network DROP (a cluster), then connections that came in through
                  the NAT (``--ctstate DNAT``) towards PRIVATE go through the port's security-group
                  chain NSG-OWNER-PORT (so the instance's groups decide what gets in, as on its own
                  network), their replies ACCEPT, and with a floating address the instance's own
                  traffic out of EXTERNAL ACCEPT (it leaves SNATed from its floating address).

Routed traffic is filtered in FORWARD after DNAT (PREROUTING), so the security group sees the
instance's private address and the real port. The floating address is added as a /32 to the
external interface (the host answers ARP for it there; a gratuitous ARP is sent when ``arping`` is
installed, so the external router learns the host that runs the instance now). With a gateway, the
instance's traffic is routed by a table of its own (``ip rule from PRIVATE``): out of the external
interface to that gateway, not through the host's default route.

Everything is derived from the chains themselves: removing an instance's NAT reads its floating
address, external interface and private address back from them, so nothing else needs to be kept.
"""

from __future__ import annotations

import hashlib
import ipaddress
import itertools
import shutil
from dataclasses import dataclass

from compute.drivers.network.netfilter import (
    CHAIN_FIP,
    CHAIN_FPOST,
    CHAIN_FPRE,
    CHAIN_POST,
    _Batch,
    _drop_chain,
    _dump,
    _ensure_first,
    _ensure_once,
    _remove_all,
    _sync_chain,
    base_ensure,
)
from compute.drivers.network.ports import NETNS_DIR
from compute.drivers.network.shell import ip_json, link_addresses, locked, run, run_ip, sysctl_set
from compute.drivers.network.spec import (
    BRIDGE_PREFIX,
    PlumbingError,
    check_bridge,
    check_ifname,
    check_netns,
    check_owner,
)

RULE_PRIORITY = "30500"  # ahead of the main table (32766)
ARPING = "arping"


@dataclass(frozen=True)
class Floating:
    """A floating address on an external network: the address, the host's interface there, the
    external router (empty: the host's own routes) and the external subnet."""

    address: str
    interface: str
    cidr: str
    gateway: str = ""


@dataclass(frozen=True)
class NatSpec:
    """What makes one instance reachable: its port and private address on its network's bridge,
    its floating address (or None) and its host port forwards ((host_port, port), tcp)."""

    port: str
    private: str
    bridge: str
    owner: str
    floating: Floating | None = None
    forwards: tuple[tuple[int, int], ...] = ()
    underlay: str = ""  # the hosts' own network, which a tenant never reaches


def _names(port: str, owner: str) -> tuple[str, str, str]:
    return f"NFD-{owner}-{port}", f"NFS-{owner}-{port}", f"NFF-{owner}-{port}"


def route_table(owner: str, interface: str) -> int:
    """The routing table of an external interface's floating addresses (one per deployment)."""
    digest = hashlib.sha256(f"{owner}:{interface}".encode()).digest()
    return 0x4E000000 + int.from_bytes(digest[:3], "big")


def _check(spec: NatSpec) -> None:
    check_ifname(spec.port, "port")
    check_bridge(spec.bridge)
    check_owner(spec.owner)
    ipaddress.IPv4Address(spec.private)
    if spec.floating is not None:
        check_ifname(spec.floating.interface, "external interface")
        if spec.floating.interface.startswith(BRIDGE_PREFIX):
            raise ValueError(f"{spec.floating.interface} is a tenant bridge, not an external interface")
        net = ipaddress.IPv4Network(spec.floating.cidr)
        if ipaddress.IPv4Address(spec.floating.address) not in net:
            raise ValueError(f"{spec.floating.address} is not in {net}")
        if spec.floating.gateway:
            ipaddress.IPv4Address(spec.floating.gateway)
    for host_port, port in spec.forwards:
        if not (1 <= host_port <= 65535 and 1 <= port <= 65535):
            raise ValueError(f"bad port forward {host_port} -> {port}")
    if spec.underlay:
        ipaddress.IPv4Network(spec.underlay)


def _rules(spec: NatSpec) -> tuple[list[str], list[str], list[str]]:
    """The rules of NFD, NFS and NFF, in the form ``iptables -S`` prints them."""
    private = f"{spec.private}/32"
    nsg = f"NSG-{spec.owner}-{spec.port}"
    dnat: list[str] = []
    snat: list[str] = []
    filt: list[str] = []
    if spec.underlay:
        filt.append(f"-s {private} -d {spec.underlay} -j DROP")
    filt += [
        f"-d {private} -o {spec.bridge} -m conntrack --ctstate DNAT -j {nsg}",
        f"-s {private} -i {spec.bridge} -m conntrack --ctstate DNAT -j ACCEPT",
    ]
    if spec.floating is not None:
        fip = spec.floating
        dnat.append(f"-d {fip.address}/32 -j DNAT --to-destination {spec.private}")
        snat.append(f"-s {private} -o {fip.interface} -j SNAT --to-source {fip.address}")
        filt.append(f"-s {private} -i {spec.bridge} -o {fip.interface} -j ACCEPT")
    for host_port, port in sorted(spec.forwards):
        dnat.append(
            f"! -i {BRIDGE_PREFIX}+ -p tcp -m addrtype --dst-type LOCAL -m tcp --dport {host_port} "
            f"-j DNAT --to-destination {spec.private}:{port}"
        )
    return dnat, snat, filt


def _nat_base(nat: dict[str, list[str]], batch: _Batch) -> None:
    for chain in (CHAIN_FPRE, CHAIN_FPOST):
        if chain not in nat:
            batch.declare(chain)
    _ensure_first(batch, nat, "PREROUTING", f"-j {CHAIN_FPRE}")
    _ensure_first(batch, nat, CHAIN_POST, f"-j {CHAIN_FPOST}")


@locked
def instance_nat_set(spec: NatSpec) -> None:
    """Make the instance reachable as SPEC says (and no other way): its chains are compared with
    ``iptables -S`` first and refilled in one transaction each, so a second call writes nothing.

    The port's security-group chain (NSG-OWNER-PORT, port_rules_set) must exist already.
    """
    _check(spec)
    base_ensure()
    sysctl_set("net/ipv4/ip_forward", "1")
    d_chain, s_chain, f_chain = _names(spec.port, spec.owner)
    dnat, snat, filt = _rules(spec)
    filt_dump = _dump(4, "filter")
    nat = _dump(4, "nat")
    previous = _read(spec.port, spec.owner, nat, filt_dump)

    batch = _Batch(4, "filter")
    if CHAIN_FIP not in filt_dump:
        batch.declare(CHAIN_FIP)
    _sync_chain(batch, filt_dump, f_chain, filt)
    _ensure_once(batch, filt_dump, CHAIN_FIP, f"-j {f_chain}")
    batch.commit()

    batch = _Batch(4, "nat")
    _nat_base(nat, batch)
    _sync_chain(batch, nat, d_chain, dnat)
    _sync_chain(batch, nat, s_chain, snat)
    _ensure_once(batch, nat, CHAIN_FPRE, f"-j {d_chain}")
    _ensure_once(batch, nat, CHAIN_FPOST, f"-j {s_chain}")
    batch.commit()

    fip = spec.floating
    old = previous.get("floating")
    if old and (fip is None or (fip.address, fip.interface) != (old, previous.get("interface"))):
        _address_remove(old, previous.get("interface", ""), spec.owner)
    old_private = previous.get("private")
    if old_private and (fip is None or not fip.gateway or old_private != spec.private):
        _policy_remove(old_private, previous.get("interface", ""), spec.owner)
    if fip is not None:
        _address_add(fip.address, fip.interface)
        if fip.gateway:
            _policy_set(spec.private, fip, spec.owner)


@locked
def instance_nat_remove(port: str, owner: str) -> None:
    """Remove the instance's NAT: its chains and jumps, its floating address on the external
    interface and its routing rule (read back from the chains). Idempotent."""
    check_ifname(port, "port")
    check_owner(owner)
    d_chain, s_chain, f_chain = _names(port, owner)
    nat = _dump(4, "nat")
    filt = _dump(4, "filter")
    if not ({d_chain, s_chain} & nat.keys() or f_chain in filt):
        return
    found = _read(port, owner, nat, filt)
    batch = _Batch(4, "nat")
    _remove_all(batch, nat, CHAIN_FPRE, f"-j {d_chain}")
    _remove_all(batch, nat, CHAIN_FPOST, f"-j {s_chain}")
    _drop_chain(batch, nat, d_chain)
    _drop_chain(batch, nat, s_chain)
    batch.commit()
    batch = _Batch(4, "filter")
    _remove_all(batch, filt, CHAIN_FIP, f"-j {f_chain}")
    _drop_chain(batch, filt, f_chain)
    batch.commit()
    if found.get("floating"):
        _address_remove(found["floating"], found.get("interface", ""), owner)
    if found.get("private") and found.get("interface"):
        _policy_remove(found["private"], found["interface"], owner)


@locked
def netns_default_route(netns: str, gateway: str) -> None:
    """A default route via GATEWAY in an instance's network namespace, if it has none (and the
    namespace exists: a stopped container has none)."""
    check_netns(netns)
    ipaddress.IPv4Address(gateway)
    if not (NETNS_DIR / netns).exists():
        return
    if not ip_json("-4", "route", "show", "default", netns=netns):
        run_ip("route", "replace", "default", "via", gateway, "dev", "eth0", netns=netns, check=False)


def nat_chains_list(owner: str) -> set[str]:
    """The ports that have NAT chains (NFD/NFS/NFF-OWNER-) of OWNER, interface present or not."""
    check_owner(owner)
    found = set()
    for table in ("nat", "filter"):
        for chain in _dump(4, table):
            for kind in ("NFD", "NFS", "NFF"):
                prefix = f"{kind}-{owner}-"
                if chain.startswith(prefix):
                    found.add(chain.removeprefix(prefix))
    return found


def instance_nat_show(port: str, owner: str) -> dict[str, str]:
    """What the chains of PORT say: {"floating", "interface", "private"} (those present)."""
    check_ifname(port, "port")
    check_owner(owner)
    return _read(port, owner, _dump(4, "nat"), _dump(4, "filter"))


def _read(port: str, owner: str, nat: dict[str, list[str]], filt: dict[str, list[str]]) -> dict[str, str]:
    _d_chain, s_chain, f_chain = _names(port, owner)
    found: dict[str, str] = {}
    for rule in nat.get(s_chain, []):
        words = rule.split()
        pairs = dict(itertools.pairwise(words))
        if "SNAT" in words:
            found["floating"] = pairs.get("--to-source", "")
            found["interface"] = pairs.get("-o", "")
            found["private"] = pairs.get("-s", "").removesuffix("/32")
    if "private" not in found:
        for rule in filt.get(f_chain, []):
            pairs = dict(itertools.pairwise(rule.split()))
            if "-d" in pairs and "-o" in pairs:
                found["private"] = pairs["-d"].removesuffix("/32")
                break
    return {k: v for k, v in found.items() if v}


def _address_add(address: str, interface: str) -> None:
    if f"{address}/32" in link_addresses(interface):
        return
    run_ip("addr", "replace", f"{address}/32", "dev", interface)
    if shutil.which(ARPING):
        # Tell the external network's router (and switches) that this host has the address now.
        run([ARPING, "-U", "-c", "1", "-I", interface, address], check=False, timeout=5)


def _address_remove(address: str, interface: str, owner: str) -> None:
    if not interface:
        return
    try:
        present = f"{address}/32" in link_addresses(interface)
    except PlumbingError:
        return  # the interface is gone, and its addresses with it
    if present:
        run_ip("addr", "del", f"{address}/32", "dev", interface, check=False)


def _policy_set(private: str, fip: Floating, owner: str) -> None:
    table = str(route_table(owner, fip.interface))
    net = str(ipaddress.IPv4Network(fip.cidr))
    run_ip("route", "replace", net, "dev", fip.interface, "scope", "link", "table", table)
    run_ip("route", "replace", "default", "via", fip.gateway, "dev", fip.interface, "onlink", "table", table)
    if not _rules_of(private, table):
        run_ip("rule", "add", "from", f"{private}/32", "lookup", table, "priority", RULE_PRIORITY)


def _rules_of(private: str, table: str) -> list[dict[str, object]]:
    return [
        r
        for r in ip_json("-4", "rule", "show")
        if str(r.get("src")) == private and str(r.get("table")) == table
    ]


def _policy_remove(private: str, interface: str, owner: str) -> None:
    if not interface:
        return
    table = str(route_table(owner, interface))
    for _rule in _rules_of(private, table):
        run_ip("rule", "del", "from", f"{private}/32", "lookup", table, check=False)
    if not any(str(r.get("table")) == table for r in ip_json("-4", "rule", "show")):
        run_ip("route", "flush", "table", table, check=False)
