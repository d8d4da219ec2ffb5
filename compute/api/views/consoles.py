"""Consoles and output of an instance: serial tail, VNC and terminal tokens, container logs and exec."""

from __future__ import annotations

from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response

from compute.api.serializers import (
    ConsoleSerializer,
    ExecResultSerializer,
    ExecSerializer,
    LogsSerializer,
    TerminalRequestSerializer,
    TerminalTokenSerializer,
    VncTokenSerializer,
)
from compute.api.views.base import TenantView
from compute.models import InstanceKind, InstanceState
from compute.services import host_rpc
from core.errors import Conflict, ServiceError
from security.audit import Actor, audit_log
from tenants.models import Role


class SerialConsoleView(TenantView):
    """The tail of the serial console log, read by the instance's host agent (503 when it does not
    answer in time)."""

    @extend_schema(
        parameters=[OpenApiParameter("lines", int, description="How many lines (1-1000, default 100).")],
        responses=ConsoleSerializer,
        extensions={host_rpc.SCHEMA_EXTENSION: True},
    )
    def get(self, request: Request, tenant: str, pk: str) -> Response:
        instance = self.instance(request, tenant, pk, Role.MEMBER)
        raw = request.query_params.get("lines", "100")
        if not raw.isdigit() or not 1 <= int(raw) <= 1000:
            raise serializers.ValidationError({"lines": ["must be a whole number from 1 to 1000"]})
        lines, size = host_rpc.serial_tail(instance, int(raw))
        return Response({"lines": lines, "size": size})


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


class TerminalConsoleView(TenantView):
    """Issue a single-use token for the VM's interactive serial console (members and owners; valid
    for a minute). ``"input": false`` makes a session that cannot type: the portal drops its input."""

    @extend_schema(request=TerminalRequestSerializer, responses=TerminalTokenSerializer)
    def post(self, request: Request, tenant: str, pk: str) -> Response:
        from compute.consoles import TOKEN_TTL, console_token_issue

        instance = self.instance(request, tenant, pk, Role.MEMBER)
        body = TerminalRequestSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        if instance.kind != InstanceKind.VM:
            raise ServiceError("kind", "kind", "a container has no serial port; use exec or its output")
        if instance.state != InstanceState.RUNNING:
            raise Conflict("state", "state", f"the console needs a running instance; it is {instance.state}")
        can_type = bool(body.validated_data["input"])
        token = console_token_issue(instance, int(request.user.pk or 0), "serial", can_type=can_type)
        audit_log(
            actor=Actor.from_request(request),
            action="instance.console",
            target=instance,
            detail={"console": "serial", "input": can_type},
        )
        return Response(
            {
                "token": token,
                "url": f"/ws/instances/{instance.uuid}/terminal/",
                "input": can_type,
                "expires_in": TOKEN_TTL,
            }
        )


class ContainerLogsView(TenantView):
    """The end of a container's output (members and owners), from its host's agent."""

    @extend_schema(
        parameters=[OpenApiParameter("bytes", int, description="How much (1-1048576, default 65536).")],
        responses=LogsSerializer,
        extensions={host_rpc.SCHEMA_EXTENSION: True},
    )
    def get(self, request: Request, tenant: str, pk: str) -> Response:
        instance = self.instance(request, tenant, pk, Role.MEMBER)
        if instance.kind != InstanceKind.CONTAINER:
            raise ServiceError("kind", "kind", "logs are for containers; a VM has its serial console")
        raw = request.query_params.get("bytes", "65536")
        if not raw.isdigit() or not 1 <= int(raw) <= 1 << 20:
            raise serializers.ValidationError({"bytes": ["must be a whole number from 1 to 1048576"]})
        return Response({"text": host_rpc.container_logs(instance, int(raw))})


class ContainerExecView(TenantView):
    """Run a command in a running container, on its host, and return its output (members and owners)."""

    @extend_schema(
        request=ExecSerializer, responses=ExecResultSerializer, extensions={host_rpc.SCHEMA_EXTENSION: True}
    )
    def post(self, request: Request, tenant: str, pk: str) -> Response:
        instance = self.instance(request, tenant, pk, Role.MEMBER)
        if instance.kind != InstanceKind.CONTAINER:
            raise ServiceError("kind", "kind", "exec is for containers")
        body = ExecSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        if instance.state != InstanceState.RUNNING or instance.host is None:
            raise Conflict("state", "state", f"exec needs a running container; it is {instance.state}")
        argv, timeout = body.validated_data["argv"], body.validated_data["timeout"]
        try:  # on the host, by its agent; no answer in time is a 503 naming the host
            rc, out, err = host_rpc.container_exec(instance, argv, timeout)
        except host_rpc.AgentError as exc:  # the driver's answer: not running, timed out
            raise Conflict("state", "exec", f"exec failed: {exc.message}") from None
        audit_log(
            actor=Actor.from_request(request),
            action="instance.exec",
            target=instance,
            detail={"argv": argv, "exit_code": rc},
        )
        return Response({"exit_code": rc, "stdout": out[-(1 << 20) :], "stderr": err[-(1 << 20) :]})
