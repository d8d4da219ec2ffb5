"""Serializers of the compute API: what its requests accept and its answers hold."""

from __future__ import annotations

from typing import Any

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from compute.models import (
    Allocation,
    Flavor,
    GroupPolicy,
    Host,
    Image,
    Instance,
    InstanceKind,
    InstanceState,
    Network,
    Operation,
    SecurityGroup,
    SecurityRule,
    ServerGroup,
    Snapshot,
    UsageSample,
)
from scheduler.admission import queue_statuses
from scheduler.models import QueueEntry
from tenants.models import PriorityClass


class FlavorSerializer(serializers.ModelSerializer[Flavor]):
    class Meta:
        model = Flavor
        fields = [
            "id",
            "name",
            "vcpus",
            "ram_mib",
            "disk_gib",
            "cpu_mode",
            "io_model",
            "balloon",
            "min_ram_mib",
            "public",
        ]


class ImageSerializer(serializers.ModelSerializer[Image]):
    class Meta:
        model = Image
        fields = ["id", "name", "kind", "os_name", "sha256", "size_bytes", "public", "created"]


class InstanceSerializer(serializers.ModelSerializer[Instance]):
    id = serializers.UUIDField(source="uuid", read_only=True)
    flavor = serializers.CharField(source="flavor.name", read_only=True)
    image = serializers.CharField(source="image.name", read_only=True)
    priority = serializers.SerializerMethodField()
    network = serializers.CharField(source="network.name", read_only=True, allow_null=True, default=None)
    security_groups = serializers.SerializerMethodField()
    server_group = serializers.CharField(
        source="server_group.name", read_only=True, allow_null=True, default=None
    )
    queue = serializers.SerializerMethodField(
        help_text="While queued: its place in the admission queue, the wait so far and the estimate."
    )
    host = serializers.CharField(
        source="host.name", read_only=True, allow_null=True, default=None, help_text="Where it runs."
    )
    migrating_to = serializers.CharField(
        source="migration_host.name",
        read_only=True,
        allow_null=True,
        default=None,
        help_text="While it moves: the host it goes to.",
    )

    class Meta:
        model = Instance
        fields = [
            "id",
            "name",
            "kind",
            "state",
            "flavor",
            "image",
            "priority",
            "vcpus",
            "ram_mib",
            "current_ram_mib",
            "allocation",
            "disk_gib",
            "network",
            "security_groups",
            "server_group",
            "queue",
            "host",
            "migrating_to",
            "ha",
            "mac_address",
            "ip_address",
            "oom_kills",
            "fault",
            "created",
            "updated",
        ]

    def get_security_groups(self, obj: Instance) -> list[str]:
        return [g.name for g in obj.groups()]

    def get_priority(self, obj: Instance) -> str:
        return PriorityClass(obj.priority).label.lower()

    @extend_schema_field(OpenApiTypes.OBJECT)
    def get_queue(self, obj: Instance) -> dict[str, Any] | None:
        if obj.state != InstanceState.QUEUED:
            return None
        statuses = self.context.get("queue")
        if statuses is None:  # one instance: read its own entry
            statuses = queue_statuses(list(QueueEntry.objects.for_tenant(obj.tenant_id).filter(instance=obj)))
        status: dict[str, Any] | None = statuses.get(obj.pk)
        return status


class InstanceCreateSerializer(serializers.Serializer[Any]):
    name = serializers.CharField(max_length=63)
    flavor = serializers.CharField(help_text="Flavor name or id.")
    image = serializers.CharField(help_text="Image name or id.")
    kind = serializers.ChoiceField(choices=InstanceKind.choices, default=InstanceKind.VM)
    priority = serializers.ChoiceField(choices=[c.label.lower() for c in PriorityClass], default="normal")
    network = serializers.CharField(
        required=False,
        allow_null=True,
        help_text="Tenant network name or id. Left out: the tenant's network 'default' (made on first "
        "use). null: none (a VM gets the host's NAT network, a container loopback only).",
    )
    security_groups = serializers.ListField(
        child=serializers.CharField(), required=False, help_text="Security group names or ids."
    )
    allocation = serializers.ChoiceField(
        choices=Allocation.choices,
        required=False,
        help_text="static: the full RAM is reserved; dynamic: the flavor's minimum is reserved and memory "
        "follows demand up to the RAM. Left out: the flavor's own.",
    )
    server_group = serializers.CharField(
        required=False, allow_null=True, help_text="Server group name or id."
    )
    wait = serializers.BooleanField(
        default=False,
        help_text="When no host has room: wait in the admission queue (state queued) instead of failing.",
    )
    ha = serializers.BooleanField(
        required=False,
        allow_null=True,
        default=None,
        help_text="Restart it on another host when its host dies. Left out: the flavor's choice, else on "
        "for a VM and off for a container.",
    )


class MigrateSerializer(serializers.Serializer[Any]):
    host = serializers.CharField(
        required=False,
        allow_null=True,
        allow_blank=True,
        default=None,
        help_text="The host to move to (name or id); left out, placement chooses with every filter.",
    )
    timeout = serializers.IntegerField(
        required=False,
        min_value=1,
        max_value=3600,
        help_text="Seconds a live move may take before it is aborted (the VM stays); default "
        "NUBIS_MIGRATION_TIMEOUT.",
    )
    bandwidth_mib = serializers.IntegerField(
        required=False, min_value=1, max_value=100_000, help_text="A cap on the move's transfer, MiB/s."
    )


class ResizeSerializer(serializers.Serializer[Any]):
    memory_mib = serializers.IntegerField(required=False, min_value=1, help_text="Online: balloon target.")
    vcpus = serializers.IntegerField(required=False, min_value=1, help_text="Offline, with ram_mib.")
    ram_mib = serializers.IntegerField(required=False, min_value=1, help_text="Offline, with vcpus.")

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        online = "memory_mib" in attrs
        offline = "vcpus" in attrs or "ram_mib" in attrs
        if online == offline:
            raise serializers.ValidationError(
                "give either memory_mib (online) or vcpus and ram_mib (offline)", "shape"
            )
        if offline and not ("vcpus" in attrs and "ram_mib" in attrs):
            raise serializers.ValidationError("an offline resize needs both vcpus and ram_mib", "shape")
        return attrs


class OperationSerializer(serializers.ModelSerializer[Operation]):
    id = serializers.UUIDField(source="uuid", read_only=True)
    # Not named "instance": that would shadow the serializer's own .instance.
    instance_id = serializers.UUIDField(source="instance.uuid", read_only=True)

    class Meta:
        model = Operation
        fields = [
            "id",
            "kind",
            "state",
            "progress",
            "step",
            "error",
            "instance_id",
            "params",
            "result",
            "created",
            "started",
            "finished",
        ]


class SnapshotSerializer(serializers.ModelSerializer[Snapshot]):
    instance_id = serializers.UUIDField(source="instance.uuid", read_only=True)

    class Meta:
        model = Snapshot
        fields = ["id", "name", "instance_id", "created"]


class SnapshotCreateSerializer(serializers.Serializer[Any]):
    name = serializers.CharField(max_length=63)


class ConsoleSerializer(serializers.Serializer[Any]):
    lines = serializers.ListField(child=serializers.CharField())
    size = serializers.IntegerField()


class VncTokenSerializer(serializers.Serializer[Any]):
    token = serializers.CharField()
    url = serializers.CharField(help_text="Websocket path; add ?token=… (binary subprotocol).")
    password = serializers.CharField(help_text="The VNC password of this instance.")
    expires_in = serializers.IntegerField()


class LogsSerializer(serializers.Serializer[Any]):
    text = serializers.CharField(help_text="The end of the container's stdout and stderr.")


class ExecSerializer(serializers.Serializer[Any]):
    argv = serializers.ListField(child=serializers.CharField(max_length=4096), min_length=1, max_length=256)
    timeout = serializers.IntegerField(min_value=1, max_value=60, default=10)


class ExecResultSerializer(serializers.Serializer[Any]):
    exit_code = serializers.IntegerField()
    stdout = serializers.CharField()
    stderr = serializers.CharField()


class ResourceUseSerializer(serializers.Serializer[Any]):
    capacity = serializers.FloatField(help_text="After overcommit.")
    used = serializers.FloatField(help_text="Reserved (or measured, in demand mode).")


class AdminHostSerializer(serializers.ModelSerializer[Host]):
    capacity = serializers.SerializerMethodField()
    load = serializers.SerializerMethodField(help_text="Measured CPU load over the last minute, 0..1.")

    class Meta:
        model = Host
        fields = [
            "id",
            "name",
            "state",
            "simulated",
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
            "cpu_ratio",
            "ram_ratio",
            "disk_ratio",
            "address",
            "heartbeat_at",
            "fenced_at",
            "evacuation",
            "capacity",
            "load",
        ]

    def _row(self, obj: Host) -> dict[str, Any]:
        rows: dict[int, dict[str, Any]] = self.context.get("rows", {})
        return rows.get(obj.pk, {})

    @extend_schema_field(serializers.DictField(child=ResourceUseSerializer()))
    def get_capacity(self, obj: Host) -> dict[str, dict[str, float]]:
        return self._row(obj).get("capacity", {})

    def get_load(self, obj: Host) -> float:
        return float(self._row(obj).get("load", 0.0))


class MaintenanceSerializer(serializers.Serializer[Any]):
    on = serializers.BooleanField(
        help_text="true: into maintenance (its instances move to other hosts first: the host is "
        "entering_maintenance until it is empty); false: enabled."
    )
    force = serializers.BooleanField(
        default=False,
        help_text="With on: into maintenance at once, leaving on it what has not moved.",
    )


class QueueItemSerializer(serializers.Serializer[Any]):
    id = serializers.IntegerField(help_text="The queue entry.")
    instance = serializers.UUIDField()
    name = serializers.CharField()
    tenant = serializers.CharField()
    priority = serializers.IntegerField()
    vcpus = serializers.IntegerField()
    ram_mib = serializers.IntegerField()
    disk_gib = serializers.IntegerField()
    enqueued_at = serializers.DateTimeField()
    position = serializers.IntegerField(allow_null=True, help_text="Its place in admission order now.")
    waited_s = serializers.IntegerField()
    estimated_wait_s = serializers.IntegerField(allow_null=True)
    effective_priority = serializers.FloatField()
    overdue = serializers.BooleanField()
    reason = serializers.CharField()


class AdminQuotaSerializer(serializers.Serializer[Any]):
    tenant = serializers.CharField()
    resources = serializers.DictField(child=serializers.DictField(child=serializers.IntegerField()))
    max_priority = serializers.CharField()


class QuotaUpdateSerializer(serializers.Serializer[Any]):
    limits = serializers.DictField(
        child=serializers.IntegerField(min_value=0), required=False, help_text="resource -> new limit"
    )
    max_priority = serializers.ChoiceField(choices=[0, 1, 2, 3], required=False)


class ServerGroupSerializer(serializers.ModelSerializer[ServerGroup]):
    policy = serializers.ChoiceField(choices=GroupPolicy.choices)
    members = serializers.SerializerMethodField(help_text="Names of its live instances.")

    class Meta:
        model = ServerGroup
        fields = ["id", "name", "policy", "members", "created"]
        read_only_fields = ["created"]
        # The service answers a taken name with 409; the serializer must not turn it into a 400.
        validators: list[Any] = []

    def get_members(self, obj: ServerGroup) -> list[str]:
        return [i.name for i in getattr(obj, "live_members", [])]


class NetworkSerializer(serializers.ModelSerializer[Network]):
    id = serializers.UUIDField(source="uuid", read_only=True)

    class Meta:
        model = Network
        fields = ["id", "name", "cidr", "gateway", "nat_egress", "created"]
        read_only_fields = ["gateway", "created"]


class NetworkUpdateSerializer(serializers.Serializer[Any]):
    nat_egress = serializers.BooleanField()


class RuleSerializer(serializers.ModelSerializer[SecurityRule]):
    class Meta:
        model = SecurityRule
        fields = ["id", "protocol", "port_min", "port_max", "cidr", "created"]
        read_only_fields = ["created"]


class RuleCreateSerializer(serializers.Serializer[Any]):
    protocol = serializers.CharField(help_text="tcp, udp, icmp or any.")
    cidr = serializers.CharField(help_text="Source addresses, as 10.0.0.0/24 (0.0.0.0/0 for anywhere).")
    port_min = serializers.IntegerField(required=False, allow_null=True)
    port_max = serializers.IntegerField(required=False, allow_null=True)


class SecurityGroupSerializer(serializers.ModelSerializer[SecurityGroup]):
    rules = serializers.SerializerMethodField()

    class Meta:
        model = SecurityGroup
        fields = ["id", "name", "description", "rules", "created"]
        read_only_fields = ["created"]

    @extend_schema_field(RuleSerializer(many=True))
    def get_rules(self, obj: SecurityGroup) -> list[dict[str, Any]]:
        cache = getattr(obj, "_prefetched_objects_cache", {})
        # Prefetched in lists: use it even when empty (a group without rules), or each costs a query.
        if "rules" in cache:
            rules = cache["rules"]
        else:
            rules = SecurityRule.objects.for_tenant(obj.tenant_id).filter(group=obj)
        return list(RuleSerializer(rules, many=True).data)


class GroupsSerializer(serializers.Serializer[Any]):
    security_groups = serializers.ListField(child=serializers.CharField(), help_text="Names or ids.")


class SampleSerializer(serializers.ModelSerializer[UsageSample]):
    class Meta:
        model = UsageSample
        fields = [
            "at",
            "resolution",
            "cpu_pct",
            "mem_bytes",
            "mem_peak_bytes",
            "pids",
            "blk_read_bps",
            "blk_write_bps",
            "net_rx_bps",
            "net_tx_bps",
        ]
