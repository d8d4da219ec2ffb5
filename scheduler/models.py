"""Host aggregates (overcommit and tenant-dedicated hosts) and the record of every placement."""

from __future__ import annotations

from typing import Any

from django.core.exceptions import ValidationError
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models
from django.utils import timezone

from compute.models import Host, Instance
from core.querysets import VersionedQuerySet, count_save
from tenants.models import Tenant, TenantOwned

RATIO_LIMITS = {"cpu_ratio": (0.1, 32.0), "ram_ratio": (0.1, 4.0), "disk_ratio": (0.1, 10.0)}


def ratio_field(label: str, field: str) -> models.FloatField:
    low, high = RATIO_LIMITS[field]
    return models.FloatField(
        label,
        null=True,
        blank=True,
        validators=[MinValueValidator(low), MaxValueValidator(high)],
        help_text=f"{low:g} to {high:g}; empty: the host's own, else the cloud's default.",
    )


class AggregateQuerySet(VersionedQuerySet):
    """Every update moves ``version`` (the scheduler's cached host table rebuilds on it)."""


class Aggregate(models.Model):
    """A set of hosts with shared overcommit ratios, optionally dedicated to one tenant."""

    name = models.CharField(max_length=64, unique=True)
    hosts = models.ManyToManyField(Host, blank=True, related_name="aggregates")
    tenant = models.ForeignKey(
        Tenant,
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="aggregates",
        help_text="Dedicated: only this tenant's instances go on these hosts.",
    )
    cpu_ratio = ratio_field("CPU overcommit", "cpu_ratio")
    ram_ratio = ratio_field("RAM overcommit", "ram_ratio")
    disk_ratio = ratio_field("disk overcommit", "disk_ratio")
    # Counts saves and changes of its hosts (scheduler.signals): the scheduler's cached host
    # table rebuilds when it moves.
    version = models.PositiveIntegerField(default=0, editable=False)

    objects = AggregateQuerySet.as_manager()

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name

    def save(self, *args: Any, **kwargs: Any) -> None:
        count_save(self, kwargs)
        super().save(*args, **kwargs)

    def clean(self) -> None:
        errors = {}
        for field, (low, high) in RATIO_LIMITS.items():
            value = getattr(self, field)
            if value is not None and not low <= value <= high:
                errors[field] = f"must be between {low:g} and {high:g}"
        if errors:
            raise ValidationError(errors)


class PlacementDecision(TenantOwned):
    """Why an instance went where it went (or why it could not go anywhere): the engine's record."""

    instance = models.OneToOneField(Instance, on_delete=models.CASCADE, related_name="placement")
    host = models.ForeignKey(Host, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    record = models.JSONField(default=dict)
    created = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["-created"]

    def __str__(self) -> str:
        return f"{self.instance} -> {self.host or 'no valid host'}"


class QueueState(models.TextChoices):
    WAITING = "waiting", "Waiting"
    ADMITTED = "admitted", "Admitted"
    FAILED = "failed", "Failed"
    CANCELLED = "cancelled", "Cancelled"


class QueueEntry(TenantOwned):
    """A request that found no room and asked to wait: its place in the admission queue.

    Kept after admission (with how long it waited) so the queue can estimate waits from history.
    """

    instance = models.OneToOneField(Instance, on_delete=models.CASCADE, related_name="queue_entry")
    priority = models.PositiveSmallIntegerField()
    vcpus = models.PositiveIntegerField()
    ram_mib = models.PositiveIntegerField()
    disk_gib = models.PositiveIntegerField()
    state = models.CharField(max_length=10, choices=QueueState.choices, default=QueueState.WAITING)
    reason = models.TextField(blank=True, default="", help_text="Why it is still waiting (or failed).")
    enqueued_at = models.DateTimeField(default=timezone.now)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["enqueued_at", "pk"]
        indexes = [models.Index(fields=["state", "enqueued_at"], name="queue_state_enqueued")]
        verbose_name_plural = "queue entries"

    def __str__(self) -> str:
        return f"{self.instance} ({self.state})"
