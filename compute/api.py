"""REST API of the compute app: flavors, images, instances, their actions, snapshots and operations."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from django.conf import settings
from django.db.models import Prefetch
from django.shortcuts import get_object_or_404
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema, extend_schema_field
from rest_framework import serializers, status
from rest_framework.permissions import IsAuthenticated
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from compute.models import (
    Allocation,
    CpuMode,
    Flavor,
    Image,
    ImageKind,
    Instance,
    InstanceKind,
    InstanceState,
    IoModel,
    Operation,
    OperationKind,
    OperationState,
    SecurityGroup,
    Snapshot,
)
from compute.services import instances as svc
from compute.services import resize, snapshots
from core.errors import Conflict, ServiceError
from core.pagination import Filter, ListSchema, ListSpec, paginated
from security.audit import Actor, audit_log
from tenants.access import require_role, tenant_for_request
from tenants.models import PriorityClass, Role, Tenant

# ---- serializers ---------------------------------------------------------------------------


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
            from scheduler.admission import queue_statuses
            from scheduler.models import QueueEntry

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


# ---- helpers -------------------------------------------------------------------------------


def accepted(operation: Operation) -> Response:
    """Asynchronous actions answer 202 with their Operation (which may already have failed)."""
    return Response(OperationSerializer(operation).data, status=status.HTTP_202_ACCEPTED)


def instance_of(tenant: Tenant, pk: Any) -> Instance:
    return get_object_or_404(
        Instance.objects.for_tenant(tenant)
        .select_related("flavor", "image")
        .exclude(state=InstanceState.DELETED),
        uuid=pk,
    )


class TenantView(APIView):
    permission_classes = [IsAuthenticated]

    def tenant(self, request: Request, slug: str, need: Role = Role.VIEWER) -> Tenant:
        tenant, _ = tenant_for_request(request, slug, need)
        return tenant

    def tenant_and_role(self, request: Request, slug: str) -> tuple[Tenant, Role]:
        """For object views: look the object up first (404), then ``require`` the role (403)."""
        return tenant_for_request(request, slug, Role.VIEWER)

    def require(self, role: Role, need: Role, tenant: Tenant) -> None:
        require_role(role, need, tenant)

    def instance(self, request: Request, slug: str, pk: Any, need: Role = Role.VIEWER) -> Instance:
        """The tenant's instance: 404 for anything not the tenant's, then 403 if the role is too low.

        Looking the object up before checking the role means another tenant's object answers 404
        to everyone here, whatever their role.
        """
        instance, _ = self._instance_and_role(request, slug, pk, need)
        return instance

    def snapshot(
        self, request: Request, slug: str, pk: Any, snapshot: int, need: Role = Role.VIEWER
    ) -> Snapshot:
        """The instance's snapshot, with the same 404-before-403 order."""
        instance, role = self._instance_and_role(request, slug, pk, Role.VIEWER)
        snap = get_object_or_404(
            Snapshot.objects.for_tenant(instance.tenant_id).select_related("instance"),
            instance=instance,
            pk=snapshot,
        )
        require_role(role, need, instance.tenant)
        return snap

    def _instance_and_role(self, request: Request, slug: str, pk: Any, need: Role) -> tuple[Instance, Role]:
        tenant, role = tenant_for_request(request, slug, Role.VIEWER)
        instance = instance_of(tenant, pk)
        require_role(role, need, tenant)
        return instance, role


# ---- views ---------------------------------------------------------------------------------


FLAVORS = ListSpec(
    orderings={
        "vcpus": ("vcpus", "ram_mib", "name"),
        "ram_mib": ("ram_mib", "vcpus", "name"),
        "name": ("name",),
    },
    default="vcpus",
    filters=(
        Filter("name"),
        Filter("cpu_mode", choices=CpuMode.values),
        Filter("io_model", choices=IoModel.values),
    ),
)
IMAGES = ListSpec(
    orderings={"name": ("name",), "created": ("created",)},
    default="name",
    filters=(Filter("name"), Filter("kind", choices=ImageKind.values), Filter("os_name")),
)
INSTANCES = ListSpec(
    orderings={"created": ("created",), "name": ("name",), "state": ("state",), "kind": ("kind",)},
    default="-created",
    filters=(
        Filter("state", choices=InstanceState.values),
        Filter("kind", choices=InstanceKind.values),
        Filter("name"),
        Filter("network", "network__name", help="Only instances on this network (its name)"),
        Filter("server_group", "server_group__name", help="Only members of this server group (its name)"),
    ),
)
OPERATIONS = ListSpec(
    orderings={"created": ("created",), "state": ("state",), "kind": ("kind",)},
    default="-created",
    filters=(
        Filter("state", choices=OperationState.values),
        Filter("kind", choices=OperationKind.values),
        Filter("instance", "instance__uuid", kind="uuid", help="Only operations on this instance (its id)"),
    ),
)
SNAPSHOTS = ListSpec(
    orderings={"created": ("created",), "name": ("name",)}, default="created", filters=(Filter("name"),)
)


def instance_rows(tenant: Tenant) -> Any:
    """The tenant's live instances with everything their serializer reads, in a fixed number of queries."""
    return (
        Instance.objects.for_tenant(tenant)
        .exclude(state=InstanceState.DELETED)
        .select_related("flavor", "image", "network", "server_group")
        .prefetch_related(Prefetch("security_groups", queryset=SecurityGroup.objects.for_tenant(tenant)))
    )


def queue_context(tenant: Tenant) -> dict[str, Any]:
    """The serializer context of a page of instances: the tenant's queue places, read once."""
    from scheduler.admission import queue_statuses
    from scheduler.models import QueueEntry, QueueState

    waiting = list(QueueEntry.objects.for_tenant(tenant).filter(state=QueueState.WAITING))
    return {"queue": queue_statuses(waiting)}


class FlavorListView(TenantView):
    schema = ListSchema()

    @extend_schema(parameters=FLAVORS.parameters(), responses=paginated(FlavorSerializer))
    def get(self, request: Request, tenant: str) -> Response:
        page = FLAVORS.page(request, svc.flavors_for(self.tenant(request, tenant)))
        return page.response(FlavorSerializer(page.rows, many=True).data)


class ImageListView(TenantView):
    schema = ListSchema()

    @extend_schema(parameters=IMAGES.parameters(), responses=paginated(ImageSerializer))
    def get(self, request: Request, tenant: str) -> Response:
        page = IMAGES.page(request, svc.images_for(self.tenant(request, tenant)))
        return page.response(ImageSerializer(page.rows, many=True).data)


class InstanceListView(TenantView):
    schema = ListSchema()

    @extend_schema(parameters=INSTANCES.parameters(), responses=paginated(InstanceSerializer))
    def get(self, request: Request, tenant: str) -> Response:
        obj = self.tenant(request, tenant)
        page = INSTANCES.page(request, instance_rows(obj))
        return page.response(InstanceSerializer(page.rows, many=True, context=queue_context(obj)).data)

    @extend_schema(request=InstanceCreateSerializer, responses={202: OperationSerializer})
    def post(self, request: Request, tenant: str) -> Response:
        obj = self.tenant(request, tenant, Role.MEMBER)
        body = InstanceCreateSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        data = body.validated_data
        operation = svc.instance_create(
            actor=Actor.from_request(request),
            tenant=obj,
            name=data["name"],
            flavor=data["flavor"],
            image=data["image"],
            kind=data["kind"],
            priority=int(PriorityClass[data["priority"].upper()]),
            idempotency_key=request.headers.get("Idempotency-Key") or None,
            network=data.get("network", svc.DEFAULT_NETWORK),
            security_groups=data.get("security_groups"),
            allocation=data.get("allocation"),
            server_group=data.get("server_group"),
            wait=data["wait"],
        )
        return accepted(operation)


class InstanceDetailView(TenantView):
    @extend_schema(responses=InstanceSerializer)
    def get(self, request: Request, tenant: str, pk: str) -> Response:
        return Response(InstanceSerializer(self.instance(request, tenant, pk)).data)

    @extend_schema(responses={202: OperationSerializer})
    def delete(self, request: Request, tenant: str, pk: str) -> Response:
        instance = self.instance(request, tenant, pk, Role.MEMBER)
        return accepted(svc.instance_delete(actor=Actor.from_request(request), instance=instance))


def _action_view(kind: str) -> type[TenantView]:
    class ActionView(TenantView):
        @extend_schema(request=None, responses={202: OperationSerializer}, operation_id=f"instance_{kind}")
        def post(self, request: Request, tenant: str, pk: str) -> Response:
            instance = self.instance(request, tenant, pk, Role.MEMBER)
            return accepted(
                svc.instance_action(actor=Actor.from_request(request), instance=instance, kind=kind)
            )

    ActionView.__name__ = f"Instance{kind.capitalize()}View"
    ActionView.__doc__ = f"{kind.capitalize()} the instance (asynchronous: answers 202 with the Operation)."
    return ActionView


InstanceStartView = _action_view("start")
InstanceStopView = _action_view("stop")
InstanceRebootView = _action_view("reboot")


class InstanceResizeView(TenantView):
    """Online: move memory through the balloon. Offline (stopped): change vCPUs and RAM."""

    @extend_schema(request=ResizeSerializer, responses={202: OperationSerializer})
    def post(self, request: Request, tenant: str, pk: str) -> Response:
        instance = self.instance(request, tenant, pk, Role.MEMBER)
        body = ResizeSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        actor = Actor.from_request(request)
        data = body.validated_data
        if "memory_mib" in data:
            return accepted(
                resize.instance_set_memory(actor=actor, instance=instance, memory_mib=data["memory_mib"])
            )
        return accepted(
            resize.instance_resize(
                actor=actor, instance=instance, vcpus=data["vcpus"], ram_mib=data["ram_mib"]
            )
        )


class SnapshotListView(TenantView):
    schema = ListSchema()

    @extend_schema(parameters=SNAPSHOTS.parameters(), responses=paginated(SnapshotSerializer))
    def get(self, request: Request, tenant: str, pk: str) -> Response:
        instance = self.instance(request, tenant, pk)
        rows = Snapshot.objects.for_tenant(instance.tenant_id).filter(instance=instance)
        page = SNAPSHOTS.page(request, rows.select_related("instance"))
        return page.response(SnapshotSerializer(page.rows, many=True).data)

    @extend_schema(request=SnapshotCreateSerializer, responses={202: OperationSerializer})
    def post(self, request: Request, tenant: str, pk: str) -> Response:
        instance = self.instance(request, tenant, pk, Role.MEMBER)
        body = SnapshotCreateSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        return accepted(
            snapshots.snapshot_create(
                actor=Actor.from_request(request), instance=instance, name=body.validated_data["name"]
            )
        )


TENANT_SNAPSHOTS = ListSpec(
    orderings={"created": ("created",), "name": ("name",)},
    default="created",
    filters=(Filter("name"), Filter("instance", path="instance__uuid", kind="uuid")),
)


class TenantSnapshotListView(TenantView):
    """Every snapshot of the tenant's instances (the web UI's snapshots page)."""

    schema = ListSchema()

    @extend_schema(parameters=TENANT_SNAPSHOTS.parameters(), responses=paginated(SnapshotSerializer))
    def get(self, request: Request, tenant: str) -> Response:
        obj = self.tenant(request, tenant)
        rows = Snapshot.objects.for_tenant(obj).exclude(instance__state=InstanceState.DELETED)
        page = TENANT_SNAPSHOTS.page(request, rows.select_related("instance"))
        return page.response(SnapshotSerializer(page.rows, many=True).data)


class SnapshotDetailView(TenantView):
    @extend_schema(responses=SnapshotSerializer)
    def get(self, request: Request, tenant: str, pk: str, snapshot: int) -> Response:
        return Response(SnapshotSerializer(self.snapshot(request, tenant, pk, snapshot)).data)

    @extend_schema(responses={202: OperationSerializer})
    def delete(self, request: Request, tenant: str, pk: str, snapshot: int) -> Response:
        snap = self.snapshot(request, tenant, pk, snapshot, Role.MEMBER)
        return accepted(snapshots.snapshot_delete(actor=Actor.from_request(request), snapshot=snap))


class SnapshotRevertView(TenantView):
    @extend_schema(request=None, responses={202: OperationSerializer})
    def post(self, request: Request, tenant: str, pk: str, snapshot: int) -> Response:
        snap = self.snapshot(request, tenant, pk, snapshot, Role.MEMBER)
        return accepted(snapshots.snapshot_revert(actor=Actor.from_request(request), snapshot=snap))


def serial_tail(instance: Instance, lines: int) -> tuple[list[str], int]:
    """The last ``lines`` lines of the instance's serial console log (a container's output), and
    the log's size."""
    path = Path(settings.NUBIS_INSTANCE_DIR) / str(instance.uuid) / instance.console_log
    try:
        size = path.stat().st_size
        with path.open("rb") as handle:
            handle.seek(max(0, size - 64 * 1024))
            text = handle.read().decode(errors="replace")
    except OSError:
        return [], 0
    return text.splitlines()[-lines:], size


class SerialConsoleView(TenantView):
    """The tail of the serial console log."""

    @extend_schema(
        parameters=[OpenApiParameter("lines", int, description="How many lines (1-1000, default 100).")],
        responses=ConsoleSerializer,
    )
    def get(self, request: Request, tenant: str, pk: str) -> Response:
        instance = self.instance(request, tenant, pk, Role.MEMBER)
        raw = request.query_params.get("lines", "100")
        if not raw.isdigit() or not 1 <= int(raw) <= 1000:
            raise serializers.ValidationError({"lines": ["must be a whole number from 1 to 1000"]})
        lines, size = serial_tail(instance, int(raw))
        return Response({"lines": lines, "size": size})


class VncTokenSerializer(serializers.Serializer[Any]):
    token = serializers.CharField()
    url = serializers.CharField(help_text="Websocket path; add ?token=… (binary subprotocol).")
    password = serializers.CharField(help_text="The VNC password of this instance.")
    expires_in = serializers.IntegerField()


class VncConsoleView(TenantView):
    """Issue a single-use VNC token for this instance and this user (valid for a minute)."""

    @extend_schema(request=None, responses=VncTokenSerializer)
    def post(self, request: Request, tenant: str, pk: str) -> Response:
        from compute.consoles import TOKEN_TTL, vnc_token_issue

        instance = self.instance(request, tenant, pk, Role.MEMBER)
        if instance.kind != InstanceKind.VM:
            raise ServiceError("kind", "kind", "a container has no screen; follow its output instead")
        if instance.state != InstanceState.RUNNING:
            raise Conflict("state", "state", f"the console needs a running instance; it is {instance.state}")
        token = vnc_token_issue(instance, int(request.user.pk or 0))
        audit_log(actor=Actor.from_request(request), action="instance.console", target=instance)
        return Response(
            {
                "token": token,
                "url": f"/ws/instances/{instance.uuid}/vnc/",
                "password": instance.vnc_password,
                "expires_in": TOKEN_TTL,
            }
        )


class OperationListView(TenantView):
    schema = ListSchema()

    @extend_schema(parameters=OPERATIONS.parameters(), responses=paginated(OperationSerializer))
    def get(self, request: Request, tenant: str) -> Response:
        obj = self.tenant(request, tenant)
        page = OPERATIONS.page(request, Operation.objects.for_tenant(obj).select_related("instance"))
        return page.response(OperationSerializer(page.rows, many=True).data)


class OperationDetailView(TenantView):
    @extend_schema(responses=OperationSerializer)
    def get(self, request: Request, tenant: str, pk: str) -> Response:
        obj = self.tenant(request, tenant)
        operation = get_object_or_404(Operation.objects.for_tenant(obj).select_related("instance"), uuid=pk)
        return Response(OperationSerializer(operation).data)


class LogsSerializer(serializers.Serializer[Any]):
    text = serializers.CharField(help_text="The end of the container's stdout and stderr.")


class ContainerLogsView(TenantView):
    """The end of a container's output (members and owners)."""

    @extend_schema(
        parameters=[OpenApiParameter("bytes", int, description="How much (1-1048576, default 65536).")],
        responses=LogsSerializer,
    )
    def get(self, request: Request, tenant: str, pk: str) -> Response:
        from compute.services.containers import container_driver

        instance = self.instance(request, tenant, pk, Role.MEMBER)
        if instance.kind != InstanceKind.CONTAINER:
            raise ServiceError("kind", "kind", "logs are for containers; a VM has its serial console")
        raw = request.query_params.get("bytes", "65536")
        if not raw.isdigit() or not 1 <= int(raw) <= 1 << 20:
            raise serializers.ValidationError({"bytes": ["must be a whole number from 1 to 1048576"]})
        return Response({"text": container_driver().logs(instance.domain_name, int(raw))})


class ExecSerializer(serializers.Serializer[Any]):
    argv = serializers.ListField(child=serializers.CharField(max_length=4096), min_length=1, max_length=256)
    timeout = serializers.IntegerField(min_value=1, max_value=60, default=10)


class ExecResultSerializer(serializers.Serializer[Any]):
    exit_code = serializers.IntegerField()
    stdout = serializers.CharField()
    stderr = serializers.CharField()


class ContainerExecView(TenantView):
    """Run a command in a running container, on its host, and return its output (members and owners)."""

    @extend_schema(request=ExecSerializer, responses=ExecResultSerializer)
    def post(self, request: Request, tenant: str, pk: str) -> Response:
        from compute.tasks import container_exec

        instance = self.instance(request, tenant, pk, Role.MEMBER)
        if instance.kind != InstanceKind.CONTAINER:
            raise ServiceError("kind", "kind", "exec is for containers")
        body = ExecSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        if instance.state != InstanceState.RUNNING or instance.host is None:
            raise Conflict("state", "state", f"exec needs a running container; it is {instance.state}")
        argv, timeout = body.validated_data["argv"], body.validated_data["timeout"]
        result = container_exec.apply_async(
            args=(str(instance.uuid), argv, timeout), queue=instance.host.queue
        )
        try:
            rc, out, err = result.get(timeout=timeout + 15)
        except Exception as exc:  # the host's answer: a DriverError, or no answer at all
            raise Conflict("state", "exec", f"exec failed: {exc}") from None
        finally:
            result.forget()  # the result backend need not keep the output
        audit_log(
            actor=Actor.from_request(request),
            action="instance.exec",
            target=instance,
            detail={"argv": argv, "exit_code": rc},
        )
        return Response({"exit_code": rc, "stdout": out[-(1 << 20) :], "stderr": err[-(1 << 20) :]})
