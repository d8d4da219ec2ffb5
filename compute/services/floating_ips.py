"""Floating addresses and host port forwards on the control side: allocation, association, quota.

A floating address comes from a staff-defined pool (FloatingPool, the external network) and counts
against the tenant's ``floating_ips`` quota until it is released. Associated with an instance on a
tenant network it is 1:1 NAT to the instance's private address, done by the agent of the host the
instance runs on (compute.services.nat), which every change here asks for (``hosts_sync``, after
commit). A port forward is a host port (from ``NUBIS_PORT_FORWARD_RANGE``) forwarded to one tcp
port of the instance, for clouds without a pool. The instance's security groups decide, in both
cases, what gets in.
"""

from __future__ import annotations

import ipaddress
from typing import Any

from django.conf import settings
from django.db import IntegrityError, transaction

from compute.models import FloatingIP, FloatingPool, Host, Instance, InstanceState, PortForward
from compute.services.networks import hosts_sync
from core.errors import Conflict, ServiceError
from security.audit import Actor, audit_log
from tenants.models import QuotaClaim, Tenant
from tenants.services.quotas import quota_claim, quota_release

NOT_REACHABLE = (InstanceState.DELETING, InstanceState.DELETED, InstanceState.ERROR)
MAX_FORWARDS = 10  # per instance


def _user(actor: Actor) -> Any:
    return actor.user_id


def _sync(instance: Instance | None) -> None:
    """The host running the instance brings its NAT in line (after commit)."""
    if instance is not None and instance.host_id is not None:
        hosts_sync(Host.objects.filter(pk=instance.host_id))


def pool_of(name: str | None) -> FloatingPool:
    """The pool named NAME, or the only (else first by name) pool when NAME is empty."""
    pools = FloatingPool.objects.all()
    if name:
        pool = pools.filter(name=name).first()
        if pool is None:
            raise ServiceError("pool", "exists", f"unknown floating pool {name!r}")
        return pool
    pool = pools.order_by("name").first()
    if pool is None:
        raise Conflict(
            "pool",
            "none",
            "this cloud has no floating pool (an operator defines one in the admin); use a port forward",
        )
    return pool


def _free_address(pool: FloatingPool) -> str:
    start, end = ipaddress.IPv4Address(pool.range_start), ipaddress.IPv4Address(pool.range_end)
    taken = set(FloatingIP.objects.unscoped().values_list("address", flat=True))
    gateway = str(pool.gateway or "")
    for value in range(int(start), int(end) + 1):
        address = str(ipaddress.IPv4Address(value))
        if address not in taken and address != gateway:
            return address
    raise Conflict(
        "pool",
        "exhausted",
        f"floating pool {pool.name!r} has no free address ({pool.range_start}-{pool.range_end})",
    )


@transaction.atomic
def floating_ip_allocate(*, actor: Actor, tenant: Tenant, pool: str | None = None) -> FloatingIP:
    """Take a free address of POOL (the default pool when None) for TENANT, within its quota."""
    chosen = pool_of(pool)
    # One allocation at a time per pool, so two requests never take the same address.
    FloatingPool.objects.select_for_update().filter(pk=chosen.pk).first()
    address = _free_address(chosen)
    fip = FloatingIP.objects.create(tenant=tenant, pool=chosen, address=address, created_by_id=_user(actor))
    quota_claim(tenant, {"floating_ips": 1}, f"floating address {address}", holder=fip)
    audit_log(actor=actor, action="floating_ip.allocate", target=fip, detail={"pool": chosen.name})
    return fip


@transaction.atomic
def floating_ip_release(*, actor: Actor, fip: FloatingIP) -> None:
    """Give the address back to its pool (disassociated first) and its quota to the tenant."""
    locked = FloatingIP.objects.for_tenant(fip.tenant_id).select_for_update().get(pk=fip.pk)
    instance = locked.instance
    for claim in QuotaClaim.objects.for_tenant(locked.tenant_id).filter(
        holder_type__model="floatingip", holder_id=str(locked.pk), released_at__isnull=True
    ):
        quota_release(claim, "floating address released")
    audit_log(actor=actor, action="floating_ip.release", target=locked, detail={"address": locked.address})
    locked.delete()
    _sync(instance)


def _reachable_instance(tenant_id: int, instance: Instance | None, field: str = "instance") -> Instance:
    if instance is None or instance.tenant_id != tenant_id or instance.state == InstanceState.DELETED:
        raise ServiceError(field, "exists", "unknown instance")
    locked = Instance.objects.for_tenant(tenant_id).select_for_update().get(pk=instance.pk)
    if locked.state in NOT_REACHABLE:
        raise Conflict(field, "state", f"instance {locked.name!r} is {locked.state}")
    if locked.network_id is None or locked.ip_address is None:
        raise ServiceError(
            field,
            "network",
            f"instance {locked.name!r} is on no tenant network: its private address is what the "
            "outside reaches",
        )
    return locked


@transaction.atomic
def floating_ip_associate(*, actor: Actor, fip: FloatingIP, instance: Instance) -> FloatingIP:
    """Point the floating address at INSTANCE (of the same tenant, on a tenant network)."""
    locked = FloatingIP.objects.for_tenant(fip.tenant_id).select_for_update().get(pk=fip.pk)
    target = _reachable_instance(locked.tenant_id, instance)
    if locked.instance_id == target.pk:
        return locked
    if locked.instance_id is not None:
        raise Conflict(
            "instance", "associated", f"{locked.address} is associated already; disassociate it first"
        )
    other = FloatingIP.objects.for_tenant(locked.tenant_id).filter(instance=target).first()
    if other is not None:
        raise Conflict(
            "instance", "has_floating", f"instance {target.name!r} has the floating address {other.address}"
        )
    locked.instance = target
    locked.save(update_fields=["instance"])
    audit_log(
        actor=actor, action="floating_ip.associate", target=locked, detail={"instance": str(target.uuid)}
    )
    _sync(target)
    return locked


@transaction.atomic
def floating_ip_disassociate(*, actor: Actor, fip: FloatingIP) -> FloatingIP:
    locked = FloatingIP.objects.for_tenant(fip.tenant_id).select_for_update().get(pk=fip.pk)
    instance = locked.instance
    if instance is None:
        return locked
    locked.instance = None
    locked.save(update_fields=["instance"])
    audit_log(
        actor=actor, action="floating_ip.disassociate", target=locked, detail={"instance": str(instance.uuid)}
    )
    _sync(instance)
    return locked


def instance_unreachable(instance: Instance) -> None:
    """A deleted instance lets go of its floating address (kept by the tenant) and port forwards."""
    FloatingIP.objects.for_tenant(instance.tenant_id).filter(instance=instance).update(instance=None)
    PortForward.objects.for_tenant(instance.tenant_id).filter(instance=instance).delete()


# -- host port forwards --------------------------------------------------------------------------
def forward_range() -> tuple[int, int]:
    low, high = settings.NUBIS_PORT_FORWARD_RANGE
    return int(low), int(high)


def _port(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ServiceError("port", "port", f"port must be a port number, not {value!r}")
    try:
        port = int(value)
    except ValueError:
        raise ServiceError("port", "port", f"port must be a port number, not {value!r}") from None
    if not 1 <= port <= 65535:
        raise ServiceError("port", "port", f"port must be between 1 and 65535, not {port}")
    return port


@transaction.atomic
def port_forward_create(*, actor: Actor, instance: Instance, port: Any) -> PortForward:
    """Forward a free host port (tcp) to PORT of the instance."""
    number = _port(port)
    target = _reachable_instance(instance.tenant_id, instance)
    existing = PortForward.objects.for_tenant(target.tenant_id).filter(instance=target)
    if existing.filter(port=number).exists():
        raise Conflict("port", "unique", f"port {number} of {target.name!r} is forwarded already")
    if existing.count() >= MAX_FORWARDS:
        raise Conflict("port", "limit", f"an instance has at most {MAX_FORWARDS} port forwards")
    low, high = forward_range()
    for _attempt in range(5):
        taken = set(PortForward.objects.unscoped().values_list("host_port", flat=True))
        free = next((p for p in range(low, high + 1) if p not in taken), None)
        if free is None:
            raise Conflict("port", "exhausted", f"no host port is free in {low}-{high}")
        try:
            with transaction.atomic():
                forward = PortForward.objects.create(
                    tenant_id=target.tenant_id,
                    instance=target,
                    port=number,
                    host_port=free,
                    created_by_id=_user(actor),
                )
            break
        except IntegrityError:
            continue  # taken by a concurrent request: the next free one
    else:
        raise Conflict("port", "busy", "host ports are being taken concurrently; try again")
    audit_log(
        actor=actor, action="port_forward.create", target=target, detail={"port": number, "host_port": free}
    )
    _sync(target)
    return forward


@transaction.atomic
def port_forward_delete(*, actor: Actor, forward: PortForward) -> None:
    instance = forward.instance
    audit_log(
        actor=actor,
        action="port_forward.delete",
        target=instance,
        detail={"port": forward.port, "host_port": forward.host_port},
    )
    forward.delete()
    _sync(instance)


def host_address(instance: Instance) -> str | None:
    """Where a port forward is reached: the instance's host's address (None: a lone host, any of
    its addresses)."""
    host = instance.host
    return str(host.address) if host is not None and host.address else None
