"""Write and verify the audit trail.

Entry points describe who acts (an Actor); services call audit_log() inside their transaction,
so a rolled-back change leaves no record. AuditMiddleware guarantees that every mutating HTTP
request leaves exactly one record, writing one itself when the request failed before any
service recorded it.
"""

from __future__ import annotations

import contextvars
import ipaddress
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from django.db import models, transaction
from django.http import HttpRequest

from security.models import GENESIS_HASH, AuditChainHead, AuditRecord, Outcome, Source


@dataclass(frozen=True)
class Actor:
    """Who performs an action, and from where."""

    name: str
    source: str
    user_id: int | None = None
    token_id: int | None = None
    ip: str | None = None

    @classmethod
    def from_request(cls, request: HttpRequest, source: str | None = None) -> Actor:
        user = getattr(request, "user", None)
        authenticated = bool(user is not None and user.is_authenticated)
        # DRF's request.auth: an API token row under token authentication, None under a session.
        token = getattr(request, "auth", None)
        return cls(
            name=user.get_username() if authenticated and user is not None else "anonymous",
            source=source or source_of(request),
            user_id=user.pk if authenticated and user is not None else None,
            token_id=token.pk if isinstance(token, models.Model) else None,
            ip=client_ip(request),
        )

    @classmethod
    def system(cls, name: str, source: str = Source.TASK) -> Actor:
        return cls(name=name, source=source)


def client_ip(request: HttpRequest) -> str | None:
    """The peer address (daphne applies X-Forwarded-For only with NUBIS_TRUST_PROXY_HEADERS)."""
    address = request.META.get("REMOTE_ADDR") or ""
    try:
        # A server on a unix socket, or a test client, gives something that is not an address.
        return str(ipaddress.ip_address(address))
    except ValueError:
        return None


def source_of(request: HttpRequest) -> str:
    path = request.path
    if path.startswith("/admin/"):
        return Source.ADMIN
    if path.startswith("/api/"):
        return Source.API
    return Source.UI


@dataclass
class RequestAudit:
    """What the current HTTP request has written to the trail so far."""

    ip: str | None = None
    record_ids: list[int] = field(default_factory=list)


current_request: contextvars.ContextVar[RequestAudit | None] = contextvars.ContextVar(
    "nubis_request_audit", default=None
)


def _tenant_of(target: Any) -> tuple[int | None, str]:
    """The tenant a target is, or belongs to: anything with ``audit_scope()`` (tenants.Tenant).

    Duck-typed, because the audit trail sits below the tenants app and imports nothing of it.
    """
    if target is None:
        return None, ""
    for candidate in (target, getattr(target, "tenant", None)):
        scope = getattr(candidate, "audit_scope", None)
        if callable(scope):
            tenant_id, slug = scope()
            return tenant_id, slug
    return None, ""


def audit_log(
    *,
    actor: Actor,
    action: str,
    target: models.Model | None = None,
    tenant: Any = None,
    outcome: str = Outcome.SUCCESS,
    detail: dict[str, Any] | None = None,
    target_type: str = "",
    target_id: str = "",
    target_repr: str = "",
) -> AuditRecord:
    """Append one record to the hash chain, inside the caller's transaction.

    Call it last in a transaction: it locks the chain head, which serialises appends.
    """
    if tenant is None:
        tenant_id, tenant_slug = _tenant_of(target)
    else:
        tenant_id, tenant_slug = tenant.pk, tenant.slug
    if target is not None:
        target_type = target_type or target._meta.label_lower
        target_id = target_id or str(target.pk)
        target_repr = target_repr or str(target)[:200]
    with transaction.atomic():
        head, _ = AuditChainHead.objects.select_for_update().get_or_create(pk=1)
        record = AuditRecord(
            seq=head.seq + 1,
            actor_id=actor.user_id,
            actor_name=actor.name[:150],
            token_id=actor.token_id,
            tenant_id=tenant_id,
            tenant_slug=tenant_slug,
            action=action,
            target_type=target_type,
            target_id=target_id,
            target_repr=target_repr[:200],
            source=actor.source,
            source_ip=actor.ip,
            outcome=outcome,
            detail=detail or {},
            prev_hash=head.hash,
        )
        record.hash = record.compute_hash()
        record.save(force_insert=True)
        head.seq, head.hash = record.seq, record.hash
        head.save(update_fields=["seq", "hash"])
    ctx = current_request.get()
    if ctx is not None:
        ctx.record_ids.append(record.pk)
    return record


@dataclass(frozen=True)
class ChainProblem:
    seq: int | None
    record_id: int | None
    message: str

    def __str__(self) -> str:
        where = (
            f"audit record seq {self.seq} (id {self.record_id})" if self.seq is not None else "audit chain"
        )
        return f"{where}: {self.message}"


def verify_chain() -> tuple[int, list[ChainProblem]]:
    """Walk the whole trail in order; return how many records were checked and every problem."""
    problems: list[ChainProblem] = []
    expected_prev, expected_seq, checked = GENESIS_HASH, 1, 0
    records: Iterator[AuditRecord] = AuditRecord.objects.order_by("seq").iterator(chunk_size=2000)
    for record in records:
        checked += 1
        if record.seq != expected_seq:
            problems.append(
                ChainProblem(
                    record.seq, record.pk, f"sequence gap: expected {expected_seq} (records deleted)"
                )
            )
        if record.prev_hash != expected_prev:
            problems.append(ChainProblem(record.seq, record.pk, "does not link to the record before it"))
        if record.compute_hash() != record.hash:
            problems.append(ChainProblem(record.seq, record.pk, "contents do not match its hash (altered)"))
        expected_prev, expected_seq = record.hash, record.seq + 1
    head = AuditChainHead.objects.filter(pk=1).first()
    if head is not None and (head.seq, head.hash) != (expected_seq - 1, expected_prev):
        problems.append(
            ChainProblem(None, None, f"head says seq {head.seq} but the trail ends at {expected_seq - 1}")
        )
    return checked, problems
