"""Host aggregates (overcommit and tenant-dedicated hosts), the record of every placement, the
admission queue, and DRS (its settings, its passes and their recommendations)."""

from __future__ import annotations

from typing import Any

from django.conf import settings
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


class Automation(models.TextChoices):
    MANUAL = "manual", "Manual: new instances' hosts and migrations recommended, staff apply them"
    PARTIAL = "partial", "Partially automated: initial placement automatic, migrations recommended"
    FULL = "full", "Fully automated: migrations run"


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
    drs_automation = models.CharField(
        "DRS automation",
        max_length=8,
        blank=True,
        default="",
        choices=Automation.choices,
        help_text="Empty: the cluster's level. A move takes the strictest level of its two hosts.",
    )
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


# -- DRS -------------------------------------------------------------------------------------------
class DrsSettings(models.Model):
    """The cluster's balancer settings: one row (``DrsSettings.current()``), edited in admin and the
    staff API. Aggregates may override the automation level for their hosts."""

    enabled = models.BooleanField(
        default=True,
        help_text="DRS at all: periodic passes, and in manual mode staff placement of new instances.",
    )
    automation = models.CharField(max_length=8, choices=Automation.choices, default=Automation.PARTIAL)
    threshold = models.PositiveSmallIntegerField(
        "migration threshold",
        default=3,
        validators=[MinValueValidator(1), MaxValueValidator(5)],
        help_text="1 (only relieve hosts above 90%) to 5 (aggressive).",
    )
    interval_seconds = models.PositiveIntegerField(
        "pass interval (s)", default=300, validators=[MinValueValidator(30), MaxValueValidator(86400)]
    )
    cooldown_seconds = models.PositiveIntegerField(
        "cooldown (s)",
        default=3600,
        validators=[MinValueValidator(0), MaxValueValidator(7 * 86400)],
        help_text="An instance that moved (for any reason) stays put this long: no ping-pong.",
    )
    max_concurrent = models.PositiveSmallIntegerField(
        "concurrent migrations",
        default=2,
        validators=[MinValueValidator(1), MaxValueValidator(64)],
        help_text="Moves DRS runs at once (other migrations in flight count too).",
    )
    max_moves = models.PositiveSmallIntegerField(
        "moves per pass", default=20, validators=[MinValueValidator(1), MaxValueValidator(1000)]
    )
    window_seconds = models.PositiveIntegerField(
        "demand window (s)",
        default=300,
        validators=[MinValueValidator(5), MaxValueValidator(86400)],
        help_text="Demand is each instance's mean over this window of its samples.",
    )
    placement_timeout_seconds = models.PositiveIntegerField(
        "staff placement timeout (s)",
        default=3600,
        validators=[MinValueValidator(60), MaxValueValidator(7 * 86400)],
        help_text="Manual mode: a new instance that staff have not placed within this long fails, "
        "its quota given back.",
    )
    last_pass_at = models.DateTimeField(null=True, blank=True, editable=False)

    class Meta:
        verbose_name = "DRS settings"
        verbose_name_plural = "DRS settings"

    def __str__(self) -> str:
        return f"DRS: {self.automation}, threshold {self.threshold}"

    @classmethod
    def current(cls) -> DrsSettings:
        settings, _ = cls.objects.get_or_create(pk=1)
        return settings


class DrsPassKind(models.TextChoices):
    PERIODIC = "periodic", "Periodic"
    REQUESTED = "requested", "Requested by staff"
    WHAT_IF = "what_if", "What-if (nothing moves)"


class DrsPass(models.Model):
    """One balancing pass: the cluster it saw, the plan it made and why it stopped."""

    kind = models.CharField(max_length=10, choices=DrsPassKind.choices, default=DrsPassKind.PERIODIC)
    automation = models.CharField(max_length=8, choices=Automation.choices)
    threshold = models.PositiveSmallIntegerField()
    requested_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    changes = models.JSONField(default=dict, blank=True, help_text="What-if: the changes simulated.")
    summary = models.JSONField(default=dict, blank=True)
    std_before = models.FloatField(default=0.0)
    std_after = models.FloatField(default=0.0)
    moves = models.PositiveIntegerField(default=0)
    error = models.TextField(blank=True, default="")
    created = models.DateTimeField(default=timezone.now)
    # When its plan was made (a what-if is computed by the control worker after it is asked).
    finished = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created", "-pk"]
        verbose_name = "DRS pass"
        verbose_name_plural = "DRS passes"

    def __str__(self) -> str:
        return f"DRS pass {self.pk} ({self.kind}, {self.moves} moves)"


class RecommendationState(models.TextChoices):
    PROPOSED = "proposed", "Proposed (waits for staff)"
    APPROVED = "approved", "Approved (starts when a slot frees)"
    STARTED = "started", "Migration under way"
    SUCCEEDED = "succeeded", "Done"
    FAILED = "failed", "Failed"
    SUPERSEDED = "superseded", "Superseded by a later pass"
    EXPIRED = "expired", "No longer valid"


class DrsRecommendation(models.Model):
    """One move a pass recommends: its instance(s), the two hosts, and why (``explanation``).

    A hard-affinity group moves together: ``instance`` is its first member and ``instance_ids``
    all of them. ``operations`` are the migrations it started (they carry the explanation too).
    """

    drs_pass = models.ForeignKey(DrsPass, on_delete=models.CASCADE, related_name="recommendations")
    order = models.PositiveIntegerField()
    instance = models.ForeignKey(Instance, on_delete=models.CASCADE, related_name="drs_recommendations")
    instance_ids = models.JSONField(default=list)
    source = models.ForeignKey(Host, on_delete=models.CASCADE, related_name="+")
    target = models.ForeignKey(Host, on_delete=models.CASCADE, related_name="+")
    live = models.BooleanField(default=True)
    cost = models.FloatField(default=0.0)
    automatic = models.BooleanField(default=False, help_text="Runs without staff (fully automated hosts).")
    state = models.CharField(
        max_length=10, choices=RecommendationState.choices, default=RecommendationState.PROPOSED
    )
    reason = models.TextField(blank=True, default="", help_text="Why it failed, expired or was superseded.")
    explanation = models.JSONField(default=dict)
    operations = models.JSONField(default=list, blank=True, help_text="uuids of the migrations it started.")
    decided_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created = models.DateTimeField(default=timezone.now)
    updated = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-drs_pass_id", "order"]
        indexes = [models.Index(fields=["state"], name="drs_rec_state")]

    def __str__(self) -> str:
        return f"{self.instance} {self.source} -> {self.target} ({self.state})"


class PlacementState(models.TextChoices):
    WAITING = "waiting", "Waiting for staff"
    PLACED = "placed", "Placed"
    REJECTED = "rejected", "Refused by staff"
    EXPIRED = "expired", "Not placed in time"
    CANCELLED = "cancelled", "Instance deleted"


class DrsPlacement(models.Model):
    """A new instance's initial placement, held for staff (DRS manual mode on the chosen host).

    The scheduler's decision is kept as it was made: ``target`` its best host, ``explanation`` its
    placement record (the filters, the candidates and their scores). Staff place it there or on
    another host (the filters check it again then), or refuse it. Its quota stays held meanwhile;
    no host's room is, so the host is checked again when it is placed.
    """

    instance = models.ForeignKey(Instance, on_delete=models.CASCADE, related_name="drs_placements")
    target = models.ForeignKey(Host, on_delete=models.CASCADE, related_name="+")
    host = models.ForeignKey(
        Host, null=True, blank=True, on_delete=models.SET_NULL, related_name="+", help_text="Where it went."
    )
    state = models.CharField(max_length=10, choices=PlacementState.choices, default=PlacementState.WAITING)
    reason = models.TextField(blank=True, default="", help_text="Why it was refused or expired.")
    explanation = models.JSONField(default=dict)
    decided_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created = models.DateTimeField(default=timezone.now)
    deadline = models.DateTimeField()
    updated = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-created", "-pk"]
        indexes = [models.Index(fields=["state", "deadline"], name="drs_placement_state")]

    def __str__(self) -> str:
        return f"{self.instance} -> {self.target} ({self.state})"
