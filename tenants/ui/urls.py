"""Routes of the tenant pages, under /t/<tenant>/."""

from django.urls import path

from tenants.ui import views

urlpatterns = [
    path("quota/", views.quota_page, name="tenant-quota"),
    path("settings/", views.settings_page, name="tenant-settings"),
    path("members/add/", views.member_add, name="tenant-member-add"),
    path("members/<int:pk>/role/", views.member_role, name="tenant-member-role"),
    path("members/<int:pk>/remove/", views.member_remove, name="tenant-member-remove"),
    path("tokens/create/", views.token_create, name="tenant-token-create"),
    path("tokens/<int:pk>/revoke/", views.token_revoke, name="tenant-token-revoke"),
    path("audit/", views.audit_page, name="tenant-audit"),
]
