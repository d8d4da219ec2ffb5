"""API tokens: created once and shown once, stored as a hash, bound to one tenant and one role."""

from __future__ import annotations

import hashlib
import secrets
from datetime import datetime, timedelta

from django.db import transaction
from django.utils import timezone

from core.errors import ServiceError
from security.audit import Actor, audit_log
from tenants.models import ROLE_RANK, ApiToken, Role, Tenant

TOKEN_PREFIX = "nubis_"  # noqa: S105 - a public marker, not a secret
# Writing last_used_at on every request would turn each read into a write; once a minute is enough.
LAST_USED_GRANULARITY = timedelta(seconds=60)


def hash_token(raw: str) -> str:
    """SHA-256 of the whole token; tokens carry 256 random bits, so no salt or slow hash is needed."""
    return hashlib.sha256(raw.encode()).hexdigest()


@transaction.atomic
def token_create(
    *,
    actor: Actor,
    tenant: Tenant,
    creator_id: int,
    creator_role: Role,
    name: str,
    role: str,
    expires_at: datetime | None = None,
) -> tuple[ApiToken, str]:
    """Create a token; returns it with the raw secret, which is never stored and never shown again."""
    name = name.strip()
    if not name:
        raise ServiceError("name", "required", "a token needs a name")
    if len(name) > 100:
        raise ServiceError("name", "max_length", "a token name has at most 100 characters")
    try:
        token_role = Role(role)
    except ValueError:
        raise ServiceError(
            "role", "choice", f"{role!r} is not a role; choose owner, member or viewer"
        ) from None
    if not creator_role.at_least(Role.MEMBER):
        raise ServiceError("role", "permission", "viewers cannot create tokens")
    if ROLE_RANK[token_role] > ROLE_RANK[creator_role]:
        raise ServiceError(
            "role",
            "max_role",
            f"a token's role cannot be higher than your own: you are {creator_role.label.lower()}",
        )
    if expires_at is not None and expires_at <= timezone.now():
        raise ServiceError("expires_at", "future", "the expiry must be in the future")
    raw = TOKEN_PREFIX + secrets.token_urlsafe(32)
    token = ApiToken.objects.create(
        tenant=tenant,
        name=name,
        prefix=raw[: len(TOKEN_PREFIX) + 6],
        key_hash=hash_token(raw),
        role=token_role,
        created_by_id=creator_id,
        expires_at=expires_at,
    )
    audit_log(
        actor=actor,
        action="token.create",
        target=token,
        detail={"role": str(token_role), "expires_at": str(expires_at or "")},
    )
    return token, raw


@transaction.atomic
def token_revoke(*, actor: Actor, token: ApiToken) -> ApiToken:
    """Revoke a token; revoking it again changes nothing (but is still recorded)."""
    locked = ApiToken.objects.for_tenant(token.tenant_id).select_for_update().get(pk=token.pk)
    already = locked.revoked_at is not None
    if not already:
        locked.revoked_at = timezone.now()
        locked.save(update_fields=["revoked_at"])
    audit_log(actor=actor, action="token.revoke", target=locked, detail={"already_revoked": already})
    return locked


def revoke_tokens_of(tenant: Tenant, user_id: int) -> int:
    """Revoke every live token a user holds in a tenant (when they leave it)."""
    return (
        ApiToken.objects.for_tenant(tenant)
        .filter(created_by_id=user_id, revoked_at__isnull=True)
        .update(revoked_at=timezone.now())
    )


class TokenRejected(Exception):
    """The presented token cannot be used; the message says why."""


def token_authenticate(raw: str) -> ApiToken:
    """Find the live token for a raw secret, or raise TokenRejected with the reason."""
    if not raw.startswith(TOKEN_PREFIX):
        raise TokenRejected("malformed token")
    token = (
        ApiToken.objects.unscoped()
        .select_related("tenant", "created_by")
        .filter(key_hash=hash_token(raw))
        .first()
    )
    if token is None:
        raise TokenRejected("invalid token")
    now = timezone.now()
    if token.revoked_at is not None:
        raise TokenRejected("token revoked")
    if token.expires_at is not None and token.expires_at <= now:
        raise TokenRejected("token expired")
    if not token.tenant.active:
        raise TokenRejected("the token's tenant is disabled")
    if not token.created_by.is_active:
        raise TokenRejected("the token's owner is disabled")
    if token.last_used_at is None or now - token.last_used_at > LAST_USED_GRANULARITY:
        ApiToken.objects.for_tenant(token.tenant_id).filter(pk=token.pk).update(last_used_at=now)
        token.last_used_at = now
    return token
