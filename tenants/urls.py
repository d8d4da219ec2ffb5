"""Tenant pages of the web UI, mounted under /t/<tenant>/."""

from django.urls import include, path

from compute import views as compute_views
from portal import views as portal_views
from tenants import views

urlpatterns = [
    path("", portal_views.tenant_dashboard, name="tenant-home"),
    path("quota/", views.quota_page, name="tenant-quota"),
    path("settings/", views.settings_page, name="tenant-settings"),
    path("members/add/", views.member_add, name="tenant-member-add"),
    path("members/<int:pk>/role/", views.member_role, name="tenant-member-role"),
    path("members/<int:pk>/remove/", views.member_remove, name="tenant-member-remove"),
    path("tokens/create/", views.token_create, name="tenant-token-create"),
    path("tokens/<int:pk>/revoke/", views.token_revoke, name="tenant-token-revoke"),
    path("audit/", views.audit_page, name="tenant-audit"),
    path("instances/<uuid:pk>/console/", compute_views.instance_console, name="instance-console"),
    path("", include("compute.ui_urls")),
    path("", include("compute.ui_network_urls")),
]
