"""Django admin for hosts (with their capability probe), flavors, images, instances and operations."""

from __future__ import annotations

from typing import Any

from django.contrib import admin, messages
from django.db.models import Avg, OuterRef, QuerySet, Subquery
from django.http import HttpRequest
from django.urls import reverse
from django.utils import timezone
from django.utils.html import format_html

from compute.models import (
    Flavor,
    FloatingIP,
    FloatingPool,
    Host,
    Image,
    Instance,
    KeyPair,
    Network,
    Operation,
    PortForward,
    SampleResolution,
    SecurityGroup,
    SecurityRule,
    ServerGroup,
    Snapshot,
    UsageSample,
    Volume,
)
from compute.services.drs import instance_drs_pin
from compute.services.hosts import host_maintenance_set
from core.errors import ServiceError
from security.audit import Actor
from security.models import Source
from tenants.admin import TenantOwnedAdmin


class ReadOnlyMixin:
    """Rows that only the system writes: staff read them here, and change them through the portal."""

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(Host)
class HostAdmin(admin.ModelAdmin):
    """Hosts with their capability probe, state and overcommit; maintenance goes through the service."""

    list_display = [
        "name",
        "state",
        "simulated",
        "cpus",
        "ram_mib",
        "disk_gib",
        "cpu_ratio",
        "ram_ratio",
        "disk_ratio",
        "kvm_usable",
        "tcg_available",
        "paging",
        "iommu",
        "vmm",
        "address",
        "heartbeat_at",
        "fenced_at",
        "cpu_load",
        "staff_page",
    ]
    list_filter = ["state", "kvm_usable", "paging", "iommu", "simulated"]
    search_fields = ["name"]
    actions = ["maintenance_start", "maintenance_end"]
    readonly_fields = [
        "staff_page",
        "load",
        "uri",
        "cpu_model",
        "cpus",
        "ram_mib",
        "disk_gib",
        "kvm_device",
        "kvm_usable",
        "kvm_probe_detail",
        "tcg_available",
        "paging",
        "iommu",
        "vmm",
        "address",
        "peer_uri",
        "hypervisor_uuid",
        "probed_at",
        "heartbeat_at",
        "fenced_at",
        "evacuation",
        "registered_at",
    ]

    def get_queryset(self, request: HttpRequest) -> QuerySet[Host]:
        # The list's load column: one subquery, not a query per host.
        from compute.metrics import HOST_LOAD_WINDOW

        recent = (
            UsageSample.objects.filter(
                host=OuterRef("pk"),
                resolution=SampleResolution.RAW,
                at__gte=timezone.now() - HOST_LOAD_WINDOW,
            )
            .values("host")
            .annotate(mean=Avg("cpu_pct"))
            .values("mean")
        )
        return super().get_queryset(request).annotate(cpu_load_pct=Subquery(recent))

    @admin.display(description="CPU load (1 min)", ordering="cpu_load_pct")
    def cpu_load(self, obj: Host) -> str:
        value = getattr(obj, "cpu_load_pct", None)
        return "-" if value is None else f"{value:.0f}%"

    @admin.display(description="load (last minute)")
    def load(self, obj: Host) -> str:
        return _load_text(obj)

    @admin.display(description="staff page")
    def staff_page(self, obj: Host) -> str:
        return format_html('<a href="{}#host-{}">capacity and load</a>', reverse("staff-hosts"), obj.pk)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # hosts register themselves when their agent starts

    def _maintenance(self, request: HttpRequest, queryset: QuerySet[Host], on: bool) -> None:
        actor = Actor.from_request(request)
        done, refused = [], []
        for host in queryset:
            try:
                host_maintenance_set(actor=actor, host=host, on=on)
                done.append(host.name)
            except ServiceError as exc:
                refused.append(f"{host.name}: {exc.message}")
        if done:
            verb = "in maintenance" if on else "enabled"
            self.message_user(request, f"{', '.join(done)}: now {verb}.", messages.SUCCESS)
        for problem in refused:
            self.message_user(request, problem, messages.ERROR)

    @admin.action(description="Start maintenance on the selected hosts", permissions=["change"])
    def maintenance_start(self, request: HttpRequest, queryset: QuerySet[Host]) -> None:
        self._maintenance(request, queryset, on=True)

    @admin.action(description="End maintenance on the selected hosts", permissions=["change"])
    def maintenance_end(self, request: HttpRequest, queryset: QuerySet[Host]) -> None:
        self._maintenance(request, queryset, on=False)


def _load_text(host: Host) -> str:
    from compute.metrics import host_load

    load = host_load(host)
    if load is None:
        return "no samples in the last minute"
    mib = 1 << 20
    return (
        f"CPU {load['cpu_pct']:.0f}%, memory {load['mem_bytes'] / mib:.0f} MiB, "
        f"disk {(load['blk_read_bps'] + load['blk_write_bps']) / mib:.1f} MiB/s, "
        f"network {(load['net_rx_bps'] + load['net_tx_bps']) / mib:.1f} MiB/s"
    )


@admin.register(Flavor)
class FlavorAdmin(admin.ModelAdmin):
    list_display = [
        "name",
        "vcpus",
        "ram_mib",
        "disk_gib",
        "cpu_mode",
        "io_model",
        "balloon",
        "allocation",
        "min_ram_mib",
        "pci_passthrough",
        "cpu_limit_pct",
        "pids_max",
        "public",
        "tenant",
    ]
    list_filter = ["cpu_mode", "io_model", "balloon", "allocation", "public"]
    list_select_related = ["tenant"]
    search_fields = ["name"]
    autocomplete_fields = ["tenant"]


@admin.register(Image)
class ImageAdmin(admin.ModelAdmin):
    list_display = [
        "name",
        "kind",
        "os_name",
        "disk_format",
        "size_bytes",
        "state",
        "public",
        "tenant",
        "created",
    ]
    list_filter = ["kind", "public", "state", "disk_format"]
    list_select_related = ["tenant"]
    search_fields = ["name", "os_name", "sha256"]
    autocomplete_fields = ["tenant"]
    actions = ["make_public", "make_private"]
    # What an upload's checks vouched for: a tenant's uploaded image keeps its owner, file and format.
    uploaded_readonly = (
        "tenant",
        "kind",
        "disk_path",
        "disk_format",
        "kernel_path",
        "initrd_path",
        "sha256",
        "size_bytes",
        "virtual_size_bytes",
        "state",
        "created_by",
    )

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> Any:
        if obj is not None and obj.tenant_id is not None:
            return self.uploaded_readonly
        return super().get_readonly_fields(request, obj)

    def _share(self, request: HttpRequest, queryset: QuerySet[Image], public: bool) -> None:
        from compute.services.image_upload import image_set_public

        for image in queryset:
            try:
                image_set_public(actor=Actor.from_request(request, "admin"), image=image, public=public)
            except ServiceError as exc:
                self.message_user(request, f"{image.name}: {exc.message}", messages.ERROR)
            else:
                self.message_user(request, f"{image.name}: {'public' if public else 'private'}")

    @admin.action(
        description="Make the selected images public (uploads keep their owner)", permissions=["change"]
    )
    def make_public(self, request: HttpRequest, queryset: QuerySet[Image]) -> None:
        self._share(request, queryset, public=True)

    @admin.action(
        description="Make the selected uploaded images private to their owner", permissions=["change"]
    )
    def make_private(self, request: HttpRequest, queryset: QuerySet[Image]) -> None:
        self._share(request, queryset, public=False)


@admin.register(Instance)
class InstanceAdmin(ReadOnlyMixin, TenantOwnedAdmin):
    list_display = [
        "name",
        "tenant",
        "kind",
        "state",
        "host",
        "flavor",
        "image",
        "vcpus",
        "current_ram_mib",
        "network",
        "ip_address",
        "oom_kills",
        "created",
    ]
    list_filter = ["state", "kind", "host"]
    search_fields = ["name", "uuid", "tenant__slug"]
    list_select_related = ["tenant", "host", "flavor", "image"]
    # The M2M widget would read the groups unscoped; show them read-only instead. user_data is its
    # owner's only (it may carry secrets): not even staff read it here.
    exclude = ["security_groups", "user_data"]
    readonly_fields = ["security_group_names"]
    actions = ["drs_pin", "drs_unpin"]

    @admin.display(description="security groups")
    def security_group_names(self, obj: Instance) -> str:
        return ", ".join(g.name for g in obj.groups()) or "-"

    def _pin(self, request: HttpRequest, queryset: Any, pinned: bool) -> None:
        if not request.user.has_perm("compute.change_host"):
            self.message_user(request, "Pinning instances needs the change_host permission.", messages.ERROR)
            return
        actor = Actor.from_request(request, source=Source.ADMIN)
        for instance in queryset:
            instance_drs_pin(actor=actor, instance=instance, pinned=pinned)
        self.message_user(request, f"{len(queryset)} instance(s) {'pinned' if pinned else 'unpinned'}.")

    @admin.action(description="Pin: DRS does not move them")
    def drs_pin(self, request: HttpRequest, queryset: Any) -> None:
        self._pin(request, queryset, True)

    @admin.action(description="Unpin: DRS may move them")
    def drs_unpin(self, request: HttpRequest, queryset: Any) -> None:
        self._pin(request, queryset, False)


@admin.register(Operation)
class OperationAdmin(ReadOnlyMixin, TenantOwnedAdmin):
    list_display = [
        "uuid",
        "tenant",
        "kind",
        "instance",
        "state",
        "step",
        "progress",
        "attempts",
        "created",
        "finished",
    ]
    list_filter = ["state", "kind"]
    search_fields = ["uuid", "instance__name", "tenant__slug"]
    list_select_related = ["tenant", "instance"]


@admin.register(Snapshot)
class SnapshotAdmin(ReadOnlyMixin, TenantOwnedAdmin):
    list_display = ["name", "instance", "tenant", "created"]
    search_fields = ["name", "instance__name"]


@admin.register(Network)
class NetworkAdmin(ReadOnlyMixin, TenantOwnedAdmin):
    list_display = ["name", "tenant", "cidr", "gateway", "nat_egress", "bridge", "created", "deleted_at"]
    list_filter = ["nat_egress"]
    search_fields = ["name", "cidr", "uuid", "tenant__slug"]
    list_select_related = ["tenant"]


class SecurityRuleInline(ReadOnlyMixin, admin.TabularInline):
    model = SecurityRule
    fields = ["protocol", "port_min", "port_max", "cidr", "created"]
    extra = 0

    def get_queryset(self, request: HttpRequest) -> Any:
        return SecurityRule.objects.unscoped()  # narrowed to the group by the formset


@admin.register(ServerGroup)
class ServerGroupAdmin(ReadOnlyMixin, TenantOwnedAdmin):
    list_display = ["name", "tenant", "policy", "created"]
    list_filter = ["policy"]
    search_fields = ["name", "tenant__slug"]
    list_select_related = ["tenant"]


@admin.register(SecurityGroup)
class SecurityGroupAdmin(ReadOnlyMixin, TenantOwnedAdmin):
    list_display = ["name", "tenant", "description", "created"]
    search_fields = ["name", "tenant__slug"]
    list_select_related = ["tenant"]
    inlines = [SecurityRuleInline]


@admin.register(FloatingPool)
class FloatingPoolAdmin(admin.ModelAdmin):
    """The external networks floating addresses come from (staff-defined; see the README)."""

    list_display = ["name", "cidr", "interface", "range_start", "range_end", "gateway", "in_use", "created"]
    search_fields = ["name", "cidr", "interface"]
    fields = ["name", "cidr", "interface", "range_start", "range_end", "gateway"]

    @admin.display(description="addresses taken")
    def in_use(self, obj: FloatingPool) -> int:
        return FloatingIP.objects.unscoped().filter(pool=obj).count()


@admin.register(FloatingIP)
class FloatingIPAdmin(ReadOnlyMixin, TenantOwnedAdmin):
    list_display = ["address", "pool", "tenant", "instance", "created"]
    list_filter = ["pool"]
    search_fields = ["address", "tenant__slug", "instance__name"]
    list_select_related = ["tenant", "pool", "instance"]


@admin.register(PortForward)
class PortForwardAdmin(ReadOnlyMixin, TenantOwnedAdmin):
    list_display = ["host_port", "instance", "port", "tenant", "created"]
    search_fields = ["instance__name", "tenant__slug"]
    list_select_related = ["tenant", "instance"]


@admin.register(KeyPair)
class KeyPairAdmin(ReadOnlyMixin, TenantOwnedAdmin):
    list_display = ["name", "tenant", "key_type", "bits", "fingerprint", "created"]
    list_filter = ["key_type"]
    search_fields = ["name", "fingerprint", "tenant__slug"]
    list_select_related = ["tenant"]


@admin.register(Volume)
class VolumeAdmin(ReadOnlyMixin, TenantOwnedAdmin):
    list_display = [
        "name",
        "tenant",
        "size_gib",
        "state",
        "instance",
        "device",
        "host",
        "created",
        "deleted_at",
    ]
    list_filter = ["state"]
    search_fields = ["name", "uuid", "tenant__slug", "instance__name"]
    list_select_related = ["tenant", "instance", "host"]
