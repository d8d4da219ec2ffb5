"""Instances' data keys: made on first use, wrapped by the tenant's key, destroyed with the instance
(crypto-erase), and re-wrapped when the tenant's key rotates. The master key and the wrapping are
security.keys'; the tenant keys are tenants.services.keys'.

A data key is meant as the passphrase of the instance's LUKS disks. Nothing hands it to a host yet:
encrypted disks, and sealing the key to the host that needs it, are still to come (issue 19).
"""

from __future__ import annotations

from typing import Any

from django.db import IntegrityError, transaction
from django.utils import timezone

from compute.models import Instance, InstanceKey
from security.audit import Actor, audit_log
from security.keys import KeyUnavailable, key_id_of, new_key, open_sealed, provider, seal
from tenants.models import Tenant, TenantKey
from tenants.services.keys import tenant_context, tenant_key


def _context(instance: Instance) -> str:
    return f"instance:{instance.uuid}"


def instance_key(instance: Instance) -> bytes:
    """The instance's data key, made and wrapped by its tenant's key on first use. KeyUnavailable
    once it has been destroyed (the instance was deleted)."""
    for _attempt in range(3):
        version, kek = tenant_key(instance.tenant)
        row = InstanceKey.objects.for_tenant(instance.tenant_id).filter(instance=instance).first()
        if row is None:
            wrapped = seal(kek, f"t{version}", new_key(), _context(instance))
            try:
                with transaction.atomic():
                    row = InstanceKey.objects.create(
                        tenant_id=instance.tenant_id,
                        instance=instance,
                        wrapped=wrapped,
                        tenant_key_version=version,
                    )
            except IntegrityError:  # made meanwhile: theirs stands
                row = InstanceKey.objects.for_tenant(instance.tenant_id).get(instance=instance)
        if row.destroyed is not None:
            raise KeyUnavailable(
                f"the data key of {instance.name} was destroyed {row.destroyed:%Y-%m-%d %H:%M:%S}"
            )
        if row.tenant_key_version == version:
            return open_sealed(kek, row.wrapped, _context(instance))
        # The tenant's key rotated between the two reads (a rotation commits both at once): again.
    raise KeyUnavailable(f"the tenant key of {instance.name} kept rotating while it was read")


def instance_key_destroy(instance: Instance, actor: Actor | None = None) -> bool:
    """Crypto-erase: the instance's data key is gone for good (its disks, and any copy of them, no
    longer open); audited. False if it never had one, or it was already destroyed."""
    done = (
        InstanceKey.objects.for_tenant(instance.tenant_id)
        .filter(instance=instance, destroyed__isnull=True)
        .update(wrapped="", destroyed=timezone.now())
    )
    if done:
        audit_log(
            actor=actor or Actor.system("keys"),
            action="instance.key_destroyed",
            target=instance,
            detail={"crypto_erase": True},
        )
    return bool(done)


@transaction.atomic
def tenant_key_rotate(tenant: Tenant, actor: Actor | None = None) -> dict[str, Any]:
    """A new key for ``tenant``: every live data key of its instances is re-wrapped with it, in one
    transaction with the tenant key's change (so no data key is ever wrapped by a key that is not
    the tenant's). Destroyed keys stay destroyed."""
    tenant_key(tenant)  # made if it was not yet
    row = TenantKey.objects.select_for_update().get(tenant=tenant)
    version, old = row.version, provider().unwrap(row.wrapped, tenant_context(tenant.pk))
    fresh = new_key()
    rewrapped = 0
    live = InstanceKey.objects.for_tenant(tenant).filter(destroyed__isnull=True).select_related("instance")
    for key in live.select_for_update(of=("self",)):
        context = _context(key.instance)
        key.wrapped = seal(fresh, f"t{version + 1}", open_sealed(old, key.wrapped, context), context)
        key.tenant_key_version = version + 1
        key.save(update_fields=["wrapped", "tenant_key_version"])
        rewrapped += 1
    row.wrapped = provider().wrap(fresh, tenant_context(tenant.pk))
    row.version, row.rotated = version + 1, timezone.now()
    row.master_id = key_id_of(row.wrapped)
    row.save(update_fields=["wrapped", "version", "rotated", "master_id"])
    audit_log(
        actor=actor or Actor.system("keys"),
        action="tenant.key_rotated",
        target=tenant,
        tenant=tenant,
        detail={"version": version + 1, "rewrapped": rewrapped},
    )
    return {"version": version + 1, "rewrapped": rewrapped}
