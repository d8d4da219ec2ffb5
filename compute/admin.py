"""Django admin for hosts (with their capability probe), flavors, images, instances and operations."""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.http import HttpRequest

from compute.models import (
    Flavor,
    Host,
    Image,
    Instance,
    Network,
    Operation,
    SecurityGroup,
    SecurityRule,
    ServerGroup,
    Snapshot,
)
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
    list_display = [
        "name",
        "state",
        "cpus",
        "ram_mib",
        "disk_gib",
        "kvm_usable",
        "tcg_available",
        "paging",
        "iommu",
        "vmm",
        "heartbeat_at",
        "load",
        "simulated",
    ]
    list_filter = ["state", "kvm_usable", "paging", "iommu", "simulated"]
    list_editable = ["state"]
    search_fields = ["name"]
    readonly_fields = [
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
        "probed_at",
        "heartbeat_at",
        "registered_at",
    ]

    @admin.display(description="load (last minute)")
    def load(self, obj: Host) -> str:
        return _load_text(obj)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # hosts register themselves when their agent starts


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
    search_fields = ["name"]
    autocomplete_fields = ["tenant"]


@admin.register(Image)
class ImageAdmin(admin.ModelAdmin):
    list_display = ["name", "kind", "os_name", "size_bytes", "public", "tenant", "created"]
    list_filter = ["kind", "public"]
    search_fields = ["name", "os_name", "sha256"]
    autocomplete_fields = ["tenant"]


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
    # The M2M widget would read the groups unscoped; show them read-only instead.
    exclude = ["security_groups"]
    readonly_fields = ["security_group_names"]

    @admin.display(description="security groups")
    def security_group_names(self, obj: Instance) -> str:
        return ", ".join(g.name for g in obj.groups()) or "-"


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
