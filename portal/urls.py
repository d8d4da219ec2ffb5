"""URL root: UI shell, auth, admin, health and the versioned API."""

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
    path("api/v1/", include("tenants.api_urls")),
    path("api/v1/admin/", include("compute.api_admin_urls")),
    path("api/v1/tenants/<slug:tenant>/", include("compute.api_urls")),
    path("t/<slug:tenant>/", include("tenants.urls")),
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
