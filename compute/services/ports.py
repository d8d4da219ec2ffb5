"""Agent-side tenant networking: each instance's port, its network's bridge and DHCP, its rules.

Everything here is idempotent and derived from the database, so ``host_networks_sync`` (run by
the reconciler and after every network or security-group change) can always redo it.
"""

from __future__ import annotations

import hashlib
import ipaddress
import logging
from pathlib import Path
from typing import Any

from django.conf import settings
from django.db.models import Prefetch

from compute.drivers import network as plumbing
from compute.drivers.base import DriverError
from compute.drivers.network import NetSpec, PlumbingError, Rule
from compute.models import (
    Host,
    Instance,
    InstanceKind,
    InstanceState,
    Network,
    SecurityGroup,
    SecurityRule,
    domain_uuid,
)

logger = logging.getLogger(__name__)


def tag_prefix() -> str:
    """Bridges and ports this deployment made carry ``nubis:<domain prefix>`` in their alias."""
    return f"nubis:{settings.NUBIS_DOMAIN_PREFIX}"


def chain_owner() -> str:
    """This deployment's id in its iptables chain names (NSA-<id>-<port>, NSG-..., NBR-...).

    Chain names are at most 28 characters, too short for a whole domain prefix, so the id is a
    hash of it: 8 hex digits, the same in every process of the deployment, another for each prefix.
    """
    return hashlib.sha256(settings.NUBIS_DOMAIN_PREFIX.encode()).hexdigest()[:8]


def alias_owner(alias: str) -> str | None:
    """The UUID in a bridge's or port's alias when this deployment made it, else None.

    Another deployment on the host may use a longer prefix that starts with ours ("nubis-" and
    "nubis-t42-"); its aliases do not hold a bare UUID after our prefix, so they are left alone.
    """
    return domain_uuid(alias.removeprefix("nubis:"))


def local_routes() -> list[dict[str, str]] | None:
    """This machine's routes and address subnets (the network driver's ``host_routes``), for the
    agent's heartbeat: the subnet allocator avoids them. None if `ip` failed."""
    try:
        return plumbing.host_routes()
    except (PlumbingError, ValueError) as exc:
        logger.warning("cannot read this host's routes: %s", exc)
        return None


def net_spec(network: Network) -> NetSpec:
    return NetSpec(
        bridge=network.bridge,
        cidr=network.cidr,
        gateway=network.gateway,
        nat=network.nat_egress,
        tag=f"{tag_prefix()}{network.uuid}",
        state_dir=Path(settings.NUBIS_NETWORK_STATE_DIR) / network.bridge,
        owner=chain_owner(),
    )


def rules_of(instance: Instance) -> list[Rule]:
    """What the instance's security groups allow in; without groups, its own network only."""
    if instance.network is None:
        return []
    groups = instance.groups()
    if not groups:
        return [Rule(protocol="any", port_min=None, port_max=None, cidr=instance.network.cidr)]
    rules = SecurityRule.objects.for_tenant(instance.tenant_id).filter(group__in=groups).order_by("pk")
    return [Rule(protocol=r.protocol, port_min=r.port_min, port_max=r.port_max, cidr=r.cidr) for r in rules]


def _on_host(network: Network, host: Host) -> list[Instance]:
    return list(
        Instance.objects.unscoped()
        .filter(network=network, host=host)
        .exclude(state__in=[InstanceState.DELETED, InstanceState.ERROR])
        .exclude(ip_address=None)
    )


def _dhcp(network: Network, host: Host, without: Instance | None = None) -> None:
    """Reserve each instance's address for its MAC in the network's DHCP server on this host."""
    hosts = [
        (i.mac_address, str(i.ip_address), i.name)
        for i in _on_host(network, host)
        if without is None or i.pk != without.pk
    ]
    plumbing.dhcp_hosts_set(net_spec(network), hosts)


def port_attach(instance: Instance, pid: int | None = None) -> None:
    """Bridge, DHCP reservation, the port's rules and, for a running container (``pid``), its veth.

    A VM's tap is made by libvirt when it starts, named after the port; its rules wait for it.
    """
    network = instance.network
    if network is None or instance.host is None:
        return
    spec = net_spec(network)
    try:
        # The network's first instance on this host brings up its bridge; for the others the
        # reconciler and the networks_sync task keep it in line, so a create need not check it all.
        if not plumbing.bridge_exists(spec.bridge):
            remove_dead_bridges()
            plumbing.network_ensure(spec)
        _dhcp(network, instance.host)
        if instance.kind == InstanceKind.CONTAINER and pid is not None:
            plumbing.netns_bind(instance.netns_name, pid)
            prefix = ipaddress.IPv4Network(network.cidr).prefixlen
            plumbing.port_attach_netns(
                instance.netns_name,
                spec.bridge,
                instance.port_name,
                instance.mac_address,
                f"{instance.ip_address}/{prefix}",
                network.gateway if network.nat_egress else None,
                f"{tag_prefix()}{instance.uuid}",
            )
        plumbing.port_rules_set(
            instance.port_name, str(instance.ip_address), rules_of(instance), chain_owner()
        )
    except PlumbingError as exc:
        raise DriverError(f"network {network.name}: {exc}") from None


def port_detach(instance: Instance, forget: bool = True) -> None:
    """Remove the instance's veth, namespace and rules and, unless only stopping (``forget`` is
    False: it keeps its address), its DHCP reservation."""
    try:
        plumbing.port_rules_remove(instance.port_name, chain_owner())
        if instance.kind == InstanceKind.CONTAINER:
            plumbing.port_detach_netns(instance.netns_name, instance.port_name)
        if forget and instance.network is not None and instance.host is not None:
            _dhcp(instance.network, instance.host, without=instance)
    except PlumbingError as exc:
        raise DriverError(f"network port of {instance.name}: {exc}") from None


def remove_dead_bridges() -> list[str]:
    """Remove this deployment's bridges whose network was deleted; the names removed.

    Also run before a network's first bridge on the host is made: a deleted network's subnet may
    be handed out again, and two bridges with one subnet would split the host's routes.
    """
    live_networks = {
        str(u)
        for u in Network.objects.unscoped().filter(deleted_at__isnull=True).values_list("uuid", flat=True)
    }
    removed = []
    for bridge, alias in plumbing.bridges_list(tag_prefix()).items():
        owner = alias_owner(alias)
        if owner is not None and owner not in live_networks:
            plumbing.bridge_remove(bridge, Path(settings.NUBIS_NETWORK_STATE_DIR) / bridge, chain_owner())
            removed.append(bridge)
    return removed


def _port_names(instances: Any) -> set[str]:
    return {Instance(uuid=u, kind=k).port_name for u, k in instances.values_list("uuid", "kind")}


def remove_dead_rules() -> list[str]:
    """Remove this deployment's port and network chains that no live instance or network needs.

    A VM's tap vanishes with its domain, so an agent killed between destroying a domain and
    removing its rules leaves chains with no interface: found by their owner id, not by interface.
    Chains are listed before the database is read, so a chain made meanwhile for a new instance
    (whose row exists before its rules) is never taken for dead. Every host's instances count:
    agents of several hosts may share one machine (and its iptables).
    """
    owner = chain_owner()
    ports = plumbing.port_chains_list(owner)
    bridges = plumbing.network_chains_list(owner)
    legacy = plumbing.legacy_port_chains_list()
    if not ports and not bridges and not legacy:
        return []
    needed = _port_names(Instance.objects.unscoped().exclude(state=InstanceState.DELETED))
    live_bridges = {n.bridge for n in Network.objects.unscoped().filter(deleted_at__isnull=True)}
    if legacy:
        # Chains of an older version (no owner in their name) are ours when the port was one of
        # our instances' (the deleted ones' rows remain).
        ports |= legacy & _port_names(Instance.objects.unscoped().filter(state=InstanceState.DELETED))
    removed = []
    for port in sorted(ports - needed):
        plumbing.port_rules_remove(port, owner)
        removed.append(port)
    for bridge in sorted(bridges - live_bridges):
        plumbing.bridge_remove(bridge, Path(settings.NUBIS_NETWORK_STATE_DIR) / bridge, owner)
        removed.append(bridge)
    return removed


def host_networks_sync(host: Host) -> dict[str, list[str]]:
    """Bring this host's bridges, DHCP, NAT and port rules in line with the database.

    Bridges and ports of this deployment whose network or instance is gone are removed.
    """
    done: dict[str, list[str]] = {
        "networks": [],
        "removed_bridges": [],
        "removed_ports": [],
        "removed_rules": [],
    }
    plumbing.firewall_base_ensure()
    live = (
        Instance.objects.unscoped()
        .filter(host=host)
        .exclude(network=None)
        .exclude(state__in=[InstanceState.DELETED, InstanceState.ERROR])
        .select_related("network")
        .prefetch_related(Prefetch("security_groups", queryset=SecurityGroup.objects.unscoped()))
    )
    networks: dict[int, Network] = {}
    for instance in live:
        if instance.network is None:
            continue
        if instance.network.pk not in networks:
            networks[instance.network.pk] = instance.network
            plumbing.network_ensure(net_spec(instance.network))
            _dhcp(instance.network, host)
            done["networks"].append(instance.network.name)
        plumbing.port_rules_set(
            instance.port_name, str(instance.ip_address), rules_of(instance), chain_owner()
        )
    prefix = tag_prefix()
    done["removed_bridges"] = remove_dead_bridges()
    live_instances = {
        str(u)
        for u in Instance.objects.unscoped()
        .exclude(state=InstanceState.DELETED)
        .values_list("uuid", flat=True)
    }
    for port, alias in plumbing.ports_list(prefix).items():
        uid = alias_owner(alias)
        if uid is not None and uid not in live_instances:
            plumbing.port_rules_remove(port, chain_owner())
            plumbing.port_detach_netns(f"{settings.NUBIS_DOMAIN_PREFIX}{uid}", port)
            done["removed_ports"].append(port)
    # A namespace named for a container whose veth was never made (an agent killed in between).
    for name in plumbing.netns_list():
        owner = domain_uuid(name)
        if owner is not None and owner not in live_instances:
            plumbing.netns_remove(name)
            done["removed_ports"].append(f"netns:{name}")
    done["removed_rules"] = remove_dead_rules()
    return done
