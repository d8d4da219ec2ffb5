"""API routes of the tenants app, mounted under /api/v1/."""

from django.urls import path

from tenants import api

urlpatterns = [
    path("tenants/", api.TenantListView.as_view(), name="api-tenants"),
    path("tenants/<slug:tenant>/", api.TenantDetailView.as_view(), name="api-tenant"),
    path("tenants/<slug:tenant>/quota/", api.QuotaView.as_view(), name="api-quota"),
    path("tenants/<slug:tenant>/members/", api.MemberListView.as_view(), name="api-members"),
    path("tenants/<slug:tenant>/members/<int:pk>/", api.MemberDetailView.as_view(), name="api-member"),
    path("tenants/<slug:tenant>/tokens/", api.TokenListView.as_view(), name="api-tokens"),
    path("tenants/<slug:tenant>/tokens/<int:pk>/", api.TokenDetailView.as_view(), name="api-token"),
    path("tenants/<slug:tenant>/audit/", api.AuditListView.as_view(), name="api-audit"),
    path("admin/tenants/", api.AdminTenantListView.as_view(), name="api-admin-tenants"),
]
