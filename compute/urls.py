"""Every route of the compute app: its API under /api/v1/ and its pages under /t/<tenant>/."""

from django.urls import include, path

from compute.api import urls as api_urls
from compute.ui import urls as ui_urls

urlpatterns = [
    path("api/v1/", include(api_urls)),
    path("t/<slug:tenant>/", include(ui_urls.tenant_urlpatterns)),
]
