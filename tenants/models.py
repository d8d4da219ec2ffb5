"""Tenants, members and roles, quotas with their claim ledger, and tenant-bound API tokens."""

from __future__ import annotations

from django.conf import settings
from django.contrib.contenttypes.models import ContentType
from django.core.validators import RegexValidator
from django.db import models
from django.utils import timezone

from tenants.scoping import TenantScopedManager

slug_validator = RegexValidator(
    r"^[a-z0-9](?:[a-z0-9-]{0,48}[a-z0-9])?$",
    "A slug is 1-50 lowercase letters, digits or hyphens, and starts and ends with a letter or digit.",
    code="slug",
)


class Tenant(models.Model):
    """A team that owns instances and shares quotas."""

    name = models.CharField(max_length=100, unique=True)
    slug = models.SlugField(max_length=50, unique=True, validators=[slug_validator])
    active = models.BooleanField(default=True)
    created = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name

    def audit_scope(self) -> tuple[int, str]:
        """The audit trail's key of this tenant: its id and slug (security.audit reads it)."""
        return self.pk, self.slug


class Role(models.TextChoices):
    """A member's role; each one can do everything the one below it can."""

    VIEWER = "viewer", "Viewer"
    MEMBER = "member", "Member"
    OWNER = "owner", "Owner"

    @property
    def rank(self) -> int:
        return ROLE_RANK[self.value]

    def at_least(self, other: Role | str) -> bool:
        return ROLE_RANK[self.value] >= ROLE_RANK[str(other)]


ROLE_RANK: dict[str, int] = {Role.VIEWER: 0, Role.MEMBER: 1, Role.OWNER: 2}


class Membership(models.Model):
    """A user's role in one tenant; it decides which tenant scopes the user may use."""

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="memberships")
    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="memberships")
    role = models.CharField(max_length=10, choices=Role.choices, default=Role.MEMBER)
    created = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["user", "tenant"], name="membership_unique_user_tenant")
        ]
        ordering = ["tenant__name", "user__username"]

    def __str__(self) -> str:
        return f"{self.user} in {self.tenant} ({self.role})"


class TenantOwned(models.Model):
    """Base of every model that belongs to one tenant; its manager refuses unscoped queries."""

    tenant = models.ForeignKey(Tenant, on_delete=models.PROTECT, related_name="%(class)ss")

    # Django's own machinery (deletion collector, FK descriptors) keeps using the plain base manager.
    objects = TenantScopedManager()

    class Meta:
        abstract = True


class PriorityClass(models.IntegerChoices):
    """Scheduling priority classes; a quota caps the highest a tenant may ask for."""

    LOW = 0, "Low"
    NORMAL = 1, "Normal"
    HIGH = 2, "High"
    CRITICAL = 3, "Critical"


# Every countable resource a quota limits and a claim holds.
RESOURCES: tuple[str, ...] = (
    "instances",
    "vcpus",
    "ram_mib",
    "disk_gib",
    "containers",
    "snapshots",
    "backup_gib",
    "image_gib",
    "floating_ips",
)


def quota_defaults() -> dict[str, int]:
    """The limits a new tenant starts with (settings.NUBIS_DEFAULT_QUOTA)."""
    conf = settings.NUBIS_DEFAULT_QUOTA
    limits = {f"max_{r}": int(conf[r]) for r in RESOURCES}
    limits["max_priority"] = int(PriorityClass[str(conf["max_priority"]).upper()])
    return limits


class Quota(TenantOwned):
    """The tenant's limits; claims against them are serialised by locking this row."""

    max_instances = models.PositiveIntegerField()
    max_vcpus = models.PositiveIntegerField("max vCPUs")
    max_ram_mib = models.PositiveIntegerField("max RAM (MiB)")
    max_disk_gib = models.PositiveIntegerField("max disk (GiB)")
    max_containers = models.PositiveIntegerField()
    max_snapshots = models.PositiveIntegerField()
    max_backup_gib = models.PositiveIntegerField("max backup storage (GiB)")
    max_image_gib = models.PositiveIntegerField("max uploaded images (GiB)", default=20)
    max_floating_ips = models.PositiveIntegerField("max floating addresses", default=2)
    max_priority = models.PositiveSmallIntegerField(
        "highest priority class", choices=PriorityClass.choices, default=PriorityClass.NORMAL
    )
    updated = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["tenant"], name="quota_one_per_tenant")]

    def __str__(self) -> str:
        return f"quota of {self.tenant}"

    def limit(self, resource: str) -> int:
        return int(getattr(self, f"max_{resource}"))


class QuotaClaim(TenantOwned):
    """One entry of the usage ledger: resources held by something until released.

    Shown usage is the sum of the active (unreleased) claims.
    """

    instances = models.PositiveIntegerField(default=0)
    vcpus = models.PositiveIntegerField(default=0)
    ram_mib = models.PositiveIntegerField(default=0)
    disk_gib = models.PositiveIntegerField(default=0)
    containers = models.PositiveIntegerField(default=0)
    snapshots = models.PositiveIntegerField(default=0)
    backup_gib = models.PositiveIntegerField(default=0)
    image_gib = models.PositiveIntegerField(default=0)
    floating_ips = models.PositiveIntegerField(default=0)
    reason = models.CharField(max_length=200)
    # What holds the claim (an instance, a snapshot...); the drift check looks for it.
    holder_type = models.ForeignKey(ContentType, null=True, blank=True, on_delete=models.PROTECT)
    holder_id = models.CharField(max_length=64, blank=True, default="")
    created = models.DateTimeField(default=timezone.now)
    released_at = models.DateTimeField(null=True, blank=True)
    release_reason = models.CharField(max_length=200, blank=True, default="")

    class Meta:
        indexes = [models.Index(fields=["tenant", "released_at"], name="quotaclaim_active")]
        ordering = ["-created"]

    def __str__(self) -> str:
        held = ", ".join(f"{r}={getattr(self, r)}" for r in RESOURCES if getattr(self, r))
        return f"claim #{self.pk} of {self.tenant_id}: {held or 'nothing'} ({self.reason})"

    @property
    def active(self) -> bool:
        return self.released_at is None

    def amounts(self) -> dict[str, int]:
        return {r: int(getattr(self, r)) for r in RESOURCES}


class ApiToken(TenantOwned):
    """A secret for automation, bound to one tenant and one role; only its hash is stored."""

    name = models.CharField(max_length=100)
    prefix = models.CharField(max_length=16, help_text="The first characters, to recognise the token.")
    key_hash = models.CharField(max_length=64, unique=True)
    role = models.CharField(max_length=10, choices=Role.choices)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="api_tokens"
    )
    created = models.DateTimeField(auto_now_add=True)
    expires_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)
    last_used_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created"]

    def __str__(self) -> str:
        return f"{self.name} ({self.prefix}…)"

    @property
    def state(self) -> str:
        if self.revoked_at is not None:
            return "revoked"
        if self.expires_at is not None and self.expires_at <= timezone.now():
            return "expired"
        return "active"


class TenantKey(models.Model):
    """A tenant's key: it wraps the data keys of the tenant's instances, and is itself wrapped by
    the master key (security.keys). ``version`` counts its rotations (a data key names the version
    that wrapped it); ``master_id`` is the master key version that wraps it now."""

    tenant = models.OneToOneField(Tenant, on_delete=models.CASCADE, related_name="key")
    version = models.PositiveIntegerField(default=1)
    wrapped = models.TextField()
    master_id = models.CharField(max_length=32, db_index=True)
    created = models.DateTimeField(default=timezone.now)
    rotated = models.DateTimeField(null=True, blank=True)

    def __str__(self) -> str:
        return f"key of {self.tenant} (v{self.version}, under {self.master_id})"
