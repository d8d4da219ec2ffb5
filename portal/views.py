"""The web UI shell: dashboard and the API root."""

from __future__ import annotations

from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from drf_spectacular.utils import extend_schema
from rest_framework.permissions import AllowAny
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.reverse import reverse
from rest_framework.views import APIView

from tenants.selectors import tenants_of_user


@login_required
def dashboard(request: HttpRequest) -> HttpResponse:
    """The signed-in user's landing page: their tenants and the live event stream."""
    tenants = tenants_of_user(request.user)
    return render(request, "portal/dashboard.html", {"tenants": tenants})


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
