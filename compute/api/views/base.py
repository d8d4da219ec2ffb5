"""What every view of the compute API shares: the tenant-scoped view and the 202 answer."""

from __future__ import annotations

from typing import Any

from django.shortcuts import get_object_or_404
from rest_framework import status
from rest_framework.permissions import IsAuthenticated
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from compute.api.serializers import OperationSerializer
from compute.models import (
    Instance,
    InstanceState,
    Operation,
    Snapshot,
)
from tenants.access import require_role, tenant_for_request
from tenants.models import Role, Tenant


def accepted(operation: Operation) -> Response:
    """Asynchronous actions answer 202 with their Operation (which may already have failed)."""
    return Response(OperationSerializer(operation).data, status=status.HTTP_202_ACCEPTED)


def instance_of(tenant: Tenant, pk: Any) -> Instance:
    return get_object_or_404(
        Instance.objects.for_tenant(tenant)
        .select_related("flavor", "image", "host", "migration_host")
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
