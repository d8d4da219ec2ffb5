"""Serializers of the compute API: what its requests accept and its answers hold."""

from __future__ import annotations

from typing import Any

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from compute.models import (
    Allocation,
    Flavor,
    FloatingIP,
    GroupPolicy,
    Host,
    Image,
    Instance,
    InstanceKind,
    InstanceState,
    KeyPair,
    Network,
    Operation,
    PortForward,
    SecurityGroup,
    SecurityRule,
    ServerGroup,
    Snapshot,
    UsageSample,
    Volume,
    VolumeSnapshot,
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
            "min_cpu_pct",
            "public",
        ]


class ImageSerializer(serializers.ModelSerializer[Image]):
    owner = serializers.CharField(
        source="tenant.slug",
        read_only=True,
        allow_null=True,
        default=None,
        help_text="The tenant that uploaded it (none for built images); it stays the owner when public.",
    )

    class Meta:
        model = Image
        fields = [
            "id",
            "name",
            "kind",
            "os_name",
            "disk_format",
            "sha256",
            "size_bytes",
            "virtual_size_bytes",
            "cloud_init",
            "login_user",
            "state",
            "public",
            "owner",
            "created",
        ]


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
    volumes = serializers.SerializerMethodField(
        help_text="Its attached volumes: id, name, device, size, state."
    )
    current_cpu_pct = serializers.IntegerField(
        source="cpu_grant_pct",
        read_only=True,
        help_text="Its CPU now, in % of one CPU: a dynamic instance's grant (a container's quota, a "
        "VM's shares), else all of its CPU.",
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
    key_pairs = serializers.SerializerMethodField(
        help_text="The SSH keys it was created with (name and fingerprint), as they were then."
    )
    floating_ips = serializers.SerializerMethodField(
        help_text="Its floating addresses (reached from outside its network: 1:1 NAT)."
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
            "current_cpu_pct",
            "allocation",
            "disk_gib",
            "network",
            "security_groups",
            "key_pairs",
            "server_group",
            "queue",
            "host",
            "migrating_to",
            "ha",
            "mac_address",
            "ip_address",
            "floating_ips",
            "volumes",
            "oom_kills",
            "fault",
            "created",
            "updated",
        ]

    def get_security_groups(self, obj: Instance) -> list[str]:
        return [g.name for g in obj.groups()]

    @extend_schema_field(OpenApiTypes.OBJECT)
    def get_volumes(self, obj: Instance) -> list[dict[str, Any]]:
        cache = getattr(obj, "_prefetched_objects_cache", {})
        rows = (
            cache["volumes"]
            if "volumes" in cache
            else Volume.objects.for_tenant(obj.tenant_id)
            .filter(instance=obj, deleted_at__isnull=True)
            .order_by("device")
        )
        return [
            {"id": str(v.uuid), "name": v.name, "device": v.device, "size_gib": v.size_gib, "state": v.state}
            for v in rows
        ]

    @extend_schema_field(serializers.ListField(child=serializers.IPAddressField()))
    def get_floating_ips(self, obj: Instance) -> list[str]:
        cache = getattr(obj, "_prefetched_objects_cache", {})
        rows = (
            cache["floating_ips"]
            if "floating_ips" in cache
            else FloatingIP.objects.for_tenant(obj.tenant_id).filter(instance=obj)
        )
        return [str(f.address) for f in rows]

    def get_priority(self, obj: Instance) -> str:
        return PriorityClass(obj.priority).label.lower()

    @extend_schema_field(serializers.ListField(child=serializers.DictField(child=serializers.CharField())))
    def get_key_pairs(self, obj: Instance) -> list[dict[str, str]]:
        return [
            {"name": k.get("name", ""), "fingerprint": k.get("fingerprint", "")} for k in obj.ssh_keys or []
        ]

    @extend_schema_field(OpenApiTypes.OBJECT)
    def get_queue(self, obj: Instance) -> dict[str, Any] | None:
        if obj.state != InstanceState.QUEUED:
            return None
        statuses = self.context.get("queue")
        if statuses is None:  # one instance: read its own entry
            statuses = queue_statuses(list(QueueEntry.objects.for_tenant(obj.tenant_id).filter(instance=obj)))
        status: dict[str, Any] | None = statuses.get(obj.pk)
        return status


class InstanceDetailSerializer(InstanceSerializer):
    """One instance; its user-data only for members and owners (context ``user_data``)."""

    # Not read-only, so that the schema does not call it required: viewers' answers leave it out.
    user_data = serializers.CharField(
        required=False,
        help_text="The cloud-init user-data of the create request: shown to the tenant's members and "
        "owners only, and only here (not in lists, events or the audit log).",
    )

    class Meta(InstanceSerializer.Meta):
        fields = [*InstanceSerializer.Meta.fields, "user_data"]

    def to_representation(self, instance: Instance) -> dict[str, Any]:
        data: dict[str, Any] = super().to_representation(instance)
        if not self.context.get("user_data"):
            data.pop("user_data", None)
        return data


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
    key_pairs = serializers.ListField(
        child=serializers.CharField(max_length=63),
        required=False,
        max_length=32,
        help_text="The tenant's key pairs (names or ids) whose public keys the guest authorizes; copied "
        "at create time. A VM needs an image with cloud-init.",
    )
    user_data = serializers.CharField(
        required=False,
        allow_blank=True,
        trim_whitespace=False,
        help_text="cloud-init user-data as plain UTF-8 text (a #cloud-config document or a script; not "
        "base64), at most 16 KiB. A VM needs an image with cloud-init.",
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


class TerminalRequestSerializer(serializers.Serializer[Any]):
    input = serializers.BooleanField(
        default=True, help_text="False: a session that only reads (what it sends never reaches the guest)."
    )


class TerminalTokenSerializer(serializers.Serializer[Any]):
    token = serializers.CharField()
    url = serializers.CharField(help_text="Websocket path; add ?token=… (binary frames both ways).")
    input = serializers.BooleanField(help_text="Whether the session may type.")
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


class KeyPairSerializer(serializers.ModelSerializer[KeyPair]):
    class Meta:
        model = KeyPair
        fields = ["id", "name", "key_type", "bits", "fingerprint", "comment", "public_key", "created"]
        read_only_fields = fields


class KeyPairCreateSerializer(serializers.Serializer[Any]):
    name = serializers.CharField(
        max_length=63, help_text="1-63 letters, digits or hyphens, starting with a letter."
    )
    public_key = serializers.CharField(
        required=False,
        allow_blank=False,
        max_length=16 * 1024,
        help_text="An OpenSSH public key line (ssh-ed25519, ecdsa-sha2-nistp256/384/521, or ssh-rsa of "
        "2048 bits or more). Left out: a new Ed25519 key pair is generated and its private key is "
        "returned once.",
    )


class KeyPairCreatedSerializer(KeyPairSerializer):
    # Not read-only, so that the schema does not call it required: an import's answer has none.
    private_key = serializers.CharField(
        required=False,
        help_text="Only when generated, only in this answer: the private key (OpenSSH form). It is not "
        "stored anywhere; save it now.",
    )

    class Meta(KeyPairSerializer.Meta):
        fields = [*KeyPairSerializer.Meta.fields, "private_key"]
        read_only_fields = KeyPairSerializer.Meta.fields


class FloatingIPSerializer(serializers.ModelSerializer[FloatingIP]):
    pool = serializers.CharField(source="pool.name", read_only=True)
    instance = serializers.UUIDField(  # type: ignore[assignment]  # the API's name for it
        source="instance.uuid",
        read_only=True,
        allow_null=True,
        default=None,
        help_text="The instance it NATs to.",
    )
    instance_name = serializers.CharField(
        source="instance.name", read_only=True, allow_null=True, default=None
    )
    private_address = serializers.IPAddressField(
        source="instance.ip_address", read_only=True, allow_null=True, default=None
    )

    class Meta:
        model = FloatingIP
        fields = ["id", "address", "pool", "instance", "instance_name", "private_address", "created"]


class FloatingIPCreateSerializer(serializers.Serializer[Any]):
    pool = serializers.CharField(
        required=False,
        allow_null=True,
        allow_blank=True,
        help_text="A pool's name; default: the cloud's first.",
    )


class FloatingIPAssociateSerializer(serializers.Serializer[Any]):
    instance = serializers.UUIDField(help_text="An instance of this tenant on a tenant network.")


class PortForwardSerializer(serializers.ModelSerializer[PortForward]):
    protocol = serializers.SerializerMethodField()
    address = serializers.SerializerMethodField(
        help_text="The host's address (empty: a lone host, any of its addresses)."
    )

    class Meta:
        model = PortForward
        fields = ["id", "protocol", "port", "host_port", "address", "created"]

    def get_protocol(self, obj: PortForward) -> str:
        return "tcp"

    def get_address(self, obj: PortForward) -> str:
        host = obj.instance.host
        return str(host.address) if host is not None and host.address else ""


class PortForwardCreateSerializer(serializers.Serializer[Any]):
    port = serializers.IntegerField(min_value=1, max_value=65535, help_text="The instance's tcp port.")


class VolumeSerializer(serializers.ModelSerializer[Volume]):
    id = serializers.UUIDField(source="uuid", read_only=True)
    # Not named "instance": that would shadow the serializer's own .instance.
    instance_id = serializers.UUIDField(
        source="instance.uuid", read_only=True, allow_null=True, default=None, help_text="Attached to."
    )
    instance_name = serializers.CharField(
        source="instance.name", read_only=True, allow_null=True, default=None
    )
    host = serializers.CharField(
        source="host.name", read_only=True, allow_null=True, default=None, help_text="Whose store holds it."
    )
    image = serializers.CharField(source="source_image.name", read_only=True, allow_null=True, default=None)
    snapshot = serializers.IntegerField(source="source_snapshot_id", read_only=True, allow_null=True)

    class Meta:
        model = Volume
        fields = [
            "id",
            "name",
            "size_gib",
            "format",
            "state",
            "fault",
            "instance_id",
            "instance_name",
            "device",
            "host",
            "image",
            "snapshot",
            "created",
        ]


class VolumeCreateSerializer(serializers.Serializer[Any]):
    name = serializers.CharField(max_length=63)
    size_gib = serializers.IntegerField(
        min_value=1, required=False, help_text="Default: the source's size (needed without a source)."
    )
    snapshot = serializers.IntegerField(required=False, help_text="Start from this volume snapshot (its id).")
    image = serializers.CharField(required=False, help_text="Start from this image's disk (name or id).")

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        if "size_gib" not in attrs and "snapshot" not in attrs and "image" not in attrs:
            raise serializers.ValidationError({"size_gib": "a volume from nothing needs its size"})
        return attrs


class VolumeAttachSerializer(serializers.Serializer[Any]):
    instance = serializers.UUIDField(help_text="The VM to attach the volume to (its id).")


class VolumeResizeSerializer(serializers.Serializer[Any]):
    size_gib = serializers.IntegerField(min_value=1, help_text="The new size; a volume only grows.")


class VolumeSnapshotSerializer(serializers.ModelSerializer[VolumeSnapshot]):
    volume = serializers.UUIDField(source="volume.uuid", read_only=True)

    class Meta:
        model = VolumeSnapshot
        fields = ["id", "name", "volume", "size_gib", "created"]


class VolumeSnapshotCreateSerializer(serializers.Serializer[Any]):
    name = serializers.CharField(max_length=63)
