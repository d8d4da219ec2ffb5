"""Routes of the tenants API, under /api/v1/."""

from django.urls import path

from tenants.api import views

urlpatterns = [
    path("tenants/", views.TenantListView.as_view(), name="api-tenants"),
    path("tenants/<slug:tenant>/", views.TenantDetailView.as_view(), name="api-tenant"),
    path("tenants/<slug:tenant>/quota/", views.QuotaView.as_view(), name="api-quota"),
    path("tenants/<slug:tenant>/members/", views.MemberListView.as_view(), name="api-members"),
    path("tenants/<slug:tenant>/members/<int:pk>/", views.MemberDetailView.as_view(), name="api-member"),
    path("tenants/<slug:tenant>/tokens/", views.TokenListView.as_view(), name="api-tokens"),
    path("tenants/<slug:tenant>/tokens/<int:pk>/", views.TokenDetailView.as_view(), name="api-token"),
    path("tenants/<slug:tenant>/audit/", views.AuditListView.as_view(), name="api-audit"),
    path("admin/tenants/", views.AdminTenantListView.as_view(), name="api-admin-tenants"),
]
