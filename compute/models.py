"""Hosts, flavors, images, instances, their operations and snapshots."""

from __future__ import annotations

import uuid
from datetime import datetime

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import MinValueValidator
from django.db import models
from django.db.models import Q
from django.utils import timezone

from tenants.models import PriorityClass, Tenant, TenantOwned


class HostState(models.TextChoices):
    ENABLED = "enabled", "Enabled"
    DISABLED = "disabled", "Disabled"
    MAINTENANCE = "maintenance", "Maintenance"
    DOWN = "down", "Down"


class Paging(models.TextChoices):
    EPT = "ept", "EPT (Intel nested paging)"
    NPT = "npt", "NPT (AMD nested paging)"
    SHADOW = "shadow", "Shadow page tables"
    NONE = "none", "No KVM (software MMU under TCG)"


class Host(models.Model):
    """A compute host: what it has, what its hypervisor can really do, and whether it is alive."""

    name = models.CharField(max_length=100, unique=True)
    uri = models.CharField("libvirt URI", max_length=255)
    state = models.CharField(max_length=12, choices=HostState.choices, default=HostState.ENABLED)
    simulated = models.BooleanField(
        default=False, help_text="Simulator host: never used for real provisioning."
    )
    cpu_model = models.CharField(max_length=200, blank=True, default="")
    cpus = models.PositiveIntegerField(default=0)
    ram_mib = models.PositiveIntegerField(default=0)
    disk_gib = models.PositiveIntegerField(default=0)
    # Capability probe: KVM counts as usable only if a probe guest booted under it.
    kvm_device = models.BooleanField(default=False)
    kvm_usable = models.BooleanField(default=False)
    kvm_probe_detail = models.CharField(max_length=300, blank=True, default="")
    tcg_available = models.BooleanField(default=False)
    paging = models.CharField(max_length=8, choices=Paging.choices, default=Paging.NONE)
    iommu = models.BooleanField(
        default=False, help_text="IOMMU groups exist, so VFIO passthrough is possible."
    )
    vmm = models.CharField("hypervisor", max_length=100, blank=True, default="")
    probed_at = models.DateTimeField(null=True, blank=True)
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    registered_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name

    @property
    def queue(self) -> str:
        from portal.celery import host_queue

        return host_queue(self.name)

    def heartbeat_fresh(self, now: datetime | None = None) -> bool:
        if self.heartbeat_at is None:
            return False
        age = ((now or timezone.now()) - self.heartbeat_at).total_seconds()
        return age <= settings.NUBIS_HOST_HEARTBEAT_TIMEOUT


class CpuMode(models.TextChoices):
    HARDWARE = "hardware", "Hardware-assisted (KVM, host CPU passed through)"
    EMULATED = "emulated", "Full software emulation (QEMU TCG)"


class IoModel(models.TextChoices):
    VIRTIO = "virtio", "Paravirtual (virtio)"
    EMULATED = "emulated", "Emulated devices (e1000 NIC, SATA disk)"


class Flavor(models.Model):
    """Size and virtualization settings of an instance; public, or private to one tenant."""

    name = models.CharField(max_length=64, unique=True)
    vcpus = models.PositiveIntegerField(validators=[MinValueValidator(1)])
    ram_mib = models.PositiveIntegerField("RAM (MiB)", validators=[MinValueValidator(64)])
    disk_gib = models.PositiveIntegerField("disk (GiB)", validators=[MinValueValidator(1)])
    cpu_mode = models.CharField(max_length=10, choices=CpuMode.choices, default=CpuMode.EMULATED)
    io_model = models.CharField(max_length=10, choices=IoModel.choices, default=IoModel.VIRTIO)
    balloon = models.BooleanField("memory balloon", default=True)
    min_ram_mib = models.PositiveIntegerField(
        "minimum RAM (MiB)", null=True, blank=True, help_text="Floor for dynamic memory through the balloon."
    )
    pci_passthrough = models.CharField(
        "PCI device to pass through",
        max_length=20,
        blank=True,
        default="",
        help_text="Host PCI address (0000:03:00.0), attached by VFIO; needs a host with an IOMMU.",
    )
    public = models.BooleanField(default=True)
    tenant = models.ForeignKey(
        Tenant, null=True, blank=True, on_delete=models.PROTECT, related_name="flavors"
    )

    class Meta:
        ordering = ["vcpus", "ram_mib", "name"]
        constraints = [
            models.CheckConstraint(
                condition=Q(public=True, tenant__isnull=True) | Q(public=False, tenant__isnull=False),
                name="flavor_public_or_private_to_one_tenant",
            ),
            models.CheckConstraint(
                condition=Q(min_ram_mib__isnull=True) | Q(min_ram_mib__lte=models.F("ram_mib")),
                name="flavor_min_ram_not_above_ram",
            ),
        ]

    def __str__(self) -> str:
        return self.name

    def clean(self) -> None:
        if self.public and self.tenant_id:
            raise ValidationError({"tenant": "A public flavor belongs to no tenant."})
        if not self.public and not self.tenant_id:
            raise ValidationError({"tenant": "A private flavor needs its tenant."})
        if self.min_ram_mib is not None and self.ram_mib is not None and self.min_ram_mib > self.ram_mib:
            raise ValidationError({"min_ram_mib": "The minimum RAM cannot be above the RAM."})
        if self.min_ram_mib is not None and not self.balloon:
            raise ValidationError({"min_ram_mib": "Dynamic memory needs the memory balloon."})


class ImageKind(models.TextChoices):
    KERNEL = "kernel", "Kernel + initramfs (with a base disk)"
    DISK = "disk", "Bootable qcow2 disk"
    ROOTFS = "rootfs", "Container root filesystem (tarball)"


class Image(models.Model):
    """A guest image in the registry: its files, their checksum, and who may use it."""

    name = models.CharField(max_length=100, unique=True)
    kind = models.CharField(max_length=10, choices=ImageKind.choices)
    os_name = models.CharField("OS", max_length=100)
    kernel_path = models.CharField(max_length=500, blank=True, default="")
    initrd_path = models.CharField(max_length=500, blank=True, default="")
    disk_path = models.CharField(
        max_length=500, help_text="Base disk; each instance gets a qcow2 overlay on it."
    )
    cmdline = models.CharField(max_length=300, blank=True, default="")
    sha256 = models.CharField(max_length=64)
    size_bytes = models.PositiveBigIntegerField(default=0)
    public = models.BooleanField(default=True)
    tenant = models.ForeignKey(Tenant, null=True, blank=True, on_delete=models.PROTECT, related_name="images")
    created = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["name"]
        constraints = [
            models.CheckConstraint(
                condition=Q(public=True, tenant__isnull=True) | Q(public=False, tenant__isnull=False),
                name="image_public_or_private_to_one_tenant",
            ),
        ]

    def __str__(self) -> str:
        return self.name

    def files(self) -> list[str]:
        """The files the checksum covers, in order."""
        return [p for p in (self.kernel_path, self.initrd_path, self.disk_path) if p]


class InstanceKind(models.TextChoices):
    VM = "vm", "Virtual machine"
    CONTAINER = "container", "Container"


class InstanceState(models.TextChoices):
    REQUESTED = "requested", "Requested"
    SCHEDULED = "scheduled", "Scheduled"
    BUILDING = "building", "Building"
    RUNNING = "running", "Running"
    STOPPING = "stopping", "Stopping"
    STOPPED = "stopped", "Stopped"
    STARTING = "starting", "Starting"
    REBOOTING = "rebooting", "Rebooting"
    RESIZING = "resizing", "Resizing"
    DELETING = "deleting", "Deleting"
    DELETED = "deleted", "Deleted"
    ERROR = "error", "Error"


TRANSIENT_STATES = frozenset(
    {
        InstanceState.REQUESTED,
        InstanceState.SCHEDULED,
        InstanceState.BUILDING,
        InstanceState.STOPPING,
        InstanceState.STARTING,
        InstanceState.REBOOTING,
        InstanceState.RESIZING,
        InstanceState.DELETING,
    }
)


class Instance(TenantOwned):
    """A tenant's virtual machine or container."""

    uuid = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    name = models.CharField(max_length=63)
    kind = models.CharField(max_length=10, choices=InstanceKind.choices, default=InstanceKind.VM)
    state = models.CharField(max_length=10, choices=InstanceState.choices, default=InstanceState.REQUESTED)
    flavor = models.ForeignKey(Flavor, on_delete=models.PROTECT, related_name="instances")
    image = models.ForeignKey(Image, on_delete=models.PROTECT, related_name="instances")
    host = models.ForeignKey(Host, null=True, blank=True, on_delete=models.PROTECT, related_name="instances")
    priority = models.PositiveSmallIntegerField(choices=PriorityClass.choices, default=PriorityClass.NORMAL)
    # Live memory target (balloon) and size, which resize may change within the flavor's range.
    vcpus = models.PositiveIntegerField(default=1)
    ram_mib = models.PositiveIntegerField(default=64)
    current_ram_mib = models.PositiveIntegerField(default=64)
    disk_gib = models.PositiveIntegerField(default=1)
    fault = models.TextField(blank=True, default="")
    fault_at = models.DateTimeField(null=True, blank=True)
    state_deadline = models.DateTimeField(
        null=True, blank=True, help_text="When a transient state counts as stuck for the reconciler."
    )
    ip_address = models.GenericIPAddressField(null=True, blank=True)
    vnc_port = models.PositiveIntegerField(null=True, blank=True)
    vnc_password = models.CharField(max_length=8, blank=True, default="")
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created = models.DateTimeField(default=timezone.now)
    updated = models.DateTimeField(auto_now=True)
    deleted_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created"]
        constraints = [
            models.UniqueConstraint(
                fields=["tenant", "name"],
                condition=Q(deleted_at__isnull=True),
                name="instance_unique_live_name",
            ),
        ]
        indexes = [models.Index(fields=["tenant", "state"], name="instance_tenant_state")]

    def __str__(self) -> str:
        return self.name

    @property
    def domain_name(self) -> str:
        """Name of the libvirt domain (or container) on the host."""
        return f"{settings.NUBIS_DOMAIN_PREFIX}{self.uuid}"


class OperationKind(models.TextChoices):
    CREATE = "create", "Create"
    START = "start", "Start"
    STOP = "stop", "Stop"
    REBOOT = "reboot", "Reboot"
    RESIZE = "resize", "Resize"
    SNAPSHOT = "snapshot", "Snapshot"
    REVERT = "revert", "Revert to snapshot"
    DELETE_SNAPSHOT = "delete_snapshot", "Delete snapshot"
    DELETE = "delete", "Delete"


class OperationState(models.TextChoices):
    PENDING = "pending", "Pending"
    RUNNING = "running", "Running"
    SUCCEEDED = "succeeded", "Succeeded"
    FAILED = "failed", "Failed"


class Operation(TenantOwned):
    """One asynchronous action on an instance, as the API returns it and the agent records it."""

    uuid = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    kind = models.CharField(max_length=20, choices=OperationKind.choices)
    instance = models.ForeignKey(Instance, on_delete=models.PROTECT, related_name="operations")
    state = models.CharField(max_length=10, choices=OperationState.choices, default=OperationState.PENDING)
    progress = models.PositiveSmallIntegerField(default=0)
    step = models.CharField(max_length=50, blank=True, default="", help_text="The last step completed.")
    params = models.JSONField(default=dict, blank=True)
    error = models.TextField(blank=True, default="")
    idempotency_key = models.CharField(max_length=100, null=True, blank=True)  # noqa: DJ001 - NULL: no key
    requested_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    attempts = models.PositiveSmallIntegerField(default=0)
    created = models.DateTimeField(default=timezone.now)
    started = models.DateTimeField(null=True, blank=True)
    finished = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created"]
        constraints = [
            models.UniqueConstraint(
                fields=["tenant", "idempotency_key"],
                condition=Q(idempotency_key__isnull=False),
                name="operation_unique_idempotency_key",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.kind} {self.instance_id} ({self.state})"

    @property
    def done(self) -> bool:
        return self.state in (OperationState.SUCCEEDED, OperationState.FAILED)


class Snapshot(TenantOwned):
    """A named point-in-time copy of an instance's disk (and memory, when taken running)."""

    instance = models.ForeignKey(Instance, on_delete=models.CASCADE, related_name="snapshots")
    name = models.CharField(max_length=63)
    created = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["created"]
        constraints = [models.UniqueConstraint(fields=["instance", "name"], name="snapshot_unique_name")]

    def __str__(self) -> str:
        return f"{self.instance}@{self.name}"
