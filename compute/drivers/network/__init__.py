"""The network driver: host-side plumbing of isolated tenant networks (Linux bridges, veths in
network namespaces, iptables and dnsmasq), the only code that changes a host's networking.

Plain Python without Django or a database, plain specs in (:class:`NetSpec`, :class:`Rule`, names,
addresses) and plain facts out (names, sets, lists of dicts). Every function shells out to ``ip``,
``iptables`` (the nf_tables backend, through ``iptables-restore --noflush`` batches, each committed
as one atomic transaction) and ``dnsmasq``. All of them are idempotent and safe to call again after
a crash half way; a failing command raises :class:`PlumbingError` carrying that command's stderr.

A tenant network is a bridge named ``BRIDGE_PREFIX...`` in the root namespace holding the gateway
address, with one dnsmasq serving DHCP (no DNS) on it and, on a host of a cluster, a VXLAN link to
the network's bridges on its other hosts (one L2 segment across them). The modules, bottom up:

- ``spec``: NetSpec, Rule, PlumbingError and the checks of names and addresses;
- ``shell``: the per-host lock, ``ip`` and /proc/sys;
- ``netfilter``: iptables (its layout is described there) and bridge netfilter;
- ``dhcp``: dnsmasq and its reservations;
- ``overlay``: a network's VXLAN tunnel to its other hosts, and the distributed gateway's filter;
- ``bridges``: a network as a whole, tagged links, the host's routes;
- ``ports``: an instance's veth and network namespace, a port's counters;
- ``floating``: an instance's floating address (1:1 NAT) and host port forwards.

Callers import this package (``from compute.drivers import network``), not its modules.
"""

from __future__ import annotations

from compute.drivers.network.bridges import (
    bridge_exists,
    bridge_remove,
    bridges_list,
    host_routes,
    ipv4_addresses,
    link_alias_set,
    network_ensure,
    network_remove,
    ports_list,
)
from compute.drivers.network.dhcp import dhcp_hosts_set, dnsmasq_pids
from compute.drivers.network.floating import (
    Floating,
    NatSpec,
    instance_nat_remove,
    instance_nat_set,
    instance_nat_show,
    nat_chains_list,
    netns_default_route,
)
from compute.drivers.network.netfilter import (
    bridge_netfilter_ensure,
    firewall_base_ensure,
    firewall_base_remove,
    legacy_port_chains_list,
    network_chains_list,
    port_chains_list,
    port_rules_remove,
    port_rules_set,
)
from compute.drivers.network.overlay import GATEWAY_OUI, flood_peers, overlay_link
from compute.drivers.network.ports import (
    netns_bind,
    netns_list,
    netns_remove,
    port_attach_netns,
    port_counters,
    port_detach_netns,
)
from compute.drivers.network.shell import host_lock
from compute.drivers.network.spec import BRIDGE_PREFIX, NetSpec, Overlay, PlumbingError, Rule

__all__ = [
    "BRIDGE_PREFIX",
    "GATEWAY_OUI",
    "Floating",
    "NatSpec",
    "NetSpec",
    "Overlay",
    "PlumbingError",
    "Rule",
    "bridge_exists",
    "bridge_netfilter_ensure",
    "bridge_remove",
    "bridges_list",
    "dhcp_hosts_set",
    "dnsmasq_pids",
    "firewall_base_ensure",
    "firewall_base_remove",
    "flood_peers",
    "host_lock",
    "host_routes",
    "instance_nat_remove",
    "instance_nat_set",
    "instance_nat_show",
    "ipv4_addresses",
    "legacy_port_chains_list",
    "link_alias_set",
    "nat_chains_list",
    "netns_bind",
    "netns_default_route",
    "netns_list",
    "netns_remove",
    "network_chains_list",
    "network_ensure",
    "network_remove",
    "overlay_link",
    "port_attach_netns",
    "port_chains_list",
    "port_counters",
    "port_detach_netns",
    "port_rules_remove",
    "port_rules_set",
    "ports_list",
]
