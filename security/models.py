"""The audit trail: append-only, hash-chained records of every mutating action."""

from __future__ import annotations

import hashlib
import json
from datetime import UTC
from typing import Any, NoReturn

from django.db import models
from django.utils import timezone

GENESIS_HASH = "0" * 64


class AppendOnlyError(RuntimeError):
    """Audit records are never changed or deleted."""


class AuditQuerySet(models.QuerySet["AuditRecord"]):
    def update(self, **kwargs: Any) -> NoReturn:
        raise AppendOnlyError("audit records are append-only")

    def delete(self) -> NoReturn:
        raise AppendOnlyError("audit records are append-only")

    def for_tenant(self, tenant_id: int) -> AuditQuerySet:
        return self.filter(tenant_id=tenant_id)


class Outcome(models.TextChoices):
    SUCCESS = "success", "Success"
    INVALID = "invalid", "Invalid input"
    DENIED = "denied", "Denied"
    ERROR = "error", "Error"


class Source(models.TextChoices):
    UI = "ui", "Web UI"
    API = "api", "REST API"
    ADMIN = "admin", "Django admin"
    TASK = "task", "Background task"
    CLI = "cli", "Command line"


class AuditRecord(models.Model):
    """Who did what to which object of which tenant, from where, and how it ended.

    Each record carries the hash of the one before it, so any edit or deletion in the table
    breaks the chain (see security.audit.verify_chain). Tenant and actor are copied, not
    foreign keys, so the trail outlives what it talks about.
    """

    seq = models.PositiveBigIntegerField(unique=True)
    at = models.DateTimeField(default=timezone.now, db_index=True)
    actor_id = models.BigIntegerField(null=True, blank=True)
    actor_name = models.CharField(max_length=150)
    token_id = models.BigIntegerField(null=True, blank=True)
    tenant_id = models.BigIntegerField(null=True, blank=True, db_index=True)
    tenant_slug = models.CharField(max_length=50, blank=True, default="")
    action = models.CharField(max_length=100)
    target_type = models.CharField(max_length=100, blank=True, default="")
    target_id = models.CharField(max_length=64, blank=True, default="")
    target_repr = models.CharField(max_length=200, blank=True, default="")
    source = models.CharField(max_length=10, choices=Source.choices)
    source_ip = models.GenericIPAddressField(null=True, blank=True)
    outcome = models.CharField(max_length=10, choices=Outcome.choices)
    detail = models.JSONField(default=dict, blank=True)
    prev_hash = models.CharField(max_length=64)
    hash = models.CharField(max_length=64, unique=True)

    objects = AuditQuerySet.as_manager()

    class Meta:
        ordering = ["-seq"]
        indexes = [models.Index(fields=["tenant_id", "-seq"], name="audit_tenant_seq")]

    def __str__(self) -> str:
        return f"#{self.seq} {self.actor_name} {self.action} {self.target_repr} ({self.outcome})"

    def save(self, *args: Any, **kwargs: Any) -> None:
        if not self._state.adding:
            raise AppendOnlyError(f"audit record #{self.seq} is append-only")
        super().save(*args, **kwargs)

    def delete(self, *args: Any, **kwargs: Any) -> NoReturn:
        raise AppendOnlyError(f"audit record #{self.seq} is append-only")

    def canonical(self) -> str:
        """The record's content, serialised the same way every time, for hashing."""
        at = self.at.astimezone(UTC).isoformat(timespec="microseconds") if self.at else ""
        fields = {
            "seq": self.seq,
            "at": at,
            "actor_id": self.actor_id,
            "actor_name": self.actor_name,
            "token_id": self.token_id,
            "tenant_id": self.tenant_id,
            "tenant_slug": self.tenant_slug,
            "action": self.action,
            "target_type": self.target_type,
            "target_id": self.target_id,
            "target_repr": self.target_repr,
            "source": self.source,
            "source_ip": self.source_ip,
            "outcome": self.outcome,
            "detail": self.detail,
        }
        return json.dumps(fields, sort_keys=True, separators=(",", ":"), default=str)

    def compute_hash(self) -> str:
        return hashlib.sha256(f"{self.prev_hash}\n{self.canonical()}".encode()).hexdigest()


class AuditChainHead(models.Model):
    """The single row that serialises appends: the last sequence number and hash."""

    seq = models.PositiveBigIntegerField(default=0)
    hash = models.CharField(max_length=64, default=GENESIS_HASH)

    def __str__(self) -> str:
        return f"audit head at #{self.seq}"
