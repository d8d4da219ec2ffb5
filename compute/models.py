"""Hosts, flavors, images, instances, their operations and snapshots."""

from __future__ import annotations

import ipaddress
import re
import uuid
from datetime import datetime
from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models
from django.db.models import Q
from django.utils import timezone

from core.querysets import VersionedQuerySet, count_save
from core.queues import host_queue
from tenants.models import PriorityClass, Tenant, TenantOwned


class HostState(models.TextChoices):
    ENABLED = "enabled", "Enabled"
    DISABLED = "disabled", "Disabled"
    # Placement skips a host entering maintenance while its instances are moved off it.
    ENTERING_MAINTENANCE = "entering_maintenance", "Entering maintenance"
    MAINTENANCE = "maintenance", "Maintenance"
    DOWN = "down", "Down"


class Paging(models.TextChoices):
    EPT = "ept", "EPT (Intel nested paging)"
    NPT = "npt", "NPT (AMD nested paging)"
    SHADOW = "shadow", "Shadow page tables"
    NONE = "none", "No KVM (software MMU under TCG)"


class HostQuerySet(VersionedQuerySet):
    # Fields that change all the time; an update of anything else moves the host's version.
    live_fields = frozenset({"heartbeat_at", "state", "routes", "fenced_at", "evacuation"})


class Host(models.Model):
    """A compute host: what it has, what its hypervisor can really do, and whether it is alive."""

    name = models.CharField(max_length=100, unique=True)
    uri = models.CharField("libvirt URI", max_length=255)
    # Where the other hosts reach this one: its address on the hosts' own network (the underlay of
    # the tenant overlays, and the path of live migrations), and the libvirt URI a peer's daemon
    # migrates to (NUBIS_LIBVIRT_PEER_URI with {address}). Empty: a lone host, which joins no
    # overlay and takes no migration.
    address = models.GenericIPAddressField("host address", protocol="IPv4", null=True, blank=True)
    peer_uri = models.CharField("libvirt URI for peers", max_length=255, blank=True, default="")
    state = models.CharField(max_length=24, choices=HostState.choices, default=HostState.ENABLED)
    # The libvirt daemon's own host UUID: agents of several hosts may share one daemon (tests), and
    # a guest is another host's stale copy only when that host's daemon is not this one.
    hypervisor_uuid = models.CharField(max_length=36, blank=True, default="")
    # Set when the host was declared dead and fenced: it may run no guest until its agent has
    # destroyed the ones it still had (compute.services.ha); its heartbeat alone does not revive it.
    fenced_at = models.DateTimeField(null=True, blank=True)
    # While it enters maintenance: how the evacuation stands ({"remaining", "moving", "blocked":
    # [{"instance", "name", "reason"}], "at"}), written by compute.services.evacuation.
    evacuation = models.JSONField(default=dict, blank=True, editable=False)
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
    # Overcommit of this host; empty: its aggregate's, else the cloud's (NUBIS_OVERCOMMIT).
    cpu_ratio = models.FloatField(
        "CPU overcommit", null=True, blank=True, validators=[MinValueValidator(0.1), MaxValueValidator(32.0)]
    )
    ram_ratio = models.FloatField(
        "RAM overcommit", null=True, blank=True, validators=[MinValueValidator(0.1), MaxValueValidator(4.0)]
    )
    disk_ratio = models.FloatField(
        "disk overcommit", null=True, blank=True, validators=[MinValueValidator(0.1), MaxValueValidator(10.0)]
    )
    probed_at = models.DateTimeField(null=True, blank=True)
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    # What the host routes or has addresses in, whoever made it ([{"cidr", "dev"}], from its agent's
    # heartbeat): the control side, which may run elsewhere, hands out no tenant subnet overlapping it.
    routes = models.JSONField(default=list, blank=True, editable=False)
    registered_at = models.DateTimeField(default=timezone.now)
    # Counts saves (admin edits, the agent's registration); heartbeats and state changes are
    # updates that leave it alone. The scheduler re-reads a host's capacity and capabilities only
    # when it moves (a counter, not a timestamp: a late commit cannot hide behind a later one).
    version = models.PositiveIntegerField(default=0, editable=False)

    objects = HostQuerySet.as_manager()

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name

    def save(self, *args: Any, **kwargs: Any) -> None:
        count_save(self, kwargs)
        super().save(*args, **kwargs)

    @property
    def queue(self) -> str:
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


class Allocation(models.TextChoices):
    STATIC = "static", "Static: the full size is reserved for the instance's life"
    DYNAMIC = "dynamic", "Dynamic: the minimum is reserved, memory follows demand up to the size"


# Below this a VM's kernel does not boot; below the other runc's own init cannot start.
VM_MIN_RAM_MIB = 64
CONTAINER_MIN_RAM_MIB = 8
# The floor of dynamic CPU of a flavor that names none, per vCPU (in % of one CPU).
MIN_CPU_PCT_PER_VCPU = 10


class Flavor(models.Model):
    """Size and virtualization settings of an instance; public, or private to one tenant."""

    name = models.CharField(max_length=64, unique=True)
    vcpus = models.PositiveIntegerField(validators=[MinValueValidator(1)])
    ram_mib = models.PositiveIntegerField(
        "RAM (MiB)",
        validators=[MinValueValidator(CONTAINER_MIN_RAM_MIB)],
        help_text=f"At least {VM_MIN_RAM_MIB} MiB for a VM; a container may go down to the runtime's "
        f"minimum of {CONTAINER_MIN_RAM_MIB} MiB.",
    )
    disk_gib = models.PositiveIntegerField("disk (GiB)", validators=[MinValueValidator(1)])
    cpu_mode = models.CharField(max_length=10, choices=CpuMode.choices, default=CpuMode.EMULATED)
    io_model = models.CharField(max_length=10, choices=IoModel.choices, default=IoModel.VIRTIO)
    balloon = models.BooleanField("memory balloon", default=True)
    min_ram_mib = models.PositiveIntegerField(
        "minimum RAM (MiB)",
        null=True,
        blank=True,
        help_text="Floor of dynamic memory (the balloon of a VM, the memory limit of a container).",
    )
    min_cpu_pct = models.PositiveIntegerField(
        "minimum CPU (% of one CPU)",
        null=True,
        blank=True,
        validators=[MinValueValidator(1)],
        help_text=f"Floor of dynamic CPU (the CPU quota of a container, the CPU shares of a VM); empty: "
        f"{MIN_CPU_PCT_PER_VCPU}% per vCPU.",
    )
    allocation = models.CharField(
        max_length=8,
        choices=Allocation.choices,
        default=Allocation.STATIC,
        help_text="Dynamic reserves the minimum RAM and lets the adjuster move memory between the "
        "minimum and the RAM as demand goes; it needs a minimum.",
    )
    pci_passthrough = models.CharField(
        "PCI device to pass through",
        max_length=20,
        blank=True,
        default="",
        help_text="Host PCI address (0000:03:00.0), attached by VFIO; needs a host with an IOMMU.",
    )
    # Container limits (cgroups); a VM is confined by its vCPUs and RAM instead.
    cpu_limit_pct = models.PositiveIntegerField(
        "container CPU cap (% of one CPU)",
        null=True,
        blank=True,
        validators=[MinValueValidator(1)],
        help_text="CFS quota of a container; empty means vCPUs x 100%.",
    )
    pids_max = models.PositiveIntegerField(
        "container process limit", default=512, validators=[MinValueValidator(8)]
    )
    swap_mib = models.PositiveIntegerField("container swap (MiB)", default=0)
    blkio_weight = models.PositiveSmallIntegerField(
        "container block I/O weight",
        null=True,
        blank=True,
        validators=[MinValueValidator(10), MaxValueValidator(1000)],
        help_text="Proportional weight (10-1000); needs a host whose I/O scheduler offers weights.",
    )
    ha = models.BooleanField(
        "HA restart",
        null=True,
        blank=True,
        help_text="Restart its instances on another host when theirs dies. Empty: on for VMs, off for "
        "containers; a request may say otherwise.",
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
            models.CheckConstraint(
                condition=Q(allocation="static") | Q(min_ram_mib__isnull=False),
                name="flavor_dynamic_needs_min_ram",
            ),
        ]

    def __str__(self) -> str:
        return self.name

    @property
    def cpu_cap_pct(self) -> int:
        """A container's CPU cap in percent of one CPU."""
        return self.cpu_limit_pct or self.vcpus * 100

    def clean(self) -> None:
        if self.public and self.tenant_id:
            raise ValidationError({"tenant": "A public flavor belongs to no tenant."})
        if not self.public and not self.tenant_id:
            raise ValidationError({"tenant": "A private flavor needs its tenant."})
        if self.min_ram_mib is not None and self.ram_mib is not None and self.min_ram_mib > self.ram_mib:
            raise ValidationError({"min_ram_mib": "The minimum RAM cannot be above the RAM."})
        if self.min_ram_mib is not None and not self.balloon:
            raise ValidationError({"min_ram_mib": "Dynamic memory needs the memory balloon."})
        if self.min_ram_mib is not None and self.min_ram_mib < CONTAINER_MIN_RAM_MIB:
            raise ValidationError(
                {"min_ram_mib": f"The minimum RAM cannot be below the runtime's {CONTAINER_MIN_RAM_MIB} MiB."}
            )
        if self.allocation == Allocation.DYNAMIC and self.min_ram_mib is None:
            raise ValidationError({"min_ram_mib": "Dynamic allocation needs a minimum RAM below the RAM."})
        if self.allocation == Allocation.DYNAMIC and self.min_ram_mib == self.ram_mib:
            raise ValidationError(
                {"min_ram_mib": "Dynamic allocation needs a minimum below the RAM (they are equal)."}
            )
        if self.min_cpu_pct is not None and self.vcpus is not None and self.min_cpu_pct > self.cpu_cap_pct:
            raise ValidationError(
                {"min_cpu_pct": f"The minimum CPU cannot be above the flavor's CPU ({self.cpu_cap_pct}%)."}
            )


class ImageKind(models.TextChoices):
    KERNEL = "kernel", "Kernel + initramfs (with a base disk)"
    DISK = "disk", "Bootable qcow2 disk"
    ROOTFS = "rootfs", "Container root filesystem (tarball)"


class DiskFormat(models.TextChoices):
    QCOW2 = "qcow2", "qcow2"
    RAW = "raw", "raw"


class ImageState(models.TextChoices):
    UPLOADING = "uploading", "Uploading"
    ACTIVE = "active", "Active"
    # An uploaded image its tenant deleted while (deleted) instances still name it: its file and
    # quota claim are gone, the row stays for their history under a freed name.
    DELETED = "deleted", "Deleted"


class Image(models.Model):
    """A guest image in the registry: its files, their checksum, and who may use it.

    Built images are public and belong to no tenant. An uploaded image belongs to the tenant that
    uploaded it (``tenant``) and is private to it unless staff make it public.
    """

    name = models.CharField(max_length=100)
    kind = models.CharField(max_length=10, choices=ImageKind.choices)
    os_name = models.CharField("OS", max_length=100)
    kernel_path = models.CharField(max_length=500, blank=True, default="")
    initrd_path = models.CharField(max_length=500, blank=True, default="")
    disk_path = models.CharField(
        max_length=500, help_text="Base disk; each instance gets a qcow2 overlay on it."
    )
    disk_format = models.CharField(
        max_length=8,
        choices=DiskFormat.choices,
        default=DiskFormat.QCOW2,
        help_text="The base disk's format, always given to QEMU explicitly (never probed).",
    )
    virtual_size_bytes = models.PositiveBigIntegerField(
        default=0, help_text="The base disk's virtual size; an instance's disk is at least this big."
    )
    cmdline = models.CharField(max_length=300, blank=True, default="")
    cloud_init = models.BooleanField(
        default=False, help_text="Its guests read a NoCloud seed (hostname, SSH keys, user-data)."
    )
    login_user = models.CharField(
        max_length=32, blank=True, default="", help_text="The user the SSH keys are given to."
    )
    sha256 = models.CharField(max_length=64)
    size_bytes = models.PositiveBigIntegerField(default=0)
    state = models.CharField(max_length=10, choices=ImageState.choices, default=ImageState.ACTIVE)
    public = models.BooleanField(default=True)
    tenant = models.ForeignKey(Tenant, null=True, blank=True, on_delete=models.PROTECT, related_name="images")
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["name"]
        constraints = [
            models.CheckConstraint(
                condition=Q(public=True) | Q(tenant__isnull=False),
                name="image_public_or_owned_by_a_tenant",
            ),
            models.UniqueConstraint(
                fields=["name"], condition=Q(tenant__isnull=True), name="image_unique_public_name"
            ),
            models.UniqueConstraint(fields=["tenant", "name"], name="image_unique_tenant_name"),
        ]

    def __str__(self) -> str:
        return self.name

    def files(self) -> list[str]:
        """The files the checksum covers, in order."""
        return [p for p in (self.kernel_path, self.initrd_path, self.disk_path) if p]


def domain_uuid(name: str) -> str | None:
    """The instance UUID in one of our domain, container or namespace names (None for others').

    Only a canonical UUID right after the prefix counts: a deployment whose prefix merely starts
    with ours ("nubis-t42-" against "nubis-") is someone else.
    """
    prefix = settings.NUBIS_DOMAIN_PREFIX
    if not name.startswith(prefix):
        return None
    rest = name.removeprefix(prefix)
    try:
        canonical = str(uuid.UUID(rest))
    except ValueError:
        return None
    return canonical if canonical == rest else None


class InstanceKind(models.TextChoices):
    VM = "vm", "Virtual machine"
    CONTAINER = "container", "Container"


class InstanceState(models.TextChoices):
    REQUESTED = "requested", "Requested"
    QUEUED = "queued", "Waiting for capacity"
    AWAITING = "awaiting", "Waiting for staff to place it"
    SCHEDULED = "scheduled", "Scheduled"
    BUILDING = "building", "Building"
    RUNNING = "running", "Running"
    STOPPING = "stopping", "Stopping"
    STOPPED = "stopped", "Stopped"
    STARTING = "starting", "Starting"
    REBOOTING = "rebooting", "Rebooting"
    RESIZING = "resizing", "Resizing"
    MIGRATING = "migrating", "Migrating"
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
        InstanceState.MIGRATING,
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
    # While it moves: the host it goes to, which holds its capacity too until the move ends.
    migration_host = models.ForeignKey(
        Host, null=True, blank=True, on_delete=models.PROTECT, related_name="incoming"
    )
    # Restarted on another host when its host dies (compute.services.ha).
    ha = models.BooleanField("HA restart", default=False)
    # DRS leaves it where it is (vSphere's per-VM "disabled" level); maintenance still moves it.
    drs_pinned = models.BooleanField(
        "do not move (DRS)",
        default=False,
        help_text="The balancer never moves it; maintenance and HA still do.",
    )
    priority = models.PositiveSmallIntegerField(choices=PriorityClass.choices, default=PriorityClass.NORMAL)
    allocation = models.CharField(max_length=8, choices=Allocation.choices, default=Allocation.STATIC)
    server_group = models.ForeignKey(
        "ServerGroup", null=True, blank=True, on_delete=models.PROTECT, related_name="instances"
    )
    # Live memory target (balloon) and size, which resize may change within the flavor's range.
    vcpus = models.PositiveIntegerField(default=1)
    ram_mib = models.PositiveIntegerField(default=64)
    current_ram_mib = models.PositiveIntegerField(default=64)
    # Dynamic CPU grant in % of one CPU (a container's CPU quota, a VM's CPU shares); empty: all of
    # its CPU (static, or not moved by the adjuster yet): see cpu_grant_pct.
    current_cpu_pct = models.PositiveIntegerField(null=True, blank=True)
    disk_gib = models.PositiveIntegerField(default=1)
    fault = models.TextField(blank=True, default="")
    fault_at = models.DateTimeField(null=True, blank=True)
    state_deadline = models.DateTimeField(
        null=True, blank=True, help_text="When a transient state counts as stuck for the reconciler."
    )
    network = models.ForeignKey(
        "Network", null=True, blank=True, on_delete=models.PROTECT, related_name="instances"
    )
    security_groups: models.ManyToManyField[SecurityGroup, Any] = models.ManyToManyField(
        "SecurityGroup", blank=True, related_name="instances"
    )
    mac_address = models.CharField(max_length=17, blank=True, default="")
    ip_address = models.GenericIPAddressField(null=True, blank=True)
    oom_kills = models.PositiveIntegerField(default=0, help_text="Processes the kernel's OOM killer killed.")
    vnc_port = models.PositiveIntegerField(null=True, blank=True)
    vnc_password = models.CharField(max_length=8, blank=True, default="")
    # Given to the guest at its first boot (cloud-init's NoCloud seed), as they were at create time:
    # [{"name", "fingerprint", "public_key"}] of the key pairs the request named.
    ssh_keys = models.JSONField(default=list, blank=True)
    user_data = models.TextField(blank=True, default="", help_text="cloud-init user-data (its owner's only).")
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
        indexes = [
            models.Index(fields=["tenant", "state"], name="instance_tenant_state"),
            # The API's lists page through a tenant's instances by creation time (then id).
            models.Index(fields=["tenant", "created", "id"], name="instance_tenant_created"),
        ]

    def __str__(self) -> str:
        return self.name

    @property
    def domain_name(self) -> str:
        """Name of the libvirt domain (or container) on the host."""
        return f"{settings.NUBIS_DOMAIN_PREFIX}{self.uuid}"

    @property
    def console_log(self) -> str:
        """Relative to its instance directory: a VM's serial console, or a container's stdout."""
        return "serial.log" if self.kind == InstanceKind.VM else "stdout.log"

    @property
    def port_name(self) -> str:
        """Host-side interface on the network's bridge: a VM's tap or a container's veth end."""
        return f"{'nt' if self.kind == InstanceKind.VM else 'nv'}{self.uuid.hex[:12]}"

    @property
    def cpu_bounds_pct(self) -> tuple[int, int]:
        """Floor and ceiling of its CPU grant, in % of one CPU. The ceiling: a container's CPU cap
        (its flavor's), a VM's vCPUs; the floor: its flavor's ``min_cpu_pct``, else
        ``MIN_CPU_PCT_PER_VCPU`` per vCPU, never above the ceiling."""
        ceiling = self.flavor.cpu_cap_pct if self.kind == InstanceKind.CONTAINER else self.vcpus * 100
        floor = self.flavor.min_cpu_pct or MIN_CPU_PCT_PER_VCPU * self.vcpus
        return min(floor, ceiling), ceiling

    @property
    def cpu_grant_pct(self) -> int:
        """The CPU it has now, in % of one CPU: the adjuster's grant if dynamic (at most the
        ceiling), else all of it."""
        ceiling = self.cpu_bounds_pct[1]
        if self.allocation != Allocation.DYNAMIC or self.current_cpu_pct is None:
            return ceiling
        return min(self.current_cpu_pct, ceiling)

    def groups(self) -> list[SecurityGroup]:
        """Its security groups (the tenant-scoped way: the M2M manager itself is not scoped)."""
        cache = getattr(self, "_prefetched_objects_cache", {})
        if "security_groups" in cache:
            return list(cache["security_groups"])
        return list(SecurityGroup.objects.for_tenant(self.tenant_id).filter(instances=self))

    def groups_set(self, groups: list[SecurityGroup]) -> None:
        """Replace its security groups (through rows: the M2M manager itself is not scoped)."""
        through = Instance.security_groups.through
        through.objects.filter(instance_id=self.pk).delete()
        through.objects.bulk_create([through(instance_id=self.pk, securitygroup_id=g.pk) for g in groups])

    @property
    def netns_name(self) -> str:
        """The network namespace a container joins (named like its runc container)."""
        return self.domain_name


class OperationKind(models.TextChoices):
    CREATE = "create", "Create"
    START = "start", "Start"
    STOP = "stop", "Stop"
    REBOOT = "reboot", "Reboot"
    RESIZE = "resize", "Resize"
    SNAPSHOT = "snapshot", "Snapshot"
    REVERT = "revert", "Revert to snapshot"
    DELETE_SNAPSHOT = "delete_snapshot", "Delete snapshot"
    MIGRATE = "migrate", "Migrate"
    HA_RESTART = "ha_restart", "Restart after host failure"
    DELETE = "delete", "Delete"
    ATTACH_VOLUME = "attach_volume", "Attach a volume"
    DETACH_VOLUME = "detach_volume", "Detach a volume"


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
    # What it measured or decided, for the record (a migration's times and bytes moved).
    result = models.JSONField(default=dict, blank=True)
    error = models.TextField(blank=True, default="")
    idempotency_key = models.CharField(max_length=100, null=True, blank=True)  # noqa: DJ001 - NULL: no key
    requested_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    attempts = models.PositiveSmallIntegerField(default=0)
    # The outbox (compute.services.outbox): the row is the promise, a message on the host's queue
    # only its delivery. When the dispatcher may send it (again) while it stays pending, how often
    # it was handed to the broker, when last, and why the last try failed.
    dispatch_after = models.DateTimeField(null=True, blank=True)
    dispatches = models.PositiveSmallIntegerField(default=0)
    dispatched_at = models.DateTimeField(null=True, blank=True)
    dispatch_error = models.CharField(max_length=300, blank=True, default="")
    # The agent that claimed it: "<host>/<pid>" (a lost claim's fault names it).
    claimed_by = models.CharField(max_length=120, blank=True, default="")
    created = models.DateTimeField(default=timezone.now)
    started = models.DateTimeField(null=True, blank=True)
    finished = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created"]
        indexes = [
            models.Index(fields=["tenant", "created", "id"], name="operation_tenant_created"),
            # The dispatcher's and the claim watch's scans: unfinished operations only.
            models.Index(
                fields=["dispatch_after"],
                condition=Q(state__in=["pending", "running"]),
                name="operation_unfinished",
            ),
        ]
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


class Network(TenantOwned):
    """A tenant's isolated L2 segment: a bridge on each host it is used on, DHCP from its subnet."""

    uuid = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    name = models.CharField(max_length=63)
    cidr = models.CharField("subnet (CIDR)", max_length=18, help_text="An IPv4 subnet, /16 to /29.")
    gateway = models.GenericIPAddressField(protocol="IPv4")
    nat_egress = models.BooleanField(
        "NAT egress", default=False, help_text="Let instances reach outside networks through the host (NAT)."
    )
    created = models.DateTimeField(default=timezone.now)
    deleted_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["name"]
        constraints = [
            models.UniqueConstraint(
                fields=["tenant", "name"],
                condition=Q(deleted_at__isnull=True),
                name="network_unique_live_name",
            ),
        ]

    def __str__(self) -> str:
        return self.name

    @property
    def bridge(self) -> str:
        """The Linux bridge on a host (interface names are at most 15 characters)."""
        return f"nbr{self.uuid.hex[:12]}"


class KeyPair(TenantOwned):
    """An SSH public key of a tenant, given to the guests whose create request names it."""

    name = models.CharField(max_length=63)
    key_type = models.CharField(max_length=40)
    public_key = models.TextField()
    fingerprint = models.CharField(max_length=80, help_text="SHA256 of the key, as ssh-keygen -l shows it.")
    bits = models.PositiveIntegerField(default=0)
    comment = models.CharField(max_length=200, blank=True, default="")
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["name"]
        constraints = [models.UniqueConstraint(fields=["tenant", "name"], name="keypair_unique_name")]

    def __str__(self) -> str:
        return self.name


class SecurityGroup(TenantOwned):
    """Named set of ingress allow rules; an instance accepts what any of its groups allows."""

    name = models.CharField(max_length=63)
    description = models.CharField(max_length=200, blank=True, default="")
    created = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["name"]
        constraints = [models.UniqueConstraint(fields=["tenant", "name"], name="securitygroup_unique_name")]

    def __str__(self) -> str:
        return self.name


class GroupPolicy(models.TextChoices):
    AFFINITY = "affinity", "Affinity: all members on one host"
    ANTI_AFFINITY = "anti-affinity", "Anti-affinity: every member on a different host"
    SOFT_AFFINITY = "soft-affinity", "Soft affinity: on one host where possible"
    SOFT_ANTI_AFFINITY = "soft-anti-affinity", "Soft anti-affinity: on different hosts where possible"


class ServerGroup(TenantOwned):
    """Instances placed together (affinity) or apart (anti-affinity), strictly or where possible."""

    name = models.CharField(max_length=63)
    policy = models.CharField(max_length=20, choices=GroupPolicy.choices)
    created = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["name"]
        constraints = [models.UniqueConstraint(fields=["tenant", "name"], name="servergroup_unique_name")]

    def __str__(self) -> str:
        return f"{self.name} ({self.policy})"


class Protocol(models.TextChoices):
    TCP = "tcp", "TCP"
    UDP = "udp", "UDP"
    ICMP = "icmp", "ICMP"
    ANY = "any", "Any protocol"


class SecurityRule(TenantOwned):
    """Allow ingress of ``protocol`` (to ports port_min..port_max) from ``cidr``."""

    group = models.ForeignKey(SecurityGroup, on_delete=models.CASCADE, related_name="rules")
    protocol = models.CharField(max_length=4, choices=Protocol.choices)
    port_min = models.PositiveIntegerField(null=True, blank=True)
    port_max = models.PositiveIntegerField(null=True, blank=True)
    cidr = models.CharField("source (CIDR)", max_length=18)
    created = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["created", "pk"]

    def __str__(self) -> str:
        ports = "" if self.port_min is None else f":{self.port_min}-{self.port_max}"
        return f"{self.protocol}{ports} from {self.cidr}"


class SampleResolution(models.IntegerChoices):
    RAW = 10, "10 seconds"
    MINUTE = 60, "1 minute"
    HOUR = 3600, "1 hour"


class UsageSample(models.Model):
    """One point of an instance's or a host's usage time series (rates over the sample's interval).

    Raw samples are rolled up into minute and hour averages and then dropped (see compute.metrics).
    """

    host = models.ForeignKey(Host, null=True, blank=True, on_delete=models.CASCADE, related_name="samples")
    instance = models.ForeignKey(
        Instance, null=True, blank=True, on_delete=models.CASCADE, related_name="samples"
    )
    resolution = models.PositiveIntegerField(choices=SampleResolution.choices, default=SampleResolution.RAW)
    at = models.DateTimeField()
    cpu_pct = models.FloatField(help_text="Percent of one CPU (an instance) or of all CPUs (a host).")
    mem_bytes = models.BigIntegerField()
    mem_peak_bytes = models.BigIntegerField(null=True, blank=True)
    pids = models.PositiveIntegerField(null=True, blank=True)
    blk_read_bps = models.FloatField(default=0.0)
    blk_write_bps = models.FloatField(default=0.0)
    net_rx_bps = models.FloatField(default=0.0)
    net_tx_bps = models.FloatField(default=0.0)

    class Meta:
        ordering = ["at"]
        constraints = [
            models.CheckConstraint(
                condition=Q(host__isnull=True, instance__isnull=False)
                | Q(host__isnull=False, instance__isnull=True),
                name="usagesample_host_xor_instance",
            ),
        ]
        indexes = [
            models.Index(fields=["instance", "resolution", "at"], name="sample_instance_res_at"),
            models.Index(fields=["host", "resolution", "at"], name="sample_host_res_at"),
            models.Index(fields=["resolution", "at"], name="sample_res_at"),  # for the rollup
        ]

    def __str__(self) -> str:
        return f"{self.instance_id or self.host_id}@{self.at:%Y-%m-%d %H:%M:%S}/{self.resolution}s"


class FloatingPool(models.Model):
    """An external network (staff-defined, no tenant's): the addresses handed out as floating ones.

    Every host that may run an instance with one of its addresses has ``interface`` (a provider
    bridge or VLAN) on it; the host answers ARP there for the addresses of the instances it runs.
    """

    name = models.CharField(max_length=63, unique=True)
    cidr = models.CharField(
        "subnet (CIDR)", max_length=18, help_text="The external network, e.g. 203.0.113.0/24."
    )
    gateway = models.GenericIPAddressField(
        protocol="IPv4",
        null=True,
        blank=True,
        help_text="The router of the external network: instances with a floating address leave through "
        "it (policy routing). Empty: through the host's own routes.",
    )
    interface = models.CharField(
        max_length=15, help_text="The host-side interface or bridge the external network is on (every host)."
    )
    range_start = models.GenericIPAddressField("first address", protocol="IPv4")
    range_end = models.GenericIPAddressField("last address", protocol="IPv4")
    created = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return f"{self.name} ({self.cidr})"

    def clean(self) -> None:
        errors: dict[str, str] = {}
        try:
            net = ipaddress.IPv4Network(self.cidr)
        except ValueError as exc:
            raise ValidationError({"cidr": f"invalid CIDR: {exc}"}) from None
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,14}", self.interface or ""):
            errors["interface"] = "an interface name: 1-15 of letters, digits, _ . -"
        elif self.interface.startswith("nbr"):
            errors["interface"] = "nbr… names are tenant bridges"
        bounds = {}
        for field in ("range_start", "range_end"):
            try:
                address = ipaddress.IPv4Address(getattr(self, field))
            except ValueError:
                errors[field] = "an IPv4 address"
                continue
            if address not in net or address in (net.network_address, net.broadcast_address):
                errors[field] = f"{address} is not a host address of {net}"
            bounds[field] = address
        if len(bounds) == 2 and bounds["range_start"] > bounds["range_end"]:
            errors["range_end"] = "the last address is below the first"
        if self.gateway:
            gateway = ipaddress.IPv4Address(self.gateway)
            if gateway not in net:
                errors["gateway"] = f"{gateway} is not in {net}"
            elif len(bounds) == 2 and bounds["range_start"] <= gateway <= bounds["range_end"]:
                errors["gateway"] = "the gateway is inside the range handed out"
        if errors:
            raise ValidationError(errors)


class FloatingIP(TenantOwned):
    """A tenant's address from a floating pool: 1:1 NAT to the private address of its instance."""

    address = models.GenericIPAddressField(protocol="IPv4", unique=True)
    pool = models.ForeignKey(FloatingPool, on_delete=models.PROTECT, related_name="addresses")
    instance = models.ForeignKey(
        Instance, null=True, blank=True, on_delete=models.SET_NULL, related_name="floating_ips"
    )
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["created", "pk"]
        constraints = [
            # 1:1 NAT: an instance's outbound traffic leaves from one address.
            models.UniqueConstraint(fields=["instance"], name="floatingip_one_per_instance"),
        ]

    def __str__(self) -> str:
        return self.address


class PortForward(TenantOwned):
    """A host port forwarded to a port of an instance (tcp), where no floating pool exists."""

    instance = models.ForeignKey(Instance, on_delete=models.CASCADE, related_name="port_forwards")
    port = models.PositiveIntegerField(validators=[MinValueValidator(1), MaxValueValidator(65535)])
    host_port = models.PositiveIntegerField(unique=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["created", "pk"]
        constraints = [models.UniqueConstraint(fields=["instance", "port"], name="portforward_unique_port")]

    def __str__(self) -> str:
        return f":{self.host_port} -> {self.instance_id}:{self.port}"


class VolumeState(models.TextChoices):
    CREATING = "creating", "Creating"
    AVAILABLE = "available", "Available"
    ATTACHING = "attaching", "Attaching"
    IN_USE = "in-use", "In use"
    DETACHING = "detaching", "Detaching"
    RESIZING = "resizing", "Resizing"
    SNAPSHOTTING = "snapshotting", "Taking a snapshot"
    DELETING = "deleting", "Deleting"
    DELETED = "deleted", "Deleted"
    ERROR = "error", "Error"


class Volume(TenantOwned):
    """A tenant's persistent disk: a qcow2 file under ``volumes/`` of the instance store, attached to
    at most one VM at a time, and surviving it (compute.services.volumes)."""

    uuid = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    name = models.CharField(max_length=63)
    size_gib = models.PositiveIntegerField("size (GiB)", validators=[MinValueValidator(1)])
    format = models.CharField(max_length=8, choices=DiskFormat.choices, default=DiskFormat.QCOW2)
    state = models.CharField(max_length=12, choices=VolumeState.choices, default=VolumeState.CREATING)
    fault = models.TextField(blank=True, default="")
    # The host whose instance store holds the file (with a shared store every host sees it).
    host = models.ForeignKey(Host, null=True, blank=True, on_delete=models.PROTECT, related_name="volumes")
    instance = models.ForeignKey(
        Instance, null=True, blank=True, on_delete=models.PROTECT, related_name="volumes"
    )
    device = models.CharField(max_length=8, blank=True, default="", help_text="Its disk in the VM (vdb...).")
    source_image = models.ForeignKey(
        Image, null=True, blank=True, on_delete=models.SET_NULL, related_name="volumes"
    )
    source_snapshot = models.ForeignKey(
        "VolumeSnapshot", null=True, blank=True, on_delete=models.SET_NULL, related_name="volumes"
    )
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created = models.DateTimeField(default=timezone.now)
    deleted_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["name"]
        constraints = [
            models.UniqueConstraint(
                fields=["tenant", "name"],
                condition=Q(deleted_at__isnull=True),
                name="volume_unique_live_name",
            ),
            models.UniqueConstraint(
                fields=["instance", "device"],
                condition=Q(instance__isnull=False),
                name="volume_unique_device",
            ),
        ]

    def __str__(self) -> str:
        return self.name


class VolumeSnapshot(TenantOwned):
    """A point-in-time copy of a volume: an internal qcow2 snapshot in its file."""

    volume = models.ForeignKey(Volume, on_delete=models.CASCADE, related_name="snapshots")
    name = models.CharField(max_length=63)
    size_gib = models.PositiveIntegerField("size (GiB)")
    created = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["created", "pk"]
        constraints = [models.UniqueConstraint(fields=["volume", "name"], name="volumesnapshot_unique_name")]

    def __str__(self) -> str:
        return f"{self.volume}@{self.name}"


class InstanceKey(TenantOwned):
    """An instance's data key (its disks' LUKS passphrase), wrapped by its tenant's key.

    Deleting the instance destroys it (crypto-erase): ``wrapped`` is emptied and ``destroyed`` set,
    so the row says the key existed and when it went, and no copy of the disks opens again.
    """

    instance = models.OneToOneField(Instance, on_delete=models.CASCADE, related_name="data_key")
    wrapped = models.TextField(blank=True, default="")
    tenant_key_version = models.PositiveIntegerField(default=1)
    created = models.DateTimeField(default=timezone.now)
    destroyed = models.DateTimeField(null=True, blank=True)

    def __str__(self) -> str:
        return f"data key of {self.instance}" + (" (destroyed)" if self.destroyed else "")
