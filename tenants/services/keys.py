"""Tenant keys: made on first use, unwrapped with the master key, and re-wrapped when the master key
rotates (security.keys holds the master key and the wrapping).

Master key rotation (``master_key_rotate``, ``manage.py keys rotate-master``): the provider makes a
new current version; every tenant key is unwrapped with the version that wrapped it and wrapped
again with the new one, each in its own transaction; then the versions nothing uses any more are
retired. The instances' data keys do not change: they are wrapped by the tenant keys. A rotation
cut short (a crash) leaves some tenant keys under the old version, which still unwraps them; run it
again to finish (``master_key_rewrap`` does only that part).
"""

from __future__ import annotations

from typing import Any

from django.db import IntegrityError, transaction
from django.utils import timezone

from security.keys import key_id_of, new_key, provider
from tenants.models import Tenant, TenantKey


def tenant_context(tenant_id: int) -> str:
    return f"tenant:{int(tenant_id)}"


def tenant_key(tenant: Tenant) -> tuple[int, bytes]:
    """The tenant's key and its version, made (and wrapped with the master key) on first use."""
    row = TenantKey.objects.filter(tenant=tenant).first()
    if row is None:
        wrapped = provider().wrap(new_key(), tenant_context(tenant.pk))
        try:
            with transaction.atomic():
                row = TenantKey.objects.create(tenant=tenant, wrapped=wrapped, master_id=key_id_of(wrapped))
        except IntegrityError:  # made meanwhile by another request: theirs stands
            row = TenantKey.objects.get(tenant=tenant)
    return row.version, provider().unwrap(row.wrapped, tenant_context(tenant.pk))


def master_key_rewrap() -> int:
    """Wrap every tenant key still under an older master key version with the current one; how many."""
    keys = provider()
    current = keys.current_id()
    done = 0
    for pk in TenantKey.objects.exclude(master_id=current).values_list("pk", flat=True):
        with transaction.atomic():
            row = TenantKey.objects.select_for_update().get(pk=pk)
            if row.master_id == current:
                continue
            context = tenant_context(row.tenant_id)
            row.wrapped = keys.wrap(keys.unwrap(row.wrapped, context), context)
            row.master_id, row.rotated = current, timezone.now()
            row.save(update_fields=["wrapped", "master_id", "rotated"])
            done += 1
    return done


def master_key_rotate() -> dict[str, Any]:
    """A new master key version; every tenant key re-wrapped with it; the old versions retired."""
    keys = provider()
    before = keys.current_id()
    current = keys.rotate()
    rewrapped = master_key_rewrap()
    retired = []
    if not TenantKey.objects.exclude(master_id=current).exists():
        retired = [old for old in keys.versions() if old != current]
        for old in retired:
            keys.retire(old)
    return {"previous": before, "current": current, "rewrapped": rewrapped, "retired": retired}
