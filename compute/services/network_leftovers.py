"""What this deployment's tenant networks leave on the host when the portal stops, and its removal.

Bridges, their dnsmasq, namespaces and iptables chains outlive the portal's processes on purpose:
guests keep running, and the agent takes them over again when it starts. ``scripts/down`` says what
is left (``leftovers``), and ``scripts/down --purge`` removes it (``leftovers_purge``). Only what
this deployment made is touched: bridges and ports by their alias, namespaces by the domain
prefix followed by a UUID, chains by the deployment's chain owner id. The database is not needed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from django.conf import settings

from compute.drivers import network as plumbing
from compute.drivers.network import PlumbingError
from compute.models import domain_uuid
from compute.services.ports import alias_owner, chain_owner, tag_prefix


@dataclass
class Leftovers:
    """This deployment's network pieces on the host, by kind."""

    bridges: dict[str, str] = field(default_factory=dict)  # bridge -> "address, dnsmasq pid N"
    namespaces: list[str] = field(default_factory=list)
    ports: list[str] = field(default_factory=list)  # interfaces of instances still running
    chains: list[str] = field(default_factory=list)

    def empty(self) -> bool:
        return not (self.bridges or self.namespaces or self.ports or self.chains)

    def lines(self) -> list[str]:
        """One line per kind, for people."""
        bridges = [f"{b} ({what})" for b, what in sorted(self.bridges.items())]
        return [
            f"bridges and their dnsmasq: {', '.join(bridges) or 'none'}",
            f"network namespaces: {', '.join(self.namespaces) or 'none'}",
            f"ports of instances still running: {', '.join(self.ports) or 'none'}",
            f"iptables chains: {', '.join(self.chains) or 'none'}",
        ]


def _state_dir(bridge: str) -> Path:
    return Path(settings.NUBIS_NETWORK_STATE_DIR) / bridge


def _bridges() -> list[str]:
    bridges = plumbing.bridges_list(tag_prefix())
    return sorted(b for b, alias in bridges.items() if alias_owner(alias) is not None)


def leftovers() -> Leftovers:
    """What this deployment has on the host's network now."""
    owner = chain_owner()
    found = Leftovers()
    for bridge in _bridges():
        addresses = plumbing.ipv4_addresses(bridge)
        pids = plumbing.dnsmasq_pids(bridge, _state_dir(bridge))
        dnsmasq = f"dnsmasq pid {', '.join(map(str, pids))}" if pids else "no dnsmasq"
        found.bridges[bridge] = ", ".join([*addresses, dnsmasq])
    found.namespaces = [n for n in plumbing.netns_list() if domain_uuid(n) is not None]
    found.ports = sorted(p for p, alias in plumbing.ports_list(tag_prefix()).items() if alias_owner(alias))
    found.chains = sorted(
        [f"NBR-{owner}-{b}" for b in plumbing.network_chains_list(owner)]
        + [f"NSA/NSG-{owner}-{p}" for p in plumbing.port_chains_list(owner)]
        # Floating addresses and port forwards (their /32 on the external interface goes with them).
        + [f"NFD/NFS/NFF-{owner}-{p}" for p in plumbing.nat_chains_list(owner)]
    )
    return found


def leftovers_purge() -> list[str]:
    """Remove all of it; refused (a PlumbingError naming them) while instances still have ports up.

    The NUBIS-* chains shared by every deployment on the host go too, unless another one still
    has rules in them. Returns what was removed.
    """
    owner = chain_owner()
    left = leftovers()
    if left.ports:
        raise PlumbingError(
            f"instances of this deployment are still running ({', '.join(left.ports)}): removing their "
            "networks would cut them off; stop or delete them first (start the portal, or virsh destroy "
            "/ runc kill them)"
        )
    removed: list[str] = []
    for bridge in sorted({*_bridges(), *plumbing.network_chains_list(owner)}):
        plumbing.bridge_remove(bridge, _state_dir(bridge), owner)
        removed.append(f"bridge {bridge}")
    for port in sorted(plumbing.nat_chains_list(owner)):  # before the ports' chains they jump to
        floating = plumbing.instance_nat_show(port, owner).get("floating")
        plumbing.instance_nat_remove(port, owner)
        removed.append(f"NAT of {port}" + (f" (floating address {floating})" if floating else ""))
    for port in sorted(plumbing.port_chains_list(owner)):
        plumbing.port_rules_remove(port, owner)
        removed.append(f"chains NSA/NSG-{owner}-{port}")
    for name in left.namespaces:
        plumbing.netns_remove(name)
        removed.append(f"namespace {name}")
    try:
        plumbing.firewall_base_remove()
        removed.append("the shared NUBIS-* chains")
    except PlumbingError:
        pass  # another deployment's networks still use them
    return removed
