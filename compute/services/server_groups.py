"""Server groups: instances a tenant wants on one host (affinity) or apart (anti-affinity)."""

from __future__ import annotations

from django.db import IntegrityError, transaction

from compute.models import GroupPolicy, Instance, ServerGroup
from compute.services.networks import in_use, name_ok
from core.errors import Conflict, ServiceError
from security.audit import Actor, audit_log
from tenants.models import Tenant


@transaction.atomic
def server_group_create(*, actor: Actor, tenant: Tenant, name: str, policy: str) -> ServerGroup:
    """A new, empty server group; its policy is fixed for its life (members were placed by it)."""
    if not name_ok(name):
        raise ServiceError("name", "name", f"invalid name {name!r}: 1-63 letters, digits, - or _")
    if policy not in GroupPolicy.values:
        raise ServiceError("policy", "choice", f"policy must be one of {', '.join(GroupPolicy.values)}")
    try:
        with transaction.atomic():
            group = ServerGroup.objects.create(tenant=tenant, name=name, policy=policy)
    except IntegrityError:
        raise Conflict("name", "unique", f"a server group named {name!r} already exists") from None
    audit_log(actor=actor, action="servergroup.create", target=group, detail={"policy": policy})
    return group


def server_group_in_use(group: ServerGroup) -> Conflict | None:
    """The refusal to delete a server group with live members, naming them; None when it has none."""
    members = Instance.objects.for_tenant(group.tenant_id).filter(server_group=group)
    return in_use("server_group", f"server group {group.name!r}", members)


@transaction.atomic
def server_group_delete(*, actor: Actor, group: ServerGroup) -> None:
    """Delete a group that no live instance belongs to (refused with a Conflict naming them)."""
    # Locked as placement locks it: a member being placed meanwhile is seen, or waits and fails.
    locked = ServerGroup.objects.for_tenant(group.tenant_id).select_for_update().get(pk=group.pk)
    refusal = server_group_in_use(locked)
    if refusal is not None:
        raise refusal
    # Deleted instances keep no claim on the group.
    Instance.objects.for_tenant(locked.tenant_id).filter(server_group=locked).update(server_group=None)
    audit_log(actor=actor, action="servergroup.delete", target=locked)
    locked.delete()
