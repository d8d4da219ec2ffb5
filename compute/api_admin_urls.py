"""Staff API routes of compute and the scheduler, mounted under /api/v1/admin/."""

from django.urls import path

from compute import api_admin

urlpatterns = [
    path("hosts/", api_admin.AdminHostListView.as_view(), name="api-admin-hosts"),
    path(
        "hosts/<int:pk>/maintenance/",
        api_admin.AdminHostMaintenanceView.as_view(),
        name="api-admin-host-maintenance",
    ),
    path("queue/", api_admin.AdminQueueView.as_view(), name="api-admin-queue"),
    path("quotas/", api_admin.AdminQuotaListView.as_view(), name="api-admin-quotas"),
    path("tenants/<slug:tenant>/quota/", api_admin.AdminQuotaView.as_view(), name="api-admin-quota"),
]
