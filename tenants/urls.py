"""Every route of the tenants app: its API under /api/v1/ and its pages under /t/<tenant>/."""

from django.urls import include, path

urlpatterns = [
    path("api/v1/", include("tenants.api.urls")),
    path("t/<slug:tenant>/", include("tenants.ui.urls")),
]
