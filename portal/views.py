"""The web UI shell: dashboard and the API root."""

from __future__ import annotations

from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from drf_spectacular.utils import extend_schema
from rest_framework.permissions import AllowAny
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.reverse import reverse
from rest_framework.views import APIView

from tenants.selectors import tenants_of_user


@login_required
def dashboard(request: HttpRequest) -> HttpResponse:
    """Send the user to the tenant they last worked in (or their first); explain if they have none."""
    slugs = list(tenants_of_user(request.user).values_list("slug", flat=True))
    if slugs:
        last = request.session.get("tenant")
        return redirect("tenant-home", tenant=last if last in slugs else slugs[0])
    return render(request, "portal/dashboard.html", {"tenants": []})


class ApiRootView(APIView):
    """Entry point of the REST API: links to its documents and collections."""

    permission_classes = [AllowAny]

    @extend_schema(operation_id="api_root", responses={200: dict})
    def get(self, request: Request) -> Response:
        return Response(
            {
                "name": "Nubis API",
                "version": "v1",
                "schema": reverse("api-schema", request=request),
                "docs": reverse("api-docs", request=request),
            }
        )
