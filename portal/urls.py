"""URL root: the UI shell, auth, admin, health, the API schema, and each app's own routes."""

from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerSplitView

from portal import health, views

admin.site.site_header = "Nubis administration"
admin.site.site_title = "Nubis admin"

urlpatterns = [
    path("", views.dashboard, name="dashboard"),
    path("login/", auth_views.LoginView.as_view(redirect_authenticated_user=True), name="login"),
    path("logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("healthz", health.healthz, name="healthz"),
    path("readyz", health.readyz, name="readyz"),
    path("admin/", admin.site.urls),
    path("staff/", include("portal.staff_urls")),
    path("api/v1/", views.ApiRootView.as_view(), name="api-root"),
    path("t/<slug:tenant>/", views.tenant_dashboard, name="tenant-home"),
    # Each app routes its own API (under /api/v1/) and pages (under /t/<tenant>/).
    path("", include("tenants.urls")),
    path("", include("compute.urls")),
    path("api/schema/", SpectacularAPIView.as_view(), name="api-schema"),
    # The split view serves Swagger UI's start-up script as a file (?script=), for the CSP.
    path(
        "api/docs/",
        SpectacularSwaggerSplitView.as_view(url_name="api-schema", template_name="portal/swagger_ui.html"),
        name="api-docs",
    ),
]

# Under /api/ even a URL that matches no route answers in the API's one error shape.
handler404 = "portal.api_errors.not_found"
handler500 = "portal.api_errors.server_error"
