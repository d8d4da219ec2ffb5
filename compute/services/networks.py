"""Tenant networks and security groups on the control side: validation, addresses, and telling hosts.

A network is an isolated L2 segment with an IPv4 subnet; its gateway is the first address and
instances get the next free ones (reserved for their MAC in the network's DHCP server). A
security group is a set of ingress allow rules; an instance in no group accepts traffic from its
own network only.
"""

from __future__ import annotations

import ipaddress
from typing import Any

from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone

from compute.models import (
    Host,
    Instance,
    InstanceState,
    Network,
    Protocol,
    SecurityGroup,
    SecurityRule,
)
from compute.selectors import networks_for
from core.errors import Conflict, ServiceError
from core.queues import send_task_after_commit
from security.audit import Actor, audit_log
from tenants.models import Tenant

NETWORK_PREFIXES = (16, 29)  # smallest and largest prefix length a tenant subnet may have
# Ranges no tenant subnet may overlap: this host's own, and what is never routable.
ALWAYS_RESERVED = ("0.0.0.0/8", "127.0.0.0/8", "169.254.0.0/16", "224.0.0.0/4", "240.0.0.0/4")
NOT_LIVE = (InstanceState.DELETED,)
SYNC_EXPIRES = 300.0  # seconds; the reconciler re-applies everything anyway


def name_ok(name: str) -> bool:
    return 0 < len(name) <= 63 and name[0].isalpha() and all(c.isalnum() or c in "-_" for c in name)


def parse_cidr(value: str, field: str, prefixes: tuple[int, int] = (0, 32)) -> ipaddress.IPv4Network:
    """An IPv4 network in CIDR form, or a ServiceError saying what is wrong with it."""
    text = str(value or "").strip()
    try:
        net = ipaddress.IPv4Network(text, strict=False)
    except (ipaddress.AddressValueError, ipaddress.NetmaskValueError, ValueError) as exc:
        raise ServiceError(field, "cidr", f"invalid CIDR {text!r}: {exc}") from None
    if "/" not in text:
        raise ServiceError(field, "cidr", f"invalid CIDR {text!r}: give the prefix length, as in {net}")
    if str(net) != text:
        raise ServiceError(field, "cidr", f"invalid CIDR {text!r}: it has host bits set; did you mean {net}?")
    low, high = prefixes
    if not low <= net.prefixlen <= high:
        raise ServiceError(field, "cidr", f"invalid CIDR {text!r}: the prefix must be /{low} to /{high}")
    return net


def _reserved() -> list[ipaddress.IPv4Network]:
    extra = [s for s in settings.NUBIS_RESERVED_SUBNETS if s]
    return [ipaddress.IPv4Network(s) for s in (*ALWAYS_RESERVED, *extra)]


def host_routes() -> list[tuple[ipaddress.IPv4Network, str]]:
    """Subnets routed, or with an address, on any compute host, whoever made them: (subnet, where).

    The allocator runs in the control process, which need not be a compute host and never
    touches one: each agent reports its host's routes with its heartbeat (Host.routes).
    Routes through this deployment's own bridges are left out: their subnets are networks in the
    database, and a deleted network's bridge is about to go (port_attach removes it first).
    """
    ours = {f"nbr{u.hex[:12]}" for u in Network.objects.unscoped().values_list("uuid", flat=True)}
    reported: list[tuple[str, list[dict[str, str]]]] = [
        (f"host {name}", routes or [])
        for name, routes in Host.objects.filter(simulated=False).values_list("name", "routes")
    ]
    found: list[tuple[ipaddress.IPv4Network, str]] = []
    for where, routes in reported:
        for route in routes:
            if not isinstance(route, dict) or route.get("dev") in ours:
                continue
            try:
                subnet = ipaddress.IPv4Network(str(route.get("cidr")), strict=False)
            except ValueError:
                continue
            found.append((subnet, f"{subnet} (dev {route.get('dev') or '?'}) on {where}"))
    return found


def _check_routes(net: ipaddress.IPv4Network) -> None:
    for subnet, where in host_routes():
        if net.overlaps(subnet):
            raise ServiceError(
                "cidr",
                "route",
                f"subnet {net} overlaps the route {where}: another network is there already "
                "(another deployment, libvirt, Docker, a VPN); choose another subnet",
            )


def _check_overlap(tenant: Tenant, net: ipaddress.IPv4Network) -> None:
    for reserved in _reserved():
        if net.overlaps(reserved):
            raise ServiceError("cidr", "reserved", f"subnet {net} overlaps {reserved}, which is reserved")
    live = Network.objects.unscoped().filter(deleted_at__isnull=True).values_list("tenant_id", "name", "cidr")
    for owner, name, cidr in live:
        if not net.overlaps(ipaddress.IPv4Network(cidr)):
            continue
        if owner == tenant.pk:
            raise Conflict(
                "cidr", "overlap", f"subnet {net} overlaps network {name!r} ({cidr}) of this tenant"
            )
        # Bridges of all tenants share each host's routing table, so subnets are unique cloud-wide;
        # the other tenant is not named.
        raise Conflict("cidr", "overlap", f"subnet {net} overlaps a subnet already in use; choose another")
    _check_routes(net)


@transaction.atomic
def network_create(
    *, actor: Actor, tenant: Tenant, name: str, cidr: str, nat_egress: bool = False, audit: bool = True
) -> Network:
    """A new network; ``audit=False`` when it is part of another recorded action (a default network)."""
    if not name_ok(name):
        raise ServiceError("name", "name", f"invalid name {name!r}: 1-63 letters, digits, - or _")
    net = parse_cidr(cidr, "cidr", NETWORK_PREFIXES)
    # Serialise creations, so two overlapping subnets cannot both pass the check.
    Tenant.objects.select_for_update().filter(pk=tenant.pk).first()
    list(Network.objects.unscoped().select_for_update().filter(deleted_at__isnull=True).values("pk"))
    _check_overlap(tenant, net)
    try:
        with transaction.atomic():
            network = Network.objects.create(
                tenant=tenant,
                name=name,
                cidr=str(net),
                gateway=str(net.network_address + 1),
                nat_egress=bool(nat_egress),
            )
    except IntegrityError:
        raise Conflict("name", "unique", f"a network named {name!r} already exists") from None
    if audit:
        audit_log(actor=actor, action="network.create", target=network, detail={"cidr": str(net)})
    return network


@transaction.atomic
def network_update(*, actor: Actor, network: Network, nat_egress: bool | None = None) -> Network:
    locked = Network.objects.for_tenant(network.tenant_id).select_for_update().get(pk=network.pk)
    if nat_egress is not None and nat_egress != locked.nat_egress:
        locked.nat_egress = nat_egress
        locked.save(update_fields=["nat_egress"])
        audit_log(actor=actor, action="network.update", target=locked, detail={"nat_egress": nat_egress})
        hosts_sync(_hosts_of(Instance.objects.for_tenant(locked.tenant_id).filter(network=locked)))
    return locked


def network_in_use(network: Network) -> Conflict | None:
    """The refusal to delete a network live instances are on, naming them; None when it is free."""
    return in_use(
        "network",
        f"network {network.name!r}",
        Instance.objects.for_tenant(network.tenant_id).filter(network=network),
    )


@transaction.atomic
def network_delete(*, actor: Actor, network: Network) -> None:
    """Delete a network no live instance is on (refused with a Conflict naming them)."""
    # Locked: a create attaching an instance to it locks it too, so the two go one after the other.
    locked = Network.objects.for_tenant(network.tenant_id).select_for_update().get(pk=network.pk)
    refusal = network_in_use(locked)
    if refusal is not None:
        raise refusal
    locked.deleted_at = timezone.now()
    locked.save(update_fields=["deleted_at"])
    audit_log(actor=actor, action="network.delete", target=locked)
    hosts_sync(Host.objects.filter(simulated=False))


DEFAULT_NAME = "default"


def default_network(tenant: Tenant, actor: Actor) -> Network:
    """The tenant's network named "default", made on first use with the first free /24 of the pool."""
    found = networks_for(tenant).filter(name=DEFAULT_NAME).first()
    if found is not None:
        return found
    Tenant.objects.select_for_update().filter(pk=tenant.pk).first()  # one creator per tenant
    found = networks_for(tenant).filter(name=DEFAULT_NAME).first()
    if found is not None:
        return found
    list(Network.objects.unscoped().select_for_update().filter(deleted_at__isnull=True).values("pk"))
    used = [
        ipaddress.IPv4Network(c)
        for c in Network.objects.unscoped().filter(deleted_at__isnull=True).values_list("cidr", flat=True)
    ] + _reserved()
    # Also what is routed on a host already: another deployment's bridges, libvirt's, Docker's, a VPN's.
    used += [subnet for subnet, _where in host_routes()]
    pool = ipaddress.IPv4Network(settings.NUBIS_NETWORK_POOL)
    for subnet in pool.subnets(new_prefix=max(24, pool.prefixlen)):
        if not any(subnet.overlaps(u) for u in used):
            # Recorded with the instance.create that needs it (its detail names the network).
            return network_create(
                actor=actor, tenant=tenant, name=DEFAULT_NAME, cidr=str(subnet), audit=False
            )
    raise Conflict(
        "network",
        "pool",
        f"no free /24 is left in the network pool {pool} (skipped: subnets of networks, reserved ones, "
        "and those routed on a compute host)",
    )


USERS_NAMED = 5  # an in-use refusal names this many instances, then says how many more


def in_use(field: str, what: str, instances: Any) -> Conflict | None:
    """The refusal to delete ``what`` while live instances among ``instances`` use it, naming them.

    One wording for networks, security groups and server groups, e.g. "network 'blue' is used by
    instances web1, db2"; None when no live instance uses it.
    """
    live = instances.exclude(state__in=NOT_LIVE).order_by("name")
    names = list(live.values_list("name", flat=True)[: USERS_NAMED + 1])
    if not names:
        return None
    more = ""
    if len(names) > USERS_NAMED:
        names = names[:USERS_NAMED]
        more = f" and {live.count() - USERS_NAMED} more"
    noun = "instance" if len(names) == 1 else "instances"
    return Conflict(field, "in_use", f"{what} is used by {noun} {', '.join(names)}{more}")


def address_allocate(network: Network, instance: Instance) -> str:
    """The lowest free address of the subnet after the gateway (caller holds the network's row lock)."""
    net = ipaddress.IPv4Network(network.cidr)
    taken = set(
        Instance.objects.for_tenant(network.tenant_id)
        .filter(network=network, ip_address__isnull=False)
        .exclude(state__in=NOT_LIVE)
        .exclude(pk=instance.pk)
        .values_list("ip_address", flat=True)
    )
    taken.add(network.gateway)
    for address in net.hosts():
        if str(address) not in taken:
            return str(address)
    raise Conflict("network", "full", f"network {network.name!r} ({network.cidr}) has no free address")


def mac_for(instance: Instance) -> str:
    """A locally administered MAC in QEMU's range, derived from the instance UUID."""
    tail = instance.uuid.bytes[-3:]
    return "52:54:00:" + ":".join(f"{b:02x}" for b in tail)


def attach_to_network(instance: Instance, network: Network | None) -> None:
    """Give a new instance its port: MAC and address on ``network`` (inside the create transaction)."""
    instance.mac_address = mac_for(instance)
    if network is None:
        instance.save(update_fields=["mac_address", "updated"])
        return
    locked = Network.objects.for_tenant(network.tenant_id).select_for_update().get(pk=network.pk)
    instance.network = locked
    instance.ip_address = address_allocate(locked, instance)
    instance.save(update_fields=["network", "ip_address", "mac_address", "updated"])


# -- security groups ---------------------------------------------------------------------------
def group_by_ref(tenant: Tenant, ref: str | int) -> SecurityGroup:
    lookup: dict[str, Any] = {"pk": int(ref)} if str(ref).isdigit() else {"name": ref}
    group = SecurityGroup.objects.for_tenant(tenant).filter(**lookup).first()
    if group is None:
        raise ServiceError("security_groups", "exists", f"unknown security group {ref!r}")
    return group


@transaction.atomic
def group_create(*, actor: Actor, tenant: Tenant, name: str, description: str = "") -> SecurityGroup:
    if not name_ok(name):
        raise ServiceError("name", "name", f"invalid name {name!r}: 1-63 letters, digits, - or _")
    try:
        with transaction.atomic():
            group = SecurityGroup.objects.create(tenant=tenant, name=name, description=description[:200])
    except IntegrityError:
        raise Conflict("name", "unique", f"a security group named {name!r} already exists") from None
    audit_log(actor=actor, action="secgroup.create", target=group)
    return group


def group_in_use(group: SecurityGroup) -> Conflict | None:
    """The refusal to delete a security group live instances use, naming them; None when it is free."""
    users = Instance.objects.for_tenant(group.tenant_id).filter(security_groups=group)
    return in_use("security_group", f"security group {group.name!r}", users)


@transaction.atomic
def group_delete(*, actor: Actor, group: SecurityGroup) -> None:
    """Delete a security group no live instance uses (refused with a Conflict naming them)."""
    # Locked: an instance given the group meanwhile (its row references this one) either committed
    # before, and is seen, or waits and then fails; the delete never takes a group off an instance.
    locked = SecurityGroup.objects.for_tenant(group.tenant_id).select_for_update().get(pk=group.pk)
    refusal = group_in_use(locked)
    if refusal is not None:
        raise refusal
    audit_log(actor=actor, action="secgroup.delete", target=locked)
    locked.delete()


def _port(value: Any, field: str) -> int:
    try:
        port = int(value)
    except (TypeError, ValueError):
        raise ServiceError(field, "port", f"{field} must be a port number, not {value!r}") from None
    if not 1 <= port <= 65535:
        raise ServiceError(field, "port", f"{field} must be between 1 and 65535, not {port}")
    return port


@transaction.atomic
def rule_create(
    *,
    actor: Actor,
    group: SecurityGroup,
    protocol: str,
    cidr: str,
    port_min: Any = None,
    port_max: Any = None,
) -> SecurityRule:
    if protocol not in Protocol.values:
        raise ServiceError("protocol", "choice", f"protocol must be one of {', '.join(Protocol.values)}")
    net = parse_cidr(cidr, "cidr")
    low: int | None = None
    high: int | None = None
    if protocol in (Protocol.TCP, Protocol.UDP):
        if port_min in (None, ""):
            raise ServiceError("port_min", "required", f"a {protocol} rule needs port_min")
        low = _port(port_min, "port_min")
        high = _port(port_max, "port_max") if port_max not in (None, "") else low
        if high < low:
            raise ServiceError("port_max", "range", f"port_max {high} is below port_min {low}")
    elif port_min not in (None, "") or port_max not in (None, ""):
        raise ServiceError("port_min", "ports", f"a {protocol} rule has no ports")
    rule = SecurityRule.objects.create(
        tenant_id=group.tenant_id, group=group, protocol=protocol, cidr=str(net), port_min=low, port_max=high
    )
    audit_log(actor=actor, action="secgroup.rule_create", target=group, detail={"rule": str(rule)})
    hosts_sync(_hosts_of(Instance.objects.for_tenant(group.tenant_id).filter(security_groups=group).all()))
    return rule


@transaction.atomic
def rule_delete(*, actor: Actor, rule: SecurityRule) -> None:
    group = rule.group
    audit_log(actor=actor, action="secgroup.rule_delete", target=group, detail={"rule": str(rule)})
    rule.delete()
    hosts_sync(_hosts_of(Instance.objects.for_tenant(group.tenant_id).filter(security_groups=group).all()))


@transaction.atomic
def instance_groups_set(*, actor: Actor, instance: Instance, groups: list[SecurityGroup]) -> None:
    for group in groups:
        if group.tenant_id != instance.tenant_id:
            raise ServiceError("security_groups", "exists", f"unknown security group {group.pk}")
    instance.groups_set(groups)
    audit_log(
        actor=actor,
        action="instance.security_groups",
        target=instance,
        detail={"groups": [g.name for g in groups]},
    )
    hosts_sync(_hosts_of(Instance.objects.for_tenant(instance.tenant_id).filter(pk=instance.pk)))


def _hosts_of(instances: Any) -> Any:
    host_ids = instances.exclude(state__in=NOT_LIVE).exclude(host=None).values("host_id")
    return Host.objects.filter(pk__in=host_ids)


def hosts_sync(hosts: Any) -> None:
    """Ask each live host's agent to bring its bridges, DHCP and port rules in line, after commit.

    A host whose agent is silent is skipped (it syncs when its agent starts), and a request
    expires unread after SYNC_EXPIRES, so no queue of a dead host fills up.
    """
    for host in hosts:
        if host.heartbeat_fresh():
            send_task_after_commit(
                "compute.networks_sync", queue=host.queue, args=(host.name,), expires=SYNC_EXPIRES
            )
