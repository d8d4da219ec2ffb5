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
from django.db.models import Prefetch, Q

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
from compute.services import nat
from compute.services.networks import hosts_sync

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


def gateway_mac(network: Network) -> str:
    """The distributed gateway's MAC: the same on every host of the network, so an instance that
    moves keeps a right ARP cache."""
    return f"{plumbing.GATEWAY_OUI}:" + ":".join(f"{b:02x}" for b in network.uuid.bytes[:3])


def vni_of(network: Network) -> int:
    """The network's VXLAN id: its row id, shifted by this deployment's id (two deployments on one
    set of hosts do not share ids for their first networks), one to one on 1..2^24-1."""
    span = (1 << 24) - 1
    return (network.pk - 1 + int(chain_owner()[:6], 16)) % span + 1


NO_PORT = (InstanceState.DELETED, InstanceState.ERROR)


def network_hosts(network: Network) -> Any:
    """The hosts the network has live instances on, or moving to (its bridges, and the ends of its
    tunnel: a move's target joins before the guest arrives, so no frame is lost at the switch)."""
    live = Instance.objects.unscoped().filter(network=network).exclude(state__in=NO_PORT)
    on = live.exclude(host=None).values("host_id")
    incoming = live.exclude(migration_host=None).values("migration_host_id")
    return Host.objects.filter(Q(pk__in=on) | Q(pk__in=incoming), simulated=False)


def _here(host: Host | Any) -> Q:
    """Instances on ``host`` (a Host, or a name__in lookup value set), or moving to it."""
    if isinstance(host, Host):
        return Q(host=host) | Q(migration_host=host)
    return Q(host__name__in=host) | Q(migration_host__name__in=host)


def net_spec(network: Network, host: Host | None = None) -> NetSpec:
    """The network on ``host``: with a tunnel to the network's other hosts when ``host`` has an
    address on the hosts' network (a cluster), else the bridge alone."""
    overlay = None
    if host is not None and host.address:
        peers = (
            network_hosts(network)
            .exclude(pk=host.pk)
            .exclude(address=None)
            .order_by("address")
            .values_list("address", flat=True)
        )
        overlay = plumbing.Overlay(vni=vni_of(network), local=str(host.address), peers=tuple(map(str, peers)))
    return NetSpec(
        bridge=network.bridge,
        cidr=network.cidr,
        gateway=network.gateway,
        nat=network.nat_egress,
        tag=f"{tag_prefix()}{network.uuid}",
        state_dir=Path(settings.NUBIS_NETWORK_STATE_DIR) / network.bridge,
        owner=chain_owner(),
        mac=gateway_mac(network),
        overlay=overlay,
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
        .filter(_here(host), network=network)
        .exclude(state__in=NO_PORT)
        .exclude(ip_address=None)
    )


def _dhcp(network: Network, host: Host, without: Instance | None = None) -> None:
    """Reserve each instance's address for its MAC in the network's DHCP server on this host."""
    hosts = [
        (i.mac_address, str(i.ip_address), i.name)
        for i in _on_host(network, host)
        if without is None or i.pk != without.pk
    ]
    plumbing.dhcp_hosts_set(net_spec(network, host), hosts)


def port_attach(instance: Instance, pid: int | None = None, host: Host | None = None) -> None:
    """Bridge, DHCP reservation, the port's rules and, for a running container (``pid``), its veth,
    on the instance's host (or ``host``: the target of its move).

    A VM's tap is made by libvirt when it starts, named after the port; its rules wait for it.
    The network's first instance on a host brings its bridge (and tunnel) up there, and tells the
    network's other hosts to add this one to their tunnels.
    """
    network = instance.network
    host = host or instance.host
    if network is None or host is None:
        return
    try:
        with plumbing.host_lock():
            spec = net_spec(network, host)
            # For the network's other instances here, the reconciler and the networks_sync task keep
            # the bridge in line, so a create need not check it all.
            first = not plumbing.bridge_exists(spec.bridge)
            if first:
                remove_dead_bridges()
                plumbing.network_ensure(spec)
            _dhcp(network, host)
        if instance.kind == InstanceKind.CONTAINER and pid is not None:
            plumbing.netns_bind(instance.netns_name, pid)
            prefix = ipaddress.IPv4Network(network.cidr).prefixlen
            plumbing.port_attach_netns(
                instance.netns_name,
                spec.bridge,
                instance.port_name,
                instance.mac_address,
                f"{instance.ip_address}/{prefix}",
                network.gateway,  # as DHCP gives VMs (compute.drivers.network.dhcp)
                f"{tag_prefix()}{instance.uuid}",
            )
        plumbing.port_rules_set(
            instance.port_name, str(instance.ip_address), rules_of(instance), chain_owner()
        )
        if nat.needs_nat(instance):  # floating address, port forwards: only where it runs
            nat.instance_nat_apply(instance, host, chain_owner())
    except PlumbingError as exc:
        raise DriverError(f"network {network.name}: {exc}") from None
    if first and spec.overlay is not None:
        _tell_peers(network, host)


def _tell_peers(network: Network, host: Host) -> None:
    """The network's other hosts bring their tunnels in line (this host joined or left it)."""
    hosts_sync(Host.objects.filter(pk__in=network_hosts(network).exclude(pk=host.pk).values("pk")))


def port_detach(instance: Instance, forget: bool = True, host: Host | None = None) -> None:
    """Remove the instance's veth, namespace and rules and, unless only stopping (``forget`` is
    False: it keeps its address), its DHCP reservation, on its host (or ``host``: the one a move
    left, or the target of a move that failed). The network's last instance on the host takes its
    bridge (and tunnel) with it."""
    network = instance.network
    host = host or instance.host
    last = False
    try:
        # Under the host's lock, as host_networks_sync reads the database and applies it: a sync
        # that saw the instance alive finishes before its port goes, and the next one sees it going.
        with plumbing.host_lock():
            plumbing.instance_nat_remove(instance.port_name, chain_owner())  # it uses the port's chains
            plumbing.port_rules_remove(instance.port_name, chain_owner())
            if instance.kind == InstanceKind.CONTAINER:
                plumbing.port_detach_netns(instance.netns_name, instance.port_name)
            if forget and network is not None and host is not None:
                last = not _others_on_host(network, host, instance)
                if last:
                    plumbing.network_remove(net_spec(network, host))
                else:
                    _dhcp(network, host, without=instance)
    except PlumbingError as exc:
        raise DriverError(f"network port of {instance.name}: {exc}") from None
    if last and network is not None and host is not None and host.address:
        _tell_peers(network, host)


def nat_follow(instance: Instance, target: Host) -> None:
    """A live move ended: the target's agent takes over the instance's floating address and port
    forwards (the source's went with its port). Prepared ports get none: only the host the
    instance runs on may answer for its floating address."""
    if nat.needs_nat(instance):
        hosts_sync(Host.objects.filter(pk=target.pk))


def machine_hosts(host: Host) -> set[str]:
    """The hosts whose agents share this machine's network stack: this one, and every host that
    left its mark here (agents of several hosts may run on one machine, as the tests' do; a lab
    host has a /run of its own). A bridge goes only when none of them needs it."""
    marks = Path(settings.NUBIS_NETWORK_STATE_DIR).parent / "hosts"
    try:
        marks.mkdir(parents=True, exist_ok=True)
        (marks / host.name).touch()
        return {p.name for p in marks.iterdir()} | {host.name}
    except OSError as exc:
        logger.warning("cannot mark host %s in %s: %s", host.name, marks, exc)
        return {host.name}


def _others_on_host(network: Network, host: Host, instance: Instance) -> bool:
    """Whether other live instances of the network are on this machine's hosts (placed there,
    whatever their state: a scheduled one's create is about to need the bridge)."""
    return (
        Instance.objects.unscoped()
        .filter(_here(machine_hosts(host)), network=network)
        .exclude(state__in=NO_PORT)
        .exclude(pk=instance.pk)
        .exists()
    )


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
        plumbing.instance_nat_remove(port, owner)
        plumbing.port_rules_remove(port, owner)
        removed.append(port)
    for bridge in sorted(bridges - live_bridges):
        plumbing.bridge_remove(bridge, Path(settings.NUBIS_NETWORK_STATE_DIR) / bridge, owner)
        removed.append(bridge)
    return removed


def host_networks_sync(host: Host) -> dict[str, list[str]]:
    """Bring this host's bridges, tunnels, DHCP, NAT and port rules in line with the database.

    Bridges and ports of this deployment whose network or instance is gone are removed, and so is
    the bridge of a network with no instance left on this host.
    """
    done: dict[str, list[str]] = {
        "networks": [],
        "removed_bridges": [],
        "removed_ports": [],
        "removed_rules": [],
        "nat": [],
        "removed_nat": [],
    }
    with_nat = nat.nat_instances()
    plumbing.firewall_base_ensure()
    with plumbing.host_lock():
        live = (
            Instance.objects.unscoped()
            .filter(_here(host))
            .exclude(network=None)
            .exclude(state__in=NO_PORT)
            .select_related("network")
            .prefetch_related(Prefetch("security_groups", queryset=SecurityGroup.objects.unscoped()))
        )
        networks: dict[int, Network] = {}
        for instance in live:
            if instance.network is None or instance.state == InstanceState.DELETING:
                continue  # a deleting instance's port goes with its delete: nothing to add back
            if instance.network.pk not in networks:
                networks[instance.network.pk] = instance.network
                plumbing.network_ensure(net_spec(instance.network, host))
                _dhcp(instance.network, host)
                done["networks"].append(instance.network.name)
            plumbing.port_rules_set(
                instance.port_name, str(instance.ip_address), rules_of(instance), chain_owner()
            )
            if instance.pk in with_nat:
                try:
                    if nat.instance_nat_apply(instance, host, chain_owner()):
                        done["nat"].append(instance.name)
                except PlumbingError as exc:  # e.g. its pool's interface is missing on this host:
                    # said for this instance alone; the rest of the host's networks still sync.
                    logger.warning("networks: NAT of %s on %s: %s", instance.name, host.name, exc)
                    done.setdefault("nat_failed", []).append(f"{instance.name}: {exc}"[:300])
        prefix = tag_prefix()
        done["removed_bridges"] = remove_dead_bridges()
        # Networks still alive that have no instance here any more (the last one left or moved).
        here = {
            str(u)
            for u in Instance.objects.unscoped()
            .filter(_here(machine_hosts(host)))
            .exclude(network=None)
            .exclude(state__in=NO_PORT)
            .values_list("network__uuid", flat=True)
        }
        for bridge, alias in plumbing.bridges_list(prefix).items():
            owner = alias_owner(alias)
            if owner is not None and owner not in here:
                plumbing.bridge_remove(bridge, Path(settings.NUBIS_NETWORK_STATE_DIR) / bridge, chain_owner())
                done["removed_bridges"].append(bridge)
    live_instances = {
        str(u)
        for u in Instance.objects.unscoped()
        .exclude(state=InstanceState.DELETED)
        .values_list("uuid", flat=True)
    }
    for port, alias in plumbing.ports_list(prefix).items():
        uid = alias_owner(alias)
        if uid is not None and uid not in live_instances:
            plumbing.instance_nat_remove(port, chain_owner())
            plumbing.port_rules_remove(port, chain_owner())
            plumbing.port_detach_netns(f"{settings.NUBIS_DOMAIN_PREFIX}{uid}", port)
            done["removed_ports"].append(port)
    # A namespace named for a container whose veth was never made (an agent killed in between).
    for name in plumbing.netns_list():
        owner = domain_uuid(name)
        if owner is not None and owner not in live_instances:
            plumbing.netns_remove(name)
            done["removed_ports"].append(f"netns:{name}")
    done["removed_nat"] = nat.remove_dead_nat(machine_hosts(host), chain_owner())
    done["removed_rules"] = remove_dead_rules()
    return done
