"""Agent-side floating addresses and port forwards: each instance's NAT on the host that runs it.

Derived from the database like the rest of a host's networking (compute.services.ports): the
instance's floating address and port forwards are applied with its port (``port_attach``) on the
host it runs on, never on the target of a move that has not happened yet (the address would be
answered for on two hosts); removed with its port; re-applied by every ``host_networks_sync``, which
also removes the NAT of instances no host of this machine runs any more (a move's source, a
disassociated address, a deleted instance).
"""

from __future__ import annotations

import logging

from compute.drivers import network as plumbing
from compute.drivers.network.overlay import underlay_network
from compute.models import FloatingIP, Host, Instance, InstanceKind, InstanceState, PortForward

logger = logging.getLogger(__name__)

NO_NAT = (InstanceState.DELETED, InstanceState.ERROR, InstanceState.DELETING)


def nat_spec(instance: Instance, host: Host, owner: str) -> plumbing.NatSpec | None:
    """The instance's NAT on HOST, or None when it has none (no floating address or forward, no
    tenant network, or it is not running there)."""
    if (
        instance.network is None
        or instance.ip_address is None
        or instance.host_id != host.pk
        or instance.state in NO_NAT
    ):
        return None
    fip = (
        FloatingIP.objects.for_tenant(instance.tenant_id)
        .filter(instance=instance)
        .select_related("pool")
        .first()
    )
    forwards = tuple(
        PortForward.objects.for_tenant(instance.tenant_id)
        .filter(instance=instance)
        .order_by("host_port")
        .values_list("host_port", "port")
    )
    if fip is None and not forwards:
        return None
    floating = None
    if fip is not None:
        pool = fip.pool
        floating = plumbing.Floating(
            address=str(fip.address),
            interface=pool.interface,
            cidr=pool.cidr,
            gateway=str(pool.gateway or ""),
        )
    return plumbing.NatSpec(
        port=instance.port_name,
        private=str(instance.ip_address),
        bridge=instance.network.bridge,
        owner=owner,
        floating=floating,
        forwards=forwards,
        underlay=underlay_network(str(host.address)) if host.address else "",
    )


def instance_nat_apply(instance: Instance, host: Host, owner: str) -> bool:
    """Bring the instance's NAT on HOST in line with the database; True if it has some there."""
    spec = nat_spec(instance, host, owner)
    if spec is None:
        plumbing.instance_nat_remove(instance.port_name, owner)
        return False
    plumbing.instance_nat_set(spec)
    if instance.kind == InstanceKind.CONTAINER and instance.network is not None:
        # Its port gives a container its default route; one whose port was set up before that
        # rule (an older Nubis) gets it here, if it has none.
        plumbing.netns_default_route(instance.netns_name, instance.network.gateway)
    return True


def needs_nat(instance: Instance) -> bool:
    return (
        FloatingIP.objects.for_tenant(instance.tenant_id).filter(instance=instance).exists()
        or PortForward.objects.for_tenant(instance.tenant_id).filter(instance=instance).exists()
    )


def remove_dead_nat(hosts: set[str], owner: str) -> list[str]:
    """Remove the NAT of ports no instance running on HOSTS (this machine's) has NAT for any more."""
    present = plumbing.nat_chains_list(owner)
    if not present:
        return []
    with_nat = (
        Instance.objects.unscoped()
        .filter(host__name__in=hosts)
        .exclude(state__in=NO_NAT)
        .exclude(network=None)
        .filter(pk__in=nat_instances())
    )
    needed = {i.port_name for i in with_nat.only("uuid", "kind")}
    removed = []
    for port in sorted(present - needed):
        plumbing.instance_nat_remove(port, owner)
        removed.append(port)
    return removed


def nat_instances() -> set[int]:
    """Ids of the instances with a floating address or a port forward."""
    ids = set(FloatingIP.objects.unscoped().exclude(instance=None).values_list("instance_id", flat=True))
    ids |= set(PortForward.objects.unscoped().values_list("instance_id", flat=True))
    return {i for i in ids if i is not None}
